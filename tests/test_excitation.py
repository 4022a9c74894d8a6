"""The batched excitation backward rule, its reference, the official variant and the moment passes."""
from __future__ import annotations

import pytest
import torch
import torchvision

from dasr_annotator.engine.dasr import moments
from dasr_annotator.engine.dasr.backbones import Backbone, load_backbone
from dasr_annotator.engine.dasr.excitation import (
                                                   Excitation, PositiveLinear, layer_boundaries, official_maps, reference_maps, seed_tensor,
                                                   )
from dasr_annotator.engine.dasr.layers import Chain, Conv, Pool, Residual, Trace

torch.set_num_threads(1)

# Odd input sizes on purpose: strided layers must map back onto the exact input grid.
SIZES = {"tiny": (45, 59), "efficientnet-lite0": (67, 83), "resnet50": (65, 97), "vgg16": (51, 69)}


def _tiny(zero_bias: bool) -> Backbone:
    """Every layer type in a few channels: TF-"same" and symmetric padding, grouped and depthwise
    convs, avg and max pooling, ReLU and ReLU6, linear (signed) outputs, identity and projection
    residuals."""
    gen = torch.Generator().manual_seed(5)

    def conv(cin, cout, k, stride=1, padding=0, groups=1, act="relu"):
        w = torch.randn(cout, cin // groups, k, k, generator=gen) * (2.0 / (cin // groups * k * k)) ** 0.5
        b = torch.zeros(cout) if zero_bias else 0.1 * torch.randn(cout, generator=gen)
        return Conv(w, b, stride, padding, groups, act)

    units = [
        ("stem", conv(3, 8, 3, 2, "same", act="relu6")),
        ("avgpool", Pool("avg", 3, 2, 1)),
        ("grouped", conv(8, 12, 3, 1, 1, groups=4)),
        ("project", Residual([conv(12, 12, 1), conv(12, 12, 3, 2, 1, groups=12), conv(12, 16, 1, act=None)],
                             [conv(12, 16, 1, 2, act=None)], act="relu")),
        ("bottleneck", Chain([conv(16, 24, 1, act="relu6"), conv(24, 24, 5, 1, "same", groups=24, act="relu6"),
                              conv(24, 16, 1, act=None)])),
        ("identity", Residual([conv(16, 32, 1, act="relu6"), conv(32, 32, 3, 1, "same", groups=32, act="relu6"),
                               conv(32, 16, 1, act=None)], [])),
        ("maxpool", Pool("max", 2, 2)),
        ("head", conv(16, 20, 1)),
    ]
    return Backbone("tiny", units, "head", "identity", (120, 110, 100), (60, 62, 64))


def _zero_biases(net: Backbone) -> Backbone:
    def visit(unit):
        if isinstance(unit, Conv):
            unit.bias = torch.zeros_like(unit.bias)
        for sub in getattr(unit, "units", []) + getattr(unit, "body", []) + getattr(unit, "shortcut", []):
            visit(sub)

    for _, unit in net.units:
        visit(unit)
    return net


@pytest.fixture(scope="module")
def nets():
    out = {"tiny": _tiny(zero_bias=False)}
    for name in ("efficientnet-lite0", "resnet50", "vgg16"):
        out[name] = load_backbone(name, pretrained=False)
    return out


def _traced(net: Backbone, name: str, seed: int = 0):
    pixels = torch.rand(1, 3, *SIZES[name], generator=torch.Generator().manual_seed(seed)) * 255
    with torch.inference_mode():
        fw = net.forward(pixels, trace=True)
    act = fw.features[net.activation_layer]
    h, w = act.shape[-2:]
    cells = torch.tensor([[i, j] for i in range(h) for j in range(w)])
    return fw, act, cells


@pytest.mark.parametrize("name", list(SIZES))
def test_batched_equals_one_seed_at_a_time(nets, name):
    fw, act, cells = _traced(nets[name], name)
    top = seed_tensor(act, cells[:5])
    with torch.inference_mode():
        batched = Excitation(fw.trace, fw.input_size).backward(top, chunk=3)
    reference = reference_maps(fw.trace, top)
    assert batched.shape == (5,) + tuple(fw.input_size)
    assert (batched >= 0).all() and (reference >= 0).all()
    rel = (batched - reference).abs().max() / reference.abs().max()
    assert rel <= 1e-4, float(rel)
    assert reference.flatten(1).amax(1).gt(0).all()  # the maps are not trivially zero


@pytest.mark.parametrize("name", ["tiny", "resnet50", "vgg16"])
def test_mass_is_conserved_layer_to_layer(name):
    """Without biases, and with ReLU networks' non-negative inputs, every layer passes on exactly
    the mass it receives: the total at each layer boundary equals the seed's total."""
    net = _zero_biases(_tiny(zero_bias=True) if name == "tiny" else load_backbone(name, pretrained=False))
    if name == "tiny":  # linear outputs inside tiny are signed; keep its ReLU part only
        net.units = net.units[:4]
        net.activation_layer = net.descriptor_layer = "project"
        net.layers = {k: v for k, v in net.layers.items() if k in dict(net.units)}
    fw, act, cells = _traced(net, name)
    top = seed_tensor(act, cells[:3])
    seed_mass = top.sum(dim=(1, 2, 3)).double()
    with torch.inference_mode():
        exc = Excitation(fw.trace, fw.input_size)
        boundaries = layer_boundaries(fw.trace)
        assert len(boundaries) >= 4
        for stop in boundaries:
            mass = exc.backward(top, stop=stop).sum(dim=(1, 2)).double()
            assert torch.allclose(mass, seed_mass, rtol=1e-4), (stop, mass, seed_mass)


def test_positive_part_keeps_lite0_mass_where_z_is_positive():
    """Lite0's linear bottlenecks feed signed values forward; the rule uses their positive part,
    and mass is lost only at units that are active although no positive-weight input is."""
    net = _zero_biases(load_backbone("efficientnet-lite0", pretrained=False))
    fw, act, cells = _traced(net, "efficientnet-lite0")
    top = seed_tensor(act, cells[:3])
    with torch.inference_mode():
        total = Excitation(fw.trace, fw.input_size).backward(top).sum(dim=(1, 2))
    ratio = total / top.sum(dim=(1, 2, 3))
    assert (ratio <= 1 + 1e-5).all() and (ratio > 0.9).all(), ratio


def test_chunking_and_reduced_precision_transposes(nets):
    fw, act, cells = _traced(nets["efficientnet-lite0"], "efficientnet-lite0", seed=1)
    top = seed_tensor(act, cells[:6])
    with torch.inference_mode():
        whole = Excitation(fw.trace, fw.input_size).backward(top, chunk=6)
        pieces = Excitation(fw.trace, fw.input_size).backward(top, chunk=1)
        last = Excitation(fw.trace, fw.input_size, channels_last=True).backward(top, chunk=4)
        half = Excitation(fw.trace, fw.input_size, transpose_dtype=torch.bfloat16).backward(top)
    assert torch.allclose(whole, pieces, rtol=1e-5, atol=1e-6 * whole.max())
    assert torch.allclose(whole, last, rtol=1e-4, atol=1e-5 * whole.max())
    # bf16 keeps ~3 significant digits per layer; Z and the division stay float32
    assert ((half - whole).abs().max() / whole.max()) < 0.05


def test_positive_linear_transpose_is_the_adjoint():
    """<conv(x), y> == <x, conv_t(y)> for strided, asymmetric-padded and pointwise layers."""
    gen = torch.Generator().manual_seed(0)
    for layer, shape in [
        (Conv(torch.rand(6, 1, 5, 5, generator=gen), torch.zeros(6), 2, "same", 6), (2, 6, 11, 14)),
        (Conv(torch.rand(5, 4, 3, 3, generator=gen), torch.zeros(5), 2, 1, 1), (2, 4, 9, 8)),
        (Conv(torch.rand(7, 4, 1, 1, generator=gen), torch.zeros(7), 1, 0, 1), (2, 4, 5, 6)),
        (Pool("max", 3, 2, 1), (2, 4, 9, 10)),
    ]:
        x = torch.rand(shape, generator=gen)
        view = PositiveLinear.of(layer, x[:1])
        y = torch.rand_like(view.conv(x))
        for xs, ys in ((x, y), (x.contiguous(memory_format=torch.channels_last),
                                y.contiguous(memory_format=torch.channels_last))):
            lhs = (view.conv(xs) * ys).sum()
            rhs = (xs * view.conv_t(ys, xs.shape)).sum()
            assert torch.allclose(lhs, rhs, rtol=1e-5), (layer, lhs, rhs)


def test_official_maps_are_the_input_gradient_of_xbar():
    """The official variant equals autograd through torchvision's own ResNet-50 (unfolded BN)."""
    torch.manual_seed(7)
    model = torchvision.models.resnet50(weights=None).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            m.running_mean.uniform_(-0.1, 0.1)
    net = Backbone("resnet50", *_resnet_units(model.state_dict()))
    pixels = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(3)) * 255
    seeds = torch.tensor([[1, 1], [0, 2]])
    maps = official_maps(net, pixels, seeds)
    mean = torch.tensor(net.input_mean).view(1, 3, 1, 1)
    std = torch.tensor(net.input_std).view(1, 3, 1, 1)
    for k, (i, j) in enumerate(seeds.tolist()):
        x = ((pixels - mean) / std).requires_grad_(True)
        feat = torch.nn.Sequential(*list(model.children())[:-2])(x)
        (grad,) = torch.autograd.grad(feat.mean(1)[0, i, j], x)
        expected = grad.sum(1)[0].clamp(min=0)
        assert torch.allclose(maps[k], expected, atol=1e-4 * expected.abs().max()), k


