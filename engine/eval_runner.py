"""Runs an instance-search evaluation over a manifest with ground truth (`dasr-annotator eval`).

Protocol: queries are an instance's box in a few of its frames (first / middle / last by
default); references are every other image of the manifest; an image is relevant to every
instance it lists. DASR regions are extracted from the images directly with an `Extractor` (no
project store) and cached as npz per (settings, code, image), since extracting a few hundred
images takes minutes on a CPU. Baselines (global pooling, SIFT) run on the same network input.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from . import baselines, evaluation
from .backbones import DEFAULT_BACKBONE
from .descriptors import Whitening, l2n
from .extractor import Extractor
from .imageio import load_image
from .index import whitening_min_regions
from .relocate import MAX_FEEDBACK_WINDOWS, MAX_LOOKS, FeatureMap, WindowQuery, best_window, second_look, window_query
from .types import Box, Cancelled, CancelFn, ProgressFn, never_cancel, no_progress

log = logging.getLogger(__name__)

WHITENING_CHOICES = ("auto", "collection", "none", "other")
# Modules whose code decides the regions: a change to any of them invalidates cached extraction.
_EXTRACTION_MODULES = ("extractor", "moments", "excitation", "regions", "backbones", "descriptors")
_GLOBAL_MODULES = ("baselines", "backbones", "extractor")
_SIFT_MODULES = ("baselines", "extractor")
_MAP_MODULES = ("relocate", "backbones", "extractor")
_CACHE_FORMAT = 2  # arrays stored per image


# --------------------------------------------------------------------------- manifest


@dataclass
class Query:
    instance: str
    file: str
    frame: int
    box: np.ndarray  # [x, y, w, h], 0-based original pixels


@dataclass
class Manifest:
    root: Path
    files: list[str]  # unique image files relative to root, in manifest order
    instances: dict[str, list[str]]  # instance -> its selected files in frame order
    frames: dict[tuple[str, str], int]
    videos: dict[str, str]
    gt: dict[tuple[str, str], np.ndarray]  # (instance, file) -> [x, y, w, h], 0-based pixels

    def gt_boxes(self, instance: str, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(relevant bool[N], boxes [N, 4] with NaN where the instance is absent)."""
        boxes = np.full((len(files), 4), np.nan)
        for i, f in enumerate(files):
            if (instance, f) in self.gt:
                boxes[i] = self.gt[(instance, f)]
        return ~np.isnan(boxes[:, 0]), boxes


def load_manifest(path: str | Path, instances: list[str] | None = None, limit_images: int | None = None) -> Manifest:
    """Read a manifest (format of shared/data/dev/manifest.json). `instances` keeps only those
    (references included); `limit_images` keeps that many frames per instance, evenly spread."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    entries = {inst["name"]: inst for inst in data["instances"]}
    if instances:
        unknown = [n for n in instances if n not in entries]
        if unknown:
            raise ValueError(f"unknown instance(s) {', '.join(unknown)}; the manifest has {', '.join(entries)}")
        entries = {n: entries[n] for n in instances}
    selected: dict[str, list[str]] = {}
    frames, gt, videos, files = {}, {}, {}, {}
    for name, inst in entries.items():
        images = sorted(inst["images"], key=lambda im: im.get("frame", 0))
        if limit_images and len(images) > limit_images:
            picks = np.unique(np.linspace(0, len(images) - 1, limit_images).round().astype(int))
            images = [images[i] for i in picks]
        selected[name] = [im["file"] for im in images]
        videos[name] = inst.get("video", name)
        for im in images:
            files.setdefault(im["file"], None)
    for name, inst in entries.items():
        for im in inst["images"]:
            if im["file"] in files:
                x, y, w, h = (float(v) for v in im["box"])
                gt[(name, im["file"])] = np.array([x - 1.0, y - 1.0, w, h])  # 1-based origin in the source
                frames[(name, im["file"])] = int(im.get("frame", 0))
    return Manifest(path.parent, list(files), selected, frames, videos, gt)


def select_queries(manifest: Manifest, per_instance: int = 3) -> list[Query]:
    """The instance's box in `per_instance` of its frames, evenly spread (first, middle, last)."""
    queries = []
    for name, files in manifest.instances.items():
        for i in np.unique(np.linspace(0, len(files) - 1, max(1, per_instance)).round().astype(int)):
            f = files[i]
            queries.append(Query(name, f, manifest.frames[(name, f)], manifest.gt[(name, f)]))
    return queries


