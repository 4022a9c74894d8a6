"""A first start on a bare desktop (issue 17): when Qt's platform plugin cannot load, the real
entry point names the system packages to install (Debian/Ubuntu and Fedora) and exits 2, instead
of Qt's abort that suggests reinstalling. The README's set-up section names the same packages."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dasr_annotator.app.gui import platform_check

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the check runs on Linux only")


def _start(photos: Path, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "DISPLAY", "WAYLAND"))}
    full.update(env, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "dasr_annotator", str(photos)], env=full, capture_output=True,
                          text=True, timeout=120)


def test_a_missing_xcb_library_is_named_with_its_packages(tmp_path):
    # An unloadable copy of libxcb-icccm.so.4 first on the loader's path: the xcb plugin cannot
    # load, exactly as on a system without the package (which this machine may have installed).
    broken = tmp_path / "lib"
    broken.mkdir()
    (broken / "libxcb-icccm.so.4").write_bytes(b"")
    (tmp_path / "photos").mkdir()
    result = _start(tmp_path / "photos", QT_QPA_PLATFORM="xcb", DISPLAY=":99", LD_LIBRARY_PATH=str(broken))
    assert result.returncode == 2, result.stderr[-2000:]
    err = result.stderr
    assert 'platform plugin "xcb" cannot load' in err and "libxcb-icccm.so.4" in err
    assert "sudo apt install libxcb-icccm4" in err and "sudo dnf install xcb-util-wm" in err
    assert platform_check.XCB_DEBIAN in err and platform_check.XCB_FEDORA in err
    assert "Reinstalling the application" not in err and "Traceback" not in err


def test_an_unknown_platform_lists_the_ones_there_are(tmp_path):
    result = _start(tmp_path, QT_QPA_PLATFORM="nosuchplatform")
    assert result.returncode == 2
    assert 'platform "nosuchplatform" does not exist' in result.stderr and "offscreen" in result.stderr


def test_xcb_without_a_display_says_so(tmp_path):
    result = _start(tmp_path, QT_QPA_PLATFORM="xcb")
    assert result.returncode == 2
    if "cannot load" in result.stderr:
        pytest.skip("this machine lacks the xcb libraries (the first test covers that message)")
    assert "no X display (DISPLAY is not set)" in result.stderr


def test_a_platform_that_loads_passes_the_check():
    # in a process of its own: the check loads the plugin, which must not happen beside a running Qt
    code = ("from dasr_annotator.app.gui import platform_check as p; "
            "print(p.check({'QT_QPA_PLATFORM': 'offscreen'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0 and result.stdout.strip() == "None", result.stderr[-2000:]


def test_the_readme_names_the_same_packages():
    readme = (REPO / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    assert f"sudo apt install {platform_check.XCB_DEBIAN}" in setup
    assert f"sudo dnf install {platform_check.XCB_FEDORA}" in setup
