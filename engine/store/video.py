"""Video files as collections of frames: naming, probing, sampling and decoding one frame.

A video in the photo folder becomes one item per sampled frame, named `clip.mp4#frame=N` (the
video's path relative to the folder, then the frame's number in the stream, counted in
presentation order from 0). Everything that takes an image path (`imageio.load_image`,
`image_size`, the collection's fingerprints) accepts such a name, so the rest of the engine treats
frames like photos.

Decoder: PyAV (libavcodec). Measured against OpenCV's FFmpeg backend (docs/video.md), both decode
at the same speed, but OpenCV's frame seek lands one frame off on variable-frame-rate files; here
a frame is found by its exact presentation timestamp, from a table of every frame's timestamp
made once per file by reading its packets (no decoding). Phone rotation (the display matrix) is
applied like EXIF orientation for photos. A frame is scaled down while converted to RGB, so a 4K
or 10-bit stream costs one frame of memory at a time; a huge file costs its timestamp table.

Every problem raises `imageio.ImageError` with a short reason, as for photos.
"""
from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dasr_annotator.engine.store.imageio import MAX_DECODE_PIXELS, ImageError, LoadedImage, name_suffix

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm")
DEFAULT_VIDEO_FPS = 1.0  # frames sampled per second of video, unless a folder says otherwise
# a name ending like this is a frame of a video (the extension keeps photo names unambiguous)
_FRAME_NAME = re.compile(r"^(?P<video>.+(?:" + "|".join(re.escape(e) for e in VIDEO_EXTENSIONS)
                         + r"))#frame=(?P<frame>\d+)$", re.IGNORECASE | re.DOTALL)
_VFR_SPREAD = 1.5  # frame durations differing by more than this factor mean variable frame rate
_PROBE_MEMORY = 64  # probed videos remembered per process


def is_video_name(path: str | bytes | os.PathLike) -> bool:
    """True when the file name has one of VIDEO_EXTENSIONS (case-insensitive)."""
    return name_suffix(path) in _VIDEO_SUFFIXES


_VIDEO_SUFFIXES = frozenset(VIDEO_EXTENSIONS)


def frame_name(video: str, frame: int) -> str:
    """The collection name of frame `frame` of `video` (a path relative to the photo folder)."""
    return f"{video}#frame={int(frame)}"


@dataclass(frozen=True)
class FrameRef:
    """A frame named `video#frame=N`; `video` is a path (relative or absolute) as given."""

    video: str
    frame: int


def split_frame_name(name: str | bytes | os.PathLike) -> FrameRef | None:
    """The video and frame number of a frame name (or a path ending in one), else None."""
    m = _FRAME_NAME.match(os.fsdecode(name))
    return FrameRef(m.group("video"), int(m.group("frame"))) if m else None


_ORDER_FRAME_DIGITS = 15


def order_key(name: str) -> str:
    """The one order of a collection's photos and frames (scans, the file list, exports): names
    as strings, except that a video's frames come together at the video's own place, by frame
    number (`clip.mp4#frame=9` before `#frame=10`, which plain string order reverses). Frame names
    stay as they are stored; only this key pads the number."""
    # what split_frame_name matches, without a regular expression: the file list bisects with
    # this key, so it runs a few dozen times per row looked up
    video, marker, frame = name.rpartition("#frame=")
    if not marker or not frame.isdecimal() or not video.lower().endswith(VIDEO_EXTENSIONS) \
            or len(video) <= len(video.rsplit(".", 1)[-1]) + 1:
        return name
    number = int(frame)
    odd = "" if frame == str(number) else "\0" + frame  # `#frame=007` (typed, never scanned) stays apart from `#frame=7`
    return f"{video_order_key(video)}{number:0{_ORDER_FRAME_DIGITS}d}{odd}"


def video_order_key(video: str) -> str:
    """Where a video's frames begin in `order_key` order: just after the video's own name (NUL
    sorts before every character a file name can hold, so no other name falls among them)."""
    return video + "\0"


def media_file(path: str | bytes | os.PathLike) -> Path:
    """The file on disk that holds `path`: the video for a frame name, else `path` itself (a real
    file whose name looks like a frame wins)."""
    path = Path(os.fsdecode(path))
    ref = split_frame_name(path)
    if ref is not None and not path.exists():
        return Path(ref.video)
    return path


def frame_of(path: str | bytes | os.PathLike) -> FrameRef | None:
    """The frame `path` names when it is a frame of a video rather than a file of its own."""
    ref = split_frame_name(path)
    return ref if ref is not None and not Path(os.fsdecode(path)).exists() else None


@dataclass(frozen=True)
class VideoInfo:
    """What sampling and decoding need to know about one video stream."""

    pts: np.ndarray  # [frames] int64 presentation timestamps, ascending (frame N has pts[N])
    time_base: float  # seconds per pts unit
    width: int  # as shown (rotation applied)
    height: int
    rotation: int  # degrees counter-clockwise the stored picture is turned to be shown
    codec: str
    variable_rate: bool

    @property
    def frames(self) -> int:
        return len(self.pts)

    def time_of(self, frame: int) -> float:
        """Seconds from the first frame to `frame`."""
        return float((int(self.pts[frame]) - int(self.pts[0])) * self.time_base)

    @property
    def duration(self) -> float:
        return self.time_of(self.frames - 1) if self.frames else 0.0

    @property
    def fps(self) -> float:
        """Average frames per second (of the frames present)."""
        return (self.frames - 1) / self.duration if self.duration > 0 else 0.0

    def sample(self, fps: float) -> list[int]:
        """Frame numbers of one frame per 1/fps seconds: the first frame shown at or after each
        tick (so a variable frame rate samples by time, not by count)."""
        if fps <= 0:
            raise ValueError(f"video fps must be positive, got {fps}")
        times = (self.pts - self.pts[0]) * self.time_base
        ticks = np.arange(0.0, times[-1] + 1e-9, 1.0 / fps)
        picks = np.searchsorted(times, ticks - 1e-6, side="left")
        return sorted({int(i) for i in picks if i < self.frames})

    def nearest(self, seconds: float) -> int:
        """The frame shown at `seconds` (the last one starting at or before it)."""
        times = (self.pts - self.pts[0]) * self.time_base
        return int(max(0, np.searchsorted(times, seconds + 1e-6, side="right") - 1))


