"""Runs an instance-search evaluation over a manifest with ground truth (`dasr-annotator eval`).

Protocol: queries are an instance's box in a few of its frames (first / middle / last by
default); references are every other image of the manifest; an image is relevant to every
instance it lists. DASR regions are extracted from the images directly with an `Extractor` (no
project store) and cached as npz per (settings, code, image), since extracting a few hundred
images takes minutes on a CPU. Baselines (global pooling, SIFT) run on the same network input.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch

from dasr_annotator.engine.dasr.backbones import DEFAULT_BACKBONE
from dasr_annotator.engine.dasr.descriptors import Whitening, l2n
from dasr_annotator.engine.dasr.extractor import Extractor
from dasr_annotator.engine.dasr.relocate import FeatureMap, WindowQuery, best_window
from dasr_annotator.engine.evaluation import baselines
from dasr_annotator.engine.evaluation import metrics as evaluation
from dasr_annotator.engine.evaluation.cache import (EXTRACTION_MODULES, GLOBAL_MODULES, SIFT_MODULES, ImageRegionsArrays,
                                                    NpzCache, code_fingerprint, extract_manifest, extraction_cache,
                                                    relocation_maps)
from dasr_annotator.engine.evaluation.manifest import Manifest, Query, load_manifest, select_queries
from dasr_annotator.engine.evaluation.review import review_summary, simulated_review
from dasr_annotator.engine.search.index import whitening_min_regions
from dasr_annotator.engine.store.imageio import load_image
from dasr_annotator.engine.search.refine import Refiner, rank_by_box
from dasr_annotator.engine.types import Box, Cancelled, CancelFn, Hit, ProgressFn, never_cancel, no_progress

log = logging.getLogger(__name__)


WHITENING_CHOICES = ("auto", "collection", "none", "other")

# --------------------------------------------------------------------------- scoring


@dataclass
class Ranking:
    """One query's scores over the references, with the box returned for each (NaN: none)."""

    scores: np.ndarray
    boxes: np.ndarray | None
    seconds: float


