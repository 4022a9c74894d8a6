"""The real window on real photos, driven like a person would: open a folder, wait for indexing,
draw a box, find similar, triage with keys, undo/redo, export COCO. Offscreen, embedded backbone
(fast mode), isolated settings (conftest). The gestures (drawing, dragging a box, keys, the slider,
buttons, the settings dialog) are driven with real events; where a test is about what the engine
answers rather than the gesture (feedback re-ranking scores, a stale re-localisation), it sets the
document up directly and says so."""
from __future__ import annotations

import json
import shutil

import pytest
from PySide6.QtCore import QPointF, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QDockWidget

from dasr_annotator.app.gui.controller import Refined, SearchRequest
from dasr_annotator.app.gui.document import ACCEPTED, PENDING, REJECTED
from dasr_annotator.app.gui.main_window import MainWindow
from dasr_annotator.app.gui.settings import Preferences
from dasr_annotator.engine.dasr.relocate import box_iou_matrix
from dasr_annotator.engine.dasr.relocate import REJECTED_IOU
from dasr_annotator.engine.search.refine import blended_score
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
        window.ask_label_folder = lambda *args: None
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
    """Labelled marks, feedback re-ranking, stale re-localisations and "find more", with the
    decisions set on the document (the keys that make them: the tests above and below)."""
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

    # ... then the undecided hits are refined again, the accepted box one more example; a chunk of
    # the search's own refinement, overtaken by the decisions, is never applied
    def undecided():
        return {e.key for e in doc.hits.entries if e.status == PENDING}

    chunks = []
    window.controller.hitsRefined.connect(chunks.append)
    with qtbot.waitSignal(window.controller.hitsRefined, timeout=60_000,
                          check_params_cb=lambda r: r.session is doc.hits and set(r.boxes) <= undecided()) as refined:
        pass
    chunk = refined.args[0]
    assert chunk.boxes and set(chunk.box_scores) == set(chunk.boxes)
    for e in doc.hits.entries:
        if e.key in chunk.boxes:  # refined boxes replace the stored-map ones
            assert e.box == chunk.boxes[e.key] and e.hit.box == e.box
    # ... and once all are refined, the undecided hits are ordered by region and box score together,
    # the annotator staying on the hit they were at
    current = window.results.current_key()

    def worth_reviewing():
        return sum(e.status == PENDING and e.score >= window.results.threshold() for e in doc.hits.entries)

    worth = worth_reviewing()
    qtbot.waitUntil(lambda: any(c.complete for c in chunks), timeout=120_000)
    window.controller.hitsRefined.disconnect(chunks.append)
    box_scores = {k: v for c in chunks if not c.complete for k, v in c.box_scores.items()}
    assert chunks[-1].complete and chunks[-1].box_scores == box_scores  # the last one carries them all
    pending = [e for e in doc.hits.entries if e.status == PENDING]
    assert box_scores and [e.score for e in pending] == sorted((e.score for e in pending), reverse=True)
    for e in pending:
        assert e.score == pytest.approx(blended_score(e.hit.score, box_scores.get(e.key)))
    assert window.results.current_key() == current
    assert worth_reviewing() == worth  # the scores changed scale, the threshold followed them
    # every hit boxed while second looks may still improve a few (a CPU emits those last): said so
    total = chunks[-1].total
    window.controller.hitsRefined.emit(Refined(doc.hits, {}, total, total))
    assert window.statusBar().currentMessage().startswith(f"All {total} hits have refined boxes")
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


