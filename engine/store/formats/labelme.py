"""labelme JSON: one file per image.

Export to a folder mirroring the photo folder: `<folder>/<stem>.json` with labelme's keys
(`version`, `flags`, `shapes`, `imagePath` relative to the JSON file, `imageData` null,
`imageHeight`, `imageWidth`); each box is a `rectangle` shape with its two corners. labelme keeps
keys it does not know, so a shape also carries `score` (as X-AnyLabeling writes it) and
`attributes` {query_id, source, id}: nothing is lost.

Import from a folder of such files (or one file): the photo is `imagePath` relative to the JSON
file, or below the photo folder, or the photo with the JSON's own stem (`ImageFinder`).
Rectangles with two or four corners are boxes; other shapes are skipped with a reason.
"""
from __future__ import annotations

import os
from pathlib import Path

from dasr_annotator.engine.store.collection import write_json
from dasr_annotator.engine.store.formats.common import (
    ExportReport, ImageFinder, ImportReport, Label, LabelFileError, add_labels, category_name, check_box,
    check_image, checked_score, label_files, finite_number, gather, per_image_files,
)
from dasr_annotator.engine.store.storage import ProjectFileError, read_json
from dasr_annotator.engine.types import Box

TITLE = "labelme"
LABELME_VERSION = "5.5.0"  # the file layout written; labelme reads older and newer alike


def export(project, out, all_images: bool = False) -> ExportReport:
    images, skipped = gather(project, all_images)
    targets = per_image_files(images, Path(out), ".json", skipped)
    for image, target in targets:
        shapes = [{
            "label": ann.category, "points": [[box.x, box.y], [box.x2, box.y2]], "group_id": None,
            "description": "", "shape_type": "rectangle", "flags": {}, "score": ann.score,
            "attributes": {"query_id": ann.query_id, "source": ann.source, "id": ann.id},
        } for ann, box in image.labels]
        image_path = os.path.relpath(os.path.abspath(project.path_of(image.name)), os.path.abspath(target.parent))
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, {"version": LABELME_VERSION, "flags": {}, "shapes": shapes,
                            "imagePath": Path(image_path).as_posix(), "imageData": None,
                            "imageHeight": image.height, "imageWidth": image.width}, backup=False)
    written = [image for image, _ in targets]
    return ExportReport(len(written), sum(len(i.labels) for i in written), len(project.annotations.categories),
                        skipped)


def import_labels(project, path) -> ImportReport:
    finder = ImageFinder(project)
    labels, skipped, reasons = [], [], []
    for file, where, folder, stem in label_files(path, ".json"):
        try:
            data = read_json(file, fallback_to_backup=False, expect=dict)
        except ProjectFileError as exc:
            reasons.append(f"{where}: {exc.message.removeprefix(str(file)).strip()}")
            continue
        if "shapes" not in data and "imagePath" not in data:
            continue  # some other JSON beside the labels (a COCO file, a settings file)
        stated = data.get("imagePath")
        rel = finder.find(stated if isinstance(stated, str) else None, file, folder, stem)
        if rel is None:
            reasons.append(f"{where}: imagePath: no photo {stated!r} in {project.photos}")
            continue
        image = check_image(project, rel, (data.get("imageWidth"), data.get("imageHeight")), where, reasons)
        shapes = data.get("shapes")
        if not isinstance(shapes, list):
            reasons.append(f"{where}: 'shapes' must be a list")
            continue
        for i, shape in enumerate(shapes):
            label = _label(shape, image, f"{where}: shapes[{i}]", reasons, skipped)
            if label is not None:
                labels.append(label)
    if reasons:
        raise LabelFileError(path, reasons)
    return add_labels(project, labels, skipped)


def _label(shape, image, where, reasons, skipped):
    if not isinstance(shape, dict):
        reasons.append(f"{where} is not an object")
        return None
    kind = shape.get("shape_type") or "polygon"  # labelme's default
    if kind != "rectangle":
        skipped.append({"annotation": where, "reason": f"a {kind} is not a box"})
        return None
    category = category_name(shape.get("label"), where, reasons)
    points = shape.get("points")
    corners = [[finite_number(v) for v in p] if isinstance(p, list) and len(p) == 2 else [None]
               for p in points] if isinstance(points, list) else []
    if len(corners) not in (2, 4) or any(None in c for c in corners):
        reasons.append(f"{where}: a rectangle needs 2 (or 4) [x, y] corners, not {points!r}")
        return None
    attributes = shape.get("attributes") if isinstance(shape.get("attributes"), dict) else {}
    ok, score = checked_score(shape.get("score"), where, reasons)
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    box = check_box(Box.from_xyxy(min(xs), min(ys), max(xs), max(ys)), image, where, f"points {points}", reasons)
    if box is None or category is None or not ok:
        return None
    query_id = attributes.get("query_id")
    return Label(image.rel, category, box, score, None if query_id is None else str(query_id))
