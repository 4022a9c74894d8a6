"""The controller: owns the one engine thread and everything that runs on it.

The model, the faiss index and the project's region store are not thread-safe, so every engine
call is a `Task` queued on one thread (see workers.py): indexing, searching and re-ranking never
overlap. Widgets never call the engine; they call the controller and listen to its signals.

Indexing runs in the background as soon as a folder opens. A search asked for meanwhile pauses
it (`Project.update_index(pause=...)`): the images extracted so far are committed and indexed, the
search runs over them, and indexing resumes behind it, so the latest request wins and nothing waits
long. Engine modules are imported on the engine thread, so the window appears before torch has loaded.

Hits arrive with boxes placed on the stored maps; their coarse-to-fine refinement
(engine/search/refine.py) then runs as a task of its own, the first screenful first, and each
finished chunk reaches the window through `hitsRefined` while the annotator reviews. A newer
search, or newer feedback, cancels the refinement in flight.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QThread, Signal

from dasr_annotator.app.gui.settings import Preferences
from dasr_annotator.app.gui.workers import EngineWorker, ImageLoader, Task, UserMessage
from dasr_annotator.engine.dasr.relocate import MAX_FEEDBACK_WINDOWS, WindowQuery
from dasr_annotator.engine.types import Box, Cancelled, Hit

log = logging.getLogger(__name__)

MAX_EXAMPLES = 32  # positives of one "find more like these" query (each costs a forward pass)
PROPAGATION = "Propagation"  # the kind of task a propagation is: it shares the query slot with searches


@dataclass
class SearchRequest:
    category: str
    positives: list[tuple[str, Box]]  # (image, box) examples of the instance
    negatives: list[tuple[str, Box]] = field(default_factory=list)
    exclude_image: str | None = None
    top_k: int = 100
    whole_image: bool = False  # photos like the whole of positives[0]'s image (search/image_search.py)


@dataclass
class PropagateRequest:
    """Look for the instance in `box` of video frame `image` in the frames within `seconds` of
    it, sampled at `fps` (engine/search/propagate.py)."""

    category: str
    image: str  # clip.mp4#frame=N
    box: Box
    seconds: float
    fps: float


@dataclass
class Propagated:
    """Propagation's proposals: one hit per neighbouring frame, nearest in time first, and each
    frame's time in its video (seconds; frames at a finer sampling than the folder's are not listed)."""

    request: PropagateRequest
    hits: list[Hit]
    frame_times: dict[str, float]
    time: float  # the labelled frame's time


@dataclass
class CandidateRegions:
    """Every indexed region of the hit images, in the index's space: what re-ranking by
    feedback needs, so it runs in the GUI thread in milliseconds without the engine."""

    vectors: np.ndarray  # [R, D] float32, l2-normalised
    images: list[str]  # [R] the image of each region
    boxes: np.ndarray  # [R, 4] x, y, w, h in original pixels
    ellipses: np.ndarray  # [R, 5] cx, cy, a, b, angle


@dataclass
class SearchOutcome:
    request: SearchRequest
    hits: list[Hit]
    query: np.ndarray  # the positives in the index's space
    regions: CandidateRegions
    searched_images: int  # images in the index when it ran
    total_images: int  # images in the folder
    windows: WindowQuery | None = None  # the positives' window queries (hit boxes, engine/relocate.py)
    examples: list = field(default_factory=list)  # the positives described for refining (search/refine.py)


@dataclass
class Refined:
    """Refined boxes for hits of the hit session `session` (key -> box) and how well each matches
    the examples (key -> box score, refine.rank_by_box), one chunk at a time; `done` of `total`
    hits are refined so far (a hit a second look improved comes again, with its better box). The
    last one, `complete`, comes once all are: no boxes, and the final box score of every hit refined
    (the ranking by box match needs them all)."""

    session: object
    boxes: dict[int, Box]
    done: int
    total: int
    box_scores: dict[int, float] = field(default_factory=dict)
    complete: bool = False


@dataclass
class Relocated:
    """After feedback, for the hit session `session`: new boxes for pending hits (key -> box) and
    rejected photos to show again with a new box (image -> box; relocate.second_look)."""

    session: object
    boxes: dict[int, Box]
    second_looks: dict[str, Box] = field(default_factory=dict)


class Controller(QObject):
    projectOpened = Signal(object, object)  # Project, image paths (a list; `object`: Qt would copy every string)
    deviceReady = Signal(str)  # human-readable device name
    indexingStarted = Signal()
    indexingProgress = Signal(int, int, float)  # done, total, seconds left (-1: not known yet)
    indexingFinished = Signal(object)  # IndexReport
    indexingStopped = Signal(str)  # why it stopped before the end ("cancelled", "paused")
    incompatibleIndex = Signal(str)  # the folder's index was made with other settings
    searchStarted = Signal(str)  # what is searched
    searchFinished = Signal(object)  # SearchOutcome
    propagationProgress = Signal(int, int)  # frames looked at, frames to look at
    propagationFinished = Signal(object)  # Propagated
    propagationStopped = Signal()  # cancelled (by the user, or by a newer query)
    hitsRelocated = Signal(object)  # Relocated
    hitsRefined = Signal(object)  # Refined
    failed = Signal(str, str)  # what failed, a message for the user
    _submit = Signal(object)
    # emitted on the engine thread; the controller (GUI thread) receives it queued and re-emits
    # `hitsRefined` there, so the window's slots always run on the GUI thread
    _refined_chunk = Signal(object, object)  # the refinement's token, Refined

    def __init__(self, prefs: Preferences, parent: QObject | None = None):
        super().__init__(parent)
        self.prefs = prefs
        self.project = None
        self.images: list[str] = []
        self.extractor_args: dict = {}
        self.images_loader = ImageLoader(self)
        self._thread = QThread(self)
        self._thread.setObjectName("dasr-engine")
        self._worker = EngineWorker()
        self._worker.moveToThread(self._thread)
        self._submit.connect(self._worker.run)
        self._worker.progress.connect(self._on_progress)
        self._worker.finished.connect(self._on_finished)
        self._worker.failed.connect(self._on_failed)
        self._worker.cancelled.connect(self._on_cancelled)
        self._thread.finished.connect(self._worker.deleteLater)
        self._refined_chunk.connect(self._on_refined_chunk)
        self._thread.start()
        self._tasks: dict[int, tuple[Task, dict]] = {}
        self._index_task: Task | None = None
        self._search_task: Task | None = None
        self._relocate_task: Task | None = None
        self._refine_task: Task | None = None
        self._refine_token: object | None = None
        self._pause = threading.Event()
        self._eta_start: tuple[float, int] | None = None
        # Touched on the engine thread only:
        self._extractor = None
        self._extractor_key = None
        self._searcher = None

    # ---- task plumbing -----------------------------------------------------------------------
    def _run(self, kind: str, fn, **handlers) -> Task:
        task = Task(kind, fn)
        self._tasks[task.id] = (task, handlers)
        self._submit.emit(task)
        return task

    def _handler(self, task_id: int, name: str):
        task, handlers = self._tasks.get(task_id, (None, {}))
        return handlers.get(name)

    def _on_progress(self, task_id: int, done: int, total: int) -> None:
        handler = self._handler(task_id, "progress")
        if handler:
            handler(done, total)

    def _on_finished(self, task_id: int, result) -> None:
        handler = self._handler(task_id, "finished")
        self._tasks.pop(task_id, None)
        if handler:
            handler(result)

    def _on_failed(self, task_id: int, message: str) -> None:
        task, handlers = self._tasks.pop(task_id, (None, {}))
        if "failed" in handlers:
            handlers["failed"](message)
        elif task is not None:
            self.failed.emit(task.kind, message)

    def _on_cancelled(self, task_id: int) -> None:
        handler = self._handler(task_id, "cancelled")
        self._tasks.pop(task_id, None)
        if handler:
            handler()

    @property
    def is_indexing(self) -> bool:
        return self._index_task is not None

    @property
    def is_searching(self) -> bool:
        return self._search_task is not None

    @property
    def is_propagating(self) -> bool:
        return self._search_task is not None and self._search_task.kind == PROPAGATION

    # ---- opening -----------------------------------------------------------------------------
    def open_folder(self, photos: Path) -> None:
        """Open `photos` (on the engine thread); `projectOpened` follows, then indexing starts."""
        self.cancel_all()

        def open_project(progress, cancel):  # noqa: ARG001 - task signature
            from dasr_annotator.engine.project.project import Project, extractor_args

            self._searcher = None  # it searched the previous folder
            project = Project.open(photos)
            manifest = project.manifest()
            return project, project.scan(), extractor_args(manifest) if manifest is not None else None

        self._run("Opening the folder", open_project, finished=self._opened)

    def _opened(self, result) -> None:
        """A folder indexed before keeps its settings (as the CLI does); a new one uses the
        preferences. Changing them later is an explicit rebuild (`apply_preferences`)."""
        self.project, self.images, stored_args = result
        self.extractor_args = stored_args or self._preferred_extractor_args()
        self.projectOpened.emit(self.project, list(self.images))
        self.start_indexing()

    def _preferred_extractor_args(self) -> dict:
        return {"backbone": self.prefs.backbone, "mode": self.prefs.mode, "max_side": self.prefs.max_side}

    # ---- engine state (engine thread) --------------------------------------------------------
    def _engine_extractor(self, args: dict, device: str):
        key = (tuple(sorted(args.items())), device)
        if self._extractor is None or key != self._extractor_key:
            from dasr_annotator.engine.dasr.extractor import Extractor

            if device == "cuda":
                import torch

                if not torch.cuda.is_available():
                    raise UserMessage("No CUDA GPU is available here. Choose 'auto' or 'cpu' as the device in Settings.")
                device = "cuda:0"
            self._extractor, self._extractor_key, self._searcher = Extractor(device=device, **args), key, None
            self.deviceReady.emit(self._extractor.device_name)
        return self._extractor

    def _engine_searcher(self, args: dict, device: str):
        from dasr_annotator.engine.project.project import NoIndex

        extractor = self._engine_extractor(args, device)
        if self._searcher is None:
            try:
                self._searcher = self.project.searcher(extractor)
            except NoIndex:
                manifest = self.project.manifest()
                if manifest is None or manifest.get("index") is None:
                    raise UserMessage("Nothing is indexed yet: wait until the first photos are indexed, "
                                      "then search again.") from None
                raise UserMessage("The search index is damaged or incomplete. Re-open the folder: indexing "
                                  "rebuilds it from the stored regions.") from None
        return self._searcher

    # ---- indexing ----------------------------------------------------------------------------
    def start_indexing(self, rebuild: bool = False) -> None:
        if self.project is None or self._index_task is not None:
            return
        project, args, device, pause = self.project, dict(self.extractor_args), self.prefs.device, self._pause
        pause.clear()

        def index(progress, cancel):
            from dasr_annotator.engine.project.project import IncompatibleIndex

            extractor = self._engine_extractor(args, device)
            self._searcher = None  # the index is about to change
            try:
                report = project.update_index(extractor, progress, cancel, rebuild=rebuild,
                                              weights=args.get("weights"), pause=pause.is_set)
            except IncompatibleIndex as exc:
                return "incompatible", exc.message, []
            return ("paused" if report.pending else "done"), report, project.scan()

        self._eta_start = None
        self._index_task = self._run("Indexing", index, progress=self._index_progress, finished=self._indexed,
                                     failed=self._index_failed, cancelled=self._index_cancelled)
        self.indexingStarted.emit()

    def _index_progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self._eta_start is None or done < self._eta_start[1]:
            self._eta_start = (now, done)
        start, first = self._eta_start
        rate = (done - first) / (now - start) if done > first and now > start else 0.0
        self.indexingProgress.emit(done, total, (total - done) / rate if rate > 0 else -1.0)

    def _indexed(self, result) -> None:
        self._index_task = None
        state, report, files = result
        if state == "incompatible":
            self.incompatibleIndex.emit(report)
            return
        if files:
            self.images = files
        if state == "paused":
            self.indexingStopped.emit("paused")
            self.start_indexing()  # queued behind the search that paused it
            return
        self.indexingFinished.emit(report)

    def _index_failed(self, message: str) -> None:
        self._index_task = None
        self.failed.emit("Indexing", message)

    def _index_cancelled(self) -> None:
        self._index_task = None
        self.indexingStopped.emit("cancelled")

    def cancel_indexing(self) -> None:
        if self._index_task is not None:
            self._index_task.cancel()

    # ---- search ------------------------------------------------------------------------------
    def search(self, request: SearchRequest) -> None:
        """Run a search; a search still in flight is cancelled (the latest request wins)."""
        if self.project is None:
            return
        self._make_way_for_query()
        args, device, total = dict(self.extractor_args), self.prefs.device, len(self.images)

        def run(progress, cancel):
            searcher = self._engine_searcher(args, device)
            if request.whole_image:
                return _whole_image_outcome(searcher, request, total)
            examples = request.positives[-MAX_EXAMPLES:]
            pairs = examples + request.negatives
            descriptors, windows = [], []
            for done, (image, box) in enumerate(pairs):
                if cancel():
                    raise Cancelled()
                if done < len(examples):  # positives also place the hit boxes (engine/relocate.py)
                    descriptor, window = searcher.query(image, box)
                    windows.append(window)
                else:
                    descriptor = searcher.query_descriptor(image, box)
                descriptors.append(descriptor)
                progress(done + 1, len(pairs))
            positives = np.stack(descriptors[:len(examples)])
            negatives = np.stack(descriptors[len(examples):]) if request.negatives else None
            windows = WindowQuery.stack(windows) if all(w is not None for w in windows) else None
            hits = searcher.search(positives, request.top_k, negatives=negatives, exclude_image=request.exclude_image,
                                   windows=windows)
            # each example is one more crop pass before the hits show, and one more template per
            # refined window: the latest few describe the instance as well as all 32
            fine = [] if windows is None else [searcher.example(image, box)
                                               for image, box in examples[-MAX_FEEDBACK_WINDOWS:]]
            return SearchOutcome(request, hits, searcher.prepare(positives), _candidate_regions(searcher, hits),
                                 len(searcher.images), total, windows, [e for e in fine if e is not None])

        what = f"{request.category} ({len(request.positives)} example{'s' if len(request.positives) != 1 else ''})"
        task = self._run("Search", run, finished=lambda outcome: self._query_ended(task, self.searchFinished, outcome),
                         failed=lambda message: self._query_ended(task, self.failed, task.kind, message),
                         cancelled=lambda: self._query_ended(task))
        self._search_task = task
        self.searchStarted.emit(what)

    def _make_way_for_query(self) -> None:
        """Before a search or a propagation: the query in flight is cancelled (the latest wins), so
        is the refinement of hits about to be replaced, and indexing pauses (it commits what is
        indexed so far, the query searches that, and indexing resumes behind it)."""
        if self._search_task is not None:
            self._search_task.cancel()
        self.cancel_refining()
        if self._index_task is not None:
            self._pause.set()

    def propagate(self, request: PropagateRequest) -> None:
        """Look for a labelled box in the frames around it (engine/search/propagate.py): a query
        like a search, so it cancels the search or propagation in flight and a newer one cancels
        it. The frames need not be indexed: their maps are computed here, on the engine thread."""
        if self.project is None:
            return
        self._make_way_for_query()
        args, device = dict(self.extractor_args), self.prefs.device

        def run(progress, cancel):
            from dasr_annotator.engine.search.propagate import propagate
            from dasr_annotator.engine.store.video import probe_video, split_frame_name

            searcher = self._engine_searcher(args, device)
            try:
                hits = propagate(searcher, request.image, request.box, request.seconds, request.fps,
                                 progress=progress, cancel=cancel)
            except ValueError as exc:
                raise UserMessage(str(exc)) from None
            if cancel():  # the engine returns what it found so far; a cancelled query shows nothing
                raise Cancelled()
            ref = split_frame_name(request.image)
            info = probe_video(self.project.path_of(ref.video))
            times = {hit.image: info.time_of(split_frame_name(hit.image).frame) for hit in hits}
            return Propagated(request, hits, times, info.time_of(ref.frame))

        task = self._run(PROPAGATION, run, progress=lambda done, total: self._propagation_progress(task, done, total),
                         finished=lambda result: self._query_ended(task, self.propagationFinished, result),
                         failed=lambda message: self._query_ended(task, self.failed, task.kind, message),
                         cancelled=lambda: self._query_ended(task))
        self._search_task = task
        self.searchStarted.emit(f"{request.category} in the frames around {request.image}")

    def cancel_propagation(self) -> None:
        if self.is_propagating:
            self._search_task.cancel()

    def _propagation_progress(self, task: Task, done: int, total: int) -> None:
        if self._search_task is task:
            self.propagationProgress.emit(done, total)

    def _query_ended(self, task: Task, signal=None, *args) -> None:
        """A search or propagation finished, failed or was cancelled (no `signal`). The latest
        query frees the query slot and `signal` brings its answer; one overtaken by a newer query
        is dropped. A propagation that brings no answer says it stopped (its progress bar waits)."""
        if self._search_task is task:
            self._search_task = None
            if signal is not None:
                signal.emit(*args)
                return
        if task.kind == PROPAGATION:
            self.propagationStopped.emit()

    def relocate(self, session, windows: WindowQuery, accepted: list[tuple[str, Box]],
                 pending: dict[int, Hit], rejected: dict[str, list[Box]] | None = None,
                 look_again: list[str] = ()) -> None:
        """Re-localise the `pending` hits (key -> hit) with the accepted hits' boxes as further
        window examples, never onto a box `rejected` in the same image (image -> boxes), and look
        again at the photos `look_again` (whose hits were all rejected); `hitsRelocated` brings the
        result (a worker; maps are on disk)."""
        rejected = rejected or {}
        if not accepted or not (pending or look_again):
            return
        args, device = dict(self.extractor_args), self.prefs.device

        def run(progress, cancel):
            searcher = self._engine_searcher(args, device)
            query = searcher.feedback_windows(windows, accepted)
            keys, hits = list(pending), list(pending.values())
            total = len(hits) + len(look_again)
            moved, looks = [], {}
            for done, hit in enumerate(hits):
                if cancel():
                    raise Cancelled()
                moved += searcher.relocate([hit], query, rejected)
                progress(done + 1, total)
            for done, image in enumerate(look_again, len(hits)):
                if cancel():
                    raise Cancelled()
                box = searcher.second_look(image, query, rejected.get(image, []))
                if box is not None:
                    looks[image] = box
                progress(done + 1, total)
            return Relocated(session, {key: hit.box for key, hit in zip(keys, moved)}, looks)

        if self._relocate_task is not None:  # newer decisions make its answer stale
            self._relocate_task.cancel()
        task = self._run("Re-localise", run, finished=lambda result: self._relocated(task, result))
        self._relocate_task = task

    def refine(self, session, examples: list, windows: WindowQuery, pending: dict[int, Hit],
               accepted: list[tuple[str, Box]] = (), rejected: dict[str, list[Box]] | None = None) -> None:
        """Refine the boxes of the `pending` hits (key -> hit, in the order shown) coarse-to-fine
        with the query's `examples` and the latest `accepted` (image, box) pairs as further
        examples, never onto a box `rejected` in the same image; each finished chunk comes back
        through `hitsRefined`. A refinement in flight is cancelled: its hits are being replaced."""
        self.cancel_refining()
        if not pending or windows is None or not examples:
            return
        args, device = dict(self.extractor_args), self.prefs.device
        keys, hits = list(pending), list(pending.values())
        token = self._refine_token = object()  # identifies this refinement's chunks

        def run(progress, cancel):
            searcher = self._engine_searcher(args, device)
            latest = list(accepted)[-MAX_FEEDBACK_WINDOWS:]
            more = [searcher.example(image, box) for image, box in latest]
            coarse = searcher.feedback_windows(windows, latest) if latest else windows
            done: set[int] = set()  # hits refined so far (a second look emits a hit again)

            def emit(items):
                done.update(i for i, _ in items)
                self._refined_chunk.emit(token, Refined(session, {keys[i]: hit.box for i, hit in items}, len(done),
                                                       len(hits), {keys[i]: hit.box_score for i, hit in items
                                                                   if hit.box_score is not None}))

            refined = searcher.refine(hits, list(examples) + [e for e in more if e is not None], coarse, rejected,
                                      progress=progress, cancel=cancel, emit=emit)
            self._refined_chunk.emit(token, Refined(session, {}, len(done), len(hits), complete=True,
                                                    box_scores={keys[i]: hit.box_score for i, hit in enumerate(refined)
                                                                if hit.box_score is not None}))

        task = self._run("Refine boxes", run, finished=lambda _: self._refined(task),
                         cancelled=lambda: self._refined(task))
        self._refine_task = task

    def _on_refined_chunk(self, token, refined: Refined) -> None:
        if token is self._refine_token:  # else a newer search or feedback replaced its hits
            self.hitsRefined.emit(refined)

    def cancel_refining(self) -> None:
        self._refine_token = None
        if self._refine_task is not None:
            self._refine_task.cancel()
            self._refine_task = None

    @property
    def is_refining(self) -> bool:
        return self._refine_task is not None

    def _refined(self, task: Task) -> None:
        if self._refine_task is task:
            self._refine_task = None

    def _relocated(self, task: Task, result: "Relocated") -> None:
        if self._relocate_task is task:
            self._relocate_task = None
        if not task.is_cancelled():
            self.hitsRelocated.emit(result)

    # ---- settings and shutdown ---------------------------------------------------------------
    def apply_preferences(self, prefs: Preferences) -> bool:
        """Take new preferences; True when the index must be rebuilt for them (the caller asks
        the user and then calls `rebuild_index`)."""
        self.prefs = prefs
        wanted = self._preferred_extractor_args()
        current = {k: self.extractor_args.get(k) for k in wanted}
        return self.project is not None and wanted != current

    def rebuild_index(self) -> None:
        """Re-index everything with the preferences' extractor settings."""
        self.extractor_args = self._preferred_extractor_args()
        self.cancel_indexing()
        self._run("Indexing", lambda progress, cancel: None, finished=lambda _: self.start_indexing(rebuild=True))

    def cancel_all(self) -> None:
        for task, _ in list(self._tasks.values()):
            task.cancel()

    def shutdown(self, wait_ms: int = 30_000) -> None:
        """Cancel everything and stop the engine thread (indexing resumes next time)."""
        self.cancel_all()
        self.images_loader.wait(wait_ms)
        self._thread.quit()
        if not self._thread.wait(wait_ms):
            log.warning("the engine thread did not stop within %d ms", wait_ms)


def _whole_image_outcome(searcher, request: SearchRequest, total: int) -> SearchOutcome:
    """Whole-image search: hits boxed as their whole photos; the whole query photo's region
    descriptor is the query that feedback re-ranks with (no windows: nothing to re-place)."""
    image, whole = request.positives[0]
    hits = searcher.search_image(image, request.top_k)
    query = searcher.prepare(searcher.query_descriptor(image, whole)[None])
    return SearchOutcome(request, hits, query, _candidate_regions(searcher, hits), len(searcher.images), total)


def _candidate_regions(searcher, hits: list[Hit]) -> CandidateRegions:
    from dasr_annotator.engine.search.index import reconstruct

    rows = searcher.region_rows({h.image for h in hits})
    vectors = reconstruct(searcher.index, rows) if len(rows) else np.zeros((0, searcher.index.d), np.float32)
    return CandidateRegions(np.asarray(vectors, np.float32), [searcher.images[i] for i in searcher.region_image[rows]],
                            np.asarray(searcher.boxes[rows], np.float64), np.asarray(searcher.ellipses[rows], np.float64))
