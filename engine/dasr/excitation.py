"""The probabilistic (excitation) backward rule, batched over all seeds of an image.

For a layer with non-negative input A and positive weights W+ (bias ignored),
`Z = conv(A, W+)`, `S = P / Z` (0 where Z <= eps) and `P(A) = A * convT(S, W+)`; BatchNorm is
folded into the convs, ReLU/ReLU6 pass P unchanged, pools use a per-channel all-ones kernel, a
residual treats its last body conv and its shortcut as one layer, and the input layer uses the
non-negative `pixels / std`. Linear-bottleneck outputs (EfficientNet) can be negative: the traced
inputs are their positive part, used in Z and in P alike, so every layer conserves mass exactly
where Z > eps. The maps are `M_k = sum over channels of P_k(input)`.

`Excitation` computes Z once per image and back-propagates [K, C, h, w] seed tensors in chunks;
`reference_maps` does the same one seed at a time with autograd transposes (for tests and the
speed baseline); `official_maps` is the authors' code's per-peak input gradient (spec section 8).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dasr_annotator.engine.dasr.backbones import Backbone
from dasr_annotator.engine.dasr.layers import Conv, Pool, Trace

EPS = 1e-12


@dataclass(eq=False)
class PositiveLinear:
    """One layer seen as a linear map with non-negative weights, for a fixed input size."""

    weight: Tensor
    stride: int
    pads: tuple[int, int, int, int]  # left, right, top, bottom
    groups: int

    @classmethod
    def of(cls, layer, a: Tensor) -> "PositiveLinear":
        if isinstance(layer, Conv):
            return cls(layer.weight_pos, layer.stride, layer.pads(*a.shape[-2:]), layer.groups)
        if isinstance(layer, Pool):
            c = a.shape[1]
            ones = torch.ones(c, 1, layer.kernel, layer.kernel, device=a.device, dtype=a.dtype)
            return cls(ones, layer.stride, (layer.padding,) * 4, c)
        raise TypeError(type(layer).__name__)

    @property
    def pointwise(self) -> bool:
        return self.weight.shape[-2:] == (1, 1) and self.stride == 1 and self.groups == 1 and not any(self.pads)

    def conv(self, x: Tensor) -> Tensor:
        if self.pointwise:
            return _pointwise(x, self.weight[:, :, 0, 0].to(x.dtype))
        left, right, top, bottom = self.pads
        w = self.weight.to(x.dtype)
        if left == right and top == bottom:
            return F.conv2d(x, w, None, self.stride, (top, left), 1, self.groups)
        return F.conv2d(F.pad(x, self.pads), w, None, self.stride, 0, 1, self.groups)

    def conv_t(self, s: Tensor, in_shape) -> Tensor:
        """The transposed conv of `s` back to an input of spatial size in_shape[-2:]."""
        if self.pointwise:
            return _pointwise(s, self.weight[:, :, 0, 0].t().to(s.dtype))
        left, right, top, bottom = self.pads
        h, w = in_shape[-2:]
        weight = self.weight.to(s.dtype)
        kh, kw = weight.shape[-2:]
        symmetric = left == right and top == bottom
        if symmetric:
            ph, pw = top, left
        else:
            ph, pw, h, w = 0, 0, h + top + bottom, w + left + right
        # output_padding restores the rows/cols a strided conv skipped at the far edge
        extra = (h - ((s.shape[-2] - 1) * self.stride - 2 * ph + kh),
                 w - ((s.shape[-1] - 1) * self.stride - 2 * pw + kw))
        out = F.conv_transpose2d(s, weight, None, self.stride, (ph, pw), extra, self.groups)
        if symmetric:
            return out
        return out[..., top:top + in_shape[-2], left:left + in_shape[-1]]


def _pointwise(x: Tensor, matrix: Tensor) -> Tensor:
    """A 1x1 conv as one matrix product ([out, in] matrix). CPU convolutions of batches larger
    than one are far slower than this GEMM; a channels-last input is used in place."""
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)
        return (rows @ matrix.t()).reshape(n, h, w, -1).permute(0, 3, 1, 2)
    return torch.matmul(matrix, x.reshape(n, c, h * w)).reshape(n, -1, h, w)


def inverse_z(z: Tensor, eps: float = EPS) -> Tensor:
    """1 / z where z > eps, else 0 (z >= 0 here). Two passes over z where a `where` over a
    clamped division took six: this is memory-bound, and Z covers every layer."""
    return torch.reciprocal(z).masked_fill_(z <= eps, 0.0)


class Excitation:
    """Z (as 1/Z) of every traced layer of one image, and the batched backward rule over them.

    transpose_dtype: e.g. torch.bfloat16 on a GPU for the transposed convs; Z, 1/Z and the
    products with A stay float32.
    """

    def __init__(self, trace: Trace, input_size: tuple[int, int], eps: float = EPS,
                 transpose_dtype: torch.dtype | None = None, channels_last: bool = False, first: int = 0):
        """Z for records `first`.. only (a pass that ends early needs no more)."""
        self.trace, self.records = trace, trace.records
        self.input_size = input_size
        self.first = first
        self.transpose_dtype = transpose_dtype
        self.channels_last = channels_last
        self.views: list[PositiveLinear | None] = []
        self.skip_views: list[PositiveLinear | None] = []
        self.inv_z: list[Tensor | None] = []
        for index, rec in enumerate(self.records):
            if channels_last:
                rec.a = None if rec.a is None else self._layout(rec.a)
                rec.skip_input = None if rec.skip_input is None else self._layout(rec.skip_input)
            view = skip_view = inv = None
            if index < first:
                pass
            elif rec.kind in ("conv", "pool"):
                view = PositiveLinear.of(rec.layer, rec.a)
                inv = inverse_z(view.conv(rec.a), eps)
            elif rec.kind == "res_end":
                view = PositiveLinear.of(rec.layer.body[-1], rec.a)
                z = view.conv(rec.a)
                if rec.layer.shortcut:
                    skip_view = PositiveLinear.of(rec.layer.shortcut[0], rec.skip_input)
                    z = z + skip_view.conv(rec.skip_input)
                else:
                    z = z + rec.skip_input
                inv = inverse_z(z, eps)
            self.views.append(view)
            self.skip_views.append(skip_view)
            self.inv_z.append(self._layout(inv) if inv is not None else None)
        # Where record i's input is record i-1's own output (no residual sum between), the
        # product with A_i that ends record i and the one with 1/Z_(i-1) that starts record i-1
        # are one product with A_i / Z_(i-1), made once per image: a third fewer memory-bound
        # passes per seed.
        self.gain: list[Tensor | None] = [None] * len(self.records)
        for index in range(max(first, 1), len(self.records)):
            rec, below = self.records[index], self.records[index - 1]
            if rec.kind != "res_begin" and below.kind != "res_begin" and self.inv_z[index - 1] is not None:
                self.gain[index] = self._layout(rec.a * self.inv_z[index - 1])

    def _layout(self, t: Tensor) -> Tensor:
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def record_stride(self, index: int) -> int:
        return record_stride(self.records, self.input_size, index)

    def chunk_size(self, budget_bytes: int, stop: int = 0) -> int:
        """Seeds per chunk for a pass down to record `stop` (its largest tensor decides)."""
        largest = max(r.a.numel() for r in self.records[stop:] if r.a is not None)
        return max(1, int(budget_bytes // (4 * 4 * largest)))  # P, S, convT out, product

    def backward(self, top: Tensor, chunk: int | None = None, stop: int = 0,
                 budget_bytes: int = 512 << 20) -> Tensor:
        """Maps [K, h, w] for top tensors [K, C, h', w'] (one seed each, at the activation layer).

        stop > 0 ends the pass at the input of record `stop` (see `stop_index`).
        """
        if stop < self.first:
            raise ValueError(f"Z was computed from record {self.first} on, not {stop}")
        chunk = chunk or self.chunk_size(budget_bytes, stop)
        out = []
        for start in range(0, top.shape[0], chunk):
            out.append(self._backward_chunk(top[start:start + chunk], stop)[0])
        return torch.cat(out)

    def backward_with_coarse(self, top: Tensor, coarse: int) -> tuple[Tensor, Tensor]:
        """(maps at the input, maps at the input of record `coarse`), both [K, h, w], from one
        pass; `coarse` must lie on a layer boundary (see `stop_index`)."""
        if self.first > 0:
            raise ValueError(f"Z was computed from record {self.first} on, not 0")
        return self._backward_chunk(top, 0, coarse)

    def _transpose(self, view: PositiveLinear, s: Tensor, a: Tensor) -> Tensor:
        if self.transpose_dtype is not None:
            return view.conv_t(s.to(self.transpose_dtype), a.shape).float()
        return view.conv_t(s, a.shape)

    def _backward_chunk(self, p: Tensor, stop: int, capture: int | None = None) -> tuple[Tensor, Tensor | None]:
        """(maps at record `stop`'s input, maps at record `capture`'s input or None)."""
        p = self._layout(p)
        stack: list[Tensor] = []
        captured = None
        scaled = False  # p already holds S = P / Z of the record below (see `gain`)
        for i in range(len(self.records) - 1, stop - 1, -1):
            rec, view = self.records[i], self.views[i]
            if rec.kind == "res_begin":  # the body's and the shortcut's shares of the block input meet
                p = p + stack.pop()
            else:
                s = p if scaled else p * self.inv_z[i]
                if rec.kind == "res_end":
                    skip_view = self.skip_views[i]
                    if skip_view is None:
                        stack.append(rec.skip_input * s)
                    else:
                        stack.append(rec.skip_input * self._transpose(skip_view, s, rec.skip_input))
                scaled = self.gain[i] is not None and i > stop and i != capture
                p = self._transpose(view, s, rec.a) * (self.gain[i] if scaled else rec.a)
            if i == capture:
                captured = p.sum(dim=1)
        return p.sum(dim=1), captured


def record_stride(records, input_size, index: int) -> int:
    """Stride (relative to the network input) of record `index`'s input."""
    rec = records[index]
    t = rec.a if rec.a is not None else rec.skip_input
    return 2 ** round(math.log2(input_size[1] / t.shape[-1]))


