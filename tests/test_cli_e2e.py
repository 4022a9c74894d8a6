"""End to end through the CLI, with the real embedded backbone on real dev frames.

Three sequences x four frames are copied into a temporary folder at test time (never into the
repository). Commands run in-process through `cli.main` (one model load each, no interpreter
start); one test runs the CLI as a subprocess and kills it with SIGKILL mid-run.
"""
import contextlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from dasr_annotator.app.main import main

SEQUENCES = ("Box", "Dog", "Skating2-1")
FRAMES, STEP = 4, 3  # every third listed frame of each sequence


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def copy_frames(dev_data: Path, manifest: dict, root: Path, names=SEQUENCES, frames=FRAMES, step=STEP) -> dict:
    """Copy frames of the named instances; returns {instance: [(relpath, box), ...]}."""
    instances = {i["name"]: i for i in manifest["instances"]}
    chosen = {}
    for name in names:
        chosen[name] = []
        for item in instances[name]["images"][: frames * step : step]:
            rel = item["file"].removeprefix("images/")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(dev_data / item["file"], root / rel)
            chosen[name].append((rel, item["box"]))
    return chosen


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def indexed(dev_data, dev_manifest, tmp_path_factory):
    photos = tmp_path_factory.mktemp("e2e") / "photos"
    frames = copy_frames(dev_data, dev_manifest, photos)
    rc, out, err = cli("index", photos, "--json")
    assert rc == 0, err
    return photos, frames, json.loads(out)


def test_index_reports_every_image(indexed):
    photos, frames, report = indexed
    n = sum(len(v) for v in frames.values())
    assert (report["images"], report["indexed"], report["reused"], report["removed"]) == (n, n, 0, 0)
    assert report["regions"] >= n and report["skipped"] == []
    assert (photos / ".dasr" / "manifest.json").exists()


def test_search_ranks_frames_of_the_query_instance_first(indexed, tmp_path):
    photos, frames, _ = indexed
    queries = [{"id": name, "image": shots[0][0], "box": shots[0][1]} for name, shots in frames.items()]
    query_file = tmp_path / "queries.json"
    query_file.write_text(json.dumps(queries))
    rc, out, err = cli("search", photos, "--queries", query_file, "--top", 6, "--json")
    assert rc == 0, err
    results = {q["id"]: q["hits"] for q in json.loads(out)["queries"]}
    assert set(results) == set(frames)
    for name, shots in frames.items():
        hits = results[name]
        images = [h["image"] for h in hits]
        assert len(images) == 6 and len(set(images)) == 6 and shots[0][0] not in images
        same = {rel for rel, _ in shots[1:]}
        assert set(images[: len(same)]) == same, f"{name}: {images}"
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        for h in hits:
            x, y, w, h_ = h["box"]
            assert w > 0 and h_ > 0 and x >= 0 and y >= 0
            assert set(h["ellipse"]) == {"cx", "cy", "a", "b", "angle"}
    rel, box = frames["Box"][0]
    rc, table, _ = cli("search", photos, "--query", rel, "--box", ",".join(map(str, box)), "--top", 3)
    assert rc == 0 and "rank" in table and frames["Box"][1][0].split("/")[0] in table


