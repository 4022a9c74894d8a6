"""The folder's images: thumbnail, name and a status line (unlabelled / labelled / hits pending).

The model holds no annotations: the window tells it each image's counts. Thumbnails are asked for
(`thumbnailWanted`) only when a row is first painted, so a large folder opens at once.

A video's sampled frames (`clip.mp4#frame=N`) are listed as one row for the video, with the
counts of all its frames; it expands (`toggle`, double-click) to one row per frame showing the
frame's time. `paths()` stays every image and frame in order (for stepping through them);
`image_at(row)` is what a row shows (a video row: its first frame).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from PySide6.QtCore import QAbstractListModel, QModelIndex, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QListView, QStyle, QStyledItemDelegate

from dasr_annotator.engine.store.video import format_time, split_frame_name

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


@dataclass
class VideoGroup:
    """One video's frames, listed as one row unless expanded."""

    video: str
    frames: list[str] = field(default_factory=list)
    expanded: bool = False

    def totals(self, states: dict[str, ImageState]) -> ImageState:
        """The video's counts: the sums over its frames (a problem only if every frame has one)."""
        total = ImageState(self.video)
        for f in self.frames:
            total.labels += states[f].labels
            total.pending += states[f].pending
        problems = {states[f].problem for f in self.frames}
        total.problem = problems.pop() if len(problems) == 1 else ""
        return total