def layer_boundaries(trace: Trace) -> list[int]:
    """Indices of the records that start a layer outside any residual, in forward order."""
    depth, boundaries = 0, []
    for i, rec in enumerate(trace.records):
        if depth == 0 and rec.kind in ("conv", "pool", "res_begin"):
            boundaries.append(i)
        depth += {"res_begin": 1, "res_end": -1}.get(rec.kind, 0)
    return boundaries


def stop_index(trace: Trace, input_size, stride: int) -> int:
    """Lowest record index whose input is at `stride` or coarser and lies on a layer boundary
    outside any residual: a pass that visits records from there on ends (or starts) there."""
    records = trace.records
    best = None
    for i in reversed(layer_boundaries(trace)):
        if record_stride(records, input_size, i) < stride:
            break
        best = i
    if best is None:
        raise ValueError(f"no layer boundary at stride >= {stride}")
    return best


def seed_tensor(activation: Tensor, seeds_ij: Tensor) -> Tensor:
    """[K, C, h, w]: seed k keeps the activation vector X[:, i_k, j_k] at its cell, zero elsewhere."""
    x = activation[0]
    k = seeds_ij.shape[0]
    top = x.new_zeros((k,) + tuple(x.shape))
    idx = torch.arange(k, device=x.device)
    i, j = seeds_ij[:, 0].to(x.device), seeds_ij[:, 1].to(x.device)
    top[idx, :, i, j] = x[:, i, j].t()
    return top


