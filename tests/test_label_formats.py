"""Label formats (COCO, YOLO, Pascal VOC, CVAT 1.1, labelme): round trips through the CLI, each
export read back by an independent reader written from the format's documentation, validation
of bad files, and a property test that any valid boxes survive every round trip."""
import contextlib
import io
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps
from pycocotools.coco import COCO

from dasr_annotator.app import main as cli
from dasr_annotator.engine.project.project import Project
from dasr_annotator.engine.store.formats import FORMATS
from dasr_annotator.engine.store.formats.common import LabelFileError
from dasr_annotator.engine.types import Box

EXIF_ORIENTATION = 0x0112
CARRY_SCORES = {"coco", "cvat", "labelme"}  # YOLO and VOC have no place for them
FOLDER_FORMATS = {"yolo", "voc", "labelme"}
NON_UTF8 = os.fsdecode(b"caf\xe9 latin1.png")


def run(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def oriented_size(path: Path) -> tuple[int, int]:
    """Independent of engine/store/imageio: Pillow's own EXIF transpose."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).size


def make_photos(root: Path) -> dict[str, tuple[int, int]]:
    """Photos with awkward names: spaces, nested folders, Unicode, non-UTF-8 bytes (where the file
    system takes them), an EXIF-rotated JPEG (stored 80 x 60, shown 60 x 80), one left unlabelled."""
    rng = np.random.default_rng(0)
    names = {"a b.jpg": (80, 60), "sub dir/nested/ünï 写真.png": (50, 40), "empty.png": (30, 20)}
    try:
        (root / NON_UTF8).parent.mkdir(parents=True, exist_ok=True)
        (root / NON_UTF8).touch()
        (root / NON_UTF8).unlink()
        names[NON_UTF8] = (40, 30)
    except (OSError, UnicodeEncodeError):
        pass  # this file system refuses names that are not UTF-8
    for name, (w, h) in names.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    stored = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    stored.save(root / "rotated.jpg", exif=exif)
    names["rotated.jpg"] = (60, 80)
    return names


LABELS = [  # image, category, box, score, query id, source
    ("a b.jpg", "cup", Box(10.25, 5.5, 20, 30), 0.75, "q1", "search"),
    ("a b.jpg", "lid lid", Box(40, 2, 39.5, 50), None, None, "manual"),
    ("sub dir/nested/ünï 写真.png", "cup", Box(1, 2, 10, 10), 0.5, "q1", "search"),
    ("rotated.jpg", "cup", Box(5, 60, 50, 19.5), None, None, "manual"),  # fits only the oriented size
    (NON_UTF8, "lid lid", Box(3, 4, 5, 6), 0.25, "q2", "search"),
]


@pytest.fixture
def labelled(tmp_path):
    photos = tmp_path / "photos"
    sizes = make_photos(photos)
    project = Project.open(photos)
    for image, category, box, score, query_id, source in LABELS:
        if image in sizes:
            project.annotations.add(image, category, box, score=score, query_id=query_id, source=source)
    project.annotations.save()
    return photos, sizes


def fresh_copy(photos: Path, target: Path) -> Path:
    shutil.copytree(photos, target, ignore=shutil.ignore_patterns(".dasr"))
    return target


def out_path(tmp_path: Path, name: str) -> Path:
    return tmp_path / (f"out-{name}" if FORMATS[name].export_to == "folder" else f"out-{name}.{name}")


def edges(box: Box) -> tuple[float, float, float, float]:
    return (box.x, box.y, box.x2, box.y2)


def assert_same_boxes(got: list, want: list, tolerance: float = 0.5) -> None:
    """(image, category, (x1, y1, x2, y2)) lists equal up to `tolerance` pixels per edge."""
    left = list(got)
    assert len(got) == len(want), (got, want)
    for image, category, e in want:
        match = [g for g in left if g[0] == image and g[1] == category
                 and max(abs(a - b) for a, b in zip(g[2], e)) <= tolerance]
        assert match, f"{image} {category} {e} not among {left}"
        left.remove(match[0])


def expected(sizes) -> list:
    return [(image, category, edges(box)) for image, category, box, *_ in LABELS if image in sizes]


# ---- round trips through the command line ------------------------------------------------------
@pytest.mark.parametrize("name", list(FORMATS))
def test_round_trip_through_the_cli(labelled, tmp_path, name):
    photos, sizes = labelled
    out = out_path(tmp_path, name)
    rc, stdout, err = run("export", photos, "--format", name, "--out", out, "--json")
    assert rc == 0, err
    summary = json.loads(stdout)
    assert set(summary) == {"file", "format", "images", "annotations", "categories", "skipped", "not_carried"}
    assert (summary["format"], summary["images"], summary["annotations"], summary["skipped"]) == \
        (name, len({e[0] for e in expected(sizes)}), len(expected(sizes)), [])
    if name in CARRY_SCORES:
        assert summary["not_carried"] is None and "note:" not in err
    else:  # says so in one line, and still writes the boxes
        assert "no place for scores or provenance" in summary["not_carried"]
        assert [line for line in err.splitlines() if line.startswith("note:")] == [f"note: {summary['not_carried']}"]

    copy = fresh_copy(photos, tmp_path / "copy")
    rc, stdout, err = run("label", copy, "--import", out, "--format", name, "--json")
    assert rc == 0, err
    report = json.loads(stdout)
    assert set(report) == {"file", "format", "added", "duplicates", "categories_added", "skipped"}
    assert report["added"] == len(expected(sizes)) and report["duplicates"] == [] and report["skipped"] == []
    imported = Project.open(copy).annotations.list()
    assert_same_boxes([(a.image, a.category, edges(a.box)) for a in imported], expected(sizes))
    assert {a.source for a in imported} == {"import"}
    if name in CARRY_SCORES:
        original = {(a.image, a.category): (a.score, a.query_id) for a in Project.open(photos).annotations.list()}
        assert {(a.image, a.category): (a.score, a.query_id) for a in imported} == original

    # a second import (and one into the labelled original) adds nothing and loses nothing
    for folder in (copy, photos):
        before = Project.open(folder).annotations.list()
        rc, stdout, err = run("label", folder, "--import", out, "--format", name, "--json")
        assert rc == 0, err
        assert json.loads(stdout)["added"] == 0 and len(json.loads(stdout)["duplicates"]) == len(before)
        assert Project.open(folder).annotations.list() == before


def test_old_coco_flags_still_work(labelled, tmp_path):
    photos, sizes = labelled
    rc, stdout, err = run("export", photos, "--coco", tmp_path / "c.json", "--json")
    assert rc == 0, err and json.loads(stdout)["annotations"] == len(expected(sizes))
    copy = fresh_copy(photos, tmp_path / "copy")
    rc, stdout, err = run("label", copy, "--import-coco", tmp_path / "c.json", "--json")
    assert rc == 0 and json.loads(stdout)["added"] == len(expected(sizes))
    rc, _, err = run("export", photos, "--coco", tmp_path / "c.json", "--format", "yolo")
    assert rc == 2 and "give one or the other" in err
    rc, _, err = run("label", copy, "--import", tmp_path / "c.json")
    assert rc == 2 and "--format" in err
    rc, _, err = run("export", photos, "--format", "voc", "--out", tmp_path / "v", "--copy-images")
    assert rc == 2 and "--copy-images is for --format yolo" in err


# ---- independent readers -----------------------------------------------------------------------
def shown(name: str) -> str:
    """How a text format must show a name whose bytes are not UTF-8."""
    return os.fsencode(name).decode("utf-8", "replace")


def read_coco(out: Path, photos: Path) -> list:
    coco = COCO(str(out))
    names = {i["id"]: i["file_name"] for i in coco.loadImgs(coco.getImgIds())}
    for image in coco.loadImgs(coco.getImgIds()):
        assert (image["width"], image["height"]) == oriented_size(photos / image["file_name"])
    cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    return [(names[a["image_id"]], cats[a["category_id"]],
             (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]))
            for a in coco.loadAnns(coco.getAnnIds())]


def read_yolo(out: Path, photos: Path) -> list:
    """Ultralytics' layout: labels/<stem>.txt with `class cx cy w h` normalised; classes.txt; data.yaml."""
    classes = (out / "classes.txt").read_text().splitlines()
    yaml_lines = dict(line.split(": ", 1) for line in (out / "data.yaml").read_text().splitlines()
                      if not line.startswith("#"))
    assert json.loads(yaml_lines["names"]) == classes and int(yaml_lines["nc"]) == len(classes)
    assert Path(json.loads(yaml_lines["train"])) == photos.resolve()  # images not copied
    assert not (out / "images").exists()
    rows = []
    for file in (out / "labels").rglob("*.txt"):
        rel = file.relative_to(out / "labels").with_suffix("")
        [photo] = [p for p in (photos / rel.parent).iterdir() if p.stem == rel.name]
        w, h = oriented_size(photo)
        for line in file.read_text().splitlines():
            cls, cx, cy, bw, bh = line.split()
            cx, cy, bw, bh = float(cx) * w, float(cy) * h, float(bw) * w, float(bh) * h
            rows.append((photo.relative_to(photos).as_posix(), classes[int(cls)],
                         (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)))
    return rows


def read_voc(out: Path, photos: Path) -> list:
    """VOC devkit: bndbox in 1-based pixel indices, xmax inclusive."""
    rows = []
    for file in out.rglob("*.xml"):
        root = ET.parse(file).getroot()
        folder = file.parent.relative_to(out)
        [photo] = [p for p in (photos / folder).iterdir() if p.stem == file.stem]
        assert root.findtext("filename") == shown(photo.name)
        size = root.find("size")
        assert (int(size.findtext("width")), int(size.findtext("height"))) == oriented_size(photo)
        for obj in root.iter("object"):
            b = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (int(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            rows.append((photo.relative_to(photos).as_posix(), obj.findtext("name"), (xmin - 1, ymin - 1, xmax, ymax)))
    return rows


def read_cvat(out: Path, photos: Path) -> list:
    """CVAT for images 1.1: <image name width height> with <box label xtl ytl xbr ybr>."""
    root = ET.parse(out).getroot()
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    declared = {label.findtext("name") for label in root.iter("label")}
    by_shown = {shown(p.relative_to(photos).as_posix()): p for p in photos.rglob("*") if p.is_file()}
    rows = []
    for image in root.iter("image"):
        photo = by_shown[image.get("name")]
        assert (int(image.get("width")), int(image.get("height"))) == oriented_size(photo)
        for box in image.iter("box"):
            assert box.get("label") in declared
            rows.append((photo.relative_to(photos).as_posix(), box.get("label"),
                         tuple(float(box.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))))
    return rows


def read_labelme(out: Path, photos: Path) -> list:
    """labelme: <stem>.json with imagePath relative to it and rectangle shapes of two corners."""
    rows = []
    for file in out.rglob("*.json"):
        data = json.loads(file.read_text())
        photo = (file.parent / data["imagePath"]).resolve()
        assert photo.is_file() and photo.stem == file.stem
        assert (data["imageWidth"], data["imageHeight"]) == oriented_size(photo)
        assert data["imageData"] is None
        for shape in data["shapes"]:
            assert shape["shape_type"] == "rectangle"
            (x1, y1), (x2, y2) = shape["points"]
            rows.append((photo.relative_to(photos.resolve()).as_posix(), shape["label"], (x1, y1, x2, y2)))
    return rows


READERS = {"coco": read_coco, "yolo": read_yolo, "voc": read_voc, "cvat": read_cvat, "labelme": read_labelme}


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_export_reads_with_an_independent_reader(labelled, tmp_path, name):
    photos, sizes = labelled
    out = out_path(tmp_path, name)
    FORMATS[name].export(Project.open(photos), out)
    assert_same_boxes(READERS[name](out, photos), expected(sizes))


@pytest.mark.parametrize("name", list(FORMATS))
def test_all_images_writes_empty_entries_for_unlabelled_photos(labelled, tmp_path, name):
    photos, sizes = labelled
    out = out_path(tmp_path, name)
    report = FORMATS[name].export(Project.open(photos), out, all_images=True)
    assert report.images == len(sizes)
    empty = {"coco": lambda: [i for i in json.loads(out.read_text())["images"] if i["file_name"] == "empty.png"],
             "yolo": lambda: [(out / "labels" / "empty.txt").read_text() == ""],
             "voc": lambda: [ET.parse(out / "empty.xml").getroot().find("object") is None],
             "cvat": lambda: [len(i) == 0 for i in ET.parse(out).getroot().iter("image") if i.get("name") == "empty.png"],
             "labelme": lambda: [json.loads((out / "empty.json").read_text())["shapes"] == []]}[name]()
    assert empty and all(empty)
    assert_same_boxes(READERS[name](out, photos), expected(sizes))


def test_cvat_boxes_carry_score_query_and_source(labelled, tmp_path):
    photos, sizes = labelled
    FORMATS["cvat"].export(Project.open(photos), tmp_path / "c.xml")
    root = ET.parse(tmp_path / "c.xml").getroot()
    got = sorted(((b.get("label"), b.get("source"), tuple(sorted((a.get("name"), a.text) for a in b.iter("attribute"))))
                  for b in root.iter("box")), key=str)
    cvat_source = {"search": "auto", "manual": "manual"}
    want = sorted(((category, cvat_source[source], tuple(sorted(
        [("source", source)] + ([("score", repr(score))] if score is not None else [])
        + ([("query_id", query_id)] if query_id else []))))
        for image, category, _, score, query_id, source in LABELS if image in sizes), key=str)
    assert got == want


def test_yolo_copies_images_only_when_asked(labelled, tmp_path):
    photos, sizes = labelled
    rc, _, err = run("export", photos, "--format", "yolo", "--out", tmp_path / "y", "--copy-images")
    assert rc == 0, err
    assert (tmp_path / "y" / "images" / "a b.jpg").read_bytes() == (photos / "a b.jpg").read_bytes()
    assert 'train: "images"' in (tmp_path / "y" / "data.yaml").read_text()


def test_two_photos_sharing_a_stem_do_not_share_a_label_file(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("x.jpg", "x.png"):
        Image.new("RGB", (20, 20)).save(photos / name)
    project = Project.open(photos)
    project.annotations.add("x.jpg", "cup", Box(1, 1, 5, 5))
    project.annotations.add("x.png", "cup", Box(2, 2, 5, 5))
    report = FORMATS["voc"].export(project, tmp_path / "voc")
    assert report.annotations == 1 and "x.png" in [s["file"] for s in report.skipped]
    assert ET.parse(tmp_path / "voc" / "x.xml").getroot().findtext("filename") == "x.jpg"


# ---- bad files are refused with the file and line, and change nothing ---------------------------
def _rewrite_yolo(out, case):
    target = out / "labels" / "a b.txt"
    lines = target.read_text().splitlines()
    if case == "unknown":
        (out / "labels" / "nobody.txt").write_text("0 0.5 0.5 0.1 0.1\n")
        return "nobody.txt", "no photo named nobody"
    bad = {"outside": "0 0.95 0.5 0.2 0.2", "negative": "0 0.5 0.5 -0.2 0.2", "unparseable": "0 half 0.5 0.1 0.1"}[case]
    target.write_text("\n".join([lines[0], bad]) + "\n")
    return "a b.txt:2", {"outside": "does not fit", "negative": "no area", "unparseable": "must be numbers"}[case]


def _rewrite_xml(path, case, box_tag, coordinates):
    """Spoil one box (or the photo's name, or the syntax); returns (where, reason) the error must say."""
    text = path.read_text()
    prefix = f"{path.name}:" if box_tag == "bndbox" else "line "
    if case == "unparseable":
        path.write_text(text.replace("</annotation>", "", 1).replace("</annotations>", "", 1))
        return prefix, "invalid XML"
    root = ET.fromstring(text)
    box = next(root.iter(box_tag))
    if case == "unknown":
        if root.tag == "annotations":
            next(root.iter("image")).set("name", "nobody.jpg")
        else:
            root.find("filename").text = "nobody.jpg"
        marker = "nobody.jpg"
    else:
        values = {"outside": ("1", "1", "500", "20"), "negative": ("30", "1", "10", "20")}[case]
        for key, value in zip(coordinates, values):
            if box_tag == "box":
                box.set(key, value)
            else:
                box.find(key).text = value
        marker = f"<{box_tag}"
    text = ET.tostring(root, encoding="unicode")  # keeps the lines as they were
    path.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), start=1) if marker in t)
    return f"{prefix}{line}", {"unknown": "no photo 'nobody.jpg'", "outside": "does not fit",
                               "negative": "no area"}[case]


def _rewrite_labelme(out, case):
    target = out / "a b.json"
    data = json.loads(target.read_text())
    if case == "unparseable":
        target.write_text(target.read_text()[:-20])
        return "a b.json", "invalid JSON at line"
    if case == "unknown":
        (out / "nobody.json").write_text(json.dumps(dict(data, imagePath="nobody.jpg")))
        return "nobody.json", "no photo 'nobody.jpg'"
    data["shapes"][1]["points"] = {"outside": [[1, 1], [500, 20]], "negative": [[5, 5], [5, 20]]}[case]
    target.write_text(json.dumps(data))
    return "a b.json: shapes[1]", {"outside": "does not fit", "negative": "no area"}[case]


def _rewrite_coco(out, case):
    data = json.loads(out.read_text())
    if case == "unparseable":
        out.write_text(out.read_text()[:-20])
        return "line", "invalid JSON at line"
    if case == "unknown":
        data["images"][0]["file_name"] = "nobody.jpg"
        out.write_text(json.dumps(data))
        return "images[0]", "not found"
    data["annotations"][0]["bbox"] = {"outside": [1, 1, 500, 20], "negative": [30, 1, -20, 20]}[case]
    out.write_text(json.dumps(data))
    return "annotations[0]", {"outside": "does not fit", "negative": "no area"}[case]


REWRITE = {
    "coco": _rewrite_coco,
    "yolo": _rewrite_yolo,
    "voc": lambda out, case: _rewrite_xml(out / "a b.xml", case, "bndbox", ("xmin", "ymin", "xmax", "ymax")),
    "cvat": lambda out, case: _rewrite_xml(out, case, "box", ("xtl", "ytl", "xbr", "ybr")),
    "labelme": _rewrite_labelme,
}


@pytest.mark.parametrize("case", ["outside", "negative", "unknown", "unparseable"])
@pytest.mark.parametrize("name", list(FORMATS))
def test_bad_files_are_refused_naming_file_and_line(labelled, tmp_path, name, case):
    photos, _ = labelled
    out = out_path(tmp_path, name)
    FORMATS[name].export(Project.open(photos), out)
    place, reason = REWRITE[name](out, case)
    copy = fresh_copy(photos, tmp_path / "copy")
    project = Project.open(copy)
    project.annotations.add("a b.jpg", "mine", Box(1, 1, 5, 5))
    project.annotations.save()
    state = (project.state_dir / "annotations.json").read_bytes()
    rc, _, err = run("label", copy, "--import", out, "--format", name)
    assert rc == 2 and reason in err and place in err, err
    assert "not imported" in err
    assert (project.state_dir / "annotations.json").read_bytes() == state
    with pytest.raises(LabelFileError):
        FORMATS[name].import_labels(Project.open(copy), out)


# ---- property: any valid boxes survive every round trip within half a pixel ---------------------
PROPERTY_SIZES = {"p q.png": (97, 61), "deep/er/r.jpg": (40, 90)}


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("property")
    for folder in ("src", "dst"):
        for name, (w, h) in PROPERTY_SIZES.items():
            (root / folder / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (w, h), (90, 120, 30)).save(root / folder / name)
    return root


@st.composite
def valid_boxes(draw):
    image = draw(st.sampled_from(sorted(PROPERTY_SIZES)))
    width, height = PROPERTY_SIZES[image]
    x = draw(st.floats(0, width - 1))
    y = draw(st.floats(0, height - 1))
    w = draw(st.floats(1, width - x))
    h = draw(st.floats(1, height - y))
    return image, draw(st.sampled_from(["cup", "lid", "a b"])), Box(x, y, w, h), draw(st.none() | st.floats(0, 1))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=st.lists(valid_boxes(), min_size=1, max_size=6))
