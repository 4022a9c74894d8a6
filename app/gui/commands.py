"""Undoable edits of the document. Each command changes the store (and the hits) in `redo`,
restores exactly what was there in `undo`, and tells the document what it touched.

Box drags arrive as many small moves; commands sharing a drag id merge into one undo step.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtGui import QUndoCommand

from dasr_annotator.engine.store.annotations import new_id
from dasr_annotator.engine.types import Annotation, Box

# The document imports this module; commands read its types at run time only.
from dasr_annotator.app.gui import document as doc_types

if TYPE_CHECKING:
    from dasr_annotator.app.gui.document import Document, HitEntry, HitSession

_SET_BOX_ID = 1001
_SET_HIT_BOX_ID = 1002


def new_annotation_id() -> str:
    return new_id()


def _change(kind: str, images=(), ids=()):
    return doc_types.Change(kind, frozenset(images), tuple(ids))


def _ensure_category(doc: "Document", name: str) -> bool:
    """Create `name` if missing; True when this call created it (so undo removes it again)."""
    if doc.has_category(name):
        return False
    doc.store.add_category(name, doc.free_color())
    return True


def _restore(doc: "Document", ann: Annotation) -> None:
    doc.store.add(ann.image, ann.category, ann.box, score=ann.score, query_id=ann.query_id,
                  source=ann.source, ann_id=ann.id)


def _detach_hits(doc: "Document", ann_ids: set[str]) -> list[tuple]:
    """Hits whose annotation is being removed go back to pending; returns what to restore."""
    if doc.hits is None:
        return []
    saved = [(e, e.status, e.annotation_id) for e in doc.hits.entries if e.annotation_id in ann_ids]
    for entry, _, _ in saved:
        entry.status, entry.annotation_id = doc_types.PENDING, None
    return saved


def _reattach_hits(saved: list[tuple]) -> None:
    for entry, status, ann_id in saved:
        entry.status, entry.annotation_id = status, ann_id


class AddAnnotations(QUndoCommand):
    def __init__(self, doc: "Document", annotations: list[Annotation], text: str):
        super().__init__(text)
        self.doc, self.annotations = doc, list(annotations)
        self.created: list[str] = []

    def redo(self):
        self.created = [c for c in {a.category for a in self.annotations} if _ensure_category(self.doc, c)]
        for ann in self.annotations:
            _restore(self.doc, ann)
        self.doc.notify(_change("annotations", {a.image for a in self.annotations}, [a.id for a in self.annotations]))
        if self.created:
            self.doc.notify(_change("categories"))

    def undo(self):
        for ann in self.annotations:
            self.doc.store.remove(ann.id)
        for name in self.created:
            self.doc.store.remove_category(name)
        self.doc.notify(_change("annotations", {a.image for a in self.annotations}, [a.id for a in self.annotations]))
        if self.created:
            self.doc.notify(_change("categories"))


class RemoveAnnotations(QUndoCommand):
    def __init__(self, doc: "Document", ids: list[str]):
        super().__init__(f"Delete {len(ids)} box{'es' if len(ids) != 1 else ''}")
        self.doc = doc
        self.annotations = [doc.store.get(i) for i in ids]
        self.hits: list[tuple] = []

    def redo(self):
        for ann in self.annotations:
            self.doc.store.remove(ann.id)
        self.hits = _detach_hits(self.doc, {a.id for a in self.annotations})
        self._notify()

    def undo(self):
        for ann in self.annotations:
            _restore(self.doc, ann)
        _reattach_hits(self.hits)
        self._notify()

    def _notify(self):
        images = {a.image for a in self.annotations}
        self.doc.notify(_change("annotations", images, [a.id for a in self.annotations]))
        if self.hits:
            self.doc.notify(_change("hits", images))


class SetAnnotationBox(QUndoCommand):
    def __init__(self, doc: "Document", ann_id: str, old: Box, new: Box, drag_id: object = None):
        super().__init__("Adjust box")
        self.doc, self.ann_id, self.old, self.new, self.drag_id = doc, ann_id, old, new, drag_id

    def id(self) -> int:
        return _SET_BOX_ID

    def mergeWith(self, other: QUndoCommand) -> bool:
        if not isinstance(other, SetAnnotationBox) or self.drag_id is None:
            return False
        if other.ann_id != self.ann_id or other.drag_id != self.drag_id:
            return False
        self.new = other.new
        self.setObsolete(self.new == self.old)
        return True

    def redo(self):
        self._apply(self.new)

    def undo(self):
        self._apply(self.old)

    def _apply(self, box: Box):
        ann = self.doc.store.update(self.ann_id, box=box)
        if self.doc.hits is not None:
            for entry in self.doc.hits.entries:
                if entry.annotation_id == self.ann_id:
                    entry.box = box
        self.doc.notify(_change("annotations", {ann.image}, [ann.id]))


class SetAnnotationCategory(QUndoCommand):
    def __init__(self, doc: "Document", ids: list[str], category: str):
        super().__init__(f"Label as {category}")
        self.doc, self.category = doc, category
        self.old = {i: doc.store.get(i).category for i in ids}
        self.created = False

    def redo(self):
        self.created = _ensure_category(self.doc, self.category)
        for ann_id in self.old:
            self.doc.store.update(ann_id, category=self.category)
        self._notify()

    def undo(self):
        for ann_id, category in self.old.items():
            self.doc.store.update(ann_id, category=category)
        if self.created:
            self.doc.store.remove_category(self.category)
        self._notify()

    def _notify(self):
        images = {self.doc.store.get(i).image for i in self.old}
        self.doc.notify(_change("annotations", images, list(self.old)))
        if self.created:
            self.doc.notify(_change("categories"))


class AddCategory(QUndoCommand):
    def __init__(self, doc: "Document", name: str, color: str | None):
        super().__init__(f"Add category {name}")
        self.doc, self.name, self.color = doc, name, color

    def redo(self):
        self.color = self.doc.store.add_category(self.name, self.color or self.doc.free_color()).color
        self.doc.notify(_change("categories"))

    def undo(self):
        self.doc.store.remove_category(self.name)
        self.doc.notify(_change("categories"))


class RenameCategory(QUndoCommand):
    def __init__(self, doc: "Document", old: str, new: str):
        super().__init__(f"Rename {old} to {new}")
        self.doc, self.old, self.new = doc, old, new

    def redo(self):
        self._rename(self.old, self.new)

    def undo(self):
        self._rename(self.new, self.old)

    def _rename(self, old: str, new: str):
        images = {a.image for a in self.doc.store.list(category=old)}
        self.doc.store.rename_category(old, new)
        if self.doc.hits is not None and self.doc.hits.category == old:
            self.doc.hits.category = new
        self.doc.notify(_change("categories"))
        self.doc.notify(_change("annotations", images))


class SetCategoryColor(QUndoCommand):
    def __init__(self, doc: "Document", name: str, color: str):
        super().__init__(f"Recolour {name}")
        self.doc, self.name = doc, name
        self.old, self.new = doc.store.category(name).color, color

    def redo(self):
        self.doc.store.set_category_color(self.name, self.new)
        self.doc.notify(_change("categories"))

    def undo(self):
        self.doc.store.set_category_color(self.name, self.old)
        self.doc.notify(_change("categories"))


class RemoveCategory(QUndoCommand):
    def __init__(self, doc: "Document", name: str):
        super().__init__(f"Delete category {name}")
        self.doc, self.name = doc, name
        self.color = doc.store.category(name).color
        self.annotations = doc.store.list(category=name)
        self.hits: list[tuple] = []
        self.shown = doc.hits  # the review on screen when the category went
        self.sessions: list[tuple[int, "HitSession"]] = []

    def redo(self):
        self.doc.store.remove_category(self.name, drop_annotations=True)
        self.hits = _detach_hits(self.doc, {a.id for a in self.annotations})
        # The category's reviews go with it (its results strip and pending boxes too).
        self.sessions = [(i, s) for i, s in enumerate(self.doc.sessions) if s.category == self.name]
        for _, session in self.sessions:
            self.doc.drop_session(session)
        if self.doc.hits is not None and self.doc.hits.category == self.name:
            self.doc.set_hits(None)
        self._notify()

    def undo(self):
        self.doc.store.add_category(self.name, self.color)
        for ann in self.annotations:
            _restore(self.doc, ann)
        _reattach_hits(self.hits)
        for index, session in self.sessions:
            self.doc.sessions.insert(index, session)
        if self.shown is not self.doc.hits:
            self.doc.set_hits(self.shown)
        self._notify()

    def _notify(self):
        images = {a.image for a in self.annotations}
        self.doc.notify(_change("categories"))
        self.doc.notify(_change("annotations", images, [a.id for a in self.annotations]))
        if self.hits:
            self.doc.notify(_change("hits", images))


class DecideHits(QUndoCommand):
    """Accept, reject or reset hits. Accepting turns a hit into a "search" annotation."""

    def __init__(self, doc: "Document", session: "HitSession", entries: list["HitEntry"], decision: str):
        n = len(entries)
        super().__init__(f"{decision.capitalize()} {n} hit{'s' if n != 1 else ''}")
        self.doc, self.session, self.decision = doc, session, decision
        self.before = [(e, e.status, e.annotation_id) for e in entries]
        # Ids are fixed now so that redo after undo recreates the very same annotations.
        self.new_ids = {e.key: (new_annotation_id() if decision == doc_types.ACCEPTED else None) for e in entries}
        self.removed: dict[str, Annotation] = {}
        self.created = False

    def redo(self):
        self.removed = {}
        category = self.session.category
        self.created = self.decision == doc_types.ACCEPTED and _ensure_category(self.doc, category)
        for entry, status, ann_id in self.before:
            if status == doc_types.ACCEPTED and ann_id and self.doc.has_annotation(ann_id):
                self.removed[ann_id] = self.doc.store.remove(ann_id)
            entry.status, entry.annotation_id = self.decision, self.new_ids[entry.key]
            if self.decision == doc_types.ACCEPTED:
                self.doc.store.add(entry.image, category, entry.box, score=entry.score,
                                   query_id=self.session.query_id, source="search", ann_id=entry.annotation_id)
        self._notify()

    def undo(self):
        for entry, status, ann_id in self.before:
            if entry.annotation_id and self.doc.has_annotation(entry.annotation_id):
                self.doc.store.remove(entry.annotation_id)
            entry.status, entry.annotation_id = status, ann_id
        for ann in self.removed.values():
            _restore(self.doc, ann)
        if self.created:
            self.doc.store.remove_category(self.session.category)
        self._notify()

    def _notify(self):
        images = {e.image for e, _, _ in self.before}
        self.doc.withdraw_stale_looks(images)
        self.doc.notify(_change("annotations", images))
        self.doc.notify(_change("hits", images, [str(e.key) for e, _, _ in self.before]))
        if self.created:
            self.doc.notify(_change("categories"))


class SetHitBox(QUndoCommand):
    """Adjust a pending or rejected hit's box before deciding (accepted ones move their annotation)."""

    def __init__(self, doc: "Document", session: "HitSession", entry: "HitEntry", old: Box, new: Box,
                 drag_id: object = None):
        super().__init__("Adjust hit box")
        self.doc, self.session, self.entry = doc, session, entry
        self.old, self.new, self.drag_id = old, new, drag_id

    def id(self) -> int:
        return _SET_HIT_BOX_ID

    def mergeWith(self, other: QUndoCommand) -> bool:
        if not isinstance(other, SetHitBox) or self.drag_id is None:
            return False
        if other.entry is not self.entry or other.drag_id != self.drag_id:
            return False
        self.new = other.new
        self.setObsolete(self.new == self.old)
        return True

    def redo(self):
        self._apply(self.new)

    def undo(self):
        self._apply(self.old)

    def _apply(self, box: Box):
        self.entry.box = box
        self.doc.notify(_change("hits", {self.entry.image}, [str(self.entry.key)]))


class ShowHits(QUndoCommand):
    """A query's results replace the review on screen; undo brings the earlier review back and
    forgets this one (its results strip and pending boxes go)."""

    def __init__(self, doc: "Document", old: "HitSession | None", new: "HitSession", text: str):
        super().__init__(text)
        self.doc, self.old, self.new = doc, old, new

    def redo(self):
        self.doc.set_hits(self.new)

    def undo(self):
        self.doc.drop_session(self.new)
        self.doc.set_hits(self.old if self.old in self.doc.sessions else None)
