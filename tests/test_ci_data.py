"""tests/conftest.py: without the evaluation data the real-image tests skip on a laptop, but fail
the run in CI (CI=true), where a green run must mean that they ran."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def repo_without_data(tmp_path):
    """This conftest in a repository copy that has no ../shared/data next to it."""
    tests = tmp_path / "repo" / "tests"
    tests.mkdir(parents=True)
    shutil.copy(TESTS / "conftest.py", tests / "conftest.py")
    (tests / "test_needs_data.py").write_text(
        "def test_reads_the_manifest(dev_manifest):\n    assert dev_manifest['instances']\n")
    assert not (tmp_path / "shared").exists()
    return tests


def _pytest(tests: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tests)],
                          cwd=tests.parent, env=env, capture_output=True, text=True, timeout=120)


def test_missing_data_skips_outside_ci(repo_without_data):
    run = _pytest(repo_without_data, None)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 skipped" in run.stdout and "dev data not found" in run.stdout


def test_missing_data_fails_the_run_in_ci(repo_without_data):
    run = _pytest(repo_without_data, "true")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 error" in run.stdout and "CI=true" in run.stdout and "skipped" not in run.stdout
