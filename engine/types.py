"""Plain value types shared by the engine, the CLI and the GUI.

All boxes and ellipses are in ORIGINAL image pixels, in the orientation a person sees
(EXIF orientation already applied), with a top-left origin.
"""
from __future__ import annotations

from dataclasses import dataclass, field, asdict
from typing import Callable

import numpy as np


class Cancelled(Exception):
    """Raised by long engine work when its cancel check returns True."""


ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


def no_progress(done: int, total: int) -> None:  # noqa: ARG001 - default callback
    return None


def never_cancel() -> bool:
    return False


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float

    @property
    def x2(self) -> float:
        return self.x + self.w

    @property
    def y2(self) -> float:
        return self.y + self.h

    @property
    def area(self) -> float:
        return max(self.w, 0.0) * max(self.h, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + self.w / 2.0, self.y + self.h / 2.0)

    def as_list(self) -> list[float]:
        return [float(self.x), float(self.y), float(self.w), float(self.h)]

    @classmethod
    def from_list(cls, values) -> "Box":
        x, y, w, h = (float(v) for v in values)
        return cls(x, y, w, h)

    @classmethod
    def from_xyxy(cls, x1: float, y1: float, x2: float, y2: float) -> "Box":
        return cls(float(x1), float(y1), float(x2 - x1), float(y2 - y1))

    def scaled(self, s: float) -> "Box":
        return Box(self.x * s, self.y * s, self.w * s, self.h * s)

    def clipped(self, width: float, height: float) -> "Box":
        x1, y1 = min(max(self.x, 0.0), width), min(max(self.y, 0.0), height)
        x2, y2 = min(max(self.x2, 0.0), width), min(max(self.y2, 0.0), height)
        return Box.from_xyxy(x1, y1, x2, y2)

    def at_least(self, side: float, width: float, height: float) -> "Box":
        """This box widened about its centre to `side` pixels where narrower or lower, and kept
        inside a width x height image (a side longer than the image is the image's)."""
        w, h = max(self.w, min(side, width)), max(self.h, min(side, height))
        if (w, h) == (self.w, self.h):
            return self
        cx, cy = self.center
        return Box(min(max(cx - w / 2.0, 0.0), width - w), min(max(cy - h / 2.0, 0.0), height - h), w, h)

    def iou(self, other: "Box") -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x, other.x))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y, other.y))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def contains_point(self, px: float, py: float) -> bool:
        return self.x <= px <= self.x2 and self.y <= py <= self.y2


MIN_BOX_SIDE = 1.0  # pixels: no hit, label or export carries a box narrower or lower than this


def boxes_at_least(boxes: np.ndarray, sizes: np.ndarray, side: float = MIN_BOX_SIDE) -> np.ndarray:
    """`Box.at_least` for x, y, w, h rows [N, 4], each in its image of width, height [N, 2]."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    sizes = np.asarray(sizes, np.float64).reshape(-1, 2)
    wh = np.maximum(boxes[:, 2:], np.minimum(side, sizes))
    grow = (wh != boxes[:, 2:]).any(1)
    if not grow.any():
        return boxes
    centre = boxes[:, :2] + boxes[:, 2:] / 2.0
    xy = np.clip(centre - wh / 2.0, 0.0, np.maximum(sizes - wh, 0.0))
    out = boxes.copy()
    out[grow] = np.concatenate([xy, wh], 1)[grow]
    return out


@dataclass(frozen=True)
class Ellipse:
    """Centre, semi-axes a >= b, angle of the major axis in degrees (counter-clockwise from +x)."""

    cx: float
    cy: float
    a: float
    b: float
    angle: float

    def as_dict(self) -> dict:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Ellipse":
        return cls(float(d["cx"]), float(d["cy"]), float(d["a"]), float(d["b"]), float(d["angle"]))

    def scaled(self, s: float) -> "Ellipse":
        return Ellipse(self.cx * s, self.cy * s, self.a * s, self.b * s, self.angle)


@dataclass
class Region:
    """One salient region of an image: where it is, how salient, and its descriptor."""

    box: Box
    ellipse: Ellipse
    score: float
    descriptor: np.ndarray | None = None  # l2-normalised float32, not whitened


@dataclass
class ImageRegions:
    """Everything extraction produces for one image."""

    width: int  # original, oriented image size
    height: int
    regions: list[Region] = field(default_factory=list)
    seeds: int = 0  # number of seeds back-propagated (for benchmarks)
    relocation_map: object | None = None  # relocate.FeatureMap from the same forward pass

    def descriptors(self) -> np.ndarray:
        if not self.regions:
            return np.zeros((0, 0), np.float32)
        return np.stack([r.descriptor for r in self.regions]).astype(np.float32)


@dataclass
class Hit:
    """One search result: an image and the region that made it score."""

    image: str  # path relative to the collection root, POSIX separators
    score: float  # what the hits are ranked by
    box: Box
    ellipse: Ellipse
    # Once the box is refined (engine/search/refine.py): the refined box's similarity to the query
    # and, when the score became their blend (`refine.rank_by_box`), the region score it blends.
    box_score: float | None = None
    region_score: float | None = None

    def as_json(self) -> dict:
        out = {
            "image": self.image,
            "score": float(self.score),
            "box": self.box.as_list(),
            "ellipse": self.ellipse.as_dict(),
        }
        for key in ("box_score", "region_score"):
            if getattr(self, key) is not None:
                out[key] = float(getattr(self, key))
        return out


@dataclass
class Annotation:
    """A labelled box. `source` is "manual", "search" or "import"."""

    id: str
    image: str
    category: str
    box: Box
    score: float | None = None
    query_id: str | None = None
    source: str = "manual"

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "image": self.image,
            "category": self.category,
            "box": self.box.as_list(),
            "score": None if self.score is None else float(self.score),
            "query_id": self.query_id,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Annotation":
        return cls(
            id=str(d["id"]),
            image=str(d["image"]),
            category=str(d["category"]),
            box=Box.from_list(d["box"]),
            score=None if d.get("score") is None else float(d["score"]),
            query_id=d.get("query_id"),
            source=str(d.get("source", "manual")),
        )
