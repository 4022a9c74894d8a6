"""Video decoding for the collection: sequential vs seeking, OpenCV vs PyAV, seek accuracy; and a
dev manifest turned into clips so `dasr-annotator eval` measures search quality on video frames.

    .venv/bin/python benchmarks/video_decode.py speed [--seconds 20] [--json]
    .venv/bin/python benchmarks/video_decode.py clips OUT_DIR [--fps 1]

`speed` makes two clips: a generated one (640 x 480, 30 fps, moving shapes, H.264 with a 2 s GOP
as phones write, and MPEG-4 from OpenCV's VideoWriter with its default GOP of 12) and one of the
dev sequence Box (its 59 frames five times over, 640 x 480, written by VideoWriter at 30 fps). For each it reports
frames delivered per second when sampling 1 frame per second of video
  - sequential: decode every frame, keep the sampled ones (OpenCV read/grab; PyAV decode loop)
  - seeking: one seek per sampled frame (OpenCV CAP_PROP_POS_FRAMES; engine/store/video.py)
and how many seeks land on the exact frame (a clip with numbered grey levels, constant and
variable frame rate).

`clips` encodes every dev sequence's manifest frames as one clip at `--fps` (so sampling at that
rate takes every frame) with VideoWriter, and writes OUT_DIR/manifest.json naming each frame
`images/Seq.mp4#frame=K`; evaluate it like the photo manifest:
    dasr-annotator eval OUT_DIR/manifest.json --limit-images 12 --no-cache
"""
from __future__ import annotations

import argparse
import fractions
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "dev"

from dasr_annotator.engine.store.video import load_video_frame, probe_video  # noqa: E402


def moving_shapes(count: int, size=(640, 480)):
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(0, 255, (size[1], size[0], 3), np.uint8), (0, 0), 8)
    for i in range(count):
        frame = background.copy()
        cv2.circle(frame, (40 + (i * 7) % (size[0] - 80), size[1] // 2), 40, (255, 80, 0), -1)
        cv2.rectangle(frame, (100, 40 + (i * 3) % 300), (220, 140 + (i * 3) % 300), (0, 200, 255), -1)
        yield frame


def write_cv(path: Path, frames, fps: float, fourcc: str = "mp4v") -> Path:
    frames = iter(frames)
    first = next(frames)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (first.shape[1], first.shape[0]))
    writer.write(first)
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def write_av(path: Path, frames_bgr, durations_ms, gop: int, preset: str = "veryfast") -> Path:
    import av

    frames_bgr = list(frames_bgr)
    h, w = frames_bgr[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"g": str(gop), "preset": preset})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        t = 0
        for bgr, d in zip(frames_bgr, durations_ms):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr[:, :, ::-1]), format="rgb24")
            frame.pts, frame.time_base = t, fractions.Fraction(1, 1000)
            t += d
            for p in stream.encode(frame):
                container.mux(p)
        for p in stream.encode():
            container.mux(p)
    return path


# ---- decoders ----------------------------------------------------------------------------------
def cv_sequential(path: Path, wanted: set[int]) -> int:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    got, n = 0, 0
    while True:
        if n in wanted:
            ok, _ = cap.read()
            got += ok
        else:
            ok = cap.grab()
        if not ok:
            break
        n += 1
    return got


def cv_seek(path: Path, frame: int):
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
    ok, bgr = cap.read()
    return bgr[:, :, ::-1] if ok else None


def av_sequential(path: Path, wanted: set[int]) -> int:
    import av

    got = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for n, frame in enumerate(container.decode(stream)):
            if n in wanted:
                frame.to_ndarray(format="rgb24")
                got += 1
    return got


