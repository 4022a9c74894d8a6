"""Faults a real collection meets (issue 9): killed runs, damaged state, awkward files, read-only
folders, hostile COCO files. The CLI runs in-process (`cli.main`) where that suffices: an
exception escaping `main` is exactly the bare traceback a user would see, and fails the test.
Only the kill test needs a real process.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from dasr_annotator.app.main import main
from dasr_annotator.engine.project.project import Project
from dasr_annotator.engine.store.coco import CocoError, import_coco
from dasr_annotator.engine.store.imageio import image_size
from dasr_annotator.engine.types import Box

sys.path.insert(0, str(Path(__file__).parent))
import awkward_files  # noqa: E402 - test helper next to this file

REPO = Path(__file__).resolve().parents[1]
SMALL_SIDE = "96"  # the network sees tiny images: these tests are about files, not accuracy


def _distinct_dev_images(manifest: dict, count: int) -> list[str]:
    """`count` different image files, spread over the videos."""
    files: list[str] = []
    rounds = max(len(i["images"]) for i in manifest["instances"])
    for k in range(rounds):
        for instance in manifest["instances"]:
            images = instance["images"]
            name = images[(k * 7) % len(images)]["file"]
            if name not in files:
                files.append(name)
            if len(files) == count:
                return files
    return files


def _copy_images(dev_data: Path, names: list[str], folder: Path) -> None:
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        shutil.copy(dev_data / name, folder / f"{i:02d}.jpg")


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- killed mid-run ------------------------------------------------------------------------
def test_a_killed_index_run_resumes_where_it_stopped(dev_data, dev_manifest, tmp_path):
    photos = tmp_path / "photos"
    _copy_images(dev_data, _distinct_dev_images(dev_manifest, 12), photos)
    command = [sys.executable, "-m", "dasr_annotator.app.main", "index", str(photos), "--batch-size", "1",
               "--max-side", "256"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shards = photos / ".dasr" / "shards"
    deadline = time.monotonic() + 240
    while not list(shards.glob("*.json")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    stderr = first.stderr.read().decode(errors="replace")
    first.stderr.close()
    assert first.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {stderr[-2000:]}"

    second = subprocess.run(command + ["--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads(second.stdout)
    assert report["images"] == 12 and report["skipped"] == []
    assert report["reused"] >= 1, "work saved before the kill must be reused"
    assert report["indexed"] >= 1, "the kill must have come part-way"
    assert report["reused"] + report["indexed"] == 12


# ---- damaged or foreign state ---------------------------------------------------------------
@pytest.fixture(scope="module")
def small_indexed(dev_data, dev_manifest, tmp_path_factory):
    """A 3-image folder, indexed, with one label; copied by each test that damages it."""
    photos = tmp_path_factory.mktemp("small") / "photos"
    _copy_images(dev_data, _distinct_dev_images(dev_manifest, 3), photos)
    assert main(["index", str(photos), "--max-side", SMALL_SIDE]) == 0
    project = Project.open(photos)
    project.annotations.add("00.jpg", "thing", Box(2, 2, 30, 30))
    project.annotations.save()
    return photos


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncate_all(folder: Path, pattern: str) -> None:
    matches = sorted(folder.glob(pattern))
    assert matches, f"nothing matches {pattern}: the state layout changed, update this test"
    for path in matches:
        _truncate(path)


def _set_format(state: Path, name: str, value) -> None:
    for path in (state / name, state / (name + ".bak")):
        if path.exists():
            data = json.loads(path.read_text())
            data["format"] = value
            path.write_text(json.dumps(data))


def _foreign_files(state: Path) -> None:
    (state / "notes.txt").write_text("a file some other tool left here")
    (state / "random.bin").write_bytes(os.urandom(256))
    (state / "shards" / "README").write_text("not a shard")
    (state / "shards" / "000099.json").write_text('{"format": 1, "files": [')  # a shard killed mid-write


def _folder_named_like_a_shard(state: Path) -> None:
    (state / "shards" / "000100.npz").mkdir()


def _lock_is_a_folder(state: Path) -> None:
    lock = state / "lock"
    lock.unlink(missing_ok=True)
    lock.mkdir()


DAMAGE = {
    "manifest-damaged-backup-good": lambda s: _truncate(s / "manifest.json"),
    "manifest-and-backup-damaged": lambda s: [_truncate(s / "manifest.json"), _truncate(s / "manifest.json.bak")],
    "manifest-from-a-future-version": lambda s: _set_format(s, "manifest.json", 99),
    "catalog-and-backup-damaged": lambda s: [_truncate(s / "catalog.json")] + (
        [_truncate(s / "catalog.json.bak")] if (s / "catalog.json.bak").exists() else []),
    "index-file-truncated": lambda s: _truncate_all(s, "index-*.faiss"),
    "index-metadata-truncated": lambda s: _truncate_all(s, "index-*.npy"),  # the region table
    "region-shards-truncated": lambda s: _truncate_all(s, "shards/*.npz"),
    "foreign-files": _foreign_files,
    "folder-named-like-a-shard": _folder_named_like_a_shard,
    "lock-is-a-folder": _lock_is_a_folder,
}

# What `index` must do with each: repair it reusing the regions of `reused` photos (a good backup,
# the shards or the catalog are used, nothing is extracted again needlessly), and say so where a
# note is given; or refuse with a message naming the damaged file and --rebuild.
REUSED_ALL, REUSED_NONE = 3, 0
EXPECTED = {
    "manifest-damaged-backup-good": ("repaired", REUSED_ALL, ""),
    "manifest-and-backup-damaged": ("refused", "manifest.json", "backup manifest.json.bak is unusable too"),
    "manifest-from-a-future-version": ("refused", "manifest.json", "format 99"),
    "catalog-and-backup-damaged": ("repaired", REUSED_ALL, "recovered from the region shards"),
    "index-file-truncated": ("repaired", REUSED_ALL, ""),
    "index-metadata-truncated": ("repaired", REUSED_ALL, ""),
    "region-shards-truncated": ("repaired", REUSED_NONE, "extracted again"),
    "foreign-files": ("repaired", REUSED_ALL, ""),
    "folder-named-like-a-shard": ("repaired", REUSED_ALL, ""),
    "lock-is-a-folder": ("repaired", REUSED_ALL, ""),
}


def test_every_damage_case_has_an_expected_outcome():
    assert set(EXPECTED) == set(DAMAGE)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_state_is_explained_labels_survive_and_rebuild_repairs(small_indexed, tmp_path, capsys, damage):
    photos = tmp_path / "photos"
    shutil.copytree(small_indexed, photos, symlinks=True)
    state = photos / ".dasr"
    labels = (state / "annotations.json").read_bytes()
    DAMAGE[damage](state)
    search = ["search", photos, "--query", "00.jpg", "--box", "2,2,40,40", "--json"]

    rc, out, err = run_cli(capsys, "index", photos, "--json")
    outcome, *details = EXPECTED[damage]
    if outcome == "repaired":
        reused, note = details
        assert rc == 0, err
        report = json.loads(out)
        assert (report["images"], report["reused"], report["indexed"]) == (3, reused, 3 - reused), report
        assert note in err
        rc, out, err = run_cli(capsys, *search)
        assert rc == 0 and json.loads(out)["queries"][0]["hits"], f"index said all is well, search failed: {err}"
    else:
        damaged_file, why = details
        assert rc == 2, (out, err)
        assert err.startswith("dasr-annotator index:") and "--rebuild" in err, err
        assert damaged_file in err and why in err, err
        rc, out, err = run_cli(capsys, *search)
        assert rc != 0 and err.strip(), "search on damaged state must say why it cannot run"
    assert (state / "annotations.json").read_bytes() == labels

    rc, out, err = run_cli(capsys, "index", photos, "--json", "--rebuild", "--max-side", SMALL_SIDE)
    assert rc == 0, err
    assert json.loads(out)["images"] == 3
    rc, out, err = run_cli(capsys, *search)
    assert rc == 0 and json.loads(out)["queries"][0]["hits"], err
    assert (state / "annotations.json").read_bytes() == labels


# ---- awkward photo folders -------------------------------------------------------------------
def test_awkward_folder_indexes_the_good_files_and_lists_every_bad_one(tmp_path, capsys):
    photos = tmp_path / "awkward"
    cases = awkward_files.make_awkward_folder(photos)
    rc, out, err = run_cli(capsys, "index", photos, "--json", "--max-side", "64")
    assert rc == 0, err
    report = json.loads(out)
    skipped = {item["file"]: item["reason"] for item in report["skipped"]}
    bad = {name for name, e in cases.items() if e.kind == "bad"}
    assert set(skipped) == bad, f"unexpected: {set(skipped) - bad}, missing: {bad - set(skipped)}"
    for name in bad:
        wanted = cases[name].reason
        assert wanted in skipped[name] or (name == "dangling-link.jpg" and "No such file" in skipped[name]), (
            f"{name}: {skipped[name]!r}")
        assert f"skipped {name}: " in err
    good = [name for name, e in cases.items() if e.loads]
    assert report["images"] == len(good) and report["indexed"] == len(good)
    again = json.loads(run_cli(capsys, "index", photos, "--json")[1])
    assert again["reused"] == len(good) and again["indexed"] == 0


def test_read_only_photo_folder_keeps_state_in_the_cache_and_says_so(dev_data, dev_manifest, tmp_path, capsys):
    from dasr_annotator.engine.store.storage import user_cache_dir

    photos = tmp_path / "readonly"
    _copy_images(dev_data, _distinct_dev_images(dev_manifest, 2), photos)
    with awkward_files.read_only_folder(photos):
        rc, out, err = run_cli(capsys, "index", photos, "--json", "--max-side", SMALL_SIDE)
        assert rc == 0, err
        assert json.loads(out)["images"] == 2
        assert "read-only" in err and str(user_cache_dir()) in err
        assert not (photos / ".dasr").exists()
        rc, out, err = run_cli(capsys, "index", photos, "--json")
        assert rc == 0 and json.loads(out)["reused"] == 2, "the cached state is found again"


# ---- COCO import fuzzing ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco_project(tmp_path_factory):
    """A photo folder with two images, one outside it, and two existing labels (saved)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("coco")
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    Image.new("RGB", (64, 48), (10, 20, 30)).save(photos / "a.png")
    Image.new("RGB", (32, 40), (40, 50, 60)).save(photos / "sub" / "b.jpg")
    Image.new("RGB", (8, 8)).save(root / "outside.png")
    (photos / "notes.txt").write_text("not an image")
    project = Project.open(photos)
    project.annotations.add("a.png", "cup", Box(1, 2, 10, 12), score=0.5)
    project.annotations.add("sub/b.jpg", "mug", Box(3, 4, 20, 20))
    project.annotations.save()
    state = project.state_dir / "annotations.json"
    return photos, state, state.read_bytes()


