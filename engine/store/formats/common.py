"""What every label format shares: the images and boxes an export writes, the checks an import
makes, and the all-or-nothing commit of imported labels into the annotation store.

Export side: `gather` lists the images to write (oriented size, boxes clipped to the image,
unreadable images and boxes outside them skipped with a reason; a video frame `clip.mp4#frame=N`
with its video, frame number and time, and with `frames_dir` also written there as a JPEG
`clip.mp4/frame_000123.jpg` so tools that read image files find it); `per_image_files` gives each
image its own label file in a tree mirroring the photo folder (and skips the second of two
photos that would share one, e.g. `a.jpg` and `a.png`); `not_carried` is the one line a format
says about what it cannot hold.

Import side: a reader turns its file into `Label`s, checking each image with `check_image`
(inside the photo folder, readable, the stated size the oriented one) and each box with
`check_box` (positive size, inside the image up to `SIZE_TOLERANCE`), and collects every
problem as a reason naming the file and the line (or JSON position). Any reason refuses the
whole import (`LabelFileError`); otherwise `add_labels` adds what is not a duplicate of an
existing label (same image and category, IoU >= `DUPLICATE_IOU`) and saves, undoing everything
in memory if the save fails.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from xml.etree import ElementTree
from xml.parsers import expat

from PIL import Image

from dasr_annotator.engine.store.imageio import ImageError, image_size, load_image
from dasr_annotator.engine.store.storage import atomic_write_bytes
from dasr_annotator.engine.store.video import frame_time, order_key, split_frame_name
from dasr_annotator.engine.types import MIN_BOX_SIDE, Annotation, Box

DUPLICATE_IOU = 0.9
# pixels a side may read back under MIN_BOX_SIDE after a format rounded it (YOLO keeps 6 decimals
# of the image size): such a box is grown back to MIN_BOX_SIDE, not refused
ROUNDING_TOLERANCE = 0.01
SMALLEST_SIDE = MIN_BOX_SIDE - ROUNDING_TOLERANCE  # the smallest side taken (and grown back to MIN_BOX_SIDE)
SIZE_TOLERANCE = 1.0  # pixels a box may overhang the image (rounding in other tools); clipped
MAX_REASONS = 20


class LabelFileError(ValueError):
    """A label file (or folder) that cannot be imported; `reasons` lists what is wrong."""

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
    not_carried: str | None = None  # what the format could not hold, in one line
    frames: int = 0  # video frames written as JPEG files


@dataclass
class ImportReport:
    added: int
    duplicates: list[dict] = field(default_factory=list)  # [{"image", "category", "box", "existing"}]
    categories_added: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # [{"annotation", "reason"}] e.g. crowd regions

    def as_json(self) -> dict:
        return {"added": self.added, "duplicates": self.duplicates, "categories_added": self.categories_added,
                "skipped": self.skipped}


def finite_number(value) -> float | None:
    """`value` as a finite float, or None (booleans, text, NaN, infinities, ints past float range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def number_text(text) -> float | None:
    """A finite number written as text (XML, YOLO lines), or None."""
    try:
        return finite_number(float(str(text).strip()))
    except ValueError:
        return None


def whole_number(text):
    """A size written as text: the int it says, or the text itself (so a mismatch shows it)."""
    number = number_text(text) if text is not None else None
    return int(number) if number is not None and number == int(number) else text


def shown_name(name: str) -> str:
    """`name` as text any file format can hold: a non-UTF-8 byte (a surrogate escape) becomes
    U+FFFD. Importers match such names back against the photos (`ImageFinder`)."""
    return os.fsencode(name).decode("utf-8", "replace") if os.name != "nt" else name


# ---- export ------------------------------------------------------------------------------------
@dataclass
class ExportImage:
    name: str  # relative to the photo folder
    width: int
    height: int
    labels: list[tuple[Annotation, Box]]  # each annotation with its box clipped to the image
    video: str | None = None  # a video frame's video, relative to the photo folder
    frame_index: int | None = None
    timestamp: float | None = None  # seconds into the video
    frame_file: str | None = None  # the frame's JPEG, relative to `frames_dir`, when written there


def gather(project, all_images: bool,
           frames_dir: str | Path | None = None) -> tuple[list[ExportImage], list[dict]]:
    """The images to export, in name order, and what was skipped ([{"file", "reason"}]). Only
    images with labels unless `all_images` (an unlabelled image would read as "no objects
    here", which nobody has checked). With `frames_dir`, each video frame is written there as a
    JPEG (`frame_file`)."""
    by_image: dict[str, list[Annotation]] = {}
    for ann in project.annotations.list():
        by_image.setdefault(ann.image, []).append(ann)
    names = sorted(set(project.scan()) | set(by_image) if all_images else by_image, key=order_key)
    images, skipped = [], []
    for name in names:
        try:
            width, height = image_size(project.path_of(name))
            image = ExportImage(name, width, height, [])
            _add_frame(project, image, frames_dir)
        except ImageError as exc:
            skipped.append({"file": name, "reason": exc.reason})
            continue
        except OSError as exc:
            skipped.append({"file": name, "reason": f"frame not written: {exc.strerror or exc}"})
            continue
        for ann in by_image.get(name, []):
            box = ann.box.clipped(width, height)
            # a 1-px box at a fractional place clips to 0.9999999999999999 px: that is not a sliver
            if box.w < SMALLEST_SIDE or box.h < SMALLEST_SIDE:
                sliver = f" (less than {MIN_BOX_SIDE:g} pixel a side inside it)" if box.area > 0 else ""
                skipped.append({"file": name, "reason": f"annotation {ann.id} lies outside the image{sliver}"})
                continue
            image.labels.append((ann, box.at_least(MIN_BOX_SIDE, width, height)))
        images.append(image)
    return images, skipped


def _add_frame(project, image: ExportImage, frames_dir: str | Path | None) -> None:
    """Fill in the video fields of a frame (nothing for a photo, or for a real file whose name
    looks like a frame); with `frames_dir`, write the frame there as a JPEG."""
    ref = split_frame_name(image.name)
    path = project.path_of(image.name)
    if ref is None or path.exists():
        return
    image.video, image.frame_index = ref.video, ref.frame
    image.timestamp = round(frame_time(project.path_of(ref.video), ref.frame), 6)
    if frames_dir is None:
        return
    jpeg = PurePosixPath(ref.video) / f"frame_{ref.frame:06d}.jpg"
    buffer = io.BytesIO()
    Image.fromarray(load_image(path).rgb).save(buffer, format="JPEG", quality=95)
    write_file(Path(frames_dir).joinpath(*jpeg.parts), buffer.getvalue())
    image.frame_file = jpeg.as_posix()


def per_image_files(images: list[ExportImage], root: Path, suffix: str,
                    skipped: list[dict]) -> list[tuple[ExportImage, Path]]:
    """Each image with its label file `root/<folder>/<stem><suffix>`; the second image claiming
    a file is skipped (with a reason) rather than overwriting the first one's labels."""
    claimed: dict[Path, str] = {}
    out = []
    for image in images:
        rel = PurePosixPath(image.name)
        target = root.joinpath(*rel.parent.parts, rel.stem + suffix)
        if target in claimed:
            skipped.append({"file": image.name, "reason": f"its label file {target.name} is already "
                                                          f"{claimed[target]}'s (same name, other extension)"})
            continue
        claimed[target] = image.name
        out.append((image, target))
    return out


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data, backup=False)


