"""The folder's images: thumbnail, name and a status line (unlabelled / labelled / hits pending).

The model holds no annotations: the window tells it each image's counts. Thumbnails are asked for
(`thumbnailWanted`) only when a row is first painted, so a large folder opens at once.
"""
from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QAbstractListModel, QModelIndex, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QListView, QStyle, QStyledItemDelegate

THUMB_PX = 56
StatusRole = Qt.UserRole + 1
PathRole = Qt.UserRole + 2

UNLABELLED, LABELLED, PENDING = "unlabelled", "labelled", "hits pending"
STATUS_COLORS = {UNLABELLED: "#8a8a8a", LABELLED: "#3fb950", PENDING: "#f0a020"}


@dataclass
class ImageState:
    path: str
    labels: int = 0
    pending: int = 0
    problem: str = ""  # why the image cannot be read, if it cannot

    @property
    def status(self) -> str:
        if self.pending:
            return PENDING
        return LABELLED if self.labels else UNLABELLED

    def status_text(self) -> str:
        if self.problem:
            return f"unreadable: {self.problem}"
        parts = [f"{self.labels} label{'s' if self.labels != 1 else ''}"] if self.labels else []
        if self.pending:
            parts.append(f"{self.pending} hit{'s' if self.pending != 1 else ''} pending")
        return " · ".join(parts) or UNLABELLED


class FileListModel(QAbstractListModel):
    thumbnailWanted = Signal(str)  # relative path

    def __init__(self, parent=None):
        super().__init__(parent)
        self._states: list[ImageState] = []
        self._rows: dict[str, int] = {}
        self._thumbs: dict[str, QPixmap] = {}
        self._asked: set[str] = set()

    def set_images(self, paths: list[str]) -> None:
        self.beginResetModel()
        self._states = [ImageState(p) for p in paths]
        self._rows = {p: i for i, p in enumerate(paths)}
        self._thumbs.clear()
        self._asked.clear()
        self.endResetModel()

    def paths(self) -> list[str]:
        return [s.path for s in self._states]

    def row_of(self, path: str) -> int:
        return self._rows.get(path, -1)

    def state(self, path: str) -> ImageState:
        return self._states[self._rows[path]]

    def set_counts(self, labels: dict[str, int], pending: dict[str, int]) -> None:
        """Update every image's label and pending-hit counts; repaints only rows that changed."""
        for row, state in enumerate(self._states):
            new = (labels.get(state.path, 0), pending.get(state.path, 0))
            if new != (state.labels, state.pending):
                state.labels, state.pending = new
                index = self.index(row)
                self.dataChanged.emit(index, index, [StatusRole, Qt.ToolTipRole])

    def set_problem(self, path: str, reason: str) -> None:
        if path in self._rows:
            self._states[self._rows[path]].problem = reason
            index = self.index(self._rows[path])
            self.dataChanged.emit(index, index)

    def set_thumbnail(self, path: str, image: QImage) -> None:
        if path in self._rows:
            self._thumbs[path] = QPixmap.fromImage(image)
            index = self.index(self._rows[path])
            self.dataChanged.emit(index, index, [Qt.DecorationRole])

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._states)

    def data(self, index: QModelIndex, role: int = Qt.DisplayRole):
        if not index.isValid():
            return None
        state = self._states[index.row()]
        if role == Qt.DisplayRole:
            return state.path
        if role == PathRole:
            return state.path
        if role == StatusRole:
            return state.status
        if role == Qt.ToolTipRole:
            return f"{state.path}\n{state.status_text()}"
        if role == Qt.DecorationRole:
            if state.path not in self._thumbs and state.path not in self._asked:
                self._asked.add(state.path)
                self.thumbnailWanted.emit(state.path)
            return self._thumbs.get(state.path)
        return None


class FileDelegate(QStyledItemDelegate):
    """Thumbnail on the left, the name, and a coloured status line."""

    def sizeHint(self, option, index) -> QSize:  # noqa: ARG002 - Qt signature
        return QSize(200, THUMB_PX + 8)

    def paint(self, painter, option, index) -> None:
        painter.save()
        if option.state & QStyle.State_Selected:
            painter.fillRect(option.rect, option.palette.highlight())
        rect = option.rect.adjusted(4, 4, -4, -4)
        thumb = index.data(Qt.DecorationRole)
        thumb_rect = QRect(rect.left(), rect.top(), THUMB_PX, THUMB_PX)
        if isinstance(thumb, QPixmap) and not thumb.isNull():
            scaled = thumb.scaled(thumb_rect.size(), Qt.KeepAspectRatio, Qt.SmoothTransformation)
            painter.drawPixmap(thumb_rect.left() + (THUMB_PX - scaled.width()) // 2,
                               thumb_rect.top() + (THUMB_PX - scaled.height()) // 2, scaled)
        else:
            painter.fillRect(thumb_rect, QColor("#3a3a3a"))
        text_left = thumb_rect.right() + 8
        name_rect = QRect(text_left, rect.top() + 4, rect.right() - text_left, 20)
        selected = bool(option.state & QStyle.State_Selected)
        painter.setPen(option.palette.highlightedText().color() if selected else option.palette.text().color())
        name = painter.fontMetrics().elidedText(index.data(Qt.DisplayRole), Qt.ElideLeft, name_rect.width())
        painter.drawText(name_rect, Qt.AlignLeft | Qt.AlignVCenter, name)
        status = index.data(StatusRole)
        color = QColor(STATUS_COLORS.get(status, "#8a8a8a"))
        dot = QRect(text_left, name_rect.bottom() + 9, 8, 8)
        painter.setBrush(color)
        painter.setPen(Qt.NoPen)
        painter.drawEllipse(dot)
        painter.setPen(color)
        detail = index.data(Qt.ToolTipRole).split("\n", 1)[1]
        painter.drawText(QRect(dot.right() + 6, name_rect.bottom() + 4, rect.right() - dot.right(), 18),
                         Qt.AlignLeft | Qt.AlignVCenter, detail)
        painter.restore()


class FileListView(QListView):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setItemDelegate(FileDelegate(self))
        self.setSelectionMode(QAbstractItemView.SingleSelection)
        self.setUniformItemSizes(True)
        self.setVerticalScrollMode(QAbstractItemView.ScrollPerPixel)
