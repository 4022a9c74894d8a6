"""Search results: a ranked grid of hit crops with scores and decisions, a score threshold slider
and "accept all above". The panel shows what the window hands it (`HitRow`s); decisions go back
through the window's actions, so keys, buttons and menus do the same thing.
"""
from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QAbstractListModel, QModelIndex, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView, QCheckBox, QComboBox, QHBoxLayout, QLabel, QListView, QSlider, QStyle, QStyledItemDelegate,
    QToolButton, QVBoxLayout, QWidget,
)

from dasr_annotator.engine.store.video import format_time
from dasr_annotator.engine.types import Box

CROP_PX = 120
TILE = QSize(CROP_PX + 16, CROP_PX + 40)
RowRole = Qt.UserRole + 1
STATUS_COLORS = {"pending": "#d0d0d0", "accepted": "#3fb950", "rejected": "#f85149"}
STATUS_MARKS = {"pending": "", "accepted": "✓", "rejected": "✗"}
SLIDER_STEPS = 1000
HINT = "Draw a box around an object, pick a category and press Enter to find it in the other photos."


@dataclass(frozen=True)
class HitRow:
    key: int
    image: str
    score: float
    box: Box
    status: str  # "pending", "accepted" or "rejected"
    labelled: bool = False  # the image has an overlapping label of this category already
    rank: int = 0
    look: int = 1  # 2, 3: the photo is shown again after its earlier boxes were rejected


class HitListModel(QAbstractListModel):
    cropWanted = Signal(int, str, object)  # key, image, box

    def __init__(self, parent=None):
        super().__init__(parent)
        self._rows: list[HitRow] = []
        self._crops: dict[tuple, QPixmap] = {}
        self._asked: set[tuple] = set()
        self.threshold = float("-inf")
        self.frame_times: dict[str, float] = {}  # hits in video frames show their time

    @staticmethod
    def _crop_key(row: HitRow) -> tuple:
        return (row.image, row.box)

    def set_rows(self, rows: list[HitRow]) -> None:
        """Replace the rows; a list of the same hits in the same order updates in place (keeps
        the selection and scroll position while the user triages)."""
        if [r.key for r in rows] == [r.key for r in self._rows]:
            changed = [i for i, (a, b) in enumerate(zip(self._rows, rows)) if a != b]
            self._rows = list(rows)
            for i in changed:
                self.dataChanged.emit(self.index(i), self.index(i))
            return
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def clear_crops(self) -> None:
        self._crops.clear()
        self._asked.clear()

    def rows(self) -> list[HitRow]:
        return list(self._rows)

    def row_of(self, key: int) -> int:
        for i, row in enumerate(self._rows):
            if row.key == key:
                return i
        return -1

    def set_crop(self, image: str, box: Box, crop: QImage) -> None:
        key = (image, box)
        self._crops[key] = QPixmap.fromImage(crop)
        for i, row in enumerate(self._rows):
            if self._crop_key(row) == key:
                self.dataChanged.emit(self.index(i), self.index(i), [Qt.DecorationRole])

    def set_threshold(self, value: float) -> None:
        self.threshold = value
        if self._rows:
            self.dataChanged.emit(self.index(0), self.index(len(self._rows) - 1))

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: QModelIndex, role: int = Qt.DisplayRole):
        if not index.isValid():
            return None
        row = self._rows[index.row()]
        if role == RowRole:
            return row
        if role == Qt.DisplayRole:
            return f"{row.score:.3f}"
        if role == Qt.ToolTipRole:
            extra = "\nthis image already has an overlapping label of this category" if row.labelled else ""
            if row.look > 1:
                extra += f"\nlook {row.look} at this photo: the box{'es' if row.look > 2 else ''} shown before was rejected"
            if row.image in self.frame_times:
                extra += f"\nat {format_time(self.frame_times[row.image])} in the video"
            return f"#{row.rank + 1}  {row.image}\nscore {row.score:.3f} · {row.status}{extra}"
        if role == Qt.DecorationRole:
            key = self._crop_key(row)
            if key not in self._crops and key not in self._asked:
                self._asked.add(key)
                self.cropWanted.emit(row.key, row.image, row.box)
            return self._crops.get(key)
        return None


