"""Multi-example queries and relevance feedback over region descriptors already in memory.

Pure numpy, no torch or faiss, so the search and the GUI's re-ranking can call it cheaply.
Region descriptor rows are expected l2-normalised (as the index stores them), so a dot product
is the cosine; the few query vectors are normalised here.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from dasr_annotator.engine.dasr.relocate import box_iou_matrix
from dasr_annotator.engine.types import Annotation, Box, Hit

FUSIONS = ("max", "mean")


def _unit_rows(x) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _fuse(similarities: np.ndarray, fusion: str) -> np.ndarray:
    """[R, P] cosines to the positives -> [R] (best match, or the average over examples)."""
    if fusion == "max":
        return similarities.max(1)
    if fusion == "mean":
        return similarities.mean(1)
    raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")


def region_scores(positives, regions: np.ndarray, fusion: str = "max") -> np.ndarray:
    """Fused cosine score [R] of every region row against the positive examples [P, D]."""
    return feedback_scores(positives, None, regions, fusion)


def feedback_scores(
    positives, negatives, regions: np.ndarray, fusion: str = "max", neg_weight: float = 0.5
) -> np.ndarray:
    """Fused positive score minus `neg_weight` times the similarity to the closest negative.

    Why a penalty rather than a Rocchio query update: Rocchio replaces the examples by one
    averaged vector, which blurs distinct views of the instance (defeating max fusion) and moves
    every score, so rejecting one false hit reorders unrelated images too. The penalty acts only
    where a rejected hit has look-alikes. Negative cosines (whitened descriptors) are clipped at 0
    so being unlike a negative earns no bonus.
    """
    pos = _unit_rows(positives)
    neg = _unit_rows(negatives) if negatives is not None and len(negatives) else pos[:0]
    # One pass over the (large) region matrix for all examples at once.
    sims = regions @ np.concatenate([pos, neg]).T
    score = _fuse(sims[:, : len(pos)], fusion)
    if len(neg) and neg_weight:
        score = score - neg_weight * np.maximum(sims[:, len(pos) :].max(1), 0.0)
    return score


def image_ranking(
    region_scores: np.ndarray, region_image_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank images by their best region (image score = max over its regions).

    Returns (image ids best first, index of each image's best region, image scores). Ties go to
    the lower region index within an image and to the lower image id between images.
    """
    scores = np.asarray(region_scores)
    ids = np.asarray(region_image_ids)
    n_regions = len(scores)
    if n_regions == 0:
        return ids[:0], np.zeros(0, np.int64), scores[:0]
    # Small non-negative integer ids index arrays directly; anything else is relabelled.
    if ids.dtype.kind in "iu" and ids.min() >= 0 and ids.max() < 4 * n_regions + 1024:
        labels, keys = None, ids.astype(np.intp, copy=False)
        n_images = int(ids.max()) + 1
    else:
        labels, keys = np.unique(ids, return_inverse=True)
        n_images = len(labels)
    best = np.full(n_images, -np.inf, dtype=scores.dtype if scores.dtype.kind == "f" else np.float64)
    np.maximum.at(best, keys, scores)
    winners = np.flatnonzero(scores == best[keys])
    best_region = np.full(n_images, n_regions, dtype=np.int64)
    np.minimum.at(best_region, keys[winners], winners)
    present = np.flatnonzero(best_region < n_regions)
    order = present[np.argsort(-best[present], kind="stable")]
    image_ids = order.astype(ids.dtype) if labels is None else labels[order]
    return image_ids, best_region[order], best[order]


def merge_overlapping(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Indices of the hits to keep, best first, among hits in ONE image (boxes xyxy [N, 4]): a hit
    whose IoU with a better kept hit exceeds `iou` is merged into it (the better box stands)."""
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    overlaps = box_iou_matrix(boxes, boxes) > iou
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in order:
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlaps[i]
    return np.asarray(keep, dtype=np.int64)


def _xyxy(boxes: Sequence[Box]) -> np.ndarray:
    return np.array([[b.x, b.y, b.x2, b.y2] for b in boxes], np.float64).reshape(-1, 4)


def hide_done(
    hits: Sequence[Hit], annotations: Sequence[Annotation], category: str, iou: float = 0.5
) -> np.ndarray:
    """Mask [len(hits)]: True where a hit overlaps (IoU >= iou) an existing annotation of
    `category` in the same image, i.e. that instance is already labelled."""
    labelled: dict[str, list[Box]] = defaultdict(list)
    for ann in annotations:
        if ann.category == category:
            labelled[ann.image].append(ann.box)
    done = np.zeros(len(hits), bool)
    by_image: dict[str, list[int]] = defaultdict(list)
    for i, hit in enumerate(hits):
        if hit.image in labelled:
            by_image[hit.image].append(i)
    for image, idx in by_image.items():
        overlap = box_iou_matrix(_xyxy([hits[i].box for i in idx]), _xyxy(labelled[image]))
        done[idx] = (overlap >= iou).any(1)
    return done
