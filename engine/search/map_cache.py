"""Relocation maps kept on disk and in memory, so a photo's map is computed once per settings."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np

from dasr_annotator.engine.dasr.relocate import FeatureMap
from dasr_annotator.engine.store.video import media_file

log = logging.getLogger(__name__)


class MapCache:
    """Relocation maps per image: memory (LRU), then disk (`folder`, optional), then computed by
    `compute(path) -> FeatureMap`. A disk entry is reused only while the image file keeps its
    size and modification time; the folder name carries the settings the maps were made with."""

    def __init__(self, compute, config: dict, folder: str | Path | None = None, memory_items: int = 512):
        self.compute = compute
        self.memory_items = memory_items
        self._memory: OrderedDict[str, FeatureMap] = OrderedDict()
        key = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.folder = None if folder is None else Path(folder) / f"maps-{key}"

    def get(self, path: str | Path) -> FeatureMap:
        path = Path(path)
        stamp = _stamp(path)
        name = f"{path}|{stamp[0]}|{stamp[1]}"
        if name in self._memory:
            self._memory.move_to_end(name)
            return self._memory[name]
        fmap = self._load(path, stamp)
        if fmap is None:
            fmap = self.compute(path)
            self._save(path, stamp, fmap)
        self._memory[name] = fmap
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)
        return fmap

    def put(self, path: str | Path, fmap: FeatureMap) -> None:
        """Store a map computed elsewhere (indexing computes it in the same forward pass)."""
        self._save(Path(path), _stamp(Path(path)), fmap)

    def _file(self, path: Path) -> Path:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name)[-60:]
        return self.folder / f"{stem}-{hashlib.sha1(os.fsencode(path.resolve())).hexdigest()[:12]}.npz"

    def _load(self, path: Path, stamp: np.ndarray) -> FeatureMap | None:
        if self.folder is None or not self._file(path).is_file():
            return None
        try:
            with np.load(self._file(path), allow_pickle=False) as z:
                if not np.array_equal(z["stamp"], stamp):
                    return None
                return FeatureMap.from_arrays(z)
        except (OSError, ValueError, KeyError, EOFError) as exc:  # damaged entry: compute it again
            log.info("ignoring relocation map %s: %s", self._file(path), exc)
            return None

    def _save(self, path: Path, stamp: np.ndarray, fmap: FeatureMap) -> None:
        if self.folder is None:
            return
        target = self._file(path)
        partial = target.with_name(target.stem + ".part.npz")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            np.savez(partial, stamp=stamp, **fmap.to_arrays())
            partial.replace(target)
        except OSError as exc:  # a cache: a failed write costs time later, nothing else
            log.warning("could not cache the relocation map of %s: %s", path, exc)


def _stamp(path: Path) -> np.ndarray:
    st = media_file(path).stat()  # a video frame's map lives while its video is unchanged
    return np.array([st.st_size, st.st_mtime_ns], np.int64)