def seed_sum(activation: Tensor, seeds_ij: Tensor) -> Tensor:
    """[1, C, h, w]: the sum of `seed_tensor`'s seeds (the activation at the seed cells)."""
    mask = activation.new_zeros(activation.shape[-2:])
    mask[seeds_ij[:, 0].to(mask.device), seeds_ij[:, 1].to(mask.device)] = 1.0
    return activation[:1] * mask


def reference_maps(trace: Trace, top: Tensor, eps: float = EPS) -> Tensor:
    """One seed at a time, each transposed conv taken by autograd from the layer's own positive
    conv: a plain second implementation of the rule, to check `Excitation` against."""
    records = trace.records
    maps = []
    with torch.inference_mode(False), torch.enable_grad():
        for k in range(top.shape[0]):
            p = top[k:k + 1].clone()
            stack = []
            for rec in reversed(records):
                if rec.kind == "res_begin":
                    p = p + stack.pop()
                    continue
                a = rec.a.clone().requires_grad_(True)
                if rec.kind == "conv":
                    z = rec.layer.apply(a, weight=rec.layer.weight_pos)
                elif rec.kind == "pool":
                    c, kern = a.shape[1], rec.layer.kernel
                    ones = torch.ones(c, 1, kern, kern, dtype=a.dtype, device=a.device)
                    z = F.conv2d(a, ones, None, rec.layer.stride, rec.layer.padding, 1, c)
                else:  # res_end
                    x = rec.skip_input.clone().requires_grad_(True)
                    last = rec.layer.body[-1]
                    shortcut = rec.layer.shortcut
                    skip = shortcut[0].apply(x, weight=shortcut[0].weight_pos) if shortcut else x
                    z = last.apply(a, weight=last.weight_pos) + skip
                s = torch.where(z > eps, p / z.clamp(min=eps), torch.zeros_like(z)).detach()
                if rec.kind == "res_end":
                    grad_a, grad_x = torch.autograd.grad((z * s).sum(), (a, x))
                    stack.append(rec.skip_input * grad_x)
                    p = rec.a * grad_a
                else:
                    (grad_a,) = torch.autograd.grad((z * s).sum(), (a,))
                    p = rec.a * grad_a
            maps.append(p.sum(dim=1).detach())
    return torch.cat(maps)


def official_maps(backbone: Backbone, pixels: Tensor, seeds_ij: Tensor) -> Tensor:
    """The authors' code (spec section 8): for each peak, the plain input gradient of the channel
    mean Xbar[i, j] through the real network (BatchNorm's own gradient, max-pool to the argmax,
    the residual sum copying to both branches), summed over channels and clamped at 0."""
    std = torch.tensor(backbone.input_std, device=pixels.device).view(1, 3, 1, 1)
    maps = []
    with torch.inference_mode(False), torch.enable_grad():
        x = pixels.clone().requires_grad_(True)
        act = backbone.forward(x, layers=(backbone.activation_layer,)).features[backbone.activation_layer]
        xbar = act.mean(dim=1)[0]
        for n, (i, j) in enumerate(seeds_ij.tolist()):
            (grad,) = torch.autograd.grad(xbar[i, j], x, retain_graph=n + 1 < len(seeds_ij))
            # gradient with respect to the normalised input, as the authors' code takes it
            maps.append((grad * std).sum(dim=1).clamp(min=0).detach())
    if not maps:
        return pixels.new_zeros((0,) + tuple(pixels.shape[-2:]))
    return torch.cat(maps)
