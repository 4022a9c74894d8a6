"""Multi-example fusion, relevance feedback, image ranking and hit bookkeeping on seeded data."""
import numpy as np
import pytest

from dasr_annotator.engine.search.feedback import (
                                                   box_iou_matrix,
                                                   feedback_scores,
                                                   hide_done,
                                                   image_ranking,
                                                   merge_overlapping,
                                                   region_scores,
                                                   )
from dasr_annotator.engine.types import Annotation, Box, Ellipse, Hit


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _average_precision(ranked_ids, relevant) -> float:
    hits = np.isin(ranked_ids, list(relevant))
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / len(relevant))


@pytest.fixture(scope="module")
def scene():
    """Images holding one of three look-alike kinds plus clutter.

    Along axes e0..e3: the query view q = e0; the target instance seen from another angle
    (A, cos ~0.7 to q); a distractor (B, cos ~0.8 to q, so it outranks A at first); clutter
    elsewhere. Every image has three clutter regions and one object region.
    """
    rng = np.random.default_rng(0)
    d = 24
    e = np.eye(d)
    kinds = {"A": 0.7 * e[0] + 0.71 * e[1], "B": 0.8 * e[0] + 0.6 * e[2]}
    regions, image_ids, kind_of_image = [], [], []
    for image in range(60):
        kind = "A" if image % 3 == 0 else "B" if image % 3 == 1 else "clutter"
        obj = kinds[kind] if kind != "clutter" else e[3 + image % 5]
        rows = [obj + 0.05 * rng.normal(size=d)]
        rows += [e[8 + rng.integers(16)] + 0.3 * rng.normal(size=d) for _ in range(3)]
        regions += rows
        image_ids += [image] * len(rows)
        kind_of_image.append(kind)
    regions = _unit(np.array(regions)).astype(np.float32)
    kinds_arr = np.array(kind_of_image)
    return {
        "regions": regions,
        "image_ids": np.array(image_ids),
        "query": e[0].astype(np.float32),
        "A": set(np.flatnonzero(kinds_arr == "A")),
        "B": set(np.flatnonzero(kinds_arr == "B")),
    }


def _rank(scene, scores):
    ids, best, _ = image_ranking(scores, scene["image_ids"])
    return ids, best


def test_a_rejected_look_alike_pushes_its_neighbours_down(scene):
    regions, query = scene["regions"], scene["query"]
    before, best_region = _rank(scene, region_scores(query[None], regions))
    ap_before = _average_precision(before, scene["A"])
    assert set(before[:10]) <= scene["B"]  # the distractor leads at first
    # The user rejects the top hit's region (a B look-alike).
    negative = regions[best_region[0]][None]
    after, _ = _rank(scene, feedback_scores(query[None], negative, regions, neg_weight=0.5))
    ap_after = _average_precision(after, scene["A"])
    assert ap_after > ap_before + 0.3
    rank_b_before = np.mean([np.flatnonzero(before == i)[0] for i in scene["B"]])
    rank_b_after = np.mean([np.flatnonzero(after == i)[0] for i in scene["B"]])
    assert rank_b_after > rank_b_before + 10


def test_a_second_positive_brings_its_neighbours_up(scene):
    regions, query = scene["regions"], scene["query"]
    one, best_region = _rank(scene, region_scores(query[None], regions))
    assert len(one) == scene["image_ids"].max() + 1  # every image ranked once
    # The user accepts the best-ranked image of the target instance; its region joins the query.
    position = next(p for p, i in enumerate(one) if i in scene["A"])
    first_a, accepted = one[position], regions[best_region[position]]
    two, _ = _rank(scene, region_scores(np.stack([query, accepted]), regions, fusion="max"))
    others = scene["A"] - {first_a}
    assert _average_precision(two, others) > _average_precision(one, others) + 0.3
    assert set(two[: len(scene["A"])]) == scene["A"]


