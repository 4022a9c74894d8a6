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
    app.setPalette(dark_palette())  # what the style sheet does not name (dialogs' views) is dark too
    app.setStyleSheet(resources.read_text("style.qss"))
    with resources.path_of("icons/app.svg") as icon:
        app.setWindowIcon(QIcon(str(icon)))
    return app


def dark_palette():
    """The style sheet's colours as a palette: Qt's own dialogs (files, colours, messages) draw
    parts the sheet does not reach with the palette, and a light base under the sheet's light text
    is unreadable (issue 17)."""
    from PySide6.QtGui import QColor, QPalette

    palette = QPalette()
    colours = {
        QPalette.Window: "#1f1f1f", QPalette.WindowText: "#e6e6e6", QPalette.Base: "#191919",
        QPalette.AlternateBase: "#202020", QPalette.Text: "#e6e6e6", QPalette.Button: "#2f2f2f",
        QPalette.ButtonText: "#e6e6e6", QPalette.ToolTipBase: "#2a2a2a", QPalette.ToolTipText: "#e6e6e6",
        QPalette.Highlight: "#35507a", QPalette.HighlightedText: "#ffffff", QPalette.PlaceholderText: "#8a8a8a",
        QPalette.Link: "#58a6ff", QPalette.BrightText: "#ff7b72", QPalette.Light: "#3a3a3a",
        QPalette.Midlight: "#333333", QPalette.Mid: "#2a2a2a", QPalette.Dark: "#161616", QPalette.Shadow: "#000000",
    }
    for role, colour in colours.items():
        palette.setColor(role, QColor(colour))
    for role in (QPalette.WindowText, QPalette.Text, QPalette.ButtonText):
        palette.setColor(QPalette.Disabled, role, QColor("#6a6a6a"))
    return palette


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
    window = open_window(Path(photos) if photos else None)  # noqa: F841 - kept alive while the app runs
    return app.exec()


def open_window(photos: Path | None, prefs=None):
    """The main window, shown and holding the keyboard focus from the first moment."""
    from dasr_annotator.app.gui.main_window import MainWindow

    window = MainWindow(photos, prefs=prefs)
    window.show()
    window.raise_()
    # A window manager usually focuses a new window; without one (a bare X server, some kiosk
    # set-ups) nothing does, and keys would go nowhere until a click: ask for the focus.
    window.activateWindow()
    return window