IMAGE_NAMES = ["a.png", "sub/b.jpg", "./a.png", "sub/../a.png", "missing.png", "../outside.png", "notes.txt",
               "sub", "", " ", "/etc/passwd", "a.png\x00", "\ud800.png", "sub\\b.jpg"]
numbers = st.one_of(st.integers(-10, 100), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([-0.0, 1e308, True, 2**53 + 1, 10**400]))
junk = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2), st.just({}))
ids = st.one_of(st.integers(0, 4), st.sampled_from(["1", "x"]), junk)
image_entries = st.fixed_dictionaries(
    {"id": ids, "file_name": st.one_of(st.sampled_from(IMAGE_NAMES), st.text(max_size=8), junk)},
    optional={"width": st.one_of(st.sampled_from([64, 32]), numbers, junk),
              "height": st.one_of(st.sampled_from([48, 40]), numbers, junk)})
category_entries = st.fixed_dictionaries(
    {"id": ids}, optional={"name": st.one_of(st.sampled_from(["cup", "mug", "new"]), st.text(max_size=6), junk)})
annotation_entries = st.fixed_dictionaries(
    {"image_id": ids, "category_id": ids,
     "bbox": st.one_of(st.lists(numbers, min_size=4, max_size=4),
                       st.lists(st.floats(-5, 70, allow_nan=False), min_size=4, max_size=4), st.lists(numbers), junk)},
    optional={"id": ids, "iscrowd": st.one_of(st.sampled_from([0, 1]), junk), "score": st.one_of(numbers, junk),
              "attributes": st.one_of(st.fixed_dictionaries({}, optional={"score": numbers, "query_id": junk}), junk)})
