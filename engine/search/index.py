"""The faiss index over whitened region descriptors, and the policy that picks its kind.

Small collections get an exact inner-product index (`Flat`) over full-size descriptors. Once one
flat query would cost more than `EXACT_MAX_WORK` multiply-adds, the whitening keeps only the
`APPROX_DIM` strongest components (PCA-whitening with dimension reduction), and once even that is
too much for a flat scan the index is IVF with 8-bit scalar quantisation; `nprobe` is tuned at
build time on a sample of the collection's own vectors until recall@100 against exact search
reaches `TARGET_RECALL`.
Measured figures and the command that produced them: docs/benchmarks.md, "Search index".

Saved with faiss's own format, never pickle. Exact indexes are one file, read into memory. IVF
indexes (the large collections) need not fit in memory, neither to build nor to search
(`build_ondisk_index`): the quantizer is trained on a sample, each part of the collection is added
to its own copy of the trained index, and the parts' inverted lists are merged into one `.ivfdata`
file beside the index file, which `open_index` memory-maps read-only. Figures: docs/index.md.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from dasr_annotator.engine.dasr.descriptors import Whitening, l2n
from dasr_annotator.engine.store.storage import ProjectFileError, atomic_write_bytes
from dasr_annotator.engine.threads import thread_count
from dasr_annotator.engine.types import CancelFn, Cancelled, never_cancel

log = logging.getLogger(__name__)

# One flat query of this many multiply-adds (regions x dims) took ~16-23 ms on one core of the
# (shared) development machine; beyond it the dimension is reduced, then the index approximated.
EXACT_MAX_WORK = 32_000_000
# Whitened dimension for large collections: 112 dims x 8 bits + an 8-byte id = 120 bytes a region,
# under the 128-byte budget; 6-bit codes over 128 dims fit too but their recall@100 stalled near
# 0.955 on the benchmark's data however many lists were probed.
APPROX_DIM = 112
APPROX_CODE = "SQ8"
# Tuned above the 0.95 goal: the tuning queries are indexed vectors themselves, which measured
# 0.001-0.002 more optimistic than held-out queries on the benchmark.
TARGET_RECALL = 0.96
NPROBE_STEPS = (8, 16, 32, 64, 128, 256, 512, 1024)
TUNING_QUERIES = 200
ADD_CHUNK = 65536
# Training vectors per IVF list (faiss asks for at least 39; 64 is what every build here used).
TRAIN_PER_LIST = 64
# The inverted lists of an IVF index live in this file beside the index file (same stem).
ONDISK_SUFFIX = ".ivfdata"


# Eigenvalue damping of the collection's whitening, in mean eigenvalues (Whitening.shrinkage).
WHITENING_SHRINKAGE = 1.0


def whitening_min_regions(descriptor_dim: int) -> int:
    """Regions needed before the collection's own PCA-whitening is fitted (l2 only before).

    A covariance of D dims estimated from N samples has its smallest eigenvalues shrunk by about
    (1 - sqrt(D / N))^2 (Marchenko-Pastur); whitening divides by their square root, so noise
    directions get amplified. Measured on the dev set (docs/benchmarks.md, "Retrieval quality"):
    whitening fitted on its own 2,945 regions (~9 D, 12 scenes) cut mAP@50 from 0.945 to 0.372,
    0.784 with the damping above. So the collection's whitening waits for a large, varied
    collection: 100 D regions (~5,000 photos at D = 320), 20,000 at least.
    """
    return max(100 * descriptor_dim, 20_000)


def needs_refit(n_regions: int, regions_at_fit: int) -> bool:
    """Refit once the collection has doubled (or halved) since the whitening was learned."""
    return n_regions >= 2 * regions_at_fit or 2 * n_regions <= regions_at_fit


def is_exact(n_regions: int, dim: int) -> bool:
    return n_regions * dim <= EXACT_MAX_WORK


def whitening_dim(n_regions: int, descriptor_dim: int) -> int | None:
    """Output dimension of the whitening (None = every component the data spans)."""
    return None if is_exact(n_regions, descriptor_dim) else min(APPROX_DIM, descriptor_dim)


def index_spec(n_regions: int, dim: int) -> str:
    """faiss index_factory string for `n_regions` vectors of `dim` dims."""
    if is_exact(n_regions, dim):
        return "Flat"
    # ~4 sqrt(N) lists, a power of two: 4096 lists at a million regions.
    nlist = 1 << max(6, round(math.log2(4 * math.sqrt(n_regions))))
    return f"IVF{nlist},{APPROX_CODE}"


def stored_on_disk(spec: str) -> bool:
    """IVF indexes (chosen by collection size, above) keep their inverted lists on disk and are
    opened memory-mapped; exact ones are small (at most EXACT_MAX_WORK floats) and stay one file.
    faiss has no on-disk lists on Windows: IVF indexes are built in memory there, as before."""
    return spec.startswith("IVF") and hasattr(faiss, "OnDiskInvertedLists")


def training_size(spec: str) -> int:
    """Vectors an index of this kind is trained on (0: it needs no training)."""
    if not spec.startswith("IVF"):
        return 0
    return TRAIN_PER_LIST * int(spec[3:].split(",")[0])


def index_vectors(descriptors: np.ndarray, whitening: Whitening | None, raw_dim: int) -> np.ndarray:
    """Raw (l2) descriptors [N, raw_dim], any float type -> what the index holds: whitened when
    the collection has a whitening, l2-normalised, float32 contiguous. Converted a chunk at a
    time, so a float16 store never exists as a whole in float32."""
    dim = whitening.output_dim if whitening is not None else raw_dim
    out = np.empty((len(descriptors), dim), np.float32)
    for start in range(0, len(descriptors), ADD_CHUNK):
        chunk = np.asarray(descriptors[start:start + ADD_CHUNK], np.float32)
        out[start:start + len(chunk)] = whitening.transform(chunk) if whitening is not None else l2n(chunk)
    return out


@dataclass
class BuiltIndex:
    index: faiss.Index
    spec: str
    nprobe: int  # 0 for exact indexes
    recall_at_100: float  # measured against exact on a sample (1.0 for exact indexes)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self.index).tobytes()


def build_index(vectors: np.ndarray, spec: str | None = None, seed: int = 0,
                cancel: CancelFn = never_cancel) -> BuiltIndex:
    """An inner-product index over l2-normalised float32 `vectors` [N, d], row i = id i."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    spec = spec or index_spec(n, d)
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, training_size(spec)), replace=False))
    index = train_index(vectors[rows], spec, seed)
    for start in range(0, n, ADD_CHUNK):
        if cancel():
            raise Cancelled()
        index.add(vectors[start:start + ADD_CHUNK])
    if spec == "Flat":
        return BuiltIndex(index, spec, 0, 1.0)
    nprobe, recall = tune_nprobe(index, vectors, seed)
    return BuiltIndex(index, spec, nprobe, recall)


