"""A photo folder's images and their extracted regions, stored in shards so work survives a kill.

Layout under the state folder:
  shards/NNNNNN.npz   one batch of images' regions: raw descriptors (float16, l2, not whitened, so
                      the whitening can be refitted), boxes (x, y, w, h), ellipses, scores
  shards/NNNNNN.json  the batch's files with fingerprints and row ranges; written after the .npz,
                      so a shard counts only once both are complete
  catalog.json        every indexed file -> (shard, rows, fingerprint), written when a run ends;
                      shards numbered after its `last_seq` are replayed on load (a killed run's;
                      all of them if the catalog is damaged: shards describe themselves)
No pickle: JSON and numpy's own .npz format (`allow_pickle=False`).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from dasr_annotator.engine.store.imageio import ImageError, is_image_name
from dasr_annotator.engine.store.video import (DEFAULT_VIDEO_FPS, frame_name, is_video_name, media_file, order_key,
                                               probe_video, split_frame_name)
from dasr_annotator.engine.store.storage import ProjectFileError, atomic_write_bytes, read_json
from dasr_annotator.engine.types import ImageRegions

log = logging.getLogger(__name__)

STATE_FOLDER = ".dasr"
FORMAT = 1
_SHARD_NAME = re.compile(r"^(\d{6})\.(npz|json)$")
REBUILD_HINT = "run `dasr-annotator index PHOTOS --rebuild` to index the folder afresh (labels are kept)"
# What reading a damaged .npz raises (truncated zip, bad CRC, missing member, wrong shape).
NPZ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


# ---- scanning -------------------------------------------------------------------------------
@dataclass
class ScanResult:
    files: list[str]  # POSIX paths relative to the root, in `order_key` order (a video's frames by number)
    problems: list[dict]  # [{"file": relpath, "reason": text}] for folders (or videos) that could not be read
    frame_times: dict[str, float] = field(default_factory=dict)  # video frame name -> seconds into its video


def scan_images(root: Path, video_fps: float = DEFAULT_VIDEO_FPS,
                on_folder: Callable[[list[str], dict[str, float]], None] | None = None) -> ScanResult:
    """Every image under `root` (any letter case of a known suffix), following symlinks but never
    a folder twice (so link loops end), skipping state folders. A video counts as its frames
    sampled at `video_fps` (`clip.mp4#frame=N`, engine/store/video.py); one that cannot be read
    is a problem with its reason. `on_folder(files, frame_times)`, when given, is told each
    folder's images and frames (sorted) as soon as that folder is read, so a caller can show a
    large folder while it is still being scanned; the result is sorted as a whole. Sorted means
    by `video.order_key`: names as strings, a video's frames by frame number."""
    root = Path(root)
    files: list[str] = []
    problems: list[dict] = []
    frame_times: dict[str, float] = {}
    seen_dirs: set[tuple[int, int]] = set()

    def unreadable(err: OSError) -> None:
        rel = os.path.relpath(err.filename, root) if err.filename else "."
        problems.append({"file": Path(rel).as_posix(), "reason": f"folder not readable: {err.strerror}"})

    for folder, dirs, names in os.walk(root, followlinks=True, onerror=unreadable):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if d != STATE_FOLDER)
        rel_folder = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel_folder == "." else rel_folder + "/"  # plain strings: 100k Path objects cost seconds
        here = [prefix + n for n in names if is_image_name(n)]
        times: dict[str, float] = {}
        for n in sorted(n for n in names if is_video_name(n)):
            rel = prefix + n
            try:
                info = probe_video(Path(folder) / n)
            except ImageError as exc:
                problems.append({"file": rel, "reason": exc.reason})
                continue
            for frame in info.sample(video_fps):
                times[frame_name(rel, frame)] = info.time_of(frame)
        here.extend(times)
        files.extend(here)
        frame_times.update(times)
        if on_folder is not None and here:
            on_folder(sorted(here, key=order_key), times)
    return ScanResult(sorted(files, key=order_key), problems, frame_times)


