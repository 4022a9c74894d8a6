"""Descriptors: box pooling against a naive loop, l2n, whitening, VLAD*."""
import math

import numpy as np
import pytest
import torch

from dasr_annotator.engine.dasr.descriptors import VladCodebook, Whitening, l2n, pool_boxes


def _naive_pool(feature: torch.Tensor, box, stride: float) -> torch.Tensor:
    _, h, w = feature.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    r0 = min(max(math.floor(y1 / stride), 0), h - 1)
    c0 = min(max(math.floor(x1 / stride), 0), w - 1)
    r1 = max(min(math.ceil(y2 / stride), h), r0 + 1)
    c1 = max(min(math.ceil(x2 / stride), w), c0 + 1)
    total = torch.zeros(feature.shape[0], dtype=torch.float64)
    for r in range(r0, r1):
        for c in range(c0, c1):
            total += feature[:, r, c].double()
    return (total / ((r1 - r0) * (c1 - c0))).float()


@pytest.mark.parametrize("stride", [8, 32, 5.5])
def test_pool_boxes_equals_naive_loop(stride):
    gen = torch.Generator().manual_seed(0)
    c, h, w = 5, 7, 9
    feature = torch.randn(c, h, w, generator=gen)
    width, height = w * stride, h * stride
    corners = torch.rand(40, 2, 2, generator=gen) * torch.tensor([width, height]) * 1.2 - 0.1 * torch.tensor(
        [width, height]
    )
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], 1)
    edge_cases = torch.tensor(
        [
            [0.0, 0.0, width, height],  # the whole map
            [0.0, 0.0, 0.0, 0.0],  # empty box at the origin: one cell
            [width, height, width, height],  # empty box at the far corner: last cell
            [width - 1, 0.0, width + 50, 3.0],  # touching the right border and beyond
            [stride, stride, 2 * stride, 2 * stride],  # exactly one cell on cell edges
        ]
    )
    boxes = torch.cat([boxes, edge_cases])
    pooled = pool_boxes(feature, boxes, stride)
    naive = torch.stack([_naive_pool(feature, b, stride) for b in boxes])
    assert pooled.shape == (len(boxes), c) and pooled.dtype == feature.dtype
    assert torch.allclose(pooled, naive, atol=1e-6)
    assert torch.allclose(pooled[-5], feature.mean((1, 2)), atol=1e-6)
    assert torch.equal(pooled[-4], feature[:, 0, 0])
    assert torch.equal(pooled[-3], feature[:, -1, -1])


def test_pool_boxes_accepts_numpy_boxes_and_no_boxes():
    feature = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    pooled = pool_boxes(feature, np.array([[0, 0, 16, 8]]), 8)  # cols 0..1, row 0
    assert pooled.tolist() == [[0.5, 12.5]]
    assert pool_boxes(feature, np.zeros((0, 4)), 8).shape == (0, 2)


def test_l2n_numpy_and_torch_are_eps_safe():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    out = l2n(x)
    assert out.dtype == np.float32
    assert np.allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=0, atol=1e-7)
    t = l2n(torch.from_numpy(x))
    assert torch.allclose(t, torch.from_numpy(out))
    assert l2n(np.array([1, 1])).tolist() == pytest.approx([2**-0.5, 2**-0.5])


@pytest.fixture(scope="module")
def correlated():
    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(16, 16)) * np.linspace(0.1, 3, 16)
    return (rng.normal(size=(3000, 16)) @ mixing + 2.0).astype(np.float32)


def test_whitening_makes_fitted_covariance_identity(correlated):
    white = Whitening(eps=1e-9).fit(correlated)
    assert white.n_fit == 3000 and white.output_dim == 16
    projected = white.transform(correlated, l2_output=False)
    assert np.abs(projected.mean(0)).max() < 1e-4
    assert np.allclose(np.cov(projected.T, bias=True), np.eye(16), atol=1e-3)
    out = white.transform(correlated)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)


def test_whitening_output_dim_and_rank(correlated):
    assert Whitening(dim=5).fit(correlated).transform(correlated[:3]).shape == (3, 5)
    few = Whitening().fit(correlated[:6])  # 6 points span 5 centred directions
    assert few.output_dim == 5


def test_whitening_round_trips_through_npz(correlated, tmp_path):
    white = Whitening(dim=8).fit(correlated)
    path = tmp_path / "whitening.npz"
    np.savez(path, **white.to_arrays())
    with np.load(path, allow_pickle=False) as data:
        loaded = Whitening.from_arrays(data)
    assert loaded.n_fit == white.n_fit and loaded.output_dim == 8
    assert np.array_equal(loaded.transform(correlated[:50]), white.transform(correlated[:50]))


def _clustered(seed: int, n_per: int = 60, d: int = 12):
    rng = np.random.default_rng(seed)
    centres = l2n(rng.normal(size=(4, d)))
    x = np.concatenate([c + 0.05 * rng.normal(size=(n_per, d)) for c in centres])
    return x.astype(np.float32), centres


def test_vlad_shape_norm_and_determinism(tmp_path):
    x, _ = _clustered(4)
    book = VladCodebook().fit(x, k=4, seed=0)
    again = VladCodebook().fit(x, k=4, seed=0)
    assert np.array_equal(book.centres, again.centres)
    assert np.array_equal(book.rotations, again.rotations)
    image = x[::17]
    vec = book.embed(image)
    assert vec.shape == (4 * 12,) and vec.dtype == np.float32
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
    assert np.array_equal(vec, again.embed(image))
    assert np.allclose(vec, book.embed(image[::-1]), atol=1e-6)  # order of regions is irrelevant
    assert not np.any(book.embed(np.zeros((0, 12), np.float32)))
    np.savez(tmp_path / "vlad.npz", **book.to_arrays())
    with np.load(tmp_path / "vlad.npz", allow_pickle=False) as data:
        loaded = VladCodebook.from_arrays(data)
    assert np.allclose(loaded.embed(image), vec, rtol=0, atol=1e-6)


def test_vlad_finds_the_clusters_and_rotations_are_orthonormal():
    x, centres = _clustered(5)
    book = VladCodebook().fit(x, k=4, seed=1)
    # Every true centre has one learned centre close to it.
    nearest = np.linalg.norm(l2n(centres)[:, None] - book.centres[None], axis=2).min(1)
    assert nearest.max() < 0.05
    for rotation in book.rotations:
        assert np.allclose(rotation @ rotation.T, np.eye(12), atol=1e-5)


def test_vlad_matches_images_that_share_instances():
    rng = np.random.default_rng(6)
    d = 12
    book = VladCodebook().fit(rng.normal(size=(400, d)), k=4, seed=0)
    instances = l2n(rng.normal(size=(6, d)))

    def image(which):  # an image = a few instances, each seen with a little noise
        return instances[which] + 0.003 * rng.normal(size=(len(which), d))

    a1, a2, b = book.embed(image([0, 1, 2])), book.embed(image([0, 1, 2])), book.embed(image([3, 4, 5]))
    assert a1 @ a2 > 0.99 and a1 @ b < 0.5