def not_carried(title: str, images: list[ExportImage]) -> str | None:
    """The one line a format without scores and provenance says, or None when nothing is lost."""
    labels = [ann for image in images for ann, _ in image.labels]
    if not labels:
        return None
    scored = sum(ann.score is not None for ann in labels)
    return (f"{title} has no place for scores or provenance: {scored} scores and the source and query of "
            f"{len(labels)} labels are not written (their boxes and categories are)")


def category_ids(project, start: int) -> dict[str, int]:
    return {c.name: i for i, c in enumerate(project.annotations.categories, start=start)}


def xml_bytes(root: ElementTree.Element) -> bytes:
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def sub(parent: ElementTree.Element, tag: str, text=None, **attributes) -> ElementTree.Element:
    element = ElementTree.SubElement(parent, tag, {k: str(v) for k, v in attributes.items()})
    if text is not None:
        element.text = str(text)
    return element


# ---- import ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckedImage:
    rel: str
    width: int
    height: int


@dataclass(frozen=True)
class Label:
    image: str
    category: str
    box: Box
    score: float | None = None
    query_id: str | None = None


def check_image(project, name, stated: tuple, where: str, reasons: list[str]) -> CheckedImage | None:
    """The photo `name` (relative to the folder, or absolute inside it) with its oriented size;
    None with a reason when it lies outside, cannot be read or `stated` (width, height) differs."""
    rel = project.relative(name)
    if rel is None:
        reasons.append(f"{where}: {name!r} lies outside the photo folder {project.photos}")
        return None
    try:
        width, height = image_size(project.path_of(rel))
    except ImageError as exc:
        reasons.append(f"{where}: {name!r}: {exc.reason}")
        return None
    except ValueError:  # a NUL byte, or a name the file system cannot encode
        reasons.append(f"{where}: {name!r} is not a usable file name")
        return None
    if stated != (None, None) and tuple(stated) != (width, height):
        reasons.append(f"{where}: {name!r} is {width} x {height} here (EXIF orientation applied) but "
                       f"{stated[0]} x {stated[1]} in the file; boxes would land in the wrong place")
        return None
    return CheckedImage(rel, width, height)


