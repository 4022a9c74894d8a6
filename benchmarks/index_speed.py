"""End-to-end indexing speed: `Project.update_index` over a folder of dev photos, per mode, with
one photo per core (the indexer's way on a CPU) against one photo at a time on all threads.

    .venv/bin/python benchmarks/index_speed.py [--photos 4] [--modes moments,fast] [--repeats 2] [--device cpu] [--json]

Copies `--photos` frames of each dev sequence into a temporary folder and indexes it from
scratch each time (decode, extraction, hashing, shards, relocation maps, whitening and the faiss
index; not the start-up). Prints wall seconds per photo; the two ways alternate, so a busy
machine shows in both.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "dev"

from dasr_annotator.engine.dasr.extractor import Extractor  # noqa: E402
from dasr_annotator.engine.project.project import Project  # noqa: E402


def copy_photos(target: Path, per_sequence: int) -> int:
    count = 0
    for sequence in sorted(p for p in (DEV / "images").iterdir() if p.is_dir()):
        frames = sorted(sequence.iterdir())
        step = max(1, len(frames) // per_sequence)
        for frame in frames[step // 2::step][:per_sequence]:
            shutil.copy(frame, target / f"{sequence.name}_{frame.name}")
            count += 1
    return count


def measure(per_sequence: int, modes: list[str], repeats: int, device: str = "cpu") -> dict:
    """Wall seconds per photo for each mode and each way, best of `repeats`."""
    out = {"device": device, "cores": torch.get_num_threads(), "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp)
        out["photos"] = copy_photos(photos, per_sequence)
        for mode in modes:
            ex = Extractor(mode=mode, device=device)
            side_by_side = ex.parallel_images
            runs = {"photo_per_core": [], "one_photo_all_threads": []}
            for _ in range(repeats):
                for way in runs:
                    shutil.rmtree(photos / ".dasr", ignore_errors=True)
                    ex.parallel_images = side_by_side if way == "photo_per_core" else (lambda: 1)
                    start = time.perf_counter()
                    report = Project.open(photos).update_index(ex)
                    runs[way].append((time.perf_counter() - start) / report.indexed)
            out["modes"][mode] = {way: min(v) for way, v in runs.items()} | {"runs": runs}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=4, help="frames per dev sequence")
    ap.add_argument("--modes", default="moments,fast")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (on a GPU both ways are the same: batches)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = measure(args.photos, args.modes.split(","), args.repeats, args.device)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{out['photos']} photos, {out['device']}, {out['cores']} cores; wall s per photo (best of {args.repeats})")
        for mode, r in out["modes"].items():
            print(f"{mode:8s} photo per core {r['photo_per_core']:.3f}   one photo, all threads "
                  f"{r['one_photo_all_threads']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