def test_the_latest_search_wins(qtbot, tmp_path, indexed_folder, window_on, monkeypatch):
    """Two searches with different queries, asked while the engine is busy (as behind an indexing
    batch): the older one is cancelled before it runs, and the window shows the newer one's hits."""
    import threading

    from dasr_annotator.engine.search.searcher import Searcher

    photos, truth = fresh_copy(indexed_folder, tmp_path)
    window = window_on(photos)
    qtbot.waitSignal(window.controller.indexingFinished, timeout=INDEX_TIMEOUT_MS).wait()
    ran = []  # the searches the engine really ran: (excluded query image, hit images)
    real_search = Searcher.search

    def spy(self, *args, **kwargs):
        hits = real_search(self, *args, **kwargs)
        ran.append((kwargs.get("exclude_image"), [h.image for h in hits]))
        return hits

    monkeypatch.setattr(Searcher, "search", spy)
    old = next(p for p in sorted(truth) if p.startswith("Box/"))
    new = next(p for p in sorted(truth) if p.startswith("Dog/"))
    busy = threading.Event()
    window.controller._run("Hold the engine", lambda progress, cancel: busy.wait(30))
    outcomes = []
    window.controller.searchFinished.connect(outcomes.append)
    window.controller.search(SearchRequest("old", [(old, truth[old])], exclude_image=old))
    window.controller.search(SearchRequest("new", [(new, truth[new])], exclude_image=new))
    busy.set()
    qtbot.waitUntil(lambda: not window.controller.is_searching, timeout=60_000)
    qtbot.wait(200)
    assert [exclude for exclude, _ in ran] == [new]  # the old search never ran
    [(_, images)] = ran
    assert [o.request.category for o in outcomes] == ["new"]
    assert window.document.hits.category == "new"
    assert [r.image for r in window.results.model.rows()] == images and images[0].startswith("Dog/")


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


def test_import_and_export_every_format_from_the_file_menu(qtbot, tmp_path, indexed_folder, window_on):
    """File > Import > YOLO folder (written here by hand, as the format's docs describe it) is one
    undo step; File > Export > Pascal VOC folder writes what the document holds."""
    photos, truth = fresh_copy(indexed_folder, tmp_path)
    names = sorted(truth)[:2]
    yolo = tmp_path / "yolo"
    (yolo / "labels").mkdir(parents=True)
    (yolo / "classes.txt").write_text("target\n")
    for name in names:
        (w, h), box = _size(photos / name), truth[name]
        label = (yolo / "labels" / name).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(f"0 {(box.x + box.w / 2) / w} {(box.y + box.h / 2) / h} {box.w / w} {box.h / h}\n")
    window = window_on(photos)
    qtbot.waitUntil(lambda: window.document is not None, timeout=INDEX_TIMEOUT_MS)
    file_menu = window.menuBar().actions()[0].menu()
    submenus = {a.text().replace("&", ""): a.menu() for a in file_menu.actions() if a.menu()}
    assert set(submenus) == {"Import", "Export"}
    assert [a.text().replace("&", "") for a in submenus["Import"].actions()] == \
        ["COCO JSON…", "YOLO folder…", "Pascal VOC folder…", "CVAT XML…", "labelme folder…"]

    window.ask_label_folder = lambda *args: str(yolo)
    window.action["import_yolo"].trigger()
    doc = window.document
    imported = sorted((a.image, a.category, a.source) for a in doc.annotations())
    assert imported == [(n, "target", "import") for n in names]
    for ann in doc.annotations():
        assert all(abs(a - b) < 0.01 for a, b in zip(ann.box.as_list(), truth[ann.image].as_list()))
    assert "Imported 2 labels" in window.message_bar.text()
    window.action["import_yolo"].trigger()  # again: nothing doubled
    assert len(doc.annotations()) == 2 and "2 already present" in window.message_bar.text()

    window.ask_label_folder = lambda *args: str(tmp_path / "voc")
    window.action["export_voc"].trigger()
    assert "no place for scores" in window.message_bar.text()
    assert sorted(p.relative_to(tmp_path / "voc").with_suffix("").as_posix() for p in (tmp_path / "voc").rglob("*.xml")) \
        == sorted(n.rsplit(".", 1)[0] for n in names)
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



