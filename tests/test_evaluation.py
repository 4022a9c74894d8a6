"""Metric functions against hand-computed rankings, and the baselines' building blocks."""
import math

import cv2
import numpy as np
import pytest

from dasr_annotator.engine.evaluation import baselines
from dasr_annotator.engine.evaluation import metrics as ev


# --------------------------------------------------------------------------- AP@k


def test_ap_at_k_hand_computed():
    hits = [1, 0, 1, 0, 0, 1]  # precision at the hits: 1/1, 2/3, 3/6
    assert ev.average_precision_at_k(hits, 3) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    # n = min(k, |GT|): only the first n ranks count, divided by n
    assert ev.average_precision_at_k(hits, 3, k=2) == pytest.approx(1 / 2)
    assert ev.average_precision_at_k(hits, 3, k=5) == pytest.approx((1 + 2 / 3) / 3)
    assert ev.average_precision_at_k(hits, 3, k=100) == pytest.approx((1 + 2 / 3) / 3)


def test_ap_counts_relevant_images_never_ranked():
    # four relevant images, only two in the list: AP@all divides by |GT| = 4
    assert ev.average_precision_at_k([0, 1, 1], 4) == pytest.approx((1 / 2 + 2 / 3) / 4)


def test_query_with_one_positive():
    # |GT| = 1: AP@50 looks at rank 1 only; AP@all is 1 / rank
    assert ev.average_precision_at_k([0, 1, 0], 1, k=50) == 0.0
    assert ev.average_precision_at_k([1, 0, 0], 1, k=50) == 1.0
    assert ev.average_precision_at_k([0, 0, 1], 1) == pytest.approx(1 / 3)


def test_query_without_positives_is_nan_and_left_out_of_means():
    assert math.isnan(ev.average_precision_at_k([0, 0], 0, k=50))
    empty = ev.evaluate_query([0.5, 0.2], [False, False])
    full = ev.evaluate_query([0.5, 0.2], [True, False])
    means = ev.mean_metrics([empty, full])
    assert means["map@50"] == 1.0 and means["queries"] == 1.0


def test_perfect_and_reversed_rankings():
    scores = np.linspace(1, 0, 10)
    relevant = np.arange(10) < 4
    assert ev.evaluate_query(scores, relevant)["ap@all"] == 1.0
    reversed_ap = ev.evaluate_query(-scores, relevant)["ap@all"]
    assert reversed_ap == pytest.approx((1 / 7 + 2 / 8 + 3 / 9 + 4 / 10) / 4)


# --------------------------------------------------------------------------- ties


def test_ties_are_broken_pessimistically_whatever_the_input_order():
    scores = [0.9, 0.5, 0.5, 0.1]
    for relevant in ([False, True, False, True], [False, False, True, True]):
        m = ev.evaluate_query(scores, relevant)
        # ranked: 0.9 (no), 0.5 (no), 0.5 (yes), 0.1 (yes)
        assert m["ap@all"] == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_all_scores_equal_gives_the_worst_order():
    relevant = [True, False, False, True, False]
    m = ev.evaluate_query(np.zeros(5), relevant)
    assert m["ap@all"] == pytest.approx((1 / 4 + 2 / 5) / 2)
    assert m["recall@100"] == 1.0


def test_located_ties_put_unlocated_hits_first():
    scores = [0.7, 0.7, 0.2]
    relevant = [True, True, False]
    located = [True, False, False]
    m = ev.evaluate_query(scores, relevant, located)
    assert m["ap@all"] == 1.0
    assert m["ap@all_located"] == pytest.approx((1 / 2) / 2)  # located hit ranked second of two


def test_located_requires_relevant_and_none_means_no_located_hits():
    m = ev.evaluate_query([0.9, 0.1], [False, True], located=[True, True])
    assert m["ap@all_located"] == pytest.approx(1 / 2 / 1)
    g = ev.evaluate_query([0.9, 0.1], [True, True], located=None)
    assert g["ap@50"] == 1.0 and g["ap@50_located"] == 0.0 and g["recall@100_located"] == 0.0


# --------------------------------------------------------------------------- shared images


def test_shared_image_is_relevant_to_both_instances_but_located_per_box():
    # one frame holds instances A (left) and B (right); the hit box sits on B
    gt_a, gt_b = np.array([[0, 0, 10, 20]]), np.array([[30, 0, 10, 20]])
    hit = np.array([[31, 2, 8, 16]])
    assert not ev.centres_inside(hit, gt_a)[0]
    assert ev.centres_inside(hit, gt_b)[0]
    for gt, expect in ((gt_a, 0.0), (gt_b, 1.0)):
        located = ev.centres_inside(hit, gt)
        m = ev.evaluate_query([0.8], [True], located)
        assert m["ap@50"] == 1.0 and m["ap@50_located"] == expect


# --------------------------------------------------------------------------- recall, review effort