# Mostly valid documents with a few bad parts, so imports succeed often enough to check them.
def mostly(good, bad, odds: int = 4):
    """`good` `odds` times out of odds + 1 (st.one_of would merge repeated strategies)."""
    return st.integers(0, odds).flatmap(lambda k: bad if k == 0 else good)


plausible_annotations = st.fixed_dictionaries(
    {"image_id": st.sampled_from([1, 2]), "category_id": st.sampled_from([7, 8]),
     "bbox": st.tuples(st.floats(-1.5, 24), st.floats(-1.5, 30), st.floats(-0.5, 10), st.floats(-0.5, 10)).map(list)},
    optional={"score": st.floats(0, 1), "iscrowd": st.sampled_from([0, 1])})
good_images = st.just([{"id": 1, "file_name": "a.png", "width": 64, "height": 48}, {"id": 2, "file_name": "sub/b.jpg"}])
good_categories = st.just([{"id": 7, "name": "cup"}, {"id": 8, "name": "plate"}])
plausible_documents = st.fixed_dictionaries({
    "images": mostly(good_images, st.lists(image_entries, max_size=3)),
    "categories": mostly(good_categories, st.lists(category_entries, max_size=3)),
    "annotations": st.lists(mostly(plausible_annotations, annotation_entries, odds=6), max_size=5),
})
coco_documents = mostly(plausible_documents, st.one_of(
    st.fixed_dictionaries({}, optional={
        "images": st.one_of(st.lists(image_entries, max_size=4), junk),
        "categories": st.one_of(st.lists(category_entries, max_size=3), junk),
        "annotations": st.one_of(st.lists(annotation_entries, max_size=5), junk)}),
    junk,
))
VALID = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
                    {"id": 2, "file_name": "sub/b.jpg"}],
         "categories": [{"id": 7, "name": "cup"}, {"id": 8, "name": "plate"}],
         "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 12]},  # a duplicate
                         {"id": 2, "image_id": 2, "category_id": 8, "bbox": [0, 0, 32, 40], "score": 0.9},
                         {"id": 3, "image_id": 1, "category_id": 8, "bbox": [5, 5, 5, 5], "iscrowd": 1}]}


