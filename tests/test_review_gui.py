"""The review as an annotator drives it (issue 23): keys, mouse drags on the canvas, the results
strip. The window is real; the engine is left out: indexing is not started and the search's
results are handed to the window as the controller would (`searchFinished`), with region vectors
made so that relevance feedback re-orders them in a known way. Offscreen."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QImage
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QComboBox, QDockWidget

from dasr_annotator.app.gui.controller import CandidateRegions, Controller, Relocated, SearchOutcome, SearchRequest
from dasr_annotator.app.gui.document import ACCEPTED, PENDING, PENDING_COLOR, REJECTED, _color_distance
from dasr_annotator.app.gui.main_window import MainWindow
from dasr_annotator.app.gui.settings import Preferences
from dasr_annotator.engine.dasr.relocate import inscribed_ellipse
from dasr_annotator.engine.types import Box, Hit

DIM = 8
SIZE = (320, 240)


def unit(*weights) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[:len(weights)] = weights
    return v / np.linalg.norm(v)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(8):
        image = QImage(*SIZE, QImage.Format_RGB888)
        image.fill(QColor.fromHsv(i * 40, 120, 200))
        assert image.save(str(folder / f"p{i}.png"))
    return folder


@pytest.fixture
def review(qtbot, photos, monkeypatch):
    """A window on the photos, no indexing; searches are recorded instead of run."""
    monkeypatch.setattr(Controller, "start_indexing", lambda self, rebuild=False: None)
    window = MainWindow(photos, prefs=Preferences(device="cpu"))
    window.confirm = lambda *args: False
    window.searches = []
    window.controller.search = window.searches.append
    qtbot.addWidget(window)
    window.resize(1400, 900)
    window.show()
    qtbot.waitExposed(window)
    qtbot.waitUntil(lambda: window.document is not None and window.canvas_image == "p0.png", timeout=30_000)
    yield window
    window.close()
    QApplication.processEvents()


def deliver(window, category, scores, vectors=None, boxes=None, positives=None, images=None, more=()):
    """The controller's answer to a search: one hit (and one region) per photo, and the regions
    `more` ((image, box, vector): other regions of the hit photos)."""
    images = images or [f"p{i + 1}.png" for i in range(len(scores))]
    boxes = boxes or [Box(100, 80, 60, 50)] * len(scores)
    vectors = list(vectors) if vectors is not None else [unit(s, 1 - s) for s in scores]
    hits = [Hit(image, score, box, inscribed_ellipse(box)) for image, score, box in zip(images, scores, boxes)]
    region_images = list(images) + [m[0] for m in more]
    region_boxes = list(boxes) + [m[1] for m in more]
    vectors = np.stack(vectors + [m[2] for m in more])
    regions = CandidateRegions(vectors.astype(np.float32), region_images,
                               np.array([b.as_list() for b in region_boxes], float),
                               np.array([[b.center[0], b.center[1], b.w / 2, b.h / 2, 0.0] for b in region_boxes]))
    request = SearchRequest(category, positives or [("p0.png", Box(10, 10, 60, 50))])
    outcome = SearchOutcome(request, hits, unit(1)[None], regions, len(window.file_model.paths()),
                            len(window.file_model.paths()))
    window.controller.searchFinished.emit(outcome)
    QApplication.processEvents()
    return outcome


def key(window, qt_key, modifier=Qt.NoModifier, widget=None):
    QTest.keyClick(widget or window.results.view, qt_key, modifier)
    QApplication.processEvents()


def drag(canvas, start, end, steps=5):
    viewport = canvas.viewport()
    p1, p2 = canvas.mapFromScene(QPointF(*start)), canvas.mapFromScene(QPointF(*end))
    QTest.mousePress(viewport, Qt.LeftButton, Qt.NoModifier, p1)
    for i in range(1, steps + 1):
        QTest.mouseMove(viewport, p1 + (p2 - p1) * i / steps)
    QTest.mouseRelease(viewport, Qt.LeftButton, Qt.NoModifier, p2)
    QApplication.processEvents()


def current_entry(window):
    return window.document.hits.entry(window.results.current_key())


def show(qtbot, window, rel):
    window.show_image(rel)
    qtbot.waitUntil(lambda: window.canvas_image == rel, timeout=10_000)


# ---- 1: the crash flow ------------------------------------------------------------------------
def test_crash_flow_survives_resets_during_edits(qtbot, review):
    """Find more with "Hide labelled" on, next photo, zoom to ~250 %, draw, type a new
    category, Enter; then a label's category edited in the table while the model resets, boxes
    removed while selected and zoomed. Run under PYTHONFAULTHANDLER=1 for a native trace."""
    w = review
    w.results.hide_labelled.setChecked(True)
    deliver(w, "dog", [0.9, 0.8, 0.7, 0.6])
    key(w, Qt.Key_Y)
    key(w, Qt.Key_D, widget=w.canvas)
    for _ in range(4):  # 1.25^4 ~ 2.4x the fitted zoom
        key(w, Qt.Key_Equal, Qt.ControlModifier, widget=w.canvas)
    assert w.canvas.zoom() > 2
    qtbot.waitUntil(lambda: w.canvas_image == w.current_image, timeout=10_000)
    centre = w.canvas.mapToScene(w.canvas.viewport().rect().center())
    drag(w.canvas, (centre.x() - 20, centre.y() - 15), (centre.x() + 20, centre.y() + 15))
    assert w.review.draft is not None
    w.category_box.lineEdit().selectAll()
    QTest.keyClicks(w.category_box.lineEdit(), "brandnew")
    key(w, Qt.Key_Return, widget=w.category_box.lineEdit())
    qtbot.waitUntil(lambda: len(w.searches) == 1, timeout=5_000)
    # Ctrl+Enter keeps the query box: a new category appears while the combo box has focus.
    key(w, Qt.Key_Return, Qt.ControlModifier, widget=w.category_box.lineEdit())
    assert "brandnew" in [c.name for c in w.document.categories]
    # Edit a label's category in the table, commit with Enter: the document edit resets the
    # table's model (its editor goes) after the commit has returned.
    show(qtbot, w, w.current_image)
    table = w.labels
    assert table.model_.rowCount() >= 1
    index = table.model_.index(0, 0)
    table.setCurrentIndex(index)
    table.edit(index)
    editor = table.findChild(QComboBox)
    assert editor is not None and editor.isVisible()
    editor.lineEdit().selectAll()
    QTest.keyClicks(editor, "other")  # typed where the keyboard focus is: the editor
    QTest.keyClick(editor, Qt.Key_Return)
    qtbot.waitUntil(lambda: "other" in [c.name for c in w.document.categories], timeout=5_000)
    # Select a box, zoom in and out, delete it while selected, undo, redo, switch photos.
    ann = w.document.annotations(w.current_image)[0]
    w.canvas.select([f"ann:{ann.id}"])
    for _ in range(3):
        key(w, Qt.Key_Minus, Qt.ControlModifier, widget=w.canvas)
    key(w, Qt.Key_Delete, widget=w.canvas)
    assert not w.document.has_annotation(ann.id)
    key(w, Qt.Key_Z, Qt.ControlModifier, widget=w.canvas)
    key(w, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier, widget=w.canvas)
    for _ in range(3):
        key(w, Qt.Key_A, widget=w.canvas)
        key(w, Qt.Key_D, widget=w.canvas)
    qtbot.wait(200)
    assert w.document.annotations()  # still alive, labels intact


# ---- 2: re-ranking keeps the reviewer's place ---------------------------------------------
def test_rerank_goes_to_the_best_undecided_hit_and_keys_wait(qtbot, review):
    w = review
    w.prefs.feedback_every = 5
    # Four true hits (like the query), one false one, then: p6 looks like the false one (it falls
    # to the bottom on re-ranking), p7 looks like the query (it rises to the top).
    vectors = [unit(1)] * 4 + [unit(0, 1), unit(0, 1), unit(0.9, 0.1)]
    scores = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65]
    elsewhere = Box(30, 30, 40, 40)  # another region of p7, like the query
    deliver(w, "dog", scores, vectors, more=[("p7.png", elsewhere, unit(1))])
    for _ in range(4):
        key(w, Qt.Key_Y)
    key(w, Qt.Key_N)  # the fifth decision: an automatic re-rank
    hits = w.document.hits
    assert hits.reranked == 1
    pending = [r for r in w.results.model.rows() if r.status == PENDING]
    assert w.results.current_key() == pending[0].key  # the best undecided hit, not the one moved down
    assert w.document.hits.entry(pending[0].key).score == max(e.score for e in hits.entries if e.status == PENDING)
    qtbot.waitUntil(lambda: w.canvas.selected_keys() == [f"hit:{pending[0].key}"], timeout=10_000)
    # A key press right after the re-rank moved the selection is not taken as a decision ...
    key(w, Qt.Key_N)
    assert hits.entry(pending[0].key).status == PENDING
    assert "Re-ranked" in w.statusBar().currentMessage()
    qtbot.wait(700)  # ... once the annotator had time to see it, it is.
    key(w, Qt.Key_N)
    assert hits.entry(pending[0].key).status == REJECTED
    # A second look at the rejected photo ranks above the next hit: the review goes on there.
    assert hits.entry(pending[0].key).image == "p7.png"
    key(w, Qt.Key_R, Qt.ControlModifier)
    nxt = w.results.current_key()
    assert nxt == [r for r in w.results.model.rows() if r.status == PENDING][0].key
    w.controller.hitsRelocated.emit(Relocated(hits, {}, {"p7.png": elsewhere}))
    look = [e for e in hits.entries if e.look == 2]
    assert look and look[0].score > hits.entry(nxt).score
    assert w.results.current_key() == look[0].key


# ---- 3: each query's review is kept -------------------------------------------------------
def test_a_new_search_keeps_the_earlier_review(qtbot, review):
    w = review
    deliver(w, "dog", [0.9, 0.8, 0.7, 0.6])
    first = w.document.hits
    key(w, Qt.Key_Y)  # p1 accepted
    key(w, Qt.Key_N)  # p2 rejected
    # The accepted label is resized (a handle drag on the canvas) to fit the object tightly.
    accepted = first.entries[0]
    show(qtbot, w, "p1.png")
    w.canvas.select([f"ann:{accepted.annotation_id}"])
    box = w.document.annotation(accepted.annotation_id).box
    drag(w.canvas, (box.x2, box.y2), (box.x2 - 25, box.y2 - 20))
    assert w.document.annotation(accepted.annotation_id).box.w < box.w - 15
    w.results.view.setFocus()
    key(w, Qt.Key_J)
    key(w, Qt.Key_J)
    at = w.results.current_key()
    assert at == first.entries[2].key
    # "Find more like these": the same photos come back in a new review.
    deliver(w, "dog", [0.85, 0.75, 0.7, 0.5], positives=[("p0.png", Box(10, 10, 60, 50)), ("p1.png", box)])
    second = w.document.hits
    assert second is not first
    status = {e.image: e.status for e in second.entries}
    assert status["p2.png"] == REJECTED  # the rejection stands
    labelled = w.document.labelled_hit_keys(w.prefs.overlap_iou)
    assert second.entries[0].key in labelled  # the resized label still marks p1 as labelled
    w.results.hide_labelled.setChecked(True)
    assert "p1.png" not in [r.image for r in w.results.model.rows()]
    assert "pending" not in w.file_model.data(w.file_model.index(1), Qt.ToolTipRole)  # p1: labelled, not waiting
    # Back to the first review, with its decisions and the place the annotator left it.
    assert w.results.queries.count() == 2 and w.results.queries.isEnabled()
    w.results.queries.setFocus()
    key(w, Qt.Key_Up, widget=w.results.queries)
    assert w.document.hits is first
    assert first.counts()[ACCEPTED] == 1 and first.counts()[REJECTED] == 1
    assert w.results.current_key() == at
    key(w, Qt.Key_Down, widget=w.results.queries)
    assert w.document.hits is second


# ---- 4: only hits worth reviewing mark photos -----------------------------------------------
def test_only_hits_above_the_threshold_mark_photos_pending(qtbot, review):
    w = review
    deliver(w, "dog", [0.9, 0.8, 0.1, -0.06])
    status = lambda row: w.file_model.data(w.file_model.index(row), Qt.ToolTipRole)  # noqa: E731
    assert "pending" in status(1) and "pending" in status(2)
    assert "pending" not in status(3) and "pending" not in status(4)  # below the threshold
    show(qtbot, w, "p4.png")  # the "dog? -0.06" truck photo carries no pending box
    assert not [k for k in w.canvas.keys() if k.startswith("hit:")]
    w.results.slider.setFocus()
    key(w, Qt.Key_End, widget=w.results.slider)  # threshold to the top: nothing waits any more
    assert all("pending" not in status(r) for r in range(1, 5)) or "pending" in status(1)
    key(w, Qt.Key_Home, widget=w.results.slider)  # to the bottom: every hit waits
    assert all("pending" in status(r) for r in range(1, 5))


# ---- 5: Enter does one job; silent mistakes are stopped --------------------------------------
def test_enter_only_searches_and_tiny_boxes_are_refused(qtbot, review):
    w = review
    deliver(w, "dog", [0.9, 0.8])
    first = current_entry(w)
    key(w, Qt.Key_Return)  # no box drawn: Enter decides nothing
    assert first.status == PENDING
    assert "Enter searches with a drawn box" in w.message_bar.text()
    show(qtbot, w, "p0.png")
    w.canvas.setFocus()
    w.message_bar.hide()
    # A 3-pixel drag on screen makes no box, and says so.
    drag(w.canvas, (50, 50), (50 + 3 / w.canvas.zoom(), 50 + 3 / w.canvas.zoom()), steps=1)
    assert w.review.draft is None and w.message_bar.isVisible() and "too small" in w.message_bar.text()
    # A 3x3-pixel box (enlarged on screen by the zoom) is refused too: never searched with.
    for _ in range(6):
        key(w, Qt.Key_Equal, Qt.ControlModifier, widget=w.canvas)
    centre = w.canvas.mapToScene(w.canvas.viewport().rect().center())
    drag(w.canvas, (centre.x(), centre.y()), (centre.x() + 3, centre.y() + 3))
    assert w.review.draft is None
    key(w, Qt.Key_Return, widget=w.canvas)
    assert w.searches == []


def test_query_box_is_a_label_only_when_confirmed_and_weak_hits_say_so(qtbot, review):
    w = review
    show(qtbot, w, "p0.png")
    w.category_box.setEditText("cat")
    w.canvas.setFocus()
    drag(w.canvas, (40, 40), (120, 110))
    key(w, Qt.Key_Return, widget=w.canvas)
    assert len(w.searches) == 1 and w.searches[0].positives[0][0] == "p0.png"
    assert w.document.annotations() == []  # searched with, not labelled
    deliver(w, "cat", [0.31, 0.28, 0.2], positives=w.searches[0].positives)
    assert "weak" in w.message_bar.text() and "Ctrl+Enter" in w.message_bar.text()
    key(w, Qt.Key_Return, Qt.ControlModifier)  # the annotator confirms the query box
    labels = w.document.annotations()
    assert [(a.image, a.category, a.source) for a in labels] == [("p0.png", "cat", "manual")]


# ---- 6: small objects are visible ---------------------------------------------------------
def test_small_hits_are_framed_and_small_boxes_keep_their_inside(qtbot, review):
    w = review
    small = Box(200, 150, 12, 10)
    deliver(w, "ant", [0.9, 0.8], boxes=[small, Box(20, 20, 100, 80)])
    qtbot.waitUntil(lambda: w.canvas.selected_keys() == [f"hit:{current_entry(w).key}"], timeout=10_000)
    canvas = w.canvas
    on_screen = max(small.w, small.h) * canvas.zoom()
    assert on_screen >= 60  # framed: zoomed to the small hit, with context around it
    centre = canvas.mapToScene(canvas.viewport().rect().center())
    assert abs(centre.x() - small.center[0]) < 5 and abs(centre.y() - small.center[1]) < 5
    # The caption sits outside the box, above it.
    item = canvas._items[f"hit:{current_entry(w).key}"]
    caption = item.childItems()[0]
    assert caption.sceneBoundingRect().bottom() <= small.y + 1e-6
    # A small label: zoomed out so it is tiny on screen, selected, dragged by its middle: it moves
    # (the handles sit outside it instead of covering it).
    canvas.fit()
    show(qtbot, w, "p0.png")
    ann_id = w.document.add_annotation("p0.png", "ant", Box(100, 100, 10, 10))
    canvas.select([f"ann:{ann_id}"])
    assert 10 * canvas.zoom() < 3 * 8
    drag(canvas, (105, 105), (125, 115))
    moved = w.document.annotation(ann_id).box
    assert (moved.w, moved.h) == (10, 10) and moved.x > 110


# ---- 7: no stale state --------------------------------------------------------------------
def test_renames_deletes_and_undo_leave_nothing_stale(qtbot, review):
    w = review
    w.edit(lambda d: d.add_category("dog"))
    w.set_category("dog")
    w.categories.ask_text = lambda *args: "hound"
    w.categories.set_current("dog")
    w.categories.rename()
    assert w.category() == "hound"
    key(w, Qt.Key_Z, Qt.ControlModifier, widget=w.canvas)
    assert w.category() == "dog" and "Undone: Rename dog to hound" in w.statusBar().currentMessage()
    # Undoing a query takes its results strip and pending boxes away; redo brings them back.
    deliver(w, "dog", [0.9, 0.8])
    key(w, Qt.Key_Z, Qt.ControlModifier, widget=w.canvas)
    assert w.document.hits is None and w.results.model.rowCount() == 0
    key(w, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier, widget=w.canvas)
    assert w.document.hits is not None and w.results.model.rowCount() == 2
    # Undo shows the photo it changed.
    key(w, Qt.Key_Y)
    decided = [e for e in w.document.hits.entries if e.status == ACCEPTED][0]
    show(qtbot, w, "p5.png")
    key(w, Qt.Key_Z, Qt.ControlModifier, widget=w.canvas)
    assert decided.status == PENDING and w.current_image == decided.image
    # Deleting the category takes its review with it.
    w.categories.confirm = lambda *args: True
    w.categories.set_current("dog")
    w.categories.delete()
    assert w.document.hits is None and w.results.model.rowCount() == 0
    assert not [k for k in w.canvas.keys() if k.startswith("hit:")]


# ---- 8: the view stays where the annotator put it -----------------------------------------
def test_messages_and_photo_changes_keep_the_zoom(qtbot, review):
    w = review
    canvas = w.canvas
    fitted = canvas.zoom()
    height = canvas.viewport().height()
    w.show_info("Indexing paused for this search; photos not indexed yet are left out of it.")
    w.progress.start("Indexing…")
    QApplication.processEvents()
    assert canvas.viewport().height() == height and canvas.zoom() == pytest.approx(fitted)
    w.message_bar.hide()
    w.progress.finish("8 photos indexed")
    key(w, Qt.Key_Equal, Qt.ControlModifier, widget=canvas)
    zoomed = canvas.zoom()
    key(w, Qt.Key_D, widget=canvas)
    qtbot.waitUntil(lambda: w.canvas_image == "p1.png", timeout=10_000)
    assert canvas.zoom() == pytest.approx(zoomed)  # the next photo keeps the annotator's zoom
    key(w, Qt.Key_F, Qt.ControlModifier, widget=canvas)
    key(w, Qt.Key_D, widget=canvas)
    qtbot.waitUntil(lambda: w.canvas_image == "p2.png", timeout=10_000)
    assert canvas.zoom() == pytest.approx(fitted)


# ---- 9, 10, 11 ----------------------------------------------------------------------------
def test_photos_show_as_soon_as_listed_and_the_hint_never_contradicts(qtbot, photos, monkeypatch):
    """The engine is still starting (it never answers here: a cold torch import), yet the
    photos are listed and the first one is shown."""
    opened = []
    monkeypatch.setattr(Controller, "open_folder", lambda self, folder: opened.append(folder))
    window = MainWindow(photos, prefs=Preferences(device="cpu"))
    qtbot.addWidget(window)
    window.show()
    assert "Opening" in window.canvas_hint.text()
    qtbot.waitUntil(lambda: window.file_model.rowCount() == 8, timeout=10_000)
    qtbot.waitUntil(lambda: window.canvas_image == "p0.png" and window.canvas.image_size == SIZE, timeout=10_000)
    assert window.stack.currentWidget() is window.canvas and opened and window.document is None
    key(window, Qt.Key_D, widget=window.canvas)  # browsing works before the project is open
    qtbot.waitUntil(lambda: window.canvas_image == "p1.png", timeout=10_000)
    window.close()


def test_the_project_opening_keeps_the_photo_shown(qtbot, review):
    assert review.current_image == "p0.png" and review.file_model.rowCount() == 8


def test_side_panels_give_way_on_a_small_window(qtbot, review):
    w = review
    w.resize(1024, 700)
    qtbot.waitUntil(lambda: w.centralWidget().width() >= 0.5 * w.width(), timeout=5_000)
    assert all(d.width() >= 100 for d in w.findChildren(QDockWidget) if d.isVisible() and not d.isFloating())


def test_shortcut_sheet_is_one_and_escape_closes_it(qtbot, review):
    w = review
    key(w, Qt.Key_F1, widget=w.canvas)
    qtbot.waitUntil(lambda: w._sheet is not None and w._sheet.isVisible(), timeout=5_000)
    sheet = w._sheet
    key(w, Qt.Key_F1, widget=w.canvas)  # F1 again closes it rather than opening a second one
    qtbot.waitUntil(lambda: w._sheet is None, timeout=5_000)
    qtbot.waitUntil(lambda: QApplication.activeWindow() is w, timeout=5_000)  # focus is back
    key(w, Qt.Key_F1, widget=w.canvas)
    qtbot.waitUntil(lambda: w._sheet is not None, timeout=5_000)
    assert w._sheet is not sheet
    key(w, Qt.Key_Escape, widget=w._sheet)
    qtbot.waitUntil(lambda: w._sheet is None, timeout=5_000)


def test_new_categories_never_take_the_hit_colours(qtbot, review):
    w = review
    for n in range(12):
        w.edit(lambda d, n=n: d.add_category(f"c{n}"))
    assert all(_color_distance(c.color, PENDING_COLOR) > 90 for c in w.document.categories)


def test_accepted_hits_below_the_threshold_are_not_dimmed(qtbot, review):
    w = review
    deliver(w, "dog", [0.9, 0.2, 0.1])  # the threshold starts mid-range: 0.5
    view = w.results.view

    def fill(row):
        """The tile's background, below its text: #262626 at full strength."""
        view.setCurrentIndex(w.results.model.index(0))  # the tile measured is not the selected one
        view.clearSelection()
        QApplication.processEvents()
        image = view.viewport().grab().toImage()
        rect = view.visualRect(w.results.model.index(row))
        return QColor(image.pixel(rect.left() + 6, rect.bottom() - 5)).name()

    assert fill(0) == "#262626" and fill(1) != "#262626"  # below the threshold, undecided: dimmed
    w.results.select_key(w.results.model.rows()[1].key)
    key(w, Qt.Key_Y)
    assert w.results.model.rows()[1].status == ACCEPTED
    assert fill(1) == "#262626"  # accepted below the threshold: drawn at full strength


