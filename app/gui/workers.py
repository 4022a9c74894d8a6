"""Running plain-Python work off the GUI thread.

`EngineWorker` lives in the controller's one engine thread and runs `Task`s one after another
(the model and the index are not thread-safe, so add and search never overlap). A task is a
function `fn(progress, cancel)`; the worker reports `progress`, `finished(result)`,
`failed(message)` or `cancelled`, so no exception reaches the event loop unseen.

`ImageLoader` decodes photos for display (thumbnails, the canvas, hit crops) on a small thread
pool of its own: decoding is not engine work and must never wait behind indexing.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, Signal, Slot
from PySide6.QtGui import QImage

from dasr_annotator.engine.store.imageio import ImageError, image_size, load_image
from dasr_annotator.engine.types import Box, Cancelled

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.1  # at most ten progress updates a second reach the GUI
_task_ids = itertools.count(1)


class UserMessage(Exception):
    """A failure whose text is written for the user as it stands."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Task:
    """One piece of engine work; `cancel()` may be called from any thread."""

    def __init__(self, kind: str, fn: Callable[[Callable[[int, int], None], Callable[[], bool]], Any]):
        self.id = next(_task_ids)
        self.kind, self.fn = kind, fn
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def is_cancelled(self) -> bool:
        return self._cancel.is_set()


def describe_error(exc: BaseException) -> str:
    """A message a person can act on; the traceback goes to the log, never to a dialog."""
    for attribute in ("message", "reason"):  # ProjectFileError, IncompatibleIndex / ImageError
        text = getattr(exc, attribute, None)
        if isinstance(text, str) and text:
            return text
    if isinstance(exc, MemoryError):
        return "Not enough memory. Try a smaller image size in Settings."
    text = str(exc)
    if "out of memory" in text.lower():
        return "The GPU ran out of memory. Choose the CPU or a smaller image size in Settings."
    if isinstance(exc, OSError):
        return f"{exc.strerror or text}" + (f": {exc.filename}" if exc.filename else "")
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class EngineWorker(QObject):
    progress = Signal(int, int, int)  # task id, done, total
    finished = Signal(int, object)  # task id, result
    failed = Signal(int, str)  # task id, message
    cancelled = Signal(int)  # task id

    @Slot(object)
    def run(self, task: Task) -> None:
        if task.is_cancelled():
            self.cancelled.emit(task.id)
            return
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if done >= total or now - last[0] >= PROGRESS_INTERVAL_S:
                last[0] = now
                self.progress.emit(task.id, int(done), int(total))

        try:
            result = task.fn(progress, task.is_cancelled)
        except Cancelled:
            self.cancelled.emit(task.id)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message for the user
            log.exception("%s task failed", task.kind)
            self.failed.emit(task.id, describe_error(exc))
        else:
            self.finished.emit(task.id, result)


# ---- images for display ---------------------------------------------------------------------
def to_qimage(rgb: np.ndarray) -> QImage:
    """A QImage owning a copy of an H x W x 3 uint8 array, in the format the screen paints as it
    is (RGB32): converted here, on the loader's thread, not when the UI thread shows it."""
    rgb = np.ascontiguousarray(rgb)
    height, width = rgb.shape[:2]
    return QImage(rgb.data, width, height, 3 * width, QImage.Format_RGB888).convertToFormat(QImage.Format_RGB32)


def load_display_image(path: Path, max_side: int, crop: Box | None = None,
                       margin: float = 0.15) -> tuple[QImage, tuple[int, int]]:
    """The photo (or a region of it, `crop` in original pixels with a margin) at most `max_side`
    pixels on its longest side, and the photo's original (width, height)."""
    if crop is None:
        image = load_image(path, max_side=max_side)
        return to_qimage(image.rgb), (image.width, image.height)
    # Decode just large enough that the crop comes out near `max_side` pixels.
    width, height = image_size(path)
    side = max(crop.w, crop.h) * (1 + 2 * margin)
    image = load_image(path, max_side=max(64, int(max(width, height) * max_side / max(side, 1.0))))
    pad_x, pad_y = crop.w * margin, crop.h * margin
    x1, y1 = (crop.x - pad_x) * image.scale, (crop.y - pad_y) * image.scale
    x2, y2 = (crop.x2 + pad_x) * image.scale, (crop.y2 + pad_y) * image.scale
    h, w = image.rgb.shape[:2]
    x1, y1 = int(max(0, min(x1, w - 1))), int(max(0, min(y1, h - 1)))
    x2, y2 = int(max(x1 + 1, min(x2, w))), int(max(y1 + 1, min(y2, h)))
    region = to_qimage(image.rgb[y1:y2, x1:x2])
    if max(region.width(), region.height()) > max_side:
        region = region.scaled(max_side, max_side, Qt.KeepAspectRatio, Qt.SmoothTransformation)
    return region, (image.width, image.height)


class _Signals(QObject):
    loaded = Signal(object, QImage, object)  # tag, image, original (width, height)
    failed = Signal(object, str)  # tag, reason


class _LoadJob(QRunnable):
    def __init__(self, signals: _Signals, tag, path: Path, max_side: int, crop: Box | None, queued: set):
        super().__init__()
        self.signals, self.tag, self.path, self.max_side, self.crop = signals, tag, path, max_side, crop
        self.queued = queued
        self.dropped = False

    def run(self) -> None:
        self.queued.discard(self)
        if self.dropped:
            return
        try:
            image, size = load_display_image(self.path, self.max_side, self.crop)
        except ImageError as exc:
            self.signals.failed.emit(self.tag, exc.reason)
        except Exception as exc:  # noqa: BLE001 - shown next to the image, never raised in a thread
            log.exception("loading %s failed", self.path)
            self.signals.failed.emit(self.tag, describe_error(exc))
        else:
            self.signals.loaded.emit(self.tag, image, size)


class ImageLoader(QObject):
    """Decodes images on a thread pool; results arrive as `loaded(tag, QImage, size)`."""

    loaded = Signal(object, QImage, object)
    failed = Signal(object, str)

    def __init__(self, parent: QObject | None = None, threads: int = 2):
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(threads)
        self._signals = _Signals(self)
        self._signals.loaded.connect(self.loaded)
        self._signals.failed.connect(self.failed)
        self._queued: set[_LoadJob] = set()  # requests not started yet

    def request(self, tag, path: Path, max_side: int, crop: Box | None = None, priority: int = 0) -> None:
        job = _LoadJob(self._signals, tag, Path(path), max_side, crop, self._queued)
        self._queued.add(job)
        self._pool.start(job, priority)

    def drop(self, kind: str) -> int:
        """Drop the requests of `kind` (a tag's first item) that have not started, e.g. the
        thumbnails of rows scrolled past in a long list; returns how many were dropped."""
        dropped = [job for job in list(self._queued) if job.tag[0] == kind]
        for job in dropped:
            job.dropped = True
            self._queued.discard(job)
        return len(dropped)

    def clear(self) -> None:
        """Drop requests that have not started (e.g. thumbnails of a folder no longer shown)."""
        self._pool.clear()
        self._queued.clear()

    def wait(self, msecs: int = 5000) -> bool:
        self.clear()
        return self._pool.waitForDone(msecs)
