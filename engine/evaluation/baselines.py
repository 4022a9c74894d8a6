"""Baselines the evaluation runs beside DASR: global pooling of one backbone feature map (mean,
GeM, R-MAC, CroW) and a classical local-feature matcher (SIFT, ratio test, RANSAC homography).

Global descriptors describe the whole image (or the whole query crop), so they return no box.
The SIFT matcher returns the query box projected by the homography it finds.

Feature maps come from the backbone's descriptor layer, which can be negative (EfficientNet's
linear bottlenecks); GeM and CroW assume non-negative activations, so they pool its positive part.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from dasr_annotator.engine.dasr.descriptors import l2n

GLOBAL_POOLINGS = ("mean", "gem", "rmac", "crow")
GEM_POWER = 3.0
RMAC_LEVELS = 3
RMAC_OVERLAP = 0.4  # wanted overlap of neighbouring R-MAC squares (Tolias et al.)

SIFT_MAX_FEATURES = 1000
SIFT_RATIO = 0.8  # Lowe's ratio test
RANSAC_PIXELS = 5.0  # reprojection tolerance, original image pixels
MIN_GOOD_MATCHES = 4  # a homography needs four correspondences
# Ratio-test matches only order images with the same number of inliers (one inlier outweighs
# any number of them while there are fewer than this many).
TIE_BREAK_MATCHES = 1000.0


# --------------------------------------------------------------------------- global pooling


@torch.inference_mode()
def feature_map(backbone, rgb: np.ndarray, layer: str | None = None) -> np.ndarray:
    """[C, h, w] float32 map of `layer` (default: the descriptor layer) for an H x W x 3 image."""
    layer = layer or backbone.descriptor_layer
    out = backbone.forward(backbone.to_input(rgb), layers=(layer,)).features[layer]
    return out[0].float().cpu().numpy()


def pool_mean(f: np.ndarray) -> np.ndarray:
    return l2n(f.mean(axis=(1, 2))).astype(np.float32)


def pool_gem(f: np.ndarray, p: float = GEM_POWER) -> np.ndarray:
    """Generalised mean (Radenovic et al.) of the positive part, p = 3."""
    x = np.clip(f, 1e-6, None).astype(np.float64)
    return l2n((x**p).mean(axis=(1, 2)) ** (1.0 / p)).astype(np.float32)


def rmac_regions(h: int, w: int, levels: int = RMAC_LEVELS,
                 overlap: float = RMAC_OVERLAP) -> list[tuple[int, int, int, int]]:
    """R-MAC cell windows (row0, row1, col0, col1): the whole map, then at level l squares of side
    2 * min(h, w) / (l + 1), l per short side and a few more along the long side, spread evenly
    so that neighbours overlap by about `overlap`."""
    short, long_ = min(h, w), max(h, w)
    extra = 0
    if long_ > short:
        # squares of the short side, m + 1 of them along the long side: pick m for the overlap
        candidates = np.arange(1, 7)
        step = (long_ - short) / candidates
        extra = int(candidates[np.argmin(np.abs((short - step) / short - overlap))])
    windows = {(0, h, 0, w)}
    for level in range(1, levels + 1):
        side = max(1, int(2 * short / (level + 1)))
        n_rows = level + (extra if h > w else 0)
        n_cols = level + (extra if w > h else 0)
        for r0 in _starts(h, side, n_rows):
            for c0 in _starts(w, side, n_cols):
                windows.add((r0, r0 + side, c0, c0 + side))
    return sorted(windows)


def _starts(length: int, side: int, count: int) -> list[int]:
    if count <= 1 or length <= side:
        return [max(0, (length - side) // 2)]
    return sorted({int(round(v)) for v in np.linspace(0, length - side, count)})


def pool_rmac(f: np.ndarray, levels: int = RMAC_LEVELS) -> np.ndarray:
    """Regional maximum activations: l2-normalised max over each R-MAC window, summed, l2."""
    total = np.zeros(f.shape[0], np.float64)
    for r0, r1, c0, c1 in rmac_regions(f.shape[1], f.shape[2], levels):
        total += l2n(f[:, r0:r1, c0:c1].max(axis=(1, 2)).astype(np.float64))
    return l2n(total).astype(np.float32)


def pool_crow(f: np.ndarray) -> np.ndarray:
    """CroW (Kalantidis et al.): spatial weights from the l2-normalised channel sum (power 1/2),
    channel weights from the log inverse frequency of non-zero responses."""
    x = np.clip(f, 0, None).astype(np.float64)
    spatial = x.sum(0)
    norm = np.linalg.norm(spatial)
    spatial = np.sqrt(spatial / norm) if norm > 0 else np.ones_like(spatial)
    pooled = (x * spatial[None]).sum(axis=(1, 2))
    nonzero = (x > 0).mean(axis=(1, 2))
    eps = 1e-6
    channel = np.log((nonzero.sum() + eps) / (nonzero + eps))
    return l2n(pooled * channel).astype(np.float32)


POOLING_FUNCTIONS = {"mean": pool_mean, "gem": pool_gem, "rmac": pool_rmac, "crow": pool_crow}


def global_descriptors(f: np.ndarray) -> dict[str, np.ndarray]:
    """Every global pooling of one feature map [C, h, w], l2-normalised float32 vectors."""
    return {name: fn(f) for name, fn in POOLING_FUNCTIONS.items()}


def crop_for_network(rgb: np.ndarray, box_xyxy, min_side: int) -> np.ndarray:
    """The box's pixels (box in `rgb` pixels), enlarged when the short side is under `min_side`
    so the crop covers at least a couple of feature-map cells."""
    h, w = rgb.shape[:2]
    x1, y1 = int(np.floor(max(0, box_xyxy[0]))), int(np.floor(max(0, box_xyxy[1])))
    x2, y2 = int(np.ceil(min(w, box_xyxy[2]))), int(np.ceil(min(h, box_xyxy[3])))
    crop = rgb[y1 : max(y2, y1 + 1), x1 : max(x2, x1 + 1)]
    short = min(crop.shape[:2])
    if short < min_side:
        factor = min_side / short
        size = (max(1, round(crop.shape[1] * factor)), max(1, round(crop.shape[0] * factor)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(crop)


# --------------------------------------------------------------------------- SIFT matcher


@dataclass
class SiftFeatures:
    points: np.ndarray  # [N, 2] float32 keypoint positions, ORIGINAL image pixels
    descriptors: np.ndarray  # [N, 128] uint8 (OpenCV's SIFT values are already 0..255)

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def inside(self, box_xywh) -> "SiftFeatures":
        x, y, w, h = (float(v) for v in box_xywh)
        p = self.points
        keep = (p[:, 0] >= x) & (p[:, 0] <= x + w) & (p[:, 1] >= y) & (p[:, 1] <= y + h)
        return SiftFeatures(self.points[keep], self.descriptors[keep])


def sift_features(rgb: np.ndarray, scale: float = 1.0, max_features: int = SIFT_MAX_FEATURES) -> SiftFeatures:
    """SIFT keypoints of an RGB image shown at `scale` x its original size."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    keypoints, desc = cv2.SIFT_create(nfeatures=max_features).detectAndCompute(gray, None)
    if desc is None or not keypoints:
        return SiftFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8))
    points = np.array([kp.pt for kp in keypoints], np.float32) / np.float32(scale)
    return SiftFeatures(points, np.clip(np.rint(desc), 0, 255).astype(np.uint8))


