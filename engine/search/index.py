"""The faiss index over whitened region descriptors, and the policy that picks its kind.

Small collections get an exact inner-product index (`Flat`) over full-size descriptors. Once one
flat query would cost more than `EXACT_MAX_WORK` multiply-adds, the whitening keeps only the
`APPROX_DIM` strongest components (PCA-whitening with dimension reduction), and once even that is
too much for a flat scan the index is IVF over 4-bit PQ codes searched with SIMD ("fast scan"),
whose best candidates are re-ranked on 8-bit scalar-quantised codes (`Refine(SQ8)`); `nprobe` and
the re-ranking factor are tuned at build time on a sample of the collection's own vectors until
recall@100 against exact search reaches `REFINED_TARGET_RECALL`, within `QUERY_MS_BUDGET` a query.
Measured figures and the command that produced them: docs/benchmarks.md, "Search index".

Saved with faiss's own format, never pickle. Exact indexes are one file, read into memory. IVF
indexes (the large collections) need not fit in memory, neither to build nor to search
(`build_ondisk_index`): the quantizer is trained on a sample, each part of the collection is added
to its own copy of the trained index, and the parts' inverted lists are merged into one `.ivfdata`
file beside the index file, which `open_index` memory-maps read-only; the re-ranked kind keeps its
8-bit codes (most of its bytes) in a `.refine` file beside the index file, whose rows a query
reads as it re-ranks them (`PreadRefine`), and its fast-scan lists in the index file, read into
memory. Figures: docs/index.md.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from dasr_annotator.engine.dasr.descriptors import Whitening, l2n
from dasr_annotator.engine.store.storage import (ProjectFileError, atomic_write_bytes, commit_temp, remove_quietly,
                                                  temp_beside)
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
# Large collections since issue #20: an SQ8 scan costs ~25 ns a region on one core, so at 12.5M
# regions the 50 ms goal allowed probing 6 % of the lists (recall@100 0.72 on the benchmark's
# data). 4-bit PQ codes of 2 dims each are scanned ~10x faster (fast scan), so far more lists can
# be probed; their ranking is coarse, so the best REFINE_FACTORS x k of them are re-ranked on the
# SQ8 codes (docs/index.md). 28 + 8 bytes (code, id) a region in memory, 112 read from disk.
REFINE = "Refine(SQ8)"
FAST_SCAN_DIMS = 2
REFINE_FACTORS = (4, 8, 16, 32)
# Tuning keeps a setting only while one k=100 query on one thread takes at most this long (median
# of LATENCY_QUERIES), leaving ~5 ms under issue #20's 50 ms goal for the rest of a Searcher
# query, which re-ranks as many candidates as that query does (`search_regions`): at 12.5M
# regions, nprobe 8192 / k_factor 32, 36.9 ms a k=100 query and 36.4 ms a whole search (load ~0.5).
QUERY_MS_BUDGET = 45.0
LATENCY_QUERIES = 20
# Tuned above the 0.95 goal: the tuning queries are indexed vectors themselves, which measured
# 0.001-0.002 more optimistic than held-out queries on the benchmark.
TARGET_RECALL = 0.96
# The re-ranked kind aims higher: a step more of fast-scan probing costs little, and stopping at
# 0.96 left it 0.002 under the SQ8 kind's 0.966 at 1M regions, whose coarser steps overshot.
REFINED_TARGET_RECALL = 0.97
NPROBE_STEPS = (8, 16, 32, 64, 128, 256, 512, 1024)
TUNING_QUERIES = 200
ADD_CHUNK = 65536
# Training vectors per IVF list (faiss asks for at least 39; 64 is what every build here used).
TRAIN_PER_LIST = 64
# The inverted lists of an IVF,SQ8 index live in this file beside the index file (same stem).
ONDISK_SUFFIX = ".ivfdata"
# The re-ranking codes of a re-ranked index (a faiss IndexScalarQuantizer file) live in this one.
REFINE_SUFFIX = ".refine"


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
    pq = dim // FAST_SCAN_DIMS if dim % FAST_SCAN_DIMS == 0 else dim
    return f"IVF{nlist},PQ{pq}x4fs,{REFINE}"


def is_refined(spec: str) -> bool:
    """An index whose candidates are re-ranked on SQ8 codes (a file of their own, read row by row)."""
    return spec.endswith(REFINE)


def stored_on_disk(spec: str) -> bool:
    """IVF indexes (chosen by collection size, above) are built from parts and opened without
    reading them whole: the re-ranked kind reads its SQ8 codes row by row, the older IVF,SQ8 kind
    maps its inverted lists;
    exact ones are small (at most EXACT_MAX_WORK floats) and stay one file, read into memory.
    faiss maps neither on Windows: IVF indexes are built in memory there, as before."""
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
    k_factor: int = 0  # re-ranked candidates per result wanted (0: no re-ranking)

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
    queries = _tuning_queries(vectors, seed)
    nprobe, recall, k_factor = _tune(index, queries, exact_search(vectors, queries, min(100, n)))
    return BuiltIndex(index, spec, nprobe, recall, k_factor)


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
    with its re-ranking codes in `path` + REFINE_SUFFIX (`is_refined(spec)`: `_write_refined`)
    or its inverted lists in `path` + ONDISK_SUFFIX (IVF,SQ8: `_write_ondisk_lists`); returned
    opened as `open_index` opens it.

    Only one part, the trained index (with the fast-scan lists of the re-ranked kind) and the
    tuning queries are in memory at a time. The same pass finds the exact neighbours of the
    tuning queries (indexed vectors of the sample) part by part, so the index is tuned as
    `build_index` tunes it without a second pass. Both files are written to temporary names and
    renamed into place, the index file last."""
    path = Path(path)
    trained = train_index(sample, spec, seed)
    queries = _tuning_queries(sample, seed)
    truth = _ExactTop(queries)
    parts_dir = Path(tempfile.mkdtemp(prefix=f"{path.stem}-parts-", dir=path.parent))
    index = None
    try:
        numbered = _numbered(parts, truth, cancel)
        if is_refined(spec):
            index, (nprobe, recall, k_factor) = _write_refined(trained, numbered, truth, parts_dir, path)
        else:
            nprobe, recall, k_factor = _write_ondisk_lists(trained, numbered, truth, parts_dir, path)
    except OSError as exc:
        raise ProjectFileError(f"cannot save the index {path}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
    del trained
    return BuiltIndex(index if index is not None else open_index(path, nprobe, k_factor), spec, nprobe, recall,
                      k_factor)


class _ExactTop:
    """The exact top 100 of the tuning queries over the parts seen so far (ids across the parts)."""

    def __init__(self, queries: np.ndarray, k: int = 100):
        self.queries, self.k, self.total = queries, k, 0
        self.heap = faiss.ResultHeap(len(queries), k, keep_max=True)

    def add(self, part: np.ndarray) -> None:
        found_d, found_i = faiss.knn(self.queries, part, min(self.k, len(part)), metric=faiss.METRIC_INNER_PRODUCT)
        self.heap.add_result(found_d, found_i + self.total)
        self.total += len(part)

    def ids(self) -> np.ndarray:
        self.heap.finalize()
        return self.heap.I[:, :min(self.k, self.total)]


def _numbered(parts: Iterable[np.ndarray], truth: _ExactTop,
              cancel: CancelFn) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(vectors, ids) of each non-empty part, ids numbered across the parts; each part also goes
    into the tuning queries' exact top 100. Checks `cancel` before each part and after the last."""
    for part in parts:
        if cancel():
            raise Cancelled()
        part = np.ascontiguousarray(part, dtype=np.float32)
        if len(part):
            ids = np.arange(truth.total, truth.total + len(part), dtype=np.int64)
            truth.add(part)
            yield part, ids
    if cancel():
        raise Cancelled()


def _write_refined(trained: faiss.Index, numbered: Iterator[tuple[np.ndarray, np.ndarray]], truth: _ExactTop,
                   work_dir: Path, path: Path) -> tuple[faiss.Index, tuple[int, float, int]]:
    """Fill `trained` (an IVF fast-scan index refined by SQ8 codes) with the parts and write it as
    two files: `path` holds the fast-scan index (36 bytes a region, read into memory when opened),
    `path` + REFINE_SUFFIX the SQ8 re-ranking codes (112 bytes a region, read row by row when
    searched). The codes are appended to a file in `work_dir` part by part and written from a
    memory map of it, so they never are in memory as a whole. Tuned on the written codes file
    with the fast-scan lists already in memory (not read back: they are 0.45 GB at 12.5M
    regions), renamed into place codes first; returns the opened index and its tuning."""
    base = faiss.downcast_index(trained.base_index)
    refine = faiss.downcast_index(trained.refine_index)
    codes_file = work_dir / "refine-codes"
    with open(codes_file, "wb") as out:
        for part, ids in numbered:
            for start in range(0, len(part), ADD_CHUNK):
                chunk = part[start:start + ADD_CHUNK]
                base.add_with_ids(chunk, ids[start:start + ADD_CHUNK])
                refine.sa_encode(chunk).tofile(out)
    total = truth.total
    codes = np.memmap(codes_file, np.uint8, "r") if total else np.zeros(0, np.uint8)
    refine_path = path.with_suffix(REFINE_SUFFIX)
    temps = {}
    try:
        for target in (refine_path, path):
            temps[target] = temp_beside(target)
        # faiss writes the codes through a view of the map (a MaybeOwnedVector that does not own them)
        view = faiss.MaybeOwnedVectorUInt8()
        view.is_owned, view.view_data, view.view_size = False, faiss.swig_ptr(codes), codes.size
        view.c_ptr, view.c_size = view.view_data, codes.size
        refine.codes, refine.ntotal = view, total
        try:
            faiss.write_index(refine, temps[refine_path])
        finally:
            refine.codes, refine.ntotal = faiss.MaybeOwnedVectorUInt8(), 0
            del view, codes  # closes the map
        faiss.write_index(base, temps[path])
        index = _open_refined(temps[path], temps[refine_path], built=trained)
        tuned = _tune(index, truth.queries, truth.ids()) if total else (NPROBE_STEPS[0], 1.0, REFINE_FACTORS[0])
        for target in (refine_path, path):  # the codes first: an index file never names missing codes
            commit_temp(temps.pop(target), target)  # the open codes file is the renamed one (same inode)
    finally:
        for name in temps.values():
            remove_quietly(name)
    return _with_settings(index, tuned[0], tuned[2]), tuned


def _write_ondisk_lists(trained: faiss.Index, numbered: Iterator[tuple[np.ndarray, np.ndarray]], truth: _ExactTop,
                        parts_dir: Path, path: Path) -> tuple[int, float, int]:
    """The IVF,SQ8 kind (before issue #20's re-ranking): each part added to its own copy of
    `trained`, written to `parts_dir`, the parts' lists merged into `path` + ONDISK_SUFFIX."""
    lists_path = path.with_suffix(ONDISK_SUFFIX)
    lists_tmp = None
    try:
        part_files = []
        for part, ids in numbered:
            piece = faiss.clone_index(trained)
            for start in range(0, len(part), ADD_CHUNK):
                piece.add_with_ids(part[start:start + ADD_CHUNK], ids[start:start + ADD_CHUNK])
            part_files.append((parts_dir / f"{len(part_files):05d}.faiss").as_posix())
            faiss.write_index(piece, part_files[-1])
            del piece
        total = truth.total
        lists_tmp = temp_beside(lists_path)
        with _c_stdout_to_stderr():
            index = _merge_parts(trained, part_files, lists_tmp, lists_path.name)
        tuned = _tune(index, truth.queries, truth.ids()) if total else (NPROBE_STEPS[0], 1.0, 0)
        header = faiss.serialize_index(index).tobytes()
        del index  # unmaps and closes the lists file
        commit_temp(lists_tmp, lists_path)
        lists_tmp = None
        atomic_write_bytes(path, header, backup=False)
    finally:
        if lists_tmp is not None:
            remove_quietly(lists_tmp)
    return tuned


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


def open_index(path: str | os.PathLike, nprobe: int, k_factor: int = 0) -> faiss.Index:
    """An index file written by `build_ondisk_index`: with `k_factor` (the re-ranked kind) the
    fast-scan index read into memory and its SQ8 codes read row by row, as queries re-rank them,
    from the REFINE_SUFFIX file beside it (`PreadRefine`); without (the IVF,SQ8 kind) its inverted
    lists memory-mapped from the lists file beside it (pages read as queries touch them, which the
    kernel may drop again). A file written by `BuiltIndex.to_bytes` is read into memory.
    RuntimeError when damaged."""
    path = Path(path)
    if k_factor:
        index = _open_refined(path, path.with_suffix(REFINE_SUFFIX))
    else:
        with _c_stdout_to_stderr():
            index = faiss.read_index(path.as_posix(), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    return _with_settings(index, nprobe, k_factor)


def _open_refined(path: str | os.PathLike, refine_path: str | os.PathLike,
                  built: faiss.IndexRefine | None = None) -> faiss.Index:
    """The fast-scan index read from `path` into memory (or the one of `built`, the index that
    wrote these files, not read back), re-ranked on the SQ8 codes of `refine_path`, read row by
    row where the system can (`PreadRefine`), through a map otherwise (faiss refuses the pair
    when their sizes or dimensions differ: RuntimeError)."""
    base = faiss.read_index(Path(path).as_posix()) if built is None else faiss.downcast_index(built.base_index)
    # mapped, never touched by PreadRefine: faiss checks the header and the size against `base`
    refine = faiss.read_index(Path(refine_path).as_posix(), faiss.IO_FLAG_MMAP_IFC)
    faiss.extract_index_ivf(base)  # RuntimeError when it is not an IVF index
    if not isinstance(refine, faiss.IndexScalarQuantizer):
        raise RuntimeError(f"{refine_path} does not hold re-ranking codes")
    # faiss's Python wrapper keeps both alive with the index; `built` owns `base`: kept too
    index = PreadRefine(base, refine, refine_path) if hasattr(os, "pread") else faiss.IndexRefine(base, refine)
    if built is not None:
        index.referenced_objects.append(built)
    return index


class PreadRefine(faiss.IndexRefine):
    """faiss's `IndexRefine` (fast-scan candidates re-ranked on SQ8 codes, inner product) whose
    re-ranking reads each candidate's code from the `.refine` file with `pread` instead of
    through a memory map.

    Why: a query re-ranks `k_factor` x k random rows (3,200 at 12.5M regions). Through a map every
    fault also maps the cached pages around it (the kernel's fault-around, 64 KB), so 100 queries
    left nearly the whole codes file (1.4 GB at 12.5M) resident in the searching process: 2.5 GB
    peak against issue #20's 2 GB. Rows read with `pread` stay in the kernel's page cache, shared
    and dropped under memory pressure, and never count in the process (1.2 GB peak); a read costs
    ~1.3 us from the page cache (docs/index.md). Results equal `IndexRefine`'s to float rounding
    (the same candidates, the same decoded codes, summed by numpy). Only `search`, `reconstruct`
    and `reconstruct_batch` are served here: nothing else reads the codes."""

    QUERY_BLOCK = 16  # queries decoded together: bounds a batch's decoded rows (tuning asks 200 at once)
    RUN_GAP = 4  # rows between two wanted ones read with them rather than apart (448 bytes at 112 dims)
    # declared on the class: faiss's wrappers refuse attributes a SWIG class does not have
    _base = _refine = _file = None
    _row = _start = 0

    def __init__(self, base: faiss.Index, refine: faiss.IndexScalarQuantizer, codes_path: str | os.PathLike):
        super().__init__(base, refine)
        if base.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise RuntimeError("re-ranking by reading rows is written for inner-product indexes")
        self._base, self._refine, self._row = base, refine, int(refine.code_size)
        self._file = open(codes_path, "rb", buffering=0)  # closed with the index
        # faiss writes an IndexScalarQuantizer's codes last, after their byte count (uint64)
        n_bytes = int(refine.ntotal) * self._row
        self._start = os.fstat(self._file.fileno()).st_size - n_bytes
        if self._start < 8 or int.from_bytes(os.pread(self._file.fileno(), 8, self._start - 8), "little") != n_bytes:
            self._file.close()
            raise RuntimeError(f"{codes_path} does not end with the re-ranking codes of {refine.ntotal} regions")

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The decoded codes of `ids` (int64 [m], each in 0..ntotal-1), float32 [m, d], in order.
        Each run of ids at most RUN_GAP rows apart is one read (a photo's regions have
        consecutive ids, and a query's candidates often hold several regions of one photo)."""
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            return np.zeros((0, self.d), np.float32)
        if ids.min() < 0 or ids.max() >= self.ntotal:
            raise RuntimeError(f"region ids outside 0..{self.ntotal - 1}")
        wanted, where = np.unique(ids, return_inverse=True)
        cut = np.flatnonzero(np.diff(wanted) > self.RUN_GAP) + 1
        first, last = wanted[np.r_[0, cut]], wanted[np.r_[cut - 1, len(wanted) - 1]]
        fd, row, lengths = self._file.fileno(), self._row, last - first + 1
        pread = os.pread
        data = b"".join([pread(fd, n, at) for n, at in zip((lengths * row).tolist(),
                                                            (self._start + first * row).tolist())])
        read = np.cumsum(lengths)  # rows read up to the end of each run
        if len(data) != int(read[-1]) * row:
            raise RuntimeError("the re-ranking codes file is shorter than recorded")
        run = np.searchsorted(first, wanted, side="right") - 1
        at = read[run] - lengths[run] + (wanted - first[run])  # each wanted row in `data`
        codes = np.frombuffer(data, np.uint8).reshape(-1, row)[at]
        return self._refine.sa_decode(codes)[where.ravel()]

    def search(self, x, k, *, params=None, D=None, I=None):
        """As `IndexRefine.search`: `params` may be an `IndexRefineSearchParameters` (its
        `k_factor` and `base_index_params` then apply to this search)."""
        if D is not None or I is not None:
            raise TypeError("PreadRefine.search returns new arrays (no D or I to fill)")
        factor, base_params = (self.k_factor, None) if params is None else (params.k_factor,
                                                                           params.base_index_params)
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, self.d)
        k = int(k)
        sims = np.full((len(x), k), -np.inf, np.float32)
        labels = np.full((len(x), k), -1, np.int64)
        for start in range(0, len(x), self.QUERY_BLOCK):
            block = x[start:start + self.QUERY_BLOCK]
            _, candidates = self._base.search(block, max(int(k * factor), k), params=base_params)
            valid = candidates >= 0  # faiss pads the end of a row with -1 when fewer were found
            vectors = self.rows(candidates[valid])  # row-major: each query's candidates in turn
            ends = np.cumsum(valid.sum(axis=1)).tolist()
            for q, (found, end, count) in enumerate(zip(candidates, ends, valid.sum(axis=1).tolist()), start):
                scores = vectors[end - count:end] @ x[q]
                best = np.argsort(-scores, kind="stable")[:k]
                sims[q, :len(best)], labels[q, :len(best)] = scores[best], found[:count][best]
        return sims, labels

    def reconstruct(self, key, recons=None):
        return self.rows(np.array([key]))[0]

    def reconstruct_batch(self, key, recons=None):
        return self.rows(np.ravel(key))


def _with_settings(index: faiss.Index, nprobe: int, k_factor: int) -> faiss.Index:
    if k_factor and not isinstance(index, faiss.IndexRefine):
        raise RuntimeError("a re-ranking factor was recorded for an index that does not re-rank")
    if nprobe:
        faiss.extract_index_ivf(index).nprobe = nprobe
    if k_factor:
        index.k_factor = k_factor
    return index


def _tuning_queries(vectors: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    rows = rng.choice(len(vectors), min(TUNING_QUERIES, len(vectors)), replace=False)
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def _tune(index: faiss.Index, queries: np.ndarray, truth: np.ndarray) -> tuple[int, float, int]:
    """(nprobe, recall, k_factor) set on `index`: the first setting, cheapest first, whose recall
    against `truth` reaches TARGET_RECALL (REFINED_TARGET_RECALL for the re-ranked kind)."""
    k = truth.shape[1]
    ivf = faiss.extract_index_ivf(index)
    if not isinstance(index, faiss.IndexRefine):
        recall = 0.0
        for nprobe in NPROBE_STEPS:
            if nprobe > max(ivf.nlist // 4, NPROBE_STEPS[0]):
                break
            ivf.nprobe = nprobe
            _, found = index.search(queries, k)
            recall = recall_at(found, truth)
            log.info("nprobe %d: recall@%d %.3f", nprobe, k, recall)
            if recall >= TARGET_RECALL:
                return nprobe, recall, 0
        return ivf.nprobe, recall, 0
    # Re-ranked: fast-scan probing is cheap enough to go up to every list, so the cap is the
    # measured time of one query, not a share of the lists; the most recall within it otherwise.
    best = None
    probes = [p for p in (1 << e for e in range(3, 31)) if p < ivf.nlist] + [ivf.nlist]
    for nprobe in probes:
        for k_factor in REFINE_FACTORS:
            ivf.nprobe, index.k_factor = nprobe, k_factor
            ms = _query_ms(index, queries[:LATENCY_QUERIES], k)
            if ms > QUERY_MS_BUDGET and best is not None:
                ivf.nprobe, index.k_factor = best[0], best[2]
                return best
            _, found = index.search(queries, k)
            recall = recall_at(found, truth)
            log.info("nprobe %d, k_factor %d: recall@%d %.3f, %.1f ms a query", nprobe, k_factor, k, recall, ms)
            if best is None or recall > best[1]:
                best = (nprobe, recall, k_factor)
            if recall >= REFINED_TARGET_RECALL:
                return best
    ivf.nprobe, index.k_factor = best[0], best[2]
    return best


def _query_ms(index: faiss.Index, queries: np.ndarray, k: int) -> float:
    """Median milliseconds of one query at a time on one thread, as the Searcher asks."""
    times = []
    with single_thread():
        for q in queries:
            start = time.perf_counter()
            index.search(q[None], k)
            times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def search_regions(index: faiss.Index, x: np.ndarray, k: int, wanted: int) -> tuple[np.ndarray, np.ndarray]:
    """The best `k` regions of `index` for each row of `x`, re-ranking (the large collections'
    index) only as many candidates as a search for the best `wanted` would: `k_factor` x wanted,
    at least k. The Searcher asks for 4x as many regions as the photos it wants (a photo has
    several), and the recall the index is tuned to is that of the best `wanted`; re-ranking
    `k_factor` x k candidates would read 4x the codes (12,800 instead of 3,200 rows a query at
    12.5M regions) for regions that only fill up the list of photos."""
    if not isinstance(index, faiss.IndexRefine) or k <= wanted:
        return index.search(x, k)
    params = faiss.IndexRefineSearchParameters()
    params.k_factor = max(1.0, float(index.k_factor) * wanted / k)
    return index.search(x, k, params=params)


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


def load_index(data: bytes, nprobe: int, k_factor: int = 0) -> faiss.Index:
    return _with_settings(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)), nprobe, k_factor)


def reconstruct(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """Stored (possibly quantised) vectors of `ids`, for scoring candidates against negatives."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if index.ntotal and "IVF" in type(index).__name__:
        ivf = faiss.extract_index_ivf(index)
        if ivf.direct_map.type == faiss.DirectMap.NoMap:
            ivf.make_direct_map()
    return index.reconstruct_batch(ids)
