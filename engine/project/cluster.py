"""Indexing a project on a Ray cluster (the optional `cluster` extra: `pip install -e '.[cluster]'`).

Ray Data reads the list of photos to extract and streams it through a pool of extractor actors,
one model each (one per GPU when the cluster has GPUs, else one per CPU core, as local indexing
extracts one photo per core). Each worker finishes its photos with `extraction.finish_photo` and
the driver keeps them with `extraction.keep_photo`, the per-photo steps of local indexing (what is
stored per photo is decided there once), and commits them through the project's own path
(`Project.update_index` with this module's extraction in place of `extraction.extract_images`):
the same shards, catalog, maps, whitening and index that
local indexing writes, so the window and `search` open the project unchanged, and a killed driver
is resumed by the next run, local or on Ray, which skips the photos already committed.

A worker that dies loses the photos of the task it was running (`photos_per_task`); Ray restarts
the actor and runs that task again (a dead actor is always replaced, Ray Data's `max_restarts=-1`),
at most TASK_RETRIES times, and the driver keeps each photo once. A task that still fails stops
the run with ClusterError; what was received is kept, and the next run goes on from there.
Workers read the photos from shared storage (an NFS mount, at the same path as on the driver);
they are named relative to the collection root, as everywhere in the project.

Ray is imported only here and only when called, so the plain install never needs it.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dasr_annotator.engine.dasr.relocate import FeatureMap
from dasr_annotator.engine.project.extraction import (ExtractedPhoto, finish_photo, keep_photo, relocation_maps,
                                                      skip_reason)
from dasr_annotator.engine.store.collection import Fingerprint
from dasr_annotator.engine.store.imageio import ImageError, load_image
from dasr_annotator.engine.types import CancelFn, Cancelled, ProgressFn, never_cancel, no_progress

log = logging.getLogger(__name__)

INSTALL_HINT = ("indexing on a Ray cluster needs the `cluster` extra: pip install -e '.[cluster]' "
                "(from the source folder) or pip install 'dasr-annotator[cluster]'")
PHOTOS_PER_TASK_CPU = 4  # ~1 s of work on a core: little lost to a dying worker, little per-task overhead
PHOTOS_PER_TASK_GPU = 32  # a GPU extracts groups of 8 (Extractor.extract_many); 4 groups per task


# Runs of one task after the first, each on a fresh actor when the last one died.
TASK_RETRIES = 3

class ClusterError(RuntimeError):
    """The Ray cluster could not be reached, or a batch failed on every retry. Batches committed
    before it stay in the project; the next run goes on from them."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class RayMissing(ImportError):
    """Ray (the `cluster` extra) is not installed."""

    def __init__(self):
        super().__init__(INSTALL_HINT)
        self.message = INSTALL_HINT