def _damaged_labels_folder(tmp_path):
    """A folder whose labels file is damaged, its backup (the previous save, one label) good."""
    from dasr_annotator.engine.project.project import Project

    photos = tmp_path / "photos"
    photos.mkdir()
    store = Project.open(photos).annotations
    store.add("a.jpg", "mug", Box(2, 2, 20, 20))
    store.save()
    store.add("b.jpg", "mug", Box(4, 4, 10, 12))
    store.save()
    labels = photos / ".dasr" / "annotations.json"
    labels.write_bytes(labels.read_bytes()[:40])
    return photos, labels


def test_damaged_labels_are_offered_the_backup(qtbot, tmp_path, window_on):
    photos, labels = _damaged_labels_folder(tmp_path)
    damaged, backup = labels.read_bytes(), labels.with_name("annotations.json.bak").read_bytes()
    asked = []
    window = window_on(None)
    window.confirm = lambda title, text: asked.append((title, text)) or True
    window.open_folder(photos)
    qtbot.waitUntil(lambda: window.document is not None, timeout=30_000)
    [(title, text)] = asked
    assert "backup" in title and "annotations.json.bak" in text and "1 label)" in text and "invalid JSON" in text
    assert [(a.image, a.category) for a in window.document.annotations()] == [("a.jpg", "mug")]
    assert labels.read_bytes() == backup and labels.with_name("annotations.json.damaged").read_bytes() == damaged
    assert "Restored 1 labels" in window.message_bar.text()
    assert window.action["export_coco"].isEnabled()


def test_declining_the_backup_leaves_the_damaged_labels_alone(qtbot, tmp_path, window_on):
    photos, labels = _damaged_labels_folder(tmp_path)
    damaged = labels.read_bytes()
    window = window_on(None)
    asked = []
    window.confirm = lambda title, text: asked.append(title) or False
    with qtbot.waitSignal(window.controller.projectOpened, timeout=30_000):
        window.open_folder(photos)
    assert len(asked) == 1 and window.document is None
    assert window.message_bar.level == "error" and "Labels not loaded" in window.message_bar.text()
    assert "was not restored" in window.message_bar.text()
    assert not window.action["export_coco"].isEnabled() and not window.action["import_coco"].isEnabled()
    window.close()
    assert labels.read_bytes() == damaged and not labels.with_name("annotations.json.damaged").exists()


def _search_with_a_drawn_box(qtbot, window, truth, query_image, category):
    """Draw the query box on the photo with the mouse, type the category, press Enter."""
    wait_for_image(qtbot, window, query_image)
    gt = truth[query_image]
    drag_on_canvas(window.canvas, (gt.x, gt.y), (gt.x2, gt.y2))
    window.activateWindow()
    qtbot.waitActive(window)
    window.category_box.lineEdit().setFocus()
    QTest.keyClicks(window.category_box.lineEdit(), category)
    with qtbot.waitSignal(window.controller.searchFinished, timeout=60_000) as searched:
        QTest.keyClick(window.category_box.lineEdit(), Qt.Key_Return)
    return searched.args[0].hits


def _far_corner(box: Box, gt: Box, width: int, height: int) -> Box:
    """`box` moved to the corner of the photo farthest from the instance `gt`."""
    corners = [Box(x, y, box.w, box.h) for x in (0, width - box.w) for y in (0, height - box.h)]
    return max(corners, key=lambda c: (c.center[0] - gt.center[0]) ** 2 + (c.center[1] - gt.center[1]) ** 2)


