"""CVAT for images 1.1: one XML file for the whole folder.

Export: `<annotations>` with `<version>1.1</version>`, `<meta>` listing the labels (name, colour
and the box attributes score, query_id and source, all text), and one `<image id name width
height>` per photo holding its `<box label xtl ytl xbr ybr occluded z_order source>` elements in
oriented pixels. Each box carries the label's score, query id and source as
`<attribute name="...">` children; CVAT's own `source` attribute says "manual", "auto" (a search
hit) or "file" (an import). Names that are not valid UTF-8 are written with U+FFFD (XML cannot
hold the bytes) and found again by that shown name on import.

Import: every `<image>`'s `<box>`es (score and query_id attributes restored); other shapes,
rotated boxes and video tracks are skipped with a reason; every problem names the line.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from xml.etree import ElementTree

from dasr_annotator.engine.store.formats.common import (
    ExportReport, ImageFinder, ImportReport, Label, LabelFileError, add_labels, category_name, check_box,
    check_image, checked_score, gather, number_text, read_xml, whole_number, shown_name, sub, write_file, xml_bytes,
)
from dasr_annotator.engine.types import Box

TITLE = "CVAT for images 1.1"
ATTRIBUTES = ("score", "query_id", "source")
CVAT_SOURCE = {"manual": "manual", "search": "auto", "import": "file"}
OTHER_SHAPES = ("polygon", "polyline", "points", "cuboid", "ellipse", "mask", "skeleton", "tag")


def export(project, out, all_images: bool = False) -> ExportReport:
    images, skipped = gather(project, all_images)
    categories = project.annotations.categories
    root = ElementTree.Element("annotations")
    sub(root, "version", "1.1")
    meta = sub(root, "meta")
    task = sub(meta, "task")
    sub(task, "name", shown_name(str(project.photos)))
    sub(task, "size", len(images))
    sub(task, "mode", "annotation")
    labels = sub(task, "labels")
    for category in categories:
        label = sub(labels, "label")
        sub(label, "name", category.name)
        sub(label, "color", category.color)
        sub(label, "type", "rectangle")
        attributes = sub(label, "attributes")
        for name in ATTRIBUTES:
            attribute = sub(attributes, "attribute")
            sub(attribute, "name", name)
            sub(attribute, "mutable", "False")
            sub(attribute, "input_type", "text")
            sub(attribute, "default_value", "")
            sub(attribute, "values", "")
    sub(meta, "dumped", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    count = 0
    for index, image in enumerate(images):
        element = sub(root, "image", id=index, name=shown_name(image.name), width=image.width, height=image.height)
        for ann, box in image.labels:
            shape = sub(element, "box", label=ann.category, source=CVAT_SOURCE[ann.source], occluded=0,
                        xtl=f"{box.x:.2f}", ytl=f"{box.y:.2f}", xbr=f"{box.x2:.2f}", ybr=f"{box.y2:.2f}", z_order=0)
            for name, value in (("score", ann.score), ("query_id", ann.query_id), ("source", ann.source)):
                if value is not None:
                    sub(shape, "attribute", repr(value) if name == "score" else value, name=name)
            count += 1
    write_file(Path(out), xml_bytes(root))
    return ExportReport(len(images), count, len(categories), skipped)


def import_labels(project, path) -> ImportReport:
    file = Path(path)
    if file.is_dir() and (file / "annotations.xml").is_file():  # CVAT's own export folder
        file = file / "annotations.xml"
    root, lines = read_xml(file)
    at = lambda element: f"line {lines.get(element, '?')}"  # noqa: E731
    if root.tag != "annotations":
        raise LabelFileError(path, [f"{at(root)}: <{root.tag}> is not CVAT's <annotations>"])
    finder = ImageFinder(project)
    labels, skipped, reasons = [], [], []
    for track in root.iter("track"):
        skipped.append({"annotation": at(track), "reason": "tracks (CVAT for video) are not imported"})
    for element in root.iter("image"):
        name = element.get("name")
        rel = finder.find(name) if name else None
        if rel is None:
            reasons.append(f"{at(element)}: no photo {name!r} in {project.photos}"
                           if name else f"{at(element)}: <image> has no name")
            continue
        stated = tuple(whole_number(element.get(k)) for k in ("width", "height"))
        image = check_image(project, rel, stated, at(element), reasons)
        for child in element:
            if child.tag == "box":
                label = _label(child, image, at(child), reasons, skipped)
                if label is not None:
                    labels.append(label)
            elif child.tag in OTHER_SHAPES:
                skipped.append({"annotation": at(child), "reason": f"a {child.tag} is not a box"})
    if reasons:
        raise LabelFileError(path, reasons)
    return add_labels(project, labels, skipped)


def _label(element, image, where, reasons, skipped):
    if number_text(element.get("rotation", "0")) not in (0.0, None):
        skipped.append({"annotation": where, "reason": "a rotated box does not fit an upright one"})
        return None
    category = category_name(element.get("label"), where, reasons)
    texts = [element.get(k) for k in ("xtl", "ytl", "xbr", "ybr")]
    values = [number_text(t) if t is not None else None for t in texts]
    if None in values:
        reasons.append(f"{where}: <box> needs xtl, ytl, xbr, ybr numbers, not {texts}")
        return None
    attributes = {a.get("name"): (a.text or "").strip() for a in element.findall("attribute")}
    ok, score = checked_score(attributes.get("score"), where, reasons)
    xtl, ytl, xbr, ybr = values
    box = check_box(Box.from_xyxy(xtl, ytl, xbr, ybr), image, where, f"box {xtl:g},{ytl:g},{xbr:g},{ybr:g}", reasons)
    if box is None or category is None or not ok:
        return None
    return Label(image.rel, category, box, score, attributes.get("query_id") or None)
