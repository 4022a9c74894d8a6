"""How long an annotator waits for refined boxes, as the window gets them.

    .venv/bin/python benchmarks/refine_latency.py PHOTOS MANIFEST [--queries N] [--top 100]
        [--device auto|cpu|cuda] [--threads T] [--no-second-look]

PHOTOS is a folder indexed from MANIFEST's photos (benchmarks/located.py --keep --work DIR leaves
one at DIR/photos). For each query (the instance's box in its first frame, N instances) the
searcher runs as the window's engine thread does: the search with boxes on the stored maps, then
the refinement in chunks. Printed, per query and as medians: seconds from the query to its hits,
to the first 10 refined hits and to all `--top` refined, and refined hits per second; since a CPU
takes the second looks after every hit's first, also the seconds until every hit had a refined
box (`every_box_s`) and how many boxes a second look then improved. Model loading is left out
(the window loads it once).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dasr_annotator.app.cli.cmd_search import open_searcher
from dasr_annotator.engine.evaluation.manifest import load_manifest
from dasr_annotator.engine.project.project import Project
from dasr_annotator.engine.search import refine as refine_module
from dasr_annotator.engine.types import Box


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos")
    parser.add_argument("manifest")
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--top", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--no-second-look", action="store_true",
                        help="refine at the first look's coarse windows only (the cost before the second look)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_second_look:
        refine_module.SECOND_LOOK_WINDOWS = 0
    manifest = load_manifest(args.manifest)
    searcher = open_searcher(Project.open(args.photos), args.device)
    rows = []
    for name in list(manifest.instances)[: args.queries]:
        file = manifest.instances[name][0]
        box = Box.from_list(manifest.gt[(name, file)])
        started = time.perf_counter()
        descriptor, windows = searcher.query(file, box)
        hits = searcher.search(descriptor[None], args.top, exclude_image=file, windows=windows)
        example = searcher.example(file, box)
        searched = time.perf_counter() - started
        first, seen, again, last_new = [], set(), set(), [None]

        def chunk(items):
            now = time.perf_counter() - started
            if not first:
                first.append(now)
            for i, _ in items:
                if i in seen:
                    again.add(i)  # a box a second look improved
                else:
                    seen.add(i)
                    last_new[0] = now

        searcher.refine(hits, [example], windows, emit=chunk)
        done = time.perf_counter() - started
        rows.append({"instance": name, "hits": len(hits), "search_s": searched, "first_chunk_s": first[0] if first else None,
                     "all_s": done, "refined_per_s": len(hits) / max(done - searched, 1e-9),
                     "every_box_s": last_new[0], "improved_by_second_look": len(again)})
        print(json.dumps(rows[-1]))
    chunk_size = refine_module.CHUNK_GPU if str(searcher.extractor.device).startswith("cuda") else refine_module.CHUNK_CPU
    print(json.dumps({
        "device": searcher.extractor.device_name, "torch_threads": torch.get_num_threads(), "top": args.top,
        "first_chunk_hits": chunk_size,
        "median_search_s": statistics.median(r["search_s"] for r in rows),
        "median_first_chunk_s": statistics.median(r["first_chunk_s"] for r in rows),
        "median_all_s": statistics.median(r["all_s"] for r in rows),
        "median_every_box_s": statistics.median(r["every_box_s"] or 0.0 for r in rows),
        "median_refined_per_s": statistics.median(r["refined_per_s"] for r in rows),
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
