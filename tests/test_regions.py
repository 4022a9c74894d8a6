"""Region geometry: seeds, ellipses/boxes from maps, clipping, NMS — hand-computed cases."""
import math

import pytest
import torch
import torchvision

from dasr_annotator.engine.dasr.regions import (
                                                box_iou_matrix,
                                                clip_boxes,
                                                ellipse_from_moments,
                                                ellipses_from_maps,
                                                nms,
                                                seeds_dasr,
                                                seeds_dasr_star,
                                                )


def _var_of_run(n: int) -> float:
    """Variance of n consecutive pixel centres (uniform on n integers)."""
    return (n * n - 1) / 12.0


def _ij(ij: torch.Tensor) -> list[tuple[int, int]]:
    return [tuple(map(int, p)) for p in ij]


# ----------------------------------------------------------------------------- seeds


def test_seeds_dasr_peaks_plateaus_and_border():
    x = torch.zeros(6, 7)
    x[0, 6] = 1.0  # border/corner peak
    x[2, 1] = x[2, 2] = 3.0  # two-cell plateau maximum: one seed, its first cell
    x[4, 4] = 2.0  # a plateau touching a larger value is no maximum
    x[4, 5] = x[5, 5] = 1.5
    x[5, 6] = 1.5
    ij, scores = seeds_dasr(x)
    assert _ij(ij) == [(0, 6), (2, 1), (4, 4)]
    assert scores.tolist() == [1.0, 3.0, 2.0]
    ij_inner, _ = seeds_dasr(x, exclude_border=True)
    assert _ij(ij_inner) == [(2, 1), (4, 4)]


def test_seeds_dasr_large_and_bent_plateaus_count_once():
    x = torch.zeros(7, 7)
    # A U-shaped plateau: its two arms start on the same row but join at the bottom.
    for i in range(1, 5):
        x[i, 1] = x[i, 5] = 2.0
    x[4, 1:6] = 2.0
    ij, _ = seeds_dasr(x)
    assert _ij(ij) == [(1, 1)]
    ij_const, scores_const = seeds_dasr(torch.full((3, 4), 0.5))
    assert _ij(ij_const) == [(0, 0)] and scores_const.tolist() == [0.5]


def test_seeds_dasr_matches_maxpool_on_maps_without_ties():
    torch.manual_seed(0)
    x = torch.rand(9, 11)
    ij, _ = seeds_dasr(x)
    pooled = torch.nn.functional.max_pool2d(x[None, None], 3, 1, 1)[0, 0]
    assert _ij(ij) == _ij(torch.nonzero(x == pooled))


def test_seeds_dasr_star_strictly_above_mean():
    x = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])  # mean 2.5
    ij, scores = seeds_dasr_star(x)
    assert _ij(ij) == [(1, 0), (1, 1), (1, 2)]
    assert scores.tolist() == [3.0, 4.0, 5.0]
    assert seeds_dasr_star(torch.ones(4, 4))[0].shape == (0, 2)


# ----------------------------------------------------------------------------- ellipses


def test_axis_aligned_rectangle_support():
    maps = torch.zeros(1, 10, 12)
    maps[0, 2:5, 3:9] = 7.0  # rows 2..4, cols 3..8
    ell, box = ellipses_from_maps(maps)
    cx, cy = (3 + 9) / 2, (2 + 5) / 2
    sx, sy = math.sqrt(_var_of_run(6)), math.sqrt(_var_of_run(3))
    assert ell[0].tolist() == pytest.approx([cx, cy, 2 * sx, 2 * sy, 0.0], abs=1e-5)
    assert box[0].tolist() == pytest.approx([cx - 2 * sx, cy - 2 * sy, cx + 2 * sx, cy + 2 * sy], abs=1e-5)


def test_tall_rectangle_has_vertical_major_axis():
    maps = torch.zeros(1, 12, 5)
    maps[0, 1:11, 2:4] = 1.0
    ell, _ = ellipses_from_maps(maps)
    assert ell[0, 2] == pytest.approx(2 * math.sqrt(_var_of_run(10)), abs=1e-5)
    assert ell[0, 3] == pytest.approx(2 * math.sqrt(_var_of_run(2)), abs=1e-5)
    assert ell[0, 4] == pytest.approx(90.0)


@pytest.mark.parametrize("up_right", [True, False])
def test_diagonal_line_angle_as_seen(up_right):
    n = 8
    maps = torch.zeros(1, n + 2, n + 2)
    for t in range(n):
        maps[0, (n - t) if up_right else (1 + t), 1 + t] = 1.0
    ell, box = ellipses_from_maps(maps)
    var = _var_of_run(n)
    # All variance lies along the diagonal: eigenvalues 2 * var and 0.
    assert ell[0, 2] == pytest.approx(2 * math.sqrt(2 * var), abs=1e-4)
    assert ell[0, 3] == pytest.approx(0.0, abs=1e-3)
    assert ell[0, 4] == pytest.approx(45.0 if up_right else -45.0, abs=1e-4)
    assert (box[0, 2] - box[0, 0]) == pytest.approx(4 * math.sqrt(var), abs=1e-4)


def test_rotated_filled_ellipse_recovers_its_axes():
    # A uniformly filled ellipse has variance semi_axis^2 / 4 along each axis, so the moment
    # ellipse (2 * sqrt(eigenvalue)) is the ellipse itself, up to rasterisation.
    a, b, angle = 20.0, 8.0, 30.0
    h, w = 60, 70
    cx, cy = 33.0, 29.0
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    t = math.radians(angle)
    # (cos t, -sin t) is "counter-clockwise as seen" when y points down.
    u = (xs - cx) * math.cos(t) - (ys - cy) * math.sin(t)
    v = (xs - cx) * math.sin(t) + (ys - cy) * math.cos(t)
    maps = ((u / a) ** 2 + (v / b) ** 2 <= 1).float()[None]
    ell, _ = ellipses_from_maps(maps)
    assert ell[0, :4].tolist() == pytest.approx([cx, cy, a, b], abs=0.3)
    assert ell[0, 4].item() == pytest.approx(angle, abs=1.0)  # pixel staircase


