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

    .venv/bin/python benchmarks/search_latency.py --regions 12500000 --mmap --json

`--mmap` builds the index as a project does for a collection that need not fit in memory
(`index.build_ondisk_index`: trained on a sample, parts of CHUNK vectors generated and added one
at a time, the re-ranking codes written to the index file from disk) and searches it
memory-mapped; the vectors never exist as a whole, and recall is measured against exact search
done part by part. `nprobe` and `k_factor` (re-ranked candidates per result) are the tuned
settings. Both modes
report `peak_rss_mb`: the peak resident memory of a separate process that opens the index
(memory-mapped with `--mmap`, read into memory without) and runs 100 single queries, k = 100;
`rss_file_mb` of it is file pages mapped from the page cache (reclaimable: the shared libraries,
and index pages where the index is mapped), `rss_anon_mb` the process's own memory (Python, faiss,
torch through the engine's imports). With `--mmap` also `searcher_peak_rss_mb` (and its
`searcher_rss_file_mb` / `searcher_rss_anon_mb`): the same for a process that opens what the
desktop opens, the index and a region table of N regions (REGIONS_PER_IMAGE a photo, written as a
project writes it and memory-mapped as `Project.searcher` opens it), and runs 100 whole
`Searcher.search` calls (top 100 photos). Figures: docs/index.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from dasr_annotator.engine.search import index as faiss_index
from dasr_annotator.engine.search import region_table
from dasr_annotator.engine.search.searcher import Searcher

REGIONS_PER_IMAGE = 12  # the paper's DASR* average
CHUNK = 250_000


def synthetic_regions(n: int, dim: int, seed: int) -> np.ndarray:
    """Clustered unit vectors: ~1000 regions per topic, 100 instances per topic, noise per region."""
    return np.concatenate(list(synthetic_chunks(n, dim, seed)))


