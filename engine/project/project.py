"""One photo folder as a project: where its state lives, incremental indexing, search, labels.

State lives in `PHOTOS/.dasr/`, or, when the folder is read-only, in the user cache folder under a
name derived from the folder's absolute path. A folder that grants nobody write permission counts
as read-only even for root (who could write anyway): the intent of such a mode is "leave me alone".

`state_dir/manifest.json` records the extractor settings the regions were made with, the explicit
weights file, the whitening and the current index generation; the index files of a generation are
written first and the manifest switches to them atomically, so a reader never sees half an index.

Building an exact index holds every live region's raw descriptor (float16) and its whitened copy
in memory, about N x (2 D + 4 d) bytes: at most ~0.2 GB, as exact indexes stop at EXACT_MAX_WORK.
An IVF index (large collections) is built from a training sample plus parts of INDEX_PART_REGIONS
regions read one at a time and searched from disk: its re-ranking codes, the bulk of it, are in
`index-<gen>.refine` beside the index file, read row by row as queries re-rank candidates (an
index built before issue #20's re-ranking keeps its inverted lists in `index-<gen>.ivfdata`,
memory-mapped instead; engine/search/index.py, docs/index.md); what stays in memory is the
fast-scan lists (36 bytes a region). The region table (photo, box, ellipse and
score of each region, each photo's name and size: search/region_table.py) is one `.npy` file a
column, opened memory-mapped (an index written before keeps it in `index-<gen>.npz`, read
into memory).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import secrets
import shutil
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dasr_annotator.engine.dasr.descriptors import Whitening
from dasr_annotator.engine.project.extraction import extract_images
from dasr_annotator.engine.project.lock import StateLock
from dasr_annotator.engine.search import index as faiss_index
from dasr_annotator.engine.search import region_table
from dasr_annotator.engine.search.region_table import RegionTable
from dasr_annotator.engine.store.annotations import AnnotationStore
from dasr_annotator.engine.store.collection import (NPZ_ERRORS, REBUILD_HINT, STATE_FOLDER, FileEntry, RegionArrays,
                                                    RegionStore, ScanResult, content_hash, fingerprint, scan_images,
                                                    write_json)
from dasr_annotator.engine.store.storage import (DamagedFile, ProjectFileError, atomic_write_bytes, damaged_copy_path,
                                                 is_writable_dir, read_json, require_intact, restore_backup,
                                                 user_cache_dir)
from dasr_annotator.engine.store.video import DEFAULT_VIDEO_FPS, frame_of, order_key
from dasr_annotator.engine.types import CancelFn, ProgressFn, never_cancel, no_progress

log = logging.getLogger(__name__)

FORMAT = 1
WHITEN_SAMPLE = 200_000  # regions a whitening is fitted on at most (plenty for D <= 2048)
BATCH_FILES = 32  # images per shard ...
BATCH_SECONDS = 30.0  # ... or fewer when extraction is slow: a kill loses at most this much work
MAX_VIDEO_FPS = 240.0  # a sampling rate above any camera's is a typo
# Regions read and added to an on-disk index at a time: ~0.6 GB of float16 descriptors at D = 320
# plus their whitened float32 copy.
INDEX_PART_REGIONS = 1_000_000


class IncompatibleIndex(Exception):
    """The folder's regions were made with other settings; mixing them would be meaningless."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NoIndex(Exception):
    """The folder has no (complete) index yet."""


@dataclass
class IndexReport:
    images: int  # images in the index after the run
    indexed: int  # extracted in this run
    reused: int  # unchanged since an earlier run
    removed: int  # gone from the folder since the last run
    regions: int  # regions in the index
    skipped: list[dict] = field(default_factory=list)  # [{"file", "reason"}]
    notes: list[str] = field(default_factory=list)  # for people (whitening refitted, index kind, ...)
    pending: int = 0  # left for the next run because `pause` asked to stop early
    renamed: list[dict] = field(default_factory=list)  # [{"from", "to", "labels"}] labels followed by content
    missing_labelled: list[dict] = field(default_factory=list)  # [{"file", "labels"}] kept, photo gone

    def as_json(self) -> dict:
        return {"images": self.images, "indexed": self.indexed, "reused": self.reused, "removed": self.removed,
                "regions": self.regions, "skipped": list(self.skipped), "renamed": list(self.renamed),
                "missing_labelled": list(self.missing_labelled)}


