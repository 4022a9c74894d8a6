"""DASR / DASR* region extraction and box descriptors for one image at a time.

Pipeline (spec section 1): resize so the long side is `max_side` (up or down), one forward pass,
seeds on the channel mean of the activation layer, one map per seed from the backward rule, an
ellipse and box per map (tau support), NMS (DASR*), and mean-pooled, l2-normalised descriptor-
layer features inside each box. Boxes and ellipses come back in ORIGINAL image pixels.

Modes: "exact" (batched backward rule), "reference" (one seed at a time), "official" (the
authors' code: per-peak input gradients, 95th-percentile support), "fast" (moment propagation,
see `moments.py`).
"""
from __future__ import annotations

import logging
import platform
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from . import moments
from .backbones import DEFAULT_BACKBONE, load_backbone
from .descriptors import l2n, pool_boxes
from .excitation import Excitation, official_maps, reference_maps, seed_tensor
from .regions import clip_boxes, ellipses_from_maps, nms, seeds_dasr, seeds_dasr_star
from .types import Box, Ellipse, ImageRegions, Region

log = logging.getLogger(__name__)

METHODS = ("dasr", "dasr*")
MODES = ("fast", "exact", "reference", "official")
OFFICIAL_PERCENTILE = 0.95


@dataclass
class Prepared:
    """The network input for one image and how it maps back to original pixels."""

    pixels: Tensor  # [1, 3, H, W], 0..255
    scale_x: float  # network-input pixels per original pixel
    scale_y: float
    width: int  # original size
    height: int

    def box_to_original(self, xyxy) -> Box:
        x1, y1, x2, y2 = (float(v) for v in xyxy)
        return Box.from_xyxy(x1 / self.scale_x, y1 / self.scale_y, x2 / self.scale_x, y2 / self.scale_y)

    def ellipse_to_original(self, e) -> Ellipse:
        cx, cy, a, b, angle = (float(v) for v in e)
        s = 0.5 * (self.scale_x + self.scale_y)
        return Ellipse(cx / self.scale_x, cy / self.scale_y, a / s, b / s, angle)


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class Extractor:
    """Regions and descriptors for images, with one backbone and one set of settings."""

    def __init__(self, backbone: str = DEFAULT_BACKBONE, method: str = "dasr*", mode: str = "fast",
                 device: str = "auto", max_side: int = 512, weights: str | None = None, tau: float = 0.1,
                 nms_beta: float = 0.3, descriptor_layer: str | None = None, pretrained: bool = True,
                 transpose_dtype: torch.dtype | None = None, memory_budget_mb: int | None = None):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self._device = resolve_device(device)
        self.backbone = load_backbone(backbone, weights=weights, pretrained=pretrained, device=self._device,
                                      descriptor_layer=descriptor_layer)
        self.method, self.mode = method, mode
        self.max_side, self.tau, self.nms_beta = int(max_side), float(tau), float(nms_beta)
        self.transpose_dtype = transpose_dtype
        if memory_budget_mb is None:
            # Seeds per backward chunk follow from this. On a CPU one seed at a time is fastest
            # (the working set stays in cache); a GPU wants large batches.
            memory_budget_mb = 4096 if self._device.type == "cuda" else 64
        self.memory_budget = int(memory_budget_mb) << 20
        # channels-last makes depthwise and transposed convs several times faster, CPU and GPU
        self.channels_last = True

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def device_name(self) -> str:
        return device_description(self._device)

    def config(self) -> dict:
        bb = self.backbone
        return {
            "backbone": bb.name,
            "method": self.method,
            "mode": self.mode,
            "descriptor_layer": bb.descriptor_layer,
            "descriptor_dim": bb.descriptor_dim,
            "descriptor_stride": bb.descriptor_stride,
            "activation_layer": bb.activation_layer,
            "activation_stride": bb.activation_stride,
            "normalisation": {"mean": list(bb.input_mean), "std": list(bb.input_std)},
            "max_side": self.max_side,
            "tau": self.tau,
            "nms_beta": self.nms_beta,
        }

    # ------------------------------------------------------------------ input

    def prepare(self, image) -> Prepared:
        """A LoadedImage-like object (rgb, width, height, scale) or an RGB uint8 array."""
        if isinstance(image, np.ndarray):
            rgb, width, height = image, image.shape[1], image.shape[0]
        else:
            rgb, width, height = image.rgb, int(image.width), int(image.height)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected H x W x 3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
        h, w = rgb.shape[:2]
        factor = self.max_side / max(h, w)
        if factor != 1.0:
            new_w, new_h = max(1, round(w * factor)), max(1, round(h * factor))
            interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
            rgb = cv2.resize(np.ascontiguousarray(rgb), (new_w, new_h), interpolation=interp)
        pixels = self.backbone.to_input(rgb)
        return Prepared(pixels, rgb.shape[1] / width, rgb.shape[0] / height, width, height)

    # ------------------------------------------------------------------ API

    def extract(self, image) -> ImageRegions:
        prep = self.prepare(image)
        with torch.inference_mode(self.mode != "official"):
            geo = self._seed_geometry(prep.pixels)
            keep = self.select(geo)
            descs = self._pool(geo.feature, geo.boxes[keep])
        regions = [
            Region(prep.box_to_original(b), prep.ellipse_to_original(e), float(s), d)
            for b, e, s, d in zip(geo.boxes[keep].tolist(), geo.ellipses[keep].tolist(),
                                  geo.scores[keep].tolist(), descs)
        ]
        return ImageRegions(prep.width, prep.height, regions, seeds=geo.n_seeds)

    def seed_geometry(self, image) -> "SeedGeometry":
        """Every seed's ellipse and clipped box before NMS, in network-input pixels (benchmarks)."""
        prep = self.prepare(image)
        with torch.inference_mode(self.mode != "official"):
            return self._seed_geometry(prep.pixels)

    def describe_box(self, image, box: Box) -> np.ndarray:
        """Query descriptor: the descriptor layer of the whole image pooled over `box` (original px)."""
        prep = self.prepare(image)
        xyxy = torch.tensor([[box.x * prep.scale_x, box.y * prep.scale_y,
                              box.x2 * prep.scale_x, box.y2 * prep.scale_y]], dtype=torch.float32)
        with torch.inference_mode():
            feature = self._descriptor_feature(prep.pixels)
            return self._pool(feature, xyxy)[0]

    def describe_image(self, image) -> np.ndarray:
        """Whole-image mean pooling of the descriptor layer (baselines)."""
        prep = self.prepare(image)
        with torch.inference_mode():
            feature = self._descriptor_feature(prep.pixels)
            return l2n(feature.mean(dim=(1, 2))[None]).cpu().numpy().astype(np.float32)[0]

    # ------------------------------------------------------------------ internals

    def _descriptor_feature(self, pixels: Tensor) -> Tensor:
        layer = self.backbone.descriptor_layer
        return self.backbone.forward(pixels, layers=(layer,)).features[layer][0]

    def _pool(self, feature: Tensor, boxes_xyxy: Tensor) -> list[np.ndarray]:
        if boxes_xyxy.shape[0] == 0:
            return []
        pooled = pool_boxes(feature.float(), boxes_xyxy.to(feature.device), self.backbone.descriptor_stride)
        return list(l2n(pooled).cpu().numpy().astype(np.float32))

    def _seeds(self, xbar: Tensor) -> tuple[Tensor, Tensor]:
        return seeds_dasr_star(xbar) if self.method == "dasr*" else seeds_dasr(xbar)

    def select(self, geo: "SeedGeometry") -> Tensor:
        """Indices of the regions kept, best score first (NMS for DASR*)."""
        if self.mode == "official":
            return nms_plus_one(geo.boxes, geo.scores, self.nms_beta)
        if self.method == "dasr*":
            return nms(geo.boxes, geo.scores, self.nms_beta)
        return torch.argsort(geo.scores, descending=True)

    def _seed_geometry(self, pixels: Tensor) -> "SeedGeometry":
        bb = self.backbone
        official = self.mode == "official"
        with torch.inference_mode():
            # fast mode needs the layers from its start stride on; exact modes need them all
            from_stride = moments.DEFAULT_START_STRIDE if self.mode == "fast" else 1
            fw = bb.forward(pixels, trace=not official, trace_from_stride=from_stride)
        act, feature = fw.features[bb.activation_layer], fw.features[bb.descriptor_layer][0]
        xbar = act.mean(dim=1)[0]
        if official:
            ij, scores = seeds_dasr(xbar, exclude_border=True)
            if self.method == "dasr":
                strong = scores >= xbar.mean()
                ij, scores = ij[strong], scores[strong]
        else:
            ij, scores = self._seeds(xbar)
        height, width = fw.input_size
        n_seeds = int(ij.shape[0])
        if n_seeds == 0:
            return SeedGeometry(ij, scores, pixels.new_zeros((0, 5)), pixels.new_zeros((0, 4)), feature, 0)
        if self.mode == "fast":
            ellipses, boxes, alive = moments.seed_ellipses(
                fw.trace, fw.input_size, act, ij, moments.BOX_SCALE[bb.name], channels_last=self.channels_last)
        else:
            if official:
                maps = official_maps(bb, pixels, ij)
                # support = pixels above each map's 95th percentile; a 0/1 map keeps exactly it
                cut = torch.quantile(maps.flatten(1), OFFICIAL_PERCENTILE, dim=1).view(-1, 1, 1)
                maps = ((maps > cut) & (maps > 0)).float()
                tau = 0.5
            else:
                top = seed_tensor(act, ij)
                if self.mode == "reference":
                    maps = reference_maps(fw.trace, top)
                else:
                    exc = Excitation(fw.trace, fw.input_size, transpose_dtype=self.transpose_dtype,
                                     channels_last=self.channels_last)
                    maps = exc.backward(top, budget_bytes=self.memory_budget)
                tau = self.tau
            with torch.inference_mode():
                ellipses, boxes = ellipses_from_maps(maps, tau)
                alive = maps.flatten(1).amax(1) > 0
        with torch.inference_mode():
            boxes = clip_boxes(boxes[alive], width, height, bb.descriptor_stride)
            return SeedGeometry(ij[alive], scores[alive], ellipses[alive], boxes, feature, n_seeds)


@dataclass
class SeedGeometry:
    """Per-seed results before NMS, in network-input pixels."""

    ij: Tensor  # [K, 2] activation-map cells of the seeds that produced a map
    scores: Tensor  # [K] Xbar at the seed
    ellipses: Tensor  # [K, 5]
    boxes: Tensor  # [K, 4] xyxy, clipped, at least one descriptor cell per side
    feature: Tensor  # descriptor layer [C, h, w]
    n_seeds: int  # seeds back-propagated (including any whose map came out empty)


def nms_plus_one(boxes: Tensor, scores: Tensor, beta: float) -> Tensor:
    """Greedy NMS with the "+1" pixel box areas of the authors' code; indices best first."""
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = torch.argsort(scores, descending=True)
    keep = []
    while order.numel():
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        iw = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest]) + 1).clamp(min=0)
        ih = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest]) + 1).clamp(min=0)
        inter = iw * ih
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= beta]
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)
