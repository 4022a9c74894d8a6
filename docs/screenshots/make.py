"""Regenerate the README screenshots: drives the real window offscreen on a copy of dev photos.

    .venv/bin/python docs/screenshots/make.py [--data ../shared/data/dev]

Photos are copied to a temporary folder (never into the repository); settings are isolated.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
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
    from qt_waits import in_scratch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "dev")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    return in_scratch("dasr-screens-", shoot, args)


def shoot(args, scratch: Path) -> int:
    import torch

    from qt_waits import drag_box, open_window, save_grab, settle
    from dasr_annotator.engine.types import Box

    torch.set_num_threads(1)
    photos = scratch / "photos"
    truth = copy_photos(args.data, photos)

    def save(widget, name):
        settle()
        save_grab(widget, args.out / name)
        print("wrote", args.out / name)

    app, window, wait = open_window(photos, scratch)
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
