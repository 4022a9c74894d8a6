"""The Extractor on real dev photos with the embedded weights, and its modes and settings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dasr_annotator.engine.dasr.extractor import Extractor
from dasr_annotator.engine.dasr.networks import WeightsMissing, torchvision_weights_file
from dasr_annotator.engine.dasr.regions import box_iou_matrix
from dasr_annotator.engine.store.imageio import load_image
from dasr_annotator.engine.types import Box

torch.set_num_threads(1)

# Agreement with the exact rule (docs/benchmarks.md, "Extraction", measured at 512 px): fast-mode
# final regions ~0.88 IoU with the exact ones (modulated maps, two NMS rounds); moments-mode boxes ~0.6 per seed (the exact boxes
# themselves move by IoU ~0.2 under a 3x3 blur of their maps).
FAST_REGION_IOU_MIN = 0.8
MOMENTS_SEED_IOU_MIN = 0.45


@pytest.fixture(scope="module")
def fast():
    return Extractor(mode="fast", device="cpu")


def _instance(manifest, name):
    return next(i for i in manifest["instances"] if i["name"] == name)


def _check_regions(result, extractor, width, height):
    assert (result.width, result.height) == (width, height)
    assert 1 <= len(result.regions) <= result.seeds
    scores = [r.score for r in result.regions]
    assert scores == sorted(scores, reverse=True)
    for region in result.regions:
        b = region.box
        assert -1e-3 <= b.x < b.x2 <= width + 1e-3 and -1e-3 <= b.y < b.y2 <= height + 1e-3, b
        assert 0 <= region.ellipse.cx <= width and 0 <= region.ellipse.cy <= height
        assert region.ellipse.a >= region.ellipse.b >= 0
        d = region.descriptor
        assert d.dtype == np.float32 and d.shape == (extractor.config()["descriptor_dim"],)
        assert abs(float(np.linalg.norm(d)) - 1) < 1e-4


@pytest.mark.parametrize("name", ["Girl", "Human3", "Box"])  # 128x96 upscaled, portrait, 640x480
def test_regions_on_real_photos(fast, dev_data, dev_manifest, name):
    inst = _instance(dev_manifest, name)
    image = load_image(dev_data / inst["images"][0]["file"])
    result = fast.extract(image)
    _check_regions(result, fast, *inst["image_size"])


def test_input_forms_map_back_to_original_pixels(fast, dev_data, dev_manifest):
    """A full image, a reduced LoadedImage and a plain array give the same regions and query
    descriptors in original pixels."""
    inst = _instance(dev_manifest, "Box")
    path = dev_data / inst["images"][0]["file"]
    full, reduced = load_image(path), load_image(path, max_side=400)
    assert reduced.scale < 1
    gt = Box.from_list(inst["images"][0]["box"])
    q_full, q_reduced = fast.describe_box(full, gt), fast.describe_box(reduced, gt)
    q_array = fast.describe_box(full.rgb, gt)
    assert float(q_full @ q_reduced) > 0.97 and float(q_full @ q_array) > 0.999
    a, b = fast.extract(full), fast.extract(reduced)
    _check_regions(b, fast, full.width, full.height)
    top_a = torch.tensor([a.regions[0].box.as_list()])
    top_b = torch.tensor([b.regions[0].box.as_list()])
    to_xyxy = lambda t: torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], 1)  # noqa: E731
    assert float(box_iou_matrix(to_xyxy(top_a), to_xyxy(top_b))) > 0.7


@pytest.mark.parametrize("name", ["Box", "Jogging-2", "Girl", "Skating2-1"])
def test_query_box_finds_its_instance_in_another_frame(fast, dev_data, dev_manifest, name):
    """The query descriptor of an instance's box in its first frame is more similar to a region on
    the same instance in a later frame than to every region of other sequences' photos."""
    inst = _instance(dev_manifest, name)
    query = inst["images"][0]
    target = inst["images"][len(inst["images"]) // 2]
    q = fast.describe_box(load_image(dev_data / query["file"]), Box.from_list(query["box"]))
    gt = Box.from_list(target["box"])
    regions = fast.extract(load_image(dev_data / target["file"])).regions
    on_instance = [float(r.descriptor @ q) for r in regions if r.box.iou(gt) >= 0.2 or r.box.contains_point(*gt.center)]
    assert on_instance, "no region on the instance"
    negatives = []
    for other in ("BlurOwl", "Surfer", "Crossing", "Dog"):
        other_inst = _instance(dev_manifest, other)
        photo = other_inst["images"][len(other_inst["images"]) // 2]["file"]
        negatives += [float(r.descriptor @ q) for r in _cached_extract(fast, dev_data / photo).regions]
    assert max(on_instance) > max(negatives), (max(on_instance), max(negatives))


_EXTRACTED: dict = {}


def _cached_extract(extractor, path):
    if path not in _EXTRACTED:
        _EXTRACTED[path] = extractor.extract(load_image(path))
    return _EXTRACTED[path]


def test_fast_and_moments_modes_agree_with_the_exact_rule(dev_data, dev_manifest):
    """At 256 px to keep the exact rule cheap: fast mode's final regions match the exact rule's
    (near-exact maps for the NMS survivors); moments-mode boxes overlap the exact ones seed by seed."""
    kwargs = dict(device="cpu", max_side=256)
    fast, moment, exact = (Extractor(mode=m, **kwargs) for m in ("fast", "moments", "exact"))
    region_ious, seed_ious = [], []
    for name in ("Box", "Jogging-1"):
        image = load_image(dev_data / _instance(dev_manifest, name)["images"][5]["file"])
        e, f, m = exact.seed_geometry(image), fast.seed_geometry(image), moment.seed_geometry(image)
        assert torch.equal(m.ij, e.ij) and f.n_seeds == e.n_seeds
        assert len(f.ij) < len(e.ij)  # only NMS survivors get maps
        seed_ious.append(box_iou_matrix(m.boxes, e.boxes).diag())
        exact_final, fast_final = e.boxes[exact.select(e)], f.boxes[fast.select(f)]
        region_ious.append(box_iou_matrix(exact_final, fast_final).max(1).values)
    assert float(torch.cat(seed_ious).mean()) >= MOMENTS_SEED_IOU_MIN
    assert float(torch.cat(region_ious).mean()) >= FAST_REGION_IOU_MIN


def test_reference_and_exact_modes_agree(dev_data, dev_manifest):
    image = load_image(dev_data / _instance(dev_manifest, "Dog")["images"][0]["file"])
    exact = Extractor(mode="exact", device="cpu", max_side=96).extract(image)
    reference = Extractor(mode="reference", device="cpu", max_side=96).extract(image)
    assert len(exact.regions) == len(reference.regions) >= 1
    for a, b in zip(exact.regions, reference.regions):
        assert np.allclose(a.box.as_list(), b.box.as_list(), atol=0.5)
        assert np.allclose(a.descriptor, b.descriptor, atol=1e-5)


def test_official_mode_and_dasr_method(dev_data, dev_manifest):
    inst = _instance(dev_manifest, "Human3")
    image = load_image(dev_data / inst["images"][0]["file"])
    for kwargs in ({"mode": "official"}, {"mode": "official", "method": "dasr"}, {"method": "dasr"}):
        extractor = Extractor(device="cpu", max_side=256, **kwargs)
        result = extractor.extract(image)
        _check_regions(result, extractor, *inst["image_size"])
    dasr = Extractor(device="cpu", max_side=160, method="dasr")
    star = Extractor(device="cpu", max_side=160)
    assert dasr.extract(image).seeds < star.extract(image).seeds  # peaks vs all above-mean cells


def test_describe_image_and_config(fast, dev_data, dev_manifest):
    image = load_image(dev_data / _instance(dev_manifest, "Surfer")["images"][0]["file"])
    g = fast.describe_image(image)
    assert g.dtype == np.float32 and g.shape == (fast.config()["descriptor_dim"],)
    assert abs(float(np.linalg.norm(g)) - 1) < 1e-4
    cfg = fast.config()
    for key in ("backbone", "method", "mode", "descriptor_layer", "descriptor_dim", "descriptor_stride",
                "normalisation", "max_side", "tau", "nms_beta"):
        assert key in cfg
    assert cfg == Extractor(mode="fast", device="cpu").config()
    assert cfg != Extractor(mode="fast", device="cpu", descriptor_layer="blocks.10").config()
    assert fast.device == "cpu" and "CPU" in fast.device_name


def test_odd_inputs_and_bad_arguments(fast):
    tiny = np.full((9, 13, 3), 200, np.uint8)
    tiny[3:6, 4:9] = 20
    result = fast.extract(tiny)
    assert (result.width, result.height) == (13, 9)
    for region in result.regions:
        assert region.box.x2 <= 13 + 1e-3 and region.box.y2 <= 9 + 1e-3
    with pytest.raises(ValueError, match="RGB"):
        fast.extract(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="mode"):
        Extractor(mode="quick", device="cpu")
    with pytest.raises(ValueError, match="method"):
        Extractor(method="dasr**", device="cpu")


def test_missing_torchvision_weights_through_the_extractor(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsMissing, match=torchvision_weights_file("resnet50").name):
        Extractor(backbone="resnet50", device="cpu")


@pytest.mark.parametrize("mode", ["fast", "moments"])
def test_extract_many_batches_equal_sizes_and_matches_extract(dev_data, dev_manifest, mode):
    extractor = Extractor(mode=mode, device="cpu", max_side=192)
    files = [_instance(dev_manifest, "Box")["images"][k]["file"] for k in (0, 9)]
    files.append(_instance(dev_manifest, "Human3")["images"][0]["file"])  # another input size
    images = [load_image(dev_data / f) for f in files]
    many = extractor.extract_many(images, batch_size=2)
    for image, batched in zip(images, many):
        single = extractor.extract(image)
        assert (batched.width, batched.height, batched.seeds) == (single.width, single.height, single.seeds)
        assert len(batched.regions) == len(single.regions) >= 1
        for a, b in zip(batched.regions, single.regions):
            assert np.allclose(a.box.as_list(), b.box.as_list(), atol=0.5)
            assert float(a.descriptor @ b.descriptor) > 0.999


def test_lite2_constants_are_stored_and_never_mixed_with_lite0(tmp_path):
    """An index records the backbone's own layers, channels, strides, normalisation and box
    scale (from `networks.LITE_SPECS`); a Lite0 index refuses Lite2 regions until rebuilt."""
    from PIL import Image

    from dasr_annotator.engine.dasr.networks import LITE_SPECS
    from dasr_annotator.engine.project.project import IncompatibleIndex, Project

    rng = np.random.default_rng(3)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / f"p{i}.png")
    lite0 = Extractor("efficientnet-lite0", device="cpu", max_side=64, pretrained=False)
    lite2 = Extractor("efficientnet-lite2", device="cpu", max_side=64, pretrained=False)
    spec = LITE_SPECS["efficientnet-lite2"]
    project = Project.open(tmp_path)
    project.update_index(lite0)
    with pytest.raises(IncompatibleIndex, match="backbone: 'efficientnet-lite0' here, 'efficientnet-lite2' asked"):
        project.update_index(lite2)
    with pytest.raises(IncompatibleIndex):
        project.searcher(lite2)
    project.update_index(lite2, rebuild=True)
    stored = Project.open(tmp_path).manifest()["extractor"]
    assert stored["backbone"] == "efficientnet-lite2"
    assert stored["descriptor_layer"] == spec.descriptor_layer
    assert (stored["descriptor_dim"], stored["descriptor_stride"]) == (spec.widths[-1], 32)
    assert stored["normalisation"] == {"mean": list(spec.mean), "std": list(spec.std)}
    assert stored["moments"]["box_scale"] == spec.box_scale
    assert lite2.relocation_config()["layer"] == spec.relocation_layer
    assert lite2.relocation_config()["channels"] == spec.widths[4]  # the stride-16 stage's width