def test_fusion_matches_naive_cosines():
    rng = np.random.default_rng(1)
    regions = _unit(rng.normal(size=(50, 8))).astype(np.float32)
    positives = rng.normal(size=(3, 8)) * [[1.0], [5.0], [0.2]]  # any norm: normalised inside
    cos = regions @ _unit(positives).T
    assert np.allclose(region_scores(positives, regions, "max"), cos.max(1), atol=1e-6)
    assert np.allclose(region_scores(positives, regions, "mean"), cos.mean(1), atol=1e-6)
    plain = region_scores(positives, regions)
    assert np.array_equal(feedback_scores(positives, None, regions), plain)
    assert np.array_equal(feedback_scores(positives, np.zeros((0, 8)), regions), plain)
    with pytest.raises(ValueError, match="fusion"):
        region_scores(positives, regions, "median")


def test_feedback_penalty_is_the_closest_negative_and_never_a_bonus():
    e = np.eye(4, dtype=np.float32)
    regions = np.stack([e[0], e[1], -e[1], _unit(e[0] + e[2])]).astype(np.float32)
    positives = _unit(np.array([[1.0, 0.0, 1.0, 0.0]]))
    negatives = np.stack([e[1], e[2]])
    plain = region_scores(positives, regions)
    fb = feedback_scores(positives, negatives, regions, neg_weight=0.25)
    closest_negative = np.maximum((regions @ negatives.T).max(1), 0)
    assert np.allclose(fb, plain - 0.25 * closest_negative, atol=1e-6)
    assert fb[2] == pytest.approx(plain[2])  # unlike every negative: unchanged, no bonus


def _naive_ranking(scores, ids):
    best = {}
    for r, (s, i) in enumerate(zip(scores, ids)):
        if i not in best or s > best[i][0]:
            best[i] = (s, r)
    return sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))


@pytest.mark.parametrize("id_kind", ["dense", "sparse", "text"])
def test_image_ranking_matches_a_naive_loop(id_kind):
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 40, size=300)
    text = np.array([f"img{v:03d}.jpg" for v in raw])
    ids = {"dense": raw, "sparse": raw * 10**9 + 7, "text": text}[id_kind]
    scores = np.round(rng.random(300), 2).astype(np.float32)  # rounding creates ties
    image_ids, best_region, image_scores = image_ranking(scores, ids)
    expected = _naive_ranking(scores, ids)
    assert list(image_ids) == [i for i, _ in expected]
    assert list(best_region) == [r for _, (_, r) in expected]
    assert np.array_equal(image_scores, np.array([s for _, (s, _) in expected], np.float32))
    assert image_ids.dtype == ids.dtype


def test_image_ranking_of_nothing():
    ids, best, scores = image_ranking(np.zeros(0, np.float32), np.zeros(0, np.int64))
    assert len(ids) == len(best) == len(scores) == 0


def test_merge_overlapping_keeps_the_best_of_each_group():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [30, 30, 40, 40], [31, 30, 41, 40], [0, 0, 10, 10.5]])
    scores = np.array([0.5, 0.9, 0.3, 0.4, 0.1])
    assert merge_overlapping(boxes, scores, iou=0.5).tolist() == [1, 3]
    assert merge_overlapping(boxes, scores, iou=0.95).tolist() == [1, 0, 3, 2]
    assert box_iou_matrix(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(81 / 119)


def test_hide_done_marks_hits_on_labelled_instances_of_that_category():
    ell = Ellipse(0, 0, 1, 1, 0)
    hits = [
        Hit("a.jpg", 0.9, Box(0, 0, 10, 10), ell),  # labelled as "cup" already
        Hit("a.jpg", 0.8, Box(50, 50, 10, 10), ell),  # another spot in the same image
        Hit("b.jpg", 0.7, Box(0, 0, 10, 10), ell),  # labelled, but as another category
        Hit("c.jpg", 0.6, Box(0, 0, 10, 10), ell),  # nothing labelled there
    ]
    annotations = [
        Annotation("1", "a.jpg", "cup", Box(1, 0, 10, 10)),
        Annotation("2", "b.jpg", "plate", Box(0, 0, 10, 10)),
    ]
    assert hide_done(hits, annotations, "cup", iou=0.5).tolist() == [True, False, False, False]
    assert hide_done(hits, annotations, "plate", iou=0.5).tolist() == [False, False, True, False]
    assert hide_done(hits, [], "cup").tolist() == [False] * 4