def _resnet_units(sd):
    from dasr_annotator.engine.dasr.networks import build_resnet50

    units, classifier = build_resnet50(sd)
    mean = tuple(255 * m for m in (0.485, 0.456, 0.406))
    std = tuple(255 * s for s in (0.229, 0.224, 0.225))
    return units, "layer4.2", "layer4.0", mean, std, "cpu", classifier


@pytest.mark.parametrize("name", list(SIZES))
def test_moment_passes_equal_the_exact_maps_moments(nets, name):
    """One upward pass per field gives every seed's mass-weighted moments: the same numbers as
    the exact maps' own moments (the map is linear in the seed)."""
    fw, act, cells = _traced(nets[name], name, seed=2)
    seeds = cells[:4]
    with torch.inference_mode():
        maps = Excitation(fw.trace, fw.input_size).backward(seed_tensor(act, seeds)).double()
        mass, centre, cov = moments.seed_moments(fw.trace, fw.input_size, act, seeds, start_stride=1)
        _, centre_cl, cov_cl = moments.seed_moments(fw.trace, fw.input_size, act, seeds, 1, channels_last=True)
    h, w = maps.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    m0 = maps.sum(dim=(1, 2))
    cx = (maps * xs).sum(dim=(1, 2)) / m0
    cy = (maps * ys).sum(dim=(1, 2)) / m0
    sxx = (maps * (xs - cx[:, None, None]) ** 2).sum(dim=(1, 2)) / m0
    sxy = (maps * (xs - cx[:, None, None]) * (ys - cy[:, None, None])).sum(dim=(1, 2)) / m0
    syy = (maps * (ys - cy[:, None, None]) ** 2).sum(dim=(1, 2)) / m0
    assert torch.allclose(mass.double(), m0, rtol=1e-4)
    assert torch.allclose(centre.double(), torch.stack([cx, cy], 1), atol=1e-3 * max(h, w))
    expected_cov = torch.stack([torch.stack([sxx, sxy], 1), torch.stack([sxy, syy], 1)], 1)
    assert torch.allclose(cov.double(), expected_cov, atol=1e-3 * expected_cov.abs().max())
    assert torch.allclose(centre_cl, centre, atol=1e-3 * max(h, w))
    assert torch.allclose(cov_cl, cov, atol=1e-3 * cov.abs().max())


