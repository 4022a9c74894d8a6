"""The photo canvas: zoom and pan, draw a box, select, drag and resize boxes, nudge with arrows.

Scene coordinates are ORIGINAL image pixels (a reduced display image is scaled up to match), so
every box that leaves the canvas is already in the engine's coordinates. The canvas owns no
annotations: the window hands it `Overlay`s to show and it reports what the user did with them
(`boxDrawn`, `boxEdited` with one drag id per gesture, `selectionChanged`).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QCursor, QImage, QPainter, QPixmap
from PySide6.QtWidgets import QGraphicsPixmapItem, QGraphicsScene, QGraphicsView

from dasr_annotator.engine.types import MIN_BOX_SIDE, Box, Ellipse
from dasr_annotator.widgets.overlays import (
                                             HANDLE_PX, MOVE, BoxItem, BoxStyle, EllipseItem, box_from_corners, dragged_box, grip_at,
                                             )

ZOOM_STEP = 1.25
ZOOM_RANGE = (0.02, 50.0)
MIN_DRAW_PX = 4  # a smaller drag is a click, not a box
_CURSORS = {"nw": Qt.SizeFDiagCursor, "se": Qt.SizeFDiagCursor, "ne": Qt.SizeBDiagCursor,
            "sw": Qt.SizeBDiagCursor, "n": Qt.SizeVerCursor, "s": Qt.SizeVerCursor,
            "e": Qt.SizeHorCursor, "w": Qt.SizeHorCursor, MOVE: Qt.SizeAllCursor}
DRAFT_STYLE = BoxStyle("#ffffff", "query", dashed=True)


@dataclass(frozen=True)
class Overlay:
    key: str  # e.g. "ann:<id>", "hit:<key>", "draft"
    box: Box
    style: BoxStyle
    editable: bool = True
    ellipse: Ellipse | None = None


class ImageCanvas(QGraphicsView):
    boxDrawn = Signal(object)  # Box, original pixels
    boxEdited = Signal(str, object, object)  # key, new Box, drag id (one per gesture)
    selectionChanged = Signal(list)  # selected keys
    zoomChanged = Signal(float)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setRenderHints(QPainter.Antialiasing | QPainter.SmoothPixmapTransform)
        self.setTransformationAnchor(QGraphicsView.AnchorUnderMouse)
        self.setDragMode(QGraphicsView.NoDrag)
        self.setFocusPolicy(Qt.StrongFocus)
        self.setBackgroundBrush(QColor("#2b2b2b"))
        self.viewport().setMouseTracking(True)
        self._pixmap = QGraphicsPixmapItem()
        self._pixmap.setTransformationMode(Qt.SmoothTransformation)
        self.scene().addItem(self._pixmap)
        self.image_size: tuple[int, int] | None = None
        self._items: dict[str, BoxItem] = {}
        self._ellipses: dict[str, EllipseItem] = {}
        self._selected: list[str] = []
        self._gesture: dict | None = None  # the drag in progress
        self._drag_ids = itertools.count(1)
        self._fit_mode = True
        self._space_down = False

    # ---- content -----------------------------------------------------------------------------
    def set_image(self, image: QImage | None, original_size: tuple[int, int] | None = None) -> None:
        """Show `image`, scaled so that the scene is `original_size` pixels; None clears."""
        self._gesture = None
        if image is None or image.isNull():
            self._pixmap.setPixmap(QPixmap())
            self.image_size = None
            self.set_overlays([])
            return
        width, height = original_size or (image.width(), image.height())
        self.image_size = (width, height)
        self._pixmap.setPixmap(QPixmap.fromImage(image))
        self._pixmap.setScale(width / image.width())
        self.scene().setSceneRect(QRectF(0, 0, width, height))
        self.fit()

    def set_overlays(self, overlays: list[Overlay]) -> None:
        """Show exactly these boxes (items are reused by key, so a drag survives a refresh)."""
        wanted = {o.key: o for o in overlays}
        for key in [k for k in self._items if k not in wanted]:
            self.scene().removeItem(self._items.pop(key))
        for key in [k for k in self._ellipses if k not in wanted or wanted[k].ellipse is None]:
            self.scene().removeItem(self._ellipses.pop(key))
        for overlay in overlays:
            item = self._items.get(overlay.key)
            if item is None:
                item = self._items[overlay.key] = BoxItem(overlay.key, overlay.box, overlay.style, overlay.editable)
                self.scene().addItem(item)
            else:
                item.editable = overlay.editable
                item.set_style(overlay.style)
                if not self._dragging(overlay.key):
                    item.set_box(overlay.box)
            self._show_ellipse(overlay)
        kept = [k for k in self._selected if k in self._items]
        self._apply_selection(kept, emit=kept != self._selected)

    def _show_ellipse(self, overlay: Overlay) -> None:
        old = self._ellipses.get(overlay.key)
        if overlay.ellipse is None or (old is not None and old.ellipse == overlay.ellipse):
            return
        if old is not None:
            self.scene().removeItem(old)
        item = self._ellipses[overlay.key] = EllipseItem(overlay.ellipse, overlay.style.color)
        self.scene().addItem(item)

    def overlay_box(self, key: str) -> Box | None:
        item = self._items.get(key)
        return item.box if item else None

    def keys(self) -> list[str]:
        return list(self._items)

    # ---- selection ---------------------------------------------------------------------------
    def selected_keys(self) -> list[str]:
        return list(self._selected)

    def select(self, keys: list[str], center: bool = False) -> None:
        keys = [k for k in keys if k in self._items]
        self._apply_selection(keys, emit=keys != self._selected)
        if center and keys:
            box = self._items[keys[0]].box
            self.ensureVisible(QRectF(box.x, box.y, box.w, box.h), 40, 40)

    def _apply_selection(self, keys: list[str], emit: bool) -> None:
        self._selected = keys
        for key, item in self._items.items():
            item.set_selected(key in keys)
        if emit:
            self.selectionChanged.emit(list(keys))

    # ---- zoom --------------------------------------------------------------------------------
    def zoom(self) -> float:
        return self.transform().m11()

    def set_zoom(self, factor: float) -> None:
        factor = min(max(factor, ZOOM_RANGE[0]), ZOOM_RANGE[1])
        self._fit_mode = False
        ratio = factor / self.zoom()
        self.scale(ratio, ratio)  # scale() keeps the point under the mouse in place
        self.zoomChanged.emit(factor)

    def zoom_in(self) -> None:
        self.set_zoom(self.zoom() * ZOOM_STEP)

    def zoom_out(self) -> None:
        self.set_zoom(self.zoom() / ZOOM_STEP)

    def zoom_actual(self) -> None:
        self.set_zoom(1.0)

    def fit(self) -> None:
        if self.image_size is None:
            return
        self.fitInView(self.sceneRect(), Qt.KeepAspectRatio)
        self._fit_mode = True
        self.zoomChanged.emit(self.zoom())

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self._fit_mode:
            self.fit()

    def wheelEvent(self, event) -> None:
        if event.modifiers() & Qt.ControlModifier:
            steps = event.angleDelta().y() / 120.0
            if steps:
                self.set_zoom(self.zoom() * ZOOM_STEP ** steps)
            event.accept()
            return
        super().wheelEvent(event)  # plain wheel scrolls, Shift+wheel scrolls sideways

    # ---- mouse -------------------------------------------------------------------------------
    def _tolerance(self) -> float:
        return HANDLE_PX / max(self.zoom(), 1e-6)

    def _dragging(self, key: str) -> bool:
        return self._gesture is not None and self._gesture.get("key") == key

    def _grip_under(self, point: QPointF) -> tuple[str, str] | None:
        """(key, grip) of the box the mouse would take: selected boxes' handles first, then the
        smallest editable box under the point."""
        x, y, tol = point.x(), point.y(), self._tolerance()
        for key in self._selected:
            item = self._items[key]
            if item.editable:
                grip = grip_at(item.box, x, y, tol)
                if grip is not None:
                    return key, grip
        inside = [i for i in self._items.values() if i.editable and i.box.contains_point(x, y)]
        if not inside:
            return None
        item = min(inside, key=lambda i: i.box.area)
        return item.key, MOVE

    def mousePressEvent(self, event) -> None:
        if self.image_size is None:
            return super().mousePressEvent(event)
        point = self.mapToScene(event.position().toPoint())
        if event.button() in (Qt.MiddleButton, Qt.RightButton) or (event.button() == Qt.LeftButton and self._space_down):
            self._gesture = {"kind": "pan", "last": event.position()}
            self.viewport().setCursor(Qt.ClosedHandCursor)
            return
        if event.button() != Qt.LeftButton:
            return super().mousePressEvent(event)
        target = self._grip_under(point)
        if target is not None:
            key, grip = target
            if key not in self._selected:
                self._apply_selection([key], emit=True)
            self._gesture = {"kind": "edit", "key": key, "grip": grip, "start": point,
                             "box": self._items[key].box, "drag_id": next(self._drag_ids)}
            return
        self._apply_selection([], emit=bool(self._selected))
        rubber = BoxItem("rubber", Box(point.x(), point.y(), 0, 0), DRAFT_STYLE, editable=False)
        self.scene().addItem(rubber)
        self._gesture = {"kind": "draw", "start": point, "item": rubber}

    def mouseMoveEvent(self, event) -> None:
        gesture = self._gesture
        if gesture is None:
            self._update_cursor(self.mapToScene(event.position().toPoint()))
            return super().mouseMoveEvent(event)
        if gesture["kind"] == "pan":
            delta = event.position() - gesture["last"]
            gesture["last"] = event.position()
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - int(delta.x()))
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - int(delta.y()))
            return
        point = self.mapToScene(event.position().toPoint())
        width, height = self.image_size
        start = gesture["start"]
        if gesture["kind"] == "draw":
            gesture["item"].set_box(box_from_corners(start.x(), start.y(), point.x(), point.y(), width, height))
            return
        box = dragged_box(gesture["box"], gesture["grip"], point.x() - start.x(), point.y() - start.y(),
                          width, height, min_side=MIN_BOX_SIDE)
        item = self._items.get(gesture["key"])
        if item is not None and box != item.box:
            item.set_box(box)
            self.boxEdited.emit(gesture["key"], box, ("drag", gesture["drag_id"]))

    def mouseReleaseEvent(self, event) -> None:
        gesture, self._gesture = self._gesture, None
        if gesture is None:
            return super().mouseReleaseEvent(event)
        if gesture["kind"] == "pan":
            self.viewport().unsetCursor()
        elif gesture["kind"] == "draw":
            box = gesture["item"].box
            self.scene().removeItem(gesture["item"])
            if min(box.w, box.h) * self.zoom() >= MIN_DRAW_PX and min(box.w, box.h) >= MIN_BOX_SIDE:
                self.boxDrawn.emit(box)

    def _update_cursor(self, point: QPointF) -> None:
        target = self._grip_under(point) if self.image_size else None
        self.viewport().setCursor(QCursor(_CURSORS[target[1]]) if target else QCursor(Qt.CrossCursor))

    # ---- keys --------------------------------------------------------------------------------
    _NUDGES = {Qt.Key_Left: (-1, 0), Qt.Key_Right: (1, 0), Qt.Key_Up: (0, -1), Qt.Key_Down: (0, 1)}

    def keyPressEvent(self, event) -> None:
        key = event.key()
        if key == Qt.Key_Space and not event.isAutoRepeat():
            self._space_down = True
            self.viewport().setCursor(Qt.OpenHandCursor)
            return
        if key == Qt.Key_Escape and self._selected:
            self._apply_selection([], emit=True)
            return
        editable = [k for k in self._selected if self._items[k].editable]
        if key in self._NUDGES and editable and self.image_size:
            step = 10 if event.modifiers() & Qt.ShiftModifier else 1
            dx, dy = self._NUDGES[key]
            for k in editable:
                box = dragged_box(self._items[k].box, MOVE, dx * step, dy * step, *self.image_size)
                self._items[k].set_box(box)
                self.boxEdited.emit(k, box, ("nudge", k))
            return
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event) -> None:
        if event.key() == Qt.Key_Space and not event.isAutoRepeat():
            self._space_down = False
            self.viewport().unsetCursor()
            return
        super().keyReleaseEvent(event)
