"""The real window on real photos, driven like a person would: open a folder, wait for indexing,
draw a box, find similar, triage with keys, undo/redo, export COCO. Offscreen, embedded backbone
(fast mode), isolated settings (conftest)."""
from __future__ import annotations

import json
import shutil

import pytest
from PySide6.QtCore import QPointF, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QDockWidget

from dasr_annotator.app.gui.controller import Relocated, SearchRequest
from dasr_annotator.app.gui.document import ACCEPTED, PENDING, REJECTED
from dasr_annotator.app.gui.main_window import MainWindow
from dasr_annotator.app.gui.settings import Preferences
from dasr_annotator.engine.dasr.relocate import box_iou_matrix
from dasr_annotator.engine.dasr.relocate import REJECTED_IOU
from dasr_annotator.engine.types import Box

SEQUENCES = ("Box", "Dog", "Human3")
FRAMES_PER_SEQUENCE = 3
INDEX_TIMEOUT_MS = 180_000


def box_iou(a: Box, b: Box) -> float:
    return float(box_iou_matrix([[a.x, a.y, a.x2, a.y2]], [[b.x, b.y, b.x2, b.y2]])[0, 0])


def copy_photos(dev_data, manifest, target):
    """The first frames of a few sequences, and each copied image's ground-truth box."""
    boxes = {}
    for instance in manifest["instances"]:
        if instance["video"] not in SEQUENCES:
            continue
        for item in instance["images"][:FRAMES_PER_SEQUENCE]:
            rel = item["file"].removeprefix("images/")
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(dev_data / item["file"], target / rel)
            boxes[rel] = Box.from_list(item["box"])
    return boxes


@pytest.fixture(scope="module")
def indexed_folder(tmp_path_factory, dev_data, dev_manifest):
    """Photos indexed once, headless, for the tests that are not about indexing."""
    import torch

    from dasr_annotator.engine.dasr.extractor import Extractor
    from dasr_annotator.engine.project.project import Project

    torch.set_num_threads(1)
    photos = tmp_path_factory.mktemp("indexed") / "photos"
    truth = copy_photos(dev_data, dev_manifest, photos)
    Project.open(photos).update_index(Extractor(device="cpu"))
    return photos, truth


def fresh_copy(indexed_folder, tmp_path):
    """The indexed folder with its state, mtimes kept so nothing needs re-indexing."""
    photos, truth = indexed_folder
    target = tmp_path / "photos"
    shutil.copytree(photos, target)
    return target, truth


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine is shared
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def window_on(qtbot):
    """Open a window on a folder; checks on teardown that it closed and left no window behind."""
    windows = []

    def open_window(photos, prefs=None):
        window = MainWindow(photos, prefs=prefs or Preferences(device="cpu"))
        window.ask_save_path = lambda *args: None  # no dialog may ever block a test
        window.ask_open_path = lambda *args: None
        window.confirm = lambda *args: False
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        windows.append(window)
        return window

    yield open_window
    for window in windows:
        window.close()
    QApplication.processEvents()
    assert [w for w in QApplication.topLevelWidgets() if w.isVisible()] == []


def wait_for_image(qtbot, window, rel):
    window.show_image(rel)
    qtbot.waitUntil(lambda: window.canvas.image_size is not None and window.current_image == rel
                    and window.canvas._pixmap.pixmap().width() > 0, timeout=10_000)
    window.canvas.fit()


def drag_on_canvas(canvas, start, end, steps=5):
    """Press at scene point `start`, move in steps to `end`, release (viewport coordinates)."""
    viewport = canvas.viewport()
    p1, p2 = canvas.mapFromScene(QPointF(*start)), canvas.mapFromScene(QPointF(*end))
    QTest.mousePress(viewport, Qt.LeftButton, Qt.NoModifier, p1)
    for i in range(1, steps + 1):
        point = p1 + (p2 - p1) * i / steps
        QTest.mouseMove(viewport, point)
    QTest.mouseRelease(viewport, Qt.LeftButton, Qt.NoModifier, p2)


def press(qtbot, window, key, modifier=Qt.NoModifier):
    window.activateWindow()
    qtbot.waitActive(window)
    QTest.keyClick(window.canvas if window.canvas.hasFocus() else window.focusWidget() or window, key, modifier)


