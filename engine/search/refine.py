"""Refining hits coarse-to-fine: each hit's box placed on zoomed crops of its full-resolution photo.

The regions pick the photos and the stored map picks a few coarse windows in each
(`relocate.best_windows`); here every coarse window gets a context crop at the query's own zoom
(`dasr.zoom`), one partial forward pass per crop, and the best fine window over all crops of a
photo becomes its box. Where that box matches the query poorly on a photo the regions rate
highly, look-alikes drew the coarse windows (cars around the car looked for): a second look
crops the next coarse windows too (SECOND_LOOK_BELOW). The query itself (and every further
example, such as accepted boxes) is described the same way, from its own full-resolution photo,
once.

The refined box also says how sure the hit is: its similarity to the query (`Hit.box_score`) is
low where the regions found the right kind of photo but the fine search found nothing like the
instance in it. `rank_by_box` orders refined hits by region and box score together, so hits
whose boxes are on the instance come first.

Cost is bounded and front-loaded where it matters: `Refiner.refine` takes hits in the order they
are shown, works in chunks (a chunk's crops go through the network as batches of equal size, so
a GPU refines a whole result list in a few passes) and reports each finished chunk, so a window
can show the first screenful of refined boxes while the rest are still being refined; `cancel`
stops it between crops. Results are cached per (examples, photo, coarse windows, rejected boxes),
so feedback rounds and repeated searches do not pay twice.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from dasr_annotator.engine.dasr import zoom
from dasr_annotator.engine.dasr.relocate import FeatureMap, WindowQuery, best_windows, inscribed_ellipse
from dasr_annotator.engine.search.blend import blended_score
from dasr_annotator.engine.store.imageio import ImageError, load_image
from dasr_annotator.engine.store.video import media_file
from dasr_annotator.engine.types import Box, CancelFn, Cancelled, Hit, ProgressFn, never_cancel, no_progress

log = logging.getLogger(__name__)

# Coarse windows refined per photo: the best coarse window is the right one less often than one
# of the best three (+7 points of boxes at IoU >= 0.5 on dev-hires, issue #24).
COARSE_WINDOWS = 3
# A coarse window this many times larger or smaller than the expected size (the query's) also gets
# a crop planned for its own size: beyond the fine search's scales (0.6-1.6) the instance changed
# size since the query. Placement of the 12 best-ranked relevant hits per query at IoU >= 0.5 / 0.7:
# dev-hires 68.1 / 43.8 % -> 70.1 / 45.1 %, dev unchanged (88.9 / 68.1 %); at 1.4 dev lost 2 points.
SIZE_FROM_COARSE = 1.8
# Crops closer than this (centre distance, in expected object sizes) are one crop.
SAME_CROP = 1.0
# A second look: where the first look's best fine window matches the query poorly (box score below
# SECOND_LOOK_BELOW) on a photo the regions rate close to the best hit being refined (region score
# at least SECOND_LOOK_REGION x the best), the instance is likely in the photo but beside every
# coarse window (look-alikes drew them: the other vehicles of a street), so the next
# SECOND_LOOK_WINDOWS coarse windows get crops too. 0.5 lies between the mean box score of a box on
# the instance and of one beside it on both shared sets (0.60 / 0.35 on dev-hires, 0.53 / 0.35
# on dev); the region gate keeps the extra crops for photos likely to hold the instance (~1 hit
# in 8 on dev-hires gets a second look, where looking at 8 windows everywhere costs 2.5x).
SECOND_LOOK_BELOW = 0.5
SECOND_LOOK_REGION = 0.5
SECOND_LOOK_WINDOWS = 5
# Hits refined between two reports: the first screenful of a result list arrives early.
CHUNK_CPU = 10
CHUNK_GPU = 100


@dataclass
class Example:
    """A box to look for, described at its own zoom (`dasr.zoom.Template`), and its size in the
    network input of its photo (what a coarse window is measured in)."""

    template: zoom.Template
    net_size: tuple[float, float]  # box (w, h) in network-input pixels of its own photo
    key: str  # identifies the example for caches


class Refiner:
    """Refines hits for one extractor; holds the example and result caches."""

    def __init__(self, extractor, cache_items: int = 4096):
        self.extractor = extractor
        self.stride = extractor.backbone.relocation_stride
        self.layer = extractor.backbone.relocation_layer
        self._examples: OrderedDict[str, Example] = OrderedDict()
        self._results: OrderedDict[tuple, tuple[float, Box]] = OrderedDict()
        self.cache_items = cache_items
        # crops extracted side by side on a CPU, one per core (read before any one-thread section)
        self.workers = extractor.parallel_images() if hasattr(extractor, "parallel_images") else 1

    @property
    def on_gpu(self) -> bool:
        return str(self.extractor.device).startswith("cuda")

    # ------------------------------------------------------------------ examples

    def example(self, path: str | Path, box: Box) -> Example:
        """The query (or an accepted box) described for fine matching; cached per file state."""
        path = Path(path)
        key = _file_key(path) + "|" + ",".join(f"{v:.2f}" for v in box.as_list())
        if key in self._examples:
            self._examples.move_to_end(key)
            return self._examples[key]
        want = zoom.zoom_for((box.w, box.h), self.stride)
        loaded = self._load(path, want)
        crop = zoom.plan_crop(box.center, (box.w, box.h), (loaded.width, loaded.height), self.stride)
        pixels, crop = zoom.cut(loaded.rgb, loaded.scale, crop)
        feature = zoom.centred_map(self._features([pixels])[0], crop.valid_cells(self.stride))
        x1, y1, x2, y2 = (v / self.stride for v in crop.from_original(box))
        template = zoom.Template.of(feature, (x1, y1, x2, y2))
        net_scale = self.extractor.max_side / max(loaded.width, loaded.height)
        example = Example(template, (box.w * net_scale, box.h * net_scale), hashlib.sha1(key.encode()).hexdigest()[:16])
        self._examples[key] = example
        while len(self._examples) > 256:
            self._examples.popitem(last=False)
        return example

    # ------------------------------------------------------------------ hits

    def refine(self, hits: Sequence[Hit], examples: Sequence[Example], windows: WindowQuery,
               fmap_of: Callable[[str], FeatureMap | None], path_of: Callable[[str], Path],
               rejected: dict[str, list[Box]] | None = None, progress: ProgressFn = no_progress,
               cancel: CancelFn = never_cancel, emit: Callable[[list[tuple[int, Hit]]], None] | None = None,
               ) -> list[Hit]:
        """The same hits, same order and scores, with refined boxes and their `box_score` (the
        best fine window's similarity to the examples; `rank_by_box` orders by it).
        `fmap_of(image)` gives a photo's stored map (None: leave the hit as it is), `path_of(image)`
        its file; `windows` picks the coarse windows; `rejected` (image -> boxes) are never chosen
        again. After each chunk, `emit([(index, refined hit), ...])` (hits that could not be
        refined are left out) and `progress(done, total)`; on a CPU the second looks follow once
        every hit was emitted, and the hits they improve are emitted again (the total then grows
        by the second looks); `cancel()` raises Cancelled between crops."""
        # On a CPU every op here is small: split over cores, each waits on the others (10x slower on
        # a busy machine, measured); crops run side by side instead (`_batched_features`).
        with contextlib.nullcontext() if self.on_gpu else self._one_thread():
            return self._refine(hits, examples, windows, fmap_of, path_of, rejected, progress, cancel, emit)

    def _one_thread(self):
        one = getattr(self.extractor, "one_thread_each", None)
        return one() if one is not None else contextlib.nullcontext()

    def _refine(self, hits, examples, windows, fmap_of, path_of, rejected, progress, cancel, emit) -> list[Hit]:
        out = list(hits)
        chunk = CHUNK_GPU if self.on_gpu else CHUNK_CPU
        rejected = rejected or {}
        # the second look's gate: region scores against the best hit being refined
        best_region = max((_region_score(h) for h in hits), default=0.0)
        # On a CPU the second looks wait until every hit had its first: the whole list gets its
        # boxes as soon as before, and the few that a second look improves are emitted again.
        deferred: list[_Plan] = []
        items = list(enumerate(hits))
        progress(0, len(hits))
        for start in range(0, len(hits), chunk):
            done = []
            for i, hit in self._refine_chunk(items[start:start + chunk], examples, windows, fmap_of,
                                             path_of, rejected, cancel, best_region, deferred):
                out[i] = hit
                done.append((i, hit))
            if emit is not None and done:
                emit(done)
            progress(min(len(hits), start + chunk), len(hits))
        total = len(hits) + len(deferred)
        for start in range(0, len(deferred), chunk):
            part = deferred[start:start + chunk]
            for plan in part:
                self._cut_second_look(plan, examples)
            self._run_crops(part, examples, rejected, cancel)
            done = []
            for plan in part:
                best = self._finish(plan)
                if best is not None and best is not plan.first:
                    out[plan.index] = _refined_hit(plan.hit, best)
                    done.append((plan.index, out[plan.index]))
            if emit is not None and done:
                emit(done)
            progress(len(hits) + min(len(deferred), start + chunk), total)
        return out

    def _keep(self, key: tuple, result: tuple[float, Box]) -> None:
        self._results[key] = result
        while len(self._results) > self.cache_items:
            self._results.popitem(last=False)

    def _finish(self, plan: "_Plan") -> tuple[float, Box] | None:
        """The plan's result (`_Plan.result`), kept in the cache."""
        best = plan.result
        if best is not None:
            self._keep(plan.key, best)
        return best

    def _refine_chunk(self, items, examples, windows, fmap_of, path_of, rejected, cancel, best_region, deferred):
        """[(index, refined hit)] for a chunk: the first look at every hit's best coarse windows,
        and a second look at the next ones where the first found nothing like the query
        (SECOND_LOOK_BELOW): on a GPU in the same batch, on a CPU added to `deferred` (the first
        look's box is returned meanwhile, and not cached); crops of equal size go through the
        network together."""
        plans = {}  # index -> _Plan, for hits not in the cache
        results = {}  # index -> (box score, box)
        for i, hit in items:
            if cancel():
                raise Cancelled()
            fmap = fmap_of(hit.image)
            if fmap is None:
                continue
            path = path_of(hit.image)
            excluded = tuple(rejected.get(hit.image, ()))
            found = [(s, box) for s, box in best_windows(fmap, windows, COARSE_WINDOWS + SECOND_LOOK_WINDOWS,
                                                          exclude=excluded)
                     if math.isfinite(s)]
            first, further = found[:COARSE_WINDOWS], found[COARSE_WINDOWS:]
            if not (further and _region_score(hit) >= SECOND_LOOK_REGION * best_region):
                further = []
            try:
                key = (tuple(e.key for e in examples), _file_key(path),
                       tuple(tuple(round(v, 1) for v in b.as_list()) for _, b in first),
                       tuple(tuple(round(v, 1) for v in b.as_list()) for b in excluded), bool(further))
            except OSError as exc:
                log.warning("%s: not refined (%s)", hit.image, exc)
                continue
            if key in self._results:
                self._results.move_to_end(key)
                results[i] = self._results[key]
                continue
            plan = _Plan(i, hit, path, fmap, key, further)
            decoded = {}  # the photo as decoded for the first look, for a GPU's second look at once
            try:
                plan.crops = [(crop, pixels, False) for crop, pixels in
                              self._crops(path, fmap, first, examples, plan.centres, own_size=True, decoded=decoded)]
            except (OSError, ImageError) as exc:
                log.warning("%s: not refined (%s)", hit.image, exc)
                continue
            if self.on_gpu:  # one batch: every second look allowed is cut now and counts only where needed
                self._cut_second_look(plan, examples, decoded)
            plans[i] = plan
        self._run_crops(plans.values(), examples, rejected, cancel)
        for i, plan in plans.items():
            if not self.on_gpu and plan.needs_second_look:
                deferred.append(plan)  # its second look comes after every hit's first
                if plan.first is not None:
                    results[i] = plan.first
                continue
            best = self._finish(plan)
            if best is not None:
                results[i] = best
        return [(i, _refined_hit(hit, results[i])) for i, hit in items if i in results]

    def _cut_second_look(self, plan: "_Plan", examples: Sequence[Example], decoded: dict | None = None) -> None:
        if not plan.further:
            return
        try:
            plan.crops += [(crop, pixels, True) for crop, pixels in
                           self._crops(plan.path, plan.fmap, plan.further, examples, plan.centres, decoded=decoded)]
        except (OSError, ImageError) as exc:
            log.warning("%s: no second look (%s)", plan.hit.image, exc)

    def _run_crops(self, plans, examples: Sequence[Example], rejected: dict, cancel: CancelFn) -> None:
        """The plans' crops through the network (all of them batched together); each crop's best
        fine window competes for its plan's first or second look: (box score, box in original
        pixels)."""
        todo = [(plan, crop, pixels, second) for plan in plans for crop, pixels, second in plan.crops]
        features = self._batched_features([pixels for _, _, pixels, _ in todo], cancel)
        for (plan, crop, _, second), feature in zip(todo, features):
            valid = crop.valid_cells(self.stride)
            fmap_c = zoom.centred_map(feature, valid)
            excluded = rejected.get(plan.hit.image, ())
            ex_cells = (torch.tensor([[v / self.stride for v in crop.from_original(b)] for b in excluded])
                        if excluded else None)
            score, cells = zoom.best_fine_window(fmap_c, [e.template for e in examples], valid, ex_cells)
            if not math.isfinite(score):
                continue
            x1, y1, x2, y2 = (float(v) * self.stride for v in cells)
            box = crop.to_original(x1, y1, x2, y2)
            if box.w < 1 or box.h < 1:
                continue
            current = plan.second if second else plan.first
            if current is None or score > current[0]:
                if second:
                    plan.second = (score, box)
                else:
                    plan.first = (score, box)
        for plan in plans:
            plan.crops = []  # the pixels are not needed any more

    def _crops(self, path: Path, fmap: FeatureMap, coarse: list[tuple[float, Box]], examples: Sequence[Example],
               centres: list, own_size: bool = False, decoded: dict | None = None):
        """[(crop, pixels)] around the coarse windows, one set per example size, near duplicates
        merged (also with the crops already made at `centres`, which grows); `own_size`: also a
        crop at the best coarse window's own size where the instance changed size a lot."""
        sizes = [(e.net_size[0] / fmap.scale_x, e.net_size[1] / fmap.scale_y) for e in examples]
        plans = [(size, box) for size in _distinct_sizes(sizes) for _, box in coarse]
        if own_size and SIZE_FROM_COARSE:  # an instance much larger or smaller here than in the query
            for _, box in coarse[:1]:
                own = (box.w, box.h)
                if all(abs(math.log(math.sqrt(own[0] * own[1]) / math.sqrt(s[0] * s[1]))) > math.log(SIZE_FROM_COARSE)
                       for s in sizes):
                    plans.append((own, box))
        if not plans:
            return []
        want = max(zoom.zoom_for(s, self.stride) for s, _ in plans)
        loaded = None
        crops = []
        for size, box in plans:
            geo = math.sqrt(max(size[0], 1.0) * max(size[1], 1.0))
            cx, cy = box.center
            if any(s == size and math.hypot(cx - x, cy - y) < SAME_CROP * geo for s, x, y in centres):
                continue
            centres.append((size, cx, cy))
            if loaded is None:
                loaded = decoded.get(want) if decoded is not None else None
                if loaded is None:
                    loaded = self._load(path, want)
                    if decoded is not None:
                        decoded[want] = loaded
            plan = zoom.plan_crop((cx, cy), size, (loaded.width, loaded.height), self.stride)
            pixels, crop = zoom.cut(loaded.rgb, loaded.scale, plan)
            crops.append((crop, pixels))
        return crops

    # ------------------------------------------------------------------ network

    def _load(self, path: Path, want_zoom: float):
        """The photo decoded just large enough for `want_zoom` (JPEG draft decoding when smaller)."""
        from dasr_annotator.engine.store.imageio import image_size

        width, height = image_size(path)
        need = math.ceil(max(width, height) * min(1.0, want_zoom * 1.05))
        return load_image(path, max_side=need if need < max(width, height) else None)

    def _features(self, patches: list[np.ndarray]) -> list[torch.Tensor]:
        bb = self.extractor.backbone
        pixels = torch.cat([bb.to_input(p) for p in patches])
        with torch.inference_mode():
            return list(bb.forward(pixels, layers=(self.layer,)).features[self.layer].float().cpu())

    def _batched_features(self, patches: list[np.ndarray], cancel: CancelFn) -> list[torch.Tensor]:
        """Relocation maps of the crops. A GPU takes crops of one size as batches; a CPU runs one
        crop per core side by side, each on one thread (as the indexer extracts photos: small
        ops split across cores poorly), and a cancel is seen between crops."""
        workers = self.workers
        if not self.on_gpu and workers > 1 and len(patches) > 1:
            with ThreadPoolExecutor(workers, "dasr-refine") as pool:
                futures = [pool.submit(self._features, [p]) for p in patches]
                out = []
                for future in futures:
                    if cancel():
                        for f in futures:
                            f.cancel()
                        raise Cancelled()
                    out.append(future.result()[0])
                return out
        out: list[torch.Tensor | None] = [None] * len(patches)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(patches):
            groups.setdefault(p.shape, []).append(i)
        batch = 256 if self.on_gpu else 1  # a GPU: a whole result list in one or two batches
        for indices in groups.values():
            for start in range(0, len(indices), batch):
                if cancel():
                    raise Cancelled()
                part = indices[start:start + batch]
                for i, feature in zip(part, self._features([patches[i] for i in part])):
                    out[i] = feature
        return out


def blend_scores(hits: Sequence[Hit]) -> list[Hit]:
    """The same hits in the same order, each hit's `score` the `blended_score` of its region and
    box score, its `region_score` keeping what the regions gave. Hits blended before are blended
    from their region score again, never twice."""
    out = []
    for hit in hits:
        region = _region_score(hit)
        out.append(replace(hit, score=blended_score(region, hit.box_score), region_score=region))
    return out


def rank_by_box(hits: Sequence[Hit]) -> list[Hit]:
    """Refined hits ordered by `blended_score` (stable; `blend_scores`)."""
    return sorted(blend_scores(hits), key=lambda h: -h.score)


@dataclass
class _Plan:
    """One hit being refined: where to look, what was cut, the best window found so far."""

    index: int  # the hit's place in the list being refined
    hit: Hit
    path: Path
    fmap: FeatureMap
    key: tuple  # the result cache's key
    further: list[tuple[float, Box]]  # coarse windows for a second look (empty: none allowed)
    crops: list = field(default_factory=list)  # [(crop, pixels, second look?)] to run
    centres: list = field(default_factory=list)  # (size, x, y) of every crop made, for merging
    first: tuple[float, Box] | None = None  # the best fine window of the first look: (score, box)
    second: tuple[float, Box] | None = None  # ... of the second look

    @property
    def needs_second_look(self) -> bool:
        return bool(self.further) and (self.first is None or self.first[0] < SECOND_LOOK_BELOW)

    @property
    def result(self) -> tuple[float, Box] | None:
        """The first look's best window, unless a second look was needed and found a better one."""
        second, first = self.second, self.first
        if self.needs_second_look and second is not None and (first is None or second[0] > first[0]):
            return second
        return self.first


def _refined_hit(hit: Hit, result: tuple[float, Box]) -> Hit:
    score, box = result
    return replace(hit, box=box, ellipse=inscribed_ellipse(box), box_score=score)


def _region_score(hit: Hit) -> float:
    return hit.region_score if hit.region_score is not None else hit.score


def _distinct_sizes(sizes):
    out = []
    for s in sizes:
        if not any(abs(math.log(s[0] / o[0])) < 0.2 and abs(math.log(s[1] / o[1])) < 0.2 for o in out):
            out.append(s)
    return out


def _file_key(path: Path) -> str:
    st = media_file(path).stat()  # a video frame (clip.mp4#frame=N) is as fresh as its video
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"
