"""The project's labels: categories (with colours), annotations and the queries they came from.

One JSON file in the project's state folder, written atomically (storage keeps one backup). The
store is plain Python so the CLI and the GUI share it; the GUI keeps its own undo stack and calls
`add(..., ann_id=...)` to restore a removed annotation under its old id.

Several writers (the window, a CLI command, a second window) may hold the same project: `save()`
takes a project-wide lock file beside the JSON and, when the file changed since this store last
read or wrote it, merges the other writer's changes in first (three-way, per category, annotation
and query: what this store changed wins, everything else comes from the file), so no writer ever
drops another's update.
"""
from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from dasr_annotator.engine.store.collection import write_json
from dasr_annotator.engine.store.storage import ProjectFileError, read_json
from dasr_annotator.engine.types import MIN_BOX_SIDE, Annotation, Box

FORMAT = 1
SOURCES = ("manual", "search", "import")
# Distinct colours for new categories (Kelly's list, the ones that read well on photos).
PALETTE = (
    "#f3c300", "#875692", "#f38400", "#a1caf1", "#be0032", "#c2b280", "#008856", "#e68fac",
    "#0067a5", "#f99379", "#604e97", "#f6a600", "#b3446c", "#dcd300", "#882d17", "#8db600",
)
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
LOCK_SUFFIX = ".lock"
LOCK_WAIT_S = 10.0  # a save holds the lock for milliseconds: waiting longer means a stuck writer


class StoreBusy(ProjectFileError):
    """Another program held the project's label lock for longer than a save may wait."""


@dataclass
class SaveReport:
    """What a save (or a sync) took in from another writer of the same project."""

    merged: int = 0  # categories, annotations and queries changed by the other writer
    images: set[str] = field(default_factory=set)  # images whose labels that changed

    def __bool__(self) -> bool:
        return self.merged > 0


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
        # The file's content as this store last read or wrote it: the merge base for the next save.
        self._base: tuple[dict, dict, dict] = ({}, {}, {})
        self._stamp: tuple | None = None

    # ---- persistence -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path) -> "AnnotationStore":
        """Read the store at `path`; a missing file is an empty store."""
        store = cls(path)
        stamp = _stamp(store.path)
        if stamp is None:
            return store
        store._categories, store._annotations, store._queries = _parse(store.path, read_json(store.path))
        store._remember_disk(stamp)
        store.dirty = False
        return store

    def save(self, wait_s: float = LOCK_WAIT_S) -> SaveReport:
        """Write the store (atomically) under the project's label lock, first merging what another
        writer saved since this store last read or wrote the file. Raises StoreBusy when the lock
        stays held for `wait_s`, ProjectFileError when the file cannot be written (the previous
        file is then intact and this store keeps its changes)."""
        with self._locked(wait_s):
            report = self._merge_from_disk()
            write_json(self.path, self.to_json())
            self._remember_disk(_stamp(self.path))
        self.dirty = False
        return report

    def sync(self, wait_s: float = LOCK_WAIT_S) -> SaveReport:
        """Take in what another writer saved, keeping this store's unsaved changes; writes nothing."""
        stamp = _stamp(self.path)
        if stamp is None or stamp == self._stamp:
            return SaveReport()  # unchanged, or gone (then there is nothing to take in)
        with self._locked(wait_s):
            return self._merge_from_disk()

    def _locked(self, wait_s: float) -> FileLock:
        folder = self.path.parent
        try:
            # A state folder removed while the project is open (not the photo folder itself) is
            # made again: the labels in memory are the only copy left.
            folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise ProjectFileError(f"cannot save {self.path}: {exc.strerror or exc}") from exc
        return _ProjectLock(self.path.with_name(self.path.name + LOCK_SUFFIX), wait_s)

    def _merge_from_disk(self) -> SaveReport:
        stamp = _stamp(self.path)
        if stamp is None or stamp == self._stamp:
            return SaveReport()  # unchanged, or gone (nothing to take in: ours is all there is)
        try:
            theirs = _parse(self.path, read_json(self.path, fallback_to_backup=False))
        except ProjectFileError:
            return SaveReport()  # damaged by someone else: ours is the good copy, written next
        base = self._base
        report = SaveReport()
        mine = (self._categories, self._annotations, self._queries)
        merged = []
        for kind, (ours, old, new) in enumerate(zip(mine, base, theirs)):
            result, taken = _merge3(ours, old, new)
            report.merged += len(taken)
            if kind == 1:
                report.images |= {a.image for k in taken for a in (ours.get(k), new.get(k)) if a is not None}
            merged.append(result)
        self._categories, self._annotations, self._queries = merged
        for ann in self._annotations.values():  # a category removed on one side, used on the other
            if ann.category not in self._categories:
                self._categories[ann.category] = theirs[0].get(ann.category) or base[0].get(ann.category) \
                    or Category(ann.category, PALETTE[len(self._categories) % len(PALETTE)])
        self._base = theirs
        self._stamp = stamp
        return report

    def _remember_disk(self, stamp: tuple | None) -> None:
        self._base = (dict(self._categories), dict(self._annotations), dict(self._queries))
        self._stamp = stamp

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
        _check_box(box)
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
        if "box" in changes:
            _check_box(ann.box)
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


