#!/usr/bin/env bash
# Images per second of exact, fast and moments DASR* extraction on a GPU, for resnet50 (random weights
# when no torchvision file is in the hub cache) and the embedded efficientnet-lite0. Prints JSON.
#
#   bash benchmarks/gpu_extract.sh [--device cuda|cpu] [--images N] [--max-side PX] [--bf16] [--end-to-end K]
#
# On a machine without CUDA, `--device cpu --images 2` runs the same code quickly (a smoke test).
# Photos come from ../shared/data/dev when present, else seeded random images (said in the JSON).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON="python3"; fi
fi

# The repo root is the package `dasr_annotator`; expose it without installing.
PKG_PARENT="$(mktemp -d)"
trap 'rm -rf "$PKG_PARENT"' EXIT
ln -s "$REPO" "$PKG_PARENT/dasr_annotator"

PYTHONPATH="$PKG_PARENT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" - "$REPO" "$@" <<'PY'
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dasr_annotator.engine.dasr.backbones import WeightsMissing
from dasr_annotator.engine.dasr.extractor import Extractor
from dasr_annotator.engine.store.imageio import load_image

repo = Path(sys.argv[1])
ap = argparse.ArgumentParser(prog="gpu_extract.sh")
ap.add_argument("--device", default="cuda")
ap.add_argument("--images", type=int, default=20)
ap.add_argument("--max-side", type=int, default=None, help="default 512 on CUDA, 128 for the CPU smoke run")
ap.add_argument("--bf16", action="store_true", help="bfloat16 transposed convs in exact and fast modes")
ap.add_argument("--batch", type=int, default=None, help="images per forward pass (default: 8 on CUDA, 1 on CPU)")
ap.add_argument("--backbones", default="resnet50,efficientnet-lite0")
ap.add_argument("--end-to-end", type=int, default=0, metavar="PER_SEQUENCE",
                help="also index that many dev photos per sequence through the indexer (decoder threads, "
                     "extraction, storage, index) with the embedded backbone and report wall s per photo")
args = ap.parse_args(sys.argv[2:])
if args.device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("CUDA is not available here; run with --device cpu for the CPU fallback")
if args.max_side is None:
    args.max_side = 512 if args.device.startswith("cuda") else 128
if not args.device.startswith("cuda"):
    torch.set_num_threads(1)  # steadier than competing OpenMP threads on a shared CPU

dev = repo.parent / "shared" / "data" / "dev"
if (dev / "manifest.json").exists():
    manifest = json.loads((dev / "manifest.json").read_text())
    files = sorted({im["file"] for inst in manifest["instances"] for im in inst["images"]})
    step = max(1, len(files) // args.images)
    images = [load_image(dev / f) for f in files[::step][: args.images]]
    source = f"dev photos ({len(images)})"
else:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (384, 512, 3), dtype=np.uint8) for _ in range(args.images)]
    source = f"seeded random images ({len(images)})"


def sync():
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(backbone: str, mode: str) -> dict:
    kwargs = dict(mode=mode, device=args.device, max_side=args.max_side)
    if args.bf16:
        kwargs["transpose_dtype"] = torch.bfloat16
    weights = "pretrained"
    try:
        ex = Extractor(backbone, **kwargs)
    except WeightsMissing:
        ex, weights = Extractor(backbone, pretrained=False, **kwargs), "random"
    ex.extract(images[0])  # warm-up: kernels, allocator
    sync()
    start = time.perf_counter()
    results = ex.extract_many(images, batch_size=args.batch)  # equal-size images share forwards
    seeds = sum(r.seeds for r in results)
    regions = sum(len(r.regions) for r in results)
    sync()
    seconds = time.perf_counter() - start
    out = {"backbone": backbone, "mode": mode, "weights": weights, "images_per_s": len(images) / seconds,
           "batch": args.batch or (8 if args.device.startswith("cuda") else 1),
           "s_per_image": seconds / len(images), "seeds_per_image": seeds / len(images),
           "regions_per_image": regions / len(images)}
    if args.device.startswith("cuda"):
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return out


results = [measure(b, m) for b in args.backbones.split(",") for m in ("exact", "fast", "moments")]
name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
report = {"device": args.device, "device_name": name, "torch": torch.__version__, "images": source,
          "max_side": args.max_side, "batch_note": "images of equal input size share forward passes",
          "bf16_transposes": args.bf16, "results": results}
if args.end_to_end and (dev / "manifest.json").exists():
    sys.path.insert(0, str(repo / "benchmarks"))
    import index_speed  # noqa: E402  (512 px, the indexer's own settings)

    report["end_to_end_indexing"] = index_speed.measure(args.end_to_end, ["moments", "fast"], 1, args.device)
print(json.dumps(report, indent=1))
PY
