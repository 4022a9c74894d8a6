"""Whole-image search: photos like a whole query photo ("find photos like this one").

Every region of the query photo votes: a photo's score is the mean, over the query photo's
regions, of each one's best cosine similarity to a region of that photo (an asymmetric region-set
kernel). It needs nothing beyond the region index: the query's regions are searched like box
queries, and a photo absent from one query region's candidate list gets that list's last
similarity (an upper bound of its true one) for it.

Measured on 210 real holiday photos (docs/anchors.md): mAP@50 0.873 where global mean pooling of
the same backbone reaches 0.849, the paper's VLAD* of the regions (k = 4) 0.833 and a whole-photo
box through the region search 0.842; so the VLAD codebook stays in the evaluation only.
"""
from __future__ import annotations

import numpy as np

# Candidate regions fetched per query region: all of them while a flat scan of the collection is
# cheap, else enough for this many candidate photos per wanted hit.
EXACT_REGIONS = 200_000
CANDIDATES_PER_HIT = 40


def candidates(n_regions: int, top_k: int) -> int:
    """Regions to fetch for each query region."""
    if n_regions <= EXACT_REGIONS:
        return n_regions
    return min(n_regions, max(4096, CANDIDATES_PER_HIT * top_k))


def set_scores(sims: np.ndarray, ids: np.ndarray, region_image: np.ndarray, n_images: int,
               complete: bool) -> np.ndarray:
    """Image scores [n_images] from each query region's nearest regions (`sims`, `ids` [Q, K]
    as faiss returns them, -1 ids padding): the mean over query regions of the best similarity to
    a region of the image. Images without any candidate region score -inf. When the lists are
    not `complete` (K < regions), an image missing from a list takes the list's last similarity."""
    best = np.full((len(sims), n_images), -np.inf, np.float32)
    for row, (s, i) in enumerate(zip(sims, ids)):
        valid = i >= 0
        np.maximum.at(best[row], region_image[i[valid]], s[valid].astype(np.float32))
    found = np.isfinite(best).any(0)
    if not complete:
        fill = np.array([s[i >= 0][-1] if (i >= 0).any() else -np.inf for s, i in zip(sims, ids)], np.float32)
        best = np.where(np.isfinite(best), best, fill[:, None])
    scores = best.mean(0) if len(best) else np.full(n_images, -np.inf, np.float32)
    scores[~found] = -np.inf
    return scores