def timed(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def speed_on(path: Path, label: str) -> dict:
    info = probe_video(path)
    wanted = info.sample(1.0)
    frames = len(wanted)
    rows = {
        "opencv sequential": timed(lambda: cv_sequential(path, set(wanted))),
        "opencv seeking": timed(lambda: [cv_seek(path, f) for f in wanted]),
        "pyav sequential": timed(lambda: av_sequential(path, set(wanted))),
        "pyav seeking (engine)": timed(lambda: [load_video_frame(path, f) for f in wanted]),
    }
    probe_start = time.perf_counter()
    from dasr_annotator.engine.store import video as video_module

    video_module._probed.clear()
    probe_video(path)
    probe = time.perf_counter() - probe_start
    return {"clip": label, "frames": info.frames, "sampled": frames, "probe_ms": round(probe * 1000, 1),
            "sampled_frames_per_s": {k: round(frames / v, 1) for k, v in rows.items()}}


def seek_accuracy(folder: Path) -> dict:
    """Frames numbered by grey level; every frame sought once with each decoder."""
    numbered = [np.full((120, 160, 3), (i * 4) % 256, np.uint8) for i in range(60)]
    out = {}
    for name, durations in (("constant rate", [33] * 60), ("variable rate", [33 if i % 2 == 0 else 100 for i in range(60)])):
        # x264's default preset (B-frames, as phones write H.264)
        path = write_av(folder / f"numbered-{name[:3]}.mp4", numbered, durations, gop=12, preset="medium")
        targets = list(range(60))
        cv_ok = sum(1 for n in targets if (f := cv_seek(path, n)) is not None and abs(int(f.mean()) - n * 4) <= 1)
        av_ok = sum(1 for n in targets if abs(int(load_video_frame(path, n).rgb.mean()) - n * 4) <= 1)
        out[name] = {"seeks": len(targets), "opencv exact": cv_ok, "pyav (engine) exact": av_ok}
    return out


def speed(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.accuracy_only:
            return {"seek_accuracy": seek_accuracy(tmp)}
        n = int(args.seconds * 30)
        generated_h264 = write_av(tmp / "generated-h264.mp4", moving_shapes(n), [33] * n, gop=60)
        generated_mpeg4 = write_cv(tmp / "generated-mpeg4.mp4", moving_shapes(n), 30)
        box = sorted((DEV / "images" / "Box").glob("*.jpg"))
        dev = write_cv(tmp / "dev-box.mp4", (cv2.imread(str(p)) for p in box * 5), 30)
        results = {
            "seek_accuracy": seek_accuracy(tmp),
            "speed": [speed_on(generated_h264, f"generated 640x480 H.264 GOP 60, {args.seconds:g} s"),
                      speed_on(generated_mpeg4, f"generated 640x480 MPEG-4 (VideoWriter) GOP 12, {args.seconds:g} s"),
                      speed_on(dev, f"dev Box x5, {5 * len(box)} frames 640x480 MPEG-4 (VideoWriter) at 30 fps")],
        }
    return results


def clips(args) -> dict:
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    manifest = json.loads((DEV / "manifest.json").read_text())
    files_of_video: dict[str, list[str]] = {}
    for inst in manifest["instances"]:
        for im in sorted(inst["images"], key=lambda im: im.get("frame", 0)):
            files = files_of_video.setdefault(inst.get("video", inst["name"]), [])
            if im["file"] not in files:
                files.append(im["file"])
    frame_of = {}
    for video, files in files_of_video.items():
        files.sort(key=lambda f: next(im.get("frame", 0) for inst in manifest["instances"]
                                      for im in inst["images"] if im["file"] == f))
        write_cv(out / "images" / f"{video}.mp4", (cv2.imread(str(DEV / f)) for f in files), args.fps)
        for k, f in enumerate(files):
            frame_of[f] = f"images/{video}.mp4#frame={k}"
    for inst in manifest["instances"]:
        for im in inst["images"]:
            im["file"] = frame_of[im["file"]]
    manifest["notes"] = [f"dev frames encoded as clips at {args.fps:g} fps by benchmarks/video_decode.py"] + manifest["notes"]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return {"clips": len(files_of_video), "frames": len(frame_of), "manifest": str(out / "manifest.json")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--seconds", type=float, default=20.0, help="length of the generated clip")
    s.add_argument("--accuracy-only", action="store_true", help="only the seek accuracy (seconds)")
    s.add_argument("--json", action="store_true")
    c = sub.add_parser("clips")
    c.add_argument("out")
    c.add_argument("--fps", type=float, default=1.0)
    c.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = speed(args) if args.what == "speed" else clips(args)
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