class RegionScorer:
    """Image score = max cosine similarity over the image's regions; the winning region is the hit."""

    def __init__(self, images: list[ImageRegionsArrays], whiten):
        counts = np.array([im.boxes.shape[0] for im in images])
        self.owner = np.repeat(np.arange(len(images)), counts)
        self.boxes = np.concatenate([im.boxes for im in images]) if counts.sum() else np.zeros((0, 4))
        descs = [im.descriptors for im in images if im.descriptors.shape[0]]
        self.descriptors = whiten(np.concatenate(descs)) if descs else np.zeros((0, 1), np.float32)
        self.n_images = len(images)

    def rank(self, query_vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores [N], boxes [N, 4]) over all images; an image without regions scores -inf."""
        sims = self.descriptors @ query_vec
        scores = np.full(self.n_images, -np.inf)
        np.maximum.at(scores, self.owner, sims)
        boxes = np.full((self.n_images, 4), np.nan)
        winners = np.flatnonzero(sims >= scores[self.owner])
        owners, first = np.unique(self.owner[winners], return_index=True)
        boxes[owners] = self.boxes[winners[first]]
        return scores, boxes


def _whitening_functions(images: list[ImageRegionsArrays], manifest: Manifest, mode: str,
                         dim: int | None = None) -> tuple[dict, str]:
    """video -> whitening function for its queries, and a description of what it was fitted on."""
    identity = lambda x: l2n(np.asarray(x, np.float32)).astype(np.float32)  # noqa: E731
    videos = sorted(set(manifest.videos.values()))
    descs = [im.descriptors for im in images]
    n_regions = sum(d.shape[0] for d in descs)
    if mode == "auto":  # what a project does: its own whitening once it has enough regions
        needed = whitening_min_regions(max((d.shape[1] for d in descs if d.size), default=1))
        if n_regions < needed:
            note = f"auto -> none: {n_regions} regions < {needed} a project needs to fit one"
            return {v: identity for v in videos}, note
        mode = "collection"
    if mode == "none":
        return {v: identity for v in videos}, "none (raw l2-normalised descriptors)"
    if mode == "collection":
        fit = Whitening(dim).fit(np.concatenate(descs))
        note = f"collection: all {fit.n_fit} regions of the evaluated images (unsupervised)"
        return {v: fit.transform for v in videos}, note
    if mode != "other":
        raise ValueError(f"whitening must be one of {WHITENING_CHOICES}, not {mode!r}")
    video_of_file = {}
    for name, files in manifest.instances.items():
        for f in files:
            video_of_file.setdefault(f, set()).add(manifest.videos[name])
    out = {}
    for v in videos:
        held_out = [d for f, d in zip(manifest.files, descs) if v not in video_of_file.get(f, ())]
        if sum(d.shape[0] for d in held_out) < 2:
            raise ValueError("whitening 'other' needs images of at least two videos")
        out[v] = Whitening(dim).fit(np.concatenate(held_out)).transform
    return out, "other: for each query, the regions of the other videos' images only (leave-one-video-out)"


# --------------------------------------------------------------------------- method results


@dataclass
class MethodResult:
    name: str
    kind: str  # "regions", "global" or "local"
    note: str = ""
    has_boxes: bool = True
    per_query: list[dict] = field(default_factory=list)
    query_instances: list[str] = field(default_factory=list)
    top_ious: list[float] = field(default_factory=list)
    size_bins: list[str] = field(default_factory=list)  # per top_ious entry: the object's size bin
    best_ious: list[float] = field(default_factory=list)
    covered: list[bool] = field(default_factory=list)  # some region's centre is on the instance
    query_seconds: list[float] = field(default_factory=list)
    regions_per_image: float | None = None
    extract_seconds_per_image: float | None = None

    def add(self, query: Query, manifest: Manifest, refs: list[str], ranking: Ranking,
            best_ious: np.ndarray | None = None, covered: np.ndarray | None = None) -> dict:
        """Score one query. best_ious / covered: per reference, over all of its regions (None:
        the method returns one box per image, so they are the returned box's)."""
        relevant, gt = manifest.gt_boxes(query.instance, refs)
        located = None
        if ranking.boxes is not None:
            located = evaluation.centres_inside(ranking.boxes, gt) & relevant
            top = evaluation.iou_xywh(ranking.boxes, gt)
            self.top_ious.extend(top[relevant].tolist())
            self.size_bins.extend(evaluation.size_bin(gt[i], manifest.image_size(refs[i]))
                                  for i in np.flatnonzero(relevant))
            self.best_ious.extend((top if best_ious is None else best_ious)[relevant].tolist())
            self.covered.extend((located if covered is None else covered)[relevant].tolist())
        metrics = evaluation.evaluate_query(ranking.scores, relevant, located)
        self.per_query.append(metrics)
        self.query_instances.append(query.instance)
        self.query_seconds.append(ranking.seconds)
        return metrics

    def summary(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "note": self.note, "has_boxes": self.has_boxes}
        out.update(evaluation.mean_metrics(self.per_query))
        out["relevant_per_query"] = float(np.mean([q["relevant"] for q in self.per_query])) if self.per_query else 0.0
        if not self.has_boxes:  # no boxes, so no located hits: say so rather than print zeros
            for key in list(out):
                if key.endswith("_located"):
                    out[key] = None
        out["localization"] = (_localization(self.top_ious, self.best_ious, self.covered)
                               if self.has_boxes else None)
        out["boxes"] = None
        if self.has_boxes:  # the returned boxes: loc recall at IoU 0.5 / 0.7, mean IoU, by object size
            ious, bins = np.asarray(self.top_ious), np.asarray(self.size_bins)
            out["boxes"] = evaluation.box_figures(ious)
            out["boxes"]["by_size"] = {name: evaluation.box_figures(ious[bins == name])
                                       for name, _ in evaluation.SIZE_BINS if (bins == name).any()}
        out["per_instance"] = {
            name: evaluation.mean_metrics([q for q, n in zip(self.per_query, self.query_instances) if n == name])
            for name in dict.fromkeys(self.query_instances)
        }
        if not self.has_boxes:
            for metrics in out["per_instance"].values():
                for key in [k for k in metrics if k.endswith("_located")]:
                    metrics[key] = None
        out["query_ms"] = 1000.0 * float(np.mean(self.query_seconds)) if self.query_seconds else None
        out["regions_per_image"] = self.regions_per_image
        out["extract_seconds_per_image"] = self.extract_seconds_per_image
        return out


def _localization(top: list[float], best: list[float], covered: list[bool]) -> dict:
    """Recall over IoU thresholds of the returned box (top) and of the best region, and the
    coverage: how often some region has its centre on the instance (what bounds located hits)."""
    thresholds = evaluation.IOU_THRESHOLDS
    out = {"thresholds": thresholds.tolist(), "pairs": len(top),
           "coverage": float(np.mean(covered)) if covered else None}
    for name, ious in (("top", top), ("best", best)):
        if ious:
            curve = evaluation.localization_recall(ious, thresholds)
            out[name] = curve.tolist()
            out[f"mean_{name}"] = float(curve.mean())
        else:
            out[name], out[f"mean_{name}"] = None, None
    return out


# --------------------------------------------------------------------------- settings and run


@dataclass
class EvalSettings:
    backbone: str = DEFAULT_BACKBONE
    method: str = "dasr*"
    mode: str = "moments"  # the product's default (extractor.DEFAULT_MODE)
    max_side: int = 512
    descriptor_layer: str | None = None
    tau: float = 0.1
    nms_beta: float = 0.3  # 1.0 = no suppression
    whitening: str = "auto"
    whitening_dim: int | None = None  # None: every component the data spans
    queries_per_instance: int = 3
    baselines: bool = False
    limit_images: int | None = None
    instances: list[str] | None = None
    cache_dir: str | None = None
    weights: str | None = None
    device: str = "auto"
    simulate_feedback: bool = False
    feedback_batch: int = 10  # hits a simulated annotator reviews between re-rankings
    feedback_hits: int = 100  # re-ranking stops after this many reviewed hits
    relocate: bool = True  # re-localise hits inside their images (engine/relocate.py)
    refine: bool = True  # ... and refine the top hits' boxes on zoomed crops (engine/search/refine.py)
    refine_top: int = 100  # hits refined per query, as the product's search refines its top 100
    relocation_layer: str | None = None  # None: the backbone's

    def extractor(self) -> Extractor:
        return Extractor(backbone=self.backbone, method=self.method, mode=self.mode, device=self.device,
                         max_side=self.max_side, weights=self.weights, tau=self.tau, nms_beta=self.nms_beta,
                         descriptor_layer=self.descriptor_layer, relocation_layer=self.relocation_layer)


def run_eval(manifest_path, settings: EvalSettings | None = None, extractor: Extractor | None = None,
             progress: ProgressFn = no_progress, cancel: CancelFn = never_cancel,
             images: list[ImageRegionsArrays] | None = None, label: str | None = None) -> dict:
    """Evaluate DASR (and the baselines when asked) on a manifest; a JSON-ready dict.

    `extractor` overrides the one the settings describe; `images` supplies already extracted
    regions for the manifest's files (ablations that re-pool cached regions).
    """
    settings = settings or EvalSettings()
    started = time.perf_counter()
    manifest = load_manifest(manifest_path, settings.instances, settings.limit_images)
    queries = select_queries(manifest, settings.queries_per_instance)
    extractor = extractor or settings.extractor()
    n = len(manifest.files)
    total = n * (2 if settings.baselines else 1)  # image passes: regions, then baseline features
    if images is None:
        images = extract_manifest(manifest, extractor, extraction_cache(extractor, settings.cache_dir),
                                  lambda done, _: progress(done, total), cancel)
    whiten, whitening_note = _whitening_functions(images, manifest, settings.whitening, settings.whitening_dim)
    reviews = [] if settings.simulate_feedback else None
    maps = None
    if settings.relocate and hasattr(extractor, "describe_query"):
        maps = relocation_maps(manifest, extractor, settings.cache_dir, cancel)
    methods = [_evaluate_regions(manifest, queries, images, extractor, whiten, label, cancel, settings, reviews, maps)]
    if maps is not None:  # the same regions without re-localisation, for comparison
        methods.append(_evaluate_regions(manifest, queries, images, extractor, whiten, label, cancel, settings,
                                         None, None))
    if settings.baselines:
        methods += baseline_results(manifest, queries, extractor, settings.cache_dir,
                                    lambda done, _: progress(n + done, total), cancel,
                                    manifest_path=manifest_path, images=images)
    return {
        "manifest": str(manifest_path),
        "settings": asdict(settings),
        "extractor": extractor.config(),
        "extraction_code": code_fingerprint(EXTRACTION_MODULES),
        "device": extractor.device_name,
        "images": len(manifest.files),
        "instances": list(manifest.instances),
        "queries": [{"instance": q.instance, "file": q.file, "frame": q.frame} for q in queries],
        "whitening": whitening_note,
        "methods": [m.summary() for m in methods],
        "simulated_feedback": None if reviews is None else review_summary(reviews, settings),
        "wall_seconds": time.perf_counter() - started,
    }


def _evaluate_regions(manifest, queries, images, extractor, whiten, label, cancel, settings,
                      reviews: list | None, maps: dict[str, FeatureMap] | None = None) -> MethodResult:
    cfg = extractor.config()
    name = label or f"{cfg['method'].upper()} {cfg['backbone']} {cfg['descriptor_layer']} ({cfg['mode']})"
    refiner = None
    if maps is not None and settings.refine:
        name += f" + re-localisation ({extractor.backbone.relocation_layer}), refined coarse-to-fine"
        result = MethodResult(name, "regions", note="image score = best region; hit box = best window on zoomed "
                                                     f"crops around the stored map's best windows, top "
                                                     f"{settings.refine_top} hits (engine/search/refine.py)")
        refiner = Refiner(extractor)
    elif maps is not None:
        name += f" + re-localisation ({extractor.backbone.relocation_layer})"
        result = MethodResult(name, "regions", note="image score = best region; "
                                                     "hit box = best query-shaped window (engine/relocate.py)")
    else:
        result = MethodResult(name, "regions", note="image score = best region; hit box = that region")
    counts = [im.boxes.shape[0] for im in images]
    result.regions_per_image = float(np.mean(counts)) if counts else 0.0
    result.extract_seconds_per_image = float(np.mean([im.seconds for im in images])) if images else None
    index_of = {f: i for i, f in enumerate(manifest.files)}
    scorers = {}
    for q in queries:
        if cancel():
            raise Cancelled()
        transform = whiten[manifest.videos[q.instance]]
        if transform not in scorers:  # one per distinct whitening ("other": one per video)
            scorers[transform] = RegionScorer(images, transform)
        scorer = scorers[transform]
        start = time.perf_counter()
        image = load_image(manifest.root / q.file, max_side=extractor.max_side)
        if maps is not None:
            descriptor, windows = extractor.describe_query(image, Box.from_list(q.box))
        else:
            descriptor, windows = extractor.describe_box(image, Box.from_list(q.box)), None
        qvec = transform(descriptor[None])[0]
        scores, boxes = scorer.rank(qvec)
        keep = np.array([f != q.file for f in manifest.files])
        refs = [f for f in manifest.files if f != q.file]
        _, gt = manifest.gt_boxes(q.instance, refs)
        if windows is not None:  # every reference is a hit here (the ranking covers them all)
            boxes = _relocated(manifest.files, scores, maps, windows)
            if refiner is not None:
                scores, boxes = _refined(manifest, q, scores, boxes, maps, windows, refiner, settings.refine_top,
                                         cancel)
            best = covered = None  # one box per image: the returned one
        else:
            region_boxes = [images[index_of[f]].boxes for f in refs]
            best = np.array([evaluation.best_iou(b, g) if np.isfinite(g[0]) else 0.0
                             for b, g in zip(region_boxes, gt)])
            covered = np.array([bool(evaluation.centres_inside(b, np.broadcast_to(g, b.shape)).any())
                                for b, g in zip(region_boxes, gt)])
        seconds = time.perf_counter() - start
        result.add(q, manifest, refs, Ranking(scores[keep], boxes[keep], seconds), best, covered)
        if reviews is not None:
            reviews.append(simulated_review(q, manifest, scorer, qvec, settings, boxes if windows is not None else None,
                                             maps, windows))
    return result


def _relocated(files: list[str], region_scores: np.ndarray, maps: dict[str, FeatureMap],
               windows: WindowQuery) -> np.ndarray:
    """Every image's re-localised box [N, 4] (what `Searcher.relocate` does to hits); NaN for an
    image without regions (it is no hit)."""
    boxes = np.full((len(files), 4), np.nan)
    for i, file in enumerate(files):
        if np.isfinite(region_scores[i]):
            boxes[i] = best_window(maps[file], windows)[1].as_list()
    return boxes


def _refined(manifest: Manifest, q: Query, scores: np.ndarray, boxes: np.ndarray, maps: dict[str, FeatureMap],
             windows: WindowQuery, refiner: Refiner, top: int, cancel: CancelFn) -> tuple[np.ndarray, np.ndarray]:
    """(scores, boxes) with the `top` best-scoring references' boxes refined coarse-to-fine and
    re-ordered among themselves by region and box score together, as the product's search does to
    its top hits (the query's own photo is no hit). The refined hits keep the top places: they
    take the same set of scores, dealt in the blended order."""
    order = [i for i in np.argsort(-scores, kind="stable") if manifest.files[i] != q.file and np.isfinite(scores[i])]
    picked = order[:top]
    hits = [Hit(manifest.files[i], float(scores[i]), Box.from_list(boxes[i]), None) for i in picked]
    example = refiner.example(manifest.root / q.file, Box.from_list(q.box))
    refined = refiner.refine(hits, [example], windows, maps.get, lambda f: manifest.root / f, cancel=cancel)
    out_boxes, out_scores = boxes.copy(), scores.copy()
    index_of = {manifest.files[i]: i for i in picked}
    for place, hit in zip(picked, rank_by_box(refined)):
        out_scores[index_of[hit.image]] = scores[place]
        out_boxes[index_of[hit.image]] = hit.box.as_list()
    return out_scores, out_boxes


# --------------------------------------------------------------------------- baselines


def _network_rgb(extractor: Extractor, image) -> tuple[np.ndarray, float, float]:
    """The exact network input the extractor builds, as uint8 RGB, with its scale factors."""
    prep = extractor.prepare(image)
    rgb = prep.pixels[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(rgb), prep.scale_x, prep.scale_y


def baseline_results(manifest: Manifest, queries: list[Query], extractor: Extractor, cache_dir,
                     progress: ProgressFn = no_progress, cancel: CancelFn = never_cancel,
                     manifest_path=None, images: list[ImageRegionsArrays] | None = None) -> list[MethodResult]:
    """Global pooling (whole query image, and the box crop), the SIFT matcher, and the
    image-level methods (evaluation/image_level.py): whole-image search and VLAD* over the DASR
    regions (`images`), ASMK* (needs `manifest_path` to find its training photos)."""
    backbone = extractor.backbone
    global_cache = NpzCache(cache_dir, "global", {"backbone": backbone.config(), "max_side": extractor.max_side,
                                                  "code": code_fingerprint(GLOBAL_MODULES)})
    sift_cache = NpzCache(cache_dir, "sift", {"max_side": extractor.max_side, "opencv": cv2.__version__,
                                              "code": code_fingerprint(SIFT_MODULES)})
    globals_, sifts, g_seconds, s_seconds = [], [], [], []
    for done, file in enumerate(manifest.files):
        if cancel():
            raise Cancelled()
        source = manifest.root / file
        g, s = global_cache.load(file, source), sift_cache.load(file, source)
        if g is None or s is None:
            rgb, sx, sy = _network_rgb(extractor, load_image(source, max_side=extractor.max_side))
        if g is None:
            start = time.perf_counter()
            g = baselines.global_descriptors(baselines.feature_map(backbone, rgb))
            g["seconds"] = np.float64(time.perf_counter() - start)
            global_cache.save(file, source, g)
        if s is None:
            start = time.perf_counter()
            feats = baselines.sift_features(rgb)
            s = {"points": feats.points / np.array([sx, sy], np.float32), "descriptors": feats.descriptors,
                 "size": np.array([rgb.shape[1] / sx, rgb.shape[0] / sy]),
                 "seconds": np.float64(time.perf_counter() - start)}
            sift_cache.save(file, source, s)
        globals_.append(g)
        sifts.append((baselines.SiftFeatures(s["points"].astype(np.float32), s["descriptors"]), s["size"]))
        g_seconds.append(float(g["seconds"]))
        s_seconds.append(float(s["seconds"]))
        progress(done + 1, len(manifest.files))
    results = _global_results(manifest, queries, extractor, globals_, float(np.mean(g_seconds)), cancel)
    results.append(_sift_result(manifest, queries, sifts, float(np.mean(s_seconds)), cancel))
    from dasr_annotator.engine.evaluation import image_level

    if images is not None:
        results += image_level.whole_image_results(manifest, queries, images, MethodResult, cancel)
    if manifest_path is not None:
        asmk = image_level.asmk_result(manifest_path, manifest, queries, extractor, cache_dir, _network_rgb,
                                       MethodResult, cancel)
        if asmk is not None:
            results.append(asmk)
    return results


def _global_results(manifest, queries, extractor, globals_, seconds_per_image, cancel) -> list[MethodResult]:
    backbone = extractor.backbone
    layer = backbone.descriptor_layer
    results = {}
    for pooling in baselines.GLOBAL_POOLINGS:
        for query_kind in ("image", "crop"):
            r = MethodResult(f"global {pooling}, query={query_kind}", "global", has_boxes=False,
                             note=f"{layer} of the whole image; returns no box, so no hit is located")
            r.extract_seconds_per_image = seconds_per_image
            results[(pooling, query_kind)] = r
    matrix = {p: np.stack([g[p] for g in globals_]) for p in baselines.GLOBAL_POOLINGS}
    index_of = {f: i for i, f in enumerate(manifest.files)}
    for q in queries:
        if cancel():
            raise Cancelled()
        keep = np.array([f != q.file for f in manifest.files])
        refs = [f for f in manifest.files if f != q.file]
        start = time.perf_counter()
        rgb, sx, sy = _network_rgb(extractor, load_image(manifest.root / q.file, max_side=extractor.max_side))
        x, y, w, h = q.box
        crop = baselines.crop_for_network(rgb, (x * sx, y * sy, (x + w) * sx, (y + h) * sy),
                                          2 * backbone.descriptor_stride)
        crop_desc = baselines.global_descriptors(baselines.feature_map(backbone, crop))
        crop_seconds = time.perf_counter() - start
        for pooling in baselines.GLOBAL_POOLINGS:
            for query_kind, qvec in (("image", globals_[index_of[q.file]][pooling]), ("crop", crop_desc[pooling])):
                start = time.perf_counter()
                scores = matrix[pooling][keep] @ qvec
                seconds = time.perf_counter() - start + (crop_seconds if query_kind == "crop" else 0.0)
                results[(pooling, query_kind)].add(q, manifest, refs, Ranking(scores, None, seconds))
    return list(results.values())


def _sift_result(manifest, queries, sifts, seconds_per_image, cancel) -> MethodResult:
    r = MethodResult("SIFT + RANSAC homography", "local",
                     note="score = homography inliers; hit box = the query box projected into the image")
    r.extract_seconds_per_image = seconds_per_image
    index_of = {f: i for i, f in enumerate(manifest.files)}
    for q in queries:
        if cancel():
            raise Cancelled()
        start = time.perf_counter()
        query_feats = sifts[index_of[q.file]][0].inside(q.box)
        refs = [f for f in manifest.files if f != q.file]
        scores, boxes = np.zeros(len(refs)), np.full((len(refs), 4), np.nan)
        for i, f in enumerate(refs):
            features, (width, height) = sifts[index_of[f]]
            scores[i], box = baselines.match_sift(query_feats, features, q.box)
            if box is not None:
                boxes[i] = Box.from_list(box).clipped(width, height).as_list()
        r.add(q, manifest, refs, Ranking(scores, boxes, time.perf_counter() - start))
    return r
