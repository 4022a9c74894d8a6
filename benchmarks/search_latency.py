"""Search latency, recall and memory of the index the project builds for N regions.

    .venv/bin/python benchmarks/search_latency.py --regions 1000000 --json

The vectors are synthetic, seeded and clustered like a photo collection's regions: scenes
(topics) -> object instances -> regions seen in ~12 per image, l2-normalised, in the dimension
the project's whitening gives at that size (from the default backbone's descriptor size). The
index is built by the project's own `index.build_index` (kind, training, nprobe tuning).
Latency is per single query (one query at a time, as the GUI and CLI ask, on one faiss thread as
the Searcher runs them): `faiss_*` for the k=100 region search alone, `p50_ms`/`p95_ms` for the
whole `Searcher.search` (top 100 distinct images, growing k as needed). `--threads` sets the
threads for building. Recall@100 is measured on held-out queries against exact search.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import faiss
import numpy as np

from dasr_annotator.engine.search import index as faiss_index
from dasr_annotator.engine.search.searcher import Searcher

REGIONS_PER_IMAGE = 12  # the paper's DASR* average
CHUNK = 250_000


def synthetic_regions(n: int, dim: int, seed: int) -> np.ndarray:
    """Clustered unit vectors: ~1000 regions per topic, 100 instances per topic, noise per region."""
    rng = np.random.default_rng(seed)
    topics = max(n // 1000, 8)
    topic_centres = rng.standard_normal((topics, dim), dtype=np.float32)
    instances = 0.6 * np.repeat(topic_centres, 100, axis=0) + 0.7 * rng.standard_normal((topics * 100, dim), dtype=np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        x = instances[rng.integers(0, len(instances), m)] + 0.7 * rng.standard_normal((m, dim), dtype=np.float32)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def descriptor_dim() -> int:
    from dasr_annotator.engine.dasr.backbones import DEFAULT_BACKBONE, load_backbone

    return load_backbone(DEFAULT_BACKBONE).descriptor_dim


def percentile_ms(times: list[float], q: float) -> float:
    return round(float(np.percentile(times, q)) * 1e3, 3)


class _NoProject:
    photos = None


def measure(n: int, queries: int, seed: int, raw_dim: int | None) -> dict:
    raw_dim = raw_dim or descriptor_dim()
    dim = faiss_index.whitening_dim(n, raw_dim) or raw_dim
    data = synthetic_regions(n + queries, dim, seed)
    held_out, vectors = data[:queries], data[queries:]
    del data
    start = time.perf_counter()
    built = faiss_index.build_index(vectors, seed=seed)
    build_s = time.perf_counter() - start
    truth = faiss_index.exact_search(vectors, held_out, 100)
    _, found = built.index.search(held_out, 100)
    recall = faiss_index.recall_at(found, truth)

    faiss_times = []
    with faiss_index.single_thread():  # as the Searcher queries
        for q in held_out:
            t = time.perf_counter()
            built.index.search(q[None], 100)
            faiss_times.append(time.perf_counter() - t)
    n_images = (n + REGIONS_PER_IMAGE - 1) // REGIONS_PER_IMAGE
    meta = {"images": np.array([f"{i:08d}.jpg" for i in range(n_images)]),
            "sizes": np.ones((n_images, 2), np.int32),
            "image": (np.random.default_rng(seed + 1).permutation(n) // REGIONS_PER_IMAGE).astype(np.int32),
            "boxes": np.zeros((n, 4), np.float32), "ellipses": np.zeros((n, 5), np.float32)}
    searcher = Searcher(_NoProject(), None, built.index, meta, None)
    search_times = []
    for q in held_out:
        t = time.perf_counter()
        searcher.search(q[None], top_k=100)
        search_times.append(time.perf_counter() - t)
    size = len(built.to_bytes())
    return {
        "regions": n, "dim": dim, "index_type": built.spec, "nprobe": built.nprobe,
        "p50_ms": percentile_ms(search_times, 50), "p95_ms": percentile_ms(search_times, 95),
        "faiss_p50_ms": percentile_ms(faiss_times, 50), "faiss_p95_ms": percentile_ms(faiss_times, 95),
        "recall_at_100": round(recall, 4), "tuning_recall_at_100": round(built.recall_at_100, 4),
        "bytes_per_region": round(size / n, 1), "build_s": round(build_s, 1),
        "queries": queries, "threads": faiss.omp_get_max_threads(), "seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regions", type=int, default=100_000, help="regions in the index")
    parser.add_argument("--queries", type=int, default=200, help="held-out queries timed one at a time")
    parser.add_argument("--descriptor-dim", type=int, help="raw descriptor size (default: the default backbone's)")
    parser.add_argument("--threads", type=int, help="faiss threads for building (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    result = measure(args.regions, args.queries, args.seed, args.descriptor_dim)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
