"""Extraction speed and agreement on real dev photos: per-seed reference, batched exact, fast.

    .venv/bin/python benchmarks/extract_speed.py --json [--images N] [--backbone NAME]
        [--max-side 512] [--reference-seeds 3] [--threads 1] [--options] [--calibrate] [--cores N]

Per image, in one process so that ratios hold on a shared machine: a plain forward pass; the
exact batched rule (all seeds); the one-seed-at-a-time reference on the first
`--reference-seeds` seeds, extrapolated per seed to all seeds (and compared map by map with
the batched rule); "fast" mode (moments rank, NMS, near-exact modulated maps for the survivors)
and "moments" mode (every box from moment propagation). Their boxes are compared with the exact ones per final
region (each exact region after NMS against its best match) and, for moments, per seed.
`--options` also measures the alternatives; `--calibrate` prints the support/mass spread ratio
that the backbone's `box_scale` holds (`networks.LITE_SPECS`). The per-image comparison runs on `--threads` threads (CPU
seconds); then the headline `*_s_per_image` figures are wall seconds per photo on `--cores` cores,
as the indexer runs them (one photo per core, one thread each). Prints one JSON object with --json.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "dev"

from dasr_annotator.engine.dasr import moments  # noqa: E402
from dasr_annotator.engine.dasr.backbones import WeightsMissing  # noqa: E402
from dasr_annotator.engine.dasr.excitation import Excitation, reference_maps, seed_tensor  # noqa: E402
from dasr_annotator.engine.dasr.extractor import Extractor  # noqa: E402
from dasr_annotator.engine.dasr.regions import (  # noqa: E402
                                                box_iou_matrix, clip_boxes, nms,
                                                )
from dasr_annotator.engine.store.imageio import load_image  # noqa: E402

log = logging.getLogger("extract_speed")


def pick_images(manifest: dict, count: int, offset: float) -> list[tuple[str, list]]:
    """`count` photos spread over the sequences; each with the GT boxes of the instances in it."""
    by_video: dict[str, list] = {}
    for inst in manifest["instances"]:
        by_video.setdefault(inst["video"], inst["images"])
    gt: dict[str, list] = {}
    for inst in manifest["instances"]:
        for im in inst["images"]:
            gt.setdefault(im["file"], []).append(im["box"])
    chosen, round_ = [], 0
    while len(chosen) < count and round_ < 10:
        for images in by_video.values():
            frac = (offset + 0.13 * round_) % 1.0
            f = images[int(frac * (len(images) - 1))]["file"]
            if f not in [c for c, _ in chosen] and len(chosen) < count:
                chosen.append((f, gt[f]))
        round_ += 1
    return chosen


CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock = time.process_time


def timed(fn):
    t = clock()
    out = fn()
    return out, clock() - t


def matched_region_iou(exact_final, candidate_final) -> float:
    """Mean over the exact rule's final regions of the best IoU with a candidate final region."""
    if len(exact_final) == 0 or len(candidate_final) == 0:
        return 0.0
    return float(box_iou_matrix(exact_final, candidate_final).max(1).values.mean())


def gt_recall(final, prep, gts) -> float:
    """Mean over the photo's GT boxes of the best IoU of a final region (original pixels)."""
    if len(final) == 0:
        return 0.0
    b = final.clone()
    b[:, 0::2] /= prep.scale_x
    b[:, 1::2] /= prep.scale_y
    g = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in gts], dtype=torch.float32)
    return float(box_iou_matrix(g, b).max(1).values.mean())


_VARIANTS: dict = {}


def _fast_variant(ex: Extractor, rank_stride: int, rounds: int | None, coarse_stride: int) -> Extractor:
    """A fast-mode extractor sharing `ex`'s backbone, with other fast-mode settings."""
    key = rank_stride, rounds, coarse_stride
    if key not in _VARIANTS:
        variant = Extractor(ex.backbone.name, mode="fast", device=ex.device, max_side=ex.max_side,
                            pretrained=False)
        variant.backbone = ex.backbone
        variant.rank_stride, variant.fast_rounds, variant.coarse_stride = key
        _VARIANTS[key] = variant
    return _VARIANTS[key]


