"""Replay the review flow of issue 23 on a real X server (Xvfb), driven with xdotool like a
person would, and save screenshots of each step.

    apt-get install -y xvfb xdotool imagemagick libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0
    PYTHONPATH=... python benchmarks/review_flow_xvfb.py --out /tmp/shots --tag after

Photos: the first frames of a few dev sequences and of one dev-hires sequence with a small object
(a 31x17 px truck in 1280x720), copied to a temporary folder; settings and cache are isolated.
The script finds the photo on screen from a screenshot (the canvas background is #2b2b2b), draws
the ground-truth box of the first photo with the mouse, searches, triages with keys, undoes,
shrinks the window and opens the shortcut sheet. It prints what it did and how long each wait
took; screenshots go to --out as <tag>_<step>.png (halved, 128 colours: small enough for docs).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CANVAS_BG = (0x2B, 0x2B, 0x2B)


def copy_photos(target: Path) -> tuple[str, list[float]]:
    """A small mixed folder; returns the first photo (the query) and its object's box."""
    hires = json.loads((DATA / "dev-hires" / "manifest.json").read_text())
    query = None
    for instance in hires["instances"][:1]:
        for item in instance["images"][:5]:
            rel = "0_" + item["file"].removeprefix("images/")
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(DATA / "dev-hires" / item["file"], target / rel)
            query = query or (rel, item["box"])
    dev = json.loads((DATA / "dev" / "manifest.json").read_text())
    for instance in dev["instances"]:
        if instance["video"] in ("Box", "Dog", "Human3"):
            for item in instance["images"][:3]:
                rel = item["file"].removeprefix("images/")
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(DATA / "dev" / item["file"], target / rel)
    return query


class Session:
    def __init__(self, display: str, out: Path, tag: str):
        self.env = {**os.environ, "DISPLAY": display}
        self.out, self.tag = out, tag
        self.window = None

    def xdo(self, *args: str) -> str:
        return subprocess.run(["xdotool", *args], env=self.env, capture_output=True, text=True, check=False).stdout.strip()

    def shot(self, name: str) -> Path:
        raw = self.out / f".{self.tag}_{name}_raw.png"
        subprocess.run(["import", "-window", "root", str(raw)], env=self.env, check=True)
        path = self.out / f"{self.tag}_{name}.png"
        subprocess.run(["convert", str(raw), "-crop", self.crop, "+repage", "-resize", "60%", "-colors", "160",
                        str(path)], check=True)
        self.last_raw = np.asarray(Image.open(raw).convert("RGB"))
        raw.unlink()
        print(f"  screenshot {path.name}")
        return path

    def key(self, *keys: str, pause: float = 0.6) -> None:
        for k in keys:
            self.xdo("key", "--clearmodifiers", k)
            time.sleep(pause)

    def drag(self, x1, y1, x2, y2, steps: int = 6) -> None:
        self.xdo("mousemove", str(int(x1)), str(int(y1)))
        time.sleep(0.2)
        self.xdo("mousedown", "1")
        for i in range(1, steps + 1):
            self.xdo("mousemove", str(int(x1 + (x2 - x1) * i / steps)), str(int(y1 + (y2 - y1) * i / steps)))
            time.sleep(0.05)
        self.xdo("mouseup", "1")
        time.sleep(0.5)


