"""Starts the Qt application (style sheet, icon, logging) and the main window."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from dasr_annotator import resources


def create_app(argv: list[str] | None = None):
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(argv or sys.argv[:1])
    app.setApplicationName("dasr-annotator")
    app.setOrganizationName("dasr-annotator")
    app.setStyle("Fusion")  # the style sheet is written against Fusion on every platform
    app.setStyleSheet(resources.read_text("style.qss"))
    with resources.path_of("icons/app.svg") as icon:
        app.setWindowIcon(QIcon(str(icon)))
    return app


def run_gui(photos: str | None) -> int:
    if photos is not None and not Path(photos).is_dir():
        print(f"dasr-annotator: {photos!r} is not a folder", file=sys.stderr)
        return 2
    from dasr_annotator.app.gui import platform_check

    problem = platform_check.check()  # before Qt: its own abort names no package and says "reinstall"
    if problem is not None:
        print(f"dasr-annotator: the window cannot open.\n{problem.message}", file=sys.stderr)
        return platform_check.EXIT_CODE
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = create_app()
    from dasr_annotator.app.gui.main_window import MainWindow

    window = MainWindow(Path(photos) if photos else None)
    window.show()
    return app.exec()
