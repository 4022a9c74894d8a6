"""Screenshots of a small object's hit before and after coarse-to-fine refinement.

    .venv/bin/python docs/screenshots/refine.py [--data ../shared/data/dev-hires] [--instance truck4_2]

Drives the real window offscreen on a copy of 1280x720 dev-hires frames (never into the
repository): draws the instance's box in its first frame, searches, and saves the window as the
hits arrive (boxes placed on the stored 512-px maps) and once refinement has finished.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "dev-hires")
    parser.add_argument("--instance", default="truck4_2")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dasr-refine-screens-"))
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["XDG_CONFIG_HOME"] = str(scratch / "config")
    os.environ["DASR_ANNOTATOR_CACHE"] = str(scratch / "cache")
    try:
        return shoot(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def shoot(args, scratch: Path) -> int:
    from PySide6.QtCore import QEventLoop, QPointF, QSettings, Qt, QTimer
    from PySide6.QtTest import QTest

    from dasr_annotator.app.gui.application import create_app
    from dasr_annotator.engine.types import Box

    manifest = json.loads((args.data / "manifest.json").read_text())
    instance = next(i for i in manifest["instances"] if i["name"] == args.instance)
    images = instance["images"][:: max(1, len(instance["images"]) // args.frames)][: args.frames]
    photos = scratch / "photos"
    truth = {}
    for item in images:
        rel = Path(item["file"]).name
        photos.mkdir(parents=True, exist_ok=True)
        shutil.copy(args.data / item["file"], photos / rel)
        x, y, w, h = item["box"]
        truth[rel] = Box(x - 1, y - 1, w, h)
    app = create_app()  # noqa: F841 - keeps the application alive
    QSettings.setDefaultFormat(QSettings.IniFormat)
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(scratch / "qsettings"))
    from dasr_annotator.app.gui.main_window import MainWindow

    def wait(condition, timeout_s=300.0):
        loop = QEventLoop()
        timer = QTimer(interval=50)
        timer.timeout.connect(lambda: condition() and loop.quit())
        timer.start()
        QTimer.singleShot(int(timeout_s * 1000), loop.quit)
        loop.exec()
        timer.stop()
        if not condition():
            raise TimeoutError(f"the window did not reach the expected state; it says: {window.message_bar.text()!r}")

    def settle(ms=400):
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    window = MainWindow(photos)
    window.resize(1440, 900)
    window.show()
    wait(lambda: not window.controller.is_indexing and window.document is not None)
    query = sorted(truth)[0]
    window.show_image(query)
    wait(lambda: window.current_image == query and window.canvas.image_size is not None)
    window.canvas.fit()
    gt = truth[query]
    viewport = window.canvas.viewport()
    p1, p2 = (window.canvas.mapFromScene(QPointF(x, y)) for x, y in ((gt.x, gt.y), (gt.x2, gt.y2)))
    QTest.mousePress(viewport, Qt.LeftButton, Qt.NoModifier, p1)
    QTest.mouseMove(viewport, (p1 + p2) / 2)
    QTest.mouseMove(viewport, p2)
    QTest.mouseRelease(viewport, Qt.LeftButton, Qt.NoModifier, p2)
    window.category_box.setEditText("truck")
    shots = {}

    def coarse(_outcome):  # runs right after the window has shown the hits, before any refined box
        entry = window.document.hits.entries[0]
        shots["coarse"] = (entry.image, entry.box)

    window.controller.searchFinished.connect(coarse)
    window.controller.refine = _grabbing(window.controller.refine, window, args.out / "06-refine-before.png")
    window.review.find_similar()
    wait(lambda: "coarse" in shots and not window.controller.is_searching)
    wait(lambda: not window.controller.is_refining)
    settle(800)
    entry = next(e for e in window.document.hits.entries if e.image == shots["coarse"][0])
    window.grab().save(str(args.out / "06-refine-after.png"))
    target = truth.get(entry.image)
    print(json.dumps({"image": entry.image, "truth": target and target.as_list(),
                      "coarse": shots["coarse"][1].as_list(), "refined": entry.box.as_list(),
                      "coarse_iou": target and shots["coarse"][1].iou(target),
                      "refined_iou": target and entry.box.iou(target)}, indent=1))
    window.close()
    return 0


def _grabbing(refine, window, path: Path):
    """controller.refine, but the window is saved first: the hits with their stored-map boxes."""
    from PySide6.QtCore import QEventLoop, QTimer

    def wrapped(*args, **kw):
        loop = QEventLoop()
        QTimer.singleShot(600, loop.quit)  # let the canvas frame the first hit
        loop.exec()
        window.grab().save(str(path))
        return refine(*args, **kw)

    return wrapped


if __name__ == "__main__":
    raise SystemExit(main())
