"""`dasr-annotator eval MANIFEST`: retrieval and localisation quality on a manifest with ground
truth, DASR and (with --baselines) global pooling and SIFT in the same run.

Prints a table; --json writes every figure, --plot draws recall-over-IoU curves as PNG.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

NMS_NONE = 1.0  # IoU never exceeds 1: nothing is suppressed


def add_arguments(parser) -> None:
    from dasr_annotator.engine.dasr.backbones import BACKBONES, DEFAULT_BACKBONE
    from dasr_annotator.engine.dasr.extractor import METHODS, MODES
    from dasr_annotator.engine.evaluation.runner import WHITENING_CHOICES

    parser.add_argument("manifest", metavar="MANIFEST", help="manifest.json (format of shared/data/dev/manifest.json)")
    parser.add_argument("--backbone", choices=BACKBONES, default=DEFAULT_BACKBONE)
    parser.add_argument("--method", choices=METHODS, default="dasr*")
    parser.add_argument("--mode", choices=MODES, default="moments",
                        help="extraction mode (default moments, as indexing; exact is slow on a CPU)")
    parser.add_argument("--weights", help="backbone weights file (default: embedded / torch hub cache)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda:0, ...")
    parser.add_argument("--max-side", type=int, default=512, help="long side of the network input (default 512)")
    parser.add_argument("--descriptor-layer", help="backbone layer pooled into region descriptors")
    parser.add_argument("--tau", type=float, default=0.1,
                        help="support threshold of the back-propagated maps (unused by mode moments)")
    parser.add_argument("--nms-beta", default="0.3", help="DASR* NMS IoU threshold, or 'none'")
    parser.add_argument("--whitening", choices=WHITENING_CHOICES, default="auto",
                        help="PCA-whitening: auto (as a project: fitted on the collection once it has enough "
                             "regions), collection, none, or other (fitted on the other videos' images only)")
    parser.add_argument("--whitening-dim", type=int, help="keep this many whitened components")
    parser.add_argument("--queries-per-instance", type=int, default=3, help="query frames per instance, evenly spread")
    parser.add_argument("--baselines", action="store_true", help="also run global pooling, SIFT, whole-image search, VLAD* and ASMK* (extra `eval`) baselines")
    parser.add_argument("--relocation-layer", help="backbone layer hits are re-localised on (default: the "
                        "backbone's stride-16 choice, blocks.10 for efficientnet-lite0)")
    parser.add_argument("--no-relocate", action="store_true",
                        help="draw each hit as its best DASR region (default: re-localise it with query-shaped "
                             "windows; both rows are reported)")
    parser.add_argument("--no-refine", action="store_true",
                        help="leave re-localised boxes on the stored maps (default: refine the top hits' boxes on "
                             "zoomed crops of the full-resolution photos, as search does)")
    parser.add_argument("--refine-top", type=int, default=100, metavar="K",
                        help="hits refined per query (default 100, as search's --top)")
    parser.add_argument("--simulate-feedback", action="store_true",
                        help="simulate an annotator accepting true hits and rejecting the others, with re-ranking")
    parser.add_argument("--feedback-batch", type=int, default=10, help="hits reviewed between re-rankings (default 10)")
    parser.add_argument("--feedback-hits", type=int, default=100,
                        help="re-rank during the first N reviewed hits (default 100)")
    parser.add_argument("--limit-images", type=int, metavar="N", help="keep N frames per instance (quick runs)")
    parser.add_argument("--instances", help="comma-separated instance names to evaluate")
    parser.add_argument("--cache", metavar="DIR", help="extraction cache folder (default: user cache dir/eval)")
    parser.add_argument("--no-cache", action="store_true", help="extract everything again, cache nothing")
    parser.add_argument("--json", metavar="OUT", help="write every figure as JSON")
    parser.add_argument("--plot", metavar="DIR", help="write recall-over-IoU curves (PNG) into DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _nms_beta(text: str) -> float:
    if text.strip().lower() == "none":
        return NMS_NONE
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"--nms-beta must be in (0, 1] or 'none', got {text}")
    return value


def settings_from_args(args):
    from dasr_annotator.engine.evaluation.runner import EvalSettings
    from dasr_annotator.engine.store.storage import user_cache_dir

    cache = None if args.no_cache else (args.cache or str(user_cache_dir() / "eval"))
    instances = [n.strip() for n in args.instances.split(",") if n.strip()] if args.instances else None
    return EvalSettings(backbone=args.backbone, method=args.method, mode=args.mode, max_side=args.max_side,
                        descriptor_layer=args.descriptor_layer, tau=args.tau, nms_beta=_nms_beta(args.nms_beta),
                        whitening=args.whitening, whitening_dim=args.whitening_dim,
                        queries_per_instance=args.queries_per_instance,
                        baselines=args.baselines, limit_images=args.limit_images, instances=instances,
                        cache_dir=cache, weights=args.weights, device=args.device,
                        simulate_feedback=args.simulate_feedback, feedback_batch=args.feedback_batch,
                        feedback_hits=args.feedback_hits, relocate=not args.no_relocate,
                        refine=not args.no_refine, refine_top=args.refine_top,
                        relocation_layer=args.relocation_layer)


def run(args) -> int:
    import torch  # noqa: F401 - fail here, before any work, if the engine cannot load

    from dasr_annotator.engine.dasr.backbones import WeightsMissing
    from dasr_annotator.engine.evaluation.runner import run_eval
    from dasr_annotator.engine.store.imageio import ImageError

    try:
        settings = settings_from_args(args)
        report = run_eval(args.manifest, settings, progress=_progress_printer(args.quiet))
    except (OSError, ValueError, KeyError, WeightsMissing, ImageError) as exc:
        print(f"\ndasr-annotator eval: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(file=sys.stderr)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(_finite(report), indent=1, allow_nan=False) + "\n")
    if args.plot:
        for path in draw_recall_iou(report, Path(args.plot)):
            print(f"wrote {path}")
    return 0


def _finite(value):
    """NaN / inf (a metric without any query to average) become JSON null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _progress_printer(quiet: bool):
    def progress(done: int, total: int) -> None:
        if not quiet:
            print(f"\rimage passes {done}/{total}", end="", file=sys.stderr, flush=True)

    return progress