def test_a_misplaced_box_dragged_rejected_comes_back_as_a_second_look(qtbot, tmp_path, indexed_folder, window_on):
    """Drag a hit's box off the instance (undo and redo the drag), reject it, accept a good hit,
    re-rank (Ctrl+R): the engine's re-localisation looks at the rejected photo again and the
    window lists it as "look 2"; undoing the rejection withdraws that look."""
    photos, truth = fresh_copy(indexed_folder, tmp_path)
    window = window_on(photos)
    qtbot.waitSignal(window.controller.indexingFinished, timeout=INDEX_TIMEOUT_MS).wait()
    query_image = sorted(p for p in truth if p.startswith("Box/"))[0]
    hits = _search_with_a_drawn_box(qtbot, window, truth, query_image, "box")
    doc = window.document
    first, second = doc.hits.entries[0], doc.hits.entries[1]
    assert first.image.startswith("Box/") and second.image.startswith("Box/"), [h.image for h in hits]
    qtbot.waitUntil(lambda: window.current_image == first.image and window.canvas_image == first.image
                    and window.canvas.selected_keys() == [f"hit:{first.key}"], timeout=10_000)

    # Drag the hit's box (from its centre) to the far corner of the photo.
    placed = first.box
    target = _far_corner(placed, truth[first.image], *_size(photos / first.image))
    drag_on_canvas(window.canvas, placed.center, target.center)
    tolerance = 2.0 / window.canvas.zoom() + 1.0
    moved = first.box
    assert abs(moved.x - target.x) <= tolerance and abs(moved.y - target.y) <= tolerance
    assert (moved.w, moved.h) == pytest.approx((placed.w, placed.h)) and box_iou(moved, truth[first.image]) == 0
    assert window.canvas.overlay_box(f"hit:{first.key}") == moved
    press(qtbot, window, Qt.Key_Z, Qt.ControlModifier)
    assert first.box == placed  # the whole drag is one undo step
    press(qtbot, window, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)
    assert first.box == moved

    # Reject the misplaced box, accept the next hit, re-rank: the engine looks again.
    window.results.view.setFocus()
    press(qtbot, window, Qt.Key_N)
    assert first.status == REJECTED and window.results.current_key() == second.key
    press(qtbot, window, Qt.Key_Y)
    assert second.status == ACCEPTED
    with qtbot.waitSignal(window.controller.hitsRelocated, timeout=60_000) as relocated:
        press(qtbot, window, Qt.Key_R, Qt.ControlModifier)
    result = relocated.args[0]
    assert set(result.second_looks) == {first.image}, result.second_looks
    look = result.second_looks[first.image]
    assert box_iou(look, moved) < REJECTED_IOU  # never back onto the rejected box
    model = window.results.model
    again = [r for r in model.rows() if r.image == first.image and r.status == PENDING]
    assert [(r.look, r.box) for r in again] == [(2, look)]
    assert "look 2" in model.data(model.index(model.row_of(again[0].key)), Qt.ToolTipRole)
    assert "new box to review" in window.message_bar.text()

    # Undoing the rejection withdraws the look it led to: the photo waits once, not twice.
    for _ in range(5):  # back through the re-ranking and the acceptance, to before the rejection
        if first.status != REJECTED:
            break
        window.action["undo"].trigger()
    assert [(r.key, r.look, r.status) for r in model.rows() if r.image == first.image] == [(first.key, 1, PENDING)]


def test_threshold_accept_all_and_category_number_keys(qtbot, tmp_path, indexed_folder, window_on):
    photos, truth = fresh_copy(indexed_folder, tmp_path)
    window = window_on(photos)
    qtbot.waitSignal(window.controller.indexingFinished, timeout=INDEX_TIMEOUT_MS).wait()
    doc = window.document
    for name in ("cup", "dog", "person"):
        doc.add_category(name)
    window.canvas.setFocus()
    for key, name in ((Qt.Key_2, "dog"), (Qt.Key_3, "person"), (Qt.Key_1, "cup")):
        press(qtbot, window, key)
        assert window.category() == name and window.categories.current() == name
    press(qtbot, window, Qt.Key_9)  # no ninth category: nothing changes
    assert window.category() == "cup"

    query_image = sorted(p for p in truth if p.startswith("Dog/"))[0]
    _search_with_a_drawn_box(qtbot, window, truth, query_image, "")
    entries = doc.hits.entries
    assert len(entries) >= 4 and doc.hits.category == "cup"
    # Move the threshold with the keyboard on the slider; then Ctrl+Shift+A.
    slider = window.results.slider
    slider.setFocus()
    before = window.results.threshold()
    QTest.keyClick(slider, Qt.Key_PageUp)
    threshold = window.results.threshold()
    assert threshold > before and window.results.threshold_label.text() == f"{threshold:.3f}"
    above = {e.key for e in entries if e.score >= threshold}
    assert 0 < len(above) < len(entries), [e.score for e in entries]
    press(qtbot, window, Qt.Key_A, Qt.ControlModifier | Qt.ShiftModifier)
    assert {e.key for e in entries if e.status == ACCEPTED} == above
    assert all(e.status == PENDING for e in entries if e.key not in above)
    assert sorted(a.image for a in doc.annotations() if a.source == "search") == sorted(
        e.image for e in entries if e.key in above)
    press(qtbot, window, Qt.Key_Z, Qt.ControlModifier)  # one undo step
    assert all(e.status == PENDING for e in entries)


