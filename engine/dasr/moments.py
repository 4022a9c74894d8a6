"""Every seed's map moments from six upward passes (spec section 4): modes "moments" and "fast".

With Z fixed by the image, the backward rule is linear in the seed: `M_k = L e_k`. So for a
weight field w over the map, `sum_x M_k(x) w(x) = (L^T w)[k]`, and `L^T w` is one upward pass
over the same layers: `w_out = conv(A * w_in, W+) / Z` (a residual adds its shortcut's share;
pools use their all-ones kernel). Six fields (1, x, y, x^2, xy, y^2) give the mass-weighted
centre and covariance of all seeds' maps at once, whatever their number.

The exact rule's boxes come from the tau-thresholded support, not from mass-weighted moments;
the maps have long low tails, so mass-weighted spreads are larger. The backbone's `box_scale`
(`networks.LITE_SPECS`) maps the mass-weighted spread to the support's spread; it was calibrated
against the exact rule on dev images (docs/benchmarks.md, "Extraction"). The pass may also start at a coarser layer (stride 8
or 16): mass is then placed at cell centres, with the cell's own variance (s^2 / 12) added.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dasr_annotator.engine.dasr.excitation import EPS, Excitation, PositiveLinear, inverse_z, record_stride, stop_index
from dasr_annotator.engine.dasr.layers import Trace
from dasr_annotator.engine.dasr.regions import ellipse_from_moments

# Where the pass starts: mode "moments" (boxes straight from the moments), and mode "fast"
# (moments only rank the seeds for NMS; the kept ones get near-exact maps, NMS again: two rounds,
# IoU 0.88 with the exact rule's regions; until every kept region has one (None): 0.94 at ~8 %
# more time, which tips the 2-core indexer past 0.5 s per photo). See docs/benchmarks.md.
DEFAULT_START_STRIDE = 16
HYBRID_START_STRIDE = 16
HYBRID_ROUNDS = 2


def _fields(channels: int, h: int, w: int, stride: int, input_size, device) -> tuple[Tensor, float, float, float]:
    """[6, C, h, w] fields 1, u, v, u^2, uv, v^2 in centred units at cell centres."""
    height, width = input_size
    half = 0.5 * max(height, width)
    xs = ((torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride - 0.5 * width) / half
    ys = ((torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride - 0.5 * height) / half
    v, u = torch.meshgrid(ys, xs, indexing="ij")
    fields = torch.stack([torch.ones_like(u), u, v, u * u, u * v, v * v])
    return fields[:, None].expand(6, channels, h, w), half, 0.5 * width, 0.5 * height


def upward(trace: Trace, fields: Tensor, first: int, eps: float = EPS, channels_last: bool = False,
           excitation: Excitation | None = None) -> Tensor:
    """Carry fields [M, C, h, w], defined on record `first`'s input, up to the activation layer.

    Each layer's Z is computed in the same conv call as the fields' numerators (batch row 0),
    so no separate Z pass is needed; an `excitation` of the same trace lends its 1/Z instead.
    """

    def layout(t: Tensor) -> Tensor:
        return t.contiguous(memory_format=torch.channels_last) if channels_last else t

    def carry(view: PositiveLinear, a: Tensor, w: Tensor) -> Tensor:
        """(Z and) the numerators: conv(A * w) (with row 0 conv(A) when Z is not lent)."""
        if excitation is not None:
            return view.conv(layout(a * w))
        return view.conv(layout(torch.cat([a, a * w])))

    w = layout(fields)
    stack: list[Tensor] = []
    for index in range(first, len(trace.records)):
        rec = trace.records[index]
        a = None if rec.a is None else layout(rec.a)
        if rec.kind in ("conv", "pool"):
            out = carry(PositiveLinear.of(rec.layer, a), a, w)
        elif rec.kind == "res_begin":
            stack.append(w)
            continue
        else:  # res_end: body share plus shortcut share, over the combined Z
            w_skip, x = stack.pop(), layout(rec.skip_input)
            out = carry(PositiveLinear.of(rec.layer.body[-1], a), a, w)
            if rec.layer.shortcut:
                out = out + carry(PositiveLinear.of(rec.layer.shortcut[0], x), x, w_skip)
            elif excitation is not None:
                out = out + x * w_skip
            else:
                out = out + torch.cat([x, x * w_skip])
        if excitation is not None:
            w = out * excitation.inv_z[index]
        else:
            w = out[1:] * inverse_z(out[:1], eps)
    return w


def seed_moments(trace: Trace, input_size, activation: Tensor, seeds_ij: Tensor,
                 start_stride: int = DEFAULT_START_STRIDE, channels_last: bool = False,
                 excitation: Excitation | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(mass [K], centre [K, 2] (x, y), covariance [K, 2, 2]) of every seed's map, in input px."""
    first = stop_index(trace, input_size, start_stride)
    rec = trace.records[first]
    a = rec.a if rec.a is not None else rec.skip_input
    c, h, w = a.shape[1:]
    stride = record_stride(trace.records, input_size, first)
    fields, half, cx0, cy0 = _fields(c, h, w, stride, input_size, a.device)
    top = upward(trace, fields, first, channels_last=channels_last, excitation=excitation)  # [6, C, h', w']
    x = activation[0]
    i, j = seeds_ij[:, 0].to(x.device), seeds_ij[:, 1].to(x.device)
    m = torch.einsum("ck,mck->km", x[:, i, j], top[:, :, i, j])  # [K, 6]
    mass = m[:, 0]
    safe = mass.clamp(min=torch.finfo(mass.dtype).tiny)
    mu, mv = m[:, 1] / safe, m[:, 2] / safe
    cell_var = (stride / half) ** 2 / 12.0 if stride > 1 else 0.0
    suu = (m[:, 3] / safe - mu * mu).clamp(min=0) + cell_var
    suv = m[:, 4] / safe - mu * mv
    svv = (m[:, 5] / safe - mv * mv).clamp(min=0) + cell_var
    centre = torch.stack([mu * half + cx0, mv * half + cy0], 1)
    cov = torch.stack([torch.stack([suu, suv], 1), torch.stack([suv, svv], 1)], 1) * half**2
    return mass, centre, cov


def seed_ellipses(trace: Trace, input_size, activation: Tensor, seeds_ij: Tensor, box_scale: float,
                  start_stride: int = DEFAULT_START_STRIDE, channels_last: bool = False,
                  excitation: Excitation | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(ellipses [K, 5], boxes [K, 4] xyxy, has_mass [K]) approximating the exact rule's support
    geometry: mass-weighted moments with the spread scaled by `box_scale`."""
    mass, centre, cov = seed_moments(trace, input_size, activation, seeds_ij, start_stride, channels_last, excitation)
    ellipses, boxes = ellipse_from_moments(centre, cov * box_scale**2)
    return ellipses, boxes, mass > 0