# --------------------------------------------------------------------------- table

COLUMNS = (
    ("mAP@50", "map@50"), ("mAP@100", "map@100"), ("mAP@all", "map@all"),
    ("mAP@50-loc", "map@50_located"), ("R@100-loc", "recall@100_located"),
)


def _fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def format_report(report: dict) -> str:
    ex = report["extractor"]
    lines = [
        f"manifest {report['manifest']}: {report['images']} images, {len(report['instances'])} instances, "
        f"{len(report['queries'])} queries",
        f"backbone {ex['backbone']} ({ex['descriptor_layer']}), {ex['method']}, mode {ex['mode']}, "
        f"max side {ex['max_side']}, tau {ex['tau']}, NMS beta {ex['nms_beta']}; device {report['device']}",
        f"whitening: {report['whitening']}",
        "",
    ]
    header = ["method"] + [c for c, _ in COLUMNS] + ["cover", "locR top", "locR best", "reg/img", "s/img",
                                                     "query ms"]
    rows = []
    for m in report["methods"]:
        loc = m["localization"] or {}
        rows.append([m["name"]] + [_fmt(m.get(k)) for _, k in COLUMNS] + [
            _fmt(loc.get("coverage")), _fmt(loc.get("mean_top")), _fmt(loc.get("mean_best")),
            _fmt(m["regions_per_image"], 1), _fmt(m["extract_seconds_per_image"], 2), _fmt(m["query_ms"], 1)])
    lines += _table(header, rows)
    lines += ["", "loc = a hit counts only when its box centre lies inside the instance's box; cover = share of "
              "relevant images where some region's centre does (a ceiling on located hits);",
              "locR = localisation recall averaged over IoU 0.05..0.95 (returned region / best region)."]
    if any(not m["has_boxes"] for m in report["methods"]):
        lines.append("Global descriptors return no box, so they have no located hits (n/a).")
    boxed = [m for m in report["methods"] if m.get("boxes")]
    if boxed:
        bins = [b for b in ("small", "medium", "large") if any(b in m["boxes"]["by_size"] for m in boxed)]
        lines += ["", "returned boxes of relevant images: loc recall at IoU 0.5 / 0.7 (accepted without adjusting), "
                      "mean IoU; by object size (long side vs the photo's: small < 1/16, medium < 1/4, large):"]
        rows = []
        for m in boxed:
            b = m["boxes"]
            row = [m["name"], _fmt(b["loc_recall_05"]), _fmt(b["loc_recall_07"]), _fmt(b["mean_iou"])]
            for name in bins:
                s = b["by_size"].get(name)
                row.append("n/a" if s is None else f"{_fmt(s['loc_recall_05'], 2)}/{_fmt(s['loc_recall_07'], 2)} "
                                                     f"({s['pairs']})")
            rows.append(row)
        lines += _table(["method", "R@IoU.5", "R@IoU.7", "mean IoU"] + [f"{n} .5/.7 (n)" for n in bins], rows)
    main = report["methods"][0]
    lines += ["", f"per instance ({main['name']}):"]
    lines += _table(["instance", "mAP@50", "mAP@50-loc", "mAP@all", "R@100-loc"], [
        [name, _fmt(v["map@50"]), _fmt(v["map@50_located"]), _fmt(v["map@all"]), _fmt(v["recall@100_located"])]
        for name, v in main["per_instance"].items()])
    if report.get("simulated_feedback"):
        lines += [""] + _feedback_lines(report["simulated_feedback"])
    lines.append(f"\nwall time {report['wall_seconds']:.1f} s")
    return "\n".join(lines)