def _fresh_project(photos: Path, state: Path, baseline: bytes) -> Project:
    state.write_bytes(baseline)
    return Project.open(photos)


def _import(photos, state, baseline, tmp_path, payload: bytes):
    project = _fresh_project(photos, state, baseline)
    source = tmp_path / "in.json"
    source.write_bytes(payload)
    before = {a.id: a for a in project.annotations.list()}
    try:
        report = import_coco(project, source)
    except CocoError as error:
        assert error.reasons and all(isinstance(r, str) and r for r in error.reasons)
        assert state.read_bytes() == baseline, "a refused import must not touch the labels file"
        after = {a.id: a for a in project.annotations.list()}
        assert after == before, "a refused import must not leave changes in memory either"
        return None, before, project
    return report, before, project


def _check_partial_import(report, before, project, document, photos, state):
    after = {a.id: a for a in project.annotations.list()}
    for ann_id, ann in before.items():
        assert after.get(ann_id) == ann, "existing labels are never changed"
    added = [a for ann_id, a in after.items() if ann_id not in before]
    assert len(added) == report.added
    assert report.added + len(report.duplicates) + len(report.skipped) == len(document["annotations"])
    for ann in added:
        assert ann.image in ("a.png", "sub/b.jpg") and ann.source == "import"
        width, height = image_size(photos / ann.image)
        assert ann.box.w > 0 and ann.box.h > 0
        assert 0 <= ann.box.x and 0 <= ann.box.y and ann.box.x2 <= width and ann.box.y2 <= height
        assert ann.score is None or math.isfinite(ann.score)
    reloaded = {a.id: a for a in Project.open(photos).annotations.list()}
    assert reloaded == after, "what was imported is saved"


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(document=coco_documents)
@example(document=VALID)
@example(document={"images": [{"id": 1, "file_name": "../outside.png"}], "categories": [], "annotations": []})
@example(document={"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "x"}],
                   "annotations": [{"image_id": 1, "category_id": 1, "bbox": [60, 40, 30, 30]}]})
def test_coco_import_fuzz_refuses_or_imports_cleanly(coco_project, tmp_path, document):
    photos, state, baseline = coco_project
    payload = json.dumps(document).encode("utf-8", "surrogatepass")
    report, before, project = _import(photos, state, baseline, tmp_path, payload)
    event("refused" if report is None else "imported" if report.added else "accepted, nothing new")
    if report is not None:
        _check_partial_import(report, before, project, document, photos, state)


def test_coco_import_of_a_valid_file_reports_duplicates_and_crowds(coco_project, tmp_path):
    photos, state, baseline = coco_project
    report, before, project = _import(photos, state, baseline, tmp_path, json.dumps(VALID).encode())
    assert report is not None and report.added == 1
    assert len(report.duplicates) == 1 and len(report.skipped) == 1 and report.categories_added == ["plate"]
    _check_partial_import(report, before, project, VALID, photos, state)


@pytest.mark.parametrize("payload", [b"", b"{", b'{"images": [', b"\xff\xfe{}", b"[]", b"null", b'"text"',
                                     b'{"images": {}, "categories": [], "annotations": []}'])
def test_coco_import_of_malformed_json_is_refused_with_a_reason(coco_project, tmp_path, payload):
    photos, state, baseline = coco_project
    report, _, _ = _import(photos, state, baseline, tmp_path, payload)
    assert report is None


@pytest.mark.parametrize("bbox", [
    [64.5, 0, 0.4, 10],  # inside the 1 px tolerance, but clips to zero width
    [1, 1, 10**400, 5],  # too large for a float
])
def test_coco_import_edge_boxes_are_refused_not_crashed_on(coco_project, tmp_path, bbox):
    photos, state, baseline = coco_project
    document = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "x"}],
                "annotations": [{"image_id": 1, "category_id": 1, "bbox": [2, 2, 5, 5]},
                                {"image_id": 1, "category_id": 1, "bbox": bbox}]}
    report, before, project = _import(photos, state, baseline, tmp_path, json.dumps(document).encode())
    if report is not None:
        _check_partial_import(report, before, project, document, photos, state)
