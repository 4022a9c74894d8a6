"""Scanning, the region shards and incremental indexing, with a tiny deterministic extractor.

The real backbone is exercised end to end in test_cli_e2e.py; here a colour-statistics
"extractor" makes each run fast and lets the tests count exactly which images were extracted.
"""
import contextlib
import json
import os
import shutil
import stat
import threading
import time

import numpy as np
import pytest
from PIL import Image

from dasr_annotator.engine.project import project as project_module
from dasr_annotator.engine.project import extraction as extraction_module
from dasr_annotator.engine.project.lock import ProjectBusy, StateLock
from dasr_annotator.engine.project.project import IncompatibleIndex, Project
from dasr_annotator.engine.search import index as faiss_index
from dasr_annotator.engine.store.collection import RegionStore, scan_images
from dasr_annotator.engine.types import Box, Cancelled, Ellipse, ImageRegions, Region

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


class TinyExtractor:
    """Two regions per image (left and right halves); descriptor = fixed random projection of the
    half's mean colour and colour spread. Counts the images it extracts."""

    def __init__(self, dim=8, max_side=64, tag="tiny"):
        self.dim, self.max_side, self.tag = dim, max_side, tag
        self.projection = np.random.default_rng(7).standard_normal((6, dim)).astype(np.float32)
        self.extracted = []

    def config(self):
        return {"backbone": self.tag, "method": "halves", "mode": "test", "descriptor_dim": self.dim,
                "max_side": self.max_side, "tau": 0.1, "nms_beta": 0.3, "descriptor_layer": "pixels"}

    def _describe(self, rgb):
        pixels = rgb.reshape(-1, 3).astype(np.float32) / 255.0
        v = np.concatenate([pixels.mean(0), pixels.std(0)]) @ self.projection
        return (v / np.linalg.norm(v)).astype(np.float32)

    def extract(self, image):
        self.extracted.append(image.width)
        h, w = image.rgb.shape[:2]
        regions = []
        for x0 in (0, w // 2):
            box = Box(x0 / image.scale, 0.0, (w // 2) / image.scale, h / image.scale)
            e = Ellipse(box.center[0], box.center[1], box.w / 2, box.h / 2, 0.0)
            regions.append(Region(box, e, 1.0, self._describe(image.rgb[:, x0:x0 + w // 2])))
        return ImageRegions(image.width, image.height, regions)

    def describe_box(self, image, box):
        s = image.scale
        crop = image.rgb[int(box.y * s):int(np.ceil(box.y2 * s)), int(box.x * s):int(np.ceil(box.x2 * s))]
        return self._describe(crop)


def make_image(path, colour, size=(48, 32), seed=0):
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour)[None, None] + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    for i in range(6):
        make_image(root / f"set{i % 2}" / f"img{i}.png", COLOURS[i], seed=i)
    return root


def test_scan_finds_images_in_any_case_skips_state_and_survives_link_loops(tmp_path):
    root = tmp_path / "p"
    for name in ("a.jpg", "b.JPEG", "sub/c.Png", "sub/deep/d.webp", "sub/e.TIFF", "f.gif", "g.bmp", "h.tif"):
        make_image(root / name, COLOURS[0])
    (root / "notes.txt").write_text("not an image")
    make_image(root / ".dasr" / "cached.png", COLOURS[1])
    os.symlink(root, root / "sub" / "loop")  # a link back to the root
    found = scan_images(root)
    assert found.files == ["a.jpg", "b.JPEG", "f.gif", "g.bmp", "h.tif", "sub/c.Png", "sub/deep/d.webp", "sub/e.TIFF"]
    assert found.problems == []


def test_first_run_then_rerun_reuses_everything(photos):
    project = Project.open(photos)
    assert project.state_dir == photos / ".dasr"
    ex = TinyExtractor()
    report = project.update_index(ex)
    assert (report.images, report.indexed, report.reused, report.removed, report.regions) == (6, 6, 0, 0, 12)
    ex2 = TinyExtractor()
    again = Project.open(photos).update_index(ex2)
    assert (again.images, again.indexed, again.reused, again.removed) == (6, 0, 6, 0)
    assert ex2.extracted == []
    manifest = json.loads((photos / ".dasr" / "manifest.json").read_text())
    assert manifest["extractor"] == ex.config()
    assert manifest["index"]["type"] == "Flat" and manifest["index"]["regions"] == 12


def test_touched_changed_added_removed_files_are_noticed(photos):
    project = Project.open(photos)
    project.update_index(TinyExtractor())
    touched, changed = photos / "set0/img0.png", photos / "set1/img1.png"
    os.utime(touched, ns=(1, 1))  # new mtime, same bytes
    make_image(changed, COLOURS[5], seed=99)  # new content
    make_image(photos / "set0/new.png", COLOURS[3], seed=5)
    (photos / "set0/img2.png").unlink()
    ex = TinyExtractor()
    report = project.update_index(ex)
    assert (report.images, report.indexed, report.reused, report.removed) == (6, 2, 4, 1)
    assert len(ex.extracted) == 2
    assert any("touched" in note for note in report.notes)
    # the touched file's new fingerprint is remembered: no hashing needed next time
    assert RegionStore(project.state_dir).entries["set0/img0.png"].mtime_ns == 1
    searcher = project.searcher(ex)
    assert "set0/img2.png" not in searcher.images and "set0/new.png" in searcher.images


def test_search_finds_the_image_a_box_came_from(photos):
    project = Project.open(photos)
    ex = TinyExtractor()
    project.update_index(ex)
    searcher = project.searcher(ex)
    for name in ("set0/img0.png", "set1/img3.png"):
        desc = searcher.query_descriptor(name, Box(0, 0, 24, 32))
        hits = searcher.search(desc[None], top_k=3)
        assert hits[0].image == name and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].box == Box(0.0, 0.0, 24.0, 32.0)
        assert len({h.image for h in hits}) == 3
        assert name not in {h.image for h in searcher.search(desc[None], top_k=3, exclude_image=name)}


def test_cancelled_run_keeps_finished_batches_and_next_run_resumes(photos):
    project = Project.open(photos)
    ex = TinyExtractor()
    with pytest.raises(Cancelled):
        project.update_index(ex, cancel=lambda: len(ex.extracted) >= 3, batch_files=2)
    assert len(ex.extracted) == 3
    ex2 = TinyExtractor()
    report = project.update_index(ex2)
    assert (report.indexed, report.reused) == (3, 3)
    assert len(ex2.extracted) == 3


def test_shards_of_a_killed_run_are_replayed_and_broken_ones_ignored(photos):
    project = Project.open(photos)
    ex = TinyExtractor()
    project.update_index(ex, batch_files=2)
    state = project.state_dir
    # as if the process died after writing shards but before the catalog: drop the catalog
    (state / "catalog.json").unlink()
    (state / "catalog.json.bak").unlink(missing_ok=True)
    shards = sorted((state / "shards").glob("*.npz"))
    assert len(shards) == 3
    shards[-1].write_bytes(b"torn")  # and the last shard is damaged
    ex2 = TinyExtractor()
    report = project.update_index(ex2)
    assert (report.images, report.indexed, report.reused) == (6, 2, 4)


def test_images_that_cannot_be_read_are_skipped_with_a_reason(photos):
    (photos / "set0" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (photos / "set0" / "empty.png").write_bytes(b"")
    report = Project.open(photos).update_index(TinyExtractor())
    assert report.images == 6
    reasons = {s["file"]: s["reason"] for s in report.skipped}
    assert set(reasons) == {"set0/broken.jpg", "set0/empty.png"}
    assert all(reasons.values())


def test_other_settings_are_refused_unless_rebuilt(photos):
    project = Project.open(photos)
    project.update_index(TinyExtractor())
    other = TinyExtractor(max_side=128)
    with pytest.raises(IncompatibleIndex, match="max_side.*--rebuild"):
        project.update_index(other)
    with pytest.raises(IncompatibleIndex):
        project.searcher(other)
    report = project.update_index(other, rebuild=True)
    assert (report.indexed, report.reused) == (6, 0)
    assert project.manifest()["extractor"]["max_side"] == 128


def test_read_only_folder_keeps_state_in_the_cache(photos, monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DASR_ANNOTATOR_CACHE", str(cache))
    for folder in [photos, *[p for p in photos.iterdir() if p.is_dir()]]:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        project = Project.open(photos)
        assert project.state_dir.is_relative_to(cache)
        assert "read-only" in project.state_note
        report = project.update_index(TinyExtractor())
        assert report.images == 6
        assert not (photos / ".dasr").exists()
        assert Project.open(photos).state_dir == project.state_dir
    finally:
        for folder in [photos, *[p for p in photos.iterdir() if p.is_dir()]]:
            folder.chmod(0o755)


def test_compaction_drops_dead_shards(photos):
    project = Project.open(photos)
    project.update_index(TinyExtractor(), batch_files=6)
    for i in range(6):
        make_image(photos / f"set{i % 2}" / f"img{i}.png", COLOURS[(i + 1) % 6], seed=50 + i)
    project.update_index(TinyExtractor(), batch_files=6)
    assert [p.name for p in sorted((project.state_dir / "shards").glob("*.npz"))] == ["000002.npz"]


def test_whitening_is_fitted_once_enough_regions_and_refitted_when_doubled(photos, monkeypatch):
    monkeypatch.setattr(faiss_index, "whitening_min_regions", lambda dim: 12)
    monkeypatch.setattr(project_module, "WHITEN_SAMPLE", 10)  # fits on a sample, not everything
    project = Project.open(photos)
    ex = TinyExtractor(dim=6)
    project.update_index(ex)
    white = project.manifest()["whitening"]
    assert white["collection_regions"] == 12 and 10 <= white["fitted_on"] <= 12 and white["dim"] <= 6
    searcher = project.searcher(ex)
    assert searcher.whitening is not None
    desc = searcher.query_descriptor("set1/img1.png", Box(24, 0, 24, 32))
    hit = searcher.search(desc[None], top_k=1)[0]
    assert hit.image == "set1/img1.png" and hit.score == pytest.approx(1.0, abs=1e-3)
    make_image(photos / "more" / "one_more.png", COLOURS[0], seed=40)
    grown = project.update_index(ex)  # 14 regions: not yet twice 12, the whitening stays
    assert project.manifest()["whitening"] == white and not any("whitening" in n for n in grown.notes)
    for i in range(6, 11):
        make_image(photos / "more" / f"m{i}.png", COLOURS[i % 6], seed=i)
    report = project.update_index(ex)
    assert any("whitening fitted on" in n for n in report.notes)
    assert project.manifest()["whitening"]["collection_regions"] == 24


def test_a_second_indexer_is_refused_while_one_runs(photos):
    project = Project.open(photos)
    with StateLock(project.state_dir / "lock"):
        with pytest.raises(ProjectBusy):
            project.update_index(TinyExtractor())


def test_pause_indexes_what_is_done_and_leaves_the_rest_for_later(photos):
    project = Project.open(photos)
    ex = TinyExtractor()
    report = project.update_index(ex, pause=lambda: len(ex.extracted) >= 2)
    assert (report.images, report.indexed, report.pending) == (2, 2, 4)
    assert len(project.searcher(ex).images) == 2
    rest = project.update_index(TinyExtractor())
    assert (rest.images, rest.indexed, rest.reused, rest.pending) == (6, 4, 2, 0)


def test_a_name_that_is_not_utf8_is_indexed_searched_and_labelled(photos):
    latin1 = os.fsdecode(b"caf\xe9.png")  # possible on POSIX; Python holds it with a lone surrogate
    make_image(photos / latin1, COLOURS[4], seed=11)
    project = Project.open(photos)
    ex = TinyExtractor()
    assert project.update_index(ex).images == 7
    searcher = project.searcher(ex)
    desc = searcher.query_descriptor(latin1, Box(0, 0, 24, 32))
    assert searcher.search(desc[None], top_k=1)[0].image == latin1
    project.annotations.add(latin1, "cup", Box(1, 1, 5, 5))
    project.annotations.save()
    assert Project.open(photos).annotations.list()[0].image == latin1
    assert Project.open(photos).update_index(TinyExtractor()).reused == 7


def test_a_damaged_catalog_is_recovered_from_the_shards(photos):
    project = Project.open(photos)
    project.update_index(TinyExtractor(), batch_files=4)
    for name in ("catalog.json", "catalog.json.bak"):
        if (project.state_dir / name).exists():
            (project.state_dir / name).write_text('{"format": 1, "files": [')
    ex = TinyExtractor()
    report = project.update_index(ex)
    assert (report.images, report.indexed, report.reused) == (6, 0, 6) and ex.extracted == []
    assert any("recovered from the region shards" in note for note in report.notes)
    assert RegionStore(project.state_dir).warnings == []  # a good catalog was written again


class ParallelTinyExtractor(TinyExtractor):
    """Asks for three images at a time, as the real extractor does on a multi-core CPU, and
    holds each extraction until another one has started (so they do overlap)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.threads, self.single_threaded, self.overlapped = set(), [], False
        self._active, self._lock = 0, threading.Lock()

    def parallel_images(self):
        return 3

    @contextlib.contextmanager
    def one_thread_each(self):
        self.single_threaded.append("in")
        yield
        self.single_threaded.append("out")

    def extract(self, image):
        with self._lock:
            self._active += 1
            self.overlapped |= self._active > 1
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not self.overlapped:
            time.sleep(0.005)
        self.threads.add(threading.current_thread().name)
        try:
            return super().extract(image)
        finally:
            with self._lock:
                self._active -= 1


def test_images_extracted_side_by_side_index_as_one_at_a_time(photos, tmp_path):
    serial_root = tmp_path / "serial"
    shutil.copytree(photos, serial_root)
    serial = Project.open(serial_root)
    serial.update_index(TinyExtractor())
    project = Project.open(photos)
    ex = ParallelTinyExtractor()
    progress = []
    report = project.update_index(ex, progress=lambda done, total: progress.append(done), batch_files=2)
    assert (report.images, report.indexed, report.regions) == (6, 6, 12)
    assert ex.extracted == [48] * 6  # each image once
    assert ex.overlapped and all(name.startswith("dasr-extract") for name in ex.threads)
    assert ex.single_threaded == ["in", "out"]
    assert progress == sorted(progress) and progress[-1] == 6
    a, b = RegionStore(project.state_dir), RegionStore(serial.state_dir)
    files = sorted(b.entries)
    assert sorted(a.entries) == files
    for x, y in zip(vars(a.read(files)).values(), vars(b.read(files)).values()):
        assert np.array_equal(x, y)


def test_a_cancel_keeps_the_images_in_flight_and_the_next_run_resumes(photos):
    project = Project.open(photos)
    ex = ParallelTinyExtractor()
    with pytest.raises(Cancelled):
        project.update_index(ex, cancel=lambda: len(ex.extracted) >= 2)
    finished = len(ex.extracted)
    assert 2 <= finished < 6
    report = project.update_index(TinyExtractor())
    assert (report.images, report.reused, report.indexed) == (6, finished, 6 - finished)


def test_a_gpu_extractor_gets_several_decoder_threads(photos, monkeypatch):
    """Decoding on one thread (3.3 ms a dev photo) would starve a GPU: it gets a decoder per core."""
    monkeypatch.setattr(extraction_module.os, "cpu_count", lambda: 3)
    decoders, real_load = set(), extraction_module.load_image

    def load(path, **kw):
        decoders.add(threading.current_thread().name)
        time.sleep(0.05)  # long enough that the read-ahead keeps several decoders busy
        return real_load(path, **kw)

    monkeypatch.setattr(extraction_module, "load_image", load)
    ex = TinyExtractor()
    ex.device = "cuda:0"
    report = Project.open(photos).update_index(ex)
    assert (report.images, report.indexed) == (6, 6) and len(ex.extracted) == 6
    assert len(decoders) == 3 and all(name.startswith("dasr-decode") for name in decoders)