def check_box(box: Box, image: CheckedImage | None, where: str, written, reasons: list[str]) -> Box | None:
    """`box` clipped to `image`, or None with a reason: under MIN_BOX_SIDE a side (or a negative
    size), less than that inside the image, or outside the image by more than SIZE_TOLERANCE.
    `written` is how the file gave the box."""
    if not box.w >= SMALLEST_SIDE or not box.h >= SMALLEST_SIDE:
        reasons.append(f"{where}: {written} has no area of at least {MIN_BOX_SIDE:g} pixel a side")
        return None
    if image is None:
        return None
    w, h, tol = image.width, image.height, SIZE_TOLERANCE
    inside = box.clipped(w, h)
    if box.x < -tol or box.y < -tol or box.x2 > w + tol or box.y2 > h + tol \
            or min(inside.w, inside.h) < SMALLEST_SIDE:
        reasons.append(f"{where}: {written} does not fit in {image.rel} ({w} x {h})")
        return None
    return inside.at_least(MIN_BOX_SIDE, w, h)


def checked_score(value, where: str, reasons: list[str]) -> tuple[bool, float | None]:
    """(ok, score) of an optional score given as a number or as text."""
    if value is None or value == "":
        return True, None
    score = finite_number(value) if not isinstance(value, str) else number_text(value)
    if score is None:
        reasons.append(f"{where}: score {value!r} is not a number")
        return False, None
    return True, score


def add_labels(project, labels: list[Label], skipped: list[dict]) -> ImportReport:
    """Add `labels` that are not duplicates (source "import") and save; all or nothing."""
    store = project.annotations
    known = {c.name for c in store.categories}
    report = ImportReport(0, skipped=skipped)
    added = []
    try:
        for label in labels:
            existing = store.find_duplicate(label.image, label.category, label.box, DUPLICATE_IOU)
            if existing is not None:
                report.duplicates.append({"image": label.image, "category": label.category,
                                          "box": label.box.as_list(), "existing": existing.id})
                continue
            added.append(store.add(label.image, label.category, label.box, score=label.score,
                                   query_id=label.query_id, source="import"))
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


def category_name(value, where: str, reasons: list[str]) -> str | None:
    if not isinstance(value, str) or not value.strip():
        reasons.append(f"{where}: no category name (label) given")
        return None
    return value.strip()


