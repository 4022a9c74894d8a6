"""The window on large folders (issue 20): the file list is virtual and compact, rows arrive in
batches while the folder is scanned off the UI thread, thumbnails are asked for only for rows
painted and stale requests are dropped. The window test opens a generated folder of 3000 hard
links to the dev photos (benchmarks/window_scale.py measures 100k)."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
import tracemalloc

import pytest
from PySide6.QtCore import QAbstractListModel, Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QWidget

from dasr_annotator.app.gui import main_window as main_window_module
from dasr_annotator.app.gui.workers import ImageLoader
from dasr_annotator.engine.project import project as project_module
from dasr_annotator.engine.store.collection import ScanResult
from dasr_annotator.widgets import file_list
from dasr_annotator.widgets.file_list import LABELLED, PENDING, UNLABELLED, FileListModel, FileListView, StatusRole
from tests.test_gui_flow import window_on  # noqa: F401 - fixture

PER_FOLDER = 1000


def linked_folder(target, dev_data, count):
    """`count` hard links to the dev photos, PER_FOLDER to a sub-folder."""
    sources = sorted(p for p in (dev_data / "images").rglob("*.jpg"))
    for i in range(count):
        folder = target / f"d{i // PER_FOLDER:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            os.link(sources[i % len(sources)], folder / f"{i:05d}.jpg")
        except OSError:  # the data on another file system
            os.symlink(sources[i % len(sources)], folder / f"{i:05d}.jpg")
    return target


def names(count, folder="d"):
    return [f"{folder}{i // PER_FOLDER:03d}/{i:05d}.jpg" for i in range(count)]


# ---- the model ------------------------------------------------------------------------------
def test_the_list_holds_no_object_per_photo(qapp):
    paths = names(100_000)
    model = FileListModel()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        model.set_images(paths)
        model.set_counts({paths[5]: 2}, {paths[99_999]: 1})
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown / len(paths) < 32  # the list's pointers; no state object, dict entry or row map per photo
    assert model.rowCount() == 100_000 and model.row_of(paths[77_777]) == 77_777
    assert model.index(5).data(StatusRole) == LABELLED and model.index(99_999).data(StatusRole) == PENDING
    assert model.index(6).data(StatusRole) == UNLABELLED
    assert model.step_from(paths[99_998], 5) == paths[99_999] and model.step_from(None, 1) == paths[0]
    assert paths[3] in model and "elsewhere.jpg" not in model


def test_batches_insert_rows_and_the_same_list_again_keeps_them(qapp):
    model = FileListModel()
    events = []
    model.rowsInserted.connect(lambda _, first, last: events.append(("insert", first, last)))
    model.modelReset.connect(lambda: events.append(("reset",)))
    paths = names(2500)
    model.append_images(paths[:1000])
    model.append_images(paths[1000:])
    assert events == [("insert", 0, 999), ("insert", 1000, 2499)]
    model.set_counts({paths[10]: 1}, {})
    changed = []
    model.dataChanged.connect(lambda top, bottom, roles: changed.append((top.row(), bottom.row())))
    fresh = [str(p.encode().decode()) for p in paths]  # equal strings, other objects (the engine's scan)
    model.set_images(fresh)
    assert events[-1] != ("reset",)  # nothing moved: no reset, the rows and counts stay
    assert model.paths()[10] is fresh[10]  # one copy of the names in the process
    assert model.index(10).data(StatusRole) == LABELLED
    model.set_counts({paths[10]: 1, paths[20]: 3}, {})
    assert changed == [(20, 20)]  # only the row whose count changed repaints


def test_batches_arriving_out_of_order_are_merged_in_order_keeping_the_current_row(qapp):
    model = FileListModel()
    view = FileListView()
    view.setModel(model)
    model.append_images(["b/1.jpg", "b/2.jpg", "d.jpg"])
    view.setCurrentIndex(model.index(1))
    events = []
    model.rowsInserted.connect(lambda _, first, last: events.append(("insert", first, last)))
    model.modelReset.connect(lambda: events.append(("reset",)))
    model.append_images(["c/1.jpg", "a/1.jpg", "a/2.jpg", "b/1.jpg"])  # b/1.jpg is listed already
    assert model.paths() == ["a/1.jpg", "a/2.jpg", "b/1.jpg", "b/2.jpg", "c/1.jpg", "d.jpg"]
    assert events == [("insert", 0, 1), ("insert", 4, 4)]  # one insertion per run of new rows
    assert [model.row_of(p) for p in ("a/2.jpg", "b/2.jpg", "d.jpg", "e.jpg")] == [1, 3, 5, -1]
    assert model.image_at(view.currentIndex().row()) == "b/2.jpg"  # the row shown stays current


def test_a_batch_in_mid_list_is_bisected_once_a_path(qapp, monkeypatch):
    """A batch landing inside the list (a folder listed out of order, frames sampled finer) finds
    each path's place with one bisection, which also tells a path listed already: the key runs
    about log2(rows) times a path, not twice that."""
    paths = names(4128)
    listed = paths[:1000] + paths[1032:]
    batch = paths[1000:1032] + [listed[600]]  # 32 new paths mid-list, one listed already
    model = FileListModel()
    model.append_images(listed)
    calls = []
    key = file_list.order_key
    monkeypatch.setattr(file_list, "order_key", lambda name: (calls.append(1), key(name))[1])
    inserted = []
    model.rowsInserted.connect(lambda _, first, last: inserted.append((first, last)))
    model.append_images(batch)
    assert inserted == [(1000, 1031)] and model.paths() == paths
    probes = math.ceil(math.log2(len(listed) + 1))
    assert len(calls) <= len(batch) * (probes + 1) + 1, len(calls)


def test_a_scan_batch_with_a_video_inserts_rows_and_keeps_thumbnails_and_the_current_row(qapp):
    model = FileListModel()
    view = FileListView()
    view.setModel(model)
    times = {f"m.mp4#frame={n}": float(n) for n in (0, 1)}
    model.append_images(["a.jpg", "m.mp4#frame=0", "m.mp4#frame=1", "z.jpg"], times)
    model.toggle(1)
    for row in range(model.rowCount()):
        model.index(row).data(Qt.DecorationRole)
        model.set_thumbnail(model.image_at(row), QImage(56, 42, QImage.Format_RGB32))
    view.setCurrentIndex(model.index(model.row_of("m.mp4#frame=1")))
    events, wanted = [], []
    model.rowsInserted.connect(lambda _, first, last: events.append(("insert", first, last)))
    model.modelReset.connect(lambda: events.append(("reset",)))
    model.thumbnailWanted.connect(wanted.append)
    model.append_images(["b.jpg", "m.mp4#frame=2", "n.mov#frame=0"], {"m.mp4#frame=2": 2.0, "n.mov#frame=0": 0.0})
    assert events == [("insert", 1, 1), ("insert", 5, 6)]  # no reset: the new rows only
    assert [model.index(r).data() for r in range(model.rowCount())] == [
        "a.jpg", "b.jpg", "▾ m.mp4", "    0:00.0  · frame 0", "    0:01.0  · frame 1", "    0:02.0  · frame 2",
        "▸ n.mov", "z.jpg"]
    assert model.image_at(view.currentIndex().row()) == "m.mp4#frame=1"
    for path in ("a.jpg", "m.mp4#frame=0", "m.mp4#frame=1", "z.jpg"):  # thumbnails loaded stay
        assert model.index(model.row_of(path)).data(Qt.DecorationRole) is not None
    assert wanted == []


def test_many_frames_join_a_large_list_in_one_merge(qapp):
    """Frames sampled finer than the folder (propagation) join their expanded video in a folder of
    20k photos: one pass per call, one row insertion per gap they fill (it was a pass over the
    whole list and an insertion per frame: 500 frames took seconds)."""
    photos = names(20_000)
    frames = {f"d010/clip.mp4#frame={30 * k}": float(k) for k in range(100)}
    model = FileListModel()
    view = FileListView()
    view.setModel(model)
    model.set_images(photos + list(frames), frames)
    model.toggle(model.row_of("d010/clip.mp4#frame=0"))
    view.setCurrentIndex(model.index(model.row_of("d010/clip.mp4#frame=60")))
    finer = {f"d010/clip.mp4#frame={30 * k + 6 * j}": k + j / 5 for k in range(100) for j in range(1, 5)}
    finer["elsewhere.mp4#frame=3"] = 0.1  # a video not listed: left out
    inserted = []
    model.rowsInserted.connect(lambda _, first, last: inserted.append(last - first + 1))
    started = time.perf_counter()
    added = model.add_frames(finer)
    took = time.perf_counter() - started
    assert len(added) == 400 and inserted == [4] * 100  # each gap between sampled frames is one run
    assert took < 1.5, f"adding 400 frames took {took:.2f} s"
    assert model.image_at(view.currentIndex().row()) == "d010/clip.mp4#frame=60"
    clip = [p for p in model.paths() if p.startswith("d010/clip")]
    assert clip == [f"d010/clip.mp4#frame={n}" for n in range(0, 3000, 6)]  # by frame number
    row = model.row_of("d010/clip.mp4#frame=0")
    assert [model.image_at(r) for r in range(row, row + 3)] == clip[:3] and model.row_of(clip[-1]) == row + 499


def test_video_frames_arriving_in_a_batch_are_grouped(qapp):
    model = FileListModel()
    model.append_images(["a.jpg"])
    model.append_images(["clip.mp4#frame=0", "clip.mp4#frame=4"], {"clip.mp4#frame=0": 0.0, "clip.mp4#frame=4": 1.0})
    model.append_images(["z.jpg"])
    assert [model.index(r).data() for r in range(model.rowCount())] == ["a.jpg", "▸ clip.mp4", "z.jpg"]
    assert model.toggle(1) and model.row_of("clip.mp4#frame=4") == 3
    model.set_counts({"clip.mp4#frame=4": 1}, {})
    assert model.index(1).data(StatusRole) == LABELLED


def test_thumbnails_are_kept_up_to_a_bound_and_asked_again(qapp, monkeypatch):
    monkeypatch.setattr(file_list, "THUMB_CACHE", 3)
    model = FileListModel()
    model.set_images(names(10))
    wanted = []
    model.thumbnailWanted.connect(wanted.append)
    for row in range(5):
        model.index(row).data(Qt.DecorationRole)
        model.set_thumbnail(model.image_at(row), QImage(56, 42, QImage.Format_RGB32))
    assert wanted == names(5)
    kept = [row for row in range(5) if model.index(row).data(Qt.DecorationRole) is not None]
    assert kept == [2, 3, 4]  # the oldest went; row 0 and 1 were asked for again just now
    assert wanted[5:] == names(2)
    model.index(7).data(Qt.DecorationRole)
    model.forget_thumbnail_requests()  # the window dropped the request (the row was scrolled past)
    model.index(7).data(Qt.DecorationRole)
    assert wanted[-2:] == [names(8)[7]] * 2


def test_thumbnails_arrive_at_the_size_shown_and_are_not_scaled_on_the_ui_thread(qapp, qtbot, dev_data):
    model = FileListModel()
    model.set_images(["a.jpg", "b.jpg"])
    model.set_thumbnail("a.jpg", QImage(2 * file_list.THUMB_PX, 84, QImage.Format_RGB32))  # a 2x screen's
    model.set_thumbnail("b.jpg", QImage(42, file_list.THUMB_PX, QImage.Format_RGB32))
    sharp, plain = (model.index(row).data(Qt.DecorationRole) for row in (0, 1))
    assert (sharp.width(), sharp.height(), sharp.devicePixelRatio()) == (112, 84, 2.0)  # its pixels as they came
    assert sharp.deviceIndependentSize().width() == file_list.THUMB_PX and plain.devicePixelRatio() == 1.0
    loader = ImageLoader(threads=1)
    arrived = []
    loader.loaded.connect(lambda tag, image, size: arrived.append(image))
    loader.request(("thumb", 0), next((dev_data / "images").rglob("*.jpg")), file_list.THUMB_PX)
    qtbot.waitUntil(lambda: len(arrived) == 1, timeout=10_000)
    assert max(arrived[0].width(), arrived[0].height()) == file_list.THUMB_PX
    assert arrived[0].format() == QImage.Format_RGB32  # what the screen paints as it is: converted on the loader
    assert loader.wait(10_000)


def test_the_image_loader_drops_requests_not_started(qapp, qtbot, dev_data):
    image = next((dev_data / "images").rglob("*.jpg"))
    loader = ImageLoader(threads=1)
    arrived = []
    loader.loaded.connect(lambda tag, *_: arrived.append(tag))
    loader.request(("canvas", 0), image, 256)
    for i in range(40):
        loader.request(("thumb", i), image, 112)
    dropped = loader.drop("thumb")
    assert loader.wait(20_000)
    qtbot.waitUntil(lambda: len(arrived) + dropped == 41, timeout=10_000)
    assert dropped > 0 and ("canvas", 0) in arrived  # other kinds stay


# ---- the window -----------------------------------------------------------------------------
def test_the_window_module_loads_no_torch_or_faiss():
    """torch and faiss load on the engine thread while the first photo shows; imported with the
    window's own modules they would hold the start-up for seconds (7 s for 100k photos here)."""
    code = ("import sys; from dasr_annotator.app.gui import main_window; "
            "print(sorted(m for m in ('torch', 'faiss') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_large_folder_opens_with_a_virtual_list_scanned_off_the_ui_thread(qtbot, tmp_path, dev_data, window_on,
                                                                           monkeypatch):
    photos = linked_folder(tmp_path / "photos", dev_data, 3 * PER_FOLDER)
    on_ui_thread = []

    def watched(function):
        def call(*args, **kwargs):
            on_ui_thread.append((function.__name__, threading.current_thread() is threading.main_thread()))
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(main_window_module, "scan_images", watched(main_window_module.scan_images))
    monkeypatch.setattr(project_module, "scan_images", watched(project_module.scan_images))
    monkeypatch.setattr(project_module, "fingerprint", watched(project_module.fingerprint))
    from dasr_annotator.app.gui.main_window import MainWindow

    batches, wanted, sides = [], [], []
    original_connect = MainWindow._connect

    def connect(self):  # before the folder opens: the first batch must not be missed
        original_connect(self)
        self._lister.batch.connect(lambda token, files, times: batches.append(len(files)))
        self.file_model.thumbnailWanted.connect(wanted.append)
        request = self.controller.images_loader.request

        def record(tag, path, max_side, *args, **kwargs):
            sides.append((tag[0], max_side))
            return request(tag, path, max_side, *args, **kwargs)
        self.controller.images_loader.request = record
        # only the opening is tested: indexing stops once it has planned (fingerprinted) its work
        self.controller.indexingProgress.connect(lambda *_: self.controller.cancel_indexing())

    monkeypatch.setattr(MainWindow, "_connect", connect)
    window = window_on(photos)
    qtbot.waitUntil(lambda: window.document is not None and window.canvas_image is not None, timeout=60_000)
    qtbot.waitUntil(lambda: ("fingerprint", False) in on_ui_thread, timeout=60_000)

    model, view = window.file_model, window.file_view
    assert model.rowCount() == 3 * PER_FOLDER and window.canvas_image == "d000/00000.jpg"
    assert batches[0] == PER_FOLDER and sum(batches) == 3 * PER_FOLDER  # the first folder shows at once
    assert {name for name, _ in on_ui_thread} == {"scan_images", "fingerprint"}
    assert not any(ui for _, ui in on_ui_thread)  # scanning and fingerprinting never on the UI thread
    assert isinstance(model, QAbstractListModel) and view.uniformItemSizes()
    assert all(view.indexWidget(model.index(row)) is None for row in range(model.rowCount()))
    assert len(view.findChildren(QWidget)) < 20  # the view's own parts: no widget per row
    qtbot.waitUntil(lambda: len(wanted) > 0, timeout=10_000)
    assert len(wanted) < 100  # thumbnails only for the rows painted
    thumb_sides = {side for kind, side in sides if kind == "thumb"}  # decoded at the size shown, in device pixels
    assert thumb_sides == {round(file_list.THUMB_PX * view.devicePixelRatioF())}
    window.file_view.setFocus()
    window.step_image(2500)
    assert window.current_image == "d002/02500.jpg" and view.currentIndex().row() == 2500


def test_a_stopped_listing_sends_nothing_more(qtbot, monkeypatch):
    """Opening another folder (or closing the window) stops the walk: no batch or list of the
    old folder arrives afterwards."""
    reached, finished = threading.Event(), threading.Event()

    def scan(folder, on_folder):
        try:
            on_folder(["a.jpg"], {})
            reached.wait(10)
            on_folder(["b.jpg"], {})  # the walk goes on into the next folder
            return ScanResult(["a.jpg", "b.jpg"], [])
        finally:
            finished.set()

    monkeypatch.setattr(main_window_module, "scan_images", scan)
    lister = main_window_module.FolderLister()
    got = []
    lister.batch.connect(lambda token, files, times: got.append(files))
    lister.listed.connect(lambda token, files, times: got.append("listed"))
    lister.start(main_window_module.Path("."), object())
    qtbot.waitUntil(lambda: got == [["a.jpg"]], timeout=10_000)
    lister.stop()
    reached.set()
    assert finished.wait(10)
    qtbot.wait(50)  # let any queued signal arrive
    assert got == [["a.jpg"]]
