"""Readable dialogs in the dark theme (issue 17): Qt's own file dialog draws its folder list with
the palette, which the style sheet alone left white under light text. Offscreen; the screenshots
to look at come from benchmarks/dark_dialogs.py under Xvfb."""
from __future__ import annotations

import numpy as np
from PySide6.QtWidgets import QFileDialog, QTreeView

from dasr_annotator import resources
from dasr_annotator.app.gui.application import dark_palette


def _luminance(widget) -> np.ndarray:
    image = widget.grab().toImage().convertToFormat(widget.grab().toImage().Format.Format_RGB888)
    data = np.frombuffer(image.constBits(), np.uint8, image.sizeInBytes())
    rows = data.reshape(image.height(), image.bytesPerLine())[:, : image.width() * 3]
    return rows.reshape(image.height(), image.width(), 3).mean(2)


def test_the_file_dialogs_folder_list_is_dark_under_light_text(qtbot, tmp_path):
    for name in ("photos", "export", "shelf"):
        (tmp_path / name).mkdir()
    dialog = QFileDialog(None, "Export COCO JSON", str(tmp_path), "COCO JSON (*.json)")
    dialog.setOption(QFileDialog.DontUseNativeDialog, True)
    dialog.setViewMode(QFileDialog.Detail)
    dialog.setPalette(dark_palette())
    dialog.setStyleSheet(resources.read_text("style.qss"))
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitExposed(dialog)
    view = dialog.findChild(QTreeView, "treeView")
    qtbot.waitUntil(lambda: view.model().rowCount(view.rootIndex()) == 3, timeout=5000)
    lum = _luminance(view.viewport())
    background = np.median(lum)
    assert background < 60, f"the folder list is light ({background:.0f})"
    assert np.percentile(lum, 99.5) > 150, "its names must be light on the dark base"
