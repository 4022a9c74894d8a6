"""EXIF orientation end to end: photos stored sideways with an orientation tag are searched, hit,
re-localised and drawn as a person sees them. The same frames are stored twice, upright and (the
query and one other frame) rotated with EXIF orientation 6 and 8, losslessly (PNG): both folders
must give the same hits, scores and boxes, in the upright photo's pixels."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from dasr_annotator.app.main import main
from dasr_annotator.engine.store.imageio import image_size
from dasr_annotator.engine.types import Box

sys.path.insert(0, str(Path(__file__).parent))
from test_gui_flow import _search_with_a_drawn_box, window_on  # noqa: E402,F401 - the window fixture

SEQUENCES = {"Box": 4, "Dog": 2}
# orientation tag -> how the stored pixels are turned so that a viewer turning them back shows the photo
STORED = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
MAX_SIDE = "384"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 0 and "Traceback" not in err, err
    return json.loads(out) if out.strip() else None


@pytest.fixture(scope="module")
def folders(dev_data, dev_manifest, tmp_path_factory):
    """(upright, rotated, truth, query, turned): the rotated folder stores `query` with orientation
    6 and `turned` with 8; truth holds the ground-truth boxes as a person sees the photos."""
    root = tmp_path_factory.mktemp("exif")
    upright, rotated = root / "upright", root / "rotated"
    instances = {i["name"]: i for i in dev_manifest["instances"]}
    truth = {}
    for name, count in SEQUENCES.items():
        for item in instances[name]["images"][: count * 3: 3]:
            rel = item["file"].removeprefix("images/").rsplit(".", 1)[0] + ".png"
            truth[rel] = Box.from_list(item["box"])
            with Image.open(dev_data / item["file"]) as image:
                pixels = image.convert("RGB")
            for folder in (upright, rotated):
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            pixels.save(upright / rel)
    box_frames = sorted(r for r in truth if r.startswith("Box/"))
    query, turned = box_frames[0], box_frames[2]
    for rel in truth:
        orientation = {query: 6, turned: 8}.get(rel)
        if orientation is None:
            shutil.copy2(upright / rel, rotated / rel)
            continue
        with Image.open(upright / rel) as image:
            exif = Image.Exif()
            exif[0x0112] = orientation
            image.transpose(STORED[orientation]).save(rotated / rel, exif=exif.tobytes())
    for folder in (upright, rotated):
        assert main(["index", str(folder), "--max-side", MAX_SIDE]) == 0
    return upright, rotated, truth, query, turned


def test_rotated_photos_are_searched_and_relocated_as_seen(folders, capsys, tmp_path):
    upright, rotated, truth, query, turned = folders
    with Image.open(upright / turned) as image:
        width, height = image.size
    assert width > height
    with Image.open(rotated / turned) as stored:
        assert stored.size == (height, width)  # stored sideways ...
    assert image_size(rotated / turned) == image_size(rotated / query) == (width, height)  # ... seen upright
    box = ",".join(f"{v:g}" for v in truth[query].as_list())
    results = {}
    for folder in (upright, rotated):
        report = cli(capsys, "search", folder, "--query", query, "--box", box, "--top", 4, "--json")
        results[folder] = report["queries"][0]["hits"]
    same, sideways = results[upright], results[rotated]
    assert turned in [h["image"] for h in sideways]
    assert [h["image"] for h in sideways] == [h["image"] for h in same]
    for a, b in zip(same, sideways):
        assert b["score"] == pytest.approx(a["score"], abs=2e-3)
        assert b["box"] == pytest.approx(a["box"], abs=2.0)  # the re-localised box, in upright pixels
        x, y, w, h = b["box"]
        assert 0 <= x and 0 <= y and x + w <= width + 1e-6 and y + h <= height + 1e-6

    # labels and COCO are in upright pixels too (on a copy: the window test draws on these photos unlabelled)
    labelled = tmp_path / "labelled"
    shutil.copytree(rotated, labelled, symlinks=True)
    cli(capsys, "label", labelled, "--query", query, "--box", box, "--category", "box", "--accept-top", 3, "--json")
    coco = cli(capsys, "export", labelled, "--coco", tmp_path / "coco.json", "--json")
    assert coco["skipped"] == []
    images = {i["file_name"]: (i["width"], i["height"]) for i in json.loads((tmp_path / "coco.json").read_text())["images"]}
    assert images[query] == images[turned] == (width, height)


def test_the_window_draws_a_rotated_hit_where_it_is_seen(qtbot, folders, window_on, capsys):
    _, rotated, truth, query, turned = folders
    photos = rotated
    window = window_on(photos)
    qtbot.waitSignal(window.controller.indexingFinished, timeout=120_000).wait()
    hits = _search_with_a_drawn_box(qtbot, window, truth, query, "box")
    # the box searched with (a label only once confirmed), drawn on the upright view of a sideways photo
    image, searched_box, _ = window.review.query
    assert image == query and searched_box.iou(truth[query]) > 0.9
    box = ",".join(f"{v:g}" for v in truth[query].as_list())
    # the window shows the hits in region order until their boxes are refined: as `--no-refine`
    expected = cli(capsys, "search", photos, "--query", query, "--box", box, "--top", len(hits), "--no-refine", "--json")
    assert [h.image for h in hits] == [h["image"] for h in expected["queries"][0]["hits"]]
    entry = next(e for e in window.document.hits.entries if e.image == turned)
    window.results.select_key(entry.key)
    qtbot.waitUntil(lambda: window.canvas_image == turned and window.canvas.selected_keys() == [f"hit:{entry.key}"],
                    timeout=10_000)
    width, height = window.canvas.image_size
    assert (width, height) == image_size(folders[0] / turned) and width > height
    pixmap = window.canvas._pixmap.pixmap()
    assert pixmap.width() > pixmap.height()  # shown upright
    drawn = window.canvas.overlay_box(f"hit:{entry.key}")
    assert drawn == entry.box and 0 <= drawn.x and drawn.x2 <= width and 0 <= drawn.y and drawn.y2 <= height
