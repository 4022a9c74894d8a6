"""Region descriptors: box pooling over a feature map, l2 normalisation, PCA-whitening and the
VLAD* image embedding (spec sections 1.9, 1.11 and 5).

Whitening and codebooks serialise to plain numpy arrays (`to_arrays`, saved with `np.savez`);
nothing here pickles.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

EPS = 1e-12


def l2n(x, axis: int = -1, eps: float = EPS):
    """Divide by the l2 norm along `axis` (numpy array or torch tensor); zero rows stay zero."""
    if isinstance(x, Tensor):
        return x / x.norm(dim=axis, keepdim=True).clamp_min(eps)
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def _wide_float(device: torch.device) -> torch.dtype:
    """float64 where the device has it (Apple's MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def box_cells(boxes_xyxy: Tensor, stride: float, height: int, width: int) -> Tensor:
    """Cell ranges [R, 4] (row0, row1, col0, col1), end-exclusive, covered by input-pixel boxes:
    rows floor(y1/s):ceil(y2/s), cols floor(x1/s):ceil(x2/s), clamped to the map, >= one cell."""
    b = boxes_xyxy.to(_wide_float(boxes_xyxy.device)) / float(stride)
    row0 = b[:, 1].floor().long().clamp(0, height - 1)
    col0 = b[:, 0].floor().long().clamp(0, width - 1)
    row1 = torch.maximum(b[:, 3].ceil().long().clamp(max=height), row0 + 1)
    col1 = torch.maximum(b[:, 2].ceil().long().clamp(max=width), col0 + 1)
    return torch.stack([row0, row1, col0, col1], 1)


def pool_boxes(feature: Tensor, boxes_xyxy, stride: float) -> Tensor:
    """Average of the feature cells [C, h, w] under each box (xyxy, input pixels) -> [R, C].

    One integral image serves all boxes of the image.
    """
    c, h, w = feature.shape
    boxes = torch.as_tensor(boxes_xyxy, device=feature.device).reshape(-1, 4)
    if boxes.shape[0] == 0:
        return feature.new_zeros((0, c))
    # float64 keeps small boxes exact where sums of a large map would cancel in float32.
    acc = _wide_float(feature.device)
    integral = torch.zeros(c, h + 1, w + 1, dtype=acc, device=feature.device)
    integral[:, 1:, 1:] = feature.to(acc).cumsum(1).cumsum(2)
    r0, r1, c0, c1 = box_cells(boxes, stride, h, w).unbind(1)
    sums = integral[:, r1, c1] - integral[:, r0, c1] - integral[:, r1, c0] + integral[:, r0, c0]
    area = ((r1 - r0) * (c1 - c0)).to(acc)
    return (sums / area).T.to(feature.dtype).contiguous()


def _scatter(x: np.ndarray, mean: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Sum of outer products of (x - mean) in float64, a chunk at a time to bound memory."""
    out = np.zeros((x.shape[1], x.shape[1]))
    for start in range(0, x.shape[0], chunk):
        centred = x[start : start + chunk].astype(np.float64) - mean
        out += centred.T @ centred
    return out


class Whitening:
    """PCA-whitening learned without labels: l2 -> centre -> project on the eigenvectors scaled
    by 1 / sqrt(eigenvalue + eps) -> l2.

    Components with (numerically) zero variance are dropped, so fitting on fewer vectors than
    dimensions keeps only the `n - 1` directions the data spans. `shrinkage` adds that many
    mean eigenvalues to every eigenvalue before the division: it keeps small-variance (noisy)
    directions from being blown up when the fitting set is small or not diverse.
    """

    def __init__(self, dim: int | None = None, eps: float = 1e-6, shrinkage: float = 0.0):
        self.dim = dim
        self.eps = eps
        self.shrinkage = shrinkage
        self.mean: np.ndarray | None = None
        self.projection: np.ndarray | None = None  # [D, dim]
        self.eigenvalues: np.ndarray | None = None
        self.n_fit = 0

    def fit(self, x: np.ndarray) -> "Whitening":
        x = l2n(np.asarray(x, dtype=np.float32))
        if x.shape[0] < 2:
            raise ValueError(f"whitening needs at least 2 descriptors, got {x.shape[0]}")
        mean = x.mean(0, dtype=np.float64)
        values, vectors = np.linalg.eigh(_scatter(x, mean) / x.shape[0])
        values, vectors = values[::-1], vectors[:, ::-1]  # largest first
        rank = int(np.sum(values > values[0] * 1e-9)) if values[0] > 0 else 0
        if rank == 0:
            raise ValueError("whitening needs descriptors that are not all identical")
        keep = rank if self.dim is None else min(self.dim, rank)
        self.mean = mean.astype(np.float32)
        self.eigenvalues = values[:keep].astype(np.float32)
        damping = self.eps + self.shrinkage * float(np.clip(values, 0, None).mean())
        self.projection = (vectors[:, :keep] / np.sqrt(values[:keep] + damping)).astype(np.float32)
        self.n_fit = int(x.shape[0])
        return self

    @property
    def output_dim(self) -> int:
        return 0 if self.projection is None else int(self.projection.shape[1])

    def transform(self, x: np.ndarray, l2_output: bool = True) -> np.ndarray:
        """Whitened descriptors [N, output_dim] float32 (l2-normalised unless `l2_output=False`)."""
        if self.projection is None:
            raise RuntimeError("Whitening.transform called before fit")
        x = l2n(np.asarray(x, dtype=np.float32))
        out = (x - self.mean) @ self.projection
        return np.ascontiguousarray(l2n(out) if l2_output else out, dtype=np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        if self.projection is None:
            raise RuntimeError("Whitening.to_arrays called before fit")
        return {
            "mean": self.mean,
            "projection": self.projection,
            "eigenvalues": self.eigenvalues,
            "eps": np.float64(self.eps),
            "n_fit": np.int64(self.n_fit),
        }

    @classmethod
    def from_arrays(cls, arrays) -> "Whitening":
        w = cls(eps=float(arrays["eps"]))
        w.mean = np.asarray(arrays["mean"], np.float32)
        w.projection = np.asarray(arrays["projection"], np.float32)
        w.eigenvalues = np.asarray(arrays["eigenvalues"], np.float32)
        w.n_fit = int(arrays["n_fit"])
        w.dim = w.output_dim
        return w

    # The names docs/architecture.md uses.
    to_dict = to_arrays
    from_dict = from_arrays


def _kmeans(x: np.ndarray, k: int, seed: int, iterations: int = 100) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding from `seed`; an emptied cluster restarts at the
    point farthest from its centre. Deterministic for a given input and seed."""
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min([((x - c) ** 2).sum(1, dtype=np.float64) for c in centres], axis=0)
        total = d2.sum()
        pick = rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))
        centres.append(x[pick])
    centres = np.stack(centres)
    assign = None
    for _ in range(iterations):
        d2 = (x**2).sum(1)[:, None] - 2 * x @ centres.T + (centres**2).sum(1)[None]
        new_assign = d2.argmin(1)
        if assign is not None and np.array_equal(new_assign, assign):
            break
        assign = new_assign
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centres[j] = members.mean(0)
        distance = d2[np.arange(len(x)), assign]
        for j in np.flatnonzero(np.bincount(assign, minlength=k) == 0):
            far = distance.argmax()
            centres[j], distance[far] = x[far], -np.inf
    return centres