# ---- probing ---------------------------------------------------------------------------------
_probed: OrderedDict[tuple, VideoInfo] = OrderedDict()
_probed_lock = threading.Lock()


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """The video's frame table, size and rotation (remembered while the file is unchanged).
    Raises ImageError for anything that cannot be sampled."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError("file not found (moved or deleted?)") from None
    except OSError as exc:
        raise ImageError(f"cannot read the file: {exc.strerror or exc}") from None
    if st.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    with _probed_lock:
        if key in _probed:
            _probed.move_to_end(key)
            return _probed[key]
    info = _probe(path)
    with _probed_lock:
        _probed[key] = info
        while len(_probed) > _PROBE_MEMORY:
            _probed.popitem(last=False)
    return info


def _open(path: Path):
    import av

    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise ImageError(f"not a readable video ({_strerror(exc)})") from None
    except OSError as exc:
        raise ImageError(f"cannot read the file: {exc.strerror or exc}") from None


def _strerror(exc) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _probe(path: Path) -> VideoInfo:
    import av

    with _open(path) as container:
        if not container.streams.video:
            raise ImageError("no video stream in the file (audio only?)")
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        pts = []
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None:
                    pts.append(packet.pts)
                elif packet.size and packet.dts is not None:
                    pts.append(packet.dts)
        except av.error.FFmpegError:
            pass  # truncated or damaged after some packets: the frames before it stay usable
        if not pts:
            raise ImageError("video has no frames")
        table = np.unique(np.asarray(pts, np.int64))
        container.seek(int(table[0]), stream=stream, backward=True)
        first = None
        try:
            for first in container.decode(stream):
                break
        except av.error.FFmpegError as exc:
            raise ImageError(f"video frames cannot be decoded ({codec}: {_strerror(exc)})") from None
        if first is None:
            raise ImageError(f"video frames cannot be decoded ({codec})")
        rotation = int(round((first.rotation or 0) / 90.0)) % 4 * 90
        width, height = first.width, first.height
        time_base = float(stream.time_base)
    if width * height > MAX_DECODE_PIXELS:
        raise ImageError(f"video frames too large: {width} x {height}")
    steps = np.diff(table)
    variable = len(steps) > 2 and steps[:-1].max() > _VFR_SPREAD * max(1, steps[:-1].min())
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(table, time_base, width, height, rotation, codec, bool(variable))


# ---- decoding --------------------------------------------------------------------------------
def video_frame_size(path: str | os.PathLike, frame: int) -> tuple[int, int]:
    """Shown (width, height) of `frame` of the video at `path`, without decoding it."""
    info = probe_video(path)
    _check_frame(info, frame)
    return info.width, info.height


def _check_frame(info: VideoInfo, frame: int) -> None:
    if not 0 <= frame < info.frames:
        raise ImageError(f"frame {frame} is not in the video (it has {info.frames} frames)")


def load_video_frame(path: str | os.PathLike, frame: int, max_side: int | None = None) -> LoadedImage:
    """Frame number `frame` of the video at `path` as RGB, rotated as shown, reduced so
    max(H, W) <= max_side when given (while converting, so large frames never sit in memory
    at full size as RGB)."""
    import av

    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    path = Path(path)
    info = probe_video(path)
    _check_frame(info, frame)
    target = int(info.pts[frame])
    scale = 1.0 if max_side is None else min(1.0, max_side / max(info.width, info.height))
    found = None
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            container.seek(target, stream=stream, backward=True)
            for decoded in container.decode(stream):
                at = decoded.pts if decoded.pts is not None else decoded.dts
                if at is not None and at >= target:
                    found = decoded
                    break
        except av.error.FFmpegError as exc:
            raise ImageError(f"frame {frame} cannot be decoded ({_strerror(exc)}; truncated or damaged video?)") from None
        if found is None:
            raise ImageError(f"frame {frame} cannot be decoded (the video ends early: truncated?)")
        turned = info.rotation in (90, 270)
        out_w = max(1, round((info.height if turned else info.width) * scale))
        out_h = max(1, round((info.width if turned else info.height) * scale))
        rgb = found.reformat(width=out_w, height=out_h, format="rgb24").to_ndarray()
    if info.rotation:
        rgb = np.rot90(rgb, k=info.rotation // 90)
    return LoadedImage(rgb=np.ascontiguousarray(rgb, dtype=np.uint8), width=info.width, height=info.height,
                       scale=scale)


def frame_time(path: str | os.PathLike, frame: int) -> float:
    """Seconds from the start of the video to `frame`."""
    info = probe_video(path)
    _check_frame(info, frame)
    return info.time_of(frame)


def format_time(seconds: float) -> str:
    """`m:ss.s` (or `h:mm:ss.s`) for showing where a frame lies in its video."""
    whole = int(seconds)
    tenths = int(round((seconds - whole) * 10))
    if tenths == 10:
        whole, tenths = whole + 1, 0
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}.{tenths}" if h else f"{m}:{s:02d}.{tenths}"
