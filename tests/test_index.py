"""The index policy, approximate-vs-exact recall, serialisation, and the search aggregation."""
import faiss
import numpy as np
import pytest

from dasr_annotator.engine.dasr.descriptors import Whitening
from dasr_annotator.engine.search import index as faiss_index
from dasr_annotator.engine.search.searcher import BoxError, Searcher, checked_box, parse_box
from dasr_annotator.engine.types import Box


def clustered(n, d, seed=0, groups=200):
    """l2-normalised vectors around `groups` centres, so neighbourhoods mean something."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, d)).astype(np.float32)
    x = centres[rng.integers(0, groups, n)] + 0.8 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_policy_exact_then_fewer_dims_then_ivf():
    assert faiss_index.index_spec(10_000, 320) == "Flat"
    assert faiss_index.whitening_dim(10_000, 320) is None
    n = faiss_index.EXACT_MAX_WORK // 320 + 1
    assert faiss_index.whitening_dim(n, 320) == faiss_index.APPROX_DIM
    assert faiss_index.index_spec(n, faiss_index.APPROX_DIM) == "Flat"
    spec = faiss_index.index_spec(1_000_000, faiss_index.APPROX_DIM)
    assert spec == "IVF4096,PQ56x4fs,Refine(SQ8)" and faiss_index.is_refined(spec)
    assert faiss_index.index_spec(1_000_000, 33) == "IVF4096,PQ33x4fs,Refine(SQ8)"  # odd: a dim a code
    assert faiss_index.whitening_min_regions(320) >= 3200
    assert faiss_index.needs_refit(200, 100) and faiss_index.needs_refit(50, 100)
    assert not faiss_index.needs_refit(150, 100)


def test_flat_index_is_exact():
    x = clustered(2000, 32)
    built = faiss_index.build_index(x)
    assert built.spec == "Flat" and built.nprobe == 0
    _, ids = built.index.search(x[:20], 10)
    assert np.array_equal(ids, faiss_index.exact_search(x, x[:20], 10))


def built_on_clustered(spec: str):
    """(indexed vectors, the index `spec` built on them, 100 held-out queries)."""
    x = clustered(30_100, 32, seed=1)
    held_out, x = x[:100], x[100:]
    return x, faiss_index.build_index(x, spec=spec), held_out


@pytest.fixture(scope="module")
def ivf():
    return built_on_clustered("IVF128,SQ8")


def test_ivf_is_tuned_to_the_recall_target(ivf):
    x, built, queries = ivf
    assert built.nprobe in faiss_index.NPROBE_STEPS
    assert built.recall_at_100 >= faiss_index.TARGET_RECALL
    # independent check on queries from the same distribution that are not in the index
    _, found = built.index.search(queries, 100)
    assert faiss_index.recall_at(found, faiss_index.exact_search(x, queries, 100)) >= 0.95


def test_index_survives_serialisation_with_its_nprobe(ivf):
    x, built, _ = ivf
    loaded = faiss_index.load_index(built.to_bytes(), built.nprobe)
    assert faiss.extract_index_ivf(loaded).nprobe == built.nprobe
    queries = x[:5]
    assert np.array_equal(loaded.search(queries, 10)[1], built.index.search(queries, 10)[1])
    back = faiss_index.reconstruct(loaded, np.array([3, 7]))
    assert back.shape == (2, 32) and np.allclose(back, x[[3, 7]], atol=0.05)


@pytest.fixture(scope="module")
def refined():
    return built_on_clustered("IVF128,PQ16x4fs,Refine(SQ8)")


def test_refined_ivf_is_tuned_to_the_recall_target_and_survives_serialisation(refined):
    x, built, queries = refined
    assert built.k_factor in faiss_index.REFINE_FACTORS and built.recall_at_100 >= faiss_index.REFINED_TARGET_RECALL
    assert (faiss.extract_index_ivf(built.index).nprobe, built.index.k_factor) == (built.nprobe, built.k_factor)
    _, found = built.index.search(queries, 100)
    assert faiss_index.recall_at(found, faiss_index.exact_search(x, queries, 100)) >= 0.95
    loaded = faiss_index.load_index(built.to_bytes(), built.nprobe, built.k_factor)
    assert (faiss.extract_index_ivf(loaded).nprobe, loaded.k_factor) == (built.nprobe, built.k_factor)
    assert np.array_equal(loaded.search(queries, 10)[1], built.index.search(queries, 10)[1])
    back = faiss_index.reconstruct(loaded, np.array([3, 7]))  # from the re-ranking codes
    assert back.shape == (2, 32) and np.allclose(back, x[[3, 7]], atol=0.02)


def test_tuning_stops_at_the_query_time_budget(refined, monkeypatch):
    x, built, queries = refined
    truth = faiss_index.exact_search(x, queries, 100)
    monkeypatch.setattr(faiss_index, "QUERY_MS_BUDGET", 0.0)  # every setting is over it
    assert faiss_index._tune(built.index, queries, truth)[0::2] == (8, faiss_index.REFINE_FACTORS[0])
    monkeypatch.setattr(faiss_index, "QUERY_MS_BUDGET", 1e6)
    nprobe, recall, k_factor = faiss_index._tune(built.index, queries, truth)
    assert recall >= faiss_index.REFINED_TARGET_RECALL and (nprobe, k_factor) != (8, faiss_index.REFINE_FACTORS[0])


def test_recall_at_counts_overlap():
    assert faiss_index.recall_at(np.array([[1, 2, 3]]), np.array([[3, 4, 5]])) == pytest.approx(1 / 3)


class _Project:
    photos = None


def make_searcher(vectors, region_image, whitening=None):
    """A Searcher over given vectors: region i belongs to image region_image[i]."""
    n_images = int(region_image.max()) + 1
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(whitening.transform(vectors) if whitening else vectors)
    boxes = np.stack([np.arange(len(vectors)), np.zeros(len(vectors)), np.ones(len(vectors)), np.ones(len(vectors))], 1)
    meta = {"images": np.array([f"im{i}.jpg" for i in range(n_images)]), "sizes": np.ones((n_images, 2), np.int32),
            "image": region_image.astype(np.int32), "boxes": boxes.astype(np.float32),
            "ellipses": np.zeros((len(vectors), 5), np.float32)}
    return Searcher(_Project(), None, index, meta, whitening)


def test_one_hit_per_image_best_region_and_growing_k():
    rng = np.random.default_rng(3)
    q = np.zeros(16, np.float32)
    q[0] = 1
    # image 0 owns 300 regions all close to the query, so the first k regions are all image 0
    near = q + 0.05 * rng.standard_normal((300, 16)).astype(np.float32)
    far = rng.standard_normal((50, 16)).astype(np.float32)
    vectors = np.vstack([near, far])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    region_image = np.concatenate([np.zeros(300, int), 1 + np.arange(50) // 5])
    searcher = make_searcher(vectors, region_image)
    hits = searcher.search(q[None], top_k=5)
    assert len(hits) == 5 and len({h.image for h in hits}) == 5
    assert hits[0].image == "im0.jpg"
    assert hits[0].score == pytest.approx(float((vectors[:300] @ q).max()), abs=1e-5)
    assert hits[0].box.x == float(np.argmax(vectors[:300] @ q))  # the best region is where the hit is
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    excluded = searcher.search(q[None], top_k=5, exclude_image="im0.jpg")
    assert "im0.jpg" not in {h.image for h in excluded} and len(excluded) == 5


def test_several_positives_and_a_negative():
    vectors = np.eye(4, dtype=np.float32)
    searcher = make_searcher(vectors, np.arange(4))
    both = searcher.search(vectors[[0, 1]], top_k=4)
    assert {h.image for h in both[:2]} == {"im0.jpg", "im1.jpg"}
    mixed = (vectors[0] + 0.9 * vectors[2])[None]
    plain = searcher.search(mixed, top_k=2)
    assert [h.image for h in plain] == ["im0.jpg", "im2.jpg"]
    pushed = searcher.search(mixed, top_k=4, negatives=vectors[[0]])
    assert pushed[0].image == "im2.jpg"


def test_queries_go_through_the_same_whitening():
    x = clustered(500, 8, seed=4)
    whitening = Whitening().fit(x)
    searcher = make_searcher(x, np.arange(500), whitening)
    hits = searcher.search(x[[17]], top_k=1)
    assert hits[0].image == "im17.jpg" and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_boxes_are_checked():
    assert parse_box("1, 2,3,4") == Box(1, 2, 3, 4)
    for bad in ("1,2,3", "a,b,c,d"):
        with pytest.raises(BoxError, match="four numbers"):
            parse_box(bad)
    with pytest.raises(BoxError, match="zero area"):
        checked_box(Box(1, 1, 0, 5), 10, 10)
    with pytest.raises(BoxError, match="outside the image"):
        checked_box(Box(20, 1, 5, 5), 10, 10)
    with pytest.raises(BoxError, match="finite"):
        checked_box(Box(float("nan"), 1, 5, 5), 10, 10)
    assert checked_box(Box(-2, 5, 6, 10), 10, 10) == Box(0, 5, 4, 5)


def test_latency_benchmark_runs_on_a_small_collection():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "search_latency.py"
    spec = importlib.util.spec_from_file_location("search_latency", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.measure(20_000, queries=20, seed=0, raw_dim=64)
    assert (result["index_type"], result["dim"], result["recall_at_100"]) == ("Flat", 64, 1.0)
    assert result["bytes_per_region"] == pytest.approx(4 * 64, rel=0.01)
    assert 0 < result["p50_ms"] <= result["p95_ms"]
    assert result["peak_rss_mb"] > 0  # of a separate process that loads the index and queries it
