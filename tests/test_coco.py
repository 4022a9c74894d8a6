"""The annotation store and COCO export/import (validation, duplicates, EXIF-oriented sizes)."""
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from dasr_annotator.engine.project.project import Project
from dasr_annotator.engine.store.annotations import AnnotationStore
from dasr_annotator.engine.store.coco import CocoError, export_coco, import_coco
from dasr_annotator.engine.store.storage import ProjectFileError
from dasr_annotator.engine.types import Box

EXIF_ORIENTATION = 0x0112


@pytest.fixture
def project(tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(photos / "a.jpg")
    rotated = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))  # stored 80 x 60
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # shown rotated: 60 x 80
    rotated.save(photos / "sub" / "rotated.jpg", exif=exif)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(photos / "unlabelled.png")
    return Project.open(photos)


def test_store_add_update_remove_categories_and_reload(tmp_path):
    store = AnnotationStore(tmp_path / "annotations.json")
    a = store.add("x.jpg", "cup", Box(1, 2, 3, 4), score=0.5, source="search")
    b = store.add("y.jpg", "mug", Box(5, 6, 7, 8))
    assert [c.name for c in store.categories] == ["cup", "mug"]
    assert store.category("cup").color != store.category("mug").color
    store.update(a.id, box=Box(2, 2, 3, 3))
    assert store.get(a.id).box == Box(2, 2, 3, 3) and store.get(a.id).id == a.id
    store.rename_category("mug", "beaker")
    assert store.get(b.id).category == "beaker"
    with pytest.raises(ValueError, match="has 1 annotations"):
        store.remove_category("beaker")
    store.set_category_color("cup", "#123ABC")
    query = store.add_query("cup", [("x.jpg", Box(1, 2, 3, 4))], negatives=[("y.jpg", Box(0, 0, 2, 2))])
    store.save()
    store.remove(b.id)
    store.save()
    assert (tmp_path / "annotations.json.bak").exists()
    again = AnnotationStore.load(tmp_path / "annotations.json")
    assert [x.id for x in again.list()] == [a.id]
    assert again.get(a.id) == store.get(a.id)
    assert again.category("cup").color == "#123abc"
    assert again.query(query.id).negatives == (("y.jpg", Box(0, 0, 2, 2)),)
    restored = again.add(b.image, b.category, b.box, ann_id=b.id)  # undo of a removal keeps the id
    assert restored.id == b.id
    with pytest.raises(ValueError, match="exists already"):
        again.add("z.jpg", "cup", Box(0, 0, 1, 1), ann_id=a.id)
    with pytest.raises(ValueError, match="no area"):
        again.add("z.jpg", "cup", Box(0, 0, 0, 1))


def test_damaged_store_is_refused(tmp_path):
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"format": 1, "annotations": [{"id": "1"}]}))
    with pytest.raises(ProjectFileError, match="not a valid annotation file"):
        AnnotationStore.load(path)


def test_export_loads_in_pycocotools_with_oriented_sizes(project, tmp_path):
    store = project.annotations
    a = store.add("a.jpg", "cup", Box(10, 5, 20, 30), score=0.75, query_id="q1", source="search")
    store.add("sub/rotated.jpg", "cup", Box(1, 2, 50, 70))
    store.add("sub/rotated.jpg", "lid", Box(40, 60, 30, 30))  # overhangs: exported clipped
    store.save()
    out = tmp_path / "out.json"
    report = export_coco(project, out)
    assert (report.images, report.annotations, report.categories) == (2, 3, 2)
    coco = COCO(str(out))
    images = {im["file_name"]: im for im in coco.loadImgs(coco.getImgIds())}
    assert set(images) == {"a.jpg", "sub/rotated.jpg"}
    assert (images["a.jpg"]["width"], images["a.jpg"]["height"]) == (80, 60)
    assert (images["sub/rotated.jpg"]["width"], images["sub/rotated.jpg"]["height"]) == (60, 80)
    cats = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[images["a.jpg"]["id"]]))
    assert anns[0]["bbox"] == [10, 5, 20, 30] and anns[0]["area"] == 600 and anns[0]["iscrowd"] == 0
    assert anns[0]["category_id"] == cats["cup"]
    assert anns[0]["attributes"] == {"score": 0.75, "query_id": "q1", "source": "search", "id": a.id}
    lid = coco.loadAnns(coco.getAnnIds(catIds=[cats["lid"]]))[0]
    assert lid["bbox"] == [40, 60, 20, 20]
    everything = export_coco(project, out, all_images=True)
    assert everything.images == 3


