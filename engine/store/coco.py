"""COCO detection JSON out of, and into, a project's annotation store.

Export: images with their EXIF-oriented size, categories, boxes in pixels with area and
iscrowd 0, and an `attributes` object per annotation carrying score, query id, source and the
store's own id. Only images with annotations are listed unless `all_images` (an unlabelled image
would read as "no objects here", which nobody has checked).

Import is all or nothing: every image, category and annotation is checked first and the file is
refused with the reasons if anything is wrong. Image paths must stay inside the photo folder.
An annotation that matches an existing one (same image and category, IoU >= 0.9) is skipped and
reported, never merged or overwritten.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from dasr_annotator.engine.store.collection import write_json
from dasr_annotator.engine.store.imageio import ImageError, image_size
from dasr_annotator.engine.store.storage import ProjectFileError, read_json
from dasr_annotator.engine.types import MIN_BOX_SIDE, Box

DUPLICATE_IOU = 0.9
SIZE_TOLERANCE = 1.0  # pixels a box may overhang the image (rounding in other tools); clipped
MAX_REASONS = 20


class CocoError(ValueError):
    """A COCO file that cannot be imported; `reasons` lists what is wrong."""

    def __init__(self, path, reasons: list[str]):
        shown = reasons[:MAX_REASONS]
        more = f"\n  ... and {len(reasons) - MAX_REASONS} more" if len(reasons) > MAX_REASONS else ""
        super().__init__(f"{path}: not imported:\n  " + "\n  ".join(shown) + more)
        self.reasons = reasons


@dataclass
class ExportReport:
    images: int
    annotations: int
    categories: int
    skipped: list[dict] = field(default_factory=list)  # [{"file", "reason"}] images that could not be read


@dataclass
class ImportReport:
    added: int
    duplicates: list[dict] = field(default_factory=list)  # [{"image", "category", "box", "existing"}]
    categories_added: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # [{"annotation", "reason"}] e.g. crowd regions

    def as_json(self) -> dict:
        return {"added": self.added, "duplicates": self.duplicates, "categories_added": self.categories_added,
                "skipped": self.skipped}


def export_coco(project, out_path: str | Path, all_images: bool = False) -> ExportReport:
    store = project.annotations
    by_image: dict[str, list] = {}
    for ann in store.list():
        by_image.setdefault(ann.image, []).append(ann)
    names = sorted(set(project.scan()) | set(by_image)) if all_images else sorted(by_image)
    categories = store.categories
    category_id = {c.name: i for i, c in enumerate(categories, start=1)}
    images, annotations, skipped = [], [], []
    for name in names:
        try:
            width, height = image_size(project.path_of(name))
        except ImageError as exc:
            skipped.append({"file": name, "reason": exc.reason})
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for ann in by_image.get(name, []):
            box = ann.box.clipped(width, height)
            if box.w < MIN_BOX_SIDE or box.h < MIN_BOX_SIDE:
                skipped.append({"file": name, "reason": f"annotation {ann.id} lies outside the image "
                                                        f"(less than {MIN_BOX_SIDE:g} pixel a side inside it)"})
                continue
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_id[ann.category],
                "bbox": [round(v, 2) for v in box.as_list()], "area": round(box.area, 2), "iscrowd": 0,
                "attributes": {"score": ann.score, "query_id": ann.query_id, "source": ann.source, "id": ann.id},
            })
    coco = {
        "info": {"description": f"dasr-annotator labels of {project.photos}",
                 "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "licenses": [],
        "images": images,
        "categories": [{"id": category_id[c.name], "name": c.name, "supercategory": "", "color": c.color}
                       for c in categories],
        "annotations": annotations,
    }
    write_json(Path(out_path), coco, backup=False)
    return ExportReport(len(images), len(annotations), len(categories), skipped)


def import_coco(project, in_path: str | Path) -> ImportReport:
    """Add the annotations of a COCO file to the project's store (saved). Raises CocoError."""
    try:
        data = read_json(in_path, fallback_to_backup=False, expect=dict)
    except ProjectFileError as exc:
        raise CocoError(in_path, [exc.message]) from None
    images, image_reasons = _checked_images(project, data)
    categories, category_reasons = _checked_categories(data)
    reasons = image_reasons + category_reasons
    entries, skipped = [], []
    annotations = data.get("annotations")
    if not isinstance(annotations, list):
        reasons.append("'annotations' must be a list")
        annotations = []
    for i, a in enumerate(annotations):
        where = f"annotations[{i}]"
        if not isinstance(a, dict):
            reasons.append(f"{where} is not an object")
            continue
        if a.get("iscrowd", 0) not in (0, False):
            skipped.append({"annotation": a.get("id", i), "reason": "crowd region (iscrowd 1) is not an instance box"})
            continue
        image, category = images.get(_key(a.get("image_id"))), categories.get(_key(a.get("category_id")))
        if image is None:
            reasons.append(f"{where}: image_id {a.get('image_id')!r} is not among the images")
        if category is None:
            reasons.append(f"{where}: category_id {a.get('category_id')!r} is not among the categories")
        box = _checked_bbox(a.get("bbox"), image, where, reasons)
        if image is None or category is None or box is None:
            continue
        attributes = a.get("attributes") if isinstance(a.get("attributes"), dict) else {}
        score = attributes.get("score", a.get("score"))
        if score is not None and finite_number(score) is None:
            reasons.append(f"{where}: score {score!r} is not a number")
            continue
        query_id = attributes.get("query_id")
        entries.append((image["rel"], category, box, None if score is None else finite_number(score),
                        None if query_id is None else str(query_id)))
    if reasons:
        raise CocoError(in_path, reasons)

    store = project.annotations
    known = {c.name for c in store.categories}
    report = ImportReport(0, skipped=skipped)
    added = []
    try:
        for rel, category, box, score, query_id in entries:
            existing = store.find_duplicate(rel, category, box, DUPLICATE_IOU)
            if existing is not None:
                report.duplicates.append({"image": rel, "category": category, "box": box.as_list(),
                                          "existing": existing.id})
                continue
            added.append(store.add(rel, category, box, score=score, query_id=query_id, source="import"))
        report.added = len(added)
        report.categories_added = [c.name for c in store.categories if c.name not in known]
        store.save()
    except BaseException:  # all or nothing, in memory as on disk
        for ann in added:
            store.remove(ann.id)
        for name in [c.name for c in store.categories if c.name not in known]:
            store.remove_category(name)
        raise
    return report


