"""`dasr-annotator export PHOTOS --format coco|yolo|voc|cvat|labelme --out PATH`: the project's
annotations in a label format (`engine/store/formats/`). `--coco OUT.json` is `--format coco
--out OUT.json`. COCO and CVAT write one file; YOLO, VOC and labelme a folder of label files.
A format without room for scores or provenance (YOLO, VOC) says so in one line on stderr.
COCO with `--frames DIR` also writes the labelled video frames there as JPEG files.

(Importing is `dasr-annotator label PHOTOS --import FILE_OR_DIR --format ...`.)
"""
from __future__ import annotations

import json
import sys

from dasr_annotator.engine.store.formats import FORMATS


def add_arguments(parser) -> None:
    parser.add_argument("photos", metavar="PHOTOS", help="photo folder with annotations")
    parser.add_argument("--format", choices=tuple(FORMATS), help="label format to write (default coco)")
    parser.add_argument("--out", metavar="PATH",
                        help="file (coco, cvat) or folder (yolo, voc, labelme) to write")
    parser.add_argument("--coco", metavar="OUT.json", help="the same as --format coco --out OUT.json")
    parser.add_argument("--all-images", action="store_true",
                        help="list every image of the folder, not only the annotated ones "
                             "(empty label files for the others: negatives for training)")
    parser.add_argument("--copy-images", action="store_true",
                        help="yolo: copy the photos into OUT/images beside OUT/labels")
    parser.add_argument("--frames", metavar="DIR",
                        help="coco: write the labelled video frames as JPEG files into DIR "
                             "(file_name relative to DIR)")
    parser.add_argument("--json", action="store_true", help="print a summary as JSON on stdout")


def _target(args) -> tuple[str, str]:
    """(format, out path) from the options, or raise ValueError saying what is wrong."""
    if args.coco:
        if args.out or (args.format or "coco") != "coco":
            raise ValueError("--coco OUT.json is --format coco --out OUT.json; give one or the other")
        return "coco", args.coco
    if not args.out:
        raise ValueError("say where to write: --out PATH (with --format coco|yolo|voc|cvat|labelme)")
    name = args.format or "coco"
    if args.copy_images and name != "yolo":
        raise ValueError("--copy-images is for --format yolo")
    if args.frames and name != "coco":
        raise ValueError("--frames is for --format coco (the only format here that records a frame's "
                         "video, frame number and time)")
    return name, args.out


def run(args) -> int:
    from dasr_annotator.app.cli.cmd_search import announce_state
    from dasr_annotator.engine.project.project import Project
    from dasr_annotator.engine.store.storage import ProjectFileError

    try:
        name, out = _target(args)
    except ValueError as exc:
        print(f"dasr-annotator export: {exc}", file=sys.stderr)
        return 2
    fmt = FORMATS[name]
    options = {"copy_images": True} if args.copy_images else {}
    if args.frames:
        options["frames_dir"] = args.frames
    try:
        project = Project.open(args.photos)
        announce_state(project)
        report = fmt.export(project, out, all_images=args.all_images, **options)
    except FileNotFoundError as exc:
        print(f"dasr-annotator export: {exc}", file=sys.stderr)
        return 2
    except ProjectFileError as exc:
        print(f"dasr-annotator export: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:  # an out folder that cannot be made, a photo that cannot be copied
        print(f"dasr-annotator export: cannot write {exc.filename or out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for item in report.skipped:
        print(f"skipped {item['file']}: {item['reason']}", file=sys.stderr)
    if report.not_carried:
        print(f"note: {report.not_carried}", file=sys.stderr)
    summary = {"file": out, "format": name, "images": report.images, "annotations": report.annotations,
               "categories": report.categories, "skipped": report.skipped, "not_carried": report.not_carried}
    if args.frames:
        summary["frames"] = report.frames
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"wrote {out} ({fmt.title}): {report.images} images, {report.annotations} annotations, "
              f"{report.categories} categories")
    return 0
