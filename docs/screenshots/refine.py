"""Screenshots of a small object's hit before and after coarse-to-fine refinement.

    .venv/bin/python docs/screenshots/refine.py [--data ../shared/data/dev-hires] [--instance truck4_2]

Drives the real window offscreen on a copy of 1280x720 dev-hires frames (never into the
repository): draws the instance's box in its first frame, searches, and saves the window as the
hits arrive (boxes placed on the stored 512-px maps) and once refinement has finished.
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


def main() -> int:
    from qt_waits import in_scratch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "dev-hires")
    parser.add_argument("--instance", default="truck4_2")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    return in_scratch("dasr-refine-screens-", shoot, args)


def shoot(args, scratch: Path) -> int:
    from qt_waits import drag_box, indexed_window, save_grab, settle
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
    app, window, wait = indexed_window(photos, scratch)  # noqa: F841 - app: kept alive
    query = sorted(truth)[0]
    window.show_image(query)
    wait(lambda: window.current_image == query and window.canvas.image_size is not None)
    window.canvas.fit()
    gt = truth[query]
    drag_box(window.canvas, gt)
    window.category_box.setEditText("object")
    real_refine = window.controller.refine

    def search(refined: bool):
        """The same query again; with refinement held back, the window shows the stored-map boxes
        as it does for the moment before refined boxes arrive."""
        window.controller.refine = real_refine if refined else (lambda *a, **k: None)
        window.review.query = None
        window.show_image(query)
        wait(lambda: window.canvas_image == query)
        settle(300)
        window.review.draft = gt  # the box drawn (showing a photo clears it)
        before = window.document.hits
        window.review.find_similar()
        wait(lambda: not window.controller.is_searching and window.document.hits is not before)
        settle(300)
        wait(lambda: not window.controller.is_refining)
        settle(800)
        return {e.image: (e.key, e.box) for e in window.document.hits.entries}

    coarse = search(refined=False)
    fine = search(refined=True)
    # the hit refinement moved most: the clearest picture of what it does
    gains = {im: fine[im][1].iou(truth[im]) - coarse[im][1].iou(truth[im]) for im in fine if im in truth and im in coarse}
    image = max(gains, key=gains.get)

    def show(hits, name):
        window.results.select_key(hits[image][0])
        if window.current_image != image:
            window.show_image(image)
        wait(lambda: window.current_image == image)
        settle(1000)
        save_grab(window, args.out / name)

    show(fine, "06-refine-after.png")
    show(search(refined=False), "06-refine-before.png")
    print(json.dumps({"image": image, "truth": truth[image].as_list(), "coarse": coarse[image][1].as_list(),
                      "refined": fine[image][1].as_list(), "coarse_iou": coarse[image][1].iou(truth[image]),
                      "refined_iou": fine[image][1].iou(truth[image]),
                      "mean_iou_coarse": sum(coarse[im][1].iou(truth[im]) for im in gains) / len(gains),
                      "mean_iou_refined": sum(fine[im][1].iou(truth[im]) for im in gains) / len(gains)}, indent=1))
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