def test_label_by_example_end_to_end(qtbot, tmp_path, dev_data, dev_manifest, window_on):
    photos = tmp_path / "photos"
    truth = copy_photos(dev_data, dev_manifest, photos)
    window = window_on(photos)
    with qtbot.waitSignal(window.controller.indexingFinished, timeout=INDEX_TIMEOUT_MS) as indexed:
        pass
    assert indexed.args[0].images == len(truth)
    assert window.progress.device.text().startswith("Device: ")
    assert sorted(window.file_model.paths()) == sorted(truth)

    # Draw the query box around the instance in the first photo, name the category.
    query_image = "Box/" + sorted(p.split("/")[1] for p in truth if p.startswith("Box/"))[0]
    wait_for_image(qtbot, window, query_image)
    gt = truth[query_image]
    drag_on_canvas(window.canvas, (gt.x, gt.y), (gt.x2, gt.y2))
    draft = window.review.draft
    tolerance = 2.0 / window.canvas.zoom() + 1.0  # one screen pixel of rounding at each end
    assert draft is not None and draft.iou(gt) > 0.9
    assert abs(draft.x - gt.x) <= tolerance and abs(draft.y2 - gt.y2) <= tolerance
    # Type the category; Enter there searches (on the engine thread) and the hits show.
    window.activateWindow()
    qtbot.waitActive(window)
    window.category_box.lineEdit().setFocus()
    QTest.keyClicks(window.category_box.lineEdit(), "box")
    assert window.review.draft is not None  # letters typed there are not shortcuts
    with qtbot.waitSignal(window.controller.searchFinished, timeout=60_000) as searched:
        QTest.keyClick(window.category_box.lineEdit(), Qt.Key_Return)
    hits = searched.args[0].hits
    assert hits and all(h.image != query_image for h in hits)
    assert [r.image for r in window.results.model.rows()] == [h.image for h in hits]
    assert window.document.annotations() == []  # the query box is searched with, not labelled ...
    press(qtbot, window, Qt.Key_Return, Qt.ControlModifier)  # ... until the annotator keeps it
    query_label = [a for a in window.document.annotations() if a.source == "manual"]
    assert [(a.image, a.category) for a in query_label] == [(query_image, "box")]
    assert window.results.current_key() == window.document.hits.entries[0].key
    qtbot.waitUntil(lambda: window.current_image == hits[0].image, timeout=10_000)

    # Triage with keys: Y accepts, N rejects, K goes back, J forward; decisions advance.
    entries = window.document.hits.entries
    first, second = entries[0], entries[1]
    press(qtbot, window, Qt.Key_Y)
    assert first.status == ACCEPTED and window.results.current_key() == second.key
    press(qtbot, window, Qt.Key_N)
    assert second.status == REJECTED
    press(qtbot, window, Qt.Key_K)
    assert window.results.current_key() == second.key
    press(qtbot, window, Qt.Key_J)
    accepted = window.document.annotation(first.annotation_id)
    assert (accepted.image, accepted.category, accepted.source) == (first.image, "box", "search")

    # Undo the reject, then the accept; redo both.
    press(qtbot, window, Qt.Key_Z, Qt.ControlModifier)
    assert second.status == PENDING and first.status == ACCEPTED
    press(qtbot, window, Qt.Key_Z, Qt.ControlModifier)
    assert first.status == PENDING and not window.document.has_annotation(accepted.id)
    press(qtbot, window, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)
    press(qtbot, window, Qt.Key_Y, Qt.ControlModifier)
    assert first.status == ACCEPTED and second.status == REJECTED
    assert window.document.annotation(first.annotation_id).box == first.box

    # Export COCO: the file holds the query label and the accepted hit, nothing rejected.
    out = tmp_path / "labels.coco.json"
    window.ask_save_path = lambda *args: str(out)
    press(qtbot, window, Qt.Key_E, Qt.ControlModifier)
    coco = json.loads(out.read_text())
    names = {i["id"]: i["file_name"] for i in coco["images"]}
    exported = sorted((names[a["image_id"]], a["bbox"]) for a in coco["annotations"])
    expected = sorted((a.image, [round(v, 2) for v in a.box.clipped(*_size(photos / a.image)).as_list()])
                      for a in window.document.annotations())
    assert exported == expected and len(exported) == 2
    assert [c["name"] for c in coco["categories"]] == ["box"]
    assert second.image not in names.values() or second.image == query_image

    # Del deletes the selected label (its hit returns to pending); undo restores it.
    window.results.select_key(first.key)
    qtbot.waitUntil(lambda: window.canvas.selected_keys() == [f"ann:{first.annotation_id}"], timeout=10_000)
    window.canvas.setFocus()
    press(qtbot, window, Qt.Key_Delete)
    assert first.status == PENDING and len(window.document.annotations()) == 1
    press(qtbot, window, Qt.Key_Z, Qt.ControlModifier)
    assert first.status == ACCEPTED and len(window.document.annotations()) == 2

    # A and D walk through the photos.
    paths = window.file_model.paths()
    row = paths.index(window.current_image)
    press(qtbot, window, Qt.Key_D)
    assert window.current_image == paths[min(row + 1, len(paths) - 1)]
    press(qtbot, window, Qt.Key_A)
    assert window.current_image == paths[row]

    # Everything was autosaved to the project's store.
    qtbot.waitUntil(lambda: window.document.is_saved, timeout=5_000)
    stored = json.loads((window.project.state_dir / "annotations.json").read_text())
    assert sorted(a["id"] for a in stored["annotations"]) == sorted(a.id for a in window.document.annotations())


