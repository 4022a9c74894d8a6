"""Near-exact seed maps from short per-seed passes (mode "fast"; spec section 4).

A seed's exact map costs a backward pass through the whole network. Most of its cost lies in the
fine layers, and what they add barely depends on the seed: the pixel-level pattern (stride-2
checkerboards, edges in the activations) is the same under every seed, only its envelope moves.
So each seed goes back only to the coarse layer (stride 16), and

    M_k ~ up(m_k) * G,    G = M_all / up(m_all),

where m_k is seed k's map at the coarse layer (channel sum), `up` is bilinear upsampling to
input pixels, and G, the fine modulation, is the one full pass of all seeds together (the rule is
linear in the seed) divided by its own coarse map. Boxes from these maps match the exact rule's
at IoU ~0.96 per seed (docs/benchmarks.md, "Extraction"); stopping at stride 32 drops that to
~0.80, so the coarse stride is 16 wherever the backbone has one.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from dasr_annotator.engine.dasr.excitation import Excitation, record_stride, stop_index

log = logging.getLogger(__name__)

COARSE_STRIDE = 16


class ModulatedMaps:
    """Seed maps at input resolution from passes that end at the coarse layer."""

    def __init__(self, excitation: Excitation, seeds_sum: Tensor, stride: int = COARSE_STRIDE):
        """seeds_sum: [1, C, h, w], every seed of the image together (`excitation.seed_sum`)."""
        self.excitation = excitation
        self.stop = _coarse_index(excitation, stride)
        self.stride = record_stride(excitation.records, excitation.input_size, self.stop)
        full, coarse = excitation.backward_with_coarse(seeds_sum, self.stop)
        envelope = self._up(coarse)[0]
        self.modulation = torch.where(envelope > 0, full[0] / envelope.clamp_min(torch.finfo(envelope.dtype).tiny),
                                      torch.zeros_like(envelope))

    def maps(self, top: Tensor, budget_bytes: int) -> Tensor:
        """[K, H, W] approximate maps of seed tensors `top` [K, C, h, w]."""
        coarse = self.excitation.backward(top, stop=self.stop, budget_bytes=budget_bytes)
        return self._up(coarse).clamp_min_(0) * self.modulation

    def _up(self, coarse: Tensor) -> Tensor:
        """Bilinear from cell centres to pixels; cell i covers pixels [i s, (i + 1) s)."""
        height, width = self.excitation.input_size
        up = F.interpolate(coarse[:, None], scale_factor=self.stride, mode="bilinear", align_corners=False)[:, 0]
        short_h, short_w = max(0, height - up.shape[-2]), max(0, width - up.shape[-1])
        if short_h or short_w:  # a backbone whose coarse grid stops short of the far edge
            up = F.pad(up[:, None], (0, short_w, 0, short_h), mode="replicate")[:, 0]
        return up[:, :height, :width]


def _coarse_index(excitation: Excitation, wanted: int) -> int:
    """The record the short passes end at: the first layer boundary at stride `wanted`, or the
    nearest finer one when the network has none that coarse (said in the log: at stride 1 the
    maps are the exact rule's, at the exact rule's cost)."""
    stride = wanted
    while True:
        try:
            index = stop_index(excitation.trace, excitation.input_size, stride)
            break
        except ValueError:
            if stride <= 1:
                index = 0
                break
            stride //= 2
    if stride != wanted:
        log.info("fast mode: no layer boundary at stride %d for a %dx%d input; seed passes end at stride %d",
                 wanted, excitation.input_size[1], excitation.input_size[0], stride)
    return index