def _check_box(box: Box) -> None:
    if not box.w >= MIN_BOX_SIDE or not box.h >= MIN_BOX_SIDE:
        raise ValueError(f"box {box.as_list()} has no area of at least {MIN_BOX_SIDE:g} pixel a side")


def _stamp(path: Path) -> tuple | None:
    """Identifies one version of the file: an atomic save replaces the inode."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProjectFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _parse(path: Path, data) -> tuple[dict, dict, dict]:
    categories: dict[str, Category] = {}
    annotations: dict[str, Annotation] = {}
    queries: dict[str, Query] = {}
    try:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"unknown format {data.get('format') if isinstance(data, dict) else data!r}")
        for c in data.get("categories", []):
            categories[str(c["name"])] = Category(str(c["name"]), _checked_colour(c["color"]))
        for a in data.get("annotations", []):
            ann = Annotation.from_json(a)
            annotations[ann.id] = ann
        for q in data.get("queries", []):
            query = Query.from_json(q)
            queries[query.id] = query
    except (KeyError, TypeError, ValueError) as exc:
        raise ProjectFileError(f"{path}: not a valid annotation file ({exc})") from exc
    return categories, annotations, queries


def _merge3(ours: dict, base: dict, theirs: dict) -> tuple[dict, list]:
    """Three-way merge of one kind of item by key: an item this side changed (added, edited or
    removed since `base`) keeps this side's version; every other item is taken as `theirs` has
    it. Returns the merged dict (this side's order, then the other side's new keys) and the keys
    whose merged value came from the other side's change."""
    merged, taken = {}, []
    for key in list(ours) + [k for k in theirs if k not in ours]:
        mine, old, other = ours.get(key), base.get(key), theirs.get(key)
        if mine == old and other != old:
            taken.append(key)
            value = other
        else:
            value = mine
        if value is not None:
            merged[key] = value
    return merged, taken


class _ProjectLock:
    """The project's label lock (a lock file, released by the OS if the holder dies)."""

    def __init__(self, path: Path, wait_s: float):
        self._lock = FileLock(str(path), timeout=wait_s)
        self._path = path
        self._wait_s = wait_s

    def __enter__(self):
        try:
            self._lock.acquire()
        except Timeout:
            raise StoreBusy(f"another program is saving the labels of this project ({self._path.parent}) and "
                            f"has not finished within {self._wait_s:g} s") from None
        except OSError as exc:
            raise ProjectFileError(f"cannot save {self._path.with_suffix('')}: {exc.strerror or exc}") from exc
        return self

    def __exit__(self, *exc):
        self._lock.release()
        return False


def _checked_name(name: str) -> str:
    name = str(name).strip()
    if not name:
        raise ValueError("a category needs a name")
    return name


def _checked_colour(color: str) -> str:
    if not isinstance(color, str) or not _COLOUR.match(color):
        raise ValueError(f"colour must look like '#rrggbb', not {color!r}")
    return color.lower()
