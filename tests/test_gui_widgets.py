"""Focused widget tests: overlay geometry, the canvas (drawing, handles, moves, nudges, zoom),
the list models and the label panels. Offscreen, no engine."""
from __future__ import annotations

import math

import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QImage, QWheelEvent
from PySide6.QtTest import QTest

from dasr_annotator.engine.types import Annotation, Box, Ellipse
from dasr_annotator.widgets.canvas import MIN_DRAW_PX, ImageCanvas, Overlay
from dasr_annotator.widgets.file_list import LABELLED, PENDING, UNLABELLED, FileListModel, StatusRole
from dasr_annotator.widgets.label_panel import AnnotationTable, AnnotationTableModel, CategoryPanel, CategoryRow
from dasr_annotator.widgets.overlays import MOVE, BoxStyle, box_from_corners, dragged_box, ellipse_points, grip_at
from dasr_annotator.widgets.progress_panel import format_eta
from dasr_annotator.widgets.result_grid import HitListModel, HitRow, ResultPanel

STYLE = BoxStyle("#ff0000", "cup")


# ---- geometry ---------------------------------------------------------------------------------
def test_grip_prefers_corners_then_edges_then_inside():
    box = Box(10, 10, 100, 50)
    assert grip_at(box, 11, 9, tolerance=4) == "nw"
    assert grip_at(box, 60, 61, tolerance=4) == "s"
    assert grip_at(box, 108, 58, tolerance=4) == "se"
    assert grip_at(box, 50, 30, tolerance=4) == MOVE
    assert grip_at(box, 200, 200, tolerance=4) is None


def test_dragging_handles_keeps_the_box_valid_and_inside():
    box = Box(10, 10, 100, 50)
    assert dragged_box(box, "se", 20, 5, 500, 500) == Box(10, 10, 120, 55)
    assert dragged_box(box, "nw", -30, -30, 500, 500) == Box(0, 0, 110, 60)  # clipped at the border
    flipped = dragged_box(box, "e", -500, 0, 500, 500, min_side=2)
    assert flipped.w == 2 and flipped.x == 10  # never inverted
    assert dragged_box(box, MOVE, 1000, 1000, 300, 200) == Box(200, 150, 100, 50)
    assert box_from_corners(50, 40, 10, 5, 30, 100) == Box(10, 5, 20, 35)


def test_ellipse_outline_follows_the_engines_angle_convention():
    """The engine measures the major axis counter-clockwise as seen (y grows downwards); an
    elongated blob running up-right must be drawn running up-right."""
    import torch

    from dasr_annotator.engine.dasr.regions import ellipses_from_maps

    blob = torch.zeros(1, 64, 64)
    for i in range(40):
        blob[0, 52 - i, 12 + i] = 1.0  # bottom-left to top-right
    (cx, cy, a, b, angle), = ellipses_from_maps(blob)[0].tolist()
    points = ellipse_points(Ellipse(cx, cy, a, b, angle))
    tip_x, tip_y = points[0]  # t = 0: the end of the major axis
    assert angle > 0 and tip_x > cx and tip_y < cy
    far = max(points, key=lambda p: math.hypot(p[0] - cx, p[1] - cy))
    assert math.hypot(far[0] - cx, far[1] - cy) == pytest.approx(a, rel=0.01)


# ---- canvas -----------------------------------------------------------------------------------
@pytest.fixture
def canvas(qtbot):
    view = ImageCanvas()
    qtbot.addWidget(view)
    view.resize(600, 400)
    view.show()
    qtbot.waitExposed(view)
    image = QImage(200, 100, QImage.Format_RGB888)
    image.fill(QColor("#808080"))
    view.set_image(image, (400, 200))  # a display image at half the original size
    return view


def _drag(view, start, end, steps=4, button=Qt.LeftButton):
    viewport = view.viewport()
    p1, p2 = view.mapFromScene(QPointF(*start)), view.mapFromScene(QPointF(*end))
    QTest.mousePress(viewport, button, Qt.NoModifier, p1)
    for i in range(1, steps + 1):
        QTest.mouseMove(viewport, p1 + (p2 - p1) * i / steps)
    QTest.mouseRelease(viewport, button, Qt.NoModifier, p2)


def test_scene_is_in_original_pixels(canvas):
    assert canvas.sceneRect().width() == 400 and canvas.sceneRect().height() == 200
    assert canvas.image_size == (400, 200)


def test_drawing_a_box_reports_original_pixels(canvas, qtbot):
    with qtbot.waitSignal(canvas.boxDrawn) as drawn:
        _drag(canvas, (50, 40), (150, 120))
    box = drawn.args[0]
    slack = 1.5 / canvas.zoom()
    assert abs(box.x - 50) <= slack and abs(box.y - 40) <= slack
    assert abs(box.x2 - 150) <= slack and abs(box.y2 - 120) <= slack


