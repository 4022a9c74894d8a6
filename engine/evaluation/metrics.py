"""Instance-search metrics, pure numpy (spec section 6).

One query ranks N reference images by score. An image is *relevant* when it contains the query's
instance; a relevant image is *located* when the box returned for it has its centre inside the
instance's ground-truth box there. Located relevance is what an annotator sees: a hit whose box
is on something else still has to be redrawn by hand.

Conventions:
- Ties in score are broken pessimistically: irrelevant images first, then relevant but not
  located ones. A method that gives many images the same score (a matcher finding no inliers)
  must not profit from the order images happen to be listed in.
- AP@k as the DASR authors' lab computes it: n = min(k, |GT|), AP@k = (1/n) sum_{i<=n} P(i) rel(i),
  i.e. only the first n ranks count. AP@all is non-interpolated AP over the whole list
  (sum of P(i) at the relevant ranks / |GT|). A query with no relevant image gets NaN, and NaNs
  are left out of means.
- Boxes are [x, y, w, h] rows; a row of NaN means "no box" (never located, IoU 0).
"""
from __future__ import annotations

import numpy as np

# Localisation recall thresholds (Hosang et al.): 0.05, 0.10, ..., 0.95.
IOU_THRESHOLDS = np.round(np.arange(1, 20) * 0.05, 2)
DEFAULT_KS = (50, 100)


def pessimistic_order(scores, relevant, located=None) -> np.ndarray:
    """Indices best first; among equal scores, irrelevant before relevant, unlocated before located."""
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    located = np.zeros_like(relevant) if located is None else np.asarray(located, dtype=bool)
    # np.lexsort sorts by the last key first.
    return np.lexsort((located, relevant, -scores))


def average_precision_at_k(ranked_hits, n_relevant: int, k: int | None = None) -> float:
    """AP@k of a ranked 0/1 list against |GT| = n_relevant; k=None gives AP@all."""
    hits = np.asarray(ranked_hits, dtype=np.float64)
    if n_relevant <= 0:
        return float("nan")
    n = n_relevant if k is None else min(k, n_relevant)
    cut = hits if k is None else hits[:n]
    precision = np.cumsum(cut) / np.arange(1, len(cut) + 1)
    return float(np.sum(precision * cut) / n)


def recall_at_k(ranked_hits, n_relevant: int, k: int) -> float:
    """Fraction of the n_relevant images found among the first k ranks."""
    if n_relevant <= 0:
        return float("nan")
    return float(np.sum(np.asarray(ranked_hits, dtype=np.float64)[:k]) / n_relevant)


def hits_to_find(ranked_hits, n_relevant: int, fraction: float = 0.9) -> float:
    """How many ranked results a person reviews before `fraction` of the n_relevant images are
    found (inf when the list never gets there)."""
    if n_relevant <= 0:
        return float("nan")
    need = int(np.ceil(fraction * n_relevant - 1e-9))
    found = np.cumsum(np.asarray(ranked_hits, dtype=np.int64))
    reached = np.flatnonzero(found >= need)
    return float(reached[0] + 1) if reached.size else float("inf")


# Object size relative to its photo: the ground truth's long side over the photo's long side.
SIZE_BINS = (("small", 1 / 16), ("medium", 1 / 4), ("large", float("inf")))


def size_bin(gt_box, photo_size) -> str:
    """"small" (long side < 1/16 of the photo's), "medium" (< 1/4) or "large"."""
    ratio = max(float(gt_box[2]), float(gt_box[3])) / max(photo_size)
    return next(name for name, limit in SIZE_BINS if ratio < limit)


def box_figures(ious) -> dict[str, float]:
    """Figures of returned boxes against the ground truth (one IoU per relevant image): loc recall
    at IoU 0.5 and at 0.7 (a box an annotator accepts without adjusting) and the mean IoU."""
    ious = np.asarray(ious, dtype=np.float64).reshape(-1)
    if ious.size == 0:
        return {"pairs": 0, "loc_recall_05": None, "loc_recall_07": None, "mean_iou": None}
    return {"pairs": int(ious.size), "loc_recall_05": float((ious >= 0.5 - 1e-12).mean()),
            "loc_recall_07": float((ious >= 0.7 - 1e-12).mean()), "mean_iou": float(ious.mean())}