def test_recall_at_k_and_hits_to_find():
    hits = [1, 0, 1, 1, 0, 0, 1]
    assert ev.recall_at_k(hits, 5, 3) == pytest.approx(2 / 5)
    assert ev.hits_to_find(hits, 4, 0.9) == 7.0  # needs all 4 (ceil 3.6)
    assert ev.hits_to_find(hits, 4, 0.5) == 3.0
    assert ev.hits_to_find(hits, 10, 0.9) == math.inf


# --------------------------------------------------------------------------- boxes


def test_iou_and_centres_with_missing_boxes():
    a = np.array([[0, 0, 10, 10], [np.nan] * 4, [5, 5, 10, 10]])
    b = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    assert ev.iou_xywh(a, b) == pytest.approx([1.0, 0.0, 25 / 175])
    assert ev.centres_inside(a, b).tolist() == [True, False, True]  # (10, 10): the corner counts
    assert not ev.centres_inside([[6, 5, 10, 10]], [[0, 0, 10, 10]])[0]
    assert ev.best_iou(np.zeros((0, 4)), [0, 0, 1, 1]) == 0.0
    assert ev.best_iou(a[[0, 2]], [5, 5, 10, 10]) == pytest.approx(1.0)


def test_centre_on_the_border_counts():
    assert ev.centres_inside([[0, 0, 20, 20]], [[0, 0, 10, 10]])[0]


def test_localization_recall_thresholds():
    recall = ev.localization_recall([0.05, 0.5, 0.95, 0.0])
    thresholds = ev.IOU_THRESHOLDS
    assert thresholds[0] == 0.05 and thresholds[-1] == 0.95 and len(thresholds) == 19
    assert recall[0] == 0.75  # 0.05 counts at threshold 0.05
    assert recall[list(thresholds).index(0.5)] == 0.5
    assert recall[-1] == 0.25
    assert np.isnan(ev.localization_recall([])).all()


# --------------------------------------------------------------------------- global pooling


@pytest.fixture(scope="module")
def fmap():
    rng = np.random.default_rng(0)
    return rng.standard_normal((8, 5, 7)).astype(np.float32)


def test_mean_and_gem(fmap):
    assert baselines.pool_mean(fmap) == pytest.approx(fmap.mean((1, 2)) / np.linalg.norm(fmap.mean((1, 2))), abs=1e-6)
    positive = np.abs(fmap) + 0.1
    gem1 = baselines.pool_gem(positive, p=1.0)
    assert gem1 == pytest.approx(baselines.pool_mean(positive), abs=1e-6)
    # p -> large approaches max pooling
    big = baselines.pool_gem(positive, p=60.0)
    mx = positive.max((1, 2))
    assert big == pytest.approx(mx / np.linalg.norm(mx), abs=0.02)


def test_rmac_regions_cover_the_map_and_stay_inside():
    for h, w in ((5, 7), (7, 5), (6, 6), (1, 3), (16, 12)):
        windows = baselines.rmac_regions(h, w)
        assert (0, h, 0, w) in windows
        covered = np.zeros((h, w), bool)
        for r0, r1, c0, c1 in windows:
            assert 0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w
            covered[r0:r1, c0:c1] = True
        assert covered.all()
        # level 2 and 3 squares are smaller than the short side
        assert any(r1 - r0 < min(h, w) for r0, r1, _, _ in windows) or min(h, w) < 3


def test_rmac_and_crow_are_unit_vectors_and_crow_weights_rare_channels(fmap):
    for fn in (baselines.pool_rmac, baselines.pool_crow):
        v = fn(fmap)
        assert v.shape == (8,) and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    f = np.ones((2, 4, 4), np.float32)
    f[1, 1:, :] = 0  # channel 1 fires rarely: CroW raises its weight
    v = baselines.pool_crow(f)
    raw = (f * np.sqrt(f.sum(0) / np.linalg.norm(f.sum(0)))[None]).sum((1, 2))
    assert v[1] / v[0] > raw[1] / raw[0]


def test_crop_for_network_enlarges_small_boxes():
    rgb = np.zeros((100, 200, 3), np.uint8)
    crop = baselines.crop_for_network(rgb, (10, 10, 20, 40), 64)
    assert min(crop.shape[:2]) == 64 and crop.shape[0] == 192
    assert baselines.crop_for_network(rgb, (0, 0, 150, 90), 64).shape == (90, 150, 3)


# --------------------------------------------------------------------------- SIFT matcher


