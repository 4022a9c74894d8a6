"""Categories (add / rename / delete / colour, number keys pick) and the current image's labels.

Both panels only show what the window gives them and report requests; questions to the user go
through `ask_text` / `ask_color` / `confirm`, which tests replace.
"""
from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QAbstractTableModel, QItemSelectionModel, QModelIndex, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView, QComboBox, QHBoxLayout, QHeaderView, QListWidget, QListWidgetItem, QStyledItemDelegate,
    QTableView, QToolButton, QVBoxLayout, QWidget,
)

from dasr_annotator.engine.types import Annotation
from dasr_annotator.widgets import dialogs


def swatch(color: str, size: int = 14) -> QIcon:
    pixmap = QPixmap(size, size)
    pixmap.fill(QColor(color))
    return QIcon(pixmap)


@dataclass(frozen=True)
class CategoryRow:
    name: str
    color: str
    count: int = 0


class CategoryPanel(QWidget):
    currentChanged = Signal(str)
    addRequested = Signal(str)
    renameRequested = Signal(str, str)
    colorRequested = Signal(str, str)
    deleteRequested = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.ask_text = dialogs.ask_text
        self.ask_color = dialogs.ask_color
        self.confirm = dialogs.confirm
        self.list = QListWidget()
        self.list.setSelectionMode(QAbstractItemView.SingleSelection)
        self.list.currentItemChanged.connect(self._current_changed)
        self.list.itemDoubleClicked.connect(lambda item: self.rename())
        buttons = QHBoxLayout()
        for text, tip, slot in (("Add", "Add a category", self.add), ("Rename", "Rename the category", self.rename),
                                ("Colour", "Change the category's colour", self.recolor),
                                ("Delete", "Delete the category and its labels", self.delete)):
            button = QToolButton()
            button.setText(text)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            buttons.addWidget(button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        self._rows: list[CategoryRow] = []

    def set_categories(self, rows: list[CategoryRow], current: str | None) -> None:
        self._rows = list(rows)
        self.list.blockSignals(True)
        self.list.clear()
        for number, row in enumerate(rows, start=1):
            key = f"{number}  " if number <= 9 else "   "
            item = QListWidgetItem(swatch(row.color), f"{key}{row.name}  ({row.count})")
            item.setData(Qt.UserRole, row.name)
            item.setToolTip(f"{row.name}: {row.count} labels" + (f" · press {number} to pick" if number <= 9 else ""))
            self.list.addItem(item)
            if row.name == current:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)

    def current(self) -> str | None:
        item = self.list.currentItem()
        return item.data(Qt.UserRole) if item else None

    def set_current(self, name: str) -> None:
        for i in range(self.list.count()):
            if self.list.item(i).data(Qt.UserRole) == name:
                self.list.setCurrentRow(i)
                return

    def name_at(self, number: int) -> str | None:
        """The category a number key (1-9) picks."""
        return self._rows[number - 1].name if 1 <= number <= len(self._rows) else None

    def _current_changed(self, item, previous) -> None:  # noqa: ARG002 - Qt signature
        if item is not None:
            self.currentChanged.emit(item.data(Qt.UserRole))

    # ---- requests ----------------------------------------------------------------------------
    def add(self) -> None:
        name = self.ask_text(self, "Add category", "Name of the new category:", "")
        if name and name.strip():
            self.addRequested.emit(name.strip())

    def rename(self) -> None:
        old = self.current()
        if old is None:
            return
        new = self.ask_text(self, "Rename category", f"New name for {old!r}:", old)
        if new and new.strip() and new.strip() != old:
            self.renameRequested.emit(old, new.strip())

    def recolor(self) -> None:
        name = self.current()
        if name is None:
            return
        color = self.ask_color(self, next(r.color for r in self._rows if r.name == name))
        if color:
            self.colorRequested.emit(name, color)

    def delete(self) -> None:
        name = self.current()
        if name is None:
            return
        count = next(r.count for r in self._rows if r.name == name)
        if count == 0 or self.confirm(self, "Delete category",
                                      f"Delete {name!r} and its {count} label{'s' if count != 1 else ''}? (Undo brings them back.)"):
            self.deleteRequested.emit(name)


