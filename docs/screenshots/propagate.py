"""Screenshot of a label propagated to the neighbouring frames of a video, under review.

    .venv/bin/python docs/screenshots/propagate.py [--data ../shared/data/dev] [--sequence Box]

Encodes the first 12 listed frames of a dev sequence as a 4 fps MPEG-4 clip (OpenCV's VideoWriter,
in a scratch folder, never in the repository), opens the real window on it (offscreen; the folder
samples 1 frame per second), labels the instance's ground-truth box on the frame at 1.0 s,
propagates it 0.5 s either way at 4 frames per second and saves the window with the nearest
proposal selected (07-propagate.png).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # qt_waits.py beside this script
REPO = HERE.parents[1]
SIZE = (480, 360)
FPS = 4


def main() -> int:
    from qt_waits import in_scratch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "dev")
    parser.add_argument("--sequence", default="Box")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    return in_scratch("dasr-propagate-screens-", shoot, args)


def encode_clip(data: Path, sequence: str, path: Path, count: int = 12) -> list[list[float]]:
    """The sequence's first `count` listed frames as a clip at FPS; their boxes, scaled to SIZE."""
    import cv2

    manifest = json.loads((data / "manifest.json").read_text())
    instance = next(i for i in manifest["instances"] if i["name"] == sequence)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    boxes = []
    for item in instance["images"][:count]:
        bgr = cv2.imread(str(data / item["file"]))
        sx, sy = SIZE[0] / bgr.shape[1], SIZE[1] / bgr.shape[0]
        writer.write(cv2.resize(bgr, SIZE, interpolation=cv2.INTER_AREA))
        x, y, w, h = item["box"]
        boxes.append([x * sx, y * sy, w * sx, h * sy])
    writer.release()
    return boxes


def shoot(args, scratch: Path) -> int:
    from dasr_annotator.app.gui import settings as app_settings
    from dasr_annotator.engine.types import Box
    from qt_waits import indexed_window, save_grab, settle

    photos = scratch / "photos"
    photos.mkdir()
    clip = f"{args.sequence.lower()}.mp4"
    boxes = encode_clip(args.data, args.sequence, photos / clip)
    prefs = app_settings.Preferences(propagate_seconds=0.5, propagate_fps=FPS)
    app, window, wait = indexed_window(photos, scratch, prefs)  # noqa: F841 - app: kept alive
    labelled = f"{clip}#frame={FPS}"  # 1.0 s
    window.show_image(labelled)
    wait(lambda: window.canvas_image == labelled)
    window.document.add_annotation(labelled, args.sequence.lower(), Box(*boxes[FPS]))
    window.action["propagate"].trigger()
    wait(lambda: window.document.hits is not None and not window.controller.is_propagating)
    hits = window.document.hits
    nearest = hits.entries[0]
    wait(lambda: window.canvas_image == nearest.image)
    settle(1500)  # hit crops and thumbnails land
    window.canvas.fit()
    settle(300)
    save_grab(window, args.out / "07-propagate.png")
    truth = {f"{clip}#frame={i}": b for i, b in enumerate(boxes)}
    print(json.dumps([{"image": e.image, "score": round(e.score, 3), "box": e.box.as_list(),
                       "iou": round(e.box.iou(Box(*truth[e.image])), 3)} for e in hits.entries], indent=1))
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
