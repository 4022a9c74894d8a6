"""Indexing on a Ray cluster (`index --ray`, engine/project/cluster.py) against local indexing.

One local Ray instance with 2 CPUs serves the module. A Ray-indexed copy of a few dev photos must
equal a locally indexed copy (regions to 1e-5, the same top-20 hits), open in `search` and in the
window unchanged; a worker that dies mid-batch is restarted and its batch retried, a stopped driver
is resumed by the next run, and no photo is ever stored twice.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest

from dasr_annotator.engine.project.cluster import PhotoExtractor, RayMissing, import_ray, index_on_ray, ray_session
from dasr_annotator.engine.project.project import Project
from dasr_annotator.engine.search.map_cache import MapCache
from dasr_annotator.engine.store.collection import RegionStore
from dasr_annotator.engine.types import Cancelled
from tests.test_cli_e2e import cli, copy_frames

NAMES, FRAMES = ("Box", "Dog"), 4  # 8 photos: two actors, several tasks each


def _have_ray() -> bool:
    try:
        import_ray()
    except RayMissing:
        return False
    return True


needs_ray = pytest.mark.skipif(not _have_ray(), reason="ray is not installed (the `cluster` extra: "
                                                       "pip install -e '.[cluster]')")


@pytest.fixture(scope="module")
def ray_cluster():
    with ray_session(num_cpus=2) as ray:
        yield ray


@pytest.fixture(scope="module")
def photos_pair(dev_data, dev_manifest, tmp_path_factory, ray_cluster):
    """The same photos indexed locally and on Ray. The Ray run is stopped after 4 photos (as a
    killed driver: shards on disk, no catalog), and the next run finishes the job while a worker
    dies in the middle of its first batch. Returns (local folder, Ray folder, frames, the photos
    of the first run, the photos of the dead worker's batch, the second run's report)."""
    from ray import cloudpickle

    root = tmp_path_factory.mktemp("cluster")
    local, on_ray = root / "local", root / "ray"
    frames = copy_frames(dev_data, dev_manifest, local, names=NAMES, frames=FRAMES)
    shutil.copytree(local, on_ray)
    rc, _, err = cli("index", local, "--device", "cpu", "--json")
    assert rc == 0, err

    seen = []
    with pytest.raises(Cancelled):
        index_on_ray(Project.open(on_ray), {}, actors=2, photos_per_task=2, batch_files=2,
                     progress=lambda done, total: seen.append(done), cancel=lambda: seen[-1] >= 4)
    first_run = _shard_files(on_ray)

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    DiesOnItsFirstBatch.marker = str(root / "died")
    report = index_on_ray(Project.open(on_ray), {}, actors=2, photos_per_task=2, actor=DiesOnItsFirstBatch)
    lost = (root / "died").read_text().split(",") if (root / "died").exists() else []
    return local, on_ray, frames, first_run, lost, report


def _stored(photos):
    store = RegionStore(Project.open(photos).state_dir)
    files = sorted(store.entries)
    return store, files, store.read(files)


def _shard_files(photos) -> list[str]:
    """Every photo named by a region shard, as often as it is named."""
    return [f["file"] for p in sorted((photos / ".dasr" / "shards").glob("*.json"))
            for f in json.loads(p.read_text())["files"]]


def _assert_same_regions(local, on_ray):
    store_l, files_l, a = _stored(local)
    store_r, files_r, b = _stored(on_ray)
    assert files_l == files_r
    for f in files_l:
        el, er = store_l.entries[f], store_r.entries[f]
        assert (el.sha256, el.width, el.height, el.count) == (er.sha256, er.width, er.height, er.count), f
    assert len(a.scores) > 10 * len(files_l) / 2
    np.testing.assert_array_equal(a.image, b.image)
    for name in ("descriptors", "boxes", "ellipses", "scores"):
        np.testing.assert_allclose(getattr(a, name).astype(np.float32), getattr(b, name).astype(np.float32),
                                   atol=1e-5, err_msg=name)


@needs_ray
def test_ray_index_equals_local_index(photos_pair):
    local, on_ray, frames, *_ = photos_pair
    n = sum(len(v) for v in frames.values())
    _assert_same_regions(local, on_ray)
    # the same manifest (settings, index kind), and the relocation maps of every photo
    manifest_l, manifest_r = Project.open(local).manifest(), Project.open(on_ray).manifest()
    for key in ("format", "extractor", "weights"):
        assert manifest_l[key] == manifest_r[key], key
    assert {k: manifest_l["index"][k] for k in ("type", "regions", "images", "dim")} == \
        {k: manifest_r["index"][k] for k in ("type", "regions", "images", "dim")}
    for rel in (r for v in frames.values() for r, _ in v):
        fmap_l, fmap_r = _stored_map(local, rel), _stored_map(on_ray, rel)
        assert (fmap_l.width, fmap_l.height, fmap_l.stride) == (fmap_r.width, fmap_r.height, fmap_r.stride)
        np.testing.assert_allclose(fmap_l.values.astype(np.float32), fmap_r.values.astype(np.float32), atol=1e-3)
    assert len(list((on_ray / ".dasr").glob("maps-*/*.npz"))) == n


def _stored_map(photos, rel):
    """The relocation map indexing stored for `rel` (none may be computed now)."""
    folders = list((photos / ".dasr").glob("maps-*"))
    assert len(folders) == 1, folders
    cache = MapCache(lambda path: pytest.fail(f"no relocation map was stored for {path}"), {})
    cache.folder = folders[0]
    return cache.get(photos / rel)


@needs_ray
def test_search_opens_the_ray_project_and_finds_the_same_hits(photos_pair):
    local, on_ray, frames, *_ = photos_pair
    rel, box = frames["Box"][0]
    query = ["--query", rel, "--box", ",".join(str(v) for v in box), "--top", "20", "--json"]
    hits = {}
    for photos in (local, on_ray):
        rc, out, err = cli("search", photos, *query)
        assert rc == 0, err
        hits[photos] = json.loads(out)["queries"][0]["hits"]
    assert [h["image"] for h in hits[on_ray]] == [h["image"] for h in hits[local]]
    assert len(hits[on_ray]) == 2 * FRAMES - 1
    for a, b in zip(hits[local], hits[on_ray]):
        assert b["score"] == pytest.approx(a["score"], abs=1e-5)
        assert b["box"] == pytest.approx(a["box"], abs=1e-3)
    # the query's own instance comes first
    assert {h["image"] for h in hits[on_ray][:FRAMES - 1]} == {r for r, _ in frames["Box"][1:]}


@needs_ray
def test_the_window_opens_the_ray_project_without_indexing_again(qtbot, photos_pair):
    from PySide6.QtWidgets import QApplication

    from dasr_annotator.app.gui.main_window import MainWindow
    from dasr_annotator.app.gui.settings import Preferences

    _, on_ray, frames, *_ = photos_pair
    window = MainWindow(on_ray, prefs=Preferences(device="cpu"))
    window.confirm = lambda *args: False
    qtbot.addWidget(window)
    try:
        with qtbot.waitSignal(window.controller.indexingFinished, timeout=120_000) as finished:
            window.show()
        report = finished.args[0]
        assert (report.images, report.indexed, report.reused) == (2 * FRAMES, 0, 2 * FRAMES)
        assert sorted(window.file_model.paths()) == sorted(r for v in frames.values() for r, _ in v)
    finally:
        window.close()
        QApplication.processEvents()


class DiesOnItsFirstBatch(PhotoExtractor):
    """An extractor actor whose process exits in the middle of the first batch any actor gets
    (once: a marker file says it happened), as a worker killed by the OS would."""

    marker = ""

    def __call__(self, batch):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().__call__(batch)
        os.write(fd, ",".join(str(r) for r in batch["rel"]).encode())
        os.close(fd)
        os._exit(1)


@needs_ray
def test_a_stopped_driver_resumes_and_a_dead_workers_batch_is_retried_without_doubles(photos_pair):
    _, on_ray, frames, first_run, lost, report = photos_pair
    n = sum(len(v) for v in frames.values())
    assert len(first_run) == 4 and len(set(first_run)) == 4  # stopped after 4 photos, in 2 shards
    assert (report.images, report.reused, report.indexed, report.skipped) == (n, 4, n - 4, [])
    assert len(lost) == 2 and not set(lost) & set(first_run), "no worker died in the second run"
    stored = _shard_files(on_ray)
    assert sorted(stored) == sorted(r for v in frames.values() for r, _ in v)  # each photo once, the lost ones too


@needs_ray
def test_the_command_line_runs_on_ray_and_finds_nothing_left_to_do(photos_pair):
    _, on_ray, frames, *_ = photos_pair
    n = sum(len(v) for v in frames.values())
    rc, out, err = cli("index", on_ray, "--ray", "--json")  # the module's Ray instance serves it
    assert rc == 0, err
    assert "extracting on a local Ray instance" in err
    report = json.loads(out)
    assert (report["images"], report["indexed"], report["reused"]) == (n, 0, n)


def test_ray_without_the_cluster_extra_says_how_to_install_it(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    rc, out, err = cli("index", tmp_path, "--ray")
    assert rc == 2 and out == ""
    assert "pip install -e '.[cluster]'" in err
    assert not (tmp_path / ".dasr").exists()  # refused before anything was written


def test_ray_actors_without_ray_is_refused(tmp_path):
    rc, _, err = cli("index", tmp_path, "--ray-actors", "2")
    assert rc == 2 and "--ray-actors needs --ray" in err
    assert not (tmp_path / ".dasr").exists()