@dataclass
class _Plan:
    reuse: list[str]
    extract: list[tuple[str, object]]  # (relpath, Fingerprint)
    refreshed: dict[str, FileEntry]  # touched but identical content: new fingerprint, same regions
    skipped: list[dict]


class Project:
    """A photo folder and its state folder."""

    def __init__(self, photos: Path, state_dir: Path, state_note: str):
        self.photos = photos
        self.state_dir = state_dir
        self.state_note = state_note
        self._annotations: AnnotationStore | None = None
        self.frame_times: dict[str, float] = {}  # video frame -> seconds into its video, as last scanned

    # ---- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, photos: str | os.PathLike) -> "Project":
        photos = Path(photos).expanduser().resolve()
        if not photos.is_dir():
            raise FileNotFoundError(f"{photos} is not a folder")
        local = photos / STATE_FOLDER
        cached = cache_state_dir(photos)
        if local.is_dir() and _writable(local):
            return cls(photos, local, f"project state in {local}")
        if not local.exists() and not cached.is_dir() and _writable(photos):
            local.mkdir()
            return cls(photos, local, f"project state in {local}")
        cached.mkdir(parents=True, exist_ok=True)
        why = "the photo folder is read-only" if not _writable(photos) else "state was kept here before"
        return cls(photos, cached, f"project state in {cached} ({why})")

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / "manifest.json"

    def manifest(self) -> dict | None:
        if not self.manifest_path.exists():
            return None
        try:
            data = read_json(self.manifest_path, expect=dict)
        except ProjectFileError as exc:
            raise ProjectFileError(f"{exc.message}; {REBUILD_HINT}") from None
        if data.get("format") != FORMAT:
            raise ProjectFileError(f"{self.manifest_path} has format {data.get('format')!r}, which this version "
                                   f"does not read; {REBUILD_HINT}")
        if not isinstance(data.get("extractor"), dict):
            raise ProjectFileError(f"{self.manifest_path} records no extractor settings; {REBUILD_HINT}")
        return data

    def scan(self) -> list[str]:
        return self.scan_result().files

    def scan_result(self) -> ScanResult:
        """The folder's photos and sampled video frames (with their times), and what could not be read."""
        result = scan_images(self.photos, self.video_fps())
        self.frame_times = result.frame_times
        return result

    # ---- video sampling (per folder) ----------------------------------------------------------
    @property
    def video_settings_path(self) -> Path:
        return self.state_dir / "video.json"

    def video_fps(self) -> float:
        """Frames sampled per second of each video in this folder (DEFAULT_VIDEO_FPS unless set)."""
        if not self.video_settings_path.exists():
            return DEFAULT_VIDEO_FPS
        try:
            fps = read_json(self.video_settings_path, expect=dict).get("fps")
        except ProjectFileError as exc:
            log.warning("%s; sampling videos at %g fps", exc.message, DEFAULT_VIDEO_FPS)
            return DEFAULT_VIDEO_FPS
        return float(fps) if isinstance(fps, (int, float)) and 0 < fps <= MAX_VIDEO_FPS else DEFAULT_VIDEO_FPS

    def set_video_fps(self, fps: float) -> None:
        """Sample this folder's videos at `fps` from the next scan on (the next index run extracts
        the new frames and drops the ones no longer sampled). Raises ValueError when unusable."""
        if not isinstance(fps, (int, float)) or not 0 < fps <= MAX_VIDEO_FPS:
            raise ValueError(f"video fps must be above 0 and at most {MAX_VIDEO_FPS:g}, got {fps}")
        write_json(self.video_settings_path, {"fps": float(fps)})

    def path_of(self, rel: str) -> Path:
        return self.photos / rel

    def relative(self, path: str | os.PathLike) -> str | None:
        """`path` (relative to the photo folder or absolute) as a collection path, or None if it
        lies outside the folder. Lexical, so links inside the folder (which scanning follows) stay
        usable while `..` can never climb out."""
        p = Path(os.path.normpath(path))
        if p.is_absolute():
            try:
                p = p.relative_to(self.photos)
            except ValueError:
                try:  # the folder itself may have been named through a link
                    p = p.resolve().relative_to(self.photos)
                except ValueError:
                    return None
        if p == Path(".") or p.parts[0] == "..":
            return None
        return p.as_posix()

    @property
    def annotations_path(self) -> Path:
        return self.state_dir / "annotations.json"

    @property
    def annotations(self) -> AnnotationStore:
        """The project's labels. A damaged labels file is never replaced by its backup behind the
        user's back (the latest labels may be lost with it): DamagedFile says so, and names the
        good backup that `restore_labels_backup` puts back."""
        if self._annotations is None:
            path = self.annotations_path
            try:
                require_intact(path, expect=dict)
            except DamagedFile as exc:
                if exc.backup is not None:
                    listed = exc.backup_data.get("annotations")
                    labels = len(listed) if isinstance(listed, list) else 0
                    hint = (f"its backup {exc.backup.name} is good ({labels} label{'s' if labels != 1 else ''}, "
                            f"saved {_modified(exc.backup)}): restore it with `dasr-annotator label PHOTOS "
                            f"--restore-backup` (the damaged file is kept as {damaged_copy_path(path).name})")
                else:
                    hint = ("there is no usable backup; repair the file, or move it away to start again "
                            "with no labels")
                exc.message = f"{exc.problem}; {hint}"
                exc.args = (exc.message,)
                raise
            self._annotations = AnnotationStore.load(path)
        return self._annotations

    def restore_labels_backup(self) -> int:
        """Put the labels' good backup back (the damaged file is kept as `.damaged`); returns the
        number of labels restored. Raises ProjectFileError when the labels file is not damaged
        (nothing to restore: its backup is older) or has no usable backup."""
        path = self.annotations_path
        try:
            require_intact(path, expect=dict)
        except DamagedFile as exc:
            if exc.backup is None:
                raise ProjectFileError(f"{exc.problem}; there is no usable backup to restore") from None
            restore_backup(path, keep_damaged=True)
            self._annotations = None
            return len(self.annotations.list())
        raise ProjectFileError(f"{path} is not damaged; nothing was restored (its backup is an older version)")

    # ---- indexing -----------------------------------------------------------------------------
    def check_compatible(self, config: dict, weights: str | None) -> None:
        """Raise IncompatibleIndex when the stored regions were made with other settings."""
        manifest = self.manifest()
        if manifest is None:
            return
        stored, stored_weights = manifest["extractor"], manifest.get("weights")
        diffs = [f"{k}: {stored.get(k)!r} here, {config.get(k)!r} asked" for k in sorted(set(stored) | set(config))
                 if stored.get(k) != config.get(k)]
        if stored_weights != weights:
            diffs.append(f"weights: {stored_weights or 'built-in'} here, {weights or 'built-in'} asked")
        if diffs:
            raise IncompatibleIndex(
                f"{self.photos} was indexed with other settings ({'; '.join(diffs)}); regions made with "
                "different settings cannot be mixed. Rebuild with: dasr-annotator index "
                f"{self.photos} --rebuild (and the settings you want)")

    def update_index(self, extractor, progress: ProgressFn = no_progress, cancel: CancelFn = never_cancel,
                     rebuild: bool = False, weights: str | None = None, batch_files: int = BATCH_FILES,
                     batch_seconds: float = BATCH_SECONDS, pause: CancelFn = never_cancel,
                     extract=extract_images) -> IndexReport:
        """Bring the regions and the index up to date with the folder: extract new or changed
        images, drop removed ones, reuse the rest. Finished batches are saved as they complete, so
        a cancelled (or killed) run is resumed by the next one. When `pause()` turns true the run
        stops extracting, indexes what it has and returns (`pending` images are left for the next
        run), so a search can use the images done so far. Raises IncompatibleIndex when the
        folder was indexed with other settings, unless `rebuild`. `extract` does the extracting
        (`extraction.extract_images` in this process; `cluster.RayExtraction` on a Ray cluster)."""
        config = extractor.config()
        with StateLock(self.state_dir / "lock"):
            manifest = None
            if not rebuild:  # a rebuild reads nothing: the old state may be damaged
                self.check_compatible(config, weights)
                manifest = self.manifest()
            store = RegionStore(self.state_dir, load=manifest is not None)
            if manifest is None:
                self._clear_search_state()
                store.clear()  # regions of unknown settings
                manifest = {"format": FORMAT, "photos": str(self.photos), "extractor": config, "weights": weights,
                            "whitening": None, "index": None}
                self._write_manifest(manifest)
            scan = self.scan_result()
            plan = self._plan(scan.files, store)
            moves = _moved_files(self, store, scan.files, [rel for rel, _ in plan.extract])
            skipped = scan.problems + plan.skipped
            for entry in plan.refreshed.values():
                store.entries[entry.file] = entry
            extracted, failed, pending = extract(self, extractor, plan.extract, store, progress, cancel, pause,
                                                 batch_files, batch_seconds)
            skipped += failed
            # unreadable, or changed and not yet extracted again: their stored regions are stale
            unusable = {s["file"] for s in skipped} | set(pending)
            live = [f for f in scan.files if f in store.entries and f not in unusable]
            catalogued = set(store.entries)
            removed = len(catalogued - set(scan.files))
            store.commit(live)
            store.compact()
            notes = list(store.warnings)
            if plan.refreshed:
                notes.append(f"{len(plan.refreshed)} touched file(s) had unchanged content and were reused")
            regions = self._refresh_search_state(store, live, manifest, notes, cancel)
        try:
            renamed, missing = self.follow_labels(moves, scan.files)
        except ProjectFileError as exc:  # damaged or busy: the labels stay as they are, the index is done
            renamed, missing = [], []
            notes.append(f"labels not followed to renamed photos: {exc.message}")
        if renamed:
            notes.append(f"labels of {len(renamed)} renamed or moved photo(s) followed them (same content)")
        if missing:
            notes.append(f"{sum(m['labels'] for m in missing)} label(s) on {len(missing)} photo(s) no longer in the "
                         f"folder are kept in the project: {', '.join(m['file'] for m in missing[:5])}"
                         + (" …" if len(missing) > 5 else ""))
        return IndexReport(images=len(live), indexed=extracted, reused=len(plan.reuse) + len(plan.refreshed),
                           removed=removed, regions=regions, skipped=skipped, notes=notes, pending=len(pending),
                           renamed=renamed, missing_labelled=missing)

    def follow_labels(self, moves: dict[str, str], files: list[str]) -> tuple[list[dict], list[dict]]:
        """Move the labels of renamed photos (`moves`: old -> new path) to their new names and list
        the labelled photos that are gone; those labels are kept. Raises ProjectFileError when the
        labels file is damaged or another writer holds it too long. Works on its own copy of the
        labels file (saved under the project's label lock, merged with any other writer, e.g. the
        window, which takes the change in on its next check)."""
        path = self.annotations_path
        if not path.exists():
            return [], []
        require_intact(path, expect=dict)  # a damaged file is never replaced by its backup here
        labels = AnnotationStore.load(path)
        present = set(files)
        renamed = []
        for old, new in moves.items():
            moved = [labels.update(a.id, image=new) for a in labels.list(image=old)]
            if moved:
                renamed.append({"from": old, "to": new, "labels": len(moved)})
        if renamed:
            labels.save()
        counts: dict[str, int] = {}
        for ann in labels.list():
            if ann.image not in present:
                counts[ann.image] = counts.get(ann.image, 0) + 1
        return renamed, [{"file": f, "labels": counts[f]} for f in sorted(counts, key=order_key)]

    def _plan(self, files: list[str], store: RegionStore) -> _Plan:
        plan = _Plan([], [], {}, [])
        for rel in files:
            try:
                fp = fingerprint(self.path_of(rel))
            except OSError as exc:
                plan.skipped.append({"file": rel, "reason": f"cannot read the file: {exc.strerror or exc}"})
                continue
            entry = store.entries.get(rel)
            if entry is not None and entry.matches(fp):
                plan.reuse.append(rel)
            elif entry is not None and entry.size == fp.size and _same_content(self.path_of(rel), entry.sha256):
                plan.refreshed[rel] = FileEntry(**{**entry.as_json(), "mtime_ns": fp.mtime_ns})
            else:
                plan.extract.append((rel, fp))
        return plan

    # ---- whitening and index ------------------------------------------------------------------
    def _refresh_search_state(self, store: RegionStore, live: list[str], manifest: dict, notes: list[str],
                              cancel: CancelFn) -> int:
        """Refit the whitening if due and rebuild the index if anything changed. Returns regions."""
        n_regions = sum(store.entries[f].count for f in live)
        dim = int(manifest["extractor"]["descriptor_dim"])
        content = _content_key(store, live)
        white_info = manifest.get("whitening")
        wanted_dim = faiss_index.whitening_dim(n_regions, dim)
        stored = self._load_whitening(white_info) if white_info else None
        if n_regions < faiss_index.whitening_min_regions(dim):
            new_white_info, whitening = None, None
        elif (stored is None or white_info.get("requested_dim") != wanted_dim
              or faiss_index.needs_refit(n_regions, white_info.get("collection_regions", 0))):
            whitening = self._fit_whitening(store, live, wanted_dim)
            new_white_info = {"file": f"whitening-{_generation()}.npz", "fitted_on": whitening.n_fit,
                              "collection_regions": n_regions, "requested_dim": wanted_dim,
                              "dim": whitening.output_dim}
            self._save_arrays(new_white_info["file"], whitening.to_arrays())
            notes.append(f"whitening fitted on {whitening.n_fit} regions ({whitening.output_dim} dims)")
        else:
            new_white_info, whitening = white_info, stored
        index_info = manifest.get("index")
        if (index_info is not None and index_info.get("content") == content and new_white_info == white_info
                and self._index_intact(index_info)):
            return n_regions
        gen = _generation()
        new_index = {"file": f"index-{gen}.faiss", "table": region_table.table_files(gen)}
        spec = faiss_index.index_spec(n_regions, whitening.output_dim if whitening is not None else dim)
        mapped = bool(n_regions) and faiss_index.stored_on_disk(spec)
        if mapped:
            built, arrays = self._build_ondisk(store, live, whitening, dim, spec, self.state_dir / new_index["file"],
                                               cancel)
            key, suffix = (("refine", faiss_index.REFINE_SUFFIX) if faiss_index.is_refined(spec)
                           else ("ivfdata", faiss_index.ONDISK_SUFFIX))
            new_index[key] = Path(new_index["file"]).with_suffix(suffix).name
        else:
            arrays = store.read(live)
            vectors = faiss_index.index_vectors(arrays.descriptors, whitening, dim)
            built = faiss_index.build_index(vectors, spec=spec if n_regions else "Flat", cancel=cancel)
            atomic_write_bytes(self.state_dir / new_index["file"], built.to_bytes(), backup=False)
        new_index.update({"type": built.spec, "metric": "inner_product", "nprobe": built.nprobe, "dim": built.dim,
                          "regions": n_regions, "images": len(live), "recall_at_100": round(built.recall_at_100, 4),
                          "content": content})
        if built.k_factor:
            new_index["k_factor"] = built.k_factor
        sizes = np.array([[store.entries[f].width, store.entries[f].height] for f in live], np.int32).reshape(-1, 2)
        region_table.write_table(self.state_dir, new_index["table"], live, sizes, arrays.image, arrays.boxes,
                                 arrays.ellipses, arrays.scores)
        new_index["bytes"] = [p.stat().st_size for p in self._index_paths(new_index)]
        manifest.update(index=new_index, whitening=new_white_info)
        self._write_manifest(manifest)
        self._remove_stale_generations(manifest)
        notes.append(f"index: {built.spec} over {n_regions} regions of {built.dim} dims"
                     + (f", nprobe {built.nprobe} (recall@100 {built.recall_at_100:.3f} vs exact)"
                        if built.nprobe else "")
                     + (f", {built.k_factor} x candidates re-ranked" if built.k_factor else "")
                     + (", searched from disk (not read into memory)" if mapped else ""))
        return n_regions

    def _build_ondisk(self, store: RegionStore, live: list[str], whitening: Whitening | None, dim: int, spec: str,
                      path: Path, cancel: CancelFn):
        """An IVF index over the regions of `live` written to `path` (+ its lists file), reading
        INDEX_PART_REGIONS regions at a time; returns it and the region table (no descriptors)."""
        sample_files = self._sample_files(store, live, faiss_index.training_size(spec), seed=1)
        sample = faiss_index.index_vectors(store.read(sample_files).descriptors, whitening, dim)
        chunks: list[list[str]] = [[]]
        regions = 0
        for f in live:
            if regions >= INDEX_PART_REGIONS:
                chunks.append([])
                regions = 0
            chunks[-1].append(f)
            regions += store.entries[f].count
        tables: list = []

        def parts():
            first_image = 0
            for chunk in chunks:
                arrays = store.read(chunk)
                arrays.image += first_image
                first_image += len(chunk)
                tables.append((arrays.image, arrays.boxes, arrays.ellipses, arrays.scores))
                yield faiss_index.index_vectors(arrays.descriptors, whitening, dim)

        built = faiss_index.build_ondisk_index(parts(), sample, path, spec, cancel=cancel)
        columns = [np.concatenate([t[i] for t in tables]) for i in range(4)]
        return built, RegionArrays(np.zeros((0, dim), np.float16), columns[1], columns[2], columns[3], columns[0])

    @staticmethod
    def _sample_files(store: RegionStore, live: list[str], regions: int, seed: int = 0) -> list[str]:
        """A seeded random subset of `live` (sorted) holding at least `regions` regions, or all of them."""
        rng = np.random.default_rng(seed)
        chosen, total = [], 0
        for i in rng.permutation(len(live)):
            if total >= regions:
                break
            chosen.append(live[i])
            total += store.entries[live[i]].count
        return sorted(chosen)

    def _index_paths(self, info: dict) -> list[Path]:
        """The files of one index generation, in the order `bytes` records their sizes: the index,
        its region table (`meta`, one .npz, before the table was memory-mapped; `table`, one .npy a
        column, since), then the index's lists or re-ranking codes file."""
        paths = [self.state_dir / info[k] for k in ("file", "meta", "ivfdata", "refine") if k in info]
        if isinstance(info.get("table"), dict):
            paths += region_table.column_paths(self.state_dir, info["table"])
        return paths

    def _fit_whitening(self, store: RegionStore, live: list[str], dim: int | None) -> Whitening:
        """Fit on the regions of a seeded random subset of images (about WHITEN_SAMPLE regions)."""
        sample = store.read(self._sample_files(store, live, WHITEN_SAMPLE)).descriptors.astype(np.float32)
        return Whitening(dim=dim, shrinkage=faiss_index.WHITENING_SHRINKAGE).fit(sample)

    def _load_whitening(self, info: dict) -> Whitening | None:
        """The stored whitening, or None when its file is missing or damaged (it is refitted)."""
        try:
            with np.load(self.state_dir / info["file"], allow_pickle=False) as z:
                return Whitening.from_arrays(dict(z))
        except NPZ_ERRORS:
            return None

    def _save_arrays(self, name: str, arrays: dict) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(self.state_dir / name, buffer.getvalue(), backup=False)

    def _index_intact(self, info: dict) -> bool:
        """The index files are there with the sizes they were written with (a cheap check that
        catches truncation; anything subtler is caught when the searcher loads them)."""
        paths = self._index_paths(info)
        return all(p.is_file() for p in paths) and [p.stat().st_size for p in paths] == info.get("bytes")

    def _write_manifest(self, manifest: dict) -> None:
        manifest["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(self.manifest_path, manifest)

    def _remove_stale_generations(self, manifest: dict) -> None:
        keep = {p.name for p in self._index_paths(manifest["index"])}
        if manifest.get("whitening"):
            keep.add(manifest["whitening"]["file"])
        for path in self.state_dir.iterdir():
            if path.name.startswith(("index-", "whitening-", ".index-")) and path.name not in keep:
                if path.is_file():  # (".index-*.tmp": the temporary files of a killed build)
                    path.unlink()  # a searcher still mapping an old lists file keeps reading it (POSIX)
                elif path.is_dir() and "-parts-" in path.name:
                    shutil.rmtree(path, ignore_errors=True)  # the parts of a killed on-disk build

    def _clear_search_state(self) -> None:
        """Drop the manifest, whitening and index files (a rebuild); the labels stay."""
        for path in self.state_dir.iterdir():
            if (path.name.startswith(("index-", "whitening-", "manifest.json")) and
                    (path.is_file() or path.is_symlink())):
                path.unlink()

    # ---- search -------------------------------------------------------------------------------
    def stored_extractor_args(self) -> dict:
        """Keyword arguments that rebuild the extractor this folder was indexed with."""
        manifest = self.manifest()
        if manifest is None or manifest.get("index") is None:
            raise NoIndex(f"{self.photos} has no index yet: run `dasr-annotator index {self.photos}` first")
        return extractor_args(manifest)

    def searcher(self, extractor):
        """A Searcher over the current index; `extractor` must have the index's settings."""
        from dasr_annotator.engine.search.searcher import Searcher

        manifest = self.manifest()
        if manifest is None or manifest.get("index") is None:
            raise NoIndex(f"{self.photos} has no index yet: run `dasr-annotator index {self.photos}` first")
        self.check_compatible(extractor.config(), manifest.get("weights"))
        info, white_info = manifest["index"], manifest.get("whitening")
        damaged = NoIndex(f"the index of {self.photos} is damaged or incomplete: run `dasr-annotator index "
                          f"{self.photos}` to rebuild it from the stored regions")
        if not self._index_intact(info):
            raise damaged
        try:
            if "ivfdata" in info or "refine" in info:
                index = faiss_index.open_index(self.state_dir / info["file"], info["nprobe"], info.get("k_factor", 0))
            else:
                index = faiss_index.load_index((self.state_dir / info["file"]).read_bytes(), info["nprobe"],
                                               info.get("k_factor", 0))
            if "table" in info:  # memory-mapped: opening reads no more than the columns' headers
                table = region_table.open_table(self.state_dir, info["table"])
            else:  # an index written before: its table in one .npz, read into memory as then
                with np.load(self.state_dir / info["meta"], allow_pickle=False) as z:
                    table = RegionTable.from_arrays({k: z[k] for k in ("images", "sizes", "image", "boxes",
                                                                       "ellipses")})
        except (RuntimeError, *NPZ_ERRORS):
            raise damaged from None
        whitening = self._load_whitening(white_info) if white_info else None
        if (white_info and whitening is None) or len(table.image) != index.ntotal or index.d != info["dim"]:
            raise damaged
        return Searcher(self, extractor, index, table, whitening)


# ---- helpers ----------------------------------------------------------------------------------
def extractor_args(manifest: dict) -> dict:
    """`Extractor` keyword arguments for the settings a manifest records."""
    c = manifest["extractor"]
    return {"backbone": c["backbone"], "method": c["method"], "mode": c["mode"], "max_side": c["max_side"],
            "tau": c["tau"], "nms_beta": c["nms_beta"], "descriptor_layer": c["descriptor_layer"],
            "weights": manifest.get("weights")}


def cache_state_dir(photos: Path) -> Path:
    """The cache-side state folder of `photos` (keyed by its absolute path)."""
    key = hashlib.sha256(os.fsencode(str(photos))).hexdigest()[:16]
    return user_cache_dir() / "projects" / f"{photos.name or 'root'}-{key}"


def _modified(path: Path) -> str:
    """When `path` was last written, local time, to the minute."""
    try:
        return datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    except OSError:
        return "at an unknown time"


def _writable(folder: Path) -> bool:
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return False  # marked read-only for everyone: respect it even as root
    return is_writable_dir(folder)


def _moved_files(project: "Project", store: RegionStore, files: list[str], to_extract: list[str]) -> dict[str, str]:
    """old -> new path of catalogued files that are gone while a new file has their content (a
    rename or a move inside the folder), found by the sha256 the region store keeps per file.
    A video frame carries its video's hash: it follows only to the same frame number of a renamed
    video (a frame no longer sampled, its video still there, is gone, not moved)."""
    present = set(files)
    gone: dict[tuple, list[str]] = {}
    for rel, entry in store.entries.items():
        if rel not in present:
            ref = frame_of(project.path_of(rel))
            if ref is not None and Path(ref.video).exists():
                continue
            gone.setdefault((entry.sha256, ref.frame if ref else None), []).append(rel)
    moves: dict[str, str] = {}
    if not gone:
        return moves
    for rel in to_extract:
        if rel in store.entries:
            continue  # changed in place, not new
        try:
            digest = content_hash(project.path_of(rel))
        except OSError:
            continue
        ref = frame_of(project.path_of(rel))
        key = (digest, ref.frame if ref else None)
        if gone.get(key):
            moves[gone[key].pop(0)] = rel
    return moves


def _same_content(path: Path, sha256: str) -> bool:
    if not sha256:
        return False
    try:
        return content_hash(path) == sha256
    except OSError:
        return False


def _content_key(store: RegionStore, live: list[str]) -> str:
    """Identifies exactly which stored regions the index covers."""
    digest = hashlib.sha256()
    for f in sorted(live):  # plain name order: an index built before frames were ordered by number stays current
        e = store.entries[f]
        digest.update(f"{f}\0{e.shard}\0{e.start}\0{e.count}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _generation() -> str:
    return secrets.token_hex(6)
