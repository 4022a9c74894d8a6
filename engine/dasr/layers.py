"""The layer program a backbone runs: BatchNorm-folded units (`Conv`, `Pool`, `Residual`, `Chain`)
and the trace of non-negative inputs that the backward rule (`excitation.py`) and the moment passes
(`moments.py`) walk back through. Pure torch; no weights, no network names."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


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


def run_unit(unit, x: Tensor, trace: Trace | None, first_input: Tensor | None) -> Tensor:
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
            x = run_unit(sub, x, trace, first_input)
        return x
    if isinstance(unit, Residual):
        skip_in = x if trace is None else record_input(x)
        if trace is not None:
            trace.add("res_begin", unit, skip_in)
        h = x
        for conv in unit.body[:-1]:
            h = run_unit(conv, h, trace, first_input)
        last = unit.body[-1]
        skip = x
        for conv in unit.shortcut:
            skip = conv.forward(skip)
        if trace is not None:
            trace.add("res_end", unit, h.clamp(min=0), skip_in)
        return activate(last.apply(h, bias=last.bias) + skip, unit.act)
    raise TypeError(f"unknown unit {type(unit).__name__}")


def unit_out(unit, channels: int, stride: int) -> tuple[int, int]:
    """(channels, total stride) after a unit, from the layer shapes alone."""
    if isinstance(unit, Conv):
        return unit.out_channels, stride * unit.stride
    if isinstance(unit, Pool):
        return channels, stride * unit.stride
    if isinstance(unit, Chain):
        for sub in unit.units:
            channels, stride = unit_out(sub, channels, stride)
        return channels, stride
    if isinstance(unit, Residual):
        for conv in unit.body:
            channels, stride = unit_out(conv, channels, stride)
        return channels, stride
    raise TypeError(type(unit).__name__)

def to_device(unit, device):
    if isinstance(unit, Conv):
        return Conv(unit.weight.to(device), unit.bias.to(device), unit.stride, unit.padding, unit.groups, unit.act)
    if isinstance(unit, Pool):
        return unit
    if isinstance(unit, Chain):
        return Chain([to_device(u, device) for u in unit.units])
    if isinstance(unit, Residual):
        return Residual([to_device(c, device) for c in unit.body], [to_device(c, device) for c in unit.shortcut], unit.act)
    raise TypeError(type(unit).__name__)


# --------------------------------------------------------------------------- BN folding


def fold_bn(weight: Tensor, conv_bias: Tensor | None, bn: dict[str, Tensor], eps: float) -> tuple[Tensor, Tensor]:
    """Conv weight/bias with an eval-mode BatchNorm folded in (exact; negative gamma included)."""
    scale = bn["weight"] / torch.sqrt(bn["running_var"] + eps)
    bias = conv_bias if conv_bias is not None else torch.zeros_like(bn["running_mean"])
    return weight * scale.view(-1, 1, 1, 1), (bias - bn["running_mean"]) * scale + bn["bias"]


def bn_params(sd: dict, prefix: str) -> dict[str, Tensor]:
    return {k: sd[f"{prefix}.{k}"].float() for k in ("weight", "bias", "running_mean", "running_var")}


def conv_bn(sd, conv: str, bn: str, eps: float, **kw) -> Conv:
    weight, bias = fold_bn(sd[f"{conv}.weight"].float(), None, bn_params(sd, bn), eps)
    return Conv(weight, bias, **kw)
