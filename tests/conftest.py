"""Test setup: offscreen Qt, isolated settings, and the shared dev data."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
DEV_DATA = REPO.parent / "shared" / "data" / "dev"


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's settings or cache."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("DASR_ANNOTATOR_CACHE", str(home / "cache" / "dasr-annotator"))
    try:
        from PySide6.QtCore import QSettings

        QSettings.setDefaultFormat(QSettings.IniFormat)
        QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(home / "qsettings"))
    except ImportError:  # pragma: no cover - PySide6 is a hard dependency
        pass
    yield


def in_ci() -> bool:
    """CI services set CI=true (GitHub Actions, GitLab, ...); there nothing may be skipped quietly."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing_data(what: str) -> None:
    """Skip a test whose evaluation data is absent, except in CI, where a missing data folder
    fails the run instead of leaving a fifth of the suite silently unrun."""
    if in_ci():
        pytest.fail(f"{what} (CI=true: the evaluation data must be present)", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="session")
def dev_data() -> Path:
    if not (DEV_DATA / "manifest.json").exists():
        missing_data(f"dev data not found at {DEV_DATA}")
    return DEV_DATA


@pytest.fixture(scope="session")
def dev_hires_data() -> Path:
    """The 1280x720 frames with small objects (../shared/data/dev-hires)."""
    folder = DEV_DATA.parent / "dev-hires"
    if not (folder / "manifest.json").exists():
        missing_data(f"dev-hires data not found at {folder}")
    return folder


@pytest.fixture(scope="session")
def dev_manifest(dev_data) -> dict:
    return json.loads((dev_data / "manifest.json").read_text())


@pytest.fixture(scope="module")
def one_torch_thread():
    """The test machine is shared; two threads fighting for two busy cores run 3-5x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