def test_search_while_indexing_uses_the_images_done_so_far(qtbot, tmp_path, dev_data, dev_manifest, window_on):
    photos = tmp_path / "photos"
    truth = copy_photos(dev_data, dev_manifest, photos)
    window = window_on(photos)
    qtbot.waitUntil(lambda: window.controller.is_indexing and window.progress.bar.value() >= 2, timeout=INDEX_TIMEOUT_MS)
    query_image = sorted(truth)[0]
    wait_for_image(qtbot, window, query_image)
    gt = truth[query_image]
    drag_on_canvas(window.canvas, (gt.x, gt.y), (gt.x2, gt.y2))
    window.category_box.setEditText("thing")
    with qtbot.waitSignal(window.controller.searchFinished, timeout=60_000) as searched:
        window.review.find_similar()
    outcome = searched.args[0]
    assert 0 < outcome.searched_images < outcome.total_images == len(truth)
    assert "still being indexed" in window.results.summary.text()
    with qtbot.waitSignal(window.controller.indexingFinished, timeout=INDEX_TIMEOUT_MS) as finished:
        pass
    assert finished.args[0].images == len(truth)  # indexing resumed and completed


def test_feedback_more_examples_and_labelled_marks(qtbot, tmp_path, indexed_folder, window_on):
    photos, truth = fresh_copy(indexed_folder, tmp_path)
    window = window_on(photos)
    with qtbot.waitSignal(window.controller.indexingFinished, timeout=INDEX_TIMEOUT_MS) as indexed:
        pass
    assert indexed.args[0].reused == len(truth) and indexed.args[0].indexed == 0  # resumed, nothing redone
    query_image = sorted(truth)[0]
    wait_for_image(qtbot, window, query_image)
    window.category_box.setEditText("thing")
    window.review.draft = truth[query_image]
    window.canvas.setFocus()
    with qtbot.waitSignal(window.controller.searchFinished, timeout=60_000):
        press(qtbot, window, Qt.Key_Enter)  # the keypad's Enter, on the photo
    doc = window.document
    entries = list(doc.hits.entries)
    assert len(entries) >= 4

    # A hit overlapping a label of its category on its image is marked, and can be hidden.
    doc.add_annotation(entries[3].image, "thing", entries[3].box)
    row = next(r for r in window.results.model.rows() if r.key == entries[3].key)
    assert row.labelled
    window.results.hide_labelled.setChecked(True)
    assert entries[3].key not in [r.key for r in window.results.model.rows()]
    assert "hidden" in window.results.summary.text()
    window.results.hide_labelled.setChecked(False)

    # Relevance feedback: decisions, then a re-ranking of the rest by the engine's scores.
    doc.decide_hits([entries[0].key], ACCEPTED)
    doc.decide_hits([entries[1].key], REJECTED)
    before = {e.key: e.score for e in doc.hits.entries}
    window.action["rerank"].trigger()
    assert doc.hits.reranked == 1 and "re-ranked 1×" in window.results.summary.text()
    assert "Re-ranked" in window.message_bar.text()
    pending = [e for e in doc.hits.entries if e.status == PENDING]
    assert [e.score for e in pending] == sorted((e.score for e in pending), reverse=True)
    assert any(abs(e.score - before[e.key]) > 1e-6 for e in pending)  # the feedback changed the scores
    assert [e.status for e in doc.hits.entries[:2]] == [ACCEPTED, REJECTED]
    # ... and the accepted box joins the query's windows: the engine re-localises the rest
    with qtbot.waitSignal(window.controller.hitsRelocated, timeout=60_000) as relocated:
        pass
    result = relocated.args[0]
    assert result.session is doc.hits and set(result.boxes) == {e.key for e in pending}
    for e in pending:
        assert e.box == result.boxes[e.key] and e.hit.box == e.box  # moved (or already there)
    rejected = entries[1]
    assert set(result.second_looks) <= {rejected.image}  # the rejected photo may get a new box ...
    for box in result.second_looks.values():  # ... never on the rejected one
        assert box_iou(box, rejected.box) < REJECTED_IOU
    # A second look at the rejected photo arrives: a new undecided hit there, and a message.
    elsewhere = Box(0, 0, 8, 8)
    before = len(doc.hits.entries)
    window.controller.hitsRelocated.emit(Relocated(doc.hits, {}, {rejected.image: elsewhere}))
    again = [e for e in doc.hits.entries if e.image == rejected.image and e.status == PENDING]
    assert len(doc.hits.entries) == before + 1 and [e.box for e in again] == [elsewhere]
    assert "new box to review" in window.message_bar.text()
    row = next(r for r in window.results.model.rows() if r.key == again[0].key)
    model = window.results.model
    assert row.look == 2 and "look 2" in model.data(model.index(model.row_of(row.key)), Qt.ToolTipRole)
    # Undoing the rejection withdraws the look it led to: the photo waits once, not twice.
    window.action["undo"].trigger()
    waiting_there = [r for r in model.rows() if r.image == rejected.image]
    assert [(r.key, r.look, r.status) for r in waiting_there] == [(rejected.key, 1, PENDING)]
    window.action["redo"].trigger()
    assert [r.status for r in model.rows() if r.image == rejected.image] == [REJECTED]
    # Newer decisions make a re-localisation still in flight stale: it is cancelled, not applied.
    received = []
    window.controller.hitsRelocated.connect(received.append)
    waiting = {e.key: e.hit for e in doc.hits.entries if e.status == PENDING}
    accepted = [(entries[0].image, entries[0].box)]
    for _ in range(2):
        window.controller.relocate(doc.hits, window.review.outcome.windows, accepted, waiting)
    qtbot.waitUntil(lambda: len(received) == 1, timeout=60_000)
    qtbot.wait(200)
    assert len(received) == 1  # the first one's answer came first (one worker) and was dropped

    # "Find more like these": every label of the category is an example, rejected hits negatives.
    with qtbot.waitSignal(window.controller.searchFinished, timeout=60_000) as searched:
        window.action["find_more"].trigger()
    request = searched.args[0].request
    query = (query_image, truth[query_image])  # searched with, not confirmed as a label: still an example
    assert sorted(request.positives) == sorted([(a.image, a.box) for a in doc.annotations() if a.category == "thing"]
                                               + [query])
    assert request.negatives == [(entries[1].image, entries[1].box)]
    assert doc.hits.query_id in {q.id for q in doc.store.queries}

    # Every few decisions the rest is re-ranked on its own.
    window.prefs.feedback_every = 2
    window.results.select_key(doc.hits.entries[0].key)
    window.review.decide(ACCEPTED)
    assert doc.hits.reranked == 0
    window.review.decide(REJECTED)
    assert doc.hits.reranked == 1


