"""Full disks and vanished storage (issue 17): a save that fails leaves the previous labels file
intact, keeps the edits in memory, tells the user in the window and is retried until it works.
The faults are injected at the write call (the test machine cannot mount a tiny file system)."""
from __future__ import annotations

import errno
import os
import shutil

import pytest
from PySide6.QtWidgets import QApplication

from dasr_annotator.app.gui.document import Document
from dasr_annotator.engine.store import storage
from dasr_annotator.engine.store.annotations import AnnotationStore
from dasr_annotator.engine.store.storage import ProjectFileError
from dasr_annotator.engine.types import Box


class _FailingFile:
    """What os.fdopen returns while the disk is full: every write fails."""

    def __init__(self, fd, *args, **kwargs):
        self._file = open(fd, "wb", closefd=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()
        return False

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full_disk(monkeypatch):
    monkeypatch.setattr(storage.os, "fdopen", _FailingFile)


def _read_only(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(storage.tempfile, "mkstemp", refuse)


def _saved_store(tmp_path):
    path = tmp_path / "photos" / ".dasr" / "annotations.json"
    path.parent.mkdir(parents=True)
    store = AnnotationStore(path)
    store.add("a.jpg", "mug", Box(1, 1, 10, 10))
    store.save()
    return store


@pytest.mark.parametrize("fault, reason", [(_full_disk, "No space left"), (_read_only, "Read-only")])
def test_a_failed_save_leaves_the_previous_file_and_keeps_the_edit(tmp_path, monkeypatch, fault, reason):
    store = _saved_store(tmp_path)
    before = store.path.read_bytes()
    fault(monkeypatch)
    added = store.add("b.jpg", "mug", Box(2, 2, 10, 10))
    with pytest.raises(ProjectFileError, match=reason):
        store.save()
    assert store.path.read_bytes() == before
    assert store.dirty and store.get(added.id) == added
    assert not [p for p in store.path.parent.iterdir() if p.name.endswith(".tmp")], "no temp file left behind"
    monkeypatch.undo()
    store.save()
    assert {a.image for a in AnnotationStore.load(store.path).list()} == {"a.jpg", "b.jpg"}


def test_a_removed_state_folder_is_made_again_and_a_removed_photo_folder_waits(tmp_path):
    store = _saved_store(tmp_path)
    shutil.rmtree(store.path.parent)  # the state folder deleted while the project is open
    store.add("b.jpg", "mug", Box(2, 2, 10, 10))
    store.save()
    assert len(AnnotationStore.load(store.path)) == 2
    shutil.rmtree(tmp_path / "photos")  # the whole drive gone (unplugged)
    store.add("c.jpg", "mug", Box(3, 3, 10, 10))
    with pytest.raises(ProjectFileError, match="cannot save"):
        store.save()
    assert len(store) == 3 and store.dirty
    (tmp_path / "photos").mkdir()  # plugged in again
    store.save()
    assert len(AnnotationStore.load(store.path)) == 3


def test_the_window_says_so_and_retries_until_the_disk_has_room(qtbot, tmp_path, monkeypatch):
    store = _saved_store(tmp_path)
    before = store.path.read_bytes()
    document = Document(store, autosave_ms=10, retry_ms=200)
    messages = []
    document.saveFailed.connect(messages.append)
    _full_disk(monkeypatch)
    with qtbot.waitSignal(document.saveFailed, timeout=5000):
        document.add_annotation("b.jpg", "mug", Box(2, 2, 10, 10))
    assert "No space left" in messages[0] and "kept in this window" in messages[0]
    assert not document.is_saved and store.path.read_bytes() == before
    qtbot.waitUntil(lambda: len(messages) >= 2, timeout=5000)  # retried on its own
    monkeypatch.undo()  # room again
    qtbot.waitUntil(lambda: document.is_saved, timeout=5000)
    assert {a.image for a in AnnotationStore.load(store.path).list()} == {"a.jpg", "b.jpg"}


def test_the_window_shows_a_failed_save_and_refuses_to_lose_it_on_close(qtbot, tmp_path, monkeypatch):
    from PIL import Image

    from dasr_annotator.app.gui.main_window import MainWindow
    from dasr_annotator.app.gui.settings import Preferences

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(photos / "a.png")
    window = MainWindow(photos, prefs=Preferences(device="cpu"))
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.document is not None, timeout=30_000)
    window.controller.cancel_indexing()
    # the engine thread must be idle before the window goes: one still loading the network past
    # the window's shutdown would call into a deleted window
    qtbot.waitUntil(lambda: not window.controller.is_indexing, timeout=300_000)
    asked = []
    window.confirm = lambda title, text: asked.append(title) or False
    _full_disk(monkeypatch)
    with qtbot.waitSignal(window.document.saveFailed, timeout=5000):
        window.document.add_annotation("a.png", "mug", Box(2, 2, 10, 10))
    assert window.message_bar.isVisible() and "No space left" in window.message_bar.text()
    assert window.saved_label.text() == "● Unsaved changes"
    window.close()
    assert asked == ["Labels not saved"] and window.isVisible(), "closing must not drop unsaved labels"
    monkeypatch.undo()
    window.close()
    QApplication.processEvents()
    assert not window.isVisible()
    assert [a.image for a in AnnotationStore.load(photos / ".dasr" / "annotations.json").list()] == ["a.png"]


def test_indexing_stops_cleanly_on_a_full_disk_and_resumes_later(dev_data, dev_manifest, tmp_path, monkeypatch,
                                                                capsys, one_torch_thread):
    """The third shard write fails with ENOSPC: the run ends with a message (no traceback), the
    finished shards stay, and the next run reuses them."""
    from dasr_annotator.app.main import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for k, instance in enumerate(dev_manifest["instances"][:5]):
        shutil.copy(dev_data / instance["images"][0]["file"], photos / f"{k}.jpg")
    writes = {"shards": 0}
    real_write = storage.atomic_write_bytes

    def filling_disk(path, data, backup=True):
        if str(path).endswith(".npz") and "shards" in str(path):
            writes["shards"] += 1
            if writes["shards"] >= 3:
                raise ProjectFileError(f"cannot save {path}: {os.strerror(errno.ENOSPC)}")
        return real_write(path, data, backup)

    from dasr_annotator.engine.store import collection
    monkeypatch.setattr(collection, "atomic_write_bytes", filling_disk)
    rc = main(["index", str(photos), "--max-side", "96", "--batch-size", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "No space left on device" in err and "Traceback" not in err
    monkeypatch.undo()
    assert main(["index", str(photos), "--max-side", "96", "--batch-size", "1", "--json"]) == 0
    import json
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 5 and report["reused"] == 2 and report["indexed"] == 3
