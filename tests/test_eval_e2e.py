"""End-to-end evaluation on a tiny manifest of real dev images (referenced, never copied).

An oracle extractor (descriptors that name the instance) checks the runner's bookkeeping: query
exclusion, shared frames, located hits. One real run through the CLI checks the whole path,
baselines, JSON, plots and the extraction cache.
"""
import json

import numpy as np
import pytest

from dasr_annotator.app import main as cli
from dasr_annotator.engine.evaluation.cache import ImageRegionsArrays
from dasr_annotator.engine.evaluation.manifest import load_manifest, select_queries
from dasr_annotator.engine.evaluation.runner import EvalSettings, run_eval

FRAMES = 4
INSTANCES = ("Dog", "Jogging-1", "Jogging-2")  # Jogging-1/-2 share their frames


@pytest.fixture(scope="module")
def tiny_manifest(dev_manifest, dev_data, tmp_path_factory):
    """FRAMES frames of each instance, files as absolute paths into the dev set."""
    chosen = []
    for inst in dev_manifest["instances"]:
        if inst["name"] in INSTANCES:
            picks = np.linspace(0, len(inst["images"]) - 1, FRAMES).round().astype(int)
            images = [dict(inst["images"][i], file=str(dev_data / inst["images"][i]["file"])) for i in picks]
            chosen.append(dict(inst, images=images))
    path = tmp_path_factory.mktemp("manifest") / "manifest.json"
    path.write_text(json.dumps({"instances": chosen}))
    return path


def test_manifest_selection_and_queries(tiny_manifest):
    m = load_manifest(tiny_manifest)
    assert len(m.files) == 2 * FRAMES  # Jogging frames are listed twice but are one image each
    jog = m.instances["Jogging-1"]
    assert jog == m.instances["Jogging-2"]
    relevant, boxes = m.gt_boxes("Jogging-2", m.files)
    assert relevant.sum() == FRAMES and np.isnan(boxes[~relevant]).all()
    queries = select_queries(m, 3)
    assert [q.file for q in queries if q.instance == "Dog"] == [m.instances["Dog"][i] for i in (0, 2, 3)]
    small = load_manifest(tiny_manifest, instances=["Dog"], limit_images=2)
    assert list(small.instances) == ["Dog"] and len(small.files) == 2
    with pytest.raises(ValueError, match="unknown instance"):
        load_manifest(tiny_manifest, instances=["Nope"])


class OracleExtractor:
    """Query descriptor = one-hot of the instance whose ground-truth box was drawn."""

    max_side = 256
    device_name = "test oracle"

    def __init__(self, manifest):
        names = list(manifest.instances)
        self.dim = len(names) + 1
        self.by_box = {tuple(np.round(box, 3)): names.index(inst) for (inst, _), box in manifest.gt.items()}

    def config(self):
        return {"backbone": "oracle", "method": "oracle", "mode": "test", "descriptor_layer": "-",
                "max_side": self.max_side, "tau": 0.1, "nms_beta": 0.3}

    def describe_box(self, image, box):
        v = np.zeros(self.dim, np.float32)
        v[self.by_box[tuple(np.round(box.as_list(), 3))]] = 1.0
        return v


def oracle_regions(manifest, shift: float) -> list[ImageRegionsArrays]:
    """Per image: one region per listed instance at its box (moved down by `shift` box heights),
    with that instance's one-hot descriptor, plus a background region."""
    names = list(manifest.instances)
    out = []
    for f in manifest.files:
        boxes, descs = [[0, 0, 5, 5]], [np.eye(len(names) + 1)[-1]]
        for i, name in enumerate(names):
            if (name, f) in manifest.gt:
                x, y, w, h = manifest.gt[(name, f)]
                boxes.append([x, y + shift * h, w, h])
                descs.append(np.eye(len(names) + 1)[i])
        out.append(ImageRegionsArrays(np.array(boxes, float), np.array(descs, np.float32), 352, 288, 3, 0.0))
    return out


