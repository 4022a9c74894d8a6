"""Coarse-to-fine hit boxes (engine/dasr/zoom.py, engine/search/refine.py).

Geometry is checked exactly on synthetic arrays; placement on a real 1280x720 UAV frame whose
small object (a truck, ~35 px) is moved and rescaled into new photos, so the true box is known
exactly, saved with every EXIF orientation, larger and smaller than the network's max side.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dasr_annotator.engine.dasr import zoom
from dasr_annotator.engine.dasr.relocate import inscribed_ellipse
from dasr_annotator.engine.dasr.extractor import Extractor
from dasr_annotator.engine.search import refine as refine_module
from dasr_annotator.engine.search.refine import Refiner, blended_score, rank_by_box
from dasr_annotator.engine.store.imageio import load_image
from dasr_annotator.engine.types import Box, Cancelled, Hit

# PIL's exif_transpose turns the stored pixels into what a person sees with these; the stored
# pixels of a photo that should look like `seen` are therefore `seen` under the inverse.
INVERSE_OF_EXIF = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                   4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                   6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def iou(a: Box, b: Box) -> float:
    return a.iou(b)


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("image_size", [(640, 480), (1280, 720), (300, 200), (4032, 3024)])
@pytest.mark.parametrize("decoded_scale", [1.0, 0.5])
def test_a_crop_maps_its_pixels_and_boxes_back_to_original_pixels(image_size, decoded_scale):
    """What the crop shows at (u, v) is the original pixel the crop says; boxes go back exactly."""
    width, height = image_size
    rng = np.random.default_rng(width)
    dw, dh = round(width * decoded_scale), round(height * decoded_scale)
    # a smooth ramp: a pixel's value says where it is, so a sampled value says where it came from
    xs = np.linspace(0, 255, dw, dtype=np.float64)
    ys = np.linspace(0, 255, dh, dtype=np.float64)
    rgb = np.stack([np.broadcast_to(xs[None], (dh, dw)), np.broadcast_to(ys[:, None], (dh, dw)),
                    np.zeros((dh, dw))], 2).round().astype(np.uint8)
    for _ in range(6):
        w, h = rng.uniform(8, width / 3), rng.uniform(8, height / 3)
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        box = Box(x, y, w, h)
        plan = zoom.plan_crop(box.center, (w, h), (width, height), stride=16)
        assert plan.width % 16 == 0 and plan.height % 16 == 0
        patch, crop = zoom.cut(rgb, decoded_scale, plan)
        assert patch.shape == (plan.height, plan.width, 3)
        back = crop.to_original(*crop.from_original(box))
        assert max(abs(a - b) for a, b in zip(back.as_list(), box.clipped(width, height).as_list())) < 1e-6
        # the box's centre, found in the crop, holds the ramp values of the original centre
        u, v = (crop.from_original(box)[0] + crop.from_original(box)[2]) / 2, \
               (crop.from_original(box)[1] + crop.from_original(box)[3]) / 2
        cx, cy = box.center
        got = patch[min(int(v), patch.shape[0] - 1), min(int(u), patch.shape[1] - 1)].astype(float)
        want = np.array([cx / width * 255, cy / height * 255])
        # one original pixel (or one decoded pixel at half scale) of ramp slope, plus rounding
        tolerance = 255 * max(1 / decoded_scale / width, 1 / crop.zoom_x / width) + 2
        assert abs(got[0] - want[0]) <= tolerance + 255 * 2 / width
        assert abs(got[1] - want[1]) <= tolerance + 255 * 2 / height


def test_the_zoom_spans_the_box_over_the_cells_asked_for_and_stops_at_the_cap():
    assert zoom.zoom_for((96, 96), 16, 6) == pytest.approx(1.0)
    assert zoom.zoom_for((192, 48), 16, 6) == pytest.approx(1.0)  # geometric mean of the sides
    assert zoom.zoom_for((400, 300), 16, 6) < 0.3  # large objects are shrunk, not enlarged
    assert zoom.zoom_for((4, 4), 16, 6) == zoom.MAX_ZOOM  # no more than the photo can give


def test_crops_stay_inside_the_image_and_pad_only_what_the_image_lacks():
    plan = zoom.plan_crop((5, 5), (40, 40), (1280, 720), 16)
    assert plan.x0 == 0 and plan.y0 == 0  # moved inside rather than padded
    tiny = np.full((30, 40, 3), 77, np.uint8)
    plan = zoom.plan_crop((20, 15), (30, 20), (40, 30), 16)  # the crop is larger than the photo
    patch, crop = zoom.cut(tiny, 1.0, plan)
    assert patch.shape == (plan.height, plan.width, 3) and (patch == 77).all()
    rows, cols = crop.valid_cells(16)
    assert rows * 16 >= crop.content_height and cols * 16 >= crop.content_width
    assert crop.content_width <= plan.width and crop.content_height <= plan.height


# --------------------------------------------------------------------------- placement


@pytest.fixture(scope="module")
def truck(dev_hires_data):
    """A dev-hires frame and its small truck's box (0-based pixels)."""
    manifest = json.loads((dev_hires_data / "manifest.json").read_text())
    inst = next(i for i in manifest["instances"] if i["name"].startswith("truck"))
    im = inst["images"][len(inst["images"]) // 2]
    x, y, w, h = im["box"]
    rgb = np.asarray(Image.open(dev_hires_data / im["file"]).convert("RGB"))
    return rgb, Box(x - 1, y - 1, w, h)


@pytest.fixture(scope="module")
def extractor(one_torch_thread):
    return Extractor(device="cpu")


def moved(rgb: np.ndarray, box: Box, scale: float, shift: tuple[float, float], size: tuple[int, int]):
    """`rgb` scaled by `scale` and shifted by `shift` onto a (w, h) canvas; the box follows."""
    m = np.array([[scale, 0, shift[0]], [0, scale, shift[1]]], np.float64)
    out = cv2.warpAffine(rgb, m, size, flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT)
    return out, Box(box.x * scale + shift[0], box.y * scale + shift[1], box.w * scale, box.h * scale)


def query_photo(truck, tmp_path: Path) -> Path:
    """The truck's frame saved as the query photo."""
    query = tmp_path / "query.png"
    Image.fromarray(truck[0]).save(query)
    return query


def target_photo(truck, path: Path, scale: float, shift: tuple[float, float], size=(1280, 720)):
    """The truck's frame moved and rescaled (`moved`), saved at `path`: (pixels, true box)."""
    seen, truth = moved(*truck, scale, shift, size)
    Image.fromarray(seen).save(path)
    return seen, truth


def save_oriented(seen: np.ndarray, path: Path, orientation: int) -> None:
    """A JPEG that a viewer shows as `seen` once its EXIF orientation is applied."""
    image = Image.fromarray(seen)
    if orientation != 1:
        image = image.transpose(INVERSE_OF_EXIF[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif)


def refine_one(extractor, query_path: Path, query_box: Box, target_path: Path, refiner=None, **kw):
    refiner = refiner or Refiner(extractor)
    descriptor, windows = extractor.describe_query(load_image(query_path, max_side=extractor.max_side), query_box)
    fmap = extractor.relocation_map(load_image(target_path, max_side=extractor.max_side))
    coarse = Hit(target_path.name, 1.0, Box(0, 0, 1, 1), None)
    example = refiner.example(query_path, query_box)
    [hit] = refiner.refine([coarse], [example], windows, lambda _: fmap, lambda _: target_path, **kw)
    return hit.box, refiner


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_a_small_object_is_boxed_in_its_oriented_pixels_for_every_exif_orientation(
        truck, extractor, tmp_path, orientation):
    rgb, box = truck
    query = query_photo(truck, tmp_path)
    seen, truth = moved(rgb, box, 1.15, (-90.0, 40.0), (1280, 720))
    target = tmp_path / f"target-{orientation}.jpg"
    save_oriented(seen, target, orientation)
    loaded = load_image(target)
    assert (loaded.width, loaded.height) == (1280, 720)  # as a person sees it
    found, _ = refine_one(extractor, query, box, target)
    assert iou(found, truth) >= 0.6, (found, truth)


@pytest.mark.parametrize("long_side", [2560, 400])
def test_photos_larger_and_smaller_than_max_side_get_boxes_in_their_own_pixels(truck, extractor, tmp_path,
                                                                              long_side):
    rgb, box = truck
    query = query_photo(truck, tmp_path)
    scale = long_side / 1280
    target = tmp_path / "target.png"
    _, truth = target_photo(truck, target, scale, (0.0, 0.0), (long_side, round(720 * scale)))
    found, _ = refine_one(extractor, query, box, target)
    assert iou(found, truth) >= 0.5, (found, truth)
    assert found.x2 <= long_side and found.y2 <= round(720 * scale)


def test_refined_boxes_are_far_closer_than_the_stored_map_places_them(truck, extractor, tmp_path):
    """The point of refining: at the 512-px input a ~35-px truck is about one stride-16 cell."""
    from dasr_annotator.engine.dasr.relocate import best_window

    rgb, box = truck
    query = query_photo(truck, tmp_path)
    coarse_ious, fine_ious = [], []
    for i, (scale, shift) in enumerate([(1.0, (37.0, -23.0)), (0.9, (101.0, 55.0)), (1.2, (-150.0, -60.0))]):
        target = tmp_path / f"t{i}.png"
        _, truth = target_photo(truck, target, scale, shift)
        _, windows = extractor.describe_query(load_image(query, max_side=extractor.max_side), box)
        fmap = extractor.relocation_map(load_image(target, max_side=extractor.max_side))
        coarse_ious.append(iou(best_window(fmap, windows)[1], truth))
        fine_ious.append(iou(refine_one(extractor, query, box, target)[0], truth))
    assert np.mean(fine_ious) >= 0.6 and np.mean(fine_ious) > np.mean(coarse_ious) + 0.2, (coarse_ious, fine_ious)


def test_a_rejected_box_is_never_chosen_again(truck, extractor, tmp_path):
    rgb, box = truck
    query = query_photo(truck, tmp_path)
    target = tmp_path / "target.png"
    _, truth = target_photo(truck, target, 1.0, (20.0, 10.0))
    first, refiner = refine_one(extractor, query, box, target)
    assert iou(first, truth) >= 0.5
    again, _ = refine_one(extractor, query, box, target, refiner, rejected={target.name: [first]})
    assert iou(again, first) < 0.3


def test_a_photo_whose_refined_box_holds_the_instance_ranks_above_one_whose_box_does_not(truck, extractor,
                                                                                        tmp_path):
    """The box score says whether the instance is where the box is: with the truck painted out,
    the best fine window matches the query worse, and the blend with the region score puts the
    photo that has the truck first even when the regions scored it a little lower."""
    rgb, box = truck
    query = query_photo(truck, tmp_path)
    with_truck, truth = moved(rgb, box, 1.0, (60.0, 25.0), (1280, 720))
    without = with_truck.copy()  # the truck covered by the road just left of it
    x, y, w, h = (int(round(v)) for v in (truth.x - 4, truth.y - 4, truth.w + 8, truth.h + 8))
    without[y:y + h, x:x + w] = without[y:y + h, x - w:x]
    paths = {"with.png": tmp_path / "with.png", "without.png": tmp_path / "without.png"}
    Image.fromarray(with_truck).save(paths["with.png"])
    Image.fromarray(without).save(paths["without.png"])
    _, windows = extractor.describe_query(load_image(query, max_side=extractor.max_side), box)
    maps = {n: extractor.relocation_map(load_image(p, max_side=extractor.max_side)) for n, p in paths.items()}
    refiner = Refiner(extractor)
    hits = [Hit("without.png", 0.55, Box(0, 0, 1, 1), None), Hit("with.png", 0.50, Box(0, 0, 1, 1), None)]
    refined = refiner.refine(hits, [refiner.example(query, box)], windows, maps.get, paths.get)
    assert [h.image for h in refined] == ["without.png", "with.png"]  # refine keeps order and scores
    assert [h.score for h in refined] == [0.55, 0.50]
    score = {h.image: h.box_score for h in refined}
    assert score["with.png"] > score["without.png"] + 0.1, score
    ranked = rank_by_box(refined)
    assert [h.image for h in ranked] == ["with.png", "without.png"]
    assert [h.region_score for h in ranked] == [0.50, 0.55]  # what the regions said is kept
    assert ranked[0].score == pytest.approx(blended_score(0.50, score["with.png"]))
    again = rank_by_box(ranked)  # blended from the region score again, not from the blend
    assert [h.score for h in again] == [h.score for h in ranked]
    as_json = replace(ranked[0], ellipse=inscribed_ellipse(ranked[0].box)).as_json()
    assert as_json["box_score"] == pytest.approx(score["with.png"]) and as_json["region_score"] == 0.50
    # the cache gives the box score back with the box
    cached = refiner.refine(hits, [refiner.example(query, box)], windows, maps.get, paths.get)
    assert [(h.box, h.box_score) for h in cached] == [(h.box, h.box_score) for h in refined]


def test_a_hit_that_could_not_be_refined_ranks_by_its_region_score():
    box = Box(0, 0, 5, 5)
    plain = Hit("a.jpg", 0.4, box, inscribed_ellipse(box))
    refined = Hit("b.jpg", 0.5, box, inscribed_ellipse(box), box_score=0.2)
    ranked = rank_by_box([refined, plain])
    assert [h.image for h in ranked] == ["a.jpg", "b.jpg"]  # 0.4 against (0.5 + 0.2) / 2
    assert ranked[0].score == 0.4 and "box_score" not in ranked[0].as_json()


# --------------------------------------------------------------------------- cache and cancel


def test_refined_results_are_cached_until_the_photo_changes(truck, extractor, tmp_path, monkeypatch):
    rgb, box = truck
    query = query_photo(truck, tmp_path)
    target = tmp_path / "target.png"
    seen, _ = target_photo(truck, target, 1.0, (30.0, 30.0))
    first, refiner = refine_one(extractor, query, box, target)
    passes = []
    real = Refiner._features
    monkeypatch.setattr(Refiner, "_features", lambda self, patches: passes.append(len(patches)) or real(self, patches))
    again, _ = refine_one(extractor, query, box, target, refiner)
    assert again == first and passes == []  # nothing went through the network again
    Image.fromarray(seen[:, ::-1].copy()).save(target)  # the photo changed on disk
    refine_one(extractor, query, box, target, refiner)
    assert passes  # refined anew


def test_a_cancel_stops_refining_between_crops_and_keeps_the_chunks_already_reported(truck, extractor, tmp_path,
                                                                                     monkeypatch):
    rgb, box = truck
    query = query_photo(truck, tmp_path)
    hits, maps = [], {}
    for i in range(6):
        path = tmp_path / f"t{i}.png"
        target_photo(truck, path, 1.0, (10.0 * i, 5.0 * i))
        maps[path.name] = extractor.relocation_map(load_image(path, max_side=extractor.max_side))
        hits.append(Hit(path.name, 1.0 - i / 10, Box(0, 0, 1, 1), None))
    monkeypatch.setattr(refine_module, "CHUNK_CPU", 2)
    refiner = Refiner(extractor)
    _, windows = extractor.describe_query(load_image(query, max_side=extractor.max_side), box)
    example = refiner.example(query, box)
    reported = []
    with pytest.raises(Cancelled):
        refiner.refine(hits, [example], windows, maps.get, lambda name: tmp_path / name,
                       emit=reported.append, cancel=lambda: len(reported) >= 1)
    assert [[i for i, _ in chunk] for chunk in reported] == [[0, 1]]  # the first screenful came first
    assert all(math.isfinite(h.box.w) and h.box.w >= 1 for _, h in reported[0])


# --------------------------------------------------------------------------- second look


def truck_frame(dev_hires_data, number: str) -> tuple[Path, Box]:
    """A frame of the truck video as it is on disk, and the truck's box (0-based pixels)."""
    manifest = json.loads((dev_hires_data / "manifest.json").read_text())
    inst = next(i for i in manifest["instances"] if i["name"].startswith("truck"))
    im = next(i for i in inst["images"] if Path(i["file"]).stem == number)
    x, y, w, h = im["box"]
    return dev_hires_data / im["file"], Box(x - 1, y - 1, w, h)


def test_a_hit_whose_first_look_finds_nothing_like_the_query_gets_a_second_look(dev_hires_data, extractor,
                                                                                 monkeypatch):
    """In the truck video the other vehicles draw the best coarse windows: in this frame all three
    are on look-alikes, the best fine window there matches poorly, and the next coarse windows,
    looked at a second time, hold the truck. A hit the regions rate far below the best one being
    refined gets no second look (its photo is likely another scene)."""
    query, query_box = truck_frame(dev_hires_data, "000327")
    target, truth = truck_frame(dev_hires_data, "000387")
    passes = []
    real = Refiner._features
    monkeypatch.setattr(Refiner, "_features", lambda self, patches: passes.append(len(patches)) or real(self, patches))
    descriptor, windows = extractor.describe_query(load_image(query, max_side=extractor.max_side), query_box)
    maps = {path.name: extractor.relocation_map(load_image(path, max_side=extractor.max_side))
            for path in (query, target)}
    paths = {query.name: query, target.name: target}

    def refined(hits, emitted=None, **constants):
        for name, value in constants.items():
            monkeypatch.setattr(refine_module, name, value)
        refiner = Refiner(extractor)
        passes.clear()
        out = refiner.refine(hits, [refiner.example(query, query_box)], windows, maps.get, paths.get,
                             emit=emitted.append if emitted is not None else None)
        return next(h for h in out if h.image == target.name), sum(passes)

    hit = Hit(target.name, 0.8, Box(0, 0, 1, 1), None)
    first_only, first_crops = refined([hit], SECOND_LOOK_WINDOWS=0)
    assert first_only.box_score < refine_module.SECOND_LOOK_BELOW
    assert not truth.x <= first_only.box.center[0] <= truth.x2  # beside the truck
    second, crops = refined([hit], SECOND_LOOK_WINDOWS=5)
    assert crops > first_crops
    assert second.box_score > first_only.box_score
    assert iou(second.box, truth) >= 0.5
    # the same photo behind a far stronger hit (one that cannot be refined here): no second look
    strong = Hit("elsewhere.jpg", 2.0, Box(0, 0, 1, 1), None)
    gated, gated_crops = refined([strong, hit], SECOND_LOOK_WINDOWS=5)
    assert (gated.box, gated_crops) == (first_only.box, first_crops)


def test_on_a_cpu_every_hit_gets_its_first_look_before_any_second_look(dev_hires_data, extractor, monkeypatch):
    """The annotator sees every hit's box as soon as without second looks; a box a second look
    improves arrives again afterwards. A GPU does both looks in one batch, with the same boxes."""
    query, query_box = truck_frame(dev_hires_data, "000327")
    target, truth = truck_frame(dev_hires_data, "000387")
    _, windows = extractor.describe_query(load_image(query, max_side=extractor.max_side), query_box)
    maps = {path.name: extractor.relocation_map(load_image(path, max_side=extractor.max_side))
            for path in (query, target)}
    paths = {query.name: query, target.name: target}
    hits = [Hit(target.name, 0.8, Box(0, 0, 1, 1), None), Hit(query.name, 0.79, Box(0, 0, 1, 1), None)]
    monkeypatch.setattr(refine_module, "CHUNK_CPU", 1)

    def refined():
        refiner = Refiner(extractor)
        emitted, progress = [], []
        out = refiner.refine(hits, [refiner.example(query, query_box)], windows, maps.get, paths.get,
                             emit=emitted.append, progress=lambda done, total: progress.append((done, total)))
        return out, emitted, progress, refiner

    out, emitted, progress, refiner = refined()
    assert [[i for i, _ in chunk] for chunk in emitted] == [[0], [1], [0]]
    first, again = emitted[0][0][1], emitted[2][0][1]
    assert not truth.x <= first.box.center[0] <= truth.x2 and iou(again.box, truth) >= 0.5
    assert out[0] == again and out[1] == emitted[1][0][1]
    assert progress == [(0, 2), (1, 2), (2, 2), (3, 3)]  # the second look extends the total
    # cached only once complete: asked again, the improved box at once, nothing emitted twice
    emitted.clear()
    again_out = refiner.refine(hits, [refiner.example(query, query_box)], windows, maps.get, paths.get,
                               emit=emitted.append)
    assert again_out == out and [[i for i, _ in chunk] for chunk in emitted] == [[0], [1]]
    monkeypatch.setattr(Refiner, "on_gpu", property(lambda self: True))
    batched, gpu_emitted, _, _ = refined()
    assert [[i for i, _ in chunk] for chunk in gpu_emitted] == [[0, 1]]
    for a, b in zip(batched, out):
        assert a.box.as_list() + [a.box_score] == pytest.approx(b.box.as_list() + [b.box_score], abs=1e-3)


def test_the_box_is_the_vote_of_the_windows_around_the_best():
    boxes = torch.tensor([[10.0, 10, 20, 20], [11, 10, 21, 20], [10, 11, 20, 21], [40, 40, 50, 50], [10, 10, 60, 60]])
    best = 0
    # windows as good as the best and overlapping it pull the box their way; a window as good
    # elsewhere (no overlap) or one overlapping too little (IoU 0.04) does not
    even = torch.tensor([0.8, 0.8, 0.8, 0.8, 0.8])
    assert torch.allclose(zoom.voted_box(boxes, even, best), torch.tensor([31 / 3, 31 / 3, 61 / 3, 61 / 3]))
    # a window far worse than the best hardly counts; the best alone when it is the only one near
    worse = torch.tensor([0.8, 0.8 - 10 * zoom.VOTE_TEMPERATURE, 0.5, 0.9, 0.9])
    assert torch.allclose(zoom.voted_box(boxes, worse, best), boxes[0], atol=0.01)
    assert torch.equal(zoom.voted_box(boxes[3:], torch.tensor([0.7, 0.9]), 0), boxes[3])
