"""The main window: assembles widgets, owns no logic of its own."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QLabel, QMainWindow


class MainWindow(QMainWindow):
    def __init__(self, photos: Path | None = None, parent=None):
        super().__init__(parent)
        self.photos = photos
        self.setWindowTitle(f"dasr-annotator — {photos}" if photos else "dasr-annotator")
        self.setCentralWidget(QLabel("Open a photo folder to start."))
        self.resize(1200, 800)
