"""The photo canvas: zoom and pan, draw a box, select, drag and resize boxes, nudge with arrows.

Scene coordinates are ORIGINAL image pixels (a reduced display image is scaled up to match), so
every box that leaves the canvas is already in the engine's coordinates. The canvas owns no
annotations: the window hands it `Overlay`s to show and it reports what the user did with them
(`boxDrawn`, `boxEdited` with one drag id per gesture, `selectionChanged`).

The view belongs to the annotator: once they zoom or pan, new photos keep that zoom, and nothing
but their own actions (or `frame`, asked for when a hit is shown) moves it. Until then each photo
is fitted to the window.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QCursor, QImage, QPainter, QPixmap
from PySide6.QtWidgets import QGraphicsPixmapItem, QGraphicsScene, QGraphicsView

from dasr_annotator.engine.types import MIN_BOX_SIDE as MIN_LABEL_SIDE
from dasr_annotator.engine.types import Box, Ellipse
from dasr_annotator.widgets.overlays import (
    HANDLE_PX, MOVE, BoxItem, BoxStyle, EllipseItem, box_from_corners, dragged_box, grip_at,
)

ZOOM_STEP = 1.25
ZOOM_RANGE = (0.02, 50.0)
CLICK_PX = 2  # a drag this short on screen is a click: it draws nothing and says nothing
MIN_DRAW_PX = 4  # a box narrower than this on screen is not drawn
MIN_BOX_SIDE = 8  # photo pixels: a smaller box is refused (`boxTooSmall`), never searched
FRAME_MIN_PX = 64  # a shown hit smaller than this on screen is framed (zoomed to) ...
FRAME_SHARE = 0.25  # ... so that it spans this share of the view ...
FRAME_MAX_ZOOM = 8.0  # ... never magnified more than this
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
    boxTooSmall = Signal(object)  # Box: a drag that made a box too small to use
    boxEdited = Signal(str, object, object)  # key, new Box, drag id (one per gesture)
    selectionChanged = Signal(list)  # selected keys
    zoomChanged = Signal(float)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        # A handful of boxes needs no spatial index, and without one a box whose bounds change
        # with the zoom can never leave a stale entry behind.
        self.scene().setItemIndexMethod(QGraphicsScene.NoIndex)
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
        self._fit_mode = True  # the photo is fitted to the view (refitted when the view resizes)
        self._user_view = False  # the annotator zoomed or panned: keep their view across photos
        self._refit_after_gesture = False
        self._space_down = False

    # ---- content -----------------------------------------------------------------------------
    def set_image(self, image: QImage | None, original_size: tuple[int, int] | None = None) -> None:
        """Show `image`, scaled so that the scene is `original_size` pixels; None clears. The
        annotator's zoom is kept; a view they never changed fits the new photo."""
        self._end_gesture()
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
        if not self._user_view:
            self._fit_view()

    def _end_gesture(self) -> None:
        """Drop a drag in progress (the photo changed under it)."""
        gesture, self._gesture = self._gesture, None
        if gesture is not None and gesture.get("kind") == "draw" and gesture["item"].scene() is not None:
            self.scene().removeItem(gesture["item"])

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
                item.set_view_scale(self.zoom())
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
            self.frame(self._items[keys[0]].box)

    def frame(self, box: Box) -> None:
        """Bring `box` into view. A view the annotator set keeps its zoom and only scrolls; a
        fitted photo is zoomed to a box too small to check at that size, with context around."""
        if self.image_size is None:
            return
        rect = QRectF(box.x, box.y, box.w, box.h)
        side = max(box.w, box.h, 1.0)
        if not self._user_view and side * self.zoom() < FRAME_MIN_PX:
            view = self.viewport().size()
            factor = min(FRAME_SHARE * min(view.width(), view.height()) / side, FRAME_MAX_ZOOM)
            if factor > self.zoom():
                self._fit_mode = False
                self.scale(factor / self.zoom(), factor / self.zoom())
                self._zoom_changed()
            self.centerOn(rect.center())
            return
        self.ensureVisible(rect, 40, 40)

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
        """The annotator's zoom: kept for the next photos until they fit again."""
        factor = min(max(factor, ZOOM_RANGE[0]), ZOOM_RANGE[1])
        self._fit_mode = False
        self._user_view = True
        ratio = factor / self.zoom()
        self.scale(ratio, ratio)  # scale() keeps the point under the mouse in place
        self._zoom_changed()

    def _zoom_changed(self) -> None:
        scale = self.zoom()
        for item in self._items.values():
            item.set_view_scale(scale)
        self.zoomChanged.emit(scale)

    def zoom_in(self) -> None:
        self.set_zoom(self.zoom() * ZOOM_STEP)

    def zoom_out(self) -> None:
        self.set_zoom(self.zoom() / ZOOM_STEP)

    def zoom_actual(self) -> None:
        self.set_zoom(1.0)

    def fit(self) -> None:
        """Fit the photo (the annotator's choice: later photos are fitted too)."""
        self._user_view = False
        self._fit_view()

    def _fit_view(self) -> None:
        if self.image_size is None:
            return
        self.fitInView(self.sceneRect(), Qt.KeepAspectRatio)
        self._fit_mode = True
        self._zoom_changed()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self._fit_mode:
            if self._gesture is not None:  # never move the photo under a drag in progress
                self._refit_after_gesture = True
            else:
                self._fit_view()

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
                grip = grip_at(item.box, x, y, tol, item.handle_outside())
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
            self._user_view = True
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
                          width, height, min_side=MIN_LABEL_SIDE)  # a resize may keep a small hit small
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
            zoom = self.zoom()
            if max(box.w, box.h) * zoom < CLICK_PX:
                pass  # a click on the photo: it only cleared the selection
            elif min(box.w, box.h) * zoom < MIN_DRAW_PX or min(box.w, box.h) < MIN_BOX_SIDE:
                self.boxTooSmall.emit(box)
            else:
                self.boxDrawn.emit(box)
        if self._refit_after_gesture:
            self._refit_after_gesture = False
            if self._fit_mode:
                self._fit_view()

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
