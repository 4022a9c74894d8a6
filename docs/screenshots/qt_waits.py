"""Helpers of the screenshot scripts: a scratch home for the window, and waiting on it while
Qt's event loop runs."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def in_scratch(prefix: str, shoot, args) -> int:
    """`shoot(args, scratch)` with the window's settings and caches in a fresh scratch folder
    (never the user's), offscreen unless a display is chosen; the folder goes afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["XDG_CONFIG_HOME"] = str(scratch / "config")
    os.environ["DASR_ANNOTATOR_CACHE"] = str(scratch / "cache")
    try:
        return shoot(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def wait_until(condition, describe=lambda: "", timeout_s: float = 300.0) -> None:
    """Run Qt's event loop until `condition()` holds; TimeoutError (with `describe()`) otherwise."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    timer = QTimer(interval=50)
    timer.timeout.connect(lambda: condition() and loop.quit())
    timer.start()
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    timer.stop()
    if not condition():
        raise TimeoutError(f"the window did not reach the expected state; it says: {describe()!r}")


def settle(ms: int = 400) -> None:
    """Let the window paint and queued work land for `ms` milliseconds."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def open_window(photos: Path, scratch: Path, prefs=None):
    """The real window (1440x900) opening `photos`, settings kept in `scratch`: (application,
    window, wait), `wait(condition, timeout_s)` naming the window's last message if it times out."""
    from PySide6.QtCore import QSettings

    from dasr_annotator.app.gui.application import create_app

    app = create_app()
    QSettings.setDefaultFormat(QSettings.IniFormat)
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(scratch / "qsettings"))
    from dasr_annotator.app.gui.main_window import MainWindow

    window = MainWindow(photos, prefs=prefs)

    def wait(condition, timeout_s=300.0):
        wait_until(condition, lambda: window.message_bar.text(), timeout_s)

    window.resize(1440, 900)
    window.show()
    return app, window, wait


def indexed_window(photos: Path, scratch: Path, prefs=None):
    """`open_window`, once the window has indexed the photos."""
    app, window, wait = open_window(photos, scratch, prefs)
    wait(lambda: not window.controller.is_indexing and window.document is not None)
    return app, window, wait


def save_grab(widget, path: Path) -> None:
    """`widget` as it is drawn now, saved to `path` (its folder made); a failed save stops the
    script (Qt only answers False, and a missing screenshot would go unnoticed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not widget.grab().save(str(path)):
        raise SystemExit(f"could not save {path}")


def drag_box(canvas, box) -> None:
    """Draw `box` (image pixels) on the canvas with the mouse, as an annotator does."""
    from PySide6.QtCore import QPointF, Qt
    from PySide6.QtTest import QTest

    viewport = canvas.viewport()
    p1, p2 = (canvas.mapFromScene(QPointF(x, y)) for x, y in ((box.x, box.y), (box.x2, box.y2)))
    QTest.mousePress(viewport, Qt.LeftButton, Qt.NoModifier, p1)
    QTest.mouseMove(viewport, (p1 + p2) / 2)
    QTest.mouseMove(viewport, p2)
    QTest.mouseRelease(viewport, Qt.LeftButton, Qt.NoModifier, p2)