def write_json(path: Path, obj, backup: bool = True) -> None:
    """`storage.atomic_write_json`, except that a file name which is not valid UTF-8 (POSIX allows
    them; Python holds them as lone surrogates) is written as a JSON escape (backslash-u-dcXX)
    instead of failing: json.loads gives the same name back, and the OS accepts it again."""
    text = json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = (json.dumps(obj, indent=1, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")
    atomic_write_bytes(path, data, backup=backup)


# ---- fingerprints ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)  # one per photo while indexing plans: kept small
class Fingerprint:
    size: int
    mtime_ns: int


def fingerprint(path: Path) -> Fingerprint:
    """Size and modification time of the file (of its video, for a frame)."""
    try:
        st = os.stat(path)  # a file of its own (even one named like a frame), the common case
    except OSError:
        ref = split_frame_name(path)  # else a frame: its video (media_file would stat the name again)
        if ref is None:
            raise
        st = os.stat(ref.video)
    return Fingerprint(st.st_size, st.st_mtime_ns)


_hashed: dict[tuple, str] = {}  # (file, size, mtime) -> sha256, so a video is read once for all its frames


def content_hash(path: Path) -> str:
    """SHA-256 of the file (of its video, for a frame: hashed once while it stays unchanged)."""
    path = media_file(path)
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key in _hashed:
        return _hashed[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if is_video_name(path):
        if len(_hashed) > 256:
            _hashed.clear()
        _hashed[key] = digest.hexdigest()
    return digest.hexdigest()


# ---- region shards ---------------------------------------------------------------------------
@dataclass
class FileEntry:
    """One indexed file: its fingerprint, oriented size, and where its regions are stored."""

    file: str
    size: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    shard: int = 0
    start: int = 0  # first row in the shard
    count: int = 0  # number of regions

    def matches(self, fp: Fingerprint) -> bool:
        return self.size == fp.size and self.mtime_ns == fp.mtime_ns

    def as_json(self) -> dict:
        return asdict(self)


@dataclass
class RegionArrays:
    """Regions of many images, row-aligned; `image` indexes the list of files they were read for."""

    descriptors: np.ndarray  # [R, D] float16 raw (l2, not whitened)
    boxes: np.ndarray  # [R, 4] float32 x, y, w, h
    ellipses: np.ndarray  # [R, 5] float32 cx, cy, a, b, angle
    scores: np.ndarray  # [R] float32
    image: np.ndarray  # [R] int32


class RegionStore:
    """Shards of extracted regions plus the catalog of which file lives where."""

    def __init__(self, state_dir: Path, load: bool = True):
        self.state_dir = Path(state_dir)
        self.shard_dir = self.state_dir / "shards"
        self.catalog_path = self.state_dir / "catalog.json"
        self.entries: dict[str, FileEntry] = {}
        self.last_seq = 0  # shards up to here are covered by catalog.json
        self.warnings: list[str] = []
        if load:
            self.load()

    # -- reading --
    def load(self) -> None:
        """Read the catalog, then replay newer shards. Shards describe themselves, so a damaged
        catalog costs little: every shard is replayed (latest wins) and touched files are hashed
        again; the next commit writes a new catalog."""
        self.entries, self.last_seq, self.warnings = {}, 0, []
        if self.catalog_path.exists():
            try:
                data = read_json(self.catalog_path, expect=dict)
                if data.get("format") != FORMAT:
                    raise ValueError(f"format {data.get('format')!r} is not {FORMAT}")
                self.last_seq = int(data["last_seq"])
                self.entries = {rel: FileEntry(**e) for rel, e in data["files"].items()}
            except (ProjectFileError, AttributeError, KeyError, TypeError, ValueError) as exc:
                reason = exc.message if isinstance(exc, ProjectFileError) else f"{self.catalog_path}: {exc}"
                self.warnings.append(f"catalog unusable ({reason}); recovered from the region shards")
                self.entries, self.last_seq = {}, 0
        for seq in self._shard_seqs():
            if seq > self.last_seq:
                self._replay(seq)
        rows_needed: dict[int, int] = {}
        for e in self.entries.values():
            rows_needed[e.shard] = max(rows_needed.get(e.shard, 0), e.start + e.count)
        broken = {seq for seq, rows in rows_needed.items() if rows and self._rows(seq) < rows}
        if broken:
            self.warnings.append(f"{len(broken)} region shard(s) missing or damaged; their images are extracted again")
            self.entries = {k: e for k, e in self.entries.items() if not (e.count and e.shard in broken)}

    def _rows(self, seq: int) -> int:
        """Rows a shard holds; -1 when it is missing or unreadable (only its small arrays are read)."""
        try:
            with np.load(self._npz(seq), allow_pickle=False) as z:
                return len(z["scores"])
        except NPZ_ERRORS:
            return -1

    def _replay(self, seq: int) -> None:
        """Add a shard a killed run finished but never entered in the catalog."""
        try:
            meta = read_json(self._json(seq), fallback_to_backup=False, expect=dict)
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            files = [FileEntry(**{**f, "shard": seq}) for f in meta["files"]]
            if any(f.start + f.count > self._rows(seq) for f in files):
                raise ValueError("row ranges exceed the shard")
        except (ValueError, KeyError, TypeError, ProjectFileError) as exc:
            log.info("ignoring incomplete shard %06d: %s", seq, exc)
            return
        for f in files:
            self.entries[f.file] = f

    def _shard_seqs(self, files_only: bool = True) -> list[int]:
        """Numbers of the shard files present (or of any entry named like one, for numbering)."""
        if not self.shard_dir.is_dir():
            return []
        return sorted({int(m.group(1)) for p in self.shard_dir.iterdir()
                       if (m := _SHARD_NAME.match(p.name)) and (p.is_file() or not files_only)})

    def _next_seq(self) -> int:
        return max(self._shard_seqs(files_only=False) + [self.last_seq]) + 1

    def _delete_shard(self, seq: int) -> None:
        for path in (self._json(seq), self._npz(seq)):
            if path.is_file() or path.is_symlink():
                path.unlink()

    def _npz(self, seq: int) -> Path:
        return self.shard_dir / f"{seq:06d}.npz"

    def _json(self, seq: int) -> Path:
        return self.shard_dir / f"{seq:06d}.json"

    def read(self, files: list[str]) -> RegionArrays:
        """The stored regions of `files` (all must be in `entries`), in that order."""
        by_shard: dict[int, list[tuple[int, FileEntry]]] = {}
        for i, rel in enumerate(files):
            e = self.entries[rel]
            if e.count:
                by_shard.setdefault(e.shard, []).append((i, e))
        parts: dict[int, tuple] = {}
        for seq, items in by_shard.items():
            try:
                with np.load(self._npz(seq), allow_pickle=False) as z:
                    desc, boxes, ell, scores = z["descriptors"], z["boxes"], z["ellipses"], z["scores"]
            except NPZ_ERRORS as exc:
                raise ProjectFileError(f"region shard {self._npz(seq)} is damaged ({exc}); {REBUILD_HINT}") from exc
            for i, e in items:
                rows = slice(e.start, e.start + e.count)
                parts[i] = (desc[rows], boxes[rows], ell[rows], scores[rows])
        order = sorted(parts)
        if not order:
            return RegionArrays(np.zeros((0, 0), np.float16), np.zeros((0, 4), np.float32),
                                np.zeros((0, 5), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))
        return RegionArrays(
            descriptors=np.concatenate([parts[i][0] for i in order]),
            boxes=np.concatenate([parts[i][1] for i in order]).astype(np.float32),
            ellipses=np.concatenate([parts[i][2] for i in order]).astype(np.float32),
            scores=np.concatenate([parts[i][3] for i in order]).astype(np.float32),
            image=np.concatenate([np.full(len(parts[i][3]), i, np.int32) for i in order]),
        )

    # -- writing --
    def write_shard(self, batch: list[tuple[FileEntry, ImageRegions]]) -> list[FileEntry]:
        """Store one batch of extracted images as a new shard; returns their entries."""
        seq = self._next_seq()
        entries, desc, boxes, ell, scores = [], [], [], [], []
        row = 0
        for entry, regions in batch:
            n = len(regions.regions)
            for r in regions.regions:
                desc.append(np.asarray(r.descriptor, np.float32))
                boxes.append(r.box.as_list())
                ell.append([r.ellipse.cx, r.ellipse.cy, r.ellipse.a, r.ellipse.b, r.ellipse.angle])
                scores.append(r.score)
            entries.append(FileEntry(**{**entry.as_json(), "shard": seq, "start": row, "count": n}))
            row += n
        self._write_arrays(seq, RegionArrays(
            np.stack(desc).astype(np.float16) if desc else np.zeros((0, 0), np.float16),
            np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(ell, np.float32).reshape(-1, 5),
            np.asarray(scores, np.float32), np.zeros(0, np.int32)), entries)
        for e in entries:
            self.entries[e.file] = e
        return entries

    def _write_arrays(self, seq: int, arrays: RegionArrays, entries: list[FileEntry]) -> None:
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, descriptors=arrays.descriptors, boxes=arrays.boxes, ellipses=arrays.ellipses,
                 scores=arrays.scores)
        atomic_write_bytes(self._npz(seq), buffer.getvalue())
        files = [{k: v for k, v in e.as_json().items() if k != "shard"} for e in entries]
        write_json(self._json(seq), {"format": FORMAT, "seq": seq, "files": files}, backup=False)

    def commit(self, live: list[str]) -> int:
        """Keep only `live` files, write the catalog, then delete shards nothing refers to.
        Returns how many catalogued files were dropped."""
        keep = set(live)
        dropped = [rel for rel in self.entries if rel not in keep]
        for rel in dropped:
            del self.entries[rel]
        self.last_seq = max(self._shard_seqs() + [self.last_seq])
        write_json(self.catalog_path, {
            "format": FORMAT, "last_seq": self.last_seq,
            "files": {rel: self.entries[rel].as_json() for rel in sorted(self.entries)}})
        used = {e.shard for e in self.entries.values()}
        for seq in self._shard_seqs():
            if seq not in used:
                self._delete_shard(seq)
        return len(dropped)

    def compact(self, min_live_fraction: float = 0.5, batch_files: int = 256) -> int:
        """Rewrite shards whose rows are mostly dead (changed or removed files) so disk use stays
        proportional to the collection. Call after `commit`. Returns how many shards were rewritten."""
        live_rows: dict[int, int] = {}
        for e in self.entries.values():
            live_rows[e.shard] = live_rows.get(e.shard, 0) + e.count
        sparse = []
        for seq in live_rows:
            total = self._rows(seq)
            if total > 0 and live_rows[seq] < min_live_fraction * total:
                sparse.append(seq)
        if not sparse:
            return 0
        moving = sorted(rel for rel, e in self.entries.items() if e.shard in sparse)
        for i in range(0, len(moving), batch_files):
            chunk = moving[i:i + batch_files]
            arrays = self.read(chunk)
            seq = self._next_seq()
            entries, row = [], 0
            for rel in chunk:
                e = self.entries[rel]
                entries.append(FileEntry(**{**e.as_json(), "shard": seq, "start": row}))
                row += e.count
            self._write_arrays(seq, arrays, entries)
            for e in entries:
                self.entries[e.file] = e
        self.commit(list(self.entries))
        return len(sparse)

    def clear(self) -> None:
        """Forget every region (a rebuild): the shard folder and the catalog go, whatever state
        they are in (nothing is read first)."""
        if self.shard_dir.is_dir() and not self.shard_dir.is_symlink():
            shutil.rmtree(self.shard_dir)
        for path in (self.catalog_path, self.catalog_path.with_name(self.catalog_path.name + ".bak")):
            if path.is_file() or path.is_symlink():
                path.unlink()
        self.entries, self.last_seq = {}, 0
