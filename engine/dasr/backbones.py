"""Backbone networks as flat, BatchNorm-folded layer programs that the backward rule can walk.

A backbone is a list of named top-level units (`Conv`, `Pool`, `Residual`, `Chain`; `layers.py`)
built from a network's weights (`networks.py`). Running it with `trace=True` records, layer by
layer, the non-negative inputs that the excitation rule (`excitation.py`) and the moment passes
(`moments.py`) need. Every backbone describes itself: channels and stride of each named unit,
activation and descriptor layer, input normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dasr_annotator.engine.dasr.layers import Trace, run_unit, to_device, unit_out
from dasr_annotator.engine.dasr.networks import (BORROWED_BOX_SCALE, LITE_SPECS, WeightsMissing, build_lite,
                                                 build_resnet50, build_vgg16, imagenet_norm, lite_weights_path,
                                                 random_lite_state_dict, torchvision_state_dict)

BACKBONES = ("efficientnet-lite0", "efficientnet-lite2", "resnet50", "vgg16")
DEFAULT_BACKBONE = "efficientnet-lite0"



@dataclass
class Forward:
    """Outputs of one forward pass: named feature maps, and the trace when asked for."""

    features: dict[str, Tensor]
    trace: Trace | None
    input_size: tuple[int, int]  # (height, width) of the network input


class Backbone:
    """A BatchNorm-folded CNN that describes itself (see module docstring)."""

    def __init__(self, name: str, units: list[tuple[str, object]], activation_layer: str,
                 descriptor_layer: str, input_mean, input_std, device="cpu",
                 classifier: tuple[Tensor, Tensor] | None = None, weights_source: str = "random",
                 layer_aliases: dict[str, str] | None = None, relocation_layer: str | None = None,
                 box_scale: float = BORROWED_BOX_SCALE):
        self.name = name
        # support / mass-weighted spread of the seeds' maps (moments.py), calibrated per network
        self.box_scale = float(box_scale)
        self.device = torch.device(device)
        self.units = [(n, to_device(u, self.device)) for n, u in units]
        self.aliases = dict(layer_aliases or {})
        self.input_mean = tuple(float(v) for v in input_mean)
        self.input_std = tuple(float(v) for v in input_std)
        self.weights_source = weights_source
        self.classifier = None if classifier is None else tuple(t.to(self.device) for t in classifier)
        self.layers: dict[str, tuple[int, int]] = {}  # name -> (channels, stride)
        channels, stride = 3, 1
        for unit_name, unit in self.units:
            channels, stride = unit_out(unit, channels, stride)
            self.layers[unit_name] = (channels, stride)
        self.activation_layer = activation_layer
        self.descriptor_layer = self._check_layer(descriptor_layer)
        self._check_layer(activation_layer)
        # stride-16 map that hit boxes are re-localised on (engine/relocate.py)
        self.relocation_layer = self._check_layer(relocation_layer or descriptor_layer)
        self._mean = torch.tensor(self.input_mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.input_std, device=self.device).view(1, 3, 1, 1)

    def _check_layer(self, name: str) -> str:
        if self.aliases.get(name, name) not in self.layers:
            valid = ", ".join(list(self.aliases) + list(self.layers))
            raise ValueError(f"{self.name} has no layer {name!r}; valid names: {valid}")
        return name

    def _unit_name(self, name: str) -> str:
        return self.aliases.get(name, name)

    def layer_names(self) -> list[str]:
        return list(self.aliases) + list(self.layers)

    @property
    def descriptor_dim(self) -> int:
        return self.layers[self._unit_name(self.descriptor_layer)][0]

    @property
    def descriptor_stride(self) -> int:
        return self.layers[self._unit_name(self.descriptor_layer)][1]

    @property
    def relocation_dim(self) -> int:
        return self.layers[self._unit_name(self.relocation_layer)][0]

    @property
    def relocation_stride(self) -> int:
        return self.layers[self._unit_name(self.relocation_layer)][1]

    @property
    def activation_stride(self) -> int:
        return self.layers[self._unit_name(self.activation_layer)][1]

    @property
    def activation_channels(self) -> int:
        return self.layers[self._unit_name(self.activation_layer)][0]

    def config(self) -> dict:
        return {
            "backbone": self.name,
            "activation_layer": self.activation_layer,
            "activation_stride": self.activation_stride,
            "descriptor_layer": self.descriptor_layer,
            "descriptor_dim": self.descriptor_dim,
            "descriptor_stride": self.descriptor_stride,
            "input_mean": list(self.input_mean),
            "input_std": list(self.input_std),
            "weights": self.weights_source,
        }

    def to_input(self, rgb: np.ndarray) -> Tensor:
        """H x W x 3 uint8 RGB -> [1, 3, H, W] float32 pixel values (0..255) on the device."""
        rgb = np.ascontiguousarray(rgb)
        if not rgb.flags.writeable:
            rgb = rgb.copy()
        t = torch.from_numpy(rgb)
        if self.device.type == "cuda":
            # uint8 (a quarter of float32) from page-locked memory: the copy is a DMA that
            # overlaps the GPU's work on the previous batch
            t = t.pin_memory().to(self.device, non_blocking=True)
        else:
            t = t.to(self.device)
        return t.permute(2, 0, 1).unsqueeze(0).float()

    def forward(self, pixels: Tensor, trace: bool = False, layers: tuple[str, ...] | None = None,
                trace_from_stride: int = 1) -> Forward:
        """Run up to the last requested layer (default: activation and descriptor layers).

        `pixels` is [N, 3, H, W] in 0..255. With `trace`, layers whose input has stride >=
        `trace_from_stride` are recorded up to the activation layer; the first conv's recorded
        input is the non-negative `pixels / std` (the normalised input can be negative).
        """
        wanted = layers or (self.activation_layer, self.descriptor_layer)
        units_wanted = {self._unit_name(n) for n in wanted}
        tracer = result_trace = Trace() if trace else None
        x = (pixels - self._mean) / self._std
        features = {}
        in_stride = 1
        for index, (unit_name, unit) in enumerate(self.units):
            recording = tracer if in_stride >= trace_from_stride else None
            first_input = pixels / self._std if (recording is not None and index == 0) else None
            x = run_unit(unit, x, recording, first_input)
            in_stride = self.layers[unit_name][1]
            if unit_name == self._unit_name(self.activation_layer):
                tracer = None  # the backward rule starts at the activation layer
            if unit_name in units_wanted:
                features[unit_name] = x
                units_wanted.discard(unit_name)
                if not units_wanted:
                    break
        named = {n: features[self._unit_name(n)] for n in wanted}
        return Forward(named, result_trace, tuple(pixels.shape[-2:]))

    def logits(self, pixels: Tensor) -> Tensor:
        """ImageNet logits (global mean of the activation layer -> fc), where the weights have them."""
        if self.classifier is None:
            raise ValueError(f"{self.name} has no classifier here")
        feat = self.forward(pixels, layers=(self.activation_layer,)).features[self.activation_layer]
        weight, bias = self.classifier
        return feat.mean(dim=(2, 3)) @ weight.t() + bias


# --------------------------------------------------------------------------- entry point


def load_backbone(name: str = DEFAULT_BACKBONE, weights: str | None = None, pretrained: bool = True,
                  device="cpu", descriptor_layer: str | None = None) -> Backbone:
    """Build a backbone. Weights: `weights=PATH`, else the embedded/hub-cache file; never downloaded.

    `pretrained=False` (and no `weights`) gives random weights, for tests.
    """
    if name in LITE_SPECS:
        spec = LITE_SPECS[name]
        if weights is None and not pretrained:
            sd, source = random_lite_state_dict(spec), "random"
        else:
            path = Path(weights) if weights else lite_weights_path(spec)
            if not path.is_file():
                raise WeightsMissing(f"{name}: weights not found; provide the file {path.name} at {path}")
            sd, source = torch.load(path, map_location="cpu", weights_only=True), str(path)
        units, classifier = build_lite(sd, spec)
        return Backbone(name, units, "head", descriptor_layer or spec.descriptor_layer, spec.mean, spec.std, device,
                        classifier, source, relocation_layer=spec.relocation_layer, box_scale=spec.box_scale)
    if name in ("resnet50", "vgg16"):
        sd, source = torchvision_state_dict(name, weights, pretrained)
        mean, std = imagenet_norm(name)
        if name == "resnet50":
            units, classifier = build_resnet50(sd)
            return Backbone(name, units, "layer4", descriptor_layer or "layer4.0", mean, std, device,
                            classifier, source, layer_aliases={f"layer{i}": f"layer{i}.{n - 1}"
                                                               for i, n in zip((1, 2, 3, 4), (3, 4, 6, 3))},
                            relocation_layer="layer3")
        return Backbone(name, build_vgg16(sd), "conv5_3", descriptor_layer or "conv5_3", mean, std, device,
                        None, source, relocation_layer="conv5_3")  # conv5 runs at stride 16
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
