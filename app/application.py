"""Starts the Qt application and the main window."""
from __future__ import annotations

import sys
from pathlib import Path


def create_app(argv: list[str] | None = None):
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(argv or sys.argv[:1])
    app.setApplicationName("dasr-annotator")
    app.setOrganizationName("dasr-annotator")
    return app


def run_gui(photos: str | None) -> int:
    if photos is not None and not Path(photos).is_dir():
        print(f"dasr-annotator: {photos!r} is not a folder", file=sys.stderr)
        return 2
    app = create_app()
    from dasr_annotator.app.main_window import MainWindow

    window = MainWindow(Path(photos) if photos else None)
    window.show()
    return app.exec()
