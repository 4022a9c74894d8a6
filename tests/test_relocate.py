"""Query-time re-localisation: window search, box geometry, the map cache, and real frames."""
import os

import numpy as np
import pytest

from dasr_annotator.engine.dasr import relocate
from dasr_annotator.engine.dasr.relocate import FeatureMap, WindowQuery, best_window, inscribed_ellipse
from dasr_annotator.engine.search.map_cache import MapCache
from dasr_annotator.engine.types import Box


def planted_map(rng, pattern, col, row, w, h, size=(12, 16)) -> np.ndarray:
    """Positive noise with `pattern` added over cells [col, col+w) x [row, row+h)."""
    values = rng.uniform(0.0, 0.3, (len(pattern), *size))
    values[:, row:row + h, col:col + w] += pattern[:, None, None]
    return values.astype(np.float16)


def test_best_window_finds_a_planted_pattern_and_maps_it_to_original_pixels():
    rng = np.random.default_rng(0)
    pattern = rng.uniform(0, 4, 32)
    fmap = FeatureMap(planted_map(rng, pattern, col=9, row=4, w=3, h=2), stride=16, scale_x=0.5, scale_y=0.25,
                      width=600, height=800)
    query = WindowQuery(pattern / np.linalg.norm(pattern), [[3, 2]])
    score, box = best_window(fmap, query, scales=(1.0,))
    assert score > 0.95
    # cells 9..12 x 4..6 at stride 16 = network pixels 144..192 x 64..96 -> / scale
    assert box == Box(288.0, 256.0, 96.0, 128.0)


def test_a_scale_sizes_the_window_relative_to_the_query_box():
    rng = np.random.default_rng(1)
    pattern = rng.uniform(0, 4, 16)
    fmap = FeatureMap(planted_map(rng, pattern, col=2, row=3, w=5, h=5), 16, 1.0, 1.0, 256, 192)
    query = WindowQuery(pattern / np.linalg.norm(pattern), [[3, 3]])
    _, large = best_window(fmap, query, scales=(1.6,))  # 3 x 1.6 -> 5 cells: exactly the instance
    assert large == Box(32.0, 48.0, 80.0, 80.0)
    _, small = best_window(fmap, query, scales=(1.0,))  # a 3-cell window inside it
    assert (small.w, small.h) == (48.0, 48.0) and 32 <= small.x <= 64 and 48 <= small.y <= 80


def test_several_queries_take_the_best_match_and_windows_stay_inside_the_map():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0, 4, 8), rng.uniform(0, 4, 8)
    fmap = FeatureMap(planted_map(rng, b, col=0, row=0, w=2, h=2, size=(4, 5)), 32, 1.0, 1.0, 160, 128)
    query = WindowQuery(np.stack([a, b]) / np.linalg.norm(np.stack([a, b]), axis=1, keepdims=True), [[1, 1], [2, 2]])
    score, box = best_window(fmap, query, scales=(1.0,))
    assert box == Box(0.0, 0.0, 64.0, 64.0) and score > 0.95
    huge = WindowQuery(b / np.linalg.norm(b), [[50, 50]])  # larger than the map: the whole image
    _, whole = best_window(fmap, huge)
    assert whole == Box(0.0, 0.0, 160.0, 128.0)


def test_an_accepted_box_becomes_a_window_query_that_finds_its_pattern():
    rng = np.random.default_rng(3)
    pattern = rng.uniform(0, 4, 24)
    accepted = FeatureMap(planted_map(rng, pattern, col=3, row=2, w=2, h=3), 16, 0.5, 0.5, 512, 384)
    query = relocate.window_query(accepted, Box(96, 64, 64, 96))  # cells 3..5 x 2..5
    assert query.sizes.tolist() == [[2.0, 3.0]]
    assert np.linalg.norm(query.vectors[0]) == pytest.approx(1.0)
    other = FeatureMap(planted_map(rng, pattern, col=10, row=6, w=2, h=3), 16, 1.0, 1.0, 256, 192)
    score, box = best_window(other, query, scales=(1.0,))
    assert box == Box(160.0, 96.0, 32.0, 48.0) and score > 0.9


def test_inscribed_ellipse_fits_the_box():
    e = inscribed_ellipse(Box(10, 20, 40, 100))
    assert (e.cx, e.cy) == (30, 70) and {e.a, e.b} == {20, 50} and e.a >= e.b


