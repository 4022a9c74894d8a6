"""Screenshots of the dialogs in the dark theme, to look at (issue 17): the file dialogs (open
folder, export), a question box, an error box, the colour and text dialogs and the shortcut
sheet. Run under a real X server, e.g.

    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/dark_dialogs.py OUT_FOLDER

Each dialog is shown the way the window shows it (same options, the application's style sheet
and palette), grabbed from the screen, and closed.
"""
from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtWidgets import QApplication, QColorDialog, QFileDialog, QInputDialog, QMessageBox

from dasr_annotator.app.gui import actions as action_table
from dasr_annotator.app.gui.application import create_app
from dasr_annotator.widgets import dialogs


def _shoot(dialog, path: Path, app) -> None:
    dialog.show()
    for _ in range(20):
        app.processEvents()
    screen = dialog.screen() or app.primaryScreen()
    screen.grabWindow(0, dialog.x(), dialog.y(), dialog.frameGeometry().width(),
                      dialog.frameGeometry().height()).save(str(path))
    dialog.close()


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    app = create_app()
    folder = Path(__file__).resolve().parents[1]
    shots = {
        "file-open-folder": QFileDialog(None, "Open a photo folder", str(folder)),
        "file-export": QFileDialog(None, "Export COCO JSON", str(folder / "docs"), "COCO JSON (*.json)"),
        "question": QMessageBox(QMessageBox.Question, "Labels not saved",
                                "The labels could not be saved. Close anyway and lose the unsaved changes?",
                                QMessageBox.Yes | QMessageBox.No),
        "error": QMessageBox(QMessageBox.Warning, "Cannot open", "photos/IMG_0042.jpg: not an image file"),
        "text": QInputDialog(),
        "colour": QColorDialog(),
        "shortcuts": dialogs.ShortcutSheet(action_table.shortcut_rows()),
    }
    shots["file-open-folder"].setFileMode(QFileDialog.Directory)
    shots["file-export"].setAcceptMode(QFileDialog.AcceptSave)
    shots["file-export"].setViewMode(QFileDialog.Detail)
    shots["text"].setLabelText("Rename the category:")
    shots["text"].setTextValue("mug")
    for name, dialog in shots.items():
        _shoot(dialog, out / f"{name}.png", app)
        print(out / f"{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "dialog-shots")))
