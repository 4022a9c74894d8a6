"""What is drawn over a photo: boxes (annotations, hits, the query draft) and hit ellipses.

The geometry (handle positions, which handle is under the mouse, how a drag reshapes a box,
the ellipse outline) is plain Python on `Box`/`Ellipse`, so it is tested without a display.
Coordinates are ORIGINAL image pixels, the canvas's scene coordinates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsItem, QGraphicsPathItem, QGraphicsSimpleTextItem

from dasr_annotator.engine.types import Box, Ellipse

HANDLES = ("nw", "n", "ne", "e", "se", "s", "sw", "w")
MOVE = "move"
HANDLE_PX = 8  # handle size on screen, whatever the zoom
SMALL_BOX_PX = 3 * HANDLE_PX  # a box this small on screen gets its handles outside it


# ---- geometry -------------------------------------------------------------------------------
def handle_positions(box: Box, outside: float = 0.0) -> dict[str, tuple[float, float]]:
    """Where each handle sits: on the box's corners and edge midpoints, or pushed `outside` the
    box by that distance (small boxes, so the handles never cover what they frame)."""
    cx, cy = box.center
    x1, y1, x2, y2 = box.x - outside, box.y - outside, box.x2 + outside, box.y2 + outside
    return {"nw": (x1, y1), "n": (cx, y1), "ne": (x2, y1), "e": (x2, cy),
            "se": (x2, y2), "s": (cx, y2), "sw": (x1, y2), "w": (x1, cy)}


def handle_offset(box: Box, scale: float) -> float:
    """How far (scene pixels) the handles of `box` sit outside it at view scale `scale`."""
    scale = max(scale, 1e-6)
    return HANDLE_PX / scale if min(box.w, box.h) * scale < SMALL_BOX_PX else 0.0


def grip_at(box: Box, x: float, y: float, tolerance: float, outside: float = 0.0) -> str | None:
    """The handle within `tolerance` of (x, y) (corners first), else MOVE inside the box, else None.
    Handles pushed `outside` the box leave its whole inside to MOVE."""
    if outside and box.contains_point(x, y):
        return MOVE
    # (distance, is an edge handle): at equal distance a corner wins.
    distance, _, name = min((max(abs(hx - x), abs(hy - y)), len(name) == 1, name)
                            for name, (hx, hy) in handle_positions(box, outside).items())
    if distance <= tolerance:
        return name
    return MOVE if box.contains_point(x, y) else None


def dragged_box(box: Box, grip: str, dx: float, dy: float, width: float, height: float,
                min_side: float = 1.0) -> Box:
    """`box` after dragging `grip` by (dx, dy), kept inside the image and at least `min_side`."""
    if grip == MOVE:
        x = min(max(box.x + dx, 0.0), max(width - box.w, 0.0))
        y = min(max(box.y + dy, 0.0), max(height - box.h, 0.0))
        return Box(x, y, box.w, box.h)
    x1, y1, x2, y2 = box.x, box.y, box.x2, box.y2
    if "w" in grip:
        x1 = min(max(x1 + dx, 0.0), x2 - min_side)
    if "e" in grip:
        x2 = max(min(x2 + dx, width), x1 + min_side)
    if grip.startswith("n"):
        y1 = min(max(y1 + dy, 0.0), y2 - min_side)
    if grip.startswith("s"):
        y2 = max(min(y2 + dy, height), y1 + min_side)
    return Box.from_xyxy(x1, y1, x2, y2)


def box_from_corners(x1: float, y1: float, x2: float, y2: float, width: float, height: float) -> Box:
    """The box spanned by two drag points (any order), clipped to the image."""
    return Box.from_xyxy(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)).clipped(width, height)


def ellipse_points(ellipse: Ellipse, count: int = 72) -> list[tuple[float, float]]:
    """Points on the ellipse outline. `angle` turns the major axis counter-clockwise as a person
    sees the image, which is clockwise in y-down pixel coordinates, hence the minus sign."""
    theta = math.radians(ellipse.angle)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    points = []
    for i in range(count):
        t = 2.0 * math.pi * i / count
        u, v = ellipse.a * math.cos(t), ellipse.b * math.sin(t)
        points.append((ellipse.cx + u * cos_t + v * sin_t, ellipse.cy - u * sin_t + v * cos_t))
    return points


# ---- items ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BoxStyle:
    color: str  # "#rrggbb"
    label: str = ""
    dashed: bool = False  # hits and the query draft are dashed; annotations are solid
    filled: bool = False  # a light fill marks the selected hit


class Caption(QGraphicsSimpleTextItem):
    """A box's label: screen-sized text on a dark plate, readable on any photo. It sits just
    above the box (outside it, so a small box stays visible), or inside when there is no room."""

    def __init__(self, parent: QGraphicsItem):
        super().__init__(parent)
        self.setFlag(QGraphicsItem.ItemIgnoresTransformations, True)
        self._above = True

    def set_above(self, above: bool) -> None:
        if above != self._above:
            self.prepareGeometryChange()
            self._above = above

    def plate_height(self) -> float:
        return super().boundingRect().height() + 2

    def _shift(self) -> float:
        return -self.plate_height() - 2 if self._above else 0.0

    def boundingRect(self) -> QRectF:
        return super().boundingRect().adjusted(-3, -1, 3, 1).translated(0, self._shift())

    def shape(self):
        path = QPainterPath()
        path.addRect(self.boundingRect())
        return path

    def paint(self, painter, option, widget=None) -> None:
        painter.fillRect(self.boundingRect(), QColor(0, 0, 0, 170))
        painter.translate(0, self._shift())
        super().paint(painter, option, widget)


class BoxItem(QGraphicsItem):
    """A box with a caption; handles show while it is selected. The canvas does the mouse work."""

    def __init__(self, key: str, box: Box, style: BoxStyle, editable: bool = True):
        super().__init__()
        self.key, self.box, self.style, self.editable = key, box, style, editable
        self.selected = False
        self._scale = 1.0  # the view's zoom; boundingRect depends on it (handles are screen-sized)
        self._caption = Caption(self)
        self.set_style(style)

    def set_view_scale(self, scale: float) -> None:
        """The view zoomed: the handle margin (in scene pixels) changes, so the scene's index
        must hear of it before boundingRect does (a stale index is undefined behaviour in Qt)."""
        scale = max(float(scale), 1e-6)
        if scale != self._scale:
            self.prepareGeometryChange()
            self._scale = scale
            self._place_caption()

    def handle_outside(self) -> float:
        return handle_offset(self.box, self._scale)

    def set_box(self, box: Box) -> None:
        if box != self.box:
            self.prepareGeometryChange()
            self.box = box
            self._place_caption()

    def set_style(self, style: BoxStyle) -> None:
        self.style = style
        self._caption.setText(style.label)
        self._caption.setBrush(QBrush(QColor(style.color)))
        self._caption.setVisible(bool(style.label))
        self._place_caption()
        self.update()

    def set_selected(self, selected: bool) -> None:
        if selected != self.selected:
            self.prepareGeometryChange()
            self.selected = selected
            self.setZValue(10 if selected else 0)
            self.update()

    def _place_caption(self) -> None:
        # Above the box when the photo has room for it there, else inside the top-left corner.
        self._caption.set_above(self.box.y * self._scale >= self._caption.plate_height() + 2)
        self._caption.setPos(self.box.x, self.box.y)

    def boundingRect(self) -> QRectF:
        pad = 2 * HANDLE_PX / self._scale  # handles, also when pushed outside a small box
        return QRectF(self.box.x, self.box.y, self.box.w, self.box.h).adjusted(-pad, -pad, pad, pad)

    def paint(self, painter, option, widget=None) -> None:  # noqa: ARG002 - Qt signature
        color = QColor(self.style.color)
        pen = QPen(color, 3 if self.selected else 2)
        pen.setCosmetic(True)
        if self.style.dashed:
            pen.setStyle(Qt.DashLine)
        painter.setPen(pen)
        fill = QColor(color)
        fill.setAlpha(50 if self.style.filled or self.selected else 0)
        painter.setBrush(QBrush(fill))
        painter.drawRect(QRectF(self.box.x, self.box.y, self.box.w, self.box.h))
        if self.selected and self.editable:
            self._paint_handles(painter, color)

    def _paint_handles(self, painter, color: QColor) -> None:
        half = HANDLE_PX / 2 / self._scale
        outline = QPen(QColor("#000000"), 1)
        outline.setCosmetic(True)
        painter.setPen(outline)
        painter.setBrush(QBrush(color))
        for hx, hy in handle_positions(self.box, self.handle_outside()).values():
            painter.drawRect(QRectF(hx - half, hy - half, 2 * half, 2 * half))


class EllipseItem(QGraphicsPathItem):
    """A hit region's ellipse (the salient region the search matched)."""

    def __init__(self, ellipse: Ellipse, color: str):
        super().__init__()
        self.ellipse = ellipse
        pen = QPen(QColor(color), 2, Qt.DotLine)
        pen.setCosmetic(True)
        self.setPen(pen)
        self.setPath(ellipse_path(ellipse))
        self.setZValue(5)


def ellipse_path(ellipse: Ellipse) -> QPainterPath:
    points = ellipse_points(ellipse)
    path = QPainterPath(QPointF(*points[0]))
    for x, y in points[1:]:
        path.lineTo(x, y)
    path.closeSubpath()
    return path
