"""Cost of re-localisation next to extraction, on real photos (ratios from one run).

Per photo: DASR* extraction, the relocation map made while indexing, and one window search (what
each hit of a search costs once the map is stored); then what feedback costs per hit: the search
with 8 accepted boxes as further queries, the same never onto two rejected boxes, and a second
look at a rejected photo. Prints JSON.

    .venv/bin/python benchmarks/relocate_speed.py ../shared/data/dev/manifest.json --photos 20
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from dasr_annotator.engine.dasr.extractor import Extractor
from dasr_annotator.engine.dasr.relocate import MAX_FEEDBACK_WINDOWS, WindowQuery, best_window, second_look, window_query
from dasr_annotator.engine.evaluation.manifest import load_manifest
from dasr_annotator.engine.store.imageio import load_image
from dasr_annotator.engine.types import Box


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    manifest = load_manifest(args.manifest)
    files = manifest.files[:: max(1, len(manifest.files) // args.photos)][: args.photos]
    extractor = Extractor(max_side=args.max_side)
    first = next(iter(manifest.gt))
    query_image = load_image(manifest.root / first[1], max_side=args.max_side)
    _, windows = extractor.describe_query(query_image, Box.from_list(manifest.gt[first].tolist()))
    extract, relocation_map, window, fed, excluding, look = [], [], [], [], [], []
    examples = []
    for file in files:
        image = load_image(manifest.root / file, max_side=args.max_side)
        start = time.perf_counter()
        extractor.extract(image)
        extract.append(time.perf_counter() - start)
        start = time.perf_counter()
        fmap = extractor.relocation_map(image)
        relocation_map.append(time.perf_counter() - start)
        start = time.perf_counter()
        _, box = best_window(fmap, windows)
        window.append(time.perf_counter() - start)
        examples = (examples + [window_query(fmap, box)])[-MAX_FEEDBACK_WINDOWS:]  # stand-ins for accepted boxes
        taught = WindowQuery.stack([windows] + examples)
        rejected = [box, Box(box.x + box.w / 2, box.y, box.w, box.h)]
        for timings, call in ((fed, lambda: best_window(fmap, taught)),
                              (excluding, lambda: best_window(fmap, taught, exclude=rejected)),
                              (look, lambda: second_look(fmap, taught, rejected))):
            start = time.perf_counter()
            call()
            timings.append(time.perf_counter() - start)
    out = {
        "photos": len(files), "threads": args.threads, "max_side": args.max_side,
        "relocation_layer": extractor.backbone.relocation_layer,
        "map_bytes": int(fmap.values.nbytes),
        "extract_s_per_image": float(np.mean(extract)),
        "relocation_map_s_per_image": float(np.mean(relocation_map)),
        "map_cost_vs_extract": float(np.sum(relocation_map) / np.sum(extract)),
        "window_search_ms_per_hit": 1000 * float(np.mean(window)),
        "feedback_window_search_ms_per_hit": 1000 * float(np.mean(fed[len(fed) // 2:])),  # once 8 examples exist
        "excluding_rejected_ms_per_hit": 1000 * float(np.mean(excluding[len(excluding) // 2:])),
        "second_look_ms_per_photo": 1000 * float(np.mean(look[len(look) // 2:])),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