def test_tau_thresholds_the_max_normalised_map():
    maps = torch.zeros(1, 8, 8)
    maps[0, 1:7, 1:7] = 0.4  # 0.08 of the max: outside the support at tau = 0.1
    maps[0, 3:5, 3:5] = 5.0
    ell, box = ellipses_from_maps(maps, tau=0.1)
    core = 2 * math.sqrt(_var_of_run(2))
    assert box[0].tolist() == pytest.approx([4 - core, 4 - core, 4 + core, 4 + core], abs=1e-5)
    _, wide = ellipses_from_maps(maps, tau=0.05)
    ring = 2 * math.sqrt(_var_of_run(6))
    assert wide[0].tolist() == pytest.approx([4 - ring, 4 - ring, 4 + ring, 4 + ring], abs=1e-5)


def test_empty_maps_give_zeros_and_do_not_disturb_the_batch():
    maps = torch.zeros(3, 6, 6)
    maps[1, 1:3, 2:5] = 1.0
    maps[2] = -1.0  # nothing positive: no support either
    ell, box = ellipses_from_maps(maps)
    assert torch.isfinite(ell).all() and torch.isfinite(box).all()
    assert ell[0].abs().sum() == 0 and box[0].abs().sum() == 0
    assert ell[2].abs().sum() == 0 and box[2].abs().sum() == 0
    alone_ell, alone_box = ellipses_from_maps(maps[1:2])
    assert torch.allclose(ell[1], alone_ell[0]) and torch.allclose(box[1], alone_box[0])


def test_batched_maps_equal_one_at_a_time():
    torch.manual_seed(1)
    maps = torch.rand(5, 13, 17) ** 4
    ell, box = ellipses_from_maps(maps, tau=0.2)
    for k in range(5):
        e, b = ellipses_from_maps(maps[k : k + 1], tau=0.2)
        assert torch.allclose(ell[k], e[0], atol=1e-5) and torch.allclose(box[k], b[0], atol=1e-5)


def test_ellipse_from_moments_axes_and_box():
    mean = torch.tensor([[10.0, 20.0]])
    # Variances 9 and 1 along axes rotated 60 degrees counter-clockwise as seen (y down).
    t = math.radians(60)
    axis = torch.tensor([math.cos(t), -math.sin(t)])
    normal = torch.tensor([math.sin(t), math.cos(t)])
    cov = (9 * torch.outer(axis, axis) + torch.outer(normal, normal))[None]
    ell, box = ellipse_from_moments(mean, cov)
    assert ell[0].tolist() == pytest.approx([10, 20, 6, 2, 60], abs=1e-4)
    sx, sy = 2 * cov[0, 0, 0].sqrt().item(), 2 * cov[0, 1, 1].sqrt().item()
    assert box[0].tolist() == pytest.approx([10 - sx, 20 - sy, 10 + sx, 20 + sy], abs=1e-4)


# ----------------------------------------------------------------------------- boxes


def test_clip_boxes_clips_and_widens_inside_the_image():
    boxes = torch.tensor(
        [
            [-5.0, -5.0, 50.0, 30.0],  # spills out: clipped
            [10.0, 10.0, 10.5, 11.0],  # tiny: widened about its centre
            [99.5, 0.0, 100.0, 0.2],  # tiny at the corner: widened, shifted inside
        ]
    )
    out = clip_boxes(boxes, width=100, height=40, min_side=8)
    assert out[0].tolist() == [0.0, 0.0, 50.0, 30.0]
    assert out[1].tolist() == pytest.approx([10.25 - 4, 10.5 - 4, 10.25 + 4, 10.5 + 4])
    assert out[2].tolist() == pytest.approx([92.0, 0.0, 100.0, 8.0])
    small_image = clip_boxes(torch.tensor([[1.0, 1.0, 2.0, 2.0]]), width=5, height=50, min_side=8)
    assert small_image[0].tolist() == pytest.approx([0.0, 0.0, 5.0, 8.0])


def test_nms_drops_above_beta_and_sorts_by_score():
    boxes = torch.tensor(
        [
            [5.0, 0.0, 15.0, 10.0],  # IoU 1/3 with box 1
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 0.0, 11.0, 10.0],  # IoU 0.82 with box 1
            [50.0, 50.0, 60.0, 60.0],
        ]
    )
    scores = torch.tensor([0.5, 0.9, 0.8, 0.1])
    assert nms(boxes, scores, beta=0.3).tolist() == [1, 3]
    assert nms(boxes, scores, beta=0.4).tolist() == [1, 0, 3]
    assert nms(boxes, scores, beta=0.9).tolist() == [1, 2, 0, 3]
    assert nms(boxes[:0], scores[:0]).tolist() == []


def test_nms_breaks_ties_by_index():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [30.0, 0.0, 40, 10]])
    assert nms(boxes, torch.tensor([0.5, 0.5, 0.5])).tolist() == [0, 2]


def test_box_iou_matrix_matches_torchvision_and_handles_empty_boxes():
    torch.manual_seed(2)
    xy = torch.rand(6, 2) * 50
    a = torch.cat([xy, xy + torch.rand(6, 2) * 30 + 1], 1)
    b = a.flip(0) + 3
    assert torch.allclose(box_iou_matrix(a, b), torchvision.ops.box_iou(a, b), atol=1e-6)
    point = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    assert box_iou_matrix(point, point).tolist() == [[0.0]]