def centres_inside(boxes, gt_boxes) -> np.ndarray:
    """bool[N]: centre of boxes[i] lies inside gt_boxes[i] (borders included); NaN rows are False."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    cx = boxes[:, 0] + boxes[:, 2] / 2
    cy = boxes[:, 1] + boxes[:, 3] / 2
    with np.errstate(invalid="ignore"):
        inside = (cx >= gt[:, 0]) & (cx <= gt[:, 0] + gt[:, 2]) & (cy >= gt[:, 1]) & (cy <= gt[:, 1] + gt[:, 3])
    return inside & np.isfinite(cx) & np.isfinite(cy)


def iou_xywh(a, b) -> np.ndarray:
    """Row-wise IoU of two [N, 4] box arrays (broadcasts a single row); NaN boxes give 0."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    iy = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    def area(x):
        return np.clip(x[:, 2], 0, None) * np.clip(x[:, 3], 0, None)

    union = area(a) + area(b) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    return np.nan_to_num(np.where(union > 0, iou, 0.0), nan=0.0)


def best_iou(region_boxes, gt_box) -> float:
    """Largest IoU between any of an image's region boxes [R, 4] and one ground-truth box (0 if R = 0)."""
    region_boxes = np.asarray(region_boxes, dtype=np.float64).reshape(-1, 4)
    if region_boxes.shape[0] == 0:
        return 0.0
    return float(iou_xywh(region_boxes, np.asarray(gt_box, dtype=np.float64)[None]).max())


def localization_recall(ious, thresholds=IOU_THRESHOLDS) -> np.ndarray:
    """Fraction of IoU values >= each threshold (NaN per threshold when there are none)."""
    ious = np.asarray(ious, dtype=np.float64).reshape(-1)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if ious.size == 0:
        return np.full(thresholds.shape, np.nan)
    return (ious[None, :] >= thresholds[:, None] - 1e-12).mean(1)


def evaluate_query(scores, relevant, located=None, ks=DEFAULT_KS) -> dict[str, float]:
    """Metrics of one query over its N references.

    scores[i]: image score (higher = better); relevant[i]: the image contains the instance;
    located[i]: relevant AND its returned box is on the instance (None: the method returns no
    boxes, and the located figures are 0 for a query with relevant images).
    """
    relevant = np.asarray(relevant, dtype=bool)
    located = np.zeros_like(relevant) if located is None else np.asarray(located, dtype=bool) & relevant
    order = pessimistic_order(scores, relevant, located)
    rel, loc = relevant[order], located[order]
    n = int(relevant.sum())
    out: dict[str, float] = {"relevant": float(n)}
    for name, ranked in (("", rel), ("_located", loc)):
        for k in ks:
            out[f"ap@{k}{name}"] = average_precision_at_k(ranked, n, k)
        out[f"ap@all{name}"] = average_precision_at_k(ranked, n, None)
        out[f"recall@100{name}"] = recall_at_k(ranked, n, 100)
    return out


