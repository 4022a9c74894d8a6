from dasr_annotator.app.main_window import MainWindow


def test_main_window_opens_offscreen(qtbot, tmp_path):
    window = MainWindow(tmp_path)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    assert str(tmp_path) in window.windowTitle()
