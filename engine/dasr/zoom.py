"""Coarse-to-fine localisation: a hit's box placed on a zoomed crop of the full-resolution photo.

The stored relocation map (stride 16 at the 512-px network input) says roughly where an instance
is, but a 40-px object in a 1280-px photo is one cell of it: a window moving in whole cells cannot
fit it (one cell of offset alone leaves IoU ~0.4). So, around each coarse window, a context crop
of the full-resolution photo is zoomed until the expected object spans `CELLS_ACROSS` cells of the
relocation layer (beyond native resolution for the smallest, up to `MAX_ZOOM`), one partial
forward pass gives its relocation map, and windows of several scales and aspect ratios are
compared there with the query, described the same way: zoomed to the same cell count in a crop
of the same context around the query box. Both crops are centred on their own spatial mean
(as `relocate.centred`), so what the surroundings share drops out.

Windows are compared first by their pooled vector at whole-cell steps (integral image, every
shape and position), then the best few by their cells: the window resampled to the query's cell
grid (`torchvision.ops.roi_align`) against the query's grid, at half-cell steps around each. The
cell-by-cell comparison keeps the object's layout, which one pooled vector loses.

Everything here is torch and numpy on boxes in original pixels; which photos and windows to refine,
caching and progress live in `engine/search/refine.py`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from dasr_annotator.engine.dasr.regions import box_iou_matrix
from dasr_annotator.engine.dasr.relocate import REJECTED_IOU
from dasr_annotator.engine.types import Box

# The query box spans this many relocation cells across (geometric mean of its sides): 4 places
# boxes clearly worse, 8 slightly better than 6 at 2.5x the cost (dev-hires, issue #24).
CELLS_ACROSS = 6.0
# Context around the box on each side, in box sizes (geometric mean): a crop ~3.5x the box, wide
# enough for a coarse window one cell off and for the centring to see some surroundings.
CONTEXT = 1.25
# Zooming beyond native resolution helps the smallest objects, up to a point: past 4x a photo has
# no more detail to give and crops only get dearer.
MAX_ZOOM = 4.0
# Window sizes relative to the expected size, and aspect ratios relative to the query's.
FINE_SCALES = (0.6, 0.7, 0.8, 0.9, 1.0, 1.12, 1.25, 1.4, 1.6)
FINE_ASPECTS = (0.8, 1.0, 1.25)
# Windows compared cell by cell, after the pooled pass picked them.
TEMPLATE_CANDIDATES = 12
# The box is not the best window alone but the windows overlapping it (IoU >= VOTE_IOU) averaged,
# each weighted by exp((its score - the best) / VOTE_TEMPERATURE) (box voting): windows half a
# cell apart differ in match by about as much as the noise between two frames, so the argmax
# among them is partly chance. A weight falls to 1/e at VOTE_TEMPERATURE below the best. Relevant
# hits' boxes at IoU >= 0.5 / 0.7 (12 queries a set, benchmarks.md "Box voting"), temperature
# 0.01 / 0.02 / 0.03: dev 90.5 / 59.5 % (the best window alone) -> 91.4 / 63.3, 91.2 / 62.4,
# 90.5 / 62.1 %; dev-hires 66.0 / 45.2 % -> 68.0 / 49.2, 67.7 / 52.1, 67.3 / 51.8 %. Every
# temperature gains on both sets; 0.02, the middle, is kept.
VOTE_IOU = 0.5
VOTE_TEMPERATURE = 0.02
# The query's cell grid, at most this many cells a side (the cost grows with its square).
MAX_GRID = 8


@dataclass
class Crop:
    """A rectangle of an image's original pixels and how it was zoomed into the network input."""

    x0: float  # origin in original pixels
    y0: float
    zoom_x: float  # network-input pixels per original pixel
    zoom_y: float
    width: int  # network-input size of the crop (padded to the planned size)
    height: int
    image_width: int  # the image it was cut from, original pixels
    image_height: int
    content_width: int = 0  # network-input pixels holding the image (the rest is padding)
    content_height: int = 0

    def valid_cells(self, stride: int) -> tuple[int, int]:
        """(rows, cols) of relocation cells that hold the image rather than padding."""
        return (max(1, math.ceil((self.content_height or self.height) / stride)),
                max(1, math.ceil((self.content_width or self.width) / stride)))

    def to_original(self, x1: float, y1: float, x2: float, y2: float) -> Box:
        """A box in crop input pixels -> original pixels, clipped to the image."""
        box = Box.from_xyxy(self.x0 + x1 / self.zoom_x, self.y0 + y1 / self.zoom_y,
                            self.x0 + x2 / self.zoom_x, self.y0 + y2 / self.zoom_y)
        return box.clipped(self.image_width, self.image_height)

    def from_original(self, box: Box) -> tuple[float, float, float, float]:
        """A box in original pixels -> crop input pixels (xyxy)."""
        return ((box.x - self.x0) * self.zoom_x, (box.y - self.y0) * self.zoom_y,
                (box.x2 - self.x0) * self.zoom_x, (box.y2 - self.y0) * self.zoom_y)


