"""Small dialogs: questions to the user (behind plain functions tests replace), the shortcut
sheet and the settings dialog."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox, QColorDialog, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QInputDialog, QLabel,
    QMessageBox, QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout, QHeaderView, QAbstractItemView,
)


def ask_text(parent, title: str, label: str, text: str = "") -> str | None:
    value, ok = QInputDialog.getText(parent, title, label, text=text)
    return value if ok else None


def ask_color(parent, initial: str) -> str | None:
    color = QColorDialog.getColor(QColor(initial), parent, "Category colour")
    return color.name() if color.isValid() else None


def confirm(parent, title: str, text: str) -> bool:
    answer = QMessageBox.question(parent, title, text, QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
    return answer == QMessageBox.Yes


class ShortcutSheet(QDialog):
    """Every action with its keys, grouped as in the menus (F1 or ?)."""

    def __init__(self, rows: list[tuple[str, str, str]], parent=None):
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        table = QTableWidget(len(rows), 3)
        table.setHorizontalHeaderLabels(["", "Action", "Keys"])
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        table.setSelectionMode(QAbstractItemView.NoSelection)
        previous = None
        for r, (group, text, keys) in enumerate(rows):
            shown_group = group if group != previous else ""  # name each group once
            previous = group
            for c, value in enumerate((shown_group, text, keys)):
                table.setItem(r, c, QTableWidgetItem(value))
        table.verticalHeader().setDefaultSectionSize(24)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        table.horizontalHeader().setStretchLastSection(True)
        hint = QLabel("Mouse: drag on the photo to draw a box · drag a box or its handles to adjust it · "
                      "Ctrl+wheel zooms · wheel scrolls · middle/right drag or Space+drag pans")
        hint.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(table)
        layout.addWidget(hint)
        layout.addWidget(buttons)
        self.table = table
        self.resize(580, min(900, 24 * len(rows) + 150))


class SettingsDialog(QDialog):
    """Edits a preferences dataclass: a combo box for fields with choices, spin boxes otherwise."""

    LABELS = {"backbone": "Backbone", "device": "Device", "mode": "Extraction mode",
              "max_side": "Image size for indexing (px)", "top_k": "Hits per search",
              "overlap_iou": "Overlap that counts as already labelled (IoU)",
              "feedback_every": "Re-rank after this many decisions (0: never)",
              "label_queries": "Keep every query box as a label at once",
              "video_fps": "Video frames sampled per second (this folder)",
              "propagate_seconds": "Propagate labels this many seconds either way",
              "propagate_fps": "Propagate at this many frames per second"}
    RANGES = {"overlap_iou": (0.05, 1.0, 0.05), "video_fps": (0.05, 240.0, 0.5),  # float fields: low, high, step
              "propagate_seconds": (0.1, 600.0, 0.5), "propagate_fps": (0.1, 240.0, 1.0)}

    def __init__(self, values: dict, choices: dict[str, tuple], device_note: str = "", parent=None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self._editors = {}
        form = QFormLayout()
        for name, value in values.items():
            if name in choices:
                editor = QComboBox()
                editor.addItems([str(c) for c in choices[name]])
                editor.setCurrentText(str(value))
            elif isinstance(value, bool):
                editor = QCheckBox()
                editor.setChecked(value)
            elif isinstance(value, float):
                editor = QDoubleSpinBox()
                low, high, step = self.RANGES.get(name, (0.05, 1.0, 0.05))
                editor.setRange(low, high)
                editor.setSingleStep(step)
                editor.setValue(value)
            else:
                editor = QSpinBox()
                editor.setRange(0, 10000)
                editor.setValue(int(value))
            self._editors[name] = editor
            form.addRow(self.LABELS.get(name, name), editor)
        note = QLabel(device_note or "Changing the backbone, mode or image size re-indexes the folder.")
        note.setWordWrap(True)
        note.setTextInteractionFlags(Qt.TextSelectableByMouse)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(buttons)

    def values(self) -> dict:
        out = {}
        for name, editor in self._editors.items():
            if isinstance(editor, QComboBox):
                out[name] = editor.currentText()
            elif isinstance(editor, QCheckBox):
                out[name] = editor.isChecked()
            else:
                out[name] = editor.value()
        return out