def photo_rect(screen: np.ndarray, aspect: float) -> tuple[float, float, float, float]:
    """(left, top, width, height) of a fitted photo: the gap between the canvas's side bars
    (or its top and bottom bars) on the screenshot."""
    bg = np.all(screen == CANVAS_BG, axis=2)
    rows = np.flatnonzero(bg.sum(1) > 20)
    cols = np.flatnonzero(bg.sum(0) > 20)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    width, height = right - left + 1, bottom - top + 1
    if width / height > aspect:  # bars left and right
        photo_w = height * aspect
        return left + (width - photo_w) / 2, top, photo_w, height
    photo_h = width / aspect
    return left, top + (height - photo_h) / 2, width, photo_h


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tag", default="run")
    parser.add_argument("--display", default=":93")
    parser.add_argument("--index-timeout", type=float, default=240.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="review-flow-"))
    photos = work / "photos"
    query_image, box = copy_photos(photos)
    image_w, image_h = Image.open(photos / query_image).size
    xvfb = subprocess.Popen(["Xvfb", args.display, "-screen", "0", "1600x1000x24", "-nolisten", "tcp"])
    time.sleep(1.5)
    session = Session(args.display, args.out, args.tag)
    session.crop = "1400x900+0+0"
    env = {**session.env, "QT_QPA_PLATFORM": "xcb", "XDG_CONFIG_HOME": str(work / "config"),
           "XDG_CACHE_HOME": str(work / "cache"), "DASR_ANNOTATOR_CACHE": str(work / "cache" / "d"),
           "PYTHONFAULTHANDLER": "1"}
    log = open(work / "app.log", "w")
    app = subprocess.Popen([sys.executable, "-c", "import sys; from dasr_annotator.app.main import main; "
                            "sys.exit(main(sys.argv[1:]))", str(photos)], env=env, stdout=log, stderr=log)
    try:
        start = time.monotonic()
        window = ""
        while not window and time.monotonic() - start < 60:
            window = session.xdo("search", "--onlyvisible", "--name", "dasr-annotator").split("\n")[0]
            time.sleep(0.5)
        print(f"window after {time.monotonic() - start:.1f} s")
        session.xdo("windowmove", window, "0", "0")
        session.xdo("windowsize", window, "1400", "900")
        session.xdo("windowactivate", "--sync", window)
        time.sleep(2)
        session.shot("01_opened")
        manifest = photos / ".dasr" / "manifest.json"
        while time.monotonic() - start < args.index_timeout:
            if manifest.exists() and '"index"' in manifest.read_text():
                time.sleep(5)  # the last batch is committed and the status bar updated
                break
            time.sleep(2)
        print(f"indexed after {time.monotonic() - start:.1f} s")
        time.sleep(2)
        session.shot("02_indexed")
        left, top, width, height = photo_rect(session.last_raw, image_w / image_h)
        scale = width / image_w
        x, y, w, h = box
        sx, sy = left + x * scale, top + y * scale
        print(f"photo on screen at {left:.0f},{top:.0f} {width:.0f}x{height:.0f}; object {w}x{h} px -> "
              f"{w * scale:.0f}x{h * scale:.0f} on screen")
        # A 3-pixel drag: refused with a message (before: nothing happened).
        session.drag(left + 40, top + 40, left + 43, top + 43, steps=2)
        session.shot("03_tiny_drag")
        # Enter without a box: before, it accepted the current hit; now it says what it does.
        session.drag(sx - 1, sy - 1, sx + w * scale + 1, sy + h * scale + 1)
        session.shot("04_drawn")
        session.key("Return")  # no category yet: asks for one, the category box takes the keys
        session.xdo("type", "--delay", "80", "truck")
        session.key("Return")
        time.sleep(12)
        session.shot("05_hits")
        for k in ("y", "y", "y", "y", "n"):
            session.key(k, pause=1.0)
        time.sleep(1)
        session.shot("06_after_rerank")
        session.key("ctrl+z")
        time.sleep(1)
        session.shot("07_undo")
        session.xdo("windowsize", window, "1024", "700")
        time.sleep(2)
        session.crop = "1024x700+0+0"
        session.shot("08_small_window")
        session.key("F1")
        time.sleep(1)
        session.crop = "1400x900+0+0"
        session.shot("09_f1")
        session.key("F1")
        session.key("Escape")
        quit_start = time.monotonic()
        session.key("ctrl+q", pause=0)
        app.wait(timeout=60)
        print(f"Ctrl+Q: exited after {time.monotonic() - quit_start:.1f} s with code {app.returncode}")
    finally:
        if app.poll() is None:
            app.kill()
        xvfb.terminate()
        log.close()
        tail = (work / "app.log").read_text().splitlines()[-15:]
        print("app log (tail):\n  " + "\n  ".join(tail))
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