def test_the_latest_search_wins(qtbot, tmp_path, indexed_folder, window_on):
    photos, truth = fresh_copy(indexed_folder, tmp_path)
    window = window_on(photos)
    qtbot.waitSignal(window.controller.indexingFinished, timeout=INDEX_TIMEOUT_MS).wait()
    first, second = sorted(truth)[:2]
    outcomes = []
    window.controller.searchFinished.connect(outcomes.append)
    window.controller.search(SearchRequest("old", [(first, truth[first])], exclude_image=first))
    window.controller.search(SearchRequest("new", [(second, truth[second])], exclude_image=second))
    qtbot.waitUntil(lambda: not window.controller.is_searching, timeout=60_000)
    qtbot.wait(200)
    assert [o.request.category for o in outcomes] == ["new"]
    assert window.document.hits.category == "new"


def test_settings_change_reindexes_after_confirmation(qtbot, tmp_path, indexed_folder, window_on):
    photos, truth = fresh_copy(indexed_folder, tmp_path)
    window = window_on(photos)
    qtbot.waitSignal(window.controller.indexingFinished, timeout=INDEX_TIMEOUT_MS).wait()
    asked = []
    window.confirm = lambda title, text: asked.append(title) or True
    with qtbot.waitSignal(window.controller.indexingFinished, timeout=INDEX_TIMEOUT_MS) as rebuilt:
        window.project_actions.apply_preferences(Preferences(max_side=256, device="cpu"))
    assert asked and rebuilt.args[0].indexed == len(truth)
    assert window.project.manifest()["extractor"]["max_side"] == 256


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message shown without a GPU")
def test_choosing_a_missing_gpu_says_so(qtbot, tmp_path, indexed_folder, window_on):
    photos, _ = fresh_copy(indexed_folder, tmp_path)
    window = window_on(photos, Preferences(device="cuda"))
    with qtbot.waitSignal(window.controller.failed, timeout=INDEX_TIMEOUT_MS) as failed:
        pass
    assert failed.args[1].startswith("No CUDA GPU")  # written for people, no exception names
    assert window.message_bar.isVisible() and "No CUDA GPU" in window.message_bar.text()
    assert not window.progress.bar.isVisible()  # nothing pretends to be running