def write(tmp_path, coco):
    path = tmp_path / "in.json"
    path.write_text(json.dumps(coco))
    return path


def good_coco():
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 80, "height": 60},
                   {"id": 2, "file_name": "sub/rotated.jpg", "width": 60, "height": 80}],
        "categories": [{"id": 7, "name": "cup"}, {"id": 8, "name": "lid"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 10, 10], "iscrowd": 0,
             "attributes": {"score": 0.9}},
            {"id": 2, "image_id": 2, "category_id": 8, "bbox": [5, 5, 20, 20]},
            {"id": 3, "image_id": 2, "category_id": 8, "bbox": [5, 5, 20, 20], "iscrowd": 1},
        ],
    }


def test_import_adds_and_reports_duplicates(project, tmp_path):
    project.annotations.add("a.jpg", "cup", Box(1, 1, 10, 10.2), source="manual")
    report = import_coco(project, write(tmp_path, good_coco()))
    assert report.added == 1 and report.categories_added == ["lid"]
    assert [d["image"] for d in report.duplicates] == ["a.jpg"]
    assert [s["annotation"] for s in report.skipped] == [3]
    reloaded = AnnotationStore.load(project.state_dir / "annotations.json")
    imported = reloaded.list(category="lid")
    assert len(imported) == 1 and imported[0].source == "import" and imported[0].box == Box(5, 5, 20, 20)
    assert len(reloaded.list(category="cup")) == 1  # the existing label was not replaced
    assert import_coco(project, write(tmp_path, good_coco())).added == 0


@pytest.mark.parametrize("change, reason", [
    (lambda c: c["images"][0].update(file_name="../outside.jpg"), "outside the photo folder"),
    (lambda c: c["images"][0].update(file_name="/etc/passwd"), "outside the photo folder"),
    (lambda c: c["images"][0].update(file_name="missing.jpg"), "not found"),
    (lambda c: c["images"][1].update(width=80, height=60), "EXIF orientation"),
    (lambda c: c["images"].append({"id": 1, "file_name": "unlabelled.png"}), "used twice"),
    (lambda c: c["annotations"][0].update(bbox=[1, 1, -5, 10]), "no area"),
    (lambda c: c["annotations"][0].update(bbox=[1, 1, "10", 10]), "must be"),
    (lambda c: c["annotations"][0].update(bbox=[70, 1, 30, 10]), "does not fit"),
    (lambda c: c["annotations"][0].update(category_id=99), "category_id 99"),
    (lambda c: c["annotations"][0].update(image_id=42), "image_id 42"),
    (lambda c: c["categories"][0].update(name=""), "needs a 'name'"),
    (lambda c: c.update(annotations={}), "must be a list"),
])
def test_bad_files_are_refused_with_the_reason_and_change_nothing(project, tmp_path, change, reason):
    coco = good_coco()
    change(coco)
    with pytest.raises(CocoError, match=reason):
        import_coco(project, write(tmp_path, coco))
    assert len(project.annotations) == 0
    assert not (project.state_dir / "annotations.json").exists()


def test_not_json_is_refused(project, tmp_path):
    path = tmp_path / "in.json"
    path.write_text("{ nope")
    with pytest.raises(CocoError, match="invalid JSON"):
        import_coco(project, path)