def synthetic_chunks(n: int, dim: int, seed: int):
    """`synthetic_regions(n, dim, seed)` in CHUNK-row pieces, never all in memory."""
    rng = np.random.default_rng(seed)
    topics = max(n // 1000, 8)
    topic_centres = rng.standard_normal((topics, dim), dtype=np.float32)
    instances = (0.6 * np.repeat(topic_centres, 100, axis=0)
                 + 0.7 * rng.standard_normal((topics * 100, dim), dtype=np.float32))
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        x = instances[rng.integers(0, len(instances), m)] + 0.7 * rng.standard_normal((m, dim), dtype=np.float32)
        yield x / np.linalg.norm(x, axis=1, keepdims=True)


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

    faiss_times = faiss_query_times(built.index, held_out)
    search_times = searcher_query_times(built.index, n, held_out, seed)
    data = built.to_bytes()
    size = len(data)
    with tempfile.TemporaryDirectory(prefix="search-latency-") as folder:
        path = Path(folder) / "index.faiss"
        path.write_bytes(data)
        del data
        rss = rss_of_a_searching_process(path, held_out, built.nprobe, built.k_factor, mmap=False)
    return {
        "regions": n, "dim": dim, "index_type": built.spec, "nprobe": built.nprobe, "k_factor": built.k_factor,
        "p50_ms": percentile_ms(search_times, 50), "p95_ms": percentile_ms(search_times, 95),
        "faiss_p50_ms": percentile_ms(faiss_times, 50), "faiss_p95_ms": percentile_ms(faiss_times, 95),
        "recall_at_100": round(recall, 4), "tuning_recall_at_100": round(built.recall_at_100, 4),
        "bytes_per_region": round(size / n, 1), "build_s": round(build_s, 1),
        "queries": queries, "threads": faiss.omp_get_max_threads(), "seed": seed, **rss,
    }


def measure_mmap(n: int, queries: int, seed: int, raw_dim: int | None, train: int | None,
                 folder: Path | None) -> dict:
    """As `measure`, with the index built from parts into on-disk lists and searched memory-mapped."""
    raw_dim = raw_dim or descriptor_dim()
    dim = faiss_index.whitening_dim(n, raw_dim) or raw_dim
    spec = faiss_index.index_spec(n, dim)
    if not faiss_index.stored_on_disk(spec):
        raise SystemExit(f"{n} regions get a {spec} index, which is not stored on disk; --mmap needs an IVF size "
                         f"(more than {faiss_index.EXACT_MAX_WORK // dim:,} regions of {dim} dims)")
    train = min(n, train or faiss_index.training_size(spec))

    def parts():
        """The n indexed vectors, CHUNK at a time (the `queries` generated first are held out)."""
        skip = queries
        for chunk in synthetic_chunks(n + queries, dim, seed):
            cut = min(skip, len(chunk))
            skip -= cut
            if len(chunk) > cut:
                yield chunk[cut:]

    held_out = np.concatenate(list(_first_rows(synthetic_chunks(n + queries, dim, seed), queries)))
    # the training sample: the first `train` indexed vectors (i.i.d. draws, so a uniform sample)
    sample = np.concatenate(list(_first_rows(parts(), train)))
    owned = folder is None
    folder = Path(tempfile.mkdtemp(prefix="search-latency-")) if owned else folder
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "index.faiss"
    try:
        start = time.perf_counter()
        built = faiss_index.build_ondisk_index(parts(), sample, path, spec, seed=seed)
        build_s = time.perf_counter() - start
        index, nprobe, k_factor, tuning_recall = built.index, built.nprobe, built.k_factor, built.recall_at_100
        del sample, built
        beside = [path.with_suffix(faiss_index.ONDISK_SUFFIX), path.with_suffix(faiss_index.REFINE_SUFFIX)]
        size = path.stat().st_size + sum(p.stat().st_size for p in beside if p.exists())
        heap = faiss.ResultHeap(len(held_out), 100, keep_max=True)
        offset = 0
        for part in parts():  # exact search, part by part
            found_d, found_i = faiss.knn(held_out, part, min(100, len(part)), metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(found_d, found_i + offset)
            offset += len(part)
        heap.finalize()
        _, found = index.search(held_out, 100)
        recall = faiss_index.recall_at(found, heap.I)
        faiss_times = faiss_query_times(index, held_out)
        search_times = searcher_query_times(index, n, held_out, seed)
        del index
        rss = rss_of_a_searching_process(path, held_out, nprobe, k_factor, mmap=True)
        rss.update(rss_of_a_searcher_process(path, held_out, nprobe, k_factor, n, seed))
    finally:
        if owned:
            shutil.rmtree(folder, ignore_errors=True)
    return {
        "regions": n, "dim": dim, "index_type": spec, "nprobe": nprobe, "k_factor": k_factor,
        "p50_ms": percentile_ms(search_times, 50), "p95_ms": percentile_ms(search_times, 95),
        "faiss_p50_ms": percentile_ms(faiss_times, 50), "faiss_p95_ms": percentile_ms(faiss_times, 95),
        "recall_at_100": round(recall, 4), "tuning_recall_at_100": round(tuning_recall, 4),
        "bytes_per_region": round(size / n, 1), "build_s": round(build_s, 1),
        "queries": queries, "threads": faiss.omp_get_max_threads(), "seed": seed,
        "mmap": True, "train_vectors": int(train), **rss,
    }


def _first_rows(chunks, rows: int):
    """The first `rows` rows of a stream of arrays."""
    for chunk in chunks:
        if rows <= 0:
            return
        yield chunk[:rows]
        rows -= len(chunk[:rows])


def faiss_query_times(index, queries: np.ndarray) -> list[float]:
    times = []
    with faiss_index.single_thread():  # as the Searcher queries
        for q in queries:
            t = time.perf_counter()
            index.search(q[None], 100)
            times.append(time.perf_counter() - t)
    return times


def searcher_query_times(index, n: int, queries: np.ndarray, seed: int) -> list[float]:
    """Whole `Searcher.search` calls (top 100 distinct images), REGIONS_PER_IMAGE regions an image."""
    n_images = (n + REGIONS_PER_IMAGE - 1) // REGIONS_PER_IMAGE
    meta = {"images": np.array([f"{i:08d}.jpg" for i in range(n_images)]),
            "sizes": np.ones((n_images, 2), np.int32),
            "image": (np.random.default_rng(seed + 1).permutation(n) // REGIONS_PER_IMAGE).astype(np.int32),
            "boxes": np.zeros((n, 4), np.float32), "ellipses": np.zeros((n, 5), np.float32)}
    searcher = Searcher(_NoProject(), None, index, meta, None)
    times = []
    for q in queries:
        t = time.perf_counter()
        searcher.search(q[None], top_k=100)
        times.append(time.perf_counter() - t)
    return times


def rss_of_a_searching_process(path: Path, queries: np.ndarray, nprobe: int, k_factor: int, mmap: bool,
                               searcher: bool = False) -> dict:
    """Memory of a fresh process that opens the index at `path` and runs 100 single queries (with
    `searcher`, 100 Searcher queries over the region table beside it)."""
    query_file = path.with_name("rss-queries.npy")
    np.save(query_file, np.resize(queries, (100, queries.shape[1])))
    child = subprocess.run([sys.executable, __file__, "--rss-child", str(path), "--rss-queries", str(query_file),
                            "--rss-nprobe", str(nprobe), "--rss-k-factor", str(k_factor)]
                           + (["--mmap"] if mmap else []) + (["--rss-searcher"] if searcher else []),
                           capture_output=True, text=True, check=True)
    query_file.unlink()
    return json.loads(child.stdout.strip().splitlines()[-1])


TABLE = "bench"  # the region table's generation name in the index folder


def rss_of_a_searcher_process(path: Path, queries: np.ndarray, nprobe: int, k_factor: int, n: int,
                              seed: int) -> dict:
    """Memory of a fresh process that opens the index at `path` and a region table of `n` regions
    (written beside it here, as a project writes one) as `Project.searcher` does, and runs 100
    whole `Searcher.search` calls: what the desktop holds to search a collection of this size."""
    rng = np.random.default_rng(seed + 2)
    n_images = (n + REGIONS_PER_IMAGE - 1) // REGIONS_PER_IMAGE
    xy = rng.uniform(0, 3000, (n, 2)).astype(np.float32)
    wh = rng.uniform(16, 1000, (n, 2)).astype(np.float32)
    region_table.write_table(path.parent, region_table.table_files(TABLE), [f"{i:08d}.jpg" for i in range(n_images)],
                             np.tile(np.array([[4000, 3000]], np.int32), (n_images, 1)),
                             np.arange(n) // REGIONS_PER_IMAGE, np.concatenate([xy, wh], 1),
                             np.concatenate([xy + wh / 2, wh / 2, np.zeros((n, 1), np.float32)], 1),
                             np.zeros(n, np.float32))
    del xy, wh
    try:
        result = rss_of_a_searching_process(path, queries, nprobe, k_factor, mmap=True, searcher=True)
    finally:
        for column in region_table.column_paths(path.parent, region_table.table_files(TABLE)):
            column.unlink(missing_ok=True)
    return {f"searcher_{key}": value for key, value in result.items()}


def rss_child(path: str, query_file: str, nprobe: int, k_factor: int, mmap: bool, searcher: bool = False) -> dict:
    queries = np.load(query_file)
    if mmap:
        index = faiss_index.open_index(path, nprobe, k_factor)
    else:
        index = faiss_index.load_index(Path(path).read_bytes(), nprobe, k_factor)
    if searcher:
        table = region_table.open_table(Path(path).parent, region_table.table_files(TABLE))
        whole = Searcher(_NoProject(), None, index, table, None)
        for q in queries:
            whole.search(q[None], top_k=100)
    else:
        faiss_query_times(index, queries)
    status = _proc_status()
    if "VmHWM" in status:
        peak = status["VmHWM"]
    else:  # not Linux: ru_maxrss (bytes on macOS)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1024)
    return {"peak_rss_mb": round(peak, 1), "rss_file_mb": status.get("RssFile"), "rss_anon_mb": status.get("RssAnon")}


def _proc_status() -> dict:
    """Memory lines of /proc/self/status in MB (empty off Linux)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssFile", "RssAnon"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regions", type=int, default=100_000, help="regions in the index")
    parser.add_argument("--queries", type=int, default=200, help="held-out queries timed one at a time")
    parser.add_argument("--descriptor-dim", type=int, help="raw descriptor size (default: the default backbone's)")
    parser.add_argument("--threads", type=int, help="faiss threads for building (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mmap", action="store_true",
                        help="build from parts into on-disk lists and search memory-mapped (IVF sizes only)")
    parser.add_argument("--train", type=int, help="with --mmap: training vectors (default: as the project, "
                                                  f"{faiss_index.TRAIN_PER_LIST} a list)")
    parser.add_argument("--index-dir", type=Path, help="with --mmap: keep the index files here (default: a "
                                                       "temporary folder, removed)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    parser.add_argument("--rss-queries", help=argparse.SUPPRESS)
    parser.add_argument("--rss-nprobe", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rss-k-factor", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rss-searcher", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child, args.rss_queries, args.rss_nprobe, args.rss_k_factor, args.mmap,
                                   args.rss_searcher)))
        return 0
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    if args.mmap:
        result = measure_mmap(args.regions, args.queries, args.seed, args.descriptor_dim, args.train, args.index_dir)
    else:
        result = measure(args.regions, args.queries, args.seed, args.descriptor_dim)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
