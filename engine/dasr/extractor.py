"""DASR / DASR* region extraction and box descriptors.

Pipeline (spec section 1): resize so the long side is `max_side` (up or down), one forward pass,
seeds on the channel mean of the activation layer, one map per seed from the backward rule, an
ellipse and box per map (tau support), NMS (DASR*), and mean-pooled, l2-normalised descriptor-
layer features inside each box. Boxes and ellipses come back in ORIGINAL image pixels.

Modes: "exact" (batched backward rule), "reference" (one seed at a time), "official" (the
authors' code: per-peak input gradients, 95th-percentile support), "moments" (every seed's box
from moment propagation, see `moments.py`; the default), and "fast": moments rank all seeds, NMS
keeps the best, and only those get near-exact maps and boxes (`modulation.py`: the exact rule's
regions at IoU ~0.88 for about a seventh of its cost; docs/benchmarks.md, "Extraction").
"""
from __future__ import annotations

import logging
import platform
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from dasr_annotator.engine.dasr import moments
from dasr_annotator.engine.dasr.backbones import DEFAULT_BACKBONE, Forward, load_backbone
from dasr_annotator.engine.dasr.descriptors import l2n, pool_boxes
from dasr_annotator.engine.dasr.excitation import Excitation, official_maps, reference_maps, seed_sum, seed_tensor
from dasr_annotator.engine.dasr.modulation import COARSE_STRIDE, ModulatedMaps
from dasr_annotator.engine.dasr.regions import clip_boxes, ellipses_from_maps, nms, seeds_dasr, seeds_dasr_star
from dasr_annotator.engine.dasr.relocate import FeatureMap, WindowQuery
from dasr_annotator.engine.threads import thread_count
from dasr_annotator.engine.types import Box, Ellipse, ImageRegions, Region

log = logging.getLogger(__name__)

METHODS = ("dasr", "dasr*")
MODES = ("fast", "moments", "exact", "reference", "official")
OFFICIAL_PERCENTILE = 0.95
# Hit boxes come from re-localisation (engine/relocate.py), so region boxes only rank images, and
# the cheap moment boxes rank them as well as exact ones (dev set, docs/benchmarks.md): 7x faster.
DEFAULT_MODE = "moments"
MIN_INPUT_SIDE = 32  # pixels: twice the stride the region geometry starts from (moments.py)


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


