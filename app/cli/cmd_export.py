"""`dasr-annotator export PHOTOS --coco OUT.json`: the project's annotations as COCO detection JSON.

(Importing is `dasr-annotator label PHOTOS --import-coco IN.json`.)
"""
from __future__ import annotations

import json
import sys


def add_arguments(parser) -> None:
    parser.add_argument("photos", metavar="PHOTOS", help="photo folder with annotations")
    parser.add_argument("--coco", metavar="OUT.json", required=True, help="file to write")
    parser.add_argument("--all-images", action="store_true",
                        help="list every image of the folder, not only the annotated ones")
    parser.add_argument("--frames", metavar="DIR",
                        help="write the labelled video frames as JPEG files into DIR (file_name relative to DIR)")
    parser.add_argument("--json", action="store_true", help="print a summary as JSON on stdout")


def run(args) -> int:
    from dasr_annotator.app.cli.cmd_search import announce_state
    from dasr_annotator.engine.project.project import Project
    from dasr_annotator.engine.store.coco import export_coco
    from dasr_annotator.engine.store.storage import ProjectFileError

    try:
        project = Project.open(args.photos)
        announce_state(project)
        report = export_coco(project, args.coco, all_images=args.all_images, frames_dir=args.frames)
    except FileNotFoundError as exc:
        print(f"dasr-annotator export: {exc}", file=sys.stderr)
        return 2
    except ProjectFileError as exc:
        print(f"dasr-annotator export: {exc.message}", file=sys.stderr)
        return 2
    for item in report.skipped:
        print(f"skipped {item['file']}: {item['reason']}", file=sys.stderr)
    summary = {"file": args.coco, "images": report.images, "annotations": report.annotations,
               "categories": report.categories, "skipped": report.skipped}
    if args.frames:
        summary["frames"] = report.frames
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"wrote {args.coco}: {report.images} images, {report.annotations} annotations, "
              f"{report.categories} categories")
    return 0