def test_import_coco_is_one_undo_step(qtbot, tmp_path, indexed_folder, window_on):
    photos, truth = fresh_copy(indexed_folder, tmp_path)
    names = sorted(truth)[:3]
    coco = {"images": [{"id": i, "file_name": n, "width": _size(photos / n)[0], "height": _size(photos / n)[1]}
                       for i, n in enumerate(names, start=1)],
            "categories": [{"id": 7, "name": "target"}],
            "annotations": [{"id": i, "image_id": i, "category_id": 7, "bbox": truth[n].as_list(), "iscrowd": 0}
                            for i, n in enumerate(names, start=1)]}
    path = tmp_path / "in.json"
    path.write_text(json.dumps(coco))
    window = window_on(photos)
    qtbot.waitUntil(lambda: window.document is not None, timeout=INDEX_TIMEOUT_MS)
    window.ask_open_path = lambda *args: str(path)
    window.action["import_coco"].trigger()
    doc = window.document
    assert sorted((a.image, a.category, a.source) for a in doc.annotations()) == [(n, "target", "import") for n in names]
    assert "Imported 3 labels" in window.message_bar.text()
    doc.undo_stack.undo()
    assert doc.annotations() == [] and not doc.has_category("target")


def test_engine_errors_are_shown_not_raised(qtbot, tmp_path, window_on):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "broken.jpg").write_bytes(b"not a jpeg at all")
    window = window_on(photos)
    with qtbot.waitSignal(window.controller.indexingFinished, timeout=INDEX_TIMEOUT_MS) as indexed:
        pass
    assert indexed.args[0].skipped
    assert window.message_bar.isVisible() and window.message_bar.level == "error"
    assert "broken.jpg" in window.message_bar.text()
    qtbot.waitUntil(lambda: "unreadable" in window.file_model.state("broken.jpg").status_text(), timeout=5_000)
    window.show_image("broken.jpg")
    qtbot.waitUntil(lambda: "Cannot show broken.jpg" in window.canvas_hint.text(), timeout=5_000)
    assert window.stack.currentWidget() is window.canvas_hint


def test_layout_is_remembered(qtbot, tmp_path, window_on):
    window = window_on(tmp_path)
    results = window.findChild(QDockWidget, "dock_results")
    results.setFloating(True)
    window.close()
    again = window_on(tmp_path)
    assert again.findChild(QDockWidget, "dock_results").isFloating()


def _size(path):
    from dasr_annotator.engine.store.imageio import image_size

    return image_size(path)

