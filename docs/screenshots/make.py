"""Regenerate the README screenshots: drives the real window offscreen on a copy of dev photos.

    .venv/bin/python docs/screenshots/make.py [--data ../shared/data/dev]

Photos are copied to a temporary folder (never into the repository); settings are isolated.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # qt_waits.py beside this script
REPO = HERE.parents[1]
SEQUENCES = ("Box", "Dog", "Human3", "Skating2", "Surfer")
FRAMES = 5


def copy_photos(data: Path, target: Path) -> dict[str, list[float]]:
    manifest = json.loads((data / "manifest.json").read_text())
    boxes = {}
    for instance in manifest["instances"]:
        if instance["video"] in SEQUENCES and instance["video"] not in {Path(k).parts[0] for k in boxes}:
            for item in instance["images"][:FRAMES]:
                rel = item["file"].removeprefix("images/")
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(data / item["file"], target / rel)
                boxes[rel] = item["box"]
    return boxes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "dev")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dasr-screens-"))
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["XDG_CONFIG_HOME"] = str(scratch / "config")
    os.environ["DASR_ANNOTATOR_CACHE"] = str(scratch / "cache")
    try:
        return shoot(args.data, args.out, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def shoot(data: Path, out: Path, scratch: Path) -> int:
    import torch
    from PySide6.QtCore import QSettings

    from dasr_annotator.app.gui.application import create_app
    from qt_waits import drag_box, settle, wait_until
    from dasr_annotator.engine.types import Box

    torch.set_num_threads(1)
    photos = scratch / "photos"
    truth = copy_photos(data, photos)
    app = create_app()
    QSettings.setDefaultFormat(QSettings.IniFormat)
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(scratch / "qsettings"))
    from dasr_annotator.app.gui.main_window import MainWindow

    def wait(condition, timeout_s=120.0):
        wait_until(condition, lambda: window.message_bar.text(), timeout_s)

    def save(widget, name):
        settle()
        widget.grab().save(str(out / name))
        print("wrote", out / name)

    window = MainWindow(photos)
    window.resize(1440, 900)
    window.show()
    wait(lambda: window.progress.bar.isVisible() and window.progress.bar.value() >= 3)
    save(window, "01-indexing.png")
    wait(lambda: not window.controller.is_indexing and window.document is not None)

    query = "Box/" + sorted(Path(p).name for p in truth if p.startswith("Box/"))[0]
    window.show_image(query)
    wait(lambda: window.current_image == query and window.canvas.image_size is not None)
    window.canvas.fit()
    gt = Box.from_list(truth[query])
    drag_box(window.canvas, gt)
    window.category_box.setEditText("box")
    save(window, "02-query.png")

    window.review.find_similar()
    wait(lambda: window.document.hits is not None)
    entries = window.document.hits.entries
    wait(lambda: window.current_image == entries[0].image)
    save(window, "03-results.png")

    # decide the first five as an annotator would: on the box (by the ground truth) or not
    def on_instance(entry):
        if entry.image not in truth or not entry.image.startswith("Box/"):
            return False
        cx, cy = entry.box.center
        t = Box.from_list(truth[entry.image])
        return t.x <= cx <= t.x2 and t.y <= cy <= t.y2

    first = entries[:5]
    window.document.decide_hits([e.key for e in first if on_instance(e)], "accepted")
    window.document.decide_hits([e.key for e in first if not on_instance(e)], "rejected")
    shown = next((e for e in first if on_instance(e)), first[0])
    window.results.select_key(shown.key)
    wait(lambda: window.current_image == shown.image)
    save(window, "04-review.png")

    window.show_shortcuts()
    settle()
    sheet = next(w for w in app.topLevelWidgets() if w.isVisible() and w.windowTitle() == "Keyboard shortcuts")
    save(sheet, "05-shortcuts.png")
    sheet.close()
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