class DeviceUnavailable(ValueError):
    """The requested device does not exist on this machine."""


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise DeviceUnavailable(f"unknown device {device!r}: use auto, cpu or cuda") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("no CUDA GPU is usable here (no device or no driver): use --device cpu or auto")
    return resolved


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class Extractor:
    """Regions and descriptors for images, with one backbone and one set of settings."""

    def __init__(self, backbone: str = DEFAULT_BACKBONE, method: str = "dasr*", mode: str = DEFAULT_MODE,
                 device: str = "auto", max_side: int = 512, weights: str | None = None, tau: float = 0.1,
                 nms_beta: float = 0.3, descriptor_layer: str | None = None, pretrained: bool = True,
                 transpose_dtype: torch.dtype | None = None, memory_budget_mb: int | None = None,
                 relocation_layer: str | None = None):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self._device = resolve_device(device)
        self._backbone_args = dict(name=backbone, weights=weights, pretrained=pretrained,
                                   descriptor_layer=descriptor_layer)
        self.backbone = load_backbone(backbone, weights=weights, pretrained=pretrained, device=self._device,
                                      descriptor_layer=descriptor_layer)
        if relocation_layer is not None:  # the backbone's own choice otherwise (ablations vary it)
            self.backbone.relocation_layer = self.backbone._check_layer(relocation_layer)
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
        # fast mode: where its moment pass starts, how many NMS rounds may add near-exact maps
        # (None: until every kept region has one) and where the seeds' own passes end;
        # benchmarks vary them
        self.rank_stride, self.fast_rounds = moments.HYBRID_START_STRIDE, moments.HYBRID_ROUNDS
        self.coarse_stride = COARSE_STRIDE

    def parallel_images(self) -> int:
        """How many images an indexer should extract at once: one per CPU core, each on one
        thread (`one_thread_each`), which scales better than splitting every op across the cores
        (docs/benchmarks.md); one on a GPU, which takes batches instead."""
        return 1 if self._device.type == "cuda" else max(1, torch.get_num_threads())

    def one_thread_each(self):
        """A context in which torch ops run on their calling thread (images side by side)."""
        return thread_count(torch.get_num_threads, torch.set_num_threads, 1)

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def device_name(self) -> str:
        return device_description(self._device)

    def config(self) -> dict:
        bb = self.backbone
        cfg = {
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
        if self.mode in ("fast", "moments"):  # their boxes depend on these too
            cfg["moments"] = {
                "start_stride": moments.DEFAULT_START_STRIDE if self.mode == "moments" else self.rank_stride,
                "box_scale": bb.box_scale,
            }
            if self.mode == "fast":
                cfg["moments"]["nms_rounds"] = self.fast_rounds
                cfg["moments"]["coarse_stride"] = self.coarse_stride  # modulated maps (modulation.py)
        return cfg

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
        # A sliver (a 1 x 40 photo) would keep a side of a few pixels, too few for the network's
        # coarsest layers: each side gets at least MIN_INPUT_SIDE (the scales below stay per axis).
        new_w, new_h = max(MIN_INPUT_SIDE, round(w * factor)), max(MIN_INPUT_SIDE, round(h * factor))
        if (new_w, new_h) != (w, h):
            interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
            rgb = cv2.resize(np.ascontiguousarray(rgb), (new_w, new_h), interpolation=interp)
        pixels = self.backbone.to_input(rgb)
        return Prepared(pixels, rgb.shape[1] / width, rgb.shape[0] / height, width, height)

    # ------------------------------------------------------------------ API

    def extract(self, image) -> ImageRegions:
        return self.extract_many([image])[0]

    def extract_many(self, images, batch_size: int | None = None) -> list[ImageRegions]:
        """Regions of several images; images of equal network-input size share forward passes
        (`batch_size` at a time: default 8 on a GPU, 1 on a CPU, where batching gains nothing).

        GPU out of memory: retry with one image per batch, then with smaller seed chunks, then
        on the CPU; each step is logged, and the work goes on."""
        while True:
            try:
                return self._extract_many(images, batch_size)
            except torch.OutOfMemoryError:
                if self._device.type != "cuda":
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if batch_size != 1:
                    log.warning("GPU out of memory: retrying one image at a time")
                    batch_size = 1
                elif self.memory_budget > (256 << 20):
                    self.memory_budget //= 4
                    log.warning("GPU out of memory: retrying with smaller seed chunks (%d MB)",
                                self.memory_budget >> 20)
                else:
                    log.warning("GPU out of memory even with small batches: continuing on the CPU")
                    self.move_to(torch.device("cpu"))

    def move_to(self, device: torch.device) -> None:
        """Rebuild the backbone on `device` (settings unchanged, so results stay compatible)."""
        args = dict(self._backbone_args)
        self.backbone = load_backbone(args.pop("name"), device=device, **args)
        self._device = device
        if device.type == "cpu":
            self.memory_budget = 64 << 20

    def _extract_many(self, images, batch_size: int | None) -> list[ImageRegions]:
        if batch_size is None:
            batch_size = 8 if self._device.type == "cuda" else 1
        preps = [self.prepare(image) for image in images]
        results: list[ImageRegions | None] = [None] * len(preps)
        by_size: dict[tuple, list[int]] = {}
        for index, prep in enumerate(preps):
            by_size.setdefault(tuple(prep.pixels.shape), []).append(index)
        for indices in by_size.values():
            for start in range(0, len(indices), batch_size):
                group = indices[start:start + batch_size]
                pixels = torch.cat([preps[i].pixels for i in group])
                with torch.inference_mode(self.mode != "official"):
                    geos = self._seed_geometries(pixels)
                    for i, geo in zip(group, geos):
                        results[i] = self._finish(preps[i], geo)
        return results

    def _finish(self, prep: Prepared, geo: "SeedGeometry") -> ImageRegions:
        keep = self.select(geo)
        descs = self._pool(geo.feature, geo.boxes[keep])
        regions = [
            Region(prep.box_to_original(b), prep.ellipse_to_original(e), float(s), d)
            for b, e, s, d in zip(geo.boxes[keep].tolist(), geo.ellipses[keep].tolist(),
                                  geo.scores[keep].tolist(), descs)
        ]
        fmap = None if geo.relocation is None else self._feature_map(prep, geo.relocation)
        return ImageRegions(prep.width, prep.height, regions, seeds=geo.n_seeds, relocation_map=fmap)

    def seed_geometry(self, image) -> "SeedGeometry":
        """Seeds' ellipses and clipped boxes before NMS, in network-input pixels (benchmarks). In
        fast mode only the seeds that got exact maps (NMS over them gives the final regions)."""
        prep = self.prepare(image)
        with torch.inference_mode(self.mode != "official"):
            return self._seed_geometries(prep.pixels)[0]

    def describe_box(self, image, box: Box) -> np.ndarray:
        """Query descriptor: the descriptor layer of the whole image pooled over `box` (original px)."""
        prep = self.prepare(image)
        xyxy = torch.tensor([[box.x * prep.scale_x, box.y * prep.scale_y,
                              box.x2 * prep.scale_x, box.y2 * prep.scale_y]], dtype=torch.float32)
        with torch.inference_mode():
            feature = self._descriptor_feature(prep.pixels)
            return self._pool(feature, xyxy)[0]

    def relocation_config(self) -> dict:
        """What a relocation map depends on (its cache is keyed by this)."""
        bb = self.backbone
        return {"backbone": bb.name, "weights": bb.weights_source, "layer": bb.relocation_layer,
                "stride": bb.relocation_stride, "channels": bb.relocation_dim, "max_side": self.max_side,
                "normalisation": [list(bb.input_mean), list(bb.input_std)]}

    def relocation_map(self, image) -> FeatureMap:
        """The relocation layer of the whole image (engine/relocate.py), float16."""
        prep = self.prepare(image)
        layer = self.backbone.relocation_layer
        with torch.inference_mode():
            feature = self.backbone.forward(prep.pixels, layers=(layer,)).features[layer][0]
        return self._feature_map(prep, feature)

    def describe_query(self, image, box: Box) -> tuple[np.ndarray, WindowQuery]:
        """A query box's region descriptor (as `describe_box`) and its relocation-layer window
        query, from one forward pass."""
        prep = self.prepare(image)
        bb = self.backbone
        xyxy = torch.tensor([[box.x * prep.scale_x, box.y * prep.scale_y,
                              box.x2 * prep.scale_x, box.y2 * prep.scale_y]], dtype=torch.float32)
        with torch.inference_mode():
            features = bb.forward(prep.pixels, layers=(bb.descriptor_layer, bb.relocation_layer)).features
            descriptor = self._pool(features[bb.descriptor_layer][0], xyxy)[0]
            relocation = features[bb.relocation_layer][0].float()
            relocation = relocation - relocation.mean(dim=(1, 2), keepdim=True)  # as relocate.centred
            window = pool_boxes(relocation, xyxy.to(self._device), bb.relocation_stride)
            vector = l2n(window).cpu().numpy().astype(np.float32)
        x1, y1, x2, y2 = xyxy[0].tolist()
        size = np.array([[(x2 - x1) / bb.relocation_stride, (y2 - y1) / bb.relocation_stride]])
        return descriptor, WindowQuery(vector, size)

    def _feature_map(self, prep: Prepared, feature: Tensor) -> FeatureMap:
        values = feature.to(torch.float16).cpu().numpy()
        return FeatureMap(values, self.backbone.relocation_stride, prep.scale_x, prep.scale_y, prep.width, prep.height)

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

    def _seed_geometries(self, pixels: Tensor) -> list["SeedGeometry"]:
        """One forward pass for a batch of equal-size images, then each image's seeds."""
        bb = self.backbone
        official = self.mode == "official"
        with torch.inference_mode():
            # moments mode needs the layers from its start stride on; the others need them all
            from_stride = moments.DEFAULT_START_STRIDE if self.mode == "moments" else 1
            # the relocation layer lies on the way: its map comes free with the regions
            layers = (bb.activation_layer, bb.descriptor_layer, bb.relocation_layer)
            fw = bb.forward(pixels, trace=not official, trace_from_stride=from_stride, layers=layers)
        out = []
        for b in range(pixels.shape[0]):
            features = {name: t[b:b + 1] for name, t in fw.features.items()}
            trace = None if fw.trace is None else fw.trace.image(b)
            geo = self._seed_geometry(Forward(features, trace, fw.input_size), pixels[b:b + 1])
            geo.relocation = features[bb.relocation_layer][0]
            out.append(geo)
        return out

    def _seed_geometry(self, fw: Forward, pixels: Tensor) -> "SeedGeometry":
        bb = self.backbone
        official = self.mode == "official"
        act, feature = fw.features[bb.activation_layer], fw.features[bb.descriptor_layer][0]
        xbar = act.mean(dim=1)[0]
        if official:
            ij, scores = seeds_dasr(xbar, exclude_border=True)
            if self.method == "dasr":
                strong = scores >= xbar.mean()
                ij, scores = ij[strong], scores[strong]
        else:
            ij, scores = self._seeds(xbar)
        n_seeds = int(ij.shape[0])
        if n_seeds == 0:
            return SeedGeometry(ij, scores, pixels.new_zeros((0, 5)), pixels.new_zeros((0, 4)), feature, 0)
        if self.mode == "moments":
            ellipses, boxes, alive = self._moment_geometry(fw, act, ij, moments.DEFAULT_START_STRIDE)
        elif self.mode == "fast":
            ij, scores, ellipses, boxes, alive = self._fast_geometry(fw, act, ij, scores)
        elif official:
            maps = official_maps(bb, pixels, ij)
            # support = pixels above each map's 95th percentile; a 0/1 map keeps exactly it
            cut = torch.quantile(maps.flatten(1), OFFICIAL_PERCENTILE, dim=1).view(-1, 1, 1)
            with torch.inference_mode():
                maps = ((maps > cut) & (maps > 0)).float()
                ellipses, boxes = ellipses_from_maps(maps, 0.5)
                alive = maps.flatten(1).amax(1) > 0
        else:
            ellipses, boxes, alive = self._exact_geometry(fw, act, ij)
        with torch.inference_mode():
            return SeedGeometry(ij[alive], scores[alive], ellipses[alive], self._clip(boxes[alive], fw),
                                feature, n_seeds)

    def _clip(self, boxes: Tensor, fw) -> Tensor:
        height, width = fw.input_size
        return clip_boxes(boxes, width, height, self.backbone.descriptor_stride)

    def _moment_geometry(self, fw, act: Tensor, ij: Tensor, start_stride: int, exc: Excitation | None = None):
        return moments.seed_ellipses(fw.trace, fw.input_size, act, ij, self.backbone.box_scale,
                                     start_stride, channels_last=self.channels_last, excitation=exc)

    def _exact_geometry(self, fw, act: Tensor, ij: Tensor, exc: Excitation | None = None):
        """(ellipses, boxes, has_map) from the backward rule's maps, tau support."""
        top = seed_tensor(act, ij)
        if self.mode == "reference":
            maps = reference_maps(fw.trace, top)
        else:
            exc = exc or self._excitation(fw)
            maps = exc.backward(top, budget_bytes=self.memory_budget)
        with torch.inference_mode():
            ellipses, boxes = ellipses_from_maps(maps, self.tau)
            return ellipses, boxes, maps.flatten(1).amax(1) > 0

    def _excitation(self, fw) -> Excitation:
        return Excitation(fw.trace, fw.input_size, transpose_dtype=self.transpose_dtype,
                          channels_last=self.channels_last)

    def _fast_geometry(self, fw, act: Tensor, ij: Tensor, scores: Tensor):
        """Moments give every seed a rough box; NMS runs on them, and each seed it keeps gets a
        near-exact map and box (`modulation.py`: its own pass to the coarse layer, the image's
        shared fine modulation); NMS runs again, until every kept seed has such a box (or for
        `fast_rounds` rounds). Those seeds come back: NMS over them gives the final regions."""
        exc = self._excitation(fw)
        maps = ModulatedMaps(exc, seed_sum(act, ij), self.coarse_stride)

        def refined(index: Tensor):
            m = maps.maps(seed_tensor(act, ij[index]), self.memory_budget)
            e, b = ellipses_from_maps(m, self.tau)
            return e, self._clip(b, fw), m.flatten(1).amax(1) > 0

        if self.method == "dasr":  # DASR's few peaks all get maps (no NMS)
            return (ij, scores) + refined(torch.arange(len(ij), device=ij.device))
        ellipses, boxes, alive = self._moment_geometry(fw, act, ij, self.rank_stride, exc)
        boxes = self._clip(boxes, fw)
        done = torch.zeros(len(ij), dtype=torch.bool, device=boxes.device)
        rounds = 0
        while self.fast_rounds is None or rounds < self.fast_rounds:
            kept = nms(boxes[alive], scores[alive], self.nms_beta)
            kept = torch.nonzero(alive)[:, 0][kept]
            todo = kept[~done[kept]]
            if len(todo) == 0:
                break
            rounds += 1
            ellipses[todo], boxes[todo], has_map = refined(todo)
            alive[todo] &= has_map
            done[todo] = True
        done &= alive
        log.debug("fast mode: near-exact maps for %d of %d seeds in %d rounds", int(done.sum()), len(ij), rounds)
        return ij[done], scores[done], ellipses[done], boxes[done], torch.ones_like(done[done])


@dataclass
class SeedGeometry:
    """Per-seed results before NMS, in network-input pixels."""

    ij: Tensor  # [K, 2] activation-map cells of the seeds that produced a map
    scores: Tensor  # [K] Xbar at the seed
    ellipses: Tensor  # [K, 5]
    boxes: Tensor  # [K, 4] xyxy, clipped, at least one descriptor cell per side
    feature: Tensor  # descriptor layer [C, h, w]
    n_seeds: int  # seeds back-propagated (including any whose map came out empty)
    relocation: Tensor | None = None  # relocation layer [C', h', w'] (engine/relocate.py)


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