def test_coco_export_says_it_lists_labelled_photos_and_offers_all(qtbot, review, tmp_path):
    import json

    w = review
    w.document.add_annotation("p0.png", "dog", Box(10, 10, 50, 50))
    questions = []
    w.confirm = lambda title, text: questions.append(text) or True
    out = tmp_path / "all.json"
    w.ask_save_path = lambda *args: str(out)
    key(w, Qt.Key_E, Qt.ControlModifier, widget=w.canvas)
    assert "1 labelled photos" in questions[0]
    assert len(json.loads(out.read_text())["images"]) == 8
    w.confirm = lambda *args: False
    key(w, Qt.Key_E, Qt.ControlModifier, widget=w.canvas)
    assert len(json.loads(out.read_text())["images"]) == 1



def test_an_edit_checks_the_propagate_action_once(qtbot, review, monkeypatch):
    """update_propagate walks the labels of the photo shown: an edit (the first one too, which
    also makes undo possible) and its undo run it once each, not once per signal that follows."""
    w, runs = review, []
    check = w.review.update_propagate
    monkeypatch.setattr(w.review, "update_propagate", lambda: (runs.append(1), check()))
    w.edit(lambda d: d.add_category("dog"))
    assert len(runs) == 1 and w.action["undo"].isEnabled()
    w.edit(lambda d: d.add_annotation("p0.png", "dog", Box(20, 20, 80, 60)))
    w.edit(lambda d: d.add_annotation("p0.png", "dog", Box(120, 100, 80, 60)))
    assert len(runs) == 3
    for _ in range(3):
        key(w, Qt.Key_Z, Qt.ControlModifier, widget=w.canvas)
    assert len(runs) == 6 and not w.action["undo"].isEnabled() and w.action["redo"].isEnabled()
