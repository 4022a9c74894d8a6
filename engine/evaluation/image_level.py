"""Image-level methods the evaluation runs beside DASR*: the product's whole-image search
(region-set kernel, engine/search/image_search.py), the paper's VLAD* of the regions (k = 4), and
ASMK (aggregated selective match kernels, Tolias et al.; PyPI `asmk`) over local features of the
embedded backbone.

ASMK's local features are the cells of the backbone's stride-16 map (its relocation layer),
l2-normalised, the ASMK_FEATURES strongest (largest norm) per image. Its codebook is trained with
faiss k-means on a different set of photos than the one evaluated (`asmk_training_manifest`), as
ASMK is meant to be used: a codebook learned once, offline. ASMK aggregates matches per visual
word, so it returns no box; the query is the query box's cells.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from dasr_annotator.engine.dasr.descriptors import VladCodebook, l2n
from dasr_annotator.engine.evaluation import baselines
from dasr_annotator.engine.evaluation.cache import NpzCache, code_fingerprint
from dasr_annotator.engine.evaluation.manifest import Manifest, Query, load_manifest
from dasr_annotator.engine.search import image_search
from dasr_annotator.engine.store.imageio import load_image
from dasr_annotator.engine.types import Cancelled, CancelFn, never_cancel

log = logging.getLogger(__name__)

VLAD_CLUSTERS = 4  # the paper's k
ASMK_FEATURES = 300  # strongest cells kept per image (HOW keeps ~1,000 over several scales)
ASMK_CODEBOOK = 1024  # visual words, for ~20,000 training features
ASMK_TRAINING_IMAGES = 70  # training photos, spread evenly over the training manifest
ASMK_PARAMS = {
    "index": {"gpu_id": None},
    "train_codebook": {"codebook": {"size": ASMK_CODEBOOK}},
    "build_ivf": {"kernel": {"binary": True}, "ivf": {"use_idf": False},
                  "quantize": {"multiple_assignment": 1}, "aggregate": {}},
    # the published ASMK* settings: query soft-assigned to 5 words, alpha 3, threshold 0
    "query_ivf": {"quantize": {"multiple_assignment": 5}, "aggregate": {},
                  "search": {"topk": None}, "similarity": {"similarity_threshold": 0.0, "alpha": 3.0}},
}
IMAGE_MODULES = ("evaluation/image_level", "evaluation/baselines", "dasr/backbones", "dasr/layers", "dasr/networks")


def asmk_training_manifest(manifest_path) -> Path:
    """The photos ASMK's codebook is trained on: the real holiday photos (dev-photos) for the
    video sets, the dev video frames for dev-photos, so never the set evaluated."""
    path = Path(manifest_path).resolve()
    data = path.parent.parent
    other = "dev" if path.parent.name == "dev-photos" else "dev-photos"
    return data / other / "manifest.json"


def cell_features(backbone, rgb: np.ndarray, keep: int = ASMK_FEATURES) -> dict[str, np.ndarray]:
    """The `keep` strongest cells of the stride-16 map of a network-input image: l2-normalised
    features [n, C] and cell centres [n, 2] in network-input pixels."""
    fmap = baselines.feature_map(backbone, rgb, backbone.relocation_layer)
    c, h, w = fmap.shape
    cells = fmap.reshape(c, -1).T
    norms = np.linalg.norm(cells, axis=1)
    top = np.sort(np.argsort(-norms, kind="stable")[:keep])
    stride = backbone.relocation_stride
    centres = np.stack([(top % w + 0.5) * stride, (top // w + 0.5) * stride], 1).astype(np.float32)
    return {"features": l2n(cells[top]).astype(np.float32), "centres": centres}


def _cell_arrays(extractor, network_rgb, source) -> dict:
    start = time.perf_counter()
    rgb, sx, sy = network_rgb(extractor, load_image(source, max_side=extractor.max_side))
    arrays = cell_features(extractor.backbone, rgb)
    arrays["scale"] = np.array([sx, sy], np.float64)
    arrays["seconds"] = np.float64(time.perf_counter() - start)
    return arrays


def _features(manifest: Manifest, extractor, cache_dir, network_rgb, cancel: CancelFn) -> tuple[list[dict], float]:
    cache = NpzCache(cache_dir, "asmk-cells", {"backbone": extractor.backbone.config(), "max_side": extractor.max_side,
                                               "keep": ASMK_FEATURES, "code": code_fingerprint(IMAGE_MODULES)})
    out, seconds = [], []
    for file in manifest.files:
        if cancel():
            raise Cancelled()
        source = manifest.root / file
        arrays = cache.get(file, source, lambda: _cell_arrays(extractor, network_rgb, source))
        out.append(arrays)
        seconds.append(float(arrays["seconds"]))
    return out, float(np.mean(seconds)) if seconds else 0.0


def asmk_result(manifest_path, manifest: Manifest, queries: list[Query], extractor, cache_dir, network_rgb,
                result_factory, cancel: CancelFn = never_cancel):
    """ASMK* over the backbone's cells (module docstring); None when the `asmk` package is not
    installed or the training photos are not there (the reason is logged)."""
    try:
        from asmk import asmk_method
    except ImportError:
        log.warning("ASMK baseline skipped: the `asmk` package is not installed (pip install asmk pyaml)")
        return None
    training_path = asmk_training_manifest(manifest_path)
    if not training_path.is_file():
        log.warning("ASMK baseline skipped: its training photos %s are missing", training_path)
        return None
    training = load_manifest(training_path, None, None)
    step = max(1, len(training.files) // ASMK_TRAINING_IMAGES)
    training.files = training.files[::step][:ASMK_TRAINING_IMAGES]
    train_feats, _ = _features(training, extractor, cache_dir, network_rgb, cancel)
    start = time.perf_counter()
    method = asmk_method.ASMKMethod.initialize_untrained(ASMK_PARAMS)
    method = method.train_codebook(np.concatenate([f["features"] for f in train_feats]))
    train_seconds = time.perf_counter() - start
    feats, seconds_per_image = _features(manifest, extractor, cache_dir, network_rgb, cancel)
    start = time.perf_counter()
    vecs = np.concatenate([f["features"] for f in feats])
    owners = np.concatenate([np.full(len(f["features"]), i) for i, f in enumerate(feats)])
    method = method.build_ivf(vecs, owners)
    build_seconds = time.perf_counter() - start
    r = result_factory(f"ASMK* ({extractor.backbone.relocation_layer} cells, {ASMK_CODEBOOK} words)", "local",
                       has_boxes=False,
                       note=(f"binary ASMK*, alpha 3, query on 5 words; codebook trained with faiss on "
                             f"{len(training.files)} photos of {training_path.parent.name}; {ASMK_FEATURES} strongest "
                             f"stride-16 cells per image; codebook {train_seconds:.1f} s, inverted file "
                             f"{build_seconds:.2f} s; returns no box"))
    r.extract_seconds_per_image = seconds_per_image + build_seconds / max(len(feats), 1)
    index_of = {f: i for i, f in enumerate(manifest.files)}
    for q in queries:
        if cancel():
            raise Cancelled()
        start = time.perf_counter()
        own = feats[index_of[q.file]]
        sx, sy = own["scale"]
        x, y, w, h = q.box
        c = own["centres"]
        inside = ((c[:, 0] >= x * sx) & (c[:, 0] <= (x + w) * sx) & (c[:, 1] >= y * sy) & (c[:, 1] <= (y + h) * sy))
        if not inside.any():  # a box smaller than a cell: its nearest cell
            centre = np.array([(x + w / 2) * sx, (y + h / 2) * sy])
            inside = np.zeros(len(c), bool)
            inside[np.argmin(((c - centre) ** 2).sum(1))] = True
        _, _, ranks, scores = method.query_ivf(own["features"][inside], np.zeros(int(inside.sum()), np.int64))
        image_scores = np.zeros(len(manifest.files))
        image_scores[ranks[0]] = scores[0]
        keep = np.array([f != q.file for f in manifest.files])
        refs = [f for f in manifest.files if f != q.file]
        r.add(q, manifest, refs, _ranking(image_scores[keep], None, time.perf_counter() - start))
    return r


def _ranking(scores, boxes, seconds):
    from dasr_annotator.engine.evaluation.runner import Ranking

    return Ranking(scores, boxes, seconds)


def whole_image_results(manifest: Manifest, queries: list[Query], images, result_factory,
                        cancel: CancelFn = never_cancel) -> list:
    """The product's whole-image search and the paper's VLAD* (k = 4, codebook fitted on the
    evaluated collection's own regions, as a project would) on the raw (l2) region descriptors:
    the query is the whole query photo, whatever its box."""
    descs = [l2n(np.asarray(im.descriptors, np.float32)) for im in images]
    dim = max((d.shape[1] for d in descs if d.size), default=1)
    descs = [d.reshape(-1, dim) for d in descs]
    owner = np.concatenate([np.full(len(d), i) for i, d in enumerate(descs)])
    regions = np.concatenate(descs)
    kernel = result_factory("whole-image search (region-set kernel), query=image", "global", has_boxes=False,
                            note="the product's `search --query IMG` without a box: mean over the query photo's "
                                 "regions of each one's best match in the photo (engine/search/image_search.py)")
    start = time.perf_counter()
    book = VladCodebook().fit(regions, k=VLAD_CLUSTERS) if len(regions) >= VLAD_CLUSTERS else None
    vlad = None
    if book is not None:
        vectors = np.stack([book.embed(d) if len(d) else np.zeros(book.k * dim, np.float32) for d in descs])
        fit_seconds = time.perf_counter() - start
        vlad = result_factory("VLAD* of the regions (k = 4), query=image", "global", has_boxes=False,
                              note=f"the paper's image-level embedding; codebook fitted on the collection's "
                                   f"{len(regions)} regions in {fit_seconds:.2f} s")
    index_of = {f: i for i, f in enumerate(manifest.files)}
    for q in queries:
        if cancel():
            raise Cancelled()
        qi = index_of[q.file]
        keep = np.array([f != q.file for f in manifest.files])
        refs = [f for f in manifest.files if f != q.file]
        start = time.perf_counter()
        sims = descs[qi] @ regions.T  # every region: the exact lists a small project's flat index gives
        ids = np.broadcast_to(np.arange(len(regions)), sims.shape)
        scores = image_search.set_scores(sims, ids, owner, len(descs), complete=True)
        kernel.add(q, manifest, refs, _ranking(scores[keep], None, time.perf_counter() - start))
        if vlad is not None:
            start = time.perf_counter()
            scores = vectors @ vectors[qi]
            vlad.add(q, manifest, refs, _ranking(scores[keep], None, time.perf_counter() - start))
    return [kernel] + ([vlad] if vlad is not None else [])
