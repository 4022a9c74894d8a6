"""COCO detection JSON out of, and into, a project's annotation store.

Export: images with their EXIF-oriented size, categories, boxes in pixels with area and
iscrowd 0, and an `attributes` object per annotation carrying score, query id, source and the
store's own id. Only images with annotations are listed unless `all_images` (an unlabelled image
would read as "no objects here", which nobody has checked).

A video frame (`clip.mp4#frame=N`) is one image entry carrying `video`, `frame_index` and
`timestamp` (seconds); with `frames_dir` the frame is also written there as a JPEG
(`clip.mp4/frame_000123.jpg`, the video's folders kept) and its `file_name` is that file's path
relative to `frames_dir`, so COCO tools that read image files find it. Import reads a frame back
from `video` and `frame_index` whatever the `file_name`.

Import is all or nothing: every image, category and annotation is checked first and the file is
refused with the reasons if anything is wrong. Image paths must stay inside the photo folder.
An annotation that matches an existing one (same image and category, IoU >= 0.9) is skipped and
reported, never merged or overwritten. The checks and the commit are the ones every format
shares (`formats/common.py`).
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from dasr_annotator.engine.store.collection import write_json
from dasr_annotator.engine.store.formats.common import (
    DUPLICATE_IOU, MAX_REASONS, SIZE_TOLERANCE, ExportReport, ImportReport, Label, LabelFileError, add_labels,
    category_ids, check_box, check_image, finite_number, gather,
)
from dasr_annotator.engine.store.storage import ProjectFileError, read_json
from dasr_annotator.engine.store.video import frame_name
from dasr_annotator.engine.types import Box

__all__ = ["CocoError", "DUPLICATE_IOU", "ExportReport", "ImportReport", "MAX_REASONS", "SIZE_TOLERANCE",
           "export_coco", "finite_number", "import_coco"]

TITLE = "COCO"
CocoError = LabelFileError  # the name callers have always caught


def export_coco(project, out_path: str | Path, all_images: bool = False,
                frames_dir: str | Path | None = None) -> ExportReport:
    exported, skipped = gather(project, all_images, frames_dir)
    categories = project.annotations.categories
    category_id = category_ids(project, start=1)
    images, annotations = [], []
    for image in exported:
        image_id = len(images) + 1
        entry = {"id": image_id, "file_name": image.frame_file or image.name,
                 "width": image.width, "height": image.height}
        if image.video is not None:
            entry.update(video=image.video, frame_index=image.frame_index, timestamp=image.timestamp)
        images.append(entry)
        for ann, box in image.labels:
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
    return ExportReport(len(images), len(annotations), len(categories), skipped,
                        frames=sum(image.frame_file is not None for image in exported))


def import_coco(project, in_path: str | Path) -> ImportReport:
    """Add the annotations of a COCO file to the project's store (saved). Raises CocoError."""
    try:
        data = read_json(in_path, fallback_to_backup=False, expect=dict)
    except ProjectFileError as exc:
        raise CocoError(in_path, [exc.message]) from None
    images, image_reasons = _checked_images(project, data)
    categories, category_reasons = _checked_categories(data)
    reasons = image_reasons + category_reasons
    labels, skipped = [], []
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
        labels.append(Label(image.rel, category, box, None if score is None else finite_number(score),
                            None if query_id is None else str(query_id)))
    if reasons:
        raise CocoError(in_path, reasons)
    return add_labels(project, labels, skipped)


def _key(value):
    """COCO ids are usually ints but some tools write strings; compare them as given."""
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def _checked_images(project, data: dict) -> tuple[dict, list[str]]:
    """{image id: CheckedImage} and what is wrong."""
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
        if isinstance(im.get("video"), str) and im.get("frame_index") is not None:
            if isinstance(im["frame_index"], bool) or not isinstance(im["frame_index"], int) or im["frame_index"] < 0:
                reasons.append(f"{where}: frame_index {im['frame_index']!r} is not a frame number")
                continue
            name = frame_name(im["video"], im["frame_index"])  # the frame, wherever its JPEG was written
        if not isinstance(name, str) or not name.strip():
            reasons.append(f"{where} needs a 'file_name'")
            continue
        image = check_image(project, name, (im.get("width"), im.get("height")), where, reasons)
        if image is None:
            continue
        if _key(im["id"]) in out:
            reasons.append(f"{where}: id {im['id']!r} is used twice")
            continue
        out[_key(im["id"])] = image
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


def _checked_bbox(bbox, image, where: str, reasons: list[str]) -> Box | None:
    values = [finite_number(v) for v in bbox] if isinstance(bbox, list) else []
    if len(values) != 4 or None in values:
        reasons.append(f"{where}: 'bbox' must be [x, y, width, height] numbers, not {bbox!r}")
        return None
    return check_box(Box(*values), image, where, f"bbox {bbox}", reasons)


export = export_coco  # the names every format module has (formats/__init__.py)
import_labels = import_coco
