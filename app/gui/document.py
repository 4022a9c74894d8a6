"""The annotation document: the one source of truth the window's views render from.

It wraps the project's Qt-free `AnnotationStore` (so the CLI and the GUI share the labels) and
adds what only the window needs: an undo stack (every edit is a `commands.py` command), the
current search's hits with the decisions taken on them, and autosave. Views never change the
store themselves; they call the edit methods here and re-render on `changed`.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QUndoStack

from dasr_annotator.app.gui import commands
from dasr_annotator.engine.dasr.relocate import inscribed_ellipse
from dasr_annotator.engine.search.feedback import hide_done
from dasr_annotator.engine.store.annotations import PALETTE, AnnotationStore, Category, SaveReport, StoreBusy
from dasr_annotator.engine.store.storage import ProjectFileError
from dasr_annotator.engine.types import Annotation, Box, Hit

log = logging.getLogger(__name__)

PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"
PENDING_COLOR = "#f0a020"  # undecided hits on the photo; no category is given a colour near it
REJECTED_COLOR = "#f85149"
RESERVED_COLORS = (PENDING_COLOR, REJECTED_COLOR, "#ffffff")  # hits and the query box
CONTAINED = 0.8  # a label this much inside a hit's box (or the box inside it) marks it labelled


@dataclass(frozen=True)
class Change:
    """What an edit touched, so each view can decide whether it needs to refresh."""

    kind: str  # "annotations", "categories", "hits" or "reset"
    images: frozenset[str] = frozenset()
    ids: tuple[str, ...] = ()


@dataclass(eq=False)
class HitEntry:
    """One hit of the current search and what the user decided about it."""

    key: int  # stable within its session (the rank it arrived with)
    hit: Hit
    box: Box  # the hit's box, as adjusted by the user
    status: str = PENDING
    annotation_id: str | None = None  # the annotation an accepted hit became
    score: float = 0.0  # the score shown and ranked by (re-ranking changes it)
    look: int = 1  # how many times this photo was shown in the session, this hit included

    @property
    def image(self) -> str:
        return self.hit.image


@dataclass(eq=False)
class HitSession:
    """The results of one search (or one re-ranking of it)."""

    query_id: str | None
    category: str
    entries: list[HitEntry] = field(default_factory=list)
    note: str = ""  # e.g. "searched 40 of 120 images; the rest are still being indexed"
    reranked: int = 0  # how many times feedback re-ordered the hits
    outcome: object = None  # the controller's SearchOutcome (what re-ranking needs)
    position: int | None = None  # the hit the annotator was at when they left this review
    threshold: float | None = None  # the score threshold they set for it
    title: str = ""  # how the query is named in the list of reviews

    @classmethod
    def from_hits(cls, hits: list[Hit], category: str, query_id: str | None = None, note: str = "") -> "HitSession":
        entries = [HitEntry(rank, hit, hit.box, score=float(hit.score)) for rank, hit in enumerate(hits)]
        return cls(query_id, category, entries, note)

    def entry(self, key: int) -> HitEntry:
        for entry in self.entries:
            if entry.key == key:
                return entry
        raise KeyError(key)

    def counts(self) -> dict[str, int]:
        out = {PENDING: 0, ACCEPTED: 0, REJECTED: 0}
        for entry in self.entries:
            out[entry.status] += 1
        return out


class Document(QObject):
    changed = Signal(object)  # Change
    savedChanged = Signal(bool)  # True once everything is on disk
    saveFailed = Signal(str)  # a message for the user
    notice = Signal(str)  # something the user should know that is not a failure (labels merged in)

    SAVE_WAIT_S = 2.0  # the window waits at most this long for another writer's save to finish
    RETRY_MS = 5000  # a failed save (disk full, folder gone, another writer busy) is tried again

    def __init__(self, store: AnnotationStore, parent: QObject | None = None, autosave_ms: int = 300,
                 retry_ms: int | None = None):
        super().__init__(parent)
        self.store = store
        self.undo_stack = QUndoStack(self)
        self.hits: HitSession | None = None
        self.sessions: list[HitSession] = []  # every query's review, oldest first, to go back to
        self._saved = True
        self._autosave = QTimer(self, singleShot=True, interval=autosave_ms)
        self._autosave.timeout.connect(self.save)
        self._retry = QTimer(self, singleShot=True, interval=retry_ms or self.RETRY_MS)
        self._retry.timeout.connect(self._retry_save)

    # ---- reading -----------------------------------------------------------------------------
    @property
    def categories(self) -> list[Category]:
        return self.store.categories

    def has_category(self, name: str) -> bool:
        return any(c.name == name for c in self.store.categories)

    def category_color(self, name: str, fallback: str = "#ffffff") -> str:
        return self.store.category(name).color if self.has_category(name) else fallback

    def annotations(self, image: str | None = None) -> list[Annotation]:
        return self.store.list(image=image)

    def annotation(self, ann_id: str) -> Annotation:
        return self.store.get(ann_id)

    def has_annotation(self, ann_id: str) -> bool:
        try:
            self.store.get(ann_id)
        except KeyError:
            return False
        return True

    def labelled_images(self) -> set[str]:
        return {a.image for a in self.store.list()}

    def pending_images(self) -> set[str]:
        if self.hits is None:
            return set()
        return {e.image for e in self.hits.entries if e.status == PENDING}

    def labelled_hit_keys(self, min_iou: float = 0.5) -> set[int]:
        """Undecided or rejected hits whose image already has a label of the search's category
        overlapping the hit's box (labels the current hits created do not count). A label the
        annotator resized to fit the object more tightly (or loosely) still counts: it lies
        almost wholly inside the hit's box, or the box inside it."""
        if self.hits is None:
            return set()
        own = {e.annotation_id for e in self.hits.entries}
        labels = [a for a in self.store.list(category=self.hits.category) if a.id not in own]
        entries = [e for e in self.hits.entries if e.status != ACCEPTED]
        hits = [Hit(e.image, e.score, e.box, e.hit.ellipse) for e in entries]
        done = hide_done(hits, labels, self.hits.category, min_iou)
        by_image: dict[str, list[Box]] = {}
        for ann in labels:
            by_image.setdefault(ann.image, []).append(ann.box)
        return {e.key for e, labelled in zip(entries, done)
                if labelled or any(_contained(e.box, box) for box in by_image.get(e.image, ()))}

    @property
    def is_saved(self) -> bool:
        return self._saved

    # ---- annotation edits (each one undo step) -----------------------------------------------
    def add_annotation(self, image: str, category: str, box: Box, *, source: str = "manual",
                       score: float | None = None, query_id: str | None = None) -> str:
        ann = Annotation(commands.new_annotation_id(), image, category, box, score, query_id, source)
        self.undo_stack.push(commands.AddAnnotations(self, [ann], f"Add {category} box"))
        return ann.id

    def remove_annotations(self, ids: list[str]) -> None:
        ids = [i for i in ids if self.has_annotation(i)]
        if ids:
            self.undo_stack.push(commands.RemoveAnnotations(self, ids))

    def set_annotation_box(self, ann_id: str, box: Box, drag_id: object = None) -> None:
        """Move/resize a box; calls sharing a `drag_id` merge into one undo step."""
        old = self.store.get(ann_id).box
        if box != old:
            self.undo_stack.push(commands.SetAnnotationBox(self, ann_id, old, box, drag_id))

    def set_annotation_category(self, ids: list[str], category: str) -> None:
        ids = [i for i in ids if self.store.get(i).category != category]
        if ids:
            self.undo_stack.push(commands.SetAnnotationCategory(self, ids, category))

    # ---- category edits ----------------------------------------------------------------------
    def add_category(self, name: str, color: str | None = None) -> None:
        name = name.strip()
        if name and not self.has_category(name):
            self.undo_stack.push(commands.AddCategory(self, name, color))

    def rename_category(self, old: str, new: str) -> None:
        new = new.strip()
        if new == old:
            return
        if not new:
            raise ValueError("a category needs a name")
        if self.has_category(new):
            raise ValueError(f"a category named {new!r} exists already")
        self.undo_stack.push(commands.RenameCategory(self, old, new))

    def set_category_color(self, name: str, color: str) -> None:
        if self.store.category(name).color != color.lower():
            self.undo_stack.push(commands.SetCategoryColor(self, name, color))

    def remove_category(self, name: str) -> None:
        """Remove a category and the annotations that use it (one undo step)."""
        self.undo_stack.push(commands.RemoveCategory(self, name))

    def free_color(self) -> str | None:
        """The colour a new category gets: the palette's next unused one, never one near the
        colours of hits and of the query box (a category drawn in hit orange would pass for hits)."""
        used = {c.color.lower() for c in self.store.categories}
        usable = [c for c in PALETTE if all(_color_distance(c, r) > 90 for r in RESERVED_COLORS)]
        free = [c for c in usable if c not in used]
        return free[0] if free else usable[len(used) % len(usable)]

    # ---- hits --------------------------------------------------------------------------------
    def set_hits(self, session: HitSession | None) -> None:
        """Show a review (a query's hits, kept in `sessions` to go back to). Not an edit."""
        old = self.hits
        if session is not None and session not in self.sessions:
            self.sessions.append(session)
        self.hits = session
        touched = {e.image for s in (old, session) if s is not None for e in s.entries}
        self.changed.emit(Change("hits", frozenset(touched)))

    def show_search(self, session: HitSession, text: str) -> None:
        """A new query's results arrive: one undo step, so undoing the query takes its results
        strip and pending boxes away again (and shows the review that was there before)."""
        self.inherit_decisions(session)
        self.undo_stack.push(commands.ShowHits(self, self.hits, session, text))

    def drop_session(self, session: HitSession) -> None:
        if session in self.sessions:
            self.sessions.remove(session)

    def inherit_decisions(self, session: HitSession, min_iou: float = 0.5) -> int:
        """Hits the annotator rejected in an earlier review of the same category stay rejected
        in a new one (same photo, same place); returns how many."""
        rejected: dict[str, list[Box]] = {}
        for earlier in self.sessions:
            if earlier is not session and earlier.category == session.category:
                for entry in earlier.entries:
                    if entry.status == REJECTED:
                        rejected.setdefault(entry.image, []).append(entry.box)
        count = 0
        for entry in session.entries:
            if entry.status == PENDING and any(_iou(entry.box, box) >= min_iou for box in rejected.get(entry.image, ())):
                entry.status = REJECTED
                count += 1
        return count

    def decide_hits(self, keys: list[int], decision: str) -> None:
        """Accept (each hit becomes an annotation), reject, or reset hits to pending."""
        if self.hits is None:
            return
        entries = [self.hits.entry(k) for k in keys]
        entries = [e for e in entries if e.status != decision]
        if entries:
            self.undo_stack.push(commands.DecideHits(self, self.hits, entries, decision))

    def accept_all_above(self, threshold: float) -> int:
        """Accept every pending hit scoring at least `threshold`; returns how many."""
        if self.hits is None:
            return 0
        keys = [e.key for e in self.hits.entries if e.status == PENDING and e.score >= threshold]
        self.decide_hits(keys, ACCEPTED)
        return len(keys)

    def set_hit_box(self, key: int, box: Box, drag_id: object = None) -> None:
        """Adjust a hit's box; an accepted hit's annotation moves with it."""
        if self.hits is None:
            return
        entry = self.hits.entry(key)
        if entry.status == ACCEPTED and entry.annotation_id and self.has_annotation(entry.annotation_id):
            self.set_annotation_box(entry.annotation_id, box, drag_id)
        elif box != entry.box:
            self.undo_stack.push(commands.SetHitBox(self, self.hits, entry, entry.box, box, drag_id))

    def move_pending_boxes(self, boxes: dict[int, Box]) -> int:
        """New boxes for pending hits (feedback re-localisation); a box the user adjusted, or a hit
        decided meanwhile, stays as it is. Returns how many boxes moved."""
        if self.hits is None:
            return 0
        moved = 0
        for entry in self.hits.entries:
            box = boxes.get(entry.key)
            if box is None or entry.status != PENDING or entry.box != entry.hit.box or box == entry.box:
                continue
            entry.hit = Hit(entry.hit.image, entry.hit.score, box, inscribed_ellipse(box))
            entry.box = box
            moved += 1
        if moved:
            self.changed.emit(Change("hits", frozenset(e.image for e in self.hits.entries)))
        return moved

    def add_second_looks(self, hits: list[Hit]) -> int:
        """Rejected photos shown again with a new box (feedback: relocate.second_look): each a new
        pending hit, placed among the undecided ones by its score. Like a search's results these
        are not edits. Returns how many were added (a photo with an undecided hit gets none)."""
        if self.hits is None:
            return 0
        waiting = {e.image for e in self.hits.entries if e.status != REJECTED}
        hits = [h for h in hits if h.image not in waiting]
        if not hits:
            return 0
        key = max((e.key for e in self.hits.entries), default=-1) + 1
        shown = Counter(e.image for e in self.hits.entries)
        added = [HitEntry(key + i, hit, hit.box, score=float(hit.score), look=shown[hit.image] + 1)
                 for i, hit in enumerate(hits)]
        decided = [e for e in self.hits.entries if e.status != PENDING]
        pending = sorted([e for e in self.hits.entries if e.status == PENDING] + added, key=lambda e: -e.score)
        self.hits.entries = decided + pending
        self.changed.emit(Change("hits", frozenset(h.image for h in hits)))
        return len(added)

    def withdraw_stale_looks(self, images) -> int:
        """Drop the undecided second looks of `images` whose photo has another hit that is no
        longer rejected (its rejection, which the look came from, was undone or reset): the
        photo would otherwise wait twice for review, and accepting both would label it twice.
        Like adding looks, not an edit; the next re-localisation may offer one again."""
        if self.hits is None:
            return 0
        withdrawn = []
        for image in set(images):
            here = [e for e in self.hits.entries if e.image == image]
            for look in sorted((e for e in here if e.look > 1 and e.status == PENDING), key=lambda e: -e.look):
                if any(e is not look and e.status != REJECTED for e in here):
                    here.remove(look)
                    withdrawn.append(look)
        if withdrawn:
            gone = {id(e) for e in withdrawn}
            self.hits.entries = [e for e in self.hits.entries if id(e) not in gone]
        return len(withdrawn)

    def rerank_hits(self, updates: dict[int, Hit]) -> None:
        """Re-score the pending hits (new best region and score per hit key) and re-order them;
        decided hits keep their place at the top. A box the user adjusted stays as adjusted."""
        if self.hits is None:
            return
        for entry in self.hits.entries:
            new = updates.get(entry.key)
            if new is None or entry.status != PENDING:
                continue
            if entry.box == entry.hit.box:
                entry.box = new.box
            entry.hit, entry.score = new, float(new.score)
        self.hits.reranked += 1
        self._sort_pending()

    def order_pending(self, scores: dict[int, float]) -> None:
        """New ranking scores for pending hits (key -> score; each keeps its hit, box and region
        score) and the pending hits re-ordered by them; decided hits keep their place at the top.
        Like re-ranking, this is no edit: nothing labelled changes."""
        if self.hits is None:
            return
        for entry in self.hits.entries:
            if entry.key in scores and entry.status == PENDING:
                entry.score = float(scores[entry.key])
        self._sort_pending()

    def _sort_pending(self) -> None:
        """Decided hits first (in their order), then the pending ones by score."""
        decided = [e for e in self.hits.entries if e.status != PENDING]
        pending = sorted((e for e in self.hits.entries if e.status == PENDING), key=lambda e: -e.score)
        self.hits.entries = decided + pending
        self.changed.emit(Change("hits", frozenset(e.image for e in self.hits.entries)))

    def record_query(self, category: str, positives, negatives=()) -> str:
        """Remember where a search came from (not an edit: kept even when its hits are undone)."""
        query = self.store.add_query(category, positives, negatives)
        self._set_saved(False)
        self._autosave.start()
        return query.id

    # ---- persistence -------------------------------------------------------------------------
    def save(self) -> bool:
        """Write the store now (atomically), taking in what another program saved meanwhile. On
        failure the previous file stays as it was, the user is told, the edits stay in memory
        (unsaved) and the save is tried again every RETRY_MS until it succeeds."""
        self._autosave.stop()
        self._retry.stop()
        try:
            report = self.store.save(wait_s=self.SAVE_WAIT_S)
        except StoreBusy as exc:
            return self._failed(exc.message)
        except ProjectFileError as exc:
            return self._failed(exc.message)
        except OSError as exc:
            return self._failed(exc.strerror or str(exc))
        self._set_saved(True)
        self._took_in(report)
        return True

    def sync(self) -> None:
        """Show labels another program saved in this project (they merge with unsaved edits)."""
        try:
            report = self.store.sync(wait_s=0.2)
        except ProjectFileError:
            return  # busy or unreadable now: the next check or save deals with it
        self._took_in(report)

    def _failed(self, reason: str) -> bool:
        self._retry.start()
        self.saveFailed.emit(f"Could not save the labels: {reason}. Your changes are kept in this window "
                             f"and saving is tried again every {max(1, self._retry.interval() // 1000)} s.")
        return False

    def _retry_save(self) -> None:
        if not self._saved:
            self.save()

    def _took_in(self, report: SaveReport) -> None:
        if not report:
            return
        self.changed.emit(Change("annotations", frozenset(report.images)))
        self.notice.emit(f"Took in {report.merged} change(s) to the labels saved by another program "
                         "working on this project.")

    def adopt_import(self, added: list[Annotation], known_categories: set[str]) -> None:
        """Make annotations the store gained outside the document (a COCO import) one undo step."""
        if not added:
            return
        for ann in added:
            self.store.remove(ann.id)
        for category in self.store.categories:
            if category.name not in known_categories and not self.store.list(category=category.name):
                self.store.remove_category(category.name)
        self.undo_stack.push(commands.AddAnnotations(self, added, f"Import {len(added)} labels"))

    def reload(self, store: AnnotationStore) -> None:
        """Replace everything (e.g. after importing COCO); the undo history no longer applies."""
        self.store = store
        self.undo_stack.clear()
        self.hits = None
        self.sessions = []
        self._set_saved(not store.dirty)
        self.changed.emit(Change("reset"))

    # ---- for commands.py only ----------------------------------------------------------------
    def notify(self, change: Change) -> None:
        """An edit happened: tell the views and schedule the autosave."""
        self._set_saved(False)
        self._autosave.start()
        self.changed.emit(change)

    def _set_saved(self, saved: bool) -> None:
        if saved != self._saved:
            self._saved = saved
            self.savedChanged.emit(saved)


def _iou(a: Box, b: Box) -> float:
    inter = _intersection(a, b)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def _intersection(a: Box, b: Box) -> float:
    w = min(a.x2, b.x2) - max(a.x, b.x)
    h = min(a.y2, b.y2) - max(a.y, b.y)
    return max(w, 0.0) * max(h, 0.0)


def _contained(a: Box, b: Box) -> bool:
    """One box lies (almost) wholly inside the other."""
    smaller = min(a.area, b.area)
    return smaller > 0 and _intersection(a, b) / smaller >= CONTAINED


def _color_distance(a: str, b: str) -> float:
    ra, ga, ba = (int(a[i:i + 2], 16) for i in (1, 3, 5))
    rb, gb, bb = (int(b[i:i + 2], 16) for i in (1, 3, 5))
    return ((ra - rb) ** 2 + (ga - gb) ** 2 + (ba - bb) ** 2) ** 0.5