def train_index(sample: np.ndarray, spec: str, seed: int = 0) -> faiss.Index:
    """An empty index of kind `spec`, trained on `sample` (float32 [S, d]) when it needs training."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    index = faiss.index_factory(sample.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        faiss.extract_index_ivf(index).cp.seed = seed
        log.info("training %s on %d vectors", spec, len(sample))
        index.train(sample)
    return index


def build_ondisk_index(parts: Iterable[np.ndarray], sample: np.ndarray, path: str | os.PathLike, spec: str,
                       seed: int = 0, cancel: CancelFn = never_cancel) -> BuiltIndex:
    """An IVF index over the vectors of `parts` (float32 [n_i, d] each, ids numbered across the
    parts in order), trained on `sample` (vectors of the same collection), written to `path`
    with its inverted lists in `path` + ONDISK_SUFFIX; returned opened memory-mapped.

    Only one part, the trained index and the tuning queries are in memory at a time: each part
    is added to its own copy of the trained index and written to a temporary file, then the
    parts' lists are merged into the on-disk lists (faiss.contrib.ondisk.merge_ondisk's method).
    The same pass finds the exact neighbours of the tuning queries (indexed vectors of the sample)
    part by part, so nprobe is tuned as `build_index` tunes it without a second pass. Both files
    are written to temporary names and renamed into place, the lists file first."""
    path = Path(path)
    lists_path = path.with_suffix(ONDISK_SUFFIX)
    trained = train_index(sample, spec, seed)
    rng = np.random.default_rng(seed + 1)
    queries = np.ascontiguousarray(sample[rng.choice(len(sample), min(TUNING_QUERIES, len(sample)), replace=False)],
                                   dtype=np.float32)
    k = 100
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    parts_dir = Path(tempfile.mkdtemp(prefix=f"{path.stem}-parts-", dir=path.parent))
    lists_tmp = None
    try:
        part_files, total = [], 0
        for part in parts:
            if cancel():
                raise Cancelled()
            part = np.ascontiguousarray(part, dtype=np.float32)
            if not len(part):
                continue
            ids = np.arange(total, total + len(part), dtype=np.int64)
            piece = faiss.clone_index(trained)
            for start in range(0, len(part), ADD_CHUNK):
                piece.add_with_ids(part[start:start + ADD_CHUNK], ids[start:start + ADD_CHUNK])
            part_files.append((parts_dir / f"{len(part_files):05d}.faiss").as_posix())
            faiss.write_index(piece, part_files[-1])
            del piece
            found_d, found_i = faiss.knn(queries, part, min(k, len(part)), metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(found_d, found_i + total)
            total += len(part)
        if cancel():
            raise Cancelled()
        heap.finalize()
        truth = heap.I[:, :min(k, total)]
        fd, lists_tmp = tempfile.mkstemp(prefix=f".{lists_path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        with _c_stdout_to_stderr():
            index = _merge_parts(trained, part_files, lists_tmp, lists_path.name)
        nprobe, recall = _tune(index, queries, truth) if total else (NPROBE_STEPS[0], 1.0)
        header = faiss.serialize_index(index).tobytes()
        del index  # unmaps and closes the lists file
        _fsync_file(lists_tmp)
        os.replace(lists_tmp, lists_path)
        lists_tmp = None
        atomic_write_bytes(path, header, backup=False)  # fsyncs the folder: both renames are durable
    except OSError as exc:
        raise ProjectFileError(f"cannot save the index {path}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
        if lists_tmp is not None and os.path.exists(lists_tmp):
            os.unlink(lists_tmp)
    return BuiltIndex(open_index(path, nprobe), spec, nprobe, recall)


def _merge_parts(trained: faiss.Index, part_files: list[str], lists_file: str, final_name: str) -> faiss.Index:
    """A copy of `trained` whose inverted lists, in `lists_file`, hold those of the part files in
    order; its header will name the lists file `final_name` (the reader looks for it beside the
    index file, whose folder it is renamed into). Unlike faiss.contrib.ondisk.merge_ondisk, the
    parts are released afterwards (it leaves their memory maps open for the life of the process)."""
    parts = [faiss.read_index(name, faiss.IO_FLAG_MMAP) for name in part_files]
    sources = faiss.InvertedListsPtrVector()
    for part in parts:
        sources.push_back(faiss.extract_index_ivf(part).invlists)
    index = faiss.clone_index(trained)
    ivf = faiss.extract_index_ivf(index)
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, lists_file)
    total = lists.merge_from_multiple(sources.data(), sources.size(), False) if parts else 0
    index.ntotal = ivf.ntotal = total
    lists.filename = final_name  # only written into the header from here on; the map stays open
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns the lists now
    del sources, parts
    return index


@contextlib.contextmanager
def _c_stdout_to_stderr() -> Iterator[None]:
    """faiss's on-disk lists printf their file names to C stdout when resized or opened; send
    that to stderr, so `--json` output on stdout stays a single JSON document."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
    except (OSError, ValueError, AttributeError):  # no usable fds (a windowed app): nothing to protect
        yield
        return
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _fsync_file(name: str) -> None:
    fd = os.open(name, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_index(path: str | os.PathLike, nprobe: int) -> faiss.Index:
    """An index file written by `build_ondisk_index` (its inverted lists memory-mapped read-only
    from the lists file beside it: pages are read as queries touch them and the kernel may drop
    them again) or by `BuiltIndex.to_bytes` (read into memory). RuntimeError when damaged."""
    with _c_stdout_to_stderr():
        index = faiss.read_index(Path(path).as_posix(), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    if nprobe:
        faiss.extract_index_ivf(index).nprobe = nprobe
    return index


def tune_nprobe(index: faiss.Index, vectors: np.ndarray, seed: int = 0, k: int = 100) -> tuple[int, float]:
    """Smallest nprobe whose recall@k against exact search reaches TARGET_RECALL on a sample of
    the indexed vectors used as queries (they look like real queries: regions of the same kind);
    the largest step (at most a quarter of the lists) when none does."""
    rng = np.random.default_rng(seed + 1)
    queries = vectors[rng.choice(len(vectors), min(TUNING_QUERIES, len(vectors)), replace=False)]
    k = min(k, len(vectors))
    return _tune(index, queries, exact_search(vectors, queries, k))


def _tune(index: faiss.Index, queries: np.ndarray, truth: np.ndarray) -> tuple[int, float]:
    k = truth.shape[1]
    ivf = faiss.extract_index_ivf(index)
    recall = 0.0
    for nprobe in NPROBE_STEPS:
        if nprobe > max(ivf.nlist // 4, NPROBE_STEPS[0]):
            break
        ivf.nprobe = nprobe
        _, found = index.search(queries, k)
        recall = recall_at(found, truth)
        log.info("nprobe %d: recall@%d %.3f", nprobe, k, recall)
        if recall >= TARGET_RECALL:
            return nprobe, recall
    return ivf.nprobe, recall


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by inner product (faiss searches in blocks, so memory stays bounded)."""
    _, ids = faiss.knn(np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(vectors, np.float32),
                       k, metric=faiss.METRIC_INNER_PRODUCT)
    return ids


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of `truth` present in the same row of `found`."""
    hits = [len(set(f.tolist()) & set(t.tolist())) / max(len(t), 1) for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 1.0


def single_thread():
    """Run one query's faiss calls on the calling thread: a single query gains nothing from
    OpenMP, and on a busy machine its thread team made IVF search ~3x slower (benchmark)."""
    return thread_count(faiss.omp_get_max_threads, faiss.omp_set_num_threads, 1)


def load_index(data: bytes, nprobe: int) -> faiss.Index:
    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    if nprobe:
        faiss.extract_index_ivf(index).nprobe = nprobe
    return index


def reconstruct(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """Stored (possibly quantised) vectors of `ids`, for scoring candidates against negatives."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if index.ntotal and "IVF" in type(index).__name__:
        ivf = faiss.extract_index_ivf(index)
        if ivf.direct_map.type == faiss.DirectMap.NoMap:
            ivf.make_direct_map()
    return index.reconstruct_batch(ids)