class HitDelegate(QStyledItemDelegate):
    def __init__(self, model: HitListModel, parent=None):
        super().__init__(parent)
        self.model = model

    def sizeHint(self, option, index) -> QSize:  # noqa: ARG002 - Qt signature
        return TILE

    def paint(self, painter, option, index) -> None:
        row: HitRow = index.data(RowRole)
        painter.save()
        rect = option.rect.adjusted(3, 3, -3, -3)
        selected = bool(option.state & QStyle.State_Selected)
        faded = row.status == "rejected" or (row.status == "pending" and row.score < self.model.threshold)
        painter.setOpacity(0.45 if faded and not selected else 1.0)
        painter.fillRect(rect, QColor("#35507a") if selected else QColor("#262626"))
        crop_rect = QRect(rect.left() + 5, rect.top() + 5, CROP_PX, CROP_PX)
        pixmap = index.data(Qt.DecorationRole)
        if isinstance(pixmap, QPixmap) and not pixmap.isNull():
            scaled = pixmap.scaled(crop_rect.size(), Qt.KeepAspectRatio, Qt.SmoothTransformation)
            painter.drawPixmap(crop_rect.left() + (CROP_PX - scaled.width()) // 2,
                               crop_rect.top() + (CROP_PX - scaled.height()) // 2, scaled)
        color = QColor(STATUS_COLORS[row.status])
        if row.status != "pending":
            painter.setPen(color)
            painter.drawRect(rect.adjusted(0, 0, -1, -1))
        text_rect = QRect(rect.left() + 5, crop_rect.bottom() + 4, CROP_PX, 22)
        painter.setPen(QColor("#e6e6e6"))
        painter.drawText(text_rect, Qt.AlignLeft | Qt.AlignVCenter, f"#{row.rank + 1}  {row.score:.3f}")
        bold = QFont(painter.font())
        bold.setBold(True)
        painter.setFont(bold)
        painter.setPen(color)
        painter.drawText(text_rect, Qt.AlignRight | Qt.AlignVCenter, STATUS_MARKS[row.status])
        if row.labelled:
            tag = QRect(crop_rect.left(), crop_rect.top(), 58, 16)
            painter.fillRect(tag, QColor("#1f6feb"))
            painter.setPen(QColor("#ffffff"))
            painter.drawText(tag, Qt.AlignCenter, "labelled")
        if row.image in self.model.frame_times:
            when = format_time(self.model.frame_times[row.image])
            tag = QRect(crop_rect.left(), crop_rect.bottom() - 16, 12 + painter.fontMetrics().horizontalAdvance(when), 16)
            painter.fillRect(tag, QColor("#000000"))
            painter.setPen(QColor("#ffffff"))
            painter.drawText(tag, Qt.AlignCenter, when)
        if row.look > 1:
            tag = QRect(crop_rect.right() - 48, crop_rect.top(), 48, 16)
            painter.fillRect(tag, QColor("#8250df"))
            painter.setPen(QColor("#ffffff"))
            painter.drawText(tag, Qt.AlignCenter, f"look {row.look}")
        painter.restore()


class ResultPanel(QWidget):
    currentChanged = Signal(object)  # hit key or None
    thresholdChanged = Signal(float)
    hideLabelledChanged = Signal(bool)
    queryChosen = Signal(int)  # index of the query whose review to show

    def __init__(self, parent=None):
        super().__init__(parent)
        self.model = HitListModel(self)
        self.summary = QLabel(HINT)
        self.summary.setWordWrap(True)
        self.summary.setObjectName("resultSummary")
        self.queries = QComboBox()
        self.queries.setObjectName("queryHistory")
        self.queries.setToolTip("Every query's review is kept: pick one to go back to it where you left it")
        self.queries.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.queries.setMinimumContentsLength(18)
        self.queries.activated.connect(self.queryChosen)
        self.view = QListView()
        self.view.setModel(self.model)
        self.view.setItemDelegate(HitDelegate(self.model, self.view))
        self.view.setViewMode(QListView.IconMode)
        self.view.setResizeMode(QListView.Adjust)
        self.view.setMovement(QListView.Static)
        self.view.setUniformItemSizes(True)
        self.view.setSpacing(2)
        self.view.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.view.selectionModel().currentChanged.connect(self._current_changed)
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.setToolTip("Score threshold: hits below it are dimmed; 'Accept all above' accepts the rest")
        self.slider.valueChanged.connect(self._slider_moved)
        self.threshold_label = QLabel("—")
        self.threshold_label.setMinimumWidth(48)
        self.hide_labelled = QCheckBox("Hide labelled")
        self.hide_labelled.setToolTip("Hide hits on images that already have an overlapping label of this category")
        self.hide_labelled.toggled.connect(self.hideLabelledChanged)
        self.buttons = QHBoxLayout()
        controls = QHBoxLayout()
        controls.addLayout(self.buttons)
        controls.addSpacing(12)
        controls.addWidget(QLabel("Threshold"))
        controls.addWidget(self.slider, 1)
        controls.addWidget(self.threshold_label)
        controls.addWidget(self.hide_labelled)
        self._accept_all_layout = QHBoxLayout()
        controls.addLayout(self._accept_all_layout)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        top = QHBoxLayout()
        top.addWidget(self.summary, 1)
        top.addWidget(QLabel("Query"))
        top.addWidget(self.queries)
        layout.addLayout(top)
        layout.addLayout(controls)
        layout.addWidget(self.view, 1)
        self._range = (0.0, 1.0)

    def add_action_button(self, action, trailing: bool = False) -> QToolButton:
        button = QToolButton()
        button.setDefaultAction(action)
        button.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        (self._accept_all_layout if trailing else self.buttons).addWidget(button)
        return button

    # ---- state from the window ---------------------------------------------------------------
    def set_rows(self, rows: list[HitRow], summary: str) -> None:
        current = self.current_key()
        self.model.set_rows(rows)
        self.summary.setText(summary)
        if current is not None and self.model.row_of(current) >= 0:
            self.select_key(current)

    def set_range(self, low: float, high: float, threshold: float | None = None) -> None:
        """The scores the slider spans (set once per review, so the threshold stays put), and
        the threshold (the middle of the range unless given)."""
        self._range = (low, high) if high > low else (low - 0.5, low + 0.5)
        self.slider.blockSignals(True)
        if threshold is None:
            self.slider.setValue(SLIDER_STEPS // 2)
        else:
            self.set_threshold(threshold)
        self.slider.blockSignals(False)
        self._slider_moved(self.slider.value())

    def set_queries(self, titles: list[str], current: int) -> None:
        """The queries whose reviews are kept, and the one shown."""
        self.queries.blockSignals(True)
        self.queries.clear()
        self.queries.addItems(titles)
        self.queries.setCurrentIndex(current)
        self.queries.setEnabled(len(titles) > 1)
        self.queries.blockSignals(False)

    def threshold(self) -> float:
        low, high = self._range
        return low + (high - low) * self.slider.value() / SLIDER_STEPS

    def set_threshold(self, value: float) -> None:
        low, high = self._range
        self.slider.setValue(round((value - low) / (high - low) * SLIDER_STEPS))

    def current_key(self) -> int | None:
        index = self.view.currentIndex()
        return index.data(RowRole).key if index.isValid() else None

    def selected_keys(self) -> list[int]:
        rows = sorted(i.row() for i in self.view.selectionModel().selectedIndexes())
        keys = [self.model.rows()[r].key for r in rows]
        current = self.current_key()
        return keys or ([current] if current is not None else [])

    def select_key(self, key: int) -> None:
        row = self.model.row_of(key)
        if row >= 0:
            index = self.model.index(row)
            self.view.setCurrentIndex(index)
            self.view.scrollTo(index)

    def move(self, step: int) -> None:
        """Select the hit `step` places after the current one (J/K, arrows)."""
        count = self.model.rowCount()
        if not count:
            return
        row = self.view.currentIndex().row()
        row = 0 if row < 0 else min(max(row + step, 0), count - 1)
        self.view.setCurrentIndex(self.model.index(row))
        self.view.scrollTo(self.model.index(row))

    def _current_changed(self, current: QModelIndex, previous: QModelIndex) -> None:  # noqa: ARG002
        self.currentChanged.emit(current.data(RowRole).key if current.isValid() else None)

    def _slider_moved(self, value: int) -> None:  # noqa: ARG002 - the threshold reads the slider
        threshold = self.threshold()
        self.threshold_label.setText(f"{threshold:.3f}")
        self.model.set_threshold(threshold)
        self.thresholdChanged.emit(threshold)