def test_cancel_button_stops_indexing_and_it_resumes_next_time(qtbot, tmp_path, dev_data, dev_manifest, window_on):
    photos = tmp_path / "photos"
    truth = copy_photos(dev_data, dev_manifest, photos)
    window = window_on(photos)
    qtbot.waitUntil(lambda: window.controller.is_indexing and window.progress.bar.value() >= 1, timeout=INDEX_TIMEOUT_MS)
    assert window.progress.cancel.isVisible()
    with qtbot.waitSignal(window.controller.indexingStopped, timeout=60_000) as stopped:  # at the next photo
        qtbot.mouseClick(window.progress.cancel, Qt.LeftButton)
    assert stopped.args == ["cancelled"] and not window.controller.is_indexing
    assert "cancelled" in window.progress.task.text() and not window.progress.cancel.isVisible()
    window.close()
    again = window_on(photos)
    with qtbot.waitSignal(again.controller.indexingFinished, timeout=INDEX_TIMEOUT_MS) as finished:
        pass
    report = finished.args[0]
    assert report.images == len(truth) and report.indexed < len(truth) and report.reused >= 1


def test_settings_dialog_and_declining_a_rebuild(qtbot, tmp_path, indexed_folder, window_on):
    """File > Settings through its widgets: a new image size asks for a rebuild; declined, the
    index stays as it was and the preference is kept for later."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QDialogButtonBox, QSpinBox

    from dasr_annotator.app.gui import settings as app_settings
    from dasr_annotator.widgets.dialogs import SettingsDialog

    photos, _ = fresh_copy(indexed_folder, tmp_path)
    window = window_on(photos)
    qtbot.waitSignal(window.controller.indexingFinished, timeout=INDEX_TIMEOUT_MS).wait()
    manifest = window.project.manifest_path.read_bytes()
    asked = []
    window.confirm = lambda title, text: asked.append(title) or False
    seen = []

    def fill_in():
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, SettingsDialog):
            QTimer.singleShot(50, fill_in)
            return
        spins = dialog.findChildren(QSpinBox)
        side = next(s for s in spins if s.value() == window.prefs.max_side)
        top_k = next(s for s in spins if s.value() == window.prefs.top_k)
        for spin, value in ((side, "256"), (top_k, "40")):
            spin.setFocus()
            spin.selectAll()
            QTest.keyClicks(spin, value)
        seen.append((side.value(), top_k.value()))
        ok = dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.Ok)
        qtbot.mouseClick(ok, Qt.LeftButton)

    QTimer.singleShot(50, fill_in)
    window.action["settings"].trigger()  # modal: returns once the dialog is closed
    assert seen == [(256, 40)] and asked == ["Re-index the folder?"]
    assert (window.prefs.max_side, window.prefs.top_k) == (256, 40)
    assert app_settings.load_preferences().max_side == 256  # saved
    qtbot.wait(300)
    assert not window.controller.is_indexing
    assert window.project.manifest_path.read_bytes() == manifest
    assert window.project.manifest()["extractor"]["max_side"] != 256
