"""YOLO (Darknet / Ultralytics) detection labels.

Export to a folder: `labels/<folder>/<stem>.txt` per image, one line `class cx cy w h` per box
(class index into `classes.txt`, centre and size divided by the oriented image size), with
`classes.txt` (one name a line) and `data.yaml` naming the image folder and the classes. Images
are not copied unless `copy_images` (then `images/<name>`, and `data.yaml` names that folder, the
layout Ultralytics expects: it finds labels by swapping `images` for `labels` in a photo's path).
YOLO has no place for scores or provenance; `ExportReport.not_carried` says so.

Import from such a folder (or one of its files): the classes from `classes.txt` (or Darknet's
`obj.names`), the label files from `labels/` when there is one, else every `.txt` below the
folder. A label file names its photo by folder and stem only (`ImageFinder`). A sixth number on
a line is read as a confidence (Ultralytics `save_conf`); polygon lines (YOLO segmentation) are
skipped with a reason.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from dasr_annotator.engine.store.formats.common import (
    ExportReport, ImageFinder, ImportReport, Label, LabelFileError, add_labels, category_ids, check_box, check_image,
    checked_score, label_files, gather, not_carried, number_text, per_image_files, write_file,
)
from dasr_annotator.engine.types import Box

TITLE = "YOLO"
CLASS_FILES = ("classes.txt", "obj.names")
LIST_FILES = ("train.txt", "val.txt", "valid.txt", "test.txt")  # image lists beside the labels, not labels


def export(project, out, all_images: bool = False, copy_images: bool = False) -> ExportReport:
    root = Path(out)
    images, skipped = gather(project, all_images)
    targets = per_image_files(images, root / "labels", ".txt", skipped)
    classes = category_ids(project, start=0)
    written = []
    for image, target in targets:
        lines = []
        for ann, box in image.labels:
            cx, cy = box.center
            lines.append(f"{classes[ann.category]} {cx / image.width:.6f} {cy / image.height:.6f} "
                         f"{box.w / image.width:.6f} {box.h / image.height:.6f}\n")
        write_file(target, "".join(lines).encode("utf-8", "surrogateescape"))
        if copy_images:
            copied = root.joinpath("images", image.name)
            copied.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project.path_of(image.name), copied)
        written.append(image)
    names = [c.name for c in project.annotations.categories]
    write_file(root / "classes.txt", "".join(f"{n}\n" for n in names).encode("utf-8", "surrogateescape"))
    image_folder = "images" if copy_images else str(Path(project.photos).resolve())
    quoted = lambda text: json.dumps(text)  # noqa: E731 - a JSON string is a YAML double-quoted scalar
    data_yaml = (f"# dasr-annotator labels of {quoted(str(project.photos))}: labels/ holds one .txt per image\n"
                 f"path: {quoted(str(root.resolve()))}\n"
                 f"train: {quoted(image_folder)}\n"
                 f"val: {quoted(image_folder)}\n"
                 f"nc: {len(names)}\n"
                 f"names: [{', '.join(quoted(n) for n in names)}]\n")
    write_file(root / "data.yaml", data_yaml.encode("utf-8"))
    return ExportReport(len(written), sum(len(i.labels) for i, _ in targets), len(names), skipped,
                        not_carried(TITLE, written))


def import_labels(project, path) -> ImportReport:
    root = Path(path)
    if root.is_file():
        root = root.parent
    if not root.is_dir():
        raise LabelFileError(path, ["not found (give the folder holding classes.txt and the label files)"])
    class_file = next((root / n for n in CLASS_FILES if (root / n).is_file()), None)
    if class_file is None:
        raise LabelFileError(root, [f"no {' or '.join(CLASS_FILES)} naming the classes, one a line"])
    try:
        classes = [line.strip() for line in class_file.read_bytes().decode("utf-8", "surrogateescape").splitlines()]
    except OSError as exc:
        raise LabelFileError(class_file, [f"cannot read it: {exc.strerror or exc}"]) from None
    while classes and not classes[-1]:
        classes.pop()
    base = root / "labels" if (root / "labels").is_dir() else root
    finder = ImageFinder(project)
    labels, skipped, reasons = [], [], []
    for file, where, folder, stem in label_files(base, ".txt"):
        if file.parent == root and file.name in CLASS_FILES + LIST_FILES:
            continue
        rel = finder.find(None, file, folder, stem)
        if rel is None:
            reasons.append(f"{where}: no photo named {stem}.* in {project.photos}")
            continue
        image = check_image(project, rel, (None, None), where, reasons)
        if image is None:
            continue
        try:
            text = file.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reasons.append(f"{where}: cannot read it ({getattr(exc, 'strerror', None) or exc})")
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            label = _label(line, image, classes, f"{where}:{number}", reasons, skipped)
            if label is not None:
                labels.append(label)
    if reasons:
        raise LabelFileError(path, reasons)
    return add_labels(project, labels, skipped)


def _label(line: str, image, classes: list[str], where: str, reasons: list[str], skipped: list[dict]):
    fields = line.split()
    if not fields:
        return None
    if len(fields) >= 7 and len(fields) % 2 == 1:
        skipped.append({"annotation": where, "reason": "a polygon (YOLO segmentation) is not a box"})
        return None
    if len(fields) not in (5, 6):
        reasons.append(f"{where}: expected 'class cx cy w h' (and optionally a confidence), not {line.strip()!r}")
        return None
    if not fields[0].isdigit() or int(fields[0]) >= len(classes) or not classes[int(fields[0])]:
        reasons.append(f"{where}: class {fields[0]!r} is not a line of the class list ({len(classes)} classes)")
        return None
    values = [number_text(v) for v in fields[1:5]]
    if None in values:
        reasons.append(f"{where}: 'cx cy w h' must be numbers, not {' '.join(fields[1:5])!r}")
        return None
    ok, score = checked_score(fields[5] if len(fields) == 6 else None, where, reasons)
    cx, cy, w, h = values
    box = Box((cx - w / 2) * image.width, (cy - h / 2) * image.height, w * image.width, h * image.height)
    box = check_box(box, image, where, f"'{' '.join(fields[1:5])}'", reasons)
    if box is None or not ok:
        return None
    return Label(image.rel, classes[int(fields[0])], box, score)