class VladCodebook:
    """VLAD* image embedding over region descriptors: per-cluster residual sums, each rotated by
    its cluster's PCA basis (learned at fit time), signed square root, l2."""

    def __init__(self):
        self.centres: np.ndarray | None = None  # [k, D]
        self.rotations: np.ndarray | None = None  # [k, D, D], rows = principal directions
        self.n_fit = 0

    @property
    def k(self) -> int:
        return 0 if self.centres is None else int(self.centres.shape[0])

    def fit(self, x: np.ndarray, k: int = 4, seed: int = 0) -> "VladCodebook":
        x = l2n(np.asarray(x, dtype=np.float32))
        if x.shape[0] < k:
            raise ValueError(f"a codebook of {k} clusters needs at least {k} descriptors")
        centres = _kmeans(x, k, seed)
        assign = self._assign(x, centres)
        rotations = []
        for j in range(k):
            residuals = x[assign == j] - centres[j]
            mean = residuals.mean(0, dtype=np.float64) if len(residuals) else 0.0
            _, vectors = np.linalg.eigh(_scatter(residuals, mean))
            rotations.append(vectors[:, ::-1].T)  # rows = principal directions, largest first
        self.centres = centres.astype(np.float32)
        self.rotations = np.stack(rotations).astype(np.float32)
        self.n_fit = int(x.shape[0])
        return self

    @staticmethod
    def _assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
        return (-2 * x @ centres.T + (centres**2).sum(1)[None]).argmin(1)

    def embed(self, descs: np.ndarray) -> np.ndarray:
        """VLAD* vector [k * D] float32 of one image's descriptors [N, D] (zeros when N == 0)."""
        if self.centres is None:
            raise RuntimeError("VladCodebook.embed called before fit")
        k, d = self.centres.shape
        descs = l2n(np.asarray(descs, dtype=np.float32).reshape(-1, d))
        assign = self._assign(descs, self.centres)
        sums = np.zeros((k, d), np.float32)
        np.add.at(sums, assign, descs - self.centres[assign])
        rotated = np.einsum("kij,kj->ki", self.rotations, sums)
        powered = np.sign(rotated) * np.sqrt(np.abs(rotated))
        return l2n(powered.reshape(-1)).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        if self.centres is None:
            raise RuntimeError("VladCodebook.to_arrays called before fit")
        return {"centres": self.centres, "rotations": self.rotations, "n_fit": np.int64(self.n_fit)}

    @classmethod
    def from_arrays(cls, arrays) -> "VladCodebook":
        book = cls()
        book.centres = np.asarray(arrays["centres"], np.float32)
        book.rotations = np.asarray(arrays["rotations"], np.float32)
        book.n_fit = int(arrays["n_fit"])
        return book

    to_dict = to_arrays
    from_dict = from_arrays