def test_map_cache_computes_once_and_recomputes_when_the_file_changes(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x" * 10)
    calls = []

    def compute(path):
        calls.append(path)
        return FeatureMap(np.full((2, 3, 4), len(calls), np.float16), 16, 1.0, 1.0, 64, 48)

    cache = MapCache(compute, {"layer": "x"}, tmp_path / "state")
    first = cache.get(image)
    assert cache.get(image) is first and len(calls) == 1  # memory
    fresh = MapCache(compute, {"layer": "x"}, tmp_path / "state")
    assert np.array_equal(fresh.get(image).values, first.values) and len(calls) == 1  # disk
    other_settings = MapCache(compute, {"layer": "y"}, tmp_path / "state")
    other_settings.get(image)
    assert len(calls) == 2
    os.utime(image, ns=(1, 1))  # the photo changed: its map is made again
    assert MapCache(compute, {"layer": "x"}, tmp_path / "state").get(image).values[0, 0, 0] == 3
    for entry in (tmp_path / "state").glob("maps-*/*.npz"):
        entry.write_bytes(b"damaged")
    assert MapCache(compute, {"layer": "x"}, tmp_path / "state").get(image).values[0, 0, 0] == 4


def test_map_cache_put_is_what_get_returns(tmp_path):
    image = tmp_path / "b.png"
    image.write_bytes(b"y")
    stored = FeatureMap(np.arange(24, dtype=np.float16).reshape(2, 3, 4), 16, 0.5, 0.25, 100, 90)
    MapCache(None, {}, tmp_path).put(image, stored)
    loaded = MapCache(lambda p: pytest.fail("computed although stored"), {}, tmp_path).get(image)
    assert np.array_equal(loaded.values, stored.values)
    assert (loaded.stride, loaded.scale_x, loaded.scale_y, loaded.width, loaded.height) == (16, 0.5, 0.25, 100, 90)


@pytest.mark.usefixtures("one_torch_thread")
def test_windows_land_on_the_instance_in_other_frames(dev_data, dev_manifest):
    """Real frames, embedded backbone: the query box of one frame is found again, by its centre,
    in later frames of the same video, more often than the best DASR* region finds it."""
    from dasr_annotator.engine.dasr.extractor import Extractor
    from dasr_annotator.engine.evaluation import metrics as evaluation
    from dasr_annotator.engine.store.imageio import load_image

    extractor = Extractor()
    assert extractor.backbone.relocation_stride == 16
    window_hits = region_hits = 0
    trials = 0
    for name in ("Box", "Jogging-1", "Surfer"):
        inst = next(i for i in dev_manifest["instances"] if i["name"] == name)
        query = inst["images"][0]
        image = load_image(dev_data / query["file"], max_side=extractor.max_side)
        descriptor, windows = extractor.describe_query(image, Box.from_list(query["box"]))
        assert windows.vectors.shape == (1, extractor.backbone.relocation_dim)
        n = len(inst["images"])
        for item in (inst["images"][n // 4], inst["images"][n // 2], inst["images"][3 * n // 4]):
            target = load_image(dev_data / item["file"], max_side=extractor.max_side)
            _, box = best_window(extractor.relocation_map(target), windows)
            window_hits += bool(evaluation.centres_inside([box.as_list()], [item["box"]])[0])
            regions = extractor.extract(target).regions
            best = max(regions, key=lambda r: float(r.descriptor @ descriptor))
            region_hits += bool(evaluation.centres_inside([best.box.as_list()], [item["box"]])[0])
            trials += 1
    assert trials == 9
    assert window_hits >= 5 and window_hits >= region_hits + 3, (window_hits, region_hits)
    assert relocate.SCALES[0] < 1 < relocate.SCALES[-1]


def test_rejected_boxes_are_never_chosen_again_and_a_second_look_waits_for_the_query_to_move():
    rng = np.random.default_rng(4)
    a, b, c = np.linalg.qr(rng.normal(0, 1, (16, 3)))[0].T * 4  # orthogonal patterns
    values = planted_map(rng, a + c, col=1, row=1, w=3, h=3)  # a partial match of the query a
    values[:, 7:10, 10:13] += b[:, None, None].astype(np.float16)  # another view, taught later
    fmap = FeatureMap(values, 16, 1.0, 1.0, 256, 192)
    query = WindowQuery(a / np.linalg.norm(a), [[3, 3]])
    taught = WindowQuery.stack([query, WindowQuery(b / np.linalg.norm(b), [[3, 3]])])

    def iou(p, q):
        return float(relocate.box_iou_matrix([[p.x, p.y, p.x2, p.y2]], [[q.x, q.y, q.x2, q.y2]])[0, 0])

    _, first = best_window(fmap, query)  # somewhere on the partial match
    _, view_b = best_window(fmap, taught, scales=(1.0,))
    assert iou(first, Box(16, 16, 48, 48)) > 0 and view_b == Box(160.0, 112.0, 48.0, 48.0)

    for q, rejected in ((query, first), (taught, view_b)):  # "not here": another window, off the rejected one
        _, other = best_window(fmap, q, scales=(1.0,), exclude=[rejected])
        assert iou(other, rejected) < relocate.REJECTED_IOU
    huge = WindowQuery(query.vectors, [[50, 50]])  # one window: the whole photo, rejected
    score, whole = best_window(fmap, huge, scales=(1.0,), exclude=[Box(0, 0, 256, 192)])
    assert score == -np.inf and whole == Box(0.0, 0.0, 256.0, 192.0)  # nothing left to propose
    # a second look needs the query itself to point elsewhere now (feedback taught it view b)
    assert relocate.second_look(fmap, query, [first]) is None
    assert relocate.second_look(fmap, taught, [first]) == best_window(fmap, taught)[1]
    assert iou(relocate.second_look(fmap, taught, [first]), view_b) > 0.3
    assert relocate.second_look(fmap, taught, [first, view_b]) is None