class FileListModel(QAbstractListModel):
    thumbnailWanted = Signal(str)  # relative path

    def __init__(self, parent=None):
        super().__init__(parent)
        self._order: list[str] = []  # every image and frame
        self._by_path: dict[str, ImageState] = {}
        self._groups: dict[str, VideoGroup] = {}
        self._times: dict[str, float] = {}
        self._visible: list[str | VideoGroup] = []  # rows: an image or frame path, or a video
        self._rows: dict[str, int] = {}
        self._thumbs: dict[str, QPixmap] = {}
        self._asked: set[str] = set()

    def set_images(self, paths: list[str], frame_times: dict[str, float] | None = None) -> None:
        """`paths` in order; video frames (`clip.mp4#frame=N`) grouped under their video, shown
        with their time from `frame_times` (seconds) when given."""
        self.beginResetModel()
        self._order = list(paths)
        self._by_path = {p: ImageState(p) for p in paths}
        self._times = dict(frame_times or {})
        self._groups = {}
        self._visible = []
        for p in paths:
            ref = split_frame_name(p)
            if ref is None:
                self._visible.append(p)
                continue
            if ref.video not in self._groups:
                self._groups[ref.video] = VideoGroup(ref.video)
                self._visible.append(self._groups[ref.video])
            self._groups[ref.video].frames.append(p)
        self._index_rows()
        self._thumbs.clear()
        self._asked.clear()
        self.endResetModel()

    def _index_rows(self) -> None:
        self._rows = {}
        for row, entry in enumerate(self._visible):
            if isinstance(entry, VideoGroup):
                for f in entry.frames:  # a frame of a collapsed video: its video's row
                    self._rows.setdefault(f, row)
            else:
                self._rows[entry] = row

    def paths(self) -> list[str]:
        return list(self._order)

    def add_frames(self, frame_times: dict[str, float]) -> list[str]:
        """List frames of listed videos that are not listed yet (frame -> seconds; e.g. those a
        label was propagated to, sampled finer than the folder), each under its video in frame
        order; returns the frames added."""
        added = []
        for path, seconds in frame_times.items():
            ref = split_frame_name(path)
            if path in self._by_path or ref is None or ref.video not in self._groups:
                continue
            group = self._groups[ref.video]
            position = bisect.bisect([split_frame_name(f).frame for f in group.frames], ref.frame)
            neighbour = group.frames[position - 1] if position else group.frames[0]
            at = self._order.index(neighbour) + (1 if position else 0)
            row = self._visible.index(group) + 1 + position
            if group.expanded:
                self.beginInsertRows(QModelIndex(), row, row)
            group.frames.insert(position, path)
            self._order.insert(at, path)
            self._by_path[path] = ImageState(path)
            self._times[path] = seconds
            if group.expanded:
                self._visible.insert(row, path)
            self._index_rows()
            if group.expanded:
                self.endInsertRows()
            self._changed(path)  # the video's row: its frame count
            added.append(path)
        return added

    def row_of(self, path: str) -> int:
        return self._rows.get(path, -1)

    def image_at(self, row: int) -> str:
        """The image a row shows: its image or frame, or a video's first frame."""
        entry = self._visible[row]
        return entry.frames[0] if isinstance(entry, VideoGroup) else entry

    def is_video_row(self, row: int) -> bool:
        return 0 <= row < len(self._visible) and isinstance(self._visible[row], VideoGroup)

    def toggle(self, row: int) -> bool:
        """Expand or collapse the video at `row`; False when the row is no video."""
        if not self.is_video_row(row):
            return False
        group = self._visible[row]
        if group.expanded:
            self.beginRemoveRows(QModelIndex(), row + 1, row + len(group.frames))
            del self._visible[row + 1:row + 1 + len(group.frames)]
            group.expanded = False
            self._index_rows()
            self.endRemoveRows()
        else:
            self.beginInsertRows(QModelIndex(), row + 1, row + len(group.frames))
            self._visible[row + 1:row + 1] = group.frames
            group.expanded = True
            self._index_rows()
            self.endInsertRows()
        self.dataChanged.emit(self.index(row), self.index(row))
        return True

    def reveal(self, path: str) -> None:
        """Expand the video of frame `path` so that it has a row of its own."""
        row = self.row_of(path)
        if row >= 0 and self.is_video_row(row) and not self._visible[row].expanded:
            self.toggle(row)

    def state(self, path: str) -> ImageState:
        return self._by_path[path]

    def _changed(self, path: str, roles=()) -> None:
        """Repaint the row of `path` and, for a frame, its video's row."""
        rows = {self._rows.get(path, -1)}
        ref = split_frame_name(path)
        if ref is not None and ref.video in self._groups:
            rows.add(self._visible.index(self._groups[ref.video]))
        for row in sorted(r for r in rows if r >= 0):
            self.dataChanged.emit(self.index(row), self.index(row), list(roles))

    def set_counts(self, labels: dict[str, int], pending: dict[str, int]) -> None:
        """Update every image's label and pending-hit counts; repaints only rows that changed."""
        for state in self._by_path.values():
            new = (labels.get(state.path, 0), pending.get(state.path, 0))
            if new != (state.labels, state.pending):
                state.labels, state.pending = new
                self._changed(state.path, [StatusRole, Qt.ToolTipRole])

    def set_problem(self, path: str, reason: str) -> None:
        if path in self._by_path:
            self._by_path[path].problem = reason
            self._changed(path)

    def set_thumbnail(self, path: str, image: QImage) -> None:
        if path in self._by_path:
            self._thumbs[path] = QPixmap.fromImage(image)
            self._changed(path, [Qt.DecorationRole])

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._visible)

    def _frame_text(self, path: str) -> str:
        ref = split_frame_name(path)
        time = self._times.get(path)
        return f"    {format_time(time)}  · frame {ref.frame}" if time is not None else f"    frame {ref.frame}"

    def data(self, index: QModelIndex, role: int = Qt.DisplayRole):
        if not index.isValid():
            return None
        entry = self._visible[index.row()]
        if isinstance(entry, VideoGroup):
            return self._video_data(entry, role)
        state = self._by_path[entry]
        if role == Qt.DisplayRole:
            return self._frame_text(state.path) if split_frame_name(state.path) else state.path
        if role == PathRole:
            return state.path
        if role == StatusRole:
            return state.status
        if role == Qt.ToolTipRole:
            return f"{state.path}\n{state.status_text()}"
        if role == Qt.DecorationRole:
            return self._thumb_of(state.path)
        return None

    def _video_data(self, group: VideoGroup, role: int):
        total = group.totals(self._by_path)
        first = group.frames[0]
        if role == Qt.DisplayRole:
            return f"{'▾' if group.expanded else '▸'} {group.video}"
        if role == PathRole:
            return first
        if role == StatusRole:
            return total.status
        if role == Qt.ToolTipRole:
            span = self._times.get(group.frames[-1])
            length = f", {format_time(span)}" if span is not None else ""
            return (f"{group.video}\n{len(group.frames)} frames{length} · {total.status_text()}"
                    "\n(double-click to list its frames)")
        if role == Qt.DecorationRole:
            return self._thumb_of(first)
        return None

    def _thumb_of(self, path: str):
        if path not in self._thumbs and path not in self._asked:
            self._asked.add(path)
            self.thumbnailWanted.emit(path)
        return self._thumbs.get(path)


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
        detail = index.data(Qt.ToolTipRole).split("\n")[1]
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