# ---- the current image's labels ---------------------------------------------------------------
class AnnotationTableModel(QAbstractTableModel):
    COLUMNS = ("Category", "Box", "Source", "Score")
    categoryEdited = Signal(str, str)  # annotation id, new category

    def __init__(self, parent=None):
        super().__init__(parent)
        self._annotations: list[Annotation] = []
        self._colors: dict[str, str] = {}
        self.categories: list[str] = []

    def set_annotations(self, annotations: list[Annotation], colors: dict[str, str]) -> None:
        self.beginResetModel()
        self._annotations, self._colors = list(annotations), dict(colors)
        self.categories = list(colors)
        self.endResetModel()

    def annotation_at(self, row: int) -> Annotation:
        return self._annotations[row]

    def row_of(self, ann_id: str) -> int:
        return next((i for i, a in enumerate(self._annotations) if a.id == ann_id), -1)

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._annotations)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section, orientation, role=Qt.DisplayRole):
        if orientation == Qt.Horizontal and role == Qt.DisplayRole:
            return self.COLUMNS[section]
        return None

    def flags(self, index: QModelIndex):
        base = super().flags(index)
        return base | Qt.ItemIsEditable if index.column() == 0 else base

    def data(self, index: QModelIndex, role: int = Qt.DisplayRole):
        if not index.isValid():
            return None
        ann, column = self._annotations[index.row()], index.column()
        if role in (Qt.DisplayRole, Qt.EditRole):
            if column == 0:
                return ann.category
            if column == 1:
                return f"{ann.box.x:.0f},{ann.box.y:.0f}  {ann.box.w:.0f}×{ann.box.h:.0f}"
            if column == 2:
                return ann.source
            return "" if ann.score is None else f"{ann.score:.3f}"
        if role == Qt.ToolTipRole and column == 1:
            return "x, y (top left), width × height in photo pixels"
        if role == Qt.DecorationRole and column == 0:
            return swatch(self._colors.get(ann.category, "#ffffff"))
        return None

    def setData(self, index: QModelIndex, value, role: int = Qt.EditRole) -> bool:
        if role != Qt.EditRole or index.column() != 0 or not str(value).strip():
            return False
        ann = self._annotations[index.row()]
        if str(value).strip() != ann.category:
            self.categoryEdited.emit(ann.id, str(value).strip())  # the document decides; we re-render
        return True


class CategoryDelegate(QStyledItemDelegate):
    """Edit a label's category with a combo box of the known ones (or type a new one)."""

    def createEditor(self, parent, option, index):  # noqa: ARG002 - Qt signature
        editor = QComboBox(parent)
        editor.setEditable(True)
        editor.addItems(index.model().categories)
        # Enter in the line edit commits a typed name too (the view's own Enter handling does not
        # see keys the combo box passes to its line edit). The commit only emits a request; the
        # document edit that resets the model runs after this key press is over (queued).
        editor.lineEdit().returnPressed.connect(lambda: self._commit(editor))
        return editor

    def _commit(self, editor) -> None:
        self.commitData.emit(editor)
        self.closeEditor.emit(editor, QStyledItemDelegate.NoHint)

    def setEditorData(self, editor, index) -> None:
        editor.setCurrentText(index.data(Qt.EditRole))

    def setModelData(self, editor, model, index) -> None:
        model.setData(index, editor.currentText(), Qt.EditRole)


class AnnotationTable(QTableView):
    selectedIdsChanged = Signal(list)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.model_ = AnnotationTableModel(self)
        self.setModel(self.model_)
        self.setItemDelegateForColumn(0, CategoryDelegate(self))
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.setEditTriggers(QAbstractItemView.DoubleClicked | QAbstractItemView.EditKeyPressed)
        self.verticalHeader().setVisible(False)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.Stretch)  # the box column takes the slack
        header.setStretchLastSection(False)
        self.selectionModel().selectionChanged.connect(lambda *_: self.selectedIdsChanged.emit(self.selected_ids()))

    def set_annotations(self, annotations: list[Annotation], colors: dict[str, str]) -> None:
        selected = self.selected_ids()
        self.blockSignals(True)
        self.model_.set_annotations(annotations, colors)
        self.select_ids(selected)
        self.blockSignals(False)

    def selected_ids(self) -> list[str]:
        rows = sorted({i.row() for i in self.selectionModel().selectedRows()})
        return [self.model_.annotation_at(r).id for r in rows]

    def select_ids(self, ids: list[str]) -> None:
        selection = self.selectionModel()
        selection.blockSignals(True)
        selection.clearSelection()
        for ann_id in ids:
            row = self.model_.row_of(ann_id)
            if row >= 0:
                selection.select(self.model_.index(row, 0), QItemSelectionModel.Select | QItemSelectionModel.Rows)
        selection.blockSignals(False)
        self.viewport().update()
