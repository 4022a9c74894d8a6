"""Degenerate boxes (issue 17): no hit, label or export ever carries a box under one pixel a side,
even in a folder holding a 1 x 1 pixel photo and a 1 x 40 sliver (which used to crash indexing)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from dasr_annotator.app.main import main
from dasr_annotator.engine.search.searcher import BoxError, checked_box
from dasr_annotator.engine.store.annotations import AnnotationStore
from dasr_annotator.engine.types import MIN_BOX_SIDE, Box, boxes_at_least

SIZES = {"tiny.png": (1, 1), "thin.png": (1, 40), "flat.png": (40, 1)}


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory, dev_data, dev_manifest, one_torch_thread):
    photos = tmp_path_factory.mktemp("odd") / "photos"
    photos.mkdir()
    for k, instance in enumerate(dev_manifest["instances"][:3]):
        shutil.copy(dev_data / instance["images"][0]["file"], photos / f"{k}.jpg")
    for name, size in SIZES.items():
        Image.new("RGB", size, (20, 180, 40)).save(photos / name)
    assert main(["index", str(photos), "--max-side", "96"]) == 0
    return photos


def _sides_ok(box, width, height) -> bool:
    x, y, w, h = box
    return w >= MIN_BOX_SIDE and h >= MIN_BOX_SIDE and x >= 0 and y >= 0 and x + w <= width + 1e-6 \
        and y + h <= height + 1e-6


def test_hits_labels_and_export_keep_at_least_a_pixel(odd_folder, capsys, tmp_path):
    from dasr_annotator.engine.store.imageio import image_size

    capsys.readouterr()
    queries = [{"id": n, "image": n, "box": [0, 0, *SIZES[n]]} for n in SIZES] + \
              [{"id": "photo", "image": "0.jpg", "box": [10, 10, 50, 50]}]
    (tmp_path / "q.json").write_text(json.dumps(queries))
    assert main(["search", str(odd_folder), "--queries", str(tmp_path / "q.json"), "--top", "10", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    hits = [h for q in found["queries"] for h in q["hits"]]
    assert {h["image"] for h in hits} >= set(SIZES), "the tiny photos must be among the hits"
    for hit in hits:
        assert _sides_ok(hit["box"], *image_size(odd_folder / hit["image"])), hit
    for name in SIZES:
        rc = main(["label", str(odd_folder), "--query", name, "--box", ",".join(map(str, [0, 0, *SIZES[name]])),
                   "--category", "blob", "--accept-top", "10"])
        assert rc == 0, capsys.readouterr().err
    labels = AnnotationStore.load(odd_folder / ".dasr" / "annotations.json").list()
    assert {a.image for a in labels} >= set(SIZES)
    for ann in labels:
        assert _sides_ok(ann.box.as_list(), *image_size(odd_folder / ann.image)), ann
    out = tmp_path / "coco.json"
    assert main(["export", str(odd_folder), "--coco", str(out)]) == 0
    coco = json.loads(out.read_text())
    assert len(coco["annotations"]) == len(labels)
    assert all(min(a["bbox"][2:]) >= MIN_BOX_SIDE and a["area"] >= 1 for a in coco["annotations"])


def test_box_at_least_grows_about_the_centre_and_stays_inside():
    assert Box(0, 0, 0.2, 0.2).at_least(1, 1, 1) == Box(0, 0, 1, 1)
    assert Box(5, 5, 0.5, 3).at_least(1, 10, 10) == Box(4.75, 5, 1, 3)
    assert Box(9.8, 0, 0.2, 4).at_least(1, 10, 10) == Box(9, 0, 1, 4)
    grown = boxes_at_least(np.array([[0, 0, 0.2, 0.2], [5, 5, 4, 4]]), np.array([[1, 1], [10, 10]]))
    assert grown.tolist() == [[0, 0, 1, 1], [5, 5, 4, 4]]


def test_a_sub_pixel_box_is_refused_as_query_and_as_label(tmp_path):
    with pytest.raises(BoxError, match="less than 1 pixel"):
        checked_box(Box(3, 3, 0.4, 5), 10, 10)
    store = AnnotationStore(tmp_path / "a.json")
    with pytest.raises(ValueError, match="at least 1 pixel"):
        store.add("a.jpg", "mug", Box(0, 0, 0.5, 4))
    ann = store.add("a.jpg", "mug", Box(0, 0, 2, 4))
    with pytest.raises(ValueError, match="at least 1 pixel"):
        store.update(ann.id, box=Box(0, 0, 2, 0.9))