def fast_options(ex: Extractor, prep, exact_geo, exact_final, gts) -> dict:
    """Every fast-mode alternative against the exact rule's boxes (same seeds; final regions)."""
    bb = ex.backbone
    scale = bb.box_scale
    height, width = prep.pixels.shape[-2:]
    beta, stride = ex.nms_beta, bb.descriptor_stride
    ij, scores = exact_geo.ij, exact_geo.scores
    out = {}

    def clip(boxes):
        return clip_boxes(boxes, width, height, stride)

    def record(name, boxes, seconds, final=None):
        """boxes: one per seed (None where not computed); final: the option's final regions."""
        if final is None:
            final = boxes[nms(boxes, scores, beta)]
        out[name] = {
            "s_per_image": seconds,
            "region_box_iou": matched_region_iou(exact_final, final),
            "regions": len(final),
            "gt_best_iou": gt_recall(final, prep, gts),
        }
        if boxes is not None:
            out[name]["seed_box_iou"] = float(box_iou_matrix(boxes, exact_geo.boxes).diag().mean())

    def traced(from_stride=1):
        fw = bb.forward(prep.pixels, trace=True, trace_from_stride=from_stride)
        return fw, fw.features[bb.activation_layer]

    for start in (1, 4, 8, 16, 32):
        def run(start=start):
            fw, act = traced(start)
            return clip(moments.seed_ellipses(fw.trace, fw.input_size, act, ij, scale, start, ex.channels_last)[1])
        boxes, seconds = timed(run)
        record(f"moments_from_stride_{start}", boxes, seconds)

    # coarse stride 1: the seed passes run to the input, i.e. exact maps for the NMS survivors
    # (fast mode before modulated maps)
    grid = [(16, None, c) for c in (1, 8, 16, 32)] + [(16, 1, 16), (16, 2, 16), (8, None, 16), (32, None, 16)]
    for rank_stride, rounds, coarse in grid:
        hybrid = _fast_variant(ex, rank_stride, rounds, coarse)
        geo, seconds = timed(lambda: hybrid._seed_geometries(prep.pixels)[0])
        label = "until_stable" if rounds is None else f"{rounds}_round{'s' * (rounds > 1)}"
        record(f"fast_rank_stride_{rank_stride}_nms_{label}_seed_passes_to_stride_{coarse}", None, seconds,
               geo.boxes[hybrid.select(geo)])
    return out


def throughput(extractors: dict, images: list, cores: int) -> dict:
    """Wall seconds per image over `images`, as an indexer runs them: one after another with
    `cores` threads per op, and `cores` images at once with one thread each (the indexer's way,
    `Extractor.parallel_images`). Also a plain forward pass both ways."""
    def forward(ex):
        bb = ex.backbone
        return lambda image: bb.forward(ex.prepare(image).pixels)

    jobs = {"forward": forward(next(iter(extractors.values())))}
    jobs.update({mode: ex.extract for mode, ex in extractors.items()})
    out = {}
    for name, job in jobs.items():
        def run(image, job=job):
            with torch.inference_mode():
                return job(image)

        torch.set_num_threads(cores)
        run(images[0])
        t = time.perf_counter()
        for image in images:
            run(image)
        serial = (time.perf_counter() - t) / len(images)
        torch.set_num_threads(1)
        t = time.perf_counter()
        with ThreadPoolExecutor(cores) as pool:
            list(pool.map(run, images))
        side_by_side = (time.perf_counter() - t) / len(images)
        out[name] = {"threads_per_op": serial, "image_per_core": side_by_side}
    return out


