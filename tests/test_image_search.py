"""Whole-image search: the region-set scores, and `search PHOTOS --query IMG` without a box, end to
end on real dev frames."""
import io
import json

import numpy as np
import pytest

from dasr_annotator.engine.search import image_search

from tests.test_cli_e2e import cli, copy_frames


def test_set_scores_average_each_query_regions_best_match():
    region_image = np.array([0, 0, 1, 1, 2])  # image 3 has no regions
    # two query regions; exact lists over all five regions
    ids = np.array([[0, 2, 4, 1, 3], [3, 1, 0, 2, 4]])
    sims = np.array([[0.9, 0.5, 0.4, 0.2, 0.1], [0.8, 0.7, 0.3, 0.2, 0.0]], np.float32)
    scores = image_search.set_scores(sims, ids, region_image, 4, complete=True)
    # image 0: best 0.9 and 0.7; image 1: 0.5 and 0.8; image 2: 0.4 and 0.0; image 3: no regions
    assert np.allclose(scores[:3], [0.8, 0.65, 0.2]) and scores[3] == -np.inf
    # truncated lists: a photo missing from a list takes that list's last similarity
    scores = image_search.set_scores(sims[:, :2], ids[:, :2], region_image, 4, complete=False)
    assert np.allclose(scores[:2], [(0.9 + 0.7) / 2, (0.5 + 0.8) / 2])
    assert scores[2] == -np.inf and scores[3] == -np.inf  # in no list at all: no hit
    padded = image_search.set_scores(np.array([[0.9, -3e38]], np.float32), np.array([[0, -1]]), region_image, 4,
                                     complete=True)
    assert padded[0] == pytest.approx(0.9) and not np.isfinite(padded[1:]).any()


def test_candidates_cover_small_collections_exactly():
    assert image_search.candidates(5000, 20) == 5000
    big = 10 * image_search.EXACT_REGIONS
    assert 20 * image_search.CANDIDATES_PER_HIT <= image_search.candidates(big, 20) < big


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def indexed(dev_data, dev_manifest, tmp_path_factory):
    photos = tmp_path_factory.mktemp("whole") / "photos"
    frames = copy_frames(dev_data, dev_manifest, photos, names=("Box", "Dog", "Skating2-1"), frames=3)
    rc, out, err = cli("index", photos, "--json")
    assert rc == 0, err
    return photos, frames


def test_search_without_a_box_ranks_whole_photos(indexed, tmp_path):
    photos, frames = indexed
    query = frames["Dog"][0][0]
    rc, out, err = cli("search", photos, "--query", query, "--top", "8", "--json")
    assert rc == 0, err
    hits = json.loads(out)["queries"][0]["hits"]
    assert query not in [h["image"] for h in hits] and len(hits) == 8
    assert {h["image"] for h in hits[:2]} == {f for f, _ in frames["Dog"][1:]}
    for h in hits:  # the JSON keeps its keys; the box is the whole photo
        assert set(h) == {"image", "score", "box", "ellipse"}
        from PIL import Image

        with Image.open(photos / h["image"]) as im:
            assert h["box"] == [0.0, 0.0, float(im.width), float(im.height)]
    # a --queries file mixes whole-photo items and box items
    spec = [{"id": "whole", "image": query}, {"id": "box", "image": query, "box": frames["Dog"][0][1]}]
    (tmp_path / "q.json").write_text(json.dumps(spec))
    rc, out, err = cli("search", photos, "--queries", tmp_path / "q.json", "--top", "3", "--no-refine", "--json")
    assert rc == 0, err
    by_id = {q["id"]: q["hits"] for q in json.loads(out)["queries"]}
    assert [h["image"] for h in by_id["whole"]] == [h["image"] for h in hits[:3]]
    assert by_id["box"][0]["box"] != by_id["whole"][0]["box"]  # the box query places boxes


def test_a_photo_from_outside_the_folder_is_embedded_on_the_fly(indexed, tmp_path, dev_data, dev_manifest):
    photos, frames = indexed
    outside = tmp_path / "outside"
    other = copy_frames(dev_data, dev_manifest, outside, names=("Box",), frames=1)
    rc, out, err = cli("search", photos, "--query", outside / other["Box"][0][0], "--top", "3", "--json")
    assert rc == 0, err
    top = [h["image"] for h in json.loads(out)["queries"][0]["hits"]]
    assert top[0] in {f for f, _ in frames["Box"]}


def test_asmk_codebook_is_trained_on_another_set(dev_data):
    from dasr_annotator.engine.evaluation.image_level import asmk_training_manifest

    data = dev_data.parent
    assert asmk_training_manifest(data / "dev" / "manifest.json") == (data / "dev-photos" / "manifest.json").resolve()
    assert asmk_training_manifest(data / "dev-hires" / "manifest.json").parent.name == "dev-photos"
    assert asmk_training_manifest(data / "dev-photos" / "manifest.json").parent.name == "dev"


def test_region_rows_are_the_regions_of_the_images_asked_for(indexed):
    from dasr_annotator.app.cli.cmd_search import open_searcher
    from dasr_annotator.engine.project.project import Project

    photos, frames = indexed
    searcher = open_searcher(Project.open(photos), "cpu")
    dog = [f for f, _ in frames["Dog"]]
    rows = searcher.region_rows(dog + ["not/a/photo.jpg"])
    assert len(rows) and np.all(np.diff(rows) > 0)
    assert sorted({searcher.images[i] for i in searcher.region_image[rows]}) == sorted(dog)
    others = np.setdiff1d(np.arange(len(searcher.region_image)), rows)
    assert not {searcher.images[i] for i in searcher.region_image[others]} & set(dog)
    assert len(searcher.region_rows([])) == 0
