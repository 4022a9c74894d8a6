"""Time a full re-rank over region descriptors in memory: multi-example fusion + negative
feedback + image ranking (engine/feedback.py), on seeded random l2-normalised descriptors.

    .venv/bin/python benchmarks/rerank_speed.py --regions 100000 --dim 1280 --json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from dasr_annotator.engine.search.feedback import feedback_scores, image_ranking


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def measure(
    regions: int, dim: int, positives: int, negatives: int, per_image: int, repeats: int, seed: int
) -> dict:
    rng = np.random.default_rng(seed)
    descriptors = _unit_rows(rng, regions, dim)
    image_ids = np.arange(regions) // per_image
    pos, neg = _unit_rows(rng, positives, dim), _unit_rows(rng, negatives, dim)

    def rerank():
        scores = feedback_scores(pos, neg, descriptors, fusion="max", neg_weight=0.5)
        return image_ranking(scores, image_ids)

    for _ in range(2):  # warm caches and BLAS threads
        rerank()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        rerank()
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "regions": regions,
        "images": int(image_ids[-1]) + 1,
        "dim": dim,
        "positives": positives,
        "negatives": negatives,
        "repeats": repeats,
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p95_ms": round(float(np.percentile(times, 95)), 2),
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280, help="descriptor dimension (256..2048)")
    parser.add_argument("--positives", type=int, default=3)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--regions-per-image", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = measure(
        args.regions, args.dim, args.positives, args.negatives,
        args.regions_per_image, args.repeats, args.seed,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['regions']} regions x {result['dim']}-D, "
            f"{result['positives']} positives / {result['negatives']} negatives: "
            f"p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
