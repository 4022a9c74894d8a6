"""Waiting on a live window from a screenshot script: the event loop runs while we wait."""
from __future__ import annotations


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