def spread_ratios(ex: Extractor, prep, exact_geo) -> torch.Tensor:
    """Support spread (exact box / 4) over mass-weighted spread, per seed and axis."""
    bb = ex.backbone
    fw = bb.forward(prep.pixels, trace=True)
    _, _, cov = moments.seed_moments(fw.trace, fw.input_size, fw.features[bb.activation_layer], exact_geo.ij,
                                     moments.DEFAULT_START_STRIDE, ex.channels_last)
    b = exact_geo.boxes
    support = torch.stack([(b[:, 2] - b[:, 0]) / 4, (b[:, 3] - b[:, 1]) / 4], 1)
    mass = torch.stack([cov[:, 0, 0].sqrt(), cov[:, 1, 1].sqrt()], 1)
    inside = (b[:, 0] > 0) & (b[:, 1] > 0) & (b[:, 2] < prep.pixels.shape[-1]) & (b[:, 3] < prep.pixels.shape[-2])
    return (support / mass)[inside].flatten()  # clipped boxes would bias the ratio down


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--reference-seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared machine)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=sorted(CLOCK), default="cpu",
                    help="cpu: this process's CPU seconds (steady on a shared machine with --threads 1); wall")
    ap.add_argument("--offset", type=float, default=0.5, help="where in each sequence to take frames (0..1)")
    ap.add_argument("--options", action="store_true", help="also measure the fast-mode alternatives")
    ap.add_argument("--calibrate", action="store_true", help="print the spread ratio for the backbone's box_scale")
    ap.add_argument("--cores", type=int, default=torch.get_num_threads(),
                    help="time wall seconds per image on this many cores as the indexer runs them (one image "
                         "per core): the *_s_per_image figures; 0 skips it (default: torch's thread count)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    torch.set_num_threads(args.threads)
    global clock
    clock = CLOCK[args.clock]
    if args.device != "cpu" and args.clock == "cpu":
        clock = CLOCK["wall"]  # GPU work does not show as CPU time

    weights_note = "pretrained"
    kwargs = dict(device=args.device, max_side=args.max_side)
    try:
        exact = Extractor(args.backbone, mode="exact", **kwargs)
    except WeightsMissing as exc:
        log.warning("%s -- using random weights", exc)
        weights_note, kwargs["pretrained"] = "random", False
        exact = Extractor(args.backbone, mode="exact", **kwargs)
    fast = Extractor(args.backbone, mode="fast", **kwargs)
    moment = Extractor(args.backbone, mode="moments", **kwargs)
    bb = exact.backbone
    manifest = json.loads((DEV / "manifest.json").read_text())
    images = pick_images(manifest, args.images, args.offset)

    rows, options, ratios = [], [], []
    with torch.inference_mode():
        for warm in (fast, moment):  # first calls allocate and pick kernels
            warm.extract(load_image(DEV / images[0][0]))

    def final(ex, geo):
        return geo.boxes[ex.select(geo)]

    for rel, gts in images:
        image = load_image(DEV / rel)
        prep = exact.prepare(image)
        with torch.inference_mode():
            _, t_forward = timed(lambda: bb.forward(prep.pixels))
            exact_geo, t_exact = timed(lambda: exact.seed_geometry(image))
            fast_result, t_fast = timed(lambda: fast.extract(image))
            moments_result, t_moments = timed(lambda: moment.extract(image))
            fast_geo, moments_geo = fast.seed_geometry(image), moment.seed_geometry(image)
            fw, t_traced = timed(lambda: bb.forward(prep.pixels, trace=True))
            act = fw.features[bb.activation_layer]
            top = seed_tensor(act, exact_geo.ij[: args.reference_seeds])
            batched = Excitation(fw.trace, fw.input_size).backward(top)
        reference, t_ref = timed(lambda: reference_maps(fw.trace, top))
        k = int(exact_geo.ij.shape[0])
        exact_final = final(exact, exact_geo)
        row = {
            "image": rel,
            "seeds": k,
            "forward_s": t_forward,
            "batched_s": t_exact,
            "reference_s": t_traced + t_ref / top.shape[0] * k,
            "fast_s": t_fast,
            "moments_s": t_moments,
            "max_rel_diff": float((batched - reference).abs().max() / reference.abs().max()),
            "fast_region_box_iou": matched_region_iou(exact_final, final(fast, fast_geo)),
            "moments_region_box_iou": matched_region_iou(exact_final, final(moment, moments_geo)),
            "moments_seed_box_iou": float(box_iou_matrix(moments_geo.boxes, exact_geo.boxes).diag().mean()),
            "regions_exact": len(exact_final),
            "regions_fast": len(fast_result.regions),
            "regions_moments": len(moments_result.regions),
            "gt_best_iou_exact": gt_recall(exact_final, prep, gts),
            "gt_best_iou_fast": gt_recall(final(fast, fast_geo), prep, gts),
            "gt_best_iou_moments": gt_recall(final(moment, moments_geo), prep, gts),
        }
        rows.append(row)
        log.info("%s", json.dumps({k_: (round(v, 3) if isinstance(v, float) else v) for k_, v in row.items()}))
        if args.options:
            with torch.inference_mode():
                options.append(fast_options(exact, prep, exact_geo, exact_final, gts))
        if args.calibrate:
            with torch.inference_mode():
                ratios.append(spread_ratios(moment, prep, exact_geo))

    def mean(key, source=rows):
        return statistics.fmean(r[key] for r in source)

    result = {
        "backbone": bb.name,
        "weights": weights_note,
        "device": exact.device,
        "device_name": exact.device_name,
        "threads": args.threads,
        "clock": "process CPU seconds" if clock is time.process_time else "wall seconds",
        "max_side": args.max_side,
        "images": len(rows),
        "seeds_per_image": mean("seeds"),
        "regions_per_image": mean("regions_exact"),
        "fast_regions_per_image": mean("regions_fast"),
        "moments_regions_per_image": mean("regions_moments"),
        "forward_cpu_s_one_thread": mean("forward_s"),
        "batched_s_per_image": mean("batched_s"),
        "reference_s_per_image": mean("reference_s"),
        "speedup": mean("reference_s") / mean("batched_s"),
        "max_rel_diff": max(r["max_rel_diff"] for r in rows),
        "fast_cpu_s_one_thread": mean("fast_s"),
        "fast_over_forward_one_thread": mean("fast_s") / mean("forward_s"),
        "fast_box_iou_vs_exact": mean("fast_region_box_iou"),
        "moments_cpu_s_one_thread": mean("moments_s"),
        "moments_over_forward_one_thread": mean("moments_s") / mean("forward_s"),
        "moments_box_iou_vs_exact": mean("moments_region_box_iou"),
        "moments_seed_box_iou_vs_exact": mean("moments_seed_box_iou"),
        "gt_best_iou_exact": mean("gt_best_iou_exact"),
        "gt_best_iou_fast": mean("gt_best_iou_fast"),
        "gt_best_iou_moments": mean("gt_best_iou_moments"),
        "moments_box_scale": bb.box_scale,
        "moments_start_stride": moments.DEFAULT_START_STRIDE,
        "fast_rank_stride": fast.rank_stride,
        "fast_nms_rounds": fast.fast_rounds,
        "fast_coarse_stride": fast.coarse_stride,
        "notes": (f"reference measured on the first {args.reference_seeds} seeds of each image and extrapolated "
                  "per seed (plus its traced forward); *_box_iou_vs_exact = mean over the exact rule's final "
                  "regions (after NMS) of the best IoU with a final region of that mode; moments_seed_box_iou = "
                  "same seed, before NMS; gt_best_iou = mean over the photo's ground-truth boxes of the best "
                  "final-region IoU; fast = moments rank all seeds, NMS, near-exact (modulated) maps for the "
                  "survivors, until stable"),
        "per_image": rows,
    }
    if options:
        result["fast_options"] = {
            name: {key: statistics.fmean(o[name][key] for o in options) for key in options[0][name]}
            for name in options[0]
        }
    if args.cores:
        # the headline figures: wall seconds per photo on this machine's cores, as the indexer runs
        loaded = [load_image(DEV / rel) for rel, _ in images]
        tp = throughput({"fast": fast, "moments": moment}, loaded, args.cores)
        torch.set_num_threads(args.threads)
        result["throughput_wall_s_per_image"] = tp
        result["cores"] = args.cores
        for name in ("forward", "fast", "moments"):
            result[f"{name}_s_per_image"] = tp[name]["image_per_core"]
        for name in ("fast", "moments"):
            result[f"{name}_over_forward"] = tp[name]["image_per_core"] / tp["forward"]["image_per_core"]
    if ratios:
        r = torch.cat(ratios)
        result["calibration"] = {"median_support_over_mass_spread": float(r.median()), "seeds_axes": int(r.numel()),
                                 "q25": float(r.quantile(0.25)), "q75": float(r.quantile(0.75))}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for key, value in result.items():
            if key not in ("per_image",):
                print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
