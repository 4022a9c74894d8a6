"""The folder's images: thumbnail, name and a status line (unlabelled / labelled / hits pending).

The model holds no annotations: the window tells it each image's counts. It is built for folders
of 100k photos and more: the view asks only for the rows it paints (uniform item sizes), a row is
the image's path string and nothing else (counts and problems are kept only for the images that
have them, a path's row is found by bisection in the sorted list), thumbnails are asked for
(`thumbnailWanted`) only when a row is first painted and at most THUMB_CACHE of them are kept
(decoded at the size shown by the window's loader: the UI thread only wraps them),
and a folder's list may arrive in batches (`append_images`) while it is still being scanned.

A video's sampled frames (`clip.mp4#frame=N`) are listed as one row for the video, with the
counts of all its frames; it expands (`toggle`, double-click) to one row per frame showing the
frame's time. `paths()` stays every image and frame in order (for stepping through them);
`image_at(row)` is what a row shows (a video row: its first frame).
"""
from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass, field

from PySide6.QtCore import QAbstractListModel, QModelIndex, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QListView, QStyle, QStyledItemDelegate

from dasr_annotator.engine.store.video import format_time, order_key, split_frame_name, video_order_key

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
    frames: list[str] = field(default_factory=list)  # in `order_key` order
    expanded: bool = False

    @property
    def key(self) -> str:
        return video_order_key(self.video)

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
        self._order: list[str] = []  # every image and frame, in `order_key` order
        self._labels: dict[str, int] = {}  # only images with labels ...
        self._pending: dict[str, int] = {}  # ... with hits waiting ...
        self._problems: dict[str, str] = {}  # ... or that cannot be read
        self._groups: dict[str, VideoGroup] = {}
        self._times: dict[str, float] = {}
        # Rows: without videos `_visible` is `_order` itself (no second list); with videos it
        # lists an image or frame path, or a VideoGroup, per row, in the same order (a group
        # where its video's frames begin, an expanded video's frames after it): a path's row is
        # found by bisection either way.
        self._visible: list = self._order
        self._thumbs: OrderedDict[str, QPixmap] = OrderedDict()
        self._asked: set[str] = set()

    # ---- filling ----------------------------------------------------------------------------
    def set_images(self, paths: list[str], frame_times: dict[str, float] | None = None) -> None:
        """`paths` (listed in `order_key` order whatever their order here); video frames
        (`clip.mp4#frame=N`) grouped under their video, shown with their time from
        `frame_times` (seconds) when given. The same paths again keep the rows as they are
        (counts, thumbnails, expanded videos) and only take the new strings; other paths reset
        the list, keeping the thumbnails of the images still listed."""
        times = dict(frame_times or {})
        if paths == self._order and times == self._times:
            self._adopt(paths)
            return
        self.beginResetModel()
        self._order = sorted(paths, key=order_key)
        self._times = times
        self._groups = {}
        self._visible = self._order
        for kept in (self._labels, self._pending, self._problems, self._thumbs):
            for gone in [p for p in kept if self._position(p) < 0]:
                del kept[gone]
        self._asked.clear()
        if any(split_frame_name(p) is not None for p in self._order if "#" in p):
            self._group_videos()
        self.endResetModel()

    def append_images(self, paths: list[str], frame_times: dict[str, float] | None = None) -> None:
        """Add `paths` to the images listed so far (a folder listed in batches), each at its place
        in the order: only the new rows are inserted, the rows there keep their thumbnails and the
        view its current row and selection."""
        self._times.update(frame_times or {})
        self._insert(paths)

    def add_frames(self, frame_times: dict[str, float]) -> list[str]:
        """List frames of listed videos that are not listed yet (frame -> seconds; e.g. those a
        label was propagated to, sampled finer than the folder), each under its video in frame
        order; returns the frames added. One merge per call, whatever the number of frames."""
        wanted = {}
        for path, seconds in frame_times.items():
            ref = split_frame_name(path)
            if ref is not None and ref.video in self._groups:
                wanted[path] = seconds  # (a frame listed already has the same time)
        self._times.update(wanted)
        return self._insert(list(wanted))

    def _insert(self, paths: list[str]) -> list[str]:
        """Merge the paths not listed yet into the list; one row insertion per run of rows that
        land together (the work grows with the paths added and the runs, not per path with the
        list). Returns the paths added, in order."""
        keys = [order_key(p) for p in paths]  # once a path: a key is not cheap at 100k paths
        if all(a < b for a, b in zip(keys, keys[1:])):  # in order already (the lister sorts its batches)
            new = list(paths)
        else:
            ordered = sorted(dict(zip(paths, keys)).items(), key=lambda item: item[1])
            new, keys = [p for p, _ in ordered], [k for _, k in ordered]
        if not new:
            return []
        # one bisection a path: it tells a path listed already and where a new one goes
        places = self._places(keys)
        order = self._order
        keep = [at == len(order) or order[at] != p for p, at in zip(new, places)]
        if not all(keep):
            new, keys, places = ([x for x, wanted in zip(xs, keep) if wanted] for xs in (new, keys, places))
            if not new:
                return []
        frames = [split_frame_name(p) if "#" in p else None for p in new]
        if self._visible is self._order:
            if not any(frames):  # the rows are the list: insert into it
                self._insert_runs(self._order, new, keys, order_key, places)
                return new
            self._visible = list(self._order)  # the first video: the rows become a list of their own
        self._order = _merged(self._order, new, places)
        shown, shown_keys, touched = [], [], set()
        for path, key, ref in zip(new, keys, frames):
            if ref is None:
                shown.append(path)
                shown_keys.append(key)
                continue
            group = self._groups.get(ref.video)
            if group is None:
                group = self._groups[ref.video] = VideoGroup(ref.video)
                shown.append(group)
                shown_keys.append(group.key)
            elif group.expanded:
                shown.append(path)
                shown_keys.append(key)
            group.frames.append(path)
            touched.add(group)
        for group in touched:
            group.frames.sort(key=order_key)
        self._insert_runs(self._visible, shown, shown_keys, _entry_key)
        for group in touched:
            self._changed(group.frames[0])  # the video's row: its counts and frame count
        return new

    def _places(self, keys: list[str]) -> list[int]:
        """Where each of `keys` (ascending) goes in `_order` (bisect_left), each bisection starting
        where the one before landed; none at all for keys that all come after the end."""
        order = self._order
        if not order or keys[0] > order_key(order[-1]):
            return [len(order)] * len(keys)
        places, lo = [], 0
        for k in keys:
            lo = bisect_left(order, k, lo, key=order_key)
            places.append(lo)
        return places

    def _insert_runs(self, rows: list, entries: list, keys: list[str], key, places: list[int] | None = None) -> None:
        """Insert `entries` (sorted, with their order keys) into `rows` (the visible rows, sorted
        by `key`; `places`: where each goes, when known), announcing each contiguous run to the view."""
        runs: list[tuple[int, int, int]] = []  # (row before the insertion, first entry, end entry)
        lo = 0
        for i, k in enumerate(keys):
            at = places[i] if places is not None else bisect_left(rows, k, lo, key=key)
            if runs and runs[-1][0] == at:
                runs[-1] = (at, runs[-1][1], i + 1)
            else:
                runs.append((at, i, i + 1))
            lo = at
        shift = 0
        for at, first, end in runs:
            row = at + shift
            self.beginInsertRows(QModelIndex(), row, row + end - first - 1)
            rows[row:row] = entries[first:end]
            self.endInsertRows()
            shift += end - first

    def _adopt(self, paths: list[str]) -> None:
        """Hold the strings of `paths` (equal to ours) instead of our own: one copy of each
        path in the process, not two."""
        self._order[:] = paths
        if self._groups:
            for group in self._groups.values():
                start = self._position(group.frames[0])
                group.frames[:] = paths[start:start + len(group.frames)]
            at = 0
            for row, entry in enumerate(self._visible):  # the rows are `paths` in order, groups added
                if not isinstance(entry, VideoGroup):
                    while paths[at] != entry:
                        at += 1
                    self._visible[row] = paths[at]

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

    # ---- looking up -------------------------------------------------------------------------
    def _position(self, path: str) -> int:
        """Where `path` is in `paths()`, -1 when it is not there."""
        i = bisect_left(self._order, order_key(path), key=order_key)
        return i if i < len(self._order) and self._order[i] == path else -1

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

    def row_of(self, path: str) -> int:
        """The row showing `path`: its own, or its video's while the video is collapsed."""
        if self._visible is self._order:
            return self._position(path)
        rows = self._visible
        i = bisect_left(rows, order_key(path), key=_entry_key)
        if i < len(rows) and rows[i] == path:
            return i
        ref = split_frame_name(path) if "#" in path else None
        group = self._groups.get(ref.video) if ref is not None else None
        if group is None or group.expanded or self._position(path) < 0:
            return -1
        return self._group_row(group)

    def _group_row(self, group: VideoGroup) -> int:
        return bisect_left(self._visible, group.key, key=_entry_key)

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
            self.endRemoveRows()
        else:
            self.beginInsertRows(QModelIndex(), row + 1, row + len(group.frames))
            self._visible[row + 1:row + 1] = group.frames
            group.expanded = True
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
        if ref is not None and ref.video in self._groups:
            rows.add(self._group_row(self._groups[ref.video]))
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
        """`image` decoded off the UI thread at the size shown (THUMB_PX at the screen's device
        pixel ratio on its longer side, in a format the screen takes as it is): it is wrapped,
        not scaled. It is shown THUMB_PX logical pixels wide or high whatever its size (its
        device pixel ratio says so), so a differently sized one is scaled while painted."""
        self._asked.discard(path)
        if self._position(path) < 0:
            return
        pixmap = QPixmap.fromImage(image)
        if not pixmap.isNull():
            pixmap.setDevicePixelRatio(max(pixmap.width(), pixmap.height()) / THUMB_PX)
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


def _entry_key(entry) -> str:
    """A row's place in `order_key` order: a video's row comes where its frames begin."""
    return entry.key if isinstance(entry, VideoGroup) else order_key(entry)


def _merged(old: list[str], new: list[str], places: list[int]) -> list[str]:
    """`old` and `new` (both in `order_key` order, `places` where each of `new` goes in `old`)
    as one ordered list: one pass over `old`."""
    out: list[str] = []
    done = 0
    for path, at in zip(new, places):
        out += old[done:at]
        out.append(path)
        done = at
    out += old[done:]
    return out


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
            shown = thumb.deviceIndependentSize()  # at most THUMB_PX either way (set_thumbnail)
            painter.drawPixmap(QRectF(thumb_rect.left() + (THUMB_PX - shown.width()) / 2,
                                      thumb_rect.top() + (THUMB_PX - shown.height()) / 2, shown.width(), shown.height()),
                               thumb, QRectF(thumb.rect()))
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