@pytest.mark.parametrize("shift, located", [(0.0, 1.0), (3.0, 0.0)])
def test_oracle_regions_score_perfectly_and_locate_by_box(tiny_manifest, shift, located):
    manifest = load_manifest(tiny_manifest)
    settings = EvalSettings(whitening="none", queries_per_instance=2, simulate_feedback=True, feedback_batch=2)
    report = run_eval(tiny_manifest, settings, extractor=OracleExtractor(manifest),
                      images=oracle_regions(manifest, shift), label="oracle")
    row = report["methods"][0]
    assert row["name"] == "oracle" and len(report["queries"]) == 2 * len(INSTANCES)
    assert row["relevant_per_query"] == FRAMES - 1  # the query image itself is excluded
    assert row["map@all"] == 1.0 and row["map@50"] == 1.0
    # in shared Jogging frames the query's own instance must win, or located would drop
    assert row["map@50_located"] == located and row["recall@100_located"] == located
    assert row["localization"]["mean_best"] == pytest.approx(located, abs=1e-9)
    assert row["localization"]["coverage"] == located
    assert set(row["per_instance"]) == set(INSTANCES)
    sim = report["simulated_feedback"]
    for mode in ("plain", "feedback"):
        # all three other frames are found in the first three reviews, or never
        assert sim[mode]["median_reviews_to_90"] == (FRAMES - 1 if located else float("inf"))
        never_as_all = FRAMES - 1 if located else len(manifest.files) - 1  # never: every other image reviewed
        assert sim[mode]["mean_reviews_to_90_never_as_all"] == never_as_all
    both = sim["both_reached"]
    if located:  # three frames, 90% of them: three reviews at the fewest, and the oracle needs no more
        assert both["queries"] == 2 * len(INSTANCES) and both["plain"] == both["feedback"] == both["fewest_possible"] == 3
    else:
        assert both["queries"] == 0 and both["plain"] is None


def test_cli_eval_with_baselines_json_plot_and_cache(tiny_manifest, tmp_path, capsys):
    cache, out, plots = tmp_path / "cache", tmp_path / "report.json", tmp_path / "plots"
    args = ["eval", str(tiny_manifest), "--baselines", "--max-side", "256", "--queries-per-instance", "2",
            "--cache", str(cache), "--json", str(out), "--plot", str(plots), "--quiet"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "mAP@50-loc" in printed and "SIFT" in printed and "Jogging-2" in printed
    report = json.loads(out.read_text())
    names = [m["name"] for m in report["methods"]]
    # re-localised DASR*, the same regions drawn as themselves, 8 global rows, SIFT, whole-image
    # search and VLAD* (no ASMK: its training photos, a sibling dev-photos folder, are not beside
    # this temporary manifest)
    assert names[0].startswith("DASR*") and "re-localisation" in names[0] and len(names) == 2 + 8 + 1 + 2
    assert names[-2].startswith("whole-image search") and names[-1].startswith("VLAD*")
    assert names[1].startswith("DASR*") and "re-localisation" not in names[1]
    for m in report["methods"]:
        for key in ("map@50", "map@100", "map@all"):
            assert 0.0 <= m[key] <= 1.0
        if m["has_boxes"]:
            assert m["map@50_located"] <= m["map@50"] + 1e-12
            curve = m["localization"]["top"]
            assert all(a >= b for a, b in zip(curve, curve[1:]))  # recall falls as IoU rises
            best = m["localization"]["mean_best"]
            assert best >= m["localization"]["mean_top"] - 1e-12
        else:
            assert m["map@50_located"] is None and m["localization"] is None
    dasr = report["methods"][0]
    assert dasr["regions_per_image"] > 0 and dasr["relevant_per_query"] == FRAMES - 1
    assert sorted(p.name for p in plots.iterdir()) == ["recall_iou_best.png", "recall_iou_top.png"]

    cached = sorted(cache.rglob("*.npz"))
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert len(cached) == 4 * 2 * FRAMES  # regions, relocation maps, global and SIFT per image
    again = ["eval", str(tiny_manifest), "--max-side", "256", "--cache", str(cache), "--json", str(out),
             "--whitening", "other", "--quiet"]
    assert cli.main(again) == 0
    second = json.loads(out.read_text())
    assert sorted(cache.rglob("*.npz")) == cached and [p.stat().st_mtime_ns for p in cached] == stamps
    assert second["methods"][0]["regions_per_image"] == dasr["regions_per_image"]
    assert second["whitening"].startswith("other")


def test_cli_reports_bad_input(tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path / "missing.json"), "--quiet"]) == 1
    assert "missing.json" in capsys.readouterr().err