def test_a_click_draws_nothing(canvas, qtbot):
    with qtbot.assertNotEmitted(canvas.boxDrawn):
        _drag(canvas, (50, 40), (50 + (MIN_DRAW_PX - 2) / canvas.zoom(), 41), steps=1)


def test_handle_drag_is_one_gesture(canvas, qtbot):
    canvas.set_overlays([Overlay("ann:a", Box(100, 50, 100, 60), STYLE)])
    canvas.select(["ann:a"])
    edits = []
    canvas.boxEdited.connect(lambda key, box, drag: edits.append((key, box, drag)))
    _drag(canvas, (200, 110), (240, 150))
    assert edits and {e[0] for e in edits} == {"ann:a"}
    assert len({e[2] for e in edits}) == 1  # one drag id for the whole gesture
    first_gesture, final = edits[0][2], edits[-1][1]
    slack = 1.5 / canvas.zoom()
    assert (final.x, final.y) == (100, 50)
    assert abs(final.x2 - 240) <= slack and abs(final.y2 - 150) <= slack
    edits.clear()
    _drag(canvas, (150, 80), (160, 90))  # a second gesture gets a new id
    assert len({e[2] for e in edits}) == 1 and edits[0][2] != first_gesture


def test_move_selects_and_stays_inside(canvas, qtbot):
    canvas.set_overlays([Overlay("ann:a", Box(100, 50, 100, 60), STYLE),
                         Overlay("hit:1", Box(300, 20, 50, 50), STYLE, editable=False)])
    with qtbot.waitSignal(canvas.selectionChanged) as selected:
        _drag(canvas, (150, 80), (500, 80))
    assert selected.args[0] == ["ann:a"]
    assert canvas.overlay_box("ann:a") == Box(300, 50, 100, 60)  # stopped at the right border
    with qtbot.waitSignal(canvas.boxDrawn):  # a locked overlay is drawn over, not moved
        _drag(canvas, (310, 30), (340, 60))
    assert canvas.overlay_box("hit:1") == Box(300, 20, 50, 50)


def test_arrow_keys_nudge_the_selected_box(canvas):
    canvas.set_overlays([Overlay("ann:a", Box(100, 50, 100, 60), STYLE)])
    canvas.select(["ann:a"])
    edits = []
    canvas.boxEdited.connect(lambda key, box, drag: edits.append((box, drag)))
    canvas.setFocus()
    QTest.keyClick(canvas, Qt.Key_Right)
    QTest.keyClick(canvas, Qt.Key_Down, Qt.ShiftModifier)
    assert [e[0] for e in edits] == [Box(101, 50, 100, 60), Box(101, 60, 100, 60)]
    assert edits[0][1] == edits[1][1]  # nudges of one box merge into one undo step


def test_refresh_during_a_drag_keeps_the_dragged_box(canvas):
    canvas.set_overlays([Overlay("ann:a", Box(100, 50, 100, 60), STYLE)])
    viewport = canvas.viewport()
    QTest.mousePress(viewport, Qt.LeftButton, Qt.NoModifier, canvas.mapFromScene(QPointF(150, 80)))
    QTest.mouseMove(viewport, canvas.mapFromScene(QPointF(170, 80)))
    canvas.set_overlays([Overlay("ann:a", Box(100, 50, 100, 60), STYLE)])  # the document re-renders
    QTest.mouseRelease(viewport, Qt.LeftButton, Qt.NoModifier, canvas.mapFromScene(QPointF(170, 80)))
    assert canvas.overlay_box("ann:a").x > 100


def test_zoom_steps_wheel_and_fit(canvas):
    fitted = canvas.zoom()
    canvas.zoom_in()
    assert canvas.zoom() == pytest.approx(fitted * 1.25)
    canvas.zoom_actual()
    assert canvas.zoom() == pytest.approx(1.0)
    centre = QPointF(canvas.viewport().rect().center())
    event = QWheelEvent(centre, canvas.viewport().mapToGlobal(centre), QPoint(), QPoint(0, 120),
                        Qt.NoButton, Qt.ControlModifier, Qt.NoScrollPhase, False)
    canvas.wheelEvent(event)
    assert canvas.zoom() == pytest.approx(1.25)
    canvas.fit()
    assert canvas.zoom() == pytest.approx(fitted)
    visible = canvas.mapToScene(canvas.viewport().rect()).boundingRect()
    assert visible.contains(canvas.sceneRect().adjusted(1, 1, -1, -1))