_MATCHER = None


def _matcher():
    global _MATCHER  # one brute-force matcher serves every pair; it holds no per-pair state
    if _MATCHER is None:
        _MATCHER = cv2.BFMatcher(cv2.NORM_L2)
    return _MATCHER


def match_sift(query: SiftFeatures, reference: SiftFeatures, query_box_xywh) -> tuple[float, np.ndarray | None]:
    """Match the query box's keypoints into a reference image.

    Returns (score, box): score = RANSAC homography inliers (ratio-test matches break ties),
    box = [x, y, w, h] bounding the projected query box, None when no plausible homography.
    """
    if len(query) < 2 or len(reference) < 2:
        return 0.0, None
    pairs = _matcher().knnMatch(query.descriptors.astype(np.float32), reference.descriptors.astype(np.float32), k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < SIFT_RATIO * n.distance]
    tie_break = len(good) / TIE_BREAK_MATCHES
    if len(good) < MIN_GOOD_MATCHES:
        return tie_break, None
    src = query.points[[m.queryIdx for m in good]].reshape(-1, 1, 2)
    dst = reference.points[[m.trainIdx for m in good]].reshape(-1, 1, 2)
    homography, mask = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_PIXELS)
    if homography is None or mask is None:
        return tie_break, None
    inliers = int(mask.sum())
    return inliers + tie_break, projected_box(homography, query_box_xywh)


def projected_box(homography: np.ndarray, box_xywh) -> np.ndarray | None:
    """Bounding box of the box's corners mapped by `homography`; None when the mapped corners do
    not form a convex quadrilateral in front of the camera (a degenerate fit)."""
    x, y, w, h = (float(v) for v in box_xywh)
    corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)
    homog = np.c_[corners, np.ones(4)] @ homography.T
    if np.any(homog[:, 2] <= 1e-9):
        return None
    mapped = homog[:, :2] / homog[:, 2:]
    if not np.all(np.isfinite(mapped)) or not cv2.isContourConvex(mapped.astype(np.float32).reshape(-1, 1, 2)):
        return None
    x1, y1 = mapped.min(0)
    x2, y2 = mapped.max(0)
    return np.array([x1, y1, x2 - x1, y2 - y1], np.float64)