def _feedback_lines(sim: dict) -> list[str]:
    lines = [f"simulated annotator (accepts located hits, rejects the rest; batches of {sim['batch']}, "
             f"re-ranking during the first {sim['feedback_hits']} hits):"]
    rows = [[name, _fmt(v["reached_90"], 2), _fmt(v["median_reviews_to_90"], 1),
             _fmt(v["mean_reviews_to_90_when_reached"], 1), _fmt(v["mean_reviews_to_90_never_as_all"], 1),
             _fmt(v["found@50"]), _fmt(v["found@100"])]
            for name, v in (("plain list", sim["plain"]), ("with feedback", sim["feedback"]))]
    lines += _table(["", "reach 90%", "median reviews", "mean when reached", "mean, never = all", "found@50",
                     "found@100"], rows)
    lines.append("reviews = hits looked at until 90% of the instance's other images are found (inf: never; "
                 "'never = all': such a query counted as reviewing every image).")
    both = sim.get("both_reached")
    if both and both["queries"]:
        lines.append(f"on the {both['queries']} queries both lists bring to 90%: {both['plain']:.1f} reviews plain, "
                     f"{both['feedback']:.1f} with feedback, {both['fewest_possible']:.1f} at the fewest possible "
                     f"(one review per occurrence found).")
    return lines


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


# --------------------------------------------------------------------------- plot

PLOT_SIZE = (560, 420)
PLOT_MARGIN = (60, 30, 20, 50)  # left, top, right, bottom
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75))


def draw_recall_iou(report: dict, folder: Path) -> list[Path]:
    """recall_iou_top.png and recall_iou_best.png: recall over IoU thresholds, one curve per
    method that returns boxes."""
    from PIL import Image, ImageDraw, ImageFont

    folder.mkdir(parents=True, exist_ok=True)
    methods = [m for m in report["methods"] if m["localization"]]
    written = []
    for which, title in (("top", "top-scoring region"), ("best", "best region")):
        curves = [(m["name"], m["localization"]["thresholds"], m["localization"][which])
                  for m in methods if m["localization"][which]]
        image = Image.new("RGB", PLOT_SIZE, "white")
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default()
        left, top, right, bottom = PLOT_MARGIN
        x0, y0, x1, y1 = left, top, PLOT_SIZE[0] - right, PLOT_SIZE[1] - bottom

        def to_px(u: float, v: float) -> tuple[float, float]:
            return x0 + u * (x1 - x0), y1 - v * (y1 - y0)

        for tick in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
            draw.line([to_px(0, tick), to_px(1, tick)], fill=(225, 225, 225))
            draw.line([to_px(tick, 0), to_px(tick, 1)], fill=(225, 225, 225))
            draw.text((x0 - 30, to_px(0, tick)[1] - 6), f"{tick:.1f}", fill="black", font=font)
            draw.text((to_px(tick, 0)[0] - 8, y1 + 6), f"{tick:.1f}", fill="black", font=font)
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, 8), f"recall vs IoU, {title}", fill="black", font=font)
        draw.text(((x0 + x1) / 2 - 30, y1 + 24), "IoU threshold", fill="black", font=font)
        for i, (name, thresholds, recall) in enumerate(curves):
            colour = COLOURS[i % len(COLOURS)]
            points = [to_px(t, r) for t, r in zip(thresholds, recall) if r is not None]
            draw.line(points, fill=colour, width=2)
            ly = y0 + 8 + 14 * i
            draw.line([(x1 - 250, ly + 6), (x1 - 230, ly + 6)], fill=colour, width=2)
            draw.text((x1 - 225, ly), name[:40], fill="black", font=font)
        path = folder / f"recall_iou_{which}.png"
        image.save(path)
        written.append(path)
    return written
