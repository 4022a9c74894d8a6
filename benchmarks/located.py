"""Box precision through the CLI, the way a user's script measures it.

    .venv/bin/python benchmarks/located.py ../shared/data/dev-hires/manifest.json [--max-side N]
        [--top 100] [--per-instance 3] [--work DIR] [--keep] [--json OUT.json]
        [--index-args "--backbone efficientnet-lite2 --method dasr"] [--search-args "--no-refine"]

The manifest's photos are linked into a fresh folder, `dasr-annotator index` indexes it and
`dasr-annotator search --queries` asks every query (the instance's box in its first, middle and
last frame) for its top hits, each command timed as a user would see it. Reported, per set:
- image-level mAP@50 / @100 (the right photo), mAP@all over the returned list (exact when --top
  covers every other photo; otherwise relevant photos ranked below --top count as missed), and
  mAP@50-located (right photo AND its box centre inside
  the ground-truth box), the query's own photo left out as the CLI does;
- loc recall@0.5 / @0.7: share of the instance's other frames returned with a box at IoU >= 0.5
  (0.7: a box an annotator accepts as it is), and the mean IoU of the returned relevant boxes;
- the same located figures by object size relative to the photo (small: the ground truth's long
  side < 1/16 of the photo's long side; medium: < 1/4; large);
- index seconds per photo and search seconds per query (wall, model loading included once).
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

from dasr_annotator.engine.evaluation.manifest import load_manifest, select_queries
from dasr_annotator.engine.evaluation.metrics import (SIZE_BINS, average_precision_at_k,
                                                      centres_inside, iou_xywh, size_bin)
from dasr_annotator.engine.store.imageio import image_size


def cli(*args: str) -> tuple[str, float]:
    """Run `dasr-annotator ARGS` as a user would (its own process); (stdout, wall seconds)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dasr_annotator", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"dasr-annotator {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout, time.perf_counter() - started


def link_photos(manifest, folder: Path) -> None:
    for file in manifest.files:
        target = folder / file
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.symlink((manifest.root / file).resolve(), target)


def score_queries(manifest, queries, answers: dict, top: int, sizes: dict) -> dict:
    """The figures of the module docstring from the CLI's answers (query id -> hits)."""
    ap, ap100, ap_all, ap_loc = [], [], [], []
    ious_by_bin, returned_by_bin, total_by_bin = {}, {}, {}
    ap_by_query_bin: dict[str, list[float]] = {}  # does a small query object rank its photos worse?
    all_ious, n_relevant_total = [], 0
    for qi, q in enumerate(queries):
        hits = answers.get(str(qi), [])
        relevant_files = [f for f in manifest.instances[q.instance] if f != q.file]
        # other instances' frames of the same video count too when they list this instance
        relevant_files = [f for f in relevant_files if (q.instance, f) in manifest.gt]
        relevant = set(relevant_files)
        rel_flags, loc_flags = [], []
        found = {}
        for h in hits[:top]:
            is_rel = h["image"] in relevant
            gt = manifest.gt.get((q.instance, h["image"]))
            box = np.asarray(h["box"], np.float64)
            located = bool(is_rel and centres_inside(box[None], gt[None])[0])
            rel_flags.append(is_rel)
            loc_flags.append(located)
            if is_rel:
                found[h["image"]] = float(iou_xywh(box[None], gt[None])[0])
        n = len(relevant)
        ap.append(average_precision_at_k(np.array(rel_flags, bool), n, 50))
        ap100.append(average_precision_at_k(np.array(rel_flags, bool), n, 100))
        ap_all.append(average_precision_at_k(np.array(rel_flags, bool), n))
        ap_loc.append(average_precision_at_k(np.array(loc_flags, bool), n, 50))
        ap_by_query_bin.setdefault(size_bin(q.box, sizes[q.file]), []).append(ap[-1])
        n_relevant_total += n
        for f in relevant_files:
            b = size_bin(manifest.gt[(q.instance, f)], sizes[f])
            total_by_bin[b] = total_by_bin.get(b, 0) + 1
            if f in found:
                ious_by_bin.setdefault(b, []).append(found[f])
                returned_by_bin[b] = returned_by_bin.get(b, 0) + 1
        all_ious.extend(found.values())
    ious = np.array(all_ious)
    out = {
        "queries": len(queries),
        "map50": float(np.mean(ap)),
        "map100": float(np.mean(ap100)),
        "map_all_returned": float(np.mean(ap_all)),
        "map50_located": float(np.mean(ap_loc)),
        "loc_recall_05": float((ious >= 0.5).sum() / n_relevant_total),
        "loc_recall_07": float((ious >= 0.7).sum() / n_relevant_total),
        "mean_iou_returned": float(ious.mean()) if ious.size else 0.0,
        "returned_relevant": float(ious.size / n_relevant_total),
        "by_size": {},
        "map50_by_query_size": {b: {"queries": len(v), "map50": float(np.mean(v))} for b, v in ap_by_query_bin.items()},
    }
    for name, _ in SIZE_BINS:
        if total_by_bin.get(name):
            v = np.array(ious_by_bin.get(name, []))
            out["by_size"][name] = {"frames": total_by_bin[name],
                                    "loc_recall_05": float((v >= 0.5).sum() / total_by_bin[name]),
                                    "loc_recall_07": float((v >= 0.7).sum() / total_by_bin[name]),
                                    "mean_iou_returned": float(v.mean()) if v.size else 0.0}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest")
    parser.add_argument("--max-side", type=int, help="index --max-side (default: the CLI's)")
    parser.add_argument("--mode", help="index --mode (default: the CLI's)")
    parser.add_argument("--top", type=int, default=100)
    parser.add_argument("--per-instance", type=int, default=3)
    parser.add_argument("--work", help="folder for the linked photos and their index (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (reuse its index next time)")
    parser.add_argument("--index-args", default="", help="extra arguments for index, space separated "
                        "(e.g. \"--backbone efficientnet-lite2 --method dasr\")")
    parser.add_argument("--search-args", default="", help="extra arguments for search, space separated")
    parser.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    manifest = load_manifest(args.manifest)
    queries = select_queries(manifest, args.per_instance)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dasr-located-"))
    photos = work / "photos"
    link_photos(manifest, photos)
    sizes = {f: image_size(manifest.root / f) for f in manifest.files}
    try:
        index_args = ["index", str(photos), "--json"]
        if args.max_side:
            index_args += ["--max-side", str(args.max_side)]
        if args.mode:
            index_args += ["--mode", args.mode]
        index_args += args.index_args.split()
        out, index_s = cli(*index_args)
        report = json.loads(out)
        spec = [{"id": str(i), "image": q.file, "box": [float(v) for v in q.box]} for i, q in enumerate(queries)]
        qfile = work / "queries.json"
        qfile.write_text(json.dumps(spec))
        out, search_s = cli("search", str(photos), "--queries", str(qfile), "--top", str(args.top), "--json",
                            *args.search_args.split())
        answers = {q["id"]: q["hits"] for q in json.loads(out)["queries"]}
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    figures = score_queries(manifest, queries, answers, args.top, sizes)
    figures.update({
        "set": str(Path(args.manifest).parent.name), "photos": len(manifest.files),
        "index_s_per_photo": index_s / max(1, report.get("indexed", 0) or len(manifest.files)),
        "index_indexed": report.get("indexed"),
        "search_s_per_query": search_s / len(queries), "top": args.top,
        "map_all_exact": args.top >= len(manifest.files) - 1,
        "max_side": args.max_side, "mode": args.mode,
        "command": " ".join(["benchmarks/located.py", *(argv if argv is not None else sys.argv[1:])]),
    })
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
