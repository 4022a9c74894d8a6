"""Evaluation caches: regions and relocation maps per image, as npz keyed by settings and code,
since extracting a few hundred images takes minutes on a CPU."""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dasr_annotator.engine.dasr.extractor import Extractor
from dasr_annotator.engine.dasr.relocate import FeatureMap
from dasr_annotator.engine.evaluation.manifest import Manifest
from dasr_annotator.engine.store.imageio import load_image
from dasr_annotator.engine.store.video import media_file
from dasr_annotator.engine.types import Cancelled, CancelFn, ProgressFn, never_cancel, no_progress

log = logging.getLogger(__name__)

# Modules whose code decides the regions: a change to any of them invalidates cached extraction
# (paths relative to engine/).
EXTRACTION_MODULES = ("dasr/extractor", "dasr/moments", "dasr/modulation", "dasr/excitation", "dasr/regions",
                      "dasr/backbones", "dasr/layers", "dasr/networks", "dasr/descriptors")
GLOBAL_MODULES = ("evaluation/baselines", "dasr/backbones", "dasr/layers", "dasr/networks", "dasr/extractor")
SIFT_MODULES = ("evaluation/baselines", "dasr/extractor")
MAP_MODULES = ("dasr/relocate", "dasr/backbones", "dasr/layers", "dasr/networks", "dasr/extractor")
CACHE_FORMAT = 2  # arrays stored per image


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
        st = media_file(source).stat()  # a video frame (clip.mp4#frame=N) is as fresh as its video
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

    def get(self, file: str, source: Path, make) -> dict:
        """The cached arrays of `file`, or `make()`'s, saved for next time."""
        arrays = self.load(file, source)
        if arrays is None:
            arrays = make()
            self.save(file, source, arrays)
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
    engine = Path(__file__).resolve().parents[1]
    for name in module_names:
        digest.update((engine / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]


for _modules in (EXTRACTION_MODULES, GLOBAL_MODULES, SIFT_MODULES):
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
    return NpzCache(folder, "regions", {"config": extractor.config(), "code": code_fingerprint(EXTRACTION_MODULES),
                                        "format": CACHE_FORMAT})


def extract_manifest(manifest: Manifest, extractor: Extractor, cache: NpzCache,
                     progress: ProgressFn = no_progress, cancel: CancelFn = never_cancel) -> list[ImageRegionsArrays]:
    """Regions of every manifest image, from the cache or extracted now."""
    out = []
    for done, file in enumerate(manifest.files):
        if cancel():
            raise Cancelled()
        source = manifest.root / file
        arrays = cache.get(file, source, lambda: _region_arrays(extractor, source))
        out.append(ImageRegionsArrays(arrays["boxes"], arrays["descriptors"].astype(np.float32),
                                      int(arrays["size"][0]), int(arrays["size"][1]), int(arrays["seeds"]),
                                      float(arrays["seconds"]), arrays["scores"]))
        progress(done + 1, len(manifest.files))
    return out


def _region_arrays(extractor: Extractor, source: Path) -> dict:
    start = time.perf_counter()
    regions = extractor.extract(load_image(source, max_side=extractor.max_side))
    seconds = time.perf_counter() - start
    dim = extractor.backbone.descriptor_dim
    return {
        "boxes": np.array([r.box.as_list() for r in regions.regions], np.float64).reshape(-1, 4),
        "descriptors": regions.descriptors().reshape(-1, dim),
        "scores": np.array([r.score for r in regions.regions], np.float64),
        "size": np.array([regions.width, regions.height], np.int64),
        "seeds": np.int64(regions.seeds),
        "seconds": np.float64(seconds),
    }


def relocation_maps(manifest: Manifest, extractor: Extractor, cache_dir, cancel: CancelFn = never_cancel
                    ) -> dict[str, FeatureMap]:
    """Every manifest image's relocation map (cached like the regions)."""
    cache = NpzCache(cache_dir, "maps", {"config": extractor.relocation_config(), "code": code_fingerprint(MAP_MODULES)})
    out = {}
    for file in manifest.files:
        if cancel():
            raise Cancelled()
        source = manifest.root / file
        arrays = cache.get(file, source, lambda: extractor.relocation_map(
            load_image(source, max_side=extractor.max_side)).to_arrays())
        out[file] = FeatureMap.from_arrays(arrays)
    return out
