"""The folder's images: thumbnail, name and a status line (unlabelled / labelled / hits pending).

The model holds no annotations: the window tells it each image's counts. It is built for folders
of 100k photos and more: the view asks only for the rows it paints (uniform item sizes), a row is
the image's path string and nothing else (counts and problems are kept only for the images that
have them, a path's row is found by bisection in the sorted list), thumbnails are asked for
(`thumbnailWanted`) only when a row is first painted and at most THUMB_CACHE of them are kept,
and a folder's list may arrive in batches (`append_images`) while it is still being scanned.

A video's sampled frames (`clip.mp4#frame=N`) are listed as one row for the video, with the
counts of all its frames; it expands (`toggle`, double-click) to one row per frame showing the
frame's time. `paths()` stays every image and frame in order (for stepping through them);
`image_at(row)` is what a row shows (a video row: its first frame).
"""
from __future__ import annotations

from bisect import bisect, bisect_left
from collections import OrderedDict
from dataclasses import dataclass, field

from PySide6.QtCore import QAbstractListModel, QModelIndex, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QListView, QStyle, QStyledItemDelegate

from dasr_annotator.engine.store.video import format_time, split_frame_name

THUMB_PX = 56
THUMB_CACHE = 1000  # thumbnails kept (~10 KB each); scrolled-away ones are asked for again
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


@dataclass(eq=False)
class VideoGroup:
    """One video's frames, listed as one row unless expanded."""

    video: str
    frames: list[str] = field(default_factory=list)
    expanded: bool = False

    def totals(self, state_of) -> ImageState:
        """The video's counts: the sums over its frames (a problem only if every frame has one)."""
        total = ImageState(self.video)
        problems = set()
        for f in self.frames:
            state = state_of(f)
            total.labels += state.labels
            total.pending += state.pending
            problems.add(state.problem)
        total.problem = problems.pop() if len(problems) == 1 else ""
        return total