def import_ray():
    """The `ray` module with Ray Data, or RayMissing saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data comes with the `data` extra of ray)
    except ImportError:
        raise RayMissing() from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """Connect to the cluster at `address` (`auto`, `HOST:PORT` or `ray://HOST:PORT`), or start a
    local Ray instance with `num_cpus` (default: this machine's cores) when `address` is None or
    empty. A session already open in this process is used as it is and left open."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = dict(logging_level=logging.WARNING, include_dashboard=False, configure_logging=True)
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ClusterError(f"cannot start or reach {where}: {exc}") from None
    try:
        _quiet_data(ray)
        yield ray
    finally:
        ray.shutdown()


def _quiet_data(ray) -> None:
    """No Ray Data progress bars or execution-plan lines: the caller reports progress its own way."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    if hasattr(context, "enable_operator_progress_bars"):
        context.enable_operator_progress_bars = False


class PhotoExtractor:
    """A Ray Data actor: one Extractor (one model), turning batches of photo names into regions.

    A batch is columns `rel`, `size`, `mtime_ns` (the fingerprint the driver planned with); each
    output row is `rel` and `result`, a pickled dict: the photo's FileEntry, regions and relocation
    map (as arrays), as `extraction.finish_photo` makes them, or the reason it was skipped."""

    def __init__(self, extractor_args: dict, device: str, root: str):
        import torch

        from dasr_annotator.engine.dasr.extractor import Extractor

        if not device.startswith("cuda"):
            # one thread per actor, one actor per core: as local indexing runs one photo per core
            torch.set_num_threads(1)
        self.extractor = Extractor(device=device, **extractor_args)
        self.root = Path(root)
        self.max_side = self.extractor.config().get("max_side")
        self.on_gpu = self.extractor.device.startswith("cuda")
        # decoding on one thread would starve a GPU: one pool for the actor's life, not one a batch
        self._decoders = ThreadPoolExecutor(max_workers=8) if self.on_gpu else None

    def __call__(self, batch: dict) -> dict:
        rels = [str(r) for r in batch["rel"]]
        planned = [Fingerprint(int(s), int(m)) for s, m in zip(batch["size"], batch["mtime_ns"])]
        paths = [self.root / rel for rel in rels]
        loaded = list(self._decoders.map(self._load, paths)) if self._decoders else [self._load(p) for p in paths]
        results: list[dict | None] = [None] * len(rels)
        images = [(i, image) for i, image in enumerate(loaded) if not isinstance(image, str)]
        for i, image in enumerate(loaded):
            if isinstance(image, str):
                results[i] = {"skip": image}
        extracted = self.extractor.extract_many([image for _, image in images])  # batched on a GPU, 1 by 1 on a CPU
        for (i, image), regions in zip(images, extracted):
            results[i] = self._finish(rels[i], paths[i], planned[i], image, regions)
        return {"rel": np.array(rels, dtype=object),
                "result": np.array([pickle.dumps(r, protocol=5) for r in results], dtype=object)}

    def _load(self, path: Path):
        """The decoded photo, or why it cannot be read (the same reasons local indexing gives)."""
        try:
            return load_image(path, max_side=self.max_side)
        except (ImageError, OSError) as exc:
            return skip_reason(exc)

    def _finish(self, rel: str, path: Path, planned: Fingerprint, image, regions) -> dict:
        try:
            photo = finish_photo(self.extractor, rel, planned, path, image, regions)
        except OSError as exc:
            return {"skip": skip_reason(exc)}
        fmap = photo.relocation_map  # travels as arrays
        return {"entry": photo.entry, "regions": photo.regions, "map": None if fmap is None else fmap.to_arrays()}


@dataclass
class RayExtraction:
    """Extraction on Ray with the signature of `extraction.extract_images`, for
    `Project.update_index(..., extract=RayExtraction(...))`. The actors build their Extractor from
    `extractor_args` (the same settings as the driver's, which only checks and records them)."""

    extractor_args: dict
    address: str | None = None  # None: a local Ray instance (see ray_session)
    device: str = "auto"  # auto: the GPUs when the cluster has them, else the CPUs
    actors: int | None = None  # default: one per GPU, else one per CPU of the cluster
    photos_per_task: int | None = None  # default from the device (PHOTOS_PER_TASK_CPU / _GPU)
    actor: type = PhotoExtractor

    def plan(self, ray, photos: int) -> dict:
        """Device, actors and batch size for `photos` photos on the connected cluster."""
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        if self.device == "cuda" and not gpus:
            raise ClusterError("--device cuda: the Ray cluster has no GPU")
        on_gpu = gpus > 0 and self.device != "cpu"
        per_task = self.photos_per_task or (PHOTOS_PER_TASK_GPU if on_gpu else PHOTOS_PER_TASK_CPU)
        actors = self.actors or (gpus if on_gpu else cpus)
        actors = max(1, min(actors, math.ceil(photos / per_task)))
        return {"device": "cuda" if on_gpu else "cpu", "actors": actors, "photos_per_task": per_task}

    def __call__(self, project, extractor, todo, store, progress: ProgressFn, cancel: CancelFn, pause: CancelFn,
                 batch_files: int, batch_seconds: float):
        """Extract `todo` ([(relpath, Fingerprint)]) into `store` as `extract_images` does; returns
        (number extracted, skipped entries, files not reached)."""
        progress(0, len(todo))
        if not todo:
            return 0, [], []  # nothing to extract: no cluster is reached, no instance started
        with ray_session(self.address) as ray:
            return self._extract(ray, project, extractor, todo, store, progress, cancel, pause, batch_files,
                                 batch_seconds)

    def _extract(self, ray, project, extractor, todo, store, progress, cancel, pause, batch_files, batch_seconds):
        plan = self.plan(ray, len(todo))
        log.info("extracting %d photos on Ray: %s", len(todo), plan)
        per_task, device = plan["photos_per_task"], plan["device"]
        items = [{"rel": rel, "size": fp.size, "mtime_ns": fp.mtime_ns} for rel, fp in todo]
        resources = {"num_gpus": 1} if device == "cuda" else {"num_cpus": 1}
        # a dead actor is always replaced, but a task whose photos kill every worker that runs it
        # (a decoder crash) must not be run again without end: it fails the run, which says so
        resources["max_task_retries"] = TASK_RETRIES
        dataset = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / per_task)).map_batches(
            self.actor, batch_size=per_task, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=plan["actors"]),
            fn_constructor_kwargs={"extractor_args": self.extractor_args, "device": device,
                                   "root": str(project.photos)},
            **resources)
        maps = relocation_maps(project, extractor)
        wanted = {rel: fp for rel, fp in todo}
        received: set[str] = set()
        batch, failed, started = [], [], time.monotonic()

        def flush():
            nonlocal batch, started
            if batch:
                store.write_shard(batch)
            batch, started = [], time.monotonic()

        rows = iter(dataset.iter_rows())
        try:
            for row in rows:
                rel = str(row["rel"])
                if rel in received or rel not in wanted:
                    continue  # a task run again after its worker died must not add a photo twice
                received.add(rel)
                result = pickle.loads(row["result"])
                if "skip" in result:
                    failed.append({"file": rel, "reason": result["skip"]})
                else:
                    fmap = None if result["map"] is None else FeatureMap.from_arrays(result["map"])
                    keep_photo(project, ExtractedPhoto(result["entry"], result["regions"], fmap), batch, maps)
                progress(len(received), len(todo))
                if len(batch) >= batch_files or time.monotonic() - started >= batch_seconds:
                    flush()
                if cancel():
                    raise Cancelled()
                if pause():
                    flush()
                    return len(received) - len(failed), failed, [rel for rel, _ in todo if rel not in received]
        except (Cancelled, KeyboardInterrupt):
            flush()  # keep every photo received so far
            raise
        except ray.exceptions.RayError as exc:
            flush()
            raise ClusterError(f"extraction on Ray failed ({len(received)} of {len(todo)} photos done and kept; "
                               f"run again to go on): "
                               f"{_summary(exc)}") from exc
        finally:
            if hasattr(rows, "close"):
                rows.close()  # stops the pipeline when the run ends early
        flush()
        return len(received) - len(failed), failed, []