def zoom_for(size: tuple[float, float], stride: int, cells: float = CELLS_ACROSS) -> float:
    """Network-input pixels per original pixel that make a box of `size` (w, h) span `cells`."""
    geo = math.sqrt(max(size[0], 1.0) * max(size[1], 1.0))
    return min(MAX_ZOOM, cells * stride / geo)


def plan_crop(center: tuple[float, float], size: tuple[float, float], image_size: tuple[int, int],
              stride: int, cells: float = CELLS_ACROSS) -> Crop:
    """The crop that shows an object of `size` (w, h, original pixels) near `center` at `cells`
    cells across, with CONTEXT around it; moved inside the image where it would stick out. Its
    network-input size depends only on `size` (whole cells), so crops planned for one expected
    size batch together."""
    width, height = image_size
    zoom = zoom_for(size, stride, cells)
    margin = CONTEXT * math.sqrt(max(size[0], 1.0) * max(size[1], 1.0))
    out_w = max(2, math.ceil((size[0] + 2 * margin) * zoom / stride)) * stride
    out_h = max(2, math.ceil((size[1] + 2 * margin) * zoom / stride)) * stride
    span_w, span_h = out_w / zoom, out_h / zoom
    x0 = min(max(center[0] - span_w / 2, 0.0), max(width - span_w, 0.0))
    y0 = min(max(center[1] - span_h / 2, 0.0), max(height - span_h, 0.0))
    return Crop(x0, y0, zoom, zoom, out_w, out_h, width, height)


