"""Pascal VOC: one XML `annotation` per image.

Export to a folder mirroring the photo folder: `<folder>/<stem>.xml` with `folder`, `filename`,
`path`, `size` (oriented width and height) and one `object` per box (`name`, `pose`,
`truncated`, `difficult`, `bndbox`). VOC's `bndbox` holds 1-based pixel indices with the far
edge inclusive, so a box [x, x2) is written xmin = x + 1, xmax = x2, each rounded to a whole
pixel (half a pixel at most). VOC has no place for scores or provenance; the export says so.

Import from a folder of such files (or one file): the photo is `filename` next to the XML's
place in the tree, or below the photo folder, or the photo with the XML's own stem
(`ImageFinder`); `bndbox` values may be fractional. Every problem names the file and line.
"""
from __future__ import annotations

import math
from pathlib import Path
from xml.etree import ElementTree

from dasr_annotator.engine.store.formats.common import (
    ExportReport, ImageFinder, ImportReport, Label, LabelFileError, add_labels, check_box, check_image, child_text,
    label_files, gather, not_carried, number_text, per_image_files, read_xml, shown_name, sub, write_file,
    whole_number, xml_bytes,
)
from dasr_annotator.engine.types import Box

TITLE = "Pascal VOC"


def export(project, out, all_images: bool = False) -> ExportReport:
    images, skipped = gather(project, all_images)
    targets = per_image_files(images, Path(out), ".xml", skipped)
    for image, target in targets:
        root = ElementTree.Element("annotation")
        folder = str(Path(image.name).parent)
        sub(root, "folder", shown_name("" if folder == "." else folder))
        sub(root, "filename", shown_name(Path(image.name).name))
        sub(root, "path", shown_name(str(project.path_of(image.name))))
        sub(sub(root, "source"), "database", "dasr-annotator")
        size = sub(root, "size")
        sub(size, "width", image.width)
        sub(size, "height", image.height)
        sub(size, "depth", 3)
        sub(root, "segmented", 0)
        for ann, box in image.labels:
            obj = sub(root, "object")
            sub(obj, "name", ann.category)
            sub(obj, "pose", "Unspecified")
            clipped = ann.box.x < 0 or ann.box.y < 0 or ann.box.x2 > image.width or ann.box.y2 > image.height
            sub(obj, "truncated", int(clipped))
            sub(obj, "difficult", 0)
            bndbox = sub(obj, "bndbox")
            for tag, value in (("xmin", _pixel(box.x) + 1), ("ymin", _pixel(box.y) + 1),
                               ("xmax", _pixel(box.x2)), ("ymax", _pixel(box.y2))):
                sub(bndbox, tag, value)
        write_file(target, xml_bytes(root))
    written = [image for image, _ in targets]
    return ExportReport(len(written), sum(len(i.labels) for i in written), len(project.annotations.categories),
                        skipped, not_carried(TITLE, written))


def _pixel(edge: float) -> int:
    """The nearest whole pixel edge, halves rounded up (so that a box never loses its last pixel)."""
    return math.floor(edge + 0.5)


def import_labels(project, path) -> ImportReport:
    finder = ImageFinder(project)
    labels, skipped, reasons = [], [], []
    for file, where, folder, stem in label_files(path, ".xml"):
        try:
            root, lines = read_xml(file)
        except LabelFileError as exc:
            reasons += [f"{where}: {r}" for r in exc.reasons]
            continue
        at = lambda element: f"{where}:{lines.get(element, '?')}"  # noqa: E731
        if root.tag != "annotation":
            reasons.append(f"{at(root)}: <{root.tag}> is not a VOC <annotation>")
            continue
        image = _image(project, finder, root, file, folder, stem, at, reasons)
        for obj in root.iter("object"):
            label = _label(obj, image, at, reasons, skipped)
            if label is not None:
                labels.append(label)
    if reasons:
        raise LabelFileError(path, reasons)
    return add_labels(project, labels, skipped)


def _image(project, finder, root, file, folder, stem, at, reasons):
    filename = child_text(root, "filename")
    rel = finder.find(filename, file, folder, stem)
    if rel is None and child_text(root, "path"):
        rel = finder.find(child_text(root, "path"), file, folder)
    if rel is None:
        reasons.append(f"{at(root.find('filename') if root.find('filename') is not None else root)}: "
                       f"no photo {filename or stem!r} in {project.photos}")
        return None
    size = root.find("size")
    stated = (None, None)
    if size is not None:
        stated = tuple(whole_number(child_text(size, k)) for k in ("width", "height"))
        if stated in ((0, 0), (None, None)):  # some tools write 0 when they did not look
            stated = (None, None)
    return check_image(project, rel, stated, at(size if size is not None else root), reasons)


def _label(obj, image, at, reasons, skipped):
    name = child_text(obj, "name")
    bndbox = obj.find("bndbox")
    if bndbox is None:
        skipped.append({"annotation": at(obj), "reason": "an object without a <bndbox> is not a box"})
        return None
    texts = [child_text(bndbox, k) for k in ("xmin", "ymin", "xmax", "ymax")]
    values = [number_text(t) if t is not None else None for t in texts]
    if None in values:
        reasons.append(f"{at(bndbox)}: <bndbox> needs xmin, ymin, xmax, ymax numbers, not {texts}")
        return None
    if not name:
        reasons.append(f"{at(obj)}: <object> has no <name>")
        return None
    xmin, ymin, xmax, ymax = values
    box = Box(xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1)
    box = check_box(box, image, at(bndbox), f"bndbox {xmin:g},{ymin:g},{xmax:g},{ymax:g}", reasons)
    if box is None:
        return None
    return Label(image.rel, name.strip(), box)