def test_moments_from_a_coarser_start_stay_close(nets):
    """Starting the pass at stride 8 puts each cell's mass at its centre: centres move by well
    under a cell and spreads stay of the same size."""
    fw, act, cells = _traced(nets["efficientnet-lite0"], "efficientnet-lite0", seed=3)
    with torch.inference_mode():
        _, c1, v1 = moments.seed_moments(fw.trace, fw.input_size, act, cells, start_stride=1)
        _, c8, v8 = moments.seed_moments(fw.trace, fw.input_size, act, cells, start_stride=8)
    assert (c1 - c8).abs().max() < 8
    ratio = v8.diagonal(dim1=1, dim2=2) / v1.diagonal(dim1=1, dim2=2)
    assert ((ratio > 0.7) & (ratio < 1.4)).all(), ratio


def test_a_trace_from_a_coarser_layer_gives_the_same_moments(nets):
    """Fast mode records only the layers its pass visits; the result must not change."""
    net = nets["efficientnet-lite0"]
    pixels = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(4)) * 255
    with torch.inference_mode():
        full = net.forward(pixels, trace=True)
        part = net.forward(pixels, trace=True, trace_from_stride=16)
        act = full.features[net.activation_layer]
        assert torch.equal(act, part.features[net.activation_layer])
        assert len(part.trace.records) < len(full.trace.records)
        seeds = torch.nonzero(act.mean(1)[0] > 0)
        # the same first layer, reached through the full trace
        first = next(i for i, r in enumerate(full.trace.records) if r.layer is part.trace.records[0].layer)
        tail = Trace()
        tail.records = full.trace.records[first:]
        a = moments.seed_moments(tail, full.input_size, act, seeds, start_stride=16)
        b = moments.seed_moments(part.trace, part.input_size, act, seeds, start_stride=16)
    for x, y in zip(a, b):
        assert torch.allclose(x, y)


@pytest.mark.parametrize("name", ["efficientnet-lite0", "resnet50"])
def test_moment_passes_may_borrow_the_excitations_z(nets, name):
    """Fast mode's moment ranking uses the 1/Z its excitation already holds: same moments."""
    fw, act, cells = _traced(nets[name], name, seed=3)
    with torch.inference_mode():
        exc = Excitation(fw.trace, fw.input_size, channels_last=True)
        own = moments.seed_moments(fw.trace, fw.input_size, act, cells, 16, channels_last=True)
        lent = moments.seed_moments(fw.trace, fw.input_size, act, cells, 16, channels_last=True, excitation=exc)
    for x, y in zip(own, lent):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-6 * float(x.abs().max()))
    assert float(own[0].min()) > 0
