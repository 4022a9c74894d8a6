"""Extracting a project's new or changed photos: decoding ahead on threads, one photo per CPU core
(or groups on a GPU), shards committed as batches finish so a killed run loses at most one batch.

What is kept of each photo is decided here once, for this process and for the Ray workers
(engine/project/cluster.py) alike: `skip_reason` says why an unreadable photo is skipped,
`finish_photo` turns an extracted photo into its catalog entry, regions and relocation map, and
`keep_photo` adds them to the batch being written and to the map cache."""
from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dasr_annotator.engine.dasr.relocate import FeatureMap
from dasr_annotator.engine.search.map_cache import MapCache
from dasr_annotator.engine.store.collection import FileEntry, Fingerprint, RegionStore, content_hash, fingerprint
from dasr_annotator.engine.store.imageio import ImageError, load_image
from dasr_annotator.engine.types import Cancelled, ImageRegions


@dataclass
class ExtractedPhoto:
    """What indexing stores for one photo: its catalog entry (fingerprint as planned, content
    hash, oriented size), its regions, and its relocation map (None when the extractor makes
    none, or when the file changed during extraction and so has no content hash)."""

    entry: FileEntry
    regions: ImageRegions
    relocation_map: FeatureMap | None


def skip_reason(exc: ImageError | OSError) -> str:
    """Why a photo that cannot be decoded or read is skipped (the index report's reason)."""
    if isinstance(exc, ImageError):
        return exc.reason
    return f"cannot read the file: {exc.strerror or exc}"


def finish_photo(extractor, rel: str, planned: Fingerprint, path: Path, image, regions: ImageRegions
                 ) -> ExtractedPhoto:
    """The photo `rel` at `path`, planned with fingerprint `planned`, decoded as `image` and
    extracted as `regions`, made ready to store. Raises OSError when the file cannot be read."""
    # hashed after extraction (a refused image costs no read); if the file changed meanwhile the
    # hash may not match the regions: record none, and no map either
    digest = content_hash(path)
    digest = digest if fingerprint(path) == planned else ""
    fmap = getattr(regions, "relocation_map", None)
    regions.relocation_map = None  # stored apart from the regions, in the map cache
    if not digest:
        fmap = None
    elif fmap is None and hasattr(extractor, "relocation_map"):
        fmap = extractor.relocation_map(image)
    entry = FileEntry(rel, planned.size, planned.mtime_ns, digest, regions.width, regions.height)
    return ExtractedPhoto(entry, regions, fmap)


def relocation_maps(project, extractor) -> MapCache | None:
    """Where indexing stores the photos' relocation maps, so that the first search need not make
    them (search/map_cache.py); None for an extractor without them."""
    if not hasattr(extractor, "relocation_config"):
        return None
    return MapCache(None, extractor.relocation_config(), project.state_dir)


def keep_photo(project, photo: ExtractedPhoto, batch: list, maps: MapCache | None) -> None:
    """Add `photo` to `batch` (the next shard's (entry, regions)) and its map to `maps`."""
    batch.append((photo.entry, photo.regions))
    if maps is not None and photo.relocation_map is not None:
        maps.put(project.path_of(photo.entry.file), photo.relocation_map)


def extract_images(project, extractor, todo, store: RegionStore, progress, cancel, pause, batch_files: int,
                   batch_seconds: float):
    """Extract `todo` ([(relpath, Fingerprint)]) of `project` into `store` in shards; returns (number extracted, skipped entries, files not reached).

    Images are decoded a few ahead on background threads (one; up to 8 for a GPU) so the
    network never waits for the disk or the JPEG decoder. On a GPU, consecutive images go
    through the network together; on a CPU, one image per core is extracted at once, each on
    one thread (the extractor's `parallel_images`): whole images scale across cores better
    than each op split in two."""
    max_side = extractor.config().get("max_side")
    on_gpu = str(getattr(extractor, "device", "cpu")).startswith("cuda")
    group_size = 8 if on_gpu else 1
    workers = extractor.parallel_images() if hasattr(extractor, "parallel_images") else 1
    # A GPU extracts hundreds of photos a second: one decoder thread (3.3 ms a dev photo) would
    # starve it. On a CPU the cores are busy extracting and one decoder keeps ahead.
    decoders = min(8, os.cpu_count() or 1) if on_gpu else 1
    batch, failed, done, started = [], [], 0, time.monotonic()
    maps = relocation_maps(project, extractor)
    progress(0, len(todo))

    def flush():
        nonlocal batch, started
        if batch:
            store.write_shard(batch)
        batch, started = [], time.monotonic()

    def skip(rel, exc):
        failed.append({"file": rel, "reason": skip_reason(exc)})

    def extract_group(group):
        images = [image for _, _, _, image in group]
        extract_many = getattr(extractor, "extract_many", None)
        return extract_many(images) if extract_many else [extractor.extract(i) for i in images]

    def keep(group, results):
        nonlocal done
        for (rel, fp, path, image), regions in zip(group, results):
            try:
                photo = finish_photo(extractor, rel, fp, path, image, regions)
            except OSError as exc:
                skip(rel, exc)
                continue
            keep_photo(project, photo, batch, maps)
            done += 1

    def finish_running():
        """Keep what the groups in flight produce (a cancel or pause waits for them)."""
        while running:
            group, future = running.popleft()
            keep(group, future.result())

    pending, running = deque(), deque()
    position = [0]

    def read_ahead():
        while len(pending) < (workers + 1) * group_size + decoders and position[0] < len(todo):
            rel, fp = todo[position[0]]
            path = project.path_of(rel)
            pending.append((rel, fp, path, decoder.submit(load_image, path, max_side=max_side)))
            position[0] += 1

    with (ThreadPoolExecutor(max_workers=decoders, thread_name_prefix="dasr-decode") as decoder,
          ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dasr-extract") as pool,
          _threads_per_image(extractor, workers)):
        try:
            read_ahead()
            while pending or running:
                if cancel():
                    raise Cancelled()
                if pause():
                    finish_running()
                    flush()
                    return done, failed, [rel for rel, _, _, _ in pending] + [r for r, _ in todo[position[0]:]]
                while pending and len(running) < workers:
                    group = []
                    while pending and len(group) < group_size:
                        rel, fp, path, future = pending.popleft()
                        try:
                            group.append((rel, fp, path, future.result()))
                        except (ImageError, OSError) as exc:
                            skip(rel, exc)
                    read_ahead()
                    if group:
                        running.append((group, pool.submit(extract_group, group)))
                if running:
                    group, future = running.popleft()
                    keep(group, future.result())
                progress(done + len(failed), len(todo))
                if len(batch) >= batch_files or time.monotonic() - started >= batch_seconds:
                    flush()
        except (Cancelled, KeyboardInterrupt):
            for *_, future in pending:
                future.cancel()
            finish_running()
            flush()  # keep every image finished so far
            raise
    flush()
    return done, failed, []


def _threads_per_image(extractor, workers: int):
    """While `workers` images are extracted at once, each gets one thread (no oversubscription)."""
    return extractor.one_thread_each() if workers > 1 else contextlib.nullcontext()
