"""An evaluation manifest (instances, their frames and ground-truth boxes) and the queries drawn from it."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


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
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # file -> (w, h) where stated

    def image_size(self, file: str) -> tuple[int, int]:
        """(width, height) of a file: as the manifest states it, else read from the file's header."""
        if file not in self.image_sizes:
            from dasr_annotator.engine.store.imageio import image_size

            self.image_sizes[file] = image_size(self.root / file)
        return self.image_sizes[file]

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
    frames, gt, videos, files, sizes = {}, {}, {}, {}, {}
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
                if "image_size" in inst:
                    sizes[im["file"]] = tuple(int(v) for v in inst["image_size"])
                x, y, w, h = (float(v) for v in im["box"])
                gt[(name, im["file"])] = np.array([x - 1.0, y - 1.0, w, h])  # 1-based origin in the source
                frames[(name, im["file"])] = int(im.get("frame", 0))
    return Manifest(path.parent, list(files), selected, frames, videos, gt, sizes)


def select_queries(manifest: Manifest, per_instance: int = 3) -> list[Query]:
    """The instance's box in `per_instance` of its frames, evenly spread (first, middle, last)."""
    queries = []
    for name, files in manifest.instances.items():
        for i in np.unique(np.linspace(0, len(files) - 1, max(1, per_instance)).round().astype(int)):
            f = files[i]
            queries.append(Query(name, f, manifest.frames[(name, f)], manifest.gt[(name, f)]))
    return queries