def cut(rgb: np.ndarray, rgb_scale: float, crop: Crop) -> tuple[np.ndarray, Crop]:
    """The crop's pixels (uint8 [height, width, 3]) from an image decoded at `rgb_scale` decoded
    pixels per original pixel, and the crop as actually cut: whole decoded pixels, so its origin
    and zoom are exact. Where the image ends before the crop does, the edge is repeated."""
    dh, dw = rgb.shape[:2]
    x0 = int(math.floor(crop.x0 * rgb_scale))
    y0 = int(math.floor(crop.y0 * rgb_scale))
    x1 = min(dw, max(x0 + 1, int(math.ceil((crop.x0 + crop.width / crop.zoom_x) * rgb_scale))))
    y1 = min(dh, max(y0 + 1, int(math.ceil((crop.y0 + crop.height / crop.zoom_y) * rgb_scale))))
    x0, y0 = min(x0, x1 - 1), min(y0, y1 - 1)
    # the planned zoom, applied to the whole decoded pixels cut
    zoom_x, zoom_y = crop.zoom_x / rgb_scale, crop.zoom_y / rgb_scale
    out_w = max(1, min(crop.width, round((x1 - x0) * zoom_x)))
    out_h = max(1, min(crop.height, round((y1 - y0) * zoom_y)))
    patch = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    shrinking = out_w < (x1 - x0) or out_h < (y1 - y0)
    patch = cv2.resize(patch, (out_w, out_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if out_w < crop.width or out_h < crop.height:
        patch = cv2.copyMakeBorder(patch, 0, crop.height - out_h, 0, crop.width - out_w, cv2.BORDER_REPLICATE)
    exact = Crop(x0 / rgb_scale, y0 / rgb_scale, out_w / ((x1 - x0) / rgb_scale), out_h / ((y1 - y0) / rgb_scale),
                 crop.width, crop.height, crop.image_width, crop.image_height, out_w, out_h)
    return patch, exact


def centred_map(feature: Tensor, valid: tuple[int, int] | None = None) -> Tensor:
    """[C, h, w] float32 minus its spatial mean (over the `valid` (h, w) cells: not the padding)."""
    feature = feature.float()
    vh, vw = valid or feature.shape[1:]
    return feature - feature[:, :vh, :vw].mean(dim=(1, 2), keepdim=True)


def grid_shape(box_cells: tuple[float, float]) -> tuple[int, int]:
    """(rows, cols) of the cell grid a box of (w, h) cells is compared on."""
    w, h = box_cells
    return (int(np.clip(round(h), 2, MAX_GRID)), int(np.clip(round(w), 2, MAX_GRID)))


def resample(feature: Tensor, boxes_cells: Tensor, grid: tuple[int, int]) -> Tensor:
    """Each box (xyxy, in cells of `feature` [C, h, w]) resampled to `grid` -> [N, C, rows, cols]."""
    rois = torch.cat([boxes_cells.new_zeros((len(boxes_cells), 1)), boxes_cells], 1)
    return roi_align(feature[None], rois, output_size=grid, spatial_scale=1.0, sampling_ratio=2, aligned=True)


@dataclass
class Template:
    """A box described for fine matching: its cells on the zoomed, centred relocation map."""

    grid: Tensor  # [C, rows, cols], the flattened grid l2-normalised
    vector: Tensor  # [C] pooled, l2-normalised
    cells: tuple[float, float]  # the box's (w, h) in cells at its zoom

    @classmethod
    def of(cls, feature: Tensor, box_cells: tuple[float, float, float, float]) -> "Template":
        """The template of a box (xyxy, cells) on a centred map [C, h, w]."""
        x1, y1, x2, y2 = box_cells
        cells = (max(x2 - x1, 1e-3), max(y2 - y1, 1e-3))
        grid = resample(feature, torch.tensor([box_cells], dtype=feature.dtype, device=feature.device),
                        grid_shape(cells))[0]
        vector = grid.mean(dim=(1, 2))
        return cls(grid / grid.norm().clamp_min(1e-12), vector / vector.norm().clamp_min(1e-12), cells)


def window_shapes(cells: tuple[float, float], map_size: tuple[int, int]) -> list[tuple[int, int]]:
    """Whole-cell (w, h) window shapes around a box of `cells`, every scale and aspect ratio."""
    h, w = map_size
    shapes = []
    for s in FINE_SCALES:
        for a in FINE_ASPECTS:
            ww = int(np.clip(round(cells[0] * s * math.sqrt(a)), 1, w))
            wh = int(np.clip(round(cells[1] * s / math.sqrt(a)), 1, h))
            if (ww, wh) not in shapes:
                shapes.append((ww, wh))
    return shapes


def pooled_candidates(feature: Tensor, templates: list[Template], shapes, count: int,
                      valid: tuple[int, int]) -> Tensor:
    """The `count` best windows (xyxy in cells) by pooled cosine to any template, every shape at
    every whole-cell position inside the `valid` (rows, cols) part of the map."""
    c = feature.shape[0]
    vh, vw = valid
    integral = F.pad(feature[:, :vh, :vw].cumsum(1).cumsum(2), (1, 0, 1, 0))  # [C, vh + 1, vw + 1]
    vectors = torch.stack([t.vector for t in templates])  # [T, C]
    scores, boxes = [], []
    for ww, wh in shapes:
        if ww > vw or wh > vh:
            continue
        sums = (integral[:, wh:, ww:] - integral[:, :-wh, ww:] - integral[:, wh:, :-ww] + integral[:, :-wh, :-ww])
        rows, cols = sums.shape[1:]
        flat = sums.reshape(c, -1)
        scores.append((vectors @ flat).amax(0) / flat.norm(dim=0).clamp_min(1e-12))
        r, q = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        boxes.append(torch.stack([q.ravel(), r.ravel(), q.ravel() + ww, r.ravel() + wh], 1))
    if not scores:
        return torch.tensor([[0.0, 0.0, float(vw), float(vh)]])
    scores, boxes = torch.cat(scores), torch.cat(boxes).float()
    return boxes[torch.topk(scores, min(count, len(scores))).indices]


def jittered(boxes: Tensor, step: float = 0.5) -> Tensor:
    """Each box and its neighbours moved by `step` cells (9 positions) and grown or shrunk by one
    step at each edge pair (4 more): [13 N, 4]."""
    out = [boxes]
    for dx in (-step, 0.0, step):
        for dy in (-step, 0.0, step):
            if dx or dy:
                out.append(boxes + boxes.new_tensor([dx, dy, dx, dy]))
    for gx, gy in ((step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step)):
        out.append(boxes + boxes.new_tensor([-gx / 2, -gy / 2, gx / 2, gy / 2]))
    return torch.cat(out)


def best_fine_window(feature: Tensor, templates: list[Template], valid: tuple[int, int],
                     excluded_cells: Tensor | None = None) -> tuple[float, Tensor]:
    """The best window on a centred crop map [C, h, w]: (similarity, xyxy in cells).

    Pooled cosine at whole-cell steps picks TEMPLATE_CANDIDATES windows; those and their half-cell
    neighbours are compared cell by cell with every template, each at its own grid; the best
    one's similarity is returned with the vote of the windows around it (`voted_box`). Windows
    overlapping an `excluded_cells` box (IoU >= 0.3: rejected there) are not taken."""
    shapes = []
    for t in templates:
        shapes += [s for s in window_shapes(t.cells, tuple(feature.shape[1:])) if s not in shapes]
    candidates = jittered(pooled_candidates(feature, templates, shapes, TEMPLATE_CANDIDATES, valid))
    vh, vw = valid
    candidates[:, 0::2] = candidates[:, 0::2].clamp(0, vw)
    candidates[:, 1::2] = candidates[:, 1::2].clamp(0, vh)
    keep = ((candidates[:, 2] - candidates[:, 0]) >= 0.5) & ((candidates[:, 3] - candidates[:, 1]) >= 0.5)
    candidates = candidates[keep]
    if excluded_cells is not None and len(excluded_cells) and len(candidates):
        overlap = box_iou_matrix(candidates, excluded_cells.to(candidates)).amax(1)
        candidates = candidates[overlap < REJECTED_IOU]
    if not len(candidates):
        return -math.inf, feature.new_tensor([0.0, 0.0, float(vw), float(vh)])
    scores = _template_scores(feature, templates, candidates)
    best = int(torch.argmax(scores))
    return float(scores[best]), voted_box(candidates, scores, best)


def voted_box(boxes: Tensor, scores: Tensor, best: int) -> Tensor:
    """The mean of the `boxes` [N, 4] overlapping `boxes[best]` (IoU >= VOTE_IOU, itself
    included), each weighted by exp((score - best score) / VOTE_TEMPERATURE)."""
    near = box_iou_matrix(boxes, boxes[best:best + 1])[:, 0] >= VOTE_IOU
    weights = torch.exp((scores[near] - scores[best]) / VOTE_TEMPERATURE)
    return (boxes[near] * weights[:, None]).sum(0) / weights.sum()


def _template_scores(feature: Tensor, templates: list[Template], boxes: Tensor) -> Tensor:
    """Each box's best cosine, over the templates, between its resampled cells and the template's."""
    best = torch.full((len(boxes),), -math.inf, device=feature.device)
    for t in templates:
        grids = resample(feature, boxes.to(feature.dtype), tuple(t.grid.shape[1:]))
        flat = grids.flatten(1)
        best = torch.maximum(best, (flat @ t.grid.flatten()) / flat.norm(dim=1).clamp_min(1e-12))
    return best