class ImageFinder:
    """Which photo a label file means. Formats with one file per image name the photo loosely
    (labelme: relative to the JSON file; VOC: a bare file name; YOLO: only by the label file's
    own name), so candidates are tried in order: the stated name next to the label file, then
    relative to the photo folder, then a photo whose name the file shows (non-UTF-8 bytes as
    U+FFFD), then the one photo with the label file's folder and stem, then the one photo
    anywhere with that stem (these two only when the stated name, if any, has that stem too)."""

    def __init__(self, project):
        self.project = project
        self.photos = set(project.scan())
        self._shown: dict[str, list[str]] = {}
        self._stem: dict[tuple[str, str], list[str]] = {}
        self._any_stem: dict[str, list[str]] = {}
        for rel in sorted(self.photos):
            path = PurePosixPath(rel)
            self._shown.setdefault(shown_name(rel), []).append(rel)
            self._stem.setdefault((path.parent.as_posix(), path.stem), []).append(rel)
            self._any_stem.setdefault(path.stem, []).append(rel)

    def find(self, stated: str | None, label_file: Path | None = None, folder: str = ".",
             stem: str | None = None) -> str | None:
        """The photo (relative name) or None. `label_file`: the file naming it (for names
        relative to it); `folder`, `stem`: the label file's place in the tree it came in."""
        candidates = []
        if stated:
            stated = stated.replace("\\", "/") if "/" not in stated else stated
            if label_file is not None:
                candidates.append(os.path.join(os.path.dirname(os.path.abspath(label_file)), stated))
            candidates += [os.path.join(folder, stated), stated]
        for candidate in candidates:
            try:
                rel = self.project.relative(candidate)
            except ValueError:
                rel = None
            if rel in self.photos:
                return rel
            for name in (candidate, rel):
                matches = self._shown.get(name, []) if name else []
                if len(matches) == 1:
                    return matches[0]
        # the label file's own name only when it names the same photo (or the file names none)
        if stem is not None and (not stated or shown_name(PurePosixPath(stated).stem) == shown_name(stem)):
            for matches in (self._stem.get((folder, stem), []), self._any_stem.get(stem, [])):
                if len(matches) == 1:
                    return matches[0]
        return None


def read_xml(path: Path) -> tuple[ElementTree.Element, dict]:
    """The XML tree of `path` and {element: line}; raises LabelFileError for a file that cannot
    be read or parsed (with the line and column). Document types are refused: a label file
    needs none, and entity tricks (external files, expansion bombs) have no way in."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise LabelFileError(path, [f"cannot read it: {exc.strerror or exc}"]) from None
    builder = ElementTree.TreeBuilder()
    parser = expat.ParserCreate()
    lines: dict = {}

    def start(tag, attributes):
        lines[builder.start(tag, attributes)] = parser.CurrentLineNumber

    def no_doctype(*_):
        raise ValueError("document type declarations are not accepted")

    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = no_doctype
    try:
        parser.Parse(raw, True)
        root = builder.close()
    except expat.ExpatError as exc:
        raise LabelFileError(path, [f"line {exc.lineno}, column {exc.offset + 1}: invalid XML "
                                    f"({expat.ErrorString(exc.code)})"]) from None
    except (ValueError, AssertionError) as exc:
        raise LabelFileError(path, [f"line {parser.CurrentLineNumber}: {exc or 'invalid XML'}"]) from None
    return root, lines


def child_text(element: ElementTree.Element, path: str) -> str | None:
    found = element.find(path)
    return None if found is None or found.text is None else found.text.strip()


def label_files(path, suffix: str):
    """(file, where, folder, stem) for each label file: `path` itself, or the files ending in
    `suffix` below the folder `path` in name order (`located` says what the parts are)."""
    base = Path(path)
    if not base.exists():
        raise LabelFileError(path, ["not found"])
    files = [base] if base.is_file() else sorted(p for p in base.rglob(f"*{suffix}") if p.is_file())
    for file in files:
        yield (file, *located(file, base))


def located(path: Path, base: Path) -> tuple[str, str, str]:
    """(where, folder, stem) of a label file: how messages name it, and its place below `base`."""
    try:
        rel = path.relative_to(base) if base.is_dir() else Path(path.name)
    except ValueError:
        rel = Path(path.name)
    folder = PurePosixPath(*rel.parent.parts).as_posix() if rel.parent.parts else "."
    return PurePosixPath(*rel.parts).as_posix(), folder, rel.stem
