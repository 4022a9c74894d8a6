from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from dasr_annotator.app import main as cli
from dasr_annotator.app.gui.main_window import MainWindow


def test_main_window_opens_offscreen(qtbot, tmp_path):
    window = MainWindow(tmp_path)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    assert str(tmp_path) in window.windowTitle()
    qtbot.waitUntil(lambda: window.document is not None, timeout=30_000)
    assert "No photos found" in window.canvas_hint.text()
    window.close()


def test_the_cli_starts_the_window_and_returns_when_it_closes(qapp, tmp_path):
    opened = []

    def close_windows():
        windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
        opened.extend(w.windowTitle() for w in windows)
        for window in windows:
            window.close()

    QTimer.singleShot(1500, close_windows)
    assert cli.main([str(tmp_path)]) == 0
    assert opened == [f"dasr-annotator — {tmp_path}"]