class FileListModel(QAbstractListModel):
    thumbnailWanted = Signal(str)  # relative path

    def __init__(self, parent=None):
        super().__init__(parent)
        self._order: list[str] = []  # every image and frame
        self._sorted = True  # `_order` is sorted: a path's position is found by bisection
        self._positions: dict[str, int] | None = None  # else path -> position, made when first needed
        self._labels: dict[str, int] = {}  # only images with labels ...
        self._pending: dict[str, int] = {}  # ... with hits waiting ...
        self._problems: dict[str, str] = {}  # ... or that cannot be read
        self._groups: dict[str, VideoGroup] = {}
        self._times: dict[str, float] = {}
        # Rows: without videos `_visible` is `_order` itself (no second list); with videos it
        # lists an image or frame path, or a VideoGroup, per row, and `_rows` maps paths to rows.
        self._visible: list = self._order
        self._rows: dict[str, int] = {}
        self._group_rows: dict[str, int] = {}
        self._thumbs: OrderedDict[str, QPixmap] = OrderedDict()
        self._asked: set[str] = set()

    # ---- filling ----------------------------------------------------------------------------
    def set_images(self, paths: list[str], frame_times: dict[str, float] | None = None) -> None:
        """`paths` in order; video frames (`clip.mp4#frame=N`) grouped under their video, shown
        with their time from `frame_times` (seconds) when given. The same paths again keep the
        rows as they are (counts, thumbnails, expanded videos) and only take the new strings."""
        times = dict(frame_times or {})
        if paths == self._order and times == self._times:
            self._adopt(paths)
            return
        self.beginResetModel()
        self._order = list(paths)
        self._times = times
        self._sorted = _is_sorted(self._order)
        self._positions = None
        self._groups = {}
        self._visible = self._order
        self._rows, self._group_rows = {}, {}
        for counts in (self._labels, self._pending, self._problems):
            for gone in [p for p in counts if self._position(p) < 0]:
                del counts[gone]
        self._thumbs.clear()
        self._asked.clear()
        if any(split_frame_name(p) is not None for p in self._order if "#" in p):
            self._group_videos()
        self.endResetModel()

    def append_images(self, paths: list[str], frame_times: dict[str, float] | None = None) -> None:
        """Add `paths` after the images listed so far (a folder listed in batches)."""
        if not paths:
            return
        if self._groups or any(split_frame_name(p) is not None for p in paths if "#" in p):
            self.set_images(self._order + list(paths), {**self._times, **(frame_times or {})})
            return
        first = len(self._order)
        self.beginInsertRows(QModelIndex(), first, first + len(paths) - 1)
        self._sorted = self._sorted and (first == 0 or self._order[-1] < paths[0]) and _is_sorted(paths)
        self._order.extend(paths)
        self._positions = None
        self.endInsertRows()

    def _adopt(self, paths: list[str]) -> None:
        """Hold the strings of `paths` (equal to ours) instead of our own: one copy of each
        path in the process, not two."""
        self._order[:] = paths
        self._positions = None
        if self._groups:
            for group in self._groups.values():
                group.frames[:] = [paths[self._position(f)] for f in group.frames]
            self._visible[:] = [e if isinstance(e, VideoGroup) else paths[self._position(e)] for e in self._visible]
            self._index_rows()

    def _group_videos(self) -> None:
        self._visible = []
        for p in self._order:
            ref = split_frame_name(p) if "#" in p else None
            if ref is None:
                self._visible.append(p)
                continue
            if ref.video not in self._groups:
                self._groups[ref.video] = VideoGroup(ref.video)
                self._visible.append(self._groups[ref.video])
            self._groups[ref.video].frames.append(p)
        self._index_rows()

    def _index_rows(self) -> None:
        self._rows, self._group_rows = {}, {}
        for row, entry in enumerate(self._visible):
            if isinstance(entry, VideoGroup):
                self._group_rows[entry.video] = row
                for f in entry.frames:  # a frame of a collapsed video: its video's row
                    self._rows.setdefault(f, row)
            else:
                self._rows[entry] = row

    # ---- looking up -------------------------------------------------------------------------
    def _position(self, path: str) -> int:
        """Where `path` is in `paths()`, -1 when it is not there."""
        if self._sorted:
            i = bisect_left(self._order, path)
            return i if i < len(self._order) and self._order[i] == path else -1
        if self._positions is None:
            self._positions = {p: i for i, p in enumerate(self._order)}
        return self._positions.get(path, -1)

    def paths(self) -> list[str]:
        return list(self._order)

    def __contains__(self, path: str) -> bool:
        return self._position(path) >= 0

    def step_from(self, path: str | None, step: int) -> str | None:
        """The image `step` places after `path` in `paths()` (clamped); the first one when
        `path` is not listed; None for an empty list."""
        if not self._order:
            return None
        here = self._position(path) if path is not None else -1
        if here < 0:
            return self._order[min(max(step - 1, 0), len(self._order) - 1)]
        return self._order[min(max(here + step, 0), len(self._order) - 1)]

    def add_frames(self, frame_times: dict[str, float]) -> list[str]:
        """List frames of listed videos that are not listed yet (frame -> seconds; e.g. those a
        label was propagated to, sampled finer than the folder), each under its video in frame
        order; returns the frames added."""
        added = []
        for path, seconds in frame_times.items():
            ref = split_frame_name(path)
            if path in self or ref is None or ref.video not in self._groups:
                continue
            group = self._groups[ref.video]
            position = bisect([split_frame_name(f).frame for f in group.frames], ref.frame)
            neighbour = group.frames[position - 1] if position else group.frames[0]
            at = self._order.index(neighbour) + (1 if position else 0)
            row = self._visible.index(group) + 1 + position
            if group.expanded:
                self.beginInsertRows(QModelIndex(), row, row)
            group.frames.insert(position, path)
            self._order.insert(at, path)
            self._times[path] = seconds
            self._sorted, self._positions = _is_sorted(self._order), None
            if group.expanded:
                self._visible.insert(row, path)
            self._index_rows()
            if group.expanded:
                self.endInsertRows()
            self._changed(path)  # the video's row: its frame count
            added.append(path)
        return added

    def row_of(self, path: str) -> int:
        if self._visible is self._order:
            return self._position(path)
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
        if self._position(path) < 0:
            raise KeyError(path)
        return self._state(path)

    def _state(self, path: str) -> ImageState:
        return ImageState(path, self._labels.get(path, 0), self._pending.get(path, 0), self._problems.get(path, ""))

    # ---- changes ----------------------------------------------------------------------------
    def _changed(self, path: str, roles=()) -> None:
        """Repaint the row of `path` and, for a frame, its video's row."""
        rows = {self.row_of(path)}
        ref = split_frame_name(path) if "#" in path else None
        if ref is not None and ref.video in self._group_rows:
            rows.add(self._group_rows[ref.video])
        for row in sorted(r for r in rows if r >= 0):
            self.dataChanged.emit(self.index(row), self.index(row), list(roles))

    def set_counts(self, labels: dict[str, int], pending: dict[str, int]) -> None:
        """Set every image's label and pending-hit counts (images not named have none); repaints
        only the rows that changed (the work grows with the labelled images, not the folder)."""
        changed = _differing(self._labels, labels) | _differing(self._pending, pending)
        self._labels = {p: n for p, n in labels.items() if n}
        self._pending = {p: n for p, n in pending.items() if n}
        for path in sorted(changed):
            self._changed(path, [StatusRole, Qt.ToolTipRole])

    def set_problem(self, path: str, reason: str) -> None:
        if self._position(path) >= 0:
            self._problems[path] = reason
            self._changed(path)

    def set_thumbnail(self, path: str, image: QImage) -> None:
        self._asked.discard(path)
        if self._position(path) < 0:
            return
        pixmap = QPixmap.fromImage(image)
        if THUMB_PX not in (pixmap.width(), pixmap.height()) and not pixmap.isNull():  # once, not at every paint
            pixmap = pixmap.scaled(THUMB_PX, THUMB_PX, Qt.KeepAspectRatio, Qt.SmoothTransformation)
        self._thumbs[path] = pixmap
        self._thumbs.move_to_end(path)
        while len(self._thumbs) > THUMB_CACHE:
            self._thumbs.popitem(last=False)
        self._changed(path, [Qt.DecorationRole])

    def forget_thumbnail_requests(self) -> None:
        """Thumbnails asked for but not arrived are asked for again when their rows are next
        painted (the window dropped the requests of rows scrolled past)."""
        self._asked.clear()

    # ---- the view's questions ---------------------------------------------------------------
    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._visible)

    def _frame_text(self, path: str) -> str:
        ref = split_frame_name(path)
        time = self._times.get(path)
        return f"    {format_time(time)}  · frame {ref.frame}" if time is not None else f"    frame {ref.frame}"

    def data(self, index: QModelIndex, role: int = Qt.DisplayRole):
        if not index.isValid() or index.row() >= len(self._visible):
            return None
        entry = self._visible[index.row()]
        if isinstance(entry, VideoGroup):
            return self._video_data(entry, role)
        if role == Qt.DisplayRole:
            return self._frame_text(entry) if "#" in entry and split_frame_name(entry) else entry
        if role == PathRole:
            return entry
        if role == StatusRole:
            return self._state(entry).status
        if role == Qt.ToolTipRole:
            return f"{entry}\n{self._state(entry).status_text()}"
        if role == Qt.DecorationRole:
            return self._thumb_of(entry)
        return None

    def _video_data(self, group: VideoGroup, role: int):
        first = group.frames[0]
        if role == Qt.DisplayRole:
            return f"{'▾' if group.expanded else '▸'} {group.video}"
        if role == PathRole:
            return first
        if role == StatusRole:
            return group.totals(self._state).status
        if role == Qt.ToolTipRole:
            span = self._times.get(group.frames[-1])
            length = f", {format_time(span)}" if span is not None else ""
            return (f"{group.video}\n{len(group.frames)} frames{length} · {group.totals(self._state).status_text()}"
                    "\n(double-click to list its frames)")
        if role == Qt.DecorationRole:
            return self._thumb_of(first)
        return None

    def _thumb_of(self, path: str):
        thumb = self._thumbs.get(path)
        if thumb is not None:
            self._thumbs.move_to_end(path)
        elif path not in self._asked:
            self._asked.add(path)
            self.thumbnailWanted.emit(path)
        return thumb


def _is_sorted(paths: list[str]) -> bool:
    return all(a < b for a, b in zip(paths, paths[1:]))


def _differing(old: dict[str, int], new: dict[str, int]) -> set[str]:
    """Paths whose count differs between `old` and `new` (a missing path counts 0)."""
    return ({p for p, n in new.items() if old.get(p, 0) != n}
            | {p for p, n in old.items() if n and new.get(p, 0) != n})


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
            painter.drawPixmap(thumb_rect.left() + (THUMB_PX - thumb.width()) // 2,
                               thumb_rect.top() + (THUMB_PX - thumb.height()) // 2, thumb)
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