# ---- models and panels ------------------------------------------------------------------------
def test_file_list_status_and_lazy_thumbnails(qapp, qtbot):
    model = FileListModel()
    model.set_images(["a.jpg", "sub/b.jpg", "sub/c.jpg"])
    model.set_counts({"a.jpg": 2}, {"sub/b.jpg": 1})
    statuses = [model.index(r).data(StatusRole) for r in range(3)]
    assert statuses == [LABELLED, PENDING, UNLABELLED]
    assert "2 labels" in model.index(0).data(Qt.ToolTipRole)
    wanted = []
    model.thumbnailWanted.connect(wanted.append)
    for _ in range(2):
        model.index(1).data(Qt.DecorationRole)
    assert wanted == ["sub/b.jpg"]  # asked once, only for the row painted
    model.set_thumbnail("sub/b.jpg", QImage(8, 8, QImage.Format_RGB888))
    assert model.index(1).data(Qt.DecorationRole) is not None


def _rows(*statuses):
    return [HitRow(k, f"img{k}.jpg", 1.0 - k / 10, Box(k, 0, 5, 5), s, rank=k) for k, s in enumerate(statuses)]


def test_result_panel_keeps_selection_when_decisions_change(qtbot):
    panel = ResultPanel()
    qtbot.addWidget(panel)
    panel.set_rows(_rows("pending", "pending", "pending"), "3 hits")
    panel.select_key(1)
    resets = []
    panel.model.modelReset.connect(lambda: resets.append(1))
    panel.set_rows(_rows("accepted", "rejected", "pending"), "3 hits")
    assert resets == [] and panel.current_key() == 1
    panel.move(5)
    assert panel.current_key() == 2
    panel.move(-9)
    assert panel.current_key() == 0
    panel.set_rows(_rows("pending", "pending")[::-1], "2 hits")
    assert resets == [1]


def test_threshold_maps_onto_the_score_range(qtbot):
    panel = ResultPanel()
    qtbot.addWidget(panel)
    panel.set_range(0.2, 0.6)
    panel.set_threshold(0.5)
    assert panel.threshold() == pytest.approx(0.5, abs=1e-3)
    assert panel.model.threshold == pytest.approx(panel.threshold())


def test_crops_are_requested_once_per_box(qapp):
    model = HitListModel()
    model.set_rows(_rows("pending", "pending"))
    wanted = []
    model.cropWanted.connect(lambda key, image, box: wanted.append((key, image, box)))
    for _ in range(2):
        model.index(0).data(Qt.DecorationRole)
    assert wanted == [(0, "img0.jpg", Box(0, 0, 5, 5))]


def test_category_panel_asks_then_requests(qtbot):
    panel = CategoryPanel()
    qtbot.addWidget(panel)
    panel.set_categories([CategoryRow("cup", "#ff0000", 3), CategoryRow("plate", "#00ff00", 0)], "cup")
    assert panel.current() == "cup" and panel.name_at(2) == "plate" and panel.name_at(3) is None
    panel.ask_text = lambda *args: "  bowl "
    with qtbot.waitSignal(panel.addRequested) as added:
        panel.add()
    assert added.args == ["bowl"]
    panel.confirm = lambda *args: False
    with qtbot.assertNotEmitted(panel.deleteRequested):
        panel.delete()  # "cup" has labels and the user said no
    panel.set_current("plate")
    with qtbot.waitSignal(panel.deleteRequested) as deleted:
        panel.delete()  # an empty category goes without asking
    assert deleted.args == ["plate"]


def test_annotation_table_edits_go_to_the_document(qapp, qtbot):
    model = AnnotationTableModel()
    ann = Annotation("a1", "x.jpg", "cup", Box(1, 2, 3, 4))
    model.set_annotations([ann], {"cup": "#ff0000", "plate": "#00ff00"})
    with qtbot.waitSignal(model.categoryEdited) as edited:
        assert model.setData(model.index(0, 0), "plate")
    assert edited.args == ["a1", "plate"]
    assert model.index(0, 0).data() == "cup"  # unchanged until the document says otherwise
    assert not model.setData(model.index(0, 0), "  ")


def test_annotation_table_selection_follows_the_canvas(qtbot):
    table = AnnotationTable()
    qtbot.addWidget(table)
    anns = [Annotation(f"a{i}", "x.jpg", "cup", Box(i, 2, 3, 4)) for i in range(3)]
    table.set_annotations(anns, {"cup": "#ff0000"})
    with qtbot.assertNotEmitted(table.selectedIdsChanged):  # no echo back to the canvas
        table.select_ids(["a2", "a0"])
    assert table.selected_ids() == ["a0", "a2"]
    table.set_annotations(anns[:2], {"cup": "#ff0000"})
    assert table.selected_ids() == ["a0"]


@pytest.mark.parametrize("seconds, text", [(-1, "estimating…"), (42.4, "42 s left"), (125, "2 min 05 s left"),
                                           (3 * 3600 + 60, "3 h 01 min left")])
def test_eta_text(seconds, text):
    assert format_eta(seconds) == text