# --------------------------------------------------------------------------- npz cache


class NpzCache:
    """Arrays per image file under `folder/<kind>-<hash of key>/`, checked against the source
    file's size and mtime. No folder: nothing is cached."""

    def __init__(self, folder: str | Path | None, kind: str, key: dict):
        text = json.dumps(key, sort_keys=True, default=str)
        self.dir = None if folder is None else Path(folder) / f"{kind}-{hashlib.sha1(text.encode()).hexdigest()[:16]}"
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "key.json").write_text(json.dumps(key, sort_keys=True, indent=1, default=str))

    def _path(self, file: str) -> Path:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", file)[-80:]
        return self.dir / f"{stem}-{hashlib.sha1(file.encode()).hexdigest()[:8]}.npz"

    @staticmethod
    def _stamp(source: Path) -> np.ndarray:
        st = source.stat()
        return np.array([st.st_size, st.st_mtime_ns], np.int64)

    def load(self, file: str, source: Path) -> dict | None:
        if self.dir is None or not self._path(file).exists():
            return None
        try:
            with np.load(self._path(file), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:  # a partial or corrupt cache file: extract again
            log.warning("ignoring cache file %s: %s", self._path(file), exc)
            return None
        if not np.array_equal(arrays.pop("_stamp", None), self._stamp(source)):
            return None
        return arrays

    def save(self, file: str, source: Path, arrays: dict) -> None:
        if self.dir is None:
            return
        target = self._path(file)
        partial = target.with_suffix(".part.npz")
        np.savez(partial, _stamp=self._stamp(source), **arrays)
        partial.replace(target)


@functools.lru_cache(maxsize=None)
def code_fingerprint(module_names: tuple[str, ...]) -> str:
    """Hash of the source of engine modules, so cached results follow code changes. Read once
    per process, close to when the modules were imported: the key describes the running code."""
    digest = hashlib.sha1()
    here = Path(__file__).parent
    for name in module_names:
        digest.update((here / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]


for _modules in (_EXTRACTION_MODULES, _GLOBAL_MODULES, _SIFT_MODULES):
    code_fingerprint(_modules)  # fix the keys to the code this process imported


# --------------------------------------------------------------------------- extraction


@dataclass
class ImageRegionsArrays:
    boxes: np.ndarray  # [R, 4] x, y, w, h original pixels
    descriptors: np.ndarray  # [R, D] float32, l2, not whitened
    width: int
    height: int
    seeds: int
    seconds: float
    scores: np.ndarray | None = None  # [R] seed scores (saliency), best first


def extraction_cache(extractor: Extractor, folder) -> NpzCache:
    return NpzCache(folder, "regions", {"config": extractor.config(), "code": code_fingerprint(_EXTRACTION_MODULES),
                                        "format": _CACHE_FORMAT})


def extract_manifest(manifest: Manifest, extractor: Extractor, cache: NpzCache,
                     progress: ProgressFn = no_progress, cancel: CancelFn = never_cancel) -> list[ImageRegionsArrays]:
    """Regions of every manifest image, from the cache or extracted now."""
    out = []
    for done, file in enumerate(manifest.files):
        if cancel():
            raise Cancelled()
        source = manifest.root / file
        arrays = cache.load(file, source)
        if arrays is None:
            start = time.perf_counter()
            regions = extractor.extract(load_image(source, max_side=extractor.max_side))
            seconds = time.perf_counter() - start
            dim = extractor.backbone.descriptor_dim
            arrays = {
                "boxes": np.array([r.box.as_list() for r in regions.regions], np.float64).reshape(-1, 4),
                "descriptors": regions.descriptors().reshape(-1, dim),
                "scores": np.array([r.score for r in regions.regions], np.float64),
                "size": np.array([regions.width, regions.height], np.int64),
                "seeds": np.int64(regions.seeds),
                "seconds": np.float64(seconds),
            }
            cache.save(file, source, arrays)
        out.append(ImageRegionsArrays(arrays["boxes"], arrays["descriptors"].astype(np.float32),
                                      int(arrays["size"][0]), int(arrays["size"][1]), int(arrays["seeds"]),
                                      float(arrays["seconds"]), arrays["scores"]))
        progress(done + 1, len(manifest.files))
    return out


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
                                    lambda done, _: progress(n + done, total), cancel)
    return {
        "manifest": str(manifest_path),
        "settings": asdict(settings),
        "extractor": extractor.config(),
        "extraction_code": code_fingerprint(_EXTRACTION_MODULES),
        "device": extractor.device_name,
        "images": len(manifest.files),
        "instances": list(manifest.instances),
        "queries": [{"instance": q.instance, "file": q.file, "frame": q.frame} for q in queries],
        "whitening": whitening_note,
        "methods": [m.summary() for m in methods],
        "simulated_feedback": None if reviews is None else _review_summary(reviews, settings),
        "wall_seconds": time.perf_counter() - started,
    }


def relocation_maps(manifest: Manifest, extractor: Extractor, cache_dir, cancel: CancelFn = never_cancel
                    ) -> dict[str, FeatureMap]:
    """Every manifest image's relocation map (cached like the regions)."""
    cache = NpzCache(cache_dir, "maps", {"config": extractor.relocation_config(), "code": code_fingerprint(_MAP_MODULES)})
    out = {}
    for file in manifest.files:
        if cancel():
            raise Cancelled()
        source = manifest.root / file
        arrays = cache.load(file, source)
        if arrays is None:
            arrays = extractor.relocation_map(load_image(source, max_side=extractor.max_side)).to_arrays()
            cache.save(file, source, arrays)
        out[file] = FeatureMap.from_arrays(arrays)
    return out


def _evaluate_regions(manifest, queries, images, extractor, whiten, label, cancel, settings,
                      reviews: list | None, maps: dict[str, FeatureMap] | None = None) -> MethodResult:
    cfg = extractor.config()
    name = label or f"{cfg['method'].upper()} {cfg['backbone']} {cfg['descriptor_layer']} ({cfg['mode']})"
    if maps is not None:
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
            reviews.append(_simulated_review(q, manifest, scorer, qvec, settings, boxes if windows is not None else None,
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


class _WindowFeedback:
    """A simulated annotator's hits as the GUI shows them with feedback: once hits were accepted,
    their boxes join the window queries and a hit is re-localised when it is reviewed, never onto
    a box already rejected in its image; a rejected image comes back when the windows move off its
    rejected boxes (relocate.second_look), up to MAX_LOOKS hits per image."""

    def __init__(self, manifest, maps, windows: WindowQuery, relevant, gt, image_boxes):
        self.files, self.maps, self.relevant, self.gt = manifest.files, maps, relevant, gt
        self.shown = {i: image_boxes[i] for i in range(len(image_boxes))}  # the box each hit shows
        self.query, self.windows, self.examples = windows, windows, []
        self.rejected: dict[int, list[Box]] = {}

    def found(self, i: int) -> bool:
        if self.examples or i in self.rejected:
            box = best_window(self.maps[self.files[i]], self.windows, exclude=self.rejected.get(i, ()))[1]
            self.shown[i] = box.as_list()
        hit = bool(self.relevant[i] and evaluation.centres_inside([self.shown[i]], [self.gt[i]])[0])
        if not hit:
            self.rejected.setdefault(i, []).append(Box.from_list(self.shown[i]))
        return hit

    def on_accept(self, i: int) -> None:
        example = window_query(self.maps[self.files[i]], Box.from_list(self.shown[i]))
        self.examples = (self.examples + [example])[-MAX_FEEDBACK_WINDOWS:]  # as Searcher.feedback_windows
        self.windows = WindowQuery.stack([self.query] + self.examples)

    def second_looks(self, rejected: list[int]) -> list[int]:
        if not self.examples:
            return []
        return [i for i in rejected if len(self.rejected[i]) < MAX_LOOKS
                and second_look(self.maps[self.files[i]], self.windows, self.rejected[i]) is not None]


def _simulated_review(q: Query, manifest: Manifest, scorer: RegionScorer, qvec, settings,
                      image_boxes: np.ndarray | None = None, maps: dict | None = None,
                      windows: WindowQuery | None = None) -> dict:
    """Hits a simulated annotator reviews before 90% of the instance's other images are found,
    on the plain list and with re-ranking from its accept / reject decisions. The regions order
    the hits; `image_boxes` [N, 4], when given, is the box each image's hit shows (re-localised:
    each image is one hit), else a hit is a region and shows itself."""
    files = np.array(manifest.files)
    relevant, gt = manifest.gt_boxes(q.instance, manifest.files)
    owner = scorer.owner
    mine = files[owner] != q.file
    n = int(relevant.sum()) - 1  # the query image is not in the list
    out = {"instance": q.instance, "file": q.file, "occurrences": n,
           "fewest_to_90": int(np.ceil(0.9 * n)),  # each occurrence found is one review: no list does better
           "list_length": len(manifest.files) - 1}
    if image_boxes is not None:  # one box per image: an image is one hit
        found = relevant & evaluation.centres_inside(image_boxes, gt)
    else:
        located = relevant[owner] & evaluation.centres_inside(scorer.boxes, gt[owner])
    for name, hits in (("plain", 0), ("feedback", settings.feedback_hits)):
        if image_boxes is not None:
            found_of, on_accept, second_looks = found, None, None
            if hits and windows is not None:  # accepted boxes also re-localise the rest, as the GUI
                review = _WindowFeedback(manifest, maps, windows, relevant, gt, image_boxes)
                found_of, on_accept, second_looks = review.found, review.on_accept, review.second_looks
            seq = evaluation.simulate_image_review(scorer.descriptors[mine], owner[mine], found_of, qvec,
                                                   settings.feedback_batch, hits, on_accept=on_accept,
                                                   second_looks=second_looks)
        else:
            seq = evaluation.simulate_review(scorer.descriptors[mine], owner[mine], located[mine], qvec,
                                             settings.feedback_batch, hits)
        out[name] = {"reviews_to_90": evaluation.hits_to_find(seq, n, 0.9),
                     "found@50": evaluation.recall_at_k(seq, n, 50), "found@100": evaluation.recall_at_k(seq, n, 100)}
    return out


def _review_summary(reviews: list[dict], settings) -> dict:
    out = {"batch": settings.feedback_batch, "feedback_hits": settings.feedback_hits, "queries": reviews}
    for name in ("plain", "feedback"):
        to90 = np.array([r[name]["reviews_to_90"] for r in reviews], float)
        reached = to90[np.isfinite(to90)]
        out[name] = {
            "reached_90": float(np.isfinite(to90).mean()) if len(to90) else None,
            "median_reviews_to_90": float(np.median(to90)) if len(to90) else None,  # inf when most never get there
            "mean_reviews_to_90_when_reached": float(reached.mean()) if len(reached) else None,
            # a query that never gets there counted as reviewing every image once
            "mean_reviews_to_90_never_as_all": float(np.mean(np.minimum(to90, [r["list_length"] for r in reviews])))
            if len(to90) else None,
            "found@50": float(np.nanmean([r[name]["found@50"] for r in reviews])) if reviews else None,
            "found@100": float(np.nanmean([r[name]["found@100"] for r in reviews])) if reviews else None,
        }
    # where both lists get there, how far each is from the fewest reviews possible
    both = [r for r in reviews if np.isfinite(r["plain"]["reviews_to_90"]) and np.isfinite(r["feedback"]["reviews_to_90"])]
    out["both_reached"] = {"queries": len(both), **{
        key: float(np.mean(values)) if both else None for key, values in (
            ("plain", [r["plain"]["reviews_to_90"] for r in both]),
            ("feedback", [r["feedback"]["reviews_to_90"] for r in both]),
            ("fewest_possible", [r["fewest_to_90"] for r in both]))}}
    return out


# --------------------------------------------------------------------------- baselines


def _network_rgb(extractor: Extractor, image) -> tuple[np.ndarray, float, float]:
    """The exact network input the extractor builds, as uint8 RGB, with its scale factors."""
    prep = extractor.prepare(image)
    rgb = prep.pixels[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(rgb), prep.scale_x, prep.scale_y


def baseline_results(manifest: Manifest, queries: list[Query], extractor: Extractor, cache_dir,
                     progress: ProgressFn = no_progress, cancel: CancelFn = never_cancel) -> list[MethodResult]:
    """Global pooling (whole query image, and the box crop) and the SIFT matcher."""
    backbone = extractor.backbone
    global_cache = NpzCache(cache_dir, "global", {"backbone": backbone.config(), "max_side": extractor.max_side,
                                                  "code": code_fingerprint(_GLOBAL_MODULES)})
    sift_cache = NpzCache(cache_dir, "sift", {"max_side": extractor.max_side, "opencv": cv2.__version__,
                                              "code": code_fingerprint(_SIFT_MODULES)})
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
