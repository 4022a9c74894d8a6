"""Small real videos for the tests, made at test time from dev frames (never stored in the repo).

`dev_clip` encodes a dev sequence with OpenCV's VideoWriter (the project's own encoder); the
others use PyAV (the project's decoder library) for what VideoWriter cannot write: a display
rotation, a variable frame rate, 10-bit samples, a file without a video stream.
"""
from __future__ import annotations

import fractions
import json
from pathlib import Path

import cv2
import numpy as np

DEV_SEQUENCE = "Box"


def dev_frames(dev_data: Path, count: int, size=(160, 120), sequence: str = DEV_SEQUENCE):
    """[(rgb, box scaled to `size`)] of the first `count` listed frames of a dev sequence."""
    manifest = json.loads((dev_data / "manifest.json").read_text())
    instance = next(i for i in manifest["instances"] if i["name"] == sequence)
    out = []
    for item in instance["images"][:count]:
        bgr = cv2.imread(str(dev_data / item["file"]))
        sx, sy = size[0] / bgr.shape[1], size[1] / bgr.shape[0]
        x, y, w, h = item["box"]
        out.append((cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)[:, :, ::-1].copy(),
                    [x * sx, y * sy, w * sx, h * sy]))
    return out


def dev_clip(path: Path, frames, fps: float = 4.0) -> Path:
    """An MPEG-4 clip of `frames` (RGB arrays, all one size) written by OpenCV's VideoWriter."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for rgb in frames:
        writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
    writer.release()
    return path


def av_clip(path: Path, frames, durations_ms=None, rotation: int = 0, codec: str = "libx264",
            pix_fmt: str = "yuv420p", options: dict | None = None, container_options: dict | None = None) -> Path:
    """A clip written by PyAV: frame i lasts durations_ms[i] (40 ms each by default), shown
    turned `rotation` degrees counter-clockwise."""
    import av

    h, w = frames[0].shape[:2]
    durations_ms = durations_ms or [40] * len(frames)
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=25, options=options or {})
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        t = 0
        for rgb, duration in zip(frames, durations_ms):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = t, fractions.Fraction(1, 1000)
            t += duration
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def audio_only(path: Path) -> Path:
    """An MP4 holding one second of AAC audio and no video stream."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        samples = (np.sin(np.arange(16000) / 10.0) * 0.2).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def numbered(count: int, size=(160, 120)):
    """Frames whose grey level says their number (i * 8), to check which frame was decoded."""
    return [np.full((size[1], size[0], 3), (i * 8) % 256, np.uint8) for i in range(count)]
