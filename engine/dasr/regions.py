"""Region geometry for DASR / DASR*: seeds on the activation map, ellipses and boxes from the
back-propagated maps, clipping and NMS (spec sections 1.4 and 1.6-1.8).

Everything is torch, batched over seeds, on whatever device the inputs live on.

Conventions:
- A map pixel (row i, col j) covers [j, j+1] x [i, i+1]; its centre is (x, y) = (j + 0.5, i + 0.5).
- Boxes are xyxy in the map's pixel grid (callers rescale to original pixels).
- Ellipses are (cx, cy, a, b, angle_deg) with semi-axes a >= b and the major axis's angle
  counter-clockwise from +x AS A PERSON SEES THE IMAGE (y points down, so a major axis running
  up-right has a positive angle), in (-90, 90], the convention of `types.Ellipse`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor


def _neighbourhood(x: Tensor, fill: float) -> Tensor:
    """[9, H*W] values of each cell's 3x3 neighbourhood (centre included), `fill` outside."""
    padded = F.pad(x[None, None], (1, 1, 1, 1), value=fill)
    return F.unfold(padded, kernel_size=3)[0]


def seeds_dasr(xbar: Tensor, exclude_border: bool = False) -> tuple[Tensor, Tensor]:
    """DASR seeds: the 3x3 local maxima of the activation map `xbar` [h, w].

    A cell is a candidate when no 8-neighbour is larger. A plateau (8-connected cells of equal
    value) counts once, at its first cell in raster order, and only when no cell of it touches a
    larger value; a constant map therefore gives one seed at (0, 0). `exclude_border` drops seeds
    on the map's outer ring (the lab's `official` code does). Returns (ij LongTensor[K, 2] as
    (row, col), scores = xbar at the seeds), in raster order.
    """
    h, w = xbar.shape
    x = xbar.detach().float()
    flat = x.reshape(-1)
    neigh = _neighbourhood(x, float("-inf"))  # [9, h*w]
    candidate = flat >= neigh.max(0).values
    equal = neigh == flat[None]  # -inf padding never equals a finite value
    equal[4] = False  # the centre itself

    # Flood labels and "touches a larger value" through each plateau until nothing changes; the
    # loop runs about as many times as the widest plateau is long (maps are a few dozen cells).
    index = torch.arange(h * w, device=x.device)
    big = h * w
    label = torch.where(candidate, index, torch.full_like(index, big))
    touches_larger = (equal & ~_neighbourhood(candidate.reshape(h, w).float(), 1.0).bool()).any(0)
    while True:
        label_n = _neighbourhood(label.reshape(h, w).float(), float(big)).long()
        new_label = torch.where(equal, label_n, big).min(0).values.minimum(label)
        larger_n = _neighbourhood(touches_larger.reshape(h, w).float(), 0.0).bool()
        new_touches = (equal & larger_n).any(0) | touches_larger
        new_label = torch.where(candidate, new_label, big)
        if torch.equal(new_label, label) and torch.equal(new_touches, touches_larger):
            break
        label, touches_larger = new_label, new_touches

    keep = candidate & ~touches_larger & (label == index)
    if exclude_border:
        inner = torch.zeros(h, w, dtype=torch.bool, device=x.device)
        inner[1:-1, 1:-1] = True
        keep &= inner.reshape(-1)
    ij = torch.nonzero(keep.reshape(h, w))
    return ij, xbar[ij[:, 0], ij[:, 1]]


def seeds_dasr_star(xbar: Tensor) -> tuple[Tensor, Tensor]:
    """DASR* seeds: every cell strictly above the map's mean (none for a constant map).

    Returns (ij LongTensor[K, 2] as (row, col), scores), in raster order.
    """
    ij = torch.nonzero(xbar > xbar.mean())
    return ij, xbar[ij[:, 0], ij[:, 1]]