def test_rerun_reuses_everything(indexed):
    photos, frames, first = indexed
    rc, out, err = cli("index", photos, "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert (report["images"], report["indexed"], report["reused"]) == (first["images"], 0, first["images"])


def test_touched_changed_added_and_removed_files_are_noticed(indexed, dev_data, dev_manifest, tmp_path):
    photos, frames, _ = indexed
    copy = tmp_path / "photos"
    shutil.copytree(photos, copy)  # copy2 keeps mtimes, so the copy's index is current
    box_frames = [rel for rel, _ in frames["Box"]]
    os.utime(copy / box_frames[0])  # touched: same bytes
    (copy / box_frames[1]).unlink()  # removed
    dog = [i for i in dev_manifest["instances"] if i["name"] == "Dog"][0]["images"]
    unused = [i["file"] for i in dog if i["file"].removeprefix("images/") not in {r for r, _ in frames["Dog"]}]
    shutil.copy(dev_data / unused[0], copy / frames["Dog"][0][0])  # changed content, same name
    shutil.copy(dev_data / unused[1], copy / "Dog" / "added.jpg")  # added
    rc, out, err = cli("index", copy, "--json")
    assert rc == 0, err
    report = json.loads(out)
    n = sum(len(v) for v in frames.values())
    assert (report["images"], report["indexed"], report["reused"], report["removed"]) == (n, 2, n - 2, 1)


def test_label_then_export_loads_in_pycocotools(indexed, tmp_path):
    photos, frames, _ = indexed
    rel, box = frames["Dog"][0]
    args = ("label", photos, "--query", rel, "--box", ",".join(map(str, box)), "--category", "dog")
    rc, out, err = cli(*args, "--accept-top", 3, "--json")
    assert rc == 0, err
    added = json.loads(out)["added"]
    assert [a["source"] for a in added] == ["manual", "search", "search", "search"]
    assert added[0]["image"] == rel and added[0]["box"] == [float(v) for v in box]
    assert {a["image"] for a in added[1:]} == {r for r, _ in frames["Dog"][1:]}
    assert len({a["query_id"] for a in added}) == 1
    out_file = tmp_path / "coco.json"
    rc, _, err = cli("export", photos, "--coco", out_file)
    assert rc == 0, err
    coco = COCO(str(out_file))
    [cat] = [c["id"] for c in coco.loadCats(coco.getCatIds()) if c["name"] == "dog"]
    anns = coco.loadAnns(coco.getAnnIds(catIds=[cat]))
    by_image = {coco.imgs[a["image_id"]]["file_name"]: a for a in anns}
    for a in added:
        assert by_image[a["image"]]["bbox"] == pytest.approx(a["box"], abs=0.01)
        assert by_image[a["image"]]["attributes"]["query_id"] == a["query_id"]
        assert coco.imgs[by_image[a["image"]]["image_id"]]["width"] == 352
    rc, out, _ = cli(*args, "--accept-top", 3, "--json")  # the same again: all duplicates
    assert rc == 0 and json.loads(out)["added"] == [] and len(json.loads(out)["duplicates"]) == 4


def test_import_coco_validates_then_adds(indexed, tmp_path):
    photos, frames, _ = indexed
    rel, box = frames["Skating2-1"][0]
    coco = {"images": [{"id": 1, "file_name": rel, "width": 640, "height": 352}],
            "categories": [{"id": 1, "name": "skater"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "iscrowd": 0}]}
    bad = dict(coco, images=[{"id": 1, "file_name": "../../etc/hosts"}])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    rc, _, err = cli("label", photos, "--import-coco", tmp_path / "bad.json")
    assert rc == 2 and "outside the photo folder" in err
    (tmp_path / "good.json").write_text(json.dumps(coco))
    rc, out, err = cli("label", photos, "--import-coco", tmp_path / "good.json", "--json")
    assert rc == 0, err
    assert json.loads(out)["added"] == 1
    rc, out, err = cli("label", photos, "--import-coco", tmp_path / "good.json", "--json")
    assert json.loads(out)["added"] == 0 and len(json.loads(out)["duplicates"]) == 1


def test_other_settings_are_refused_with_a_rebuild_hint(indexed):
    photos, _, _ = indexed
    before = (photos / ".dasr" / "manifest.json").read_text()
    rc, _, err = cli("index", photos, "--max-side", 256)
    assert rc == 2 and "max_side" in err and "--rebuild" in err
    assert (photos / ".dasr" / "manifest.json").read_text() == before


def test_bad_boxes_and_missing_index_are_refused(indexed, tmp_path):
    photos, frames, _ = indexed
    rel = frames["Box"][0][0]
    rc, _, err = cli("search", photos, "--query", rel, "--box", "10,10,0,20")
    assert rc == 2 and "zero area" in err
    rc, _, err = cli("search", photos, "--query", rel, "--box", "900,10,20,20")
    assert rc == 2 and "outside the image" in err
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(photos / rel, fresh / "a.jpg")
    rc, _, err = cli("search", fresh, "--query", "a.jpg", "--box", "10,10,20,20")
    assert rc == 2 and "dasr-annotator index" in err


def test_read_only_folder_keeps_its_state_in_the_cache(indexed, tmp_path):
    photos, frames, _ = indexed
    ro = tmp_path / "ro"
    ro.mkdir()
    for rel, _ in frames["Box"][:2]:
        shutil.copy(photos / rel, ro / Path(rel).name)
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        rc, out, err = cli("index", ro, "--json")
        assert rc == 0, err
        assert json.loads(out)["images"] == 2
        assert "read-only" in err and os.environ["DASR_ANNOTATOR_CACHE"] in err
        assert not (ro / ".dasr").exists()
        rc, out, err = cli("search", ro, "--query", "0001.jpg", "--box", "478,143,80,111", "--json")
        assert rc == 0, err
        assert [h["image"] for h in json.loads(out)["queries"][0]["hits"]] == [Path(frames["Box"][1][0]).name]
    finally:
        ro.chmod(0o755)


def test_a_killed_run_loses_at_most_its_current_batch(dev_data, dev_manifest, tmp_path):
    photos = tmp_path / "photos"
    copy_frames(dev_data, dev_manifest, photos, names=("Box", "Dog"), frames=3)
    first_shard = photos / ".dasr" / "shards" / "000001.json"
    proc = subprocess.Popen([sys.executable, "-m", "dasr_annotator", "index", str(photos), "--batch-size", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        while not first_shard.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    finished = sum(len(json.loads(p.read_text())["files"]) for p in (photos / ".dasr" / "shards").glob("*.json"))
    assert finished >= 2
    rc, out, err = cli("index", photos, "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["reused"] == finished and report["indexed"] + report["reused"] == report["images"] == 6


def test_indexing_stores_relocation_maps_and_hits_are_drawn_on_the_instance(indexed):
    """Maps are made while indexing (search computes none). Re-localisation keeps the hits, their
    order and scores, and its boxes lie on the instance (centre inside the ground-truth box of
    that frame) at least as often as the regions'."""
    from dasr_annotator.app.cli.cmd_search import open_searcher
    from dasr_annotator.engine.project.project import Project
    from dasr_annotator.engine.types import Box

    photos, frames, report = indexed
    maps = sorted((photos / ".dasr").glob("maps-*/*.npz"))
    assert len(maps) == report["images"]
    stamps = [p.stat().st_mtime_ns for p in maps]
    searcher = open_searcher(Project.open(photos), "cpu")
    searcher.maps.compute = lambda path: pytest.fail(f"{path}: map computed although indexing stored it")
    truth = {rel: box for shots in frames.values() for rel, box in shots}

    def on_instance(hit):
        gx, gy, gw, gh = truth[hit.image]
        cx, cy = hit.box.center
        return gx <= cx <= gx + gw and gy <= cy <= gy + gh

    located = {"regions": 0, "windows": 0}
    for name, shots in frames.items():
        rel, box = shots[0]
        descriptor, windows = searcher.query(rel, Box.from_list(box))
        plain = searcher.search(descriptor[None], 3, exclude_image=rel)
        moved = searcher.search(descriptor[None], 3, exclude_image=rel, windows=windows)
        assert [(h.image, h.score) for h in moved] == [(h.image, h.score) for h in plain]
        assert all(h.image.split("/")[0] == rel.split("/")[0] for h in moved)
        located["regions"] += sum(map(on_instance, plain))
        located["windows"] += sum(map(on_instance, moved))
    # (tests/test_relocate.py shows the gain on farther-apart frames; here both find most)
    assert located["windows"] >= located["regions"] and located["windows"] >= 5, located
    assert [p.stat().st_mtime_ns for p in maps] == stamps  # read, not made again


# ---- the JSON contract (outside tools read these keys: keep them exactly) -----------------------
INDEX_LISTS = {"skipped", "renamed", "missing_labelled"}  # renamed, missing_labelled: issue 17
INDEX_KEYS = {"images", "indexed", "reused", "removed", "regions"} | INDEX_LISTS
SEARCH_KEYS, QUERY_KEYS = {"queries"}, {"id", "hits"}
HIT_KEYS, ELLIPSE_KEYS = {"image", "score", "box", "ellipse"}, {"cx", "cy", "a", "b", "angle"}
REFINED_HIT_KEYS = HIT_KEYS | {"region_score", "box_score"}  # a refined hit also says what its score blends
LABEL_KEYS = {"category", "query_id", "added", "duplicates"}
ANNOTATION_KEYS = {"id", "image", "category", "box", "score", "query_id", "source"}
LABEL_DUPLICATE_KEYS = {"image", "box", "existing"}
# "file" and "format" came with the other label formats (issue 18)
IMPORT_KEYS = {"added", "duplicates", "categories_added", "skipped", "file", "format"}
IMPORT_DUPLICATE_KEYS = {"image", "category", "box", "existing"}
# "format" and "not_carried" came with the other label formats (issue 18); the first five are the old contract
EXPORT_KEYS = {"file", "images", "annotations", "categories", "skipped", "format", "not_carried"}
SKIPPED_FILE_KEYS = {"file", "reason"}


def _box_of_numbers(box) -> bool:
    return isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)


@pytest.fixture
def project_copy(indexed, tmp_path):
    """The indexed folder copied with its state and without labels (mtimes kept: nothing to redo)."""
    photos, frames, _ = indexed
    copy = tmp_path / "photos"
    shutil.copytree(photos, copy)
    for path in (copy / ".dasr").glob("annotations.json*"):
        path.unlink()
    return copy, frames


def test_every_json_output_keeps_its_keys(project_copy, tmp_path):
    photos, frames = project_copy
    rc, out, err = cli("index", photos, "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert set(report) == INDEX_KEYS and all(isinstance(report[k], int) for k in INDEX_KEYS - INDEX_LISTS)
    assert all(isinstance(report[k], list) for k in INDEX_LISTS)

    rel, box = frames["Box"][0]
    box_arg = ",".join(map(str, box))
    queries = tmp_path / "queries.json"
    queries.write_text(json.dumps([{"id": "q1", "image": rel, "box": box}]))
    for how, keys in ((("--query", rel, "--box", box_arg), REFINED_HIT_KEYS), (("--queries", queries), REFINED_HIT_KEYS),
                      (("--query", rel, "--box", box_arg, "--no-refine"), HIT_KEYS)):
        rc, out, err = cli("search", photos, *how, "--top", 2, "--json")
        assert rc == 0, err
        found = json.loads(out)
        assert set(found) == SEARCH_KEYS and len(found["queries"]) == 1
        [query] = found["queries"]
        assert set(query) == QUERY_KEYS and len(query["hits"]) == 2
        for hit in query["hits"]:
            assert set(hit) == keys and set(hit["ellipse"]) == ELLIPSE_KEYS
            assert isinstance(hit["image"], str) and isinstance(hit["score"], float) and _box_of_numbers(hit["box"])
            if keys is REFINED_HIT_KEYS:  # the score ranked by is the mean of region and box score
                assert hit["score"] == pytest.approx((hit["region_score"] + hit["box_score"]) / 2)
        if "--queries" in how:
            assert query["id"] == "q1"

    label = ("label", photos, "--query", rel, "--box", box_arg, "--category", "box", "--accept-top", 2, "--json")
    rc, out, err = cli(*label)
    assert rc == 0, err
    labelled = json.loads(out)
    assert set(labelled) == LABEL_KEYS and labelled["category"] == "box" and isinstance(labelled["query_id"], str)
    assert len(labelled["added"]) == 3 and all(set(a) == ANNOTATION_KEYS for a in labelled["added"])
    assert all(_box_of_numbers(a["box"]) for a in labelled["added"]) and labelled["duplicates"] == []
    rc, out, err = cli(*label)
    again = json.loads(out)
    assert rc == 0 and set(again) == LABEL_KEYS and again["added"] == [] and again["query_id"] is None
    assert len(again["duplicates"]) == 3 and all(set(d) == LABEL_DUPLICATE_KEYS for d in again["duplicates"])

    coco = tmp_path / "labels.json"
    rc, out, err = cli("export", photos, "--coco", coco, "--json")
    assert rc == 0, err
    exported = json.loads(out)
    assert set(exported) == EXPORT_KEYS and exported["file"] == str(coco)
    assert (exported["images"], exported["annotations"], exported["categories"], exported["skipped"]) == (3, 3, 1, [])

    rc, out, err = cli("label", photos, "--import-coco", coco, "--json")  # its own labels: all duplicates
    assert rc == 0, err
    imported = json.loads(out)
    assert set(imported) == IMPORT_KEYS and imported["added"] == 0 and imported["categories_added"] == []
    assert len(imported["duplicates"]) == 3 and all(set(d) == IMPORT_DUPLICATE_KEYS for d in imported["duplicates"])


def test_export_skips_missing_photos_and_boxes_outside_with_reasons(project_copy, tmp_path):
    from dasr_annotator.engine.project.project import Project
    from dasr_annotator.engine.types import Box

    photos, frames = project_copy
    (gone, _), (kept, kept_box), (other, _) = frames["Dog"][:3]
    store = Project.open(photos).annotations
    store.add(gone, "dog", Box(10, 10, 40, 40))
    inside = store.add(kept, "dog", Box.from_list(kept_box))
    outside = store.add(other, "dog", Box(700, 400, 30, 30))  # the frames are 640 x 352
    store.save()
    (photos / gone).unlink()
    coco_path = tmp_path / "out.json"
    rc, out, err = cli("export", photos, "--coco", coco_path, "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert all(set(s) == SKIPPED_FILE_KEYS for s in report["skipped"])
    reasons = {s["file"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {gone, other}
    assert "No such file" in reasons[gone] or "missing" in reasons[gone] or "not found" in reasons[gone], reasons
    assert reasons[other] == f"annotation {outside.id} lies outside the image"
    assert f"skipped {gone}: " in err and f"skipped {other}: " in err
    coco = json.loads(coco_path.read_text())
    assert [a["attributes"]["id"] for a in coco["annotations"]] == [inside.id]
    assert sorted(i["file_name"] for i in coco["images"]) == sorted([kept, other])  # the photo is there, its box not
    assert (report["images"], report["annotations"]) == (2, 1)


def test_export_then_import_round_trips_through_the_cli(project_copy, tmp_path):
    photos, frames = project_copy
    for category, name in (("box", "Box"), ("dog", "Dog")):
        rel, box = frames[name][0]
        rc, _, err = cli("label", photos, "--query", rel, "--box", ",".join(map(str, box)), "--category", category,
                         "--accept-top", 2)
        assert rc == 0, err
    first = tmp_path / "first.json"
    rc, _, err = cli("export", photos, "--coco", first)
    assert rc == 0, err

    fresh = tmp_path / "fresh"  # the same photos, no labels
    shutil.copytree(photos, fresh, ignore=shutil.ignore_patterns(".dasr"))
    rc, out, err = cli("label", fresh, "--import-coco", first, "--json")
    assert rc == 0, err
    assert json.loads(out)["added"] == 6 and sorted(json.loads(out)["categories_added"]) == ["box", "dog"]
    second = tmp_path / "second.json"
    rc, _, err = cli("export", fresh, "--coco", second)
    assert rc == 0, err

    def content(path):
        coco = json.loads(path.read_text())
        names = {i["id"]: (i["file_name"], i["width"], i["height"]) for i in coco["images"]}
        categories = {c["id"]: (c["name"], c["color"]) for c in coco["categories"]}
        return sorted((names[a["image_id"]], categories[a["category_id"]], a["bbox"], a["attributes"]["score"])
                      for a in coco["annotations"])

    assert content(second) == content(first) and len(content(first)) == 6