def mean_metrics(per_query: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over queries, NaNs (queries without positives) left out."""
    keys = [k for k in (per_query[0] if per_query else {}) if k != "relevant"]
    out = {}
    for key in keys:
        values = np.array([q[key] for q in per_query], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out["m" + key if key.startswith("ap@") else key] = float(finite.mean()) if finite.size else float("nan")
    out["queries"] = float(sum(1 for q in per_query if q.get("relevant", 0) > 0))
    return out


def simulate_review(region_vectors, region_images, region_located, query_vector, batch: int = 10,
                    feedback_hits: int = 0, neg_weight: float = 0.5) -> np.ndarray:
    """A simulated annotator walking down the hit list; returns 0/1 per reviewed hit (1 = an
    occurrence of the instance found).

    A hit is one region (one per image in a batch). The annotator accepts a hit whose region is
    truly the instance (`region_located`) and rejects the others; an accepted image is done, a
    rejected region never comes back (the image may, with another region). While fewer than
    `feedback_hits` hits have been reviewed, the list is re-ranked after each batch with the
    accepted regions as extra positives and the rejected ones as negatives
    (`feedback.feedback_scores`); feedback_hits=0 is the plain ranked list. Ties go
    pessimistically (wrong regions first).
    """
    from dasr_annotator.engine.search.feedback import feedback_scores

    vectors = np.asarray(region_vectors, np.float32)
    images = np.asarray(region_images)
    located = np.asarray(region_located, bool)
    positives, negatives = [np.asarray(query_vector, np.float32)], []
    scores = vectors @ positives[0]
    open_region = np.ones(len(vectors), bool)
    outcome: list[int] = []
    while open_region.any():
        order = np.lexsort((located, -scores))
        order = order[open_region[order]]
        _, first = np.unique(images[order], return_index=True)  # one hit per image in a batch
        picked = order[np.sort(first)[:batch]]
        for r in picked:
            if located[r]:
                open_region[images == images[r]] = False
                positives.append(vectors[r])
            else:
                open_region[r] = False
                negatives.append(vectors[r])
            outcome.append(int(located[r]))
        if len(outcome) < feedback_hits:
            scores = feedback_scores(np.stack(positives), np.stack(negatives) if negatives else None, vectors,
                                     neg_weight=neg_weight)
    return np.asarray(outcome, np.int64)


def simulate_image_review(region_vectors, region_images, image_found, query_vector, batch: int = 10,
                          feedback_hits: int = 0, neg_weight: float = 0.5, on_accept=None,
                          second_looks=None) -> np.ndarray:
    """`simulate_review` for hits whose box does not come from the region that ranks them (the
    re-localised hits of engine/relocate.py): each image is one hit; it is found when
    `image_found[image]` (its drawn box is on the instance), or `image_found(image)` when a
    callable (asked when the hit is reviewed, so it may re-localise with what was accepted so
    far). At each re-ranking, `on_accept(image)` is told of the batch's accepted hits, and
    `second_looks(rejected_images)` may return rejected images to show again (with a new box:
    engine/relocate.second_look). Feedback takes the image's best-scoring region as the positive
    (accepted) or negative (rejected) example, as the GUI does, and re-orders the images not
    reviewed yet. With a fixed array, ties go pessimistically (not found first)."""
    from dasr_annotator.engine.search.feedback import feedback_scores

    vectors = np.asarray(region_vectors, np.float32)
    images = np.asarray(region_images)
    n_images = int(images.max()) + 1 if len(images) else 0
    if callable(image_found):
        found_of, tie = image_found, np.zeros(n_images, bool)
    else:
        fixed = np.asarray(image_found, bool)
        found_of, tie = (lambda i: bool(fixed[i])), fixed
        n_images = max(n_images, len(fixed))
    positives, negatives = [np.asarray(query_vector, np.float32)], []
    scores = vectors @ positives[0]
    open_image = np.zeros(n_images, bool)
    open_image[np.unique(images)] = True
    rejected: set[int] = set()  # images whose last hit was rejected
    outcome: list[int] = []
    while open_image.any():
        best = np.full(n_images, -np.inf)
        np.maximum.at(best, images, scores)
        candidates = np.flatnonzero(open_image)
        picked = candidates[np.lexsort((tie[candidates], -best[candidates]))][:batch]
        accepted = []
        for i in picked:
            found = found_of(int(i))
            rows = np.flatnonzero(images == i)
            example = vectors[rows[np.argmax(scores[rows])]]
            (positives if found else negatives).append(example)
            open_image[i] = False
            outcome.append(int(found))
            (accepted.append if found else rejected.add)(int(i))
        if len(outcome) < feedback_hits:  # re-rank (and re-localise) after the batch, as the GUI
            for i in accepted if on_accept is not None else ():
                on_accept(i)
            scores = feedback_scores(np.stack(positives), np.stack(negatives) if negatives else None, vectors,
                                     neg_weight=neg_weight)
            for i in second_looks(sorted(rejected)) if second_looks is not None else ():
                rejected.discard(i)
                open_image[i] = True
    return np.asarray(outcome, np.int64)