def ellipse_from_moments(mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
    """Ellipses and boxes from centres [K, 2] (x, y) and covariances [K, 2, 2] (x, y order).

    Semi-axes are 2 * sqrt(eigenvalue); the box is the ellipse's bounding rectangle, which is
    centre +- (2 * sqrt(Sigma_xx), 2 * sqrt(Sigma_yy)). Shared by the exact-map path and the
    moment-propagation path so both draw the same geometry.
    """
    sxx, syy, sxy = cov[:, 0, 0], cov[:, 1, 1], cov[:, 0, 1]
    half_trace = 0.5 * (sxx + syy)
    spread = torch.sqrt((0.5 * (sxx - syy)) ** 2 + sxy**2)
    major = (half_trace + spread).clamp_min(0)
    minor = (half_trace - spread).clamp_min(0)
    # Angle of the major axis in (x, y-down) coordinates; negate for the person's view.
    theta_down = 0.5 * torch.atan2(2.0 * sxy, sxx - syy)
    angle = -torch.rad2deg(theta_down)
    angle = torch.where(angle <= -90.0, angle + 180.0, angle) + 0.0  # (-90, 90], no -0.0
    ellipses = torch.stack([mean[:, 0], mean[:, 1], 2 * major.sqrt(), 2 * minor.sqrt(), angle], 1)
    half_w, half_h = 2 * sxx.clamp_min(0).sqrt(), 2 * syy.clamp_min(0).sqrt()
    boxes = torch.stack(
        [mean[:, 0] - half_w, mean[:, 1] - half_h, mean[:, 0] + half_w, mean[:, 1] + half_h], 1
    )
    return ellipses, boxes


def ellipses_from_maps(maps: Tensor, tau: float = 0.1) -> tuple[Tensor, Tensor]:
    """Ellipse and box of each map's support {M / max(M) > tau} (unweighted, Sigma = cov / N).

    maps [K, H, W] -> (ellipses [K, 5], boxes [K, 4] xyxy) in the map's pixel grid. A map with no
    positive value has no support: its ellipse and box are all zeros (callers drop such seeds by
    testing `maps.flatten(1).amax(1) > 0`).
    """
    k, h, w = maps.shape
    # Moments of half-precision maps would lose the centre: accumulate in float32 at least.
    dtype = torch.float64 if maps.dtype == torch.float64 else torch.float32
    peak = maps.flatten(1).amax(1).to(dtype)
    has_support = peak > 0
    support = (maps > (tau * peak).where(has_support, torch.inf)[:, None, None]).to(dtype)
    xs = torch.arange(w, device=maps.device, dtype=dtype) + 0.5
    ys = torch.arange(h, device=maps.device, dtype=dtype) + 0.5
    per_col, per_row = support.sum(1), support.sum(2)  # [K, W], [K, H]
    count = per_col.sum(1).clamp_min(1)
    cx, cy = (per_col * xs).sum(1) / count, (per_row * ys).sum(1) / count
    # Centre before squaring so float32 keeps its precision on large maps.
    dx, dy = xs[None] - cx[:, None], ys[None] - cy[:, None]
    sxx = (per_col * dx**2).sum(1) / count
    syy = (per_row * dy**2).sum(1) / count
    sxy = torch.einsum("kij,ki,kj->k", support, dy, dx) / count
    cov = torch.stack([torch.stack([sxx, sxy], 1), torch.stack([sxy, syy], 1)], 1)
    ellipses, boxes = ellipse_from_moments(torch.stack([cx, cy], 1), cov)
    keep = has_support[:, None].to(dtype)
    return ellipses * keep, boxes * keep


def clip_boxes(boxes: Tensor, width: float, height: float, min_side: float) -> Tensor:
    """Clip xyxy boxes [K, 4] to the image and widen any side shorter than `min_side` about its
    centre, shifted to stay inside (a side never exceeds the image's own size)."""
    out = boxes.clone().float()
    for lo, hi, size in ((0, 2, float(width)), (1, 3, float(height))):
        a = out[:, lo].clamp(0, size)
        b = out[:, hi].clamp(0, size)
        side = min(float(min_side), size)
        short = (b - a) < side
        start = ((a + b) / 2 - side / 2).clamp(0, size - side)
        out[:, lo] = torch.where(short, start, a)
        out[:, hi] = torch.where(short, start + side, b)
    return out


def box_iou_matrix(a: Tensor, b: Tensor) -> Tensor:
    """IoU [N, M] between xyxy boxes; zero-area pairs give 0 (never NaN)."""
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(2)
    union = area_a[:, None] + area_b[None] - inter
    return torch.where(union > 0, inter / union.clamp_min(torch.finfo(inter.dtype).tiny), 0.0)


def nms(boxes: Tensor, scores: Tensor, beta: float = 0.3) -> Tensor:
    """Indices of the boxes kept by NMS (a box goes when its IoU with a kept one exceeds beta),
    best score first; equal scores are broken by index so the result is deterministic."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    n = order.numel()
    # Ranks as scores: torchvision's own sort need not be stable on ties.
    ranks = torch.arange(n, 0, -1, device=boxes.device, dtype=torch.float32)
    kept = torchvision.ops.nms(boxes[order].float(), ranks, float(beta))
    return order[kept]

