"""Keyboard flow from a cold start under a real X server (issue 17), driven with xdotool.

    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/keyboard_flow.py [SCREENSHOT.png]

Opens the real window on a few dev photos (copied to a temporary folder), lets it index, then,
without any click first, sends real X key events: D and A must move between photos. Then it draws
a box with the mouse, presses Enter, types a category and Enter (the search), and Y / N must
accept and reject hits. Every step checks the window's state; exit status 0 when all held.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "dev"
if not DEV.exists():
    DEV = Path("/work/shared/data/dev")


def xdotool(*args: str) -> None:
    subprocess.run(["xdotool", *args], check=True, timeout=30)


def main(shot: str | None) -> int:
    if not os.environ.get("DISPLAY") or not shutil.which("xdotool"):
        print("needs a real X server (DISPLAY) and xdotool: run under xvfb-run", file=sys.stderr)
        return 2
    home = Path(tempfile.mkdtemp(prefix="dasr-keys-"))
    os.environ.update(XDG_CONFIG_HOME=str(home / "config"), XDG_CACHE_HOME=str(home / "cache"),
                      DASR_ANNOTATOR_CACHE=str(home / "cache" / "dasr"), QT_QPA_PLATFORM="xcb")
    photos = home / "photos"
    manifest = json.loads((DEV / "manifest.json").read_text())
    for instance in manifest["instances"]:
        if instance["video"] in ("Box", "Dog"):
            for item in instance["images"][:3]:
                target = photos / item["file"].removeprefix("images/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(DEV / item["file"], target)

    import torch
    from PySide6.QtCore import QPointF

    from dasr_annotator.app.gui.application import create_app, open_window
    from dasr_annotator.app.gui.settings import Preferences

    torch.set_num_threads(1)
    app = create_app()
    window = open_window(photos, prefs=Preferences(device="cpu"))  # as `dasr-annotator PHOTOS` does
    failures: list[str] = []

    def wait(condition, seconds: float, what: str) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            app.processEvents()
            if condition():
                return True
            time.sleep(0.01)
        failures.append(what)
        print(f"FAIL {what}")
        return False

    def check(ok: bool, what: str) -> None:
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    def key(name: str) -> None:
        xdotool("key", "--clearmodifiers", name)
        for _ in range(30):
            app.processEvents()
            time.sleep(0.01)

    wait(lambda: window.document is not None and window.current_image is not None, 60, "the folder opens")
    done = []
    window.controller.indexingFinished.connect(done.append)
    wait(lambda: done or not window.controller.is_indexing, 300, "indexing finishes")
    wait(lambda: window.canvas.image_size is not None, 20, "the first photo shows")
    print(f"focus at start: {type(app.focusWidget()).__name__ if app.focusWidget() else None}")
    files = window.file_model.paths()
    first = window.current_image
    check(first == files[0], f"the first photo is current ({first})")

    key("d")
    check(wait(lambda: window.current_image == files[1], 5, "D moves to the next photo"), "D: next photo")
    key("d")
    key("a")
    check(wait(lambda: window.current_image == files[1], 5, "A moves back"), "A: previous photo")

    # a box by mouse on the current photo, then Enter, a category, Enter: the search
    wait(lambda: window.canvas.image_size is not None and window.canvas_image == window.current_image, 10,
         "the photo loads")
    window.canvas.fit()
    app.processEvents()
    w, h = window.canvas.image_size
    viewport = window.canvas.viewport()
    p1 = viewport.mapToGlobal(window.canvas.mapFromScene(QPointF(w * 0.3, h * 0.3)))
    p2 = viewport.mapToGlobal(window.canvas.mapFromScene(QPointF(w * 0.6, h * 0.7)))
    xdotool("mousemove", str(p1.x()), str(p1.y()))
    xdotool("mousedown", "1")
    for i in range(1, 6):
        xdotool("mousemove", str(p1.x() + (p2.x() - p1.x()) * i // 5), str(p1.y() + (p2.y() - p1.y()) * i // 5))
        app.processEvents()
    xdotool("mouseup", "1")
    check(wait(lambda: window.review.draft is not None, 5, "the drawn box is the draft"), "a box drawn")
    searched = []
    window.controller.searchFinished.connect(searched.append)
    key("Return")
    xdotool("type", "--delay", "30", "box")
    key("Return")
    check(wait(lambda: bool(searched), 120, "Enter searches"), "Enter, category, Enter: search done")
    wait(lambda: window.document.hits is not None and window.document.hits.entries, 10, "hits shown")
    entries = list(window.document.hits.entries) if window.document.hits else []
    if len(entries) >= 2:
        key("y")
        check(wait(lambda: entries[0].status == "accepted", 5, "Y accepts"), "Y: first hit accepted")
        key("n")
        check(wait(lambda: entries[1].status == "rejected", 5, "N rejects"), "N: second hit rejected")
    else:
        failures.append("fewer than two hits")
    if shot:
        window.grab().save(shot)
    window.close()
    app.processEvents()
    shutil.rmtree(home, ignore_errors=True)
    print("PASS" if not failures else f"{len(failures)} step(s) failed: {failures}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
