"""`label --queries FILE`: several positive (and negative) boxes as one query, with the real
embedded backbone on real dev frames.

Three sequences x four frames are copied into a temporary folder (never into the repository)
and indexed once for the module; commands run in-process through `cli.main`.
"""
import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from dasr_annotator.app.main import main

SEQUENCES = ("Box", "Dog", "Surfer")
FRAMES, STEP = 4, 3  # every third listed frame of each sequence


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def indexed(dev_data, dev_manifest, tmp_path_factory):
    """(photos, {instance: [(relpath, box), ...]}) with the folder indexed."""
    photos = tmp_path_factory.mktemp("label-queries") / "photos"
    instances = {i["name"]: i for i in dev_manifest["instances"]}
    frames = {}
    for name in SEQUENCES:
        frames[name] = []
        for item in instances[name]["images"][: FRAMES * STEP : STEP]:
            rel = item["file"].removeprefix("images/")
            (photos / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(dev_data / item["file"], photos / rel)
            frames[name].append((rel, item["box"]))
    rc, _, err = cli("index", photos)
    assert rc == 0, err
    return photos, frames


def write_examples(folder: Path, examples) -> Path:
    path = folder / "examples.json"
    path.write_text(json.dumps(examples))
    return path


def label(photos, examples_file, category, *options) -> dict:
    rc, out, err = cli("label", photos, "--queries", examples_file, "--category", category, *options, "--json")
    assert rc == 0, err
    return json.loads(out)


def stored(photos) -> dict:
    return json.loads((photos / ".dasr" / "annotations.json").read_text())


def test_two_positives_accept_the_other_frames_of_the_instance(indexed, tmp_path):
    photos, frames = indexed
    (first, box1), (second, box2) = frames["Dog"][:2]
    examples = [{"id": "a", "image": first, "box": box1},
                {"id": "b", "image": str(photos / second), "box": box2, "negative": False}]  # absolute is fine
    result = label(photos, write_examples(tmp_path, examples), "dog", "--accept-top", 2)
    added = result["added"]
    assert [(a["image"], a["source"]) for a in added[:2]] == [(first, "manual"), (second, "manual")]
    assert added[0]["box"] == [float(v) for v in box1] and added[0]["score"] is None
    hits = added[2:]
    assert {a["image"] for a in hits} == {rel for rel, _ in frames["Dog"][2:]}
    assert all(a["source"] == "search" and a["score"] is not None for a in hits)
    assert {a["query_id"] for a in added} == {result["query_id"]}
    [query] = [q for q in stored(photos)["queries"] if q["id"] == result["query_id"]]
    assert [p["image"] for p in query["positives"]] == [first, second] and query["negatives"] == []
    assert query["category"] == "dog"

    # Mean fusion scores the same candidates no higher than max fusion (each region's average
    # similarity to the positives is at most its best one), and lower where the positives differ.
    everything = len(photos_of(frames)) - 2
    by_max = {a["image"]: a["score"] for a in label(photos, write_examples(tmp_path, examples), "dog max",
                                                     "--accept-top", everything)["added"][2:]}
    by_mean = {a["image"]: a["score"] for a in label(photos, write_examples(tmp_path, examples), "dog mean",
                                                      "--accept-top", everything, "--fusion", "mean")["added"][2:]}
    assert set(by_max) == set(by_mean) == set(photos_of(frames)) - {first, second}
    assert all(by_mean[i] <= by_max[i] + 1e-5 for i in by_max)
    assert any(by_mean[i] < by_max[i] - 1e-3 for i in by_max)
    assert set(sorted(by_mean, key=by_mean.get)[-2:]) == {rel for rel, _ in frames["Dog"][2:]}

    # Only hits scoring above the cut are accepted.
    cut = sorted(by_max.values())[-3]
    above = label(photos, write_examples(tmp_path, examples), "dog above", "--accept-above", cut)["added"][2:]
    assert sorted(a["image"] for a in above) == sorted(i for i, s in by_max.items() if s > cut)


def photos_of(frames) -> list[str]:
    return [rel for shots in frames.values() for rel, _ in shots]


def test_a_negative_example_pushes_its_look_alikes_down(indexed, tmp_path):
    photos, frames = indexed
    positives = [{"id": f"box{i}", "image": rel, "box": box} for i, (rel, box) in enumerate(frames["Box"][:2])]
    everything = len(photos_of(frames)) - 2
    plain = label(photos, write_examples(tmp_path, positives), "box plain", "--accept-top", everything)["added"][2:]
    ranking = [a["image"] for a in plain]
    # The best-ranked frame of another instance is the false hit a person would reject.
    false_hit = next(a for a in plain if not a["image"].startswith("Box/"))
    negative = {"id": "not this", "image": false_hit["image"], "box": false_hit["box"], "negative": True}
    result = label(photos, write_examples(tmp_path, positives + [negative]), "box fed back", "--accept-top", everything)
    fed_back = result["added"]
    assert [a["source"] for a in fed_back[:2]] == ["manual", "manual"], "a negative is not recorded as a label"
    reranked = [a["image"] for a in fed_back[2:]]
    assert sorted(reranked) == sorted(ranking)
    before, after = ranking.index(false_hit["image"]), reranked.index(false_hit["image"])
    assert after > before, f"{false_hit['image']} stayed at rank {before}: {reranked}"
    old_score = false_hit["score"]
    new_score = next(a["score"] for a in fed_back if a["image"] == false_hit["image"])
    assert new_score < old_score - 0.05
    [query] = [q for q in stored(photos)["queries"] if q["id"] == result["query_id"]]
    [recorded] = query["negatives"]
    assert recorded["image"] == false_hit["image"] and recorded["box"] == pytest.approx(false_hit["box"], abs=1e-3)


def test_the_same_query_again_adds_only_duplicates(indexed, tmp_path):
    photos, frames = indexed
    examples = [{"id": i, "image": rel, "box": box} for i, (rel, box) in enumerate(frames["Surfer"][:2])]
    path = write_examples(tmp_path, examples)
    first = label(photos, path, "surfer", "--accept-top", 1)
    assert len(first["added"]) == 3
    again = label(photos, path, "surfer", "--accept-top", 1)
    assert again["added"] == [] and again["query_id"] is None and len(again["duplicates"]) == 3


def bad_files(frames, photos):
    (rel, box), (other, other_box) = frames["Box"][:2]
    good = {"id": "ok", "image": rel, "box": box}
    return {
        "not a list": ({"image": rel}, "wrong content"),
        "empty": ([], "no examples"),
        "not an object": ([good, "Box/0001.jpg"], "example 1 must be an object"),
        "missing keys": ([{"image": rel}], 'missing "id", "box"'),
        "misspelt negative": ([good, {"id": 2, "image": other, "box": other_box, "negativ": True}],
                              'unknown key "negativ"'),
        "id type": ([dict(good, id=[1])], '"id" must be'),
        "image type": ([dict(good, image=7)], '"image" must be a path'),
        "box type": ([dict(good, box=["1", 2, 3, 4])], '"box" must be [x, y, width, height] numbers'),
        "box length": ([dict(good, box=[1, 2, 3])], '"box" must be [x, y, width, height] numbers'),
        "negative type": ([dict(good, negative="yes")], '"negative" must be true or false'),
        "zero area": ([dict(good, box=[10, 10, 0, 20])], "zero area"),
        "outside the image": ([dict(good, box=[900, 10, 20, 20])], "outside the image"),
        "unknown image": ([dict(good, image="Box/nope.jpg")], "file not found"),
        "escapes the folder": ([dict(good, image=f"../{photos.name}/{rel}")], "outside the photo folder"),
        "absolute elsewhere": ([dict(good, image=str(photos.parent))], "outside the photo folder"),
        "duplicate ids": ([good, dict(good, image=other, box=other_box)], "used twice"),
        "no positive": ([dict(good, negative=True)], "no positive example"),
    }


@pytest.mark.parametrize("case", ["not a list", "empty", "not an object", "missing keys", "misspelt negative",
                                  "id type", "image type", "box type", "box length", "negative type", "zero area",
                                  "outside the image", "unknown image", "escapes the folder", "absolute elsewhere",
                                  "duplicate ids", "no positive"])
def test_bad_files_are_refused_with_the_reason_and_label_nothing(indexed, tmp_path, case):
    photos, frames = indexed
    examples, reason = bad_files(frames, photos)[case]
    labels = photos / ".dasr" / "annotations.json"
    before = labels.read_bytes() if labels.exists() else None
    rc, out, err = cli("label", photos, "--queries", write_examples(tmp_path, examples), "--category", "x",
                       "--accept-top", 3, "--json")
    assert rc == 2 and out == ""
    assert reason in err, err
    assert (labels.read_bytes() if labels.exists() else None) == before


def test_every_problem_of_a_file_is_listed(indexed, tmp_path):
    photos, frames = indexed
    rel, box = frames["Dog"][0]
    examples = [{"id": "a", "image": rel, "box": [1, 1, -5, 5]}, {"id": "b", "image": "../x.jpg", "box": box}]
    rc, _, err = cli("label", photos, "--queries", write_examples(tmp_path, examples), "--category", "x",
                     "--accept-top", 1)
    assert rc == 2 and "example 0 ('a')" in err and "example 1 ('b')" in err


def test_queries_do_not_mix_with_other_query_options(indexed, tmp_path):
    photos, frames = indexed
    rel, box = frames["Dog"][0]
    path = write_examples(tmp_path, [{"id": "a", "image": rel, "box": box}])
    rc, _, err = cli("label", photos, "--queries", path, "--query", rel, "--box", "1,1,5,5", "--category", "x",
                     "--accept-top", 1)
    assert rc == 2 and "not both" in err
    rc, _, err = cli("label", photos, "--queries", path, "--import-coco", path)
    assert rc == 2 and "--import-coco takes no query options" in err
    rc, _, err = cli("label", photos, "--queries", path, "--category", "x")
    assert rc == 2 and "--accept-top N or --accept-above SCORE" in err


# ---- label accepts what search lists (issue #24) ----------------------------------------------------
def search_hits(photos, rel, box, top, *options) -> list[dict]:
    rc, out, err = cli("search", photos, "--query", rel, "--box", ",".join(map(str, box)), "--top", top,
                       *options, "--json")
    assert rc == 0, err
    return json.loads(out)["queries"][0]["hits"]


def label_box(photos, rel, box, category, *options) -> list[dict]:
    """The search hits a --query/--box label run recorded (the query box itself left out)."""
    rc, out, err = cli("label", photos, "--query", rel, "--box", ",".join(map(str, box)), "--category", category,
                       *options, "--json")
    assert rc == 0, err
    added = json.loads(out)["added"]
    assert added[0]["source"] == "manual" and all(a["source"] == "search" for a in added[1:])
    return added[1:]


def same_hits(recorded: list[dict], listed: list[dict]) -> bool:
    return ([a["image"] for a in recorded] == [h["image"] for h in listed]
            and all(a["box"] == pytest.approx(h["box"], abs=1e-3) and a["score"] == pytest.approx(h["score"], abs=1e-6)
                    for a, h in zip(recorded, listed)))


def test_label_accept_top_records_the_first_hits_search_lists(indexed):
    from dasr_annotator.app.cli.cmd_label import REFINE_POOL

    photos, frames = indexed
    rel, box = frames["Dog"][0]
    listed = search_hits(photos, rel, box, REFINE_POOL)
    assert len(listed) == len(photos_of(frames)) - 1  # every other photo: the pool covers this folder
    region_order = sorted(listed, key=lambda h: -h["region_score"])
    # the box score re-orders the list (else this test could not tell the orders apart)
    assert [h["image"] for h in listed] != [h["image"] for h in region_order]
    for n in (1, 4, 7):
        recorded = label_box(photos, rel, box, f"dog top {n}", "--accept-top", n)
        assert same_hits(recorded, listed[:n]), (n, recorded, listed[:n])


def test_label_accept_above_records_the_hits_search_scores_above_the_cut(indexed, monkeypatch):
    from dasr_annotator.engine.search.searcher import Searcher

    photos, frames = indexed
    rel, box = frames["Box"][0]
    listed = search_hits(photos, rel, box, 100)
    refined = []
    plain_refine = Searcher.refine
    monkeypatch.setattr(Searcher, "refine", lambda self, hits, *a, **kw: refined.append(len(hits))
                        or plain_refine(self, hits, *a, **kw))
    refined_per_cut = []
    for k in (1, 3, 5):
        cut = (listed[k - 1]["score"] + listed[k]["score"]) / 2
        refined.clear()
        recorded = label_box(photos, rel, box, f"box above {k}", "--accept-above", cut)
        assert same_hits(recorded, [h for h in listed if h["score"] > cut]) and len(recorded) == k
        # only photos whose region score could still blend above the cut are refined
        assert refined == [sum(h["region_score"] > 2 * cut - 1 for h in listed)], refined
        refined_per_cut.append(refined[0])
    assert refined_per_cut[0] < len(listed), "the highest cut still refined every photo"


def test_label_no_refine_records_the_best_by_region_score(indexed):
    photos, frames = indexed
    rel, box = frames["Surfer"][0]
    listed = search_hits(photos, rel, box, 5, "--no-refine")
    recorded = label_box(photos, rel, box, "surfer plain", "--accept-top", 5, "--no-refine")
    assert same_hits(recorded, listed) and all("region_score" not in h for h in listed)
    cut = (listed[1]["score"] + listed[2]["score"]) / 2
    recorded = label_box(photos, rel, box, "surfer plain above", "--accept-above", cut, "--no-refine")
    assert same_hits(recorded, listed[:2])