@example(labels=[("deep/er/r.jpg", "cup", Box(0.0, 0.9, 1.0, 1.0), None)])  # clipped to 0.9999999999999999 px
def test_any_valid_boxes_survive_every_round_trip(two_folders, tmp_path_factory, labels):
    for i, (image, category, box, _) in enumerate(labels):  # distinct labels, not near-duplicates
        for other_image, other_category, other, _ in labels[i + 1:]:
            assume((image, category) != (other_image, other_category) or box.iou(other) < 0.5)
    src, dst = two_folders / "src", two_folders / "dst"
    shutil.rmtree(src / ".dasr", ignore_errors=True)
    project = Project.open(src)
    for image, category, box, score in labels:
        project.annotations.add(image, category, box, score=score, source="search" if score else "manual")
    project.annotations.save()
    want = [(image, category, edges(box)) for image, category, box, _ in labels]
    out_root = tmp_path_factory.mktemp("exports")
    for name, fmt in FORMATS.items():
        shutil.rmtree(dst / ".dasr", ignore_errors=True)
        out = out_path(out_root, name)
        exported = fmt.export(Project.open(src), out)
        assert not exported.skipped, (name, exported.skipped)
        report = fmt.import_labels(Project.open(dst), out)
        assert report.added == len(labels), name
        got = Project.open(dst).annotations.list()
        assert_same_boxes([(a.image, a.category, edges(a.box)) for a in got], want)
        if name in CARRY_SCORES:
            assert sorted((a.score is None, a.score or 0) for a in got) == \
                sorted((s is None, s or 0) for *_, s in labels), name
