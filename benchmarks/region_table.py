"""Memory and time of the Searcher's region table at the paper's scale (12.5M regions, ~1M photos):
the memory-mapped `.npy` columns an index writes now against the `index-<gen>.npz` of indexes
written before (search/region_table.py).

    PYTHONPATH=<worktree>-path nice -n 10 .venv/bin/python benchmarks/region_table.py \
        --regions 12500000 --photos 1040000 [--json] [--folder DIR]

Writes a seeded synthetic table in both layouts (names like "trip-0042/IMG_01234567.jpg", boxes and
ellipses inside 4000 x 3000 photos, regions grouped by photo as indexing writes them), then, for
each, a fresh process opens a Searcher on it the way `Project.searcher` does, with a stand-in index
that only returns region ids (the table alone is measured, not faiss), and reports: peak RSS
(VmHWM) after the imports and after opening, the open time, the median time of `region_rows` for
one photo, and of one `search` returning 100 hits (400 candidate regions ranked into photos, the
hits' names, boxes and ellipses read), and the peak RSS after 100 such searches.
`--child LAYOUT --folder DIR` is that process (also run against an older checkout to measure it).
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEARCHES = 100
TOP_K = 100


def status_mb(field: str) -> float:
    """A /proc/self/status memory figure (VmHWM: peak RSS; VmRSS: now) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_table(regions: int, photos: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    # every photo has at least one region; the rest are spread at random, grouped by photo
    image = np.sort(np.concatenate([np.arange(photos), rng.integers(0, photos, regions - photos)])).astype(np.int32)
    sizes = np.tile(np.array([[4000, 3000]], np.int32), (photos, 1))
    xy = rng.uniform(0, 3000, (regions, 2)).astype(np.float32)
    wh = rng.uniform(16, 1000, (regions, 2)).astype(np.float32)
    boxes = np.concatenate([xy, wh], 1)
    ellipses = np.concatenate([xy + wh / 2, wh / 2, rng.uniform(-90, 90, (regions, 1)).astype(np.float32)], 1)
    names = [f"trip-{i // 2000:04d}/IMG_{i:08d}.jpg" for i in range(photos)]
    return {"names": names, "sizes": sizes, "image": image, "boxes": boxes, "ellipses": ellipses,
            "scores": rng.uniform(0, 1, regions).astype(np.float32)}


def write_both(folder: Path, table: dict) -> dict:
    from dasr_annotator.engine.search import region_table

    t = time.perf_counter()
    buffer = io.BytesIO()  # what `Project._save_arrays` wrote for an index before
    np.savez(buffer, images=np.array(table["names"], dtype=str), sizes=table["sizes"], image=table["image"],
             boxes=table["boxes"], ellipses=table["ellipses"], scores=table["scores"])
    (folder / "index-old.npz").write_bytes(buffer.getvalue())
    npz_s = time.perf_counter() - t
    t = time.perf_counter()
    files = region_table.table_files("new")
    region_table.write_table(folder, files, table["names"], table["sizes"], table["image"], table["boxes"],
                             table["ellipses"], table["scores"])
    npy_s = time.perf_counter() - t
    (folder / "files.json").write_text(json.dumps(files))
    return {"npz_write_s": round(npz_s, 2), "npy_write_s": round(npy_s, 2),
            "npz_mb": round((folder / "index-old.npz").stat().st_size / 1e6, 1),
            "npy_mb": round(sum((folder / f).stat().st_size for f in files.values()) / 1e6, 1)}


class _NoProject:
    photos = None


class _RegionIds:
    """A stand-in faiss index over `n` regions: `search` returns k random region ids, best first."""

    def __init__(self, n: int, seed: int):
        self.ntotal, self.d = n, 8
        self.rng = np.random.default_rng(seed)

    def search(self, queries, k):
        ids = self.rng.integers(0, self.ntotal, (len(queries), k))
        sims = np.sort(self.rng.uniform(0, 1, (len(queries), k)).astype(np.float32), 1)[:, ::-1]
        return sims, ids


def child(layout: str, folder: Path) -> dict:
    from dasr_annotator.engine.search.searcher import Searcher

    out = {"layout": layout, "imports_hwm_mb": round(status_mb("VmHWM"), 1),
           "imports_rss_file_mb": round(status_mb("RssFile"), 1), "imports_rss_anon_mb": round(status_mb("RssAnon"), 1)}
    t = time.perf_counter()
    if layout == "npz":  # as `Project.searcher` reads an index written before
        with np.load(folder / "index-old.npz", allow_pickle=False) as z:
            meta = {k: z[k] for k in ("images", "sizes", "image", "boxes", "ellipses")}
        n = len(meta["image"])
    else:
        from dasr_annotator.engine.search import region_table

        meta = region_table.open_table(folder, json.loads((folder / "files.json").read_text()))
        n = len(meta.image)
    searcher = Searcher(_NoProject(), None, _RegionIds(n, seed=1), meta, None)
    out["open_s"] = round(time.perf_counter() - t, 3)
    out["open_hwm_mb"] = round(status_mb("VmHWM"), 1)
    rng = np.random.default_rng(2)
    names = [searcher.images[int(i)] for i in rng.integers(0, len(searcher.images), 100)]
    times = []
    for name in names:
        t = time.perf_counter()
        rows = searcher.region_rows([name])
        times.append(time.perf_counter() - t)
        assert len(rows) and {searcher.images[int(i)] for i in searcher.region_image[rows]} == {name}
    out["region_rows_ms"] = round(1000 * float(np.median(times)), 3)
    times = []
    query = np.ones((1, 8), np.float32)
    for _ in range(SEARCHES):
        t = time.perf_counter()
        hits = searcher.search(query, top_k=TOP_K)
        times.append(time.perf_counter() - t)
        assert len(hits) == TOP_K
    out["search_100_hits_ms"] = round(1000 * float(np.median(times)), 3)
    out["after_searches_hwm_mb"] = round(status_mb("VmHWM"), 1)
    out["after_searches_rss_mb"] = round(status_mb("VmRSS"), 1)
    # of which pages of mapped files (the page cache's, dropped first under memory pressure) and
    # the process's own memory
    out["after_searches_rss_file_mb"] = round(status_mb("RssFile"), 1)
    out["after_searches_rss_anon_mb"] = round(status_mb("RssAnon"), 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regions", type=int, default=12_500_000)
    ap.add_argument("--photos", type=int, default=1_040_000)
    ap.add_argument("--folder", type=Path, help="where the tables are (kept); a temporary folder if not given")
    ap.add_argument("--child", choices=["npz", "npy"], help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.folder)))
        return 0
    folder = args.folder or Path(tempfile.mkdtemp(prefix="region-table-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        result = {"regions": args.regions, "photos": args.photos}
        if not (folder / "files.json").exists():
            result.update(write_both(folder, synthetic_table(args.regions, args.photos)))
        for layout in ("npz", "npy"):
            done = subprocess.run([sys.executable, __file__, "--child", layout, "--folder", str(folder)],
                                  capture_output=True, text=True, check=True)
            result[layout] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result, indent=None if args.json else 1))  # one line for tools, indented for people
    return 0


if __name__ == "__main__":
    sys.exit(main())