def _summary(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def index_on_ray(project, extractor_args: dict, address: str | None = None, device: str = "auto",
                 actors: int | None = None, photos_per_task: int | None = None, progress: ProgressFn = no_progress,
                 cancel: CancelFn = never_cancel, rebuild: bool = False, batch_files: int | None = None,
                 pause: CancelFn = never_cancel, actor: type = PhotoExtractor, extractor=None):
    """`project.update_index` with the photos extracted on the Ray cluster at `address` (a local
    Ray instance when None). Returns the IndexReport; raises what update_index raises,
    ClusterError, and RayMissing without the `cluster` extra. `extractor`: the driver's, which
    only states the settings the project records (default: built from `extractor_args` on the
    CPU, so that the actors have every GPU)."""
    from dasr_annotator.engine.dasr.extractor import Extractor

    import_ray()  # before loading a model: say at once what is missing
    if extractor is None:
        extractor = Extractor(device="cpu", **extractor_args)
    extraction = RayExtraction(extractor_args, address=address, device=device, actors=actors,
                               photos_per_task=photos_per_task, actor=actor)
    options = {} if batch_files is None else {"batch_files": batch_files}
    return project.update_index(extractor, progress=progress, cancel=cancel, rebuild=rebuild,
                                weights=extractor_args.get("weights"), pause=pause, extract=extraction, **options)
