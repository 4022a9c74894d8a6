"""Indexing on Ray (`index --ray`) against local indexing, on the same dev photos.

    nice -n 10 .venv/bin/python benchmarks/ray_index.py [--photos 200] [--actors 1,2] [--json]

Copies `--photos` dev frames (spread evenly over the sequences) into a temporary folder, indexes
them from scratch in a child process (`Project.update_index`, one photo per core; in a session of
its own, see `run_local`; before and after the Ray runs, the faster of the two is the reference),
then on a local Ray instance with each number of extractor actors (`cluster.index_on_ray`; the Ray
instance is started once, outside the timings; each run's actor start-up is inside them). For each
run: wall seconds, photos/s, and the steady rate between the first and the last photo received
(the start-up left out) and the load average at its end (on a shared machine the runs differ by
the load as much as by the way). The overhead per photo is Ray's steady seconds per photo minus
local's (with as many actors as local indexing uses cores). Then the equality check: every Ray
project's regions equal the local one's (largest difference of descriptors, boxes, ellipses,
scores) and the top-20 hits of one query per dev instance (its first frame's box) are the same
photos with the same scores (coarse hits, `refine=False`: refined boxes follow from the same
stored maps).
Needs the `cluster` extra (`pip install -e '.[cluster]'`) and ../shared/data/dev.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "dev"

from dasr_annotator.engine.dasr.extractor import Extractor  # noqa: E402
from dasr_annotator.engine.project.cluster import index_on_ray, ray_session  # noqa: E402
from dasr_annotator.engine.project.project import Project  # noqa: E402
from dasr_annotator.engine.store.collection import RegionStore  # noqa: E402
from dasr_annotator.engine.types import Box  # noqa: E402


def copy_photos(target: Path, count: int) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """`count` dev frames spread evenly; returns (files, one query (file, box) per instance)."""
    manifest = json.loads((DEV / "manifest.json").read_text())
    files = sorted({item["file"] for inst in manifest["instances"] for item in inst["images"]})
    step = len(files) / count
    chosen = [files[int(i * step)] for i in range(min(count, len(files)))]
    for rel in chosen:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(DEV / rel, target / rel)
    taken = set(chosen)
    queries = []
    for inst in manifest["instances"]:
        inside = [item for item in inst["images"] if item["file"] in taken]
        if inside:
            queries.append((inside[0]["file"], inside[0]["box"]))
    return chosen, queries


class Timer:
    """progress(done, total) that notes when the first and the last photo came back."""

    def __init__(self):
        self.start, self.first, self.last, self.done = time.perf_counter(), None, None, 0

    def __call__(self, done: int, total: int) -> None:
        if done > self.done:
            now = time.perf_counter()
            if self.first is None:
                self.first, self.first_done = now, done
            self.last, self.done = now, done

    def steady_s_per_photo(self) -> float | None:
        if self.first is None or self.done <= self.first_done:
            return None
        return (self.last - self.first) / (self.done - self.first_done)


def run(photos: Path, how) -> dict:
    shutil.rmtree(photos / ".dasr", ignore_errors=True)
    timer = Timer()
    report = how(Project.open(photos), timer)
    wall = time.perf_counter() - timer.start
    return {"load_average_1min": round(os.getloadavg()[0], 1), "wall_s": round(wall, 2), "photos": report.indexed, "photos_per_s": round(report.indexed / wall, 3),
            "startup_s": round(timer.first - timer.start, 2) if timer.first else None,
            "steady_s_per_photo": round(timer.steady_s_per_photo() or float("nan"), 4)}


def run_local(photos: Path) -> dict:
    """Local indexing in a child process, in a session of its own: it imports no Ray, and on a
    shared machine (Linux shares the CPU between sessions first, autogroup scheduling) it gets a
    share of its own, while the Ray runs share the benchmark's session: if anything, this favours
    local indexing."""
    child = subprocess.run([sys.executable, __file__, "--local-child", str(photos)], capture_output=True,
                           text=True, start_new_session=True, check=True)
    return json.loads(child.stdout)


def snapshot(photos: Path, queries) -> dict:
    """The stored regions and the coarse top-20 hits of each query, to compare runs."""
    project = Project.open(photos)
    store = RegionStore(project.state_dir)
    files = sorted(store.entries)
    arrays = store.read(files)
    searcher = project.searcher(Extractor(device="cpu", **project.stored_extractor_args()))
    hits = [[(h.image, h.score) for h in searcher.search_box(photos / rel, Box.from_list(box), top_k=20,
                                                               refine=False)]
            for rel, box in queries]
    return {"files": files, "arrays": arrays, "hits": hits}


def compare(a: dict, b: dict) -> dict:
    def largest_difference(name: str) -> float:
        x, y = getattr(a["arrays"], name), getattr(b["arrays"], name)
        return float(np.abs(x.astype(np.float32) - y.astype(np.float32)).max())

    diff = (max(largest_difference(k) for k in ("descriptors", "boxes", "ellipses", "scores"))
            if a["files"] == b["files"] else float("inf"))
    same_hits = sum(1 for x, y in zip(a["hits"], b["hits"])
                    if [i for i, _ in x] == [i for i, _ in y]
                    and np.allclose([s for _, s in x], [s for _, s in y], atol=1e-5))
    return {"same_files": a["files"] == b["files"], "max_region_difference": diff,
            "queries_with_same_top20": f"{same_hits}/{len(a['hits'])}",
            "equal": a["files"] == b["files"] and diff <= 1e-5 and same_hits == len(a["hits"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--actors", default="1,2", help="comma-separated numbers of Ray actors")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--local-child", metavar="PHOTOS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.local_child:
        extractor = Extractor(device="cpu")
        print(json.dumps(run(Path(args.local_child), lambda p, t: p.update_index(extractor, progress=t))))
        return 0
    if not (DEV / "manifest.json").exists():
        print(f"dev data not found at {DEV}", file=sys.stderr)
        return 2
    out = {"cores": os.cpu_count(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        files, queries = copy_photos(photos, args.photos)
        out["photos"], out["queries"] = len(files), len(queries)
        out["runs"]["local"] = run_local(photos)
        print("local", out["runs"]["local"], file=sys.stderr, flush=True)
        reference = snapshot(photos, queries)
        started = time.perf_counter()
        with ray_session():
            out["ray_init_s"] = round(time.perf_counter() - started, 2)
            for actors in [int(a) for a in args.actors.split(",")]:
                name = f"ray_{actors}_actor{'s' if actors > 1 else ''}"
                out["runs"][name] = run(photos, lambda p, t: index_on_ray(p, {}, actors=actors, progress=t))
                out["runs"][name]["equality"] = compare(reference, snapshot(photos, queries))
                print(name, out["runs"][name], file=sys.stderr, flush=True)
        out["runs"]["local_after"] = run_local(photos)
        print("local_after", out["runs"]["local_after"], file=sys.stderr, flush=True)
    local = max(out["runs"]["local"], out["runs"]["local_after"], key=lambda r: r["photos_per_s"])
    for name, r in out["runs"].items():
        if name.startswith("ray"):
            r["photos_per_s_vs_local"] = round(r["photos_per_s"] / local["photos_per_s"], 3)
            r["overhead_s_per_photo"] = round(r["steady_s_per_photo"] - local["steady_s_per_photo"], 4)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{out['photos']} photos, {out['cores']} cores, Ray start {out.get('ray_init_s')} s")
        for name, r in out["runs"].items():
            extra = (f"  x{r['photos_per_s_vs_local']} of local, overhead {r['overhead_s_per_photo']:+.4f} s/photo, "
                     f"equal: {r['equality']['equal']} (max diff {r['equality']['max_region_difference']:.1e}, "
                     f"top-20 {r['equality']['queries_with_same_top20']})") if name.startswith("ray") else ""
            print(f"{name:14s} {r['photos_per_s']:.2f} photos/s ({r['wall_s']} s, start-up {r['startup_s']} s, "
                  f"steady {r['steady_s_per_photo']} s/photo, load {r['load_average_1min']}){extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