def _key(value):
    """COCO ids are usually ints but some tools write strings; compare them as given."""
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def _checked_images(project, data: dict) -> tuple[dict, list[str]]:
    """{image id: {"rel", "width", "height"}} and what is wrong."""
    out, reasons = {}, []
    images = data.get("images")
    if not isinstance(images, list):
        return {}, ["'images' must be a list"]
    for i, im in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(im, dict) or _key(im.get("id")) is None:
            reasons.append(f"{where} needs an 'id' (number or string)")
            continue
        name = im.get("file_name")
        if not isinstance(name, str) or not name.strip():
            reasons.append(f"{where} needs a 'file_name'")
            continue
        rel = project.relative(name)
        if rel is None:
            reasons.append(f"{where}: {name!r} lies outside the photo folder {project.photos}")
            continue
        try:
            width, height = image_size(project.path_of(rel))
        except ImageError as exc:
            reasons.append(f"{where}: {name!r}: {exc.reason}")
            continue
        except ValueError:  # a NUL byte, or a name the file system cannot encode
            reasons.append(f"{where}: {name!r} is not a usable file name")
            continue
        stated = (im.get("width"), im.get("height"))
        if stated != (None, None) and tuple(stated) != (width, height):
            reasons.append(f"{where}: {name!r} is {width} x {height} here (EXIF orientation applied) but "
                           f"{stated[0]} x {stated[1]} in the file; boxes would land in the wrong place")
            continue
        if _key(im["id"]) in out:
            reasons.append(f"{where}: id {im['id']!r} is used twice")
            continue
        out[_key(im["id"])] = {"rel": rel, "width": width, "height": height}
    return out, reasons


def _checked_categories(data: dict) -> tuple[dict, list[str]]:
    """{category id: name} and what is wrong."""
    out, reasons = {}, []
    categories = data.get("categories")
    if not isinstance(categories, list):
        return {}, ["'categories' must be a list"]
    for i, c in enumerate(categories):
        where = f"categories[{i}]"
        if not isinstance(c, dict) or _key(c.get("id")) is None:
            reasons.append(f"{where} needs an 'id'")
        elif not isinstance(c.get("name"), str) or not c["name"].strip():
            reasons.append(f"{where} needs a 'name'")
        elif _key(c["id"]) in out:
            reasons.append(f"{where}: id {c['id']!r} is used twice")
        else:
            out[_key(c["id"])] = c["name"].strip()
    return out, reasons


def finite_number(value) -> float | None:
    """`value` as a finite float, or None (booleans, text, NaN, infinities, ints past float range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _checked_bbox(bbox, image: dict | None, where: str, reasons: list[str]) -> Box | None:
    values = [finite_number(v) for v in bbox] if isinstance(bbox, list) else []
    if len(values) != 4 or None in values:
        reasons.append(f"{where}: 'bbox' must be [x, y, width, height] numbers, not {bbox!r}")
        return None
    box = Box(*values)
    if box.w < MIN_BOX_SIDE or box.h < MIN_BOX_SIDE:
        reasons.append(f"{where}: bbox {bbox} has no area of at least {MIN_BOX_SIDE:g} pixel a side")
        return None
    if image is None:
        return None
    w, h, tol = image["width"], image["height"], SIZE_TOLERANCE
    inside = box.clipped(w, h)
    if box.x < -tol or box.y < -tol or box.x2 > w + tol or box.y2 > h + tol or min(inside.w, inside.h) < MIN_BOX_SIDE:
        reasons.append(f"{where}: bbox {bbox} does not fit in {image['rel']} ({w} x {h})")
        return None
    return inside
