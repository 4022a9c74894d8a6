"""The project's labels: categories (with colours), annotations and the queries they came from.

One JSON file in the project's state folder, written atomically (storage keeps one backup). The
store is plain Python so the CLI and the GUI share it; the GUI keeps its own undo stack and calls
`add(..., ann_id=...)` to restore a removed annotation under its old id.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from dasr_annotator.engine.store.collection import write_json
from dasr_annotator.engine.store.storage import ProjectFileError, read_json
from dasr_annotator.engine.types import Annotation, Box

FORMAT = 1
SOURCES = ("manual", "search", "import")
# Distinct colours for new categories (Kelly's list, the ones that read well on photos).
PALETTE = (
    "#f3c300", "#875692", "#f38400", "#a1caf1", "#be0032", "#c2b280", "#008856", "#e68fac",
    "#0067a5", "#f99379", "#604e97", "#f6a600", "#b3446c", "#dcd300", "#882d17", "#8db600",
)
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class Category:
    name: str
    color: str  # "#rrggbb"


@dataclass(frozen=True)
class Query:
    """Where a search came from: positive boxes (and optional negatives) for one category."""

    id: str
    category: str
    positives: tuple[tuple[str, Box], ...]
    negatives: tuple[tuple[str, Box], ...] = ()
    created: str = ""

    def as_json(self) -> dict:
        pair = lambda image, box: {"image": image, "box": box.as_list()}  # noqa: E731
        return {
            "id": self.id,
            "category": self.category,
            "positives": [pair(i, b) for i, b in self.positives],
            "negatives": [pair(i, b) for i, b in self.negatives],
            "created": self.created,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Query":
        pairs = lambda items: tuple((str(p["image"]), Box.from_list(p["box"])) for p in items)  # noqa: E731
        return cls(
            id=str(d["id"]),
            category=str(d["category"]),
            positives=pairs(d.get("positives", [])),
            negatives=pairs(d.get("negatives", [])),
            created=str(d.get("created", "")),
        )


def new_id() -> str:
    """A stable, collision-safe string id (the CLI and the GUI may add to one store)."""
    return uuid.uuid4().hex[:16]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class AnnotationStore:
    """Categories, annotations and queries of one project. Changes are in memory until `save()`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._categories: dict[str, Category] = {}
        self._annotations: dict[str, Annotation] = {}
        self._queries: dict[str, Query] = {}
        self.dirty = False

    # ---- persistence -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path) -> "AnnotationStore":
        """Read the store at `path`; a missing file is an empty store."""
        store = cls(path)
        if not store.path.exists():
            return store
        data = read_json(store.path)
        try:
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"unknown format {data.get('format') if isinstance(data, dict) else data!r}")
            for c in data.get("categories", []):
                store._categories[str(c["name"])] = Category(str(c["name"]), _checked_colour(c["color"]))
            for a in data.get("annotations", []):
                ann = Annotation.from_json(a)
                store._annotations[ann.id] = ann
            for q in data.get("queries", []):
                query = Query.from_json(q)
                store._queries[query.id] = query
        except (KeyError, TypeError, ValueError) as exc:
            raise ProjectFileError(f"{store.path}: not a valid annotation file ({exc})") from exc
        store.dirty = False
        return store

    def save(self) -> None:
        write_json(self.path, self.to_json())
        self.dirty = False

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "categories": [{"name": c.name, "color": c.color} for c in self._categories.values()],
            "annotations": [a.as_json() for a in self._annotations.values()],
            "queries": [q.as_json() for q in self._queries.values()],
        }

    # ---- categories --------------------------------------------------------------------------
    @property
    def categories(self) -> list[Category]:
        return list(self._categories.values())

    def category(self, name: str) -> Category:
        return self._categories[name]

    def add_category(self, name: str, color: str | None = None) -> Category:
        """Create `name` (or return it unchanged if it exists); a new one gets the next free colour."""
        name = _checked_name(name)
        if name in self._categories:
            return self._categories[name]
        if color is None:
            used = {c.color for c in self._categories.values()}
            free = [c for c in PALETTE if c not in used]
            color = free[0] if free else PALETTE[len(self._categories) % len(PALETTE)]
        category = Category(name, _checked_colour(color))
        self._categories[name] = category
        self.dirty = True
        return category

    def set_category_color(self, name: str, color: str) -> Category:
        category = Category(name, _checked_colour(color))
        self._categories[self.category(name).name] = category
        self.dirty = True
        return category

    def rename_category(self, old: str, new: str) -> Category:
        """Rename a category and every annotation and query that uses it."""
        new = _checked_name(new)
        if new in self._categories:
            raise ValueError(f"a category named {new!r} exists already")
        colour = self.category(old).color
        self._categories = {(new if k == old else k): (Category(new, colour) if k == old else c)
                            for k, c in self._categories.items()}
        for ann in self.list(category=old):
            self._annotations[ann.id] = replace(ann, category=new)
        for q in list(self._queries.values()):
            if q.category == old:
                self._queries[q.id] = replace(q, category=new)
        self.dirty = True
        return self._categories[new]

    def remove_category(self, name: str, drop_annotations: bool = False) -> list[Annotation]:
        """Remove a category; refuses while annotations use it unless `drop_annotations`."""
        used = self.list(category=name)
        if used and not drop_annotations:
            raise ValueError(f"category {name!r} has {len(used)} annotations")
        for ann in used:
            del self._annotations[ann.id]
        del self._categories[self.category(name).name]
        self.dirty = True
        return used

    # ---- annotations -------------------------------------------------------------------------
    def list(self, image: str | None = None, category: str | None = None) -> list[Annotation]:
        """Annotations in insertion order, optionally only those of one image and/or category."""
        return [a for a in self._annotations.values()
                if (image is None or a.image == image) and (category is None or a.category == category)]

    def get(self, ann_id: str) -> Annotation:
        return self._annotations[ann_id]

    def __len__(self) -> int:
        return len(self._annotations)

    def add(self, image: str, category: str, box: Box, *, score: float | None = None,
            query_id: str | None = None, source: str = "manual", ann_id: str | None = None) -> Annotation:
        """Add one annotation (creating its category if needed). `ann_id` restores a known id."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
        if not box.w > 0 or not box.h > 0:
            raise ValueError(f"box {box.as_list()} has no area")
        ann_id = ann_id or new_id()
        if ann_id in self._annotations:
            raise ValueError(f"annotation id {ann_id!r} exists already")
        self.add_category(category)
        ann = Annotation(ann_id, image, category, box, score, query_id, source)
        self._annotations[ann_id] = ann
        self.dirty = True
        return ann

    def remove(self, ann_id: str) -> Annotation:
        ann = self._annotations.pop(ann_id)
        self.dirty = True
        return ann

    def update(self, ann_id: str, **changes) -> Annotation:
        """Change fields of an annotation (box, category, score, ...); its id never changes."""
        if "id" in changes:
            raise ValueError("an annotation's id cannot change")
        ann = replace(self.get(ann_id), **changes)
        if "category" in changes:
            self.add_category(ann.category)
        self._annotations[ann_id] = ann
        self.dirty = True
        return ann

    def find_duplicate(self, image: str, category: str, box: Box, min_iou: float = 0.9) -> Annotation | None:
        """An existing annotation of the same image and category whose box overlaps `box` that much."""
        for ann in self.list(image=image, category=category):
            if ann.box.iou(box) >= min_iou:
                return ann
        return None

    # ---- queries -----------------------------------------------------------------------------
    def add_query(self, category: str, positives, negatives=()) -> Query:
        """Record a search's positive (and negative) (image, Box) pairs; returns it with a new id."""
        query = Query(new_id(), category, tuple(positives), tuple(negatives), _now())
        if not query.positives:
            raise ValueError("a query needs at least one positive box")
        self._queries[query.id] = query
        self.dirty = True
        return query

    @property
    def queries(self) -> list[Query]:
        return list(self._queries.values())

    def query(self, query_id: str) -> Query:
        return self._queries[query_id]


def _checked_name(name: str) -> str:
    name = str(name).strip()
    if not name:
        raise ValueError("a category needs a name")
    return name


def _checked_colour(color: str) -> str:
    if not isinstance(color, str) or not _COLOUR.match(color):
        raise ValueError(f"colour must look like '#rrggbb', not {color!r}")
    return color.lower()