def _textured(seed: int, size=(240, 320)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
    img = cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(img, (3, 3), 0)


def test_sift_finds_a_translated_and_scaled_copy():
    query = _textured(1)
    h = np.array([[1.2, 0, 25], [0, 1.2, 10], [0, 0, 1]])
    reference = cv2.warpPerspective(query, h, (400, 300))
    box = (60, 50, 100, 80)
    qf = baselines.sift_features(query).inside(box)
    score, found = baselines.match_sift(qf, baselines.sift_features(reference), box)
    assert score >= 10
    expected = np.array([60 * 1.2 + 25, 50 * 1.2 + 10, 100 * 1.2, 80 * 1.2])
    assert found == pytest.approx(expected, abs=3.0)
    other, _ = baselines.match_sift(qf, baselines.sift_features(_textured(7)), box)
    assert other < score / 3


def test_sift_scales_points_to_original_pixels():
    img = _textured(2)
    full = baselines.sift_features(img)
    half = baselines.sift_features(cv2.resize(img, (160, 120)), scale=0.5)
    assert len(full) > 20 and len(half) > 5
    assert half.points[:, 0].max() <= 320 and half.points[:, 0].max() > 200


def test_projected_box_rejects_degenerate_homographies():
    flip = np.array([[1.0, 0, 0], [0, 1, 0], [0.02, 0, 1]])  # sends part of the box behind the camera
    assert baselines.projected_box(flip, (-100, 0, 80, 10)) is None
    ident = baselines.projected_box(np.eye(3), (1, 2, 3, 4))
    assert ident == pytest.approx([1, 2, 3, 4])


# --------------------------------------------------------------------------- simulated annotator


def _unit(*v):
    v = np.array(v, np.float32)
    return v / np.linalg.norm(v)


def test_simulated_review_plain_list():
    vectors = np.stack([_unit(1, 0, 0), _unit(0.9, 0.44, 0), _unit(0.5, 0, 0.87), _unit(0.1, 0.99, 0)])
    images = np.array([0, 1, 1, 2])
    located = np.array([True, False, True, False])
    seq = ev.simulate_review(vectors, images, located, _unit(1, 0, 0), batch=2)
    # batch 1: best region of images 0 and 1 (r0 yes, r1 no); then image 1 returns with r2
    assert seq.tolist() == [1, 0, 1, 0]
    assert ev.hits_to_find(seq, 2, 0.9) == 3.0


def test_simulated_review_feedback_pushes_look_alikes_of_rejected_hits_down():
    vectors = np.stack([_unit(1, 0, 0), _unit(0.95, 0.31, 0), _unit(0.9, 0.44, 0), _unit(0.8, 0, 0.6)])
    images = np.arange(4)
    located = np.array([True, False, False, True])
    query = _unit(1, 0, 0)
    plain = ev.simulate_review(vectors, images, located, query, batch=2)
    fed = ev.simulate_review(vectors, images, located, query, batch=2, feedback_hits=10)
    assert plain.tolist() == [1, 0, 0, 1]
    assert fed.tolist() == [1, 0, 1, 0]  # rejecting r1 demotes its look-alike r2 below r3
    assert ev.hits_to_find(fed, 2) < ev.hits_to_find(plain, 2)


def test_image_review_shows_each_image_once_and_feedback_reorders_the_rest():
    # image 0: regions r0, r1; images 1-3 one region each; boxes drawn are fixed per image
    vectors = np.stack([_unit(1, 0, 0), _unit(0, 1, 0), _unit(0.95, 0.31, 0), _unit(0.9, 0.44, 0),
                        _unit(0.8, 0, 0.6)])
    images = np.array([0, 0, 1, 2, 3])
    found = np.array([True, False, False, True])
    query = _unit(1, 0, 0)
    plain = ev.simulate_image_review(vectors, images, found, query, batch=2)
    assert plain.tolist() == [1, 0, 0, 1]  # image order 0, 1, 2, 3: a rejected image never returns
    fed = ev.simulate_image_review(vectors, images, found, query, batch=2, feedback_hits=10)
    assert fed.tolist() == [1, 0, 1, 0]  # rejecting image 1 demotes its look-alike image 2 below 3
    assert ev.hits_to_find(fed, 2) < ev.hits_to_find(plain, 2)
    tie = ev.simulate_image_review(np.stack([_unit(1, 0, 0)] * 2), np.array([0, 1]), np.array([True, False]),
                                   query, batch=1)
    assert tie.tolist() == [0, 1]  # equal scores: the miss is reviewed first


def test_image_review_shows_a_rejected_image_again_when_second_looks_return_it():
    vectors = np.stack([_unit(1, 0, 0), _unit(0.9, 0.44, 0), _unit(0.8, 0, 0.6)])
    images = np.arange(3)
    looks = {0: 0}
    calls = []

    def found(i):  # image 0 holds the instance, but its first box misses it
        looks[i] = looks.get(i, 0) + 1
        return i == 0 and looks[i] == 2

    def second_looks(rejected):
        calls.append(list(rejected))
        return [0] if 0 in rejected and looks[0] == 1 else []

    seq = ev.simulate_image_review(vectors, images, found, _unit(1, 0, 0), batch=1, feedback_hits=10,
                                   second_looks=second_looks)
    assert seq.tolist().count(1) == 1 and len(seq) == 4  # 3 images, image 0 reviewed twice
    assert looks[0] == 2 and calls[0] == [0]
    once = ev.simulate_image_review(vectors, images, found, _unit(1, 0, 0), batch=1, feedback_hits=10)
    assert once.tolist() == [0, 0, 0]  # without second looks the instance is never found
