"""`dasr-annotator label PHOTOS`: record search hits as annotations of a category.

    label PHOTOS --query IMAGE --box X,Y,W,H --category NAME (--accept-top N | --accept-above S)
    label PHOTOS --import-coco IN.json

The query box itself is recorded too (source "manual"); hits are recorded with source "search",
their score and the id of the query, which the store keeps with its positive box (queries with
several positives and negatives fit the same record). A hit that matches an existing annotation
of the category (IoU >= 0.9) is reported as a duplicate and not added.
"""
from __future__ import annotations

import json
import sys

from dasr_annotator.app.cmd_search import UsageError, announce_state, open_searcher, query_image

DUPLICATE_IOU = 0.9
SEARCH_STEP = 100  # hits fetched at a time while looking for the --accept-above cut


def add_arguments(parser) -> None:
    parser.add_argument("photos", metavar="PHOTOS", help="indexed photo folder")
    parser.add_argument("--query", metavar="IMAGE", help="query image (relative to PHOTOS, or a path)")
    parser.add_argument("--box", metavar="X,Y,W,H", help="query box in the image's pixels")
    parser.add_argument("--category", metavar="NAME", help="category to record the boxes as")
    accept = parser.add_mutually_exclusive_group()
    accept.add_argument("--accept-top", type=int, metavar="N", help="accept the N best images")
    accept.add_argument("--accept-above", type=float, metavar="SCORE", help="accept every hit scoring above SCORE")
    parser.add_argument("--import-coco", metavar="IN.json", help="bring in the annotations of a COCO file instead")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", action="store_true", help="print what was added as JSON on stdout")


def run(args) -> int:
    from dasr_annotator.engine.project import Project

    try:
        project = Project.open(args.photos)
    except FileNotFoundError as exc:
        print(f"dasr-annotator label: {exc}", file=sys.stderr)
        return 2
    announce_state(project)
    if args.import_coco:
        if args.query or args.box or args.category or args.accept_top is not None or args.accept_above is not None:
            print("dasr-annotator label: --import-coco takes no query options", file=sys.stderr)
            return 2
        return run_import(args, project)
    return run_query(args, project)


def run_import(args, project) -> int:
    from dasr_annotator.engine.coco import CocoError, import_coco
    from dasr_annotator.engine.storage import ProjectFileError

    try:
        report = import_coco(project, args.import_coco)
    except CocoError as exc:
        print(f"dasr-annotator label: {exc}", file=sys.stderr)
        return 2
    except ProjectFileError as exc:
        print(f"dasr-annotator label: {exc.message}", file=sys.stderr)
        return 2
    for d in report.duplicates:
        print(f"duplicate skipped: {d['image']} {d['category']} {_fmt(d['box'])} (matches {d['existing']})",
              file=sys.stderr)
    for s in report.skipped:
        print(f"skipped annotation {s['annotation']}: {s['reason']}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_json(), indent=1))
    else:
        print(f"imported {report.added} annotations ({len(report.duplicates)} duplicates skipped"
              + (f"; new categories: {', '.join(report.categories_added)}" if report.categories_added else "") + ")")
    return 0


def run_query(args, project) -> int:
    from dasr_annotator.engine.backbones import WeightsMissing
    from dasr_annotator.engine.imageio import ImageError, image_size
    from dasr_annotator.engine.project import IncompatibleIndex, NoIndex
    from dasr_annotator.engine.search import BoxError, checked_box, parse_box
    from dasr_annotator.engine.storage import ProjectFileError

    try:
        if not (args.query and args.box and args.category and args.category.strip()):
            raise UsageError("give --query IMAGE, --box X,Y,W,H and --category NAME (or --import-coco FILE)")
        if args.accept_top is None and args.accept_above is None:
            raise UsageError("say which hits to accept: --accept-top N or --accept-above SCORE")
        if args.accept_top is not None and args.accept_top < 0:
            raise UsageError("--accept-top must not be negative")
        image = query_image(project, args.query)
        searcher = open_searcher(project, args.device)
        path, rel = searcher.resolve(image)
        descriptor = searcher.query_descriptor(image, parse_box(args.box))
        hits = accepted_hits(searcher, descriptor, rel, args.accept_top, args.accept_above)
    except (FileNotFoundError, UsageError, BoxError, NoIndex, WeightsMissing) as exc:
        print(f"dasr-annotator label: {exc}", file=sys.stderr)
        return 2
    except ImageError as exc:
        print(f"dasr-annotator label: {args.query}: {exc.reason}", file=sys.stderr)
        return 2
    except (IncompatibleIndex, ProjectFileError) as exc:
        print(f"dasr-annotator label: {exc.message}", file=sys.stderr)
        return 2

    store = project.annotations
    query_box = parse_box(args.box)
    candidates = []  # (image, box, score, source)
    if rel is not None:
        candidates.append((rel, checked_box(query_box, *image_size(path)), None, "manual"))
    else:
        print(f"note: the query image lies outside {project.photos}; only the hits are recorded", file=sys.stderr)
    candidates += [(hit.image, hit.box, hit.score, "search") for hit in hits]
    fresh, duplicates = [], []
    for image, box, score, source in candidates:
        existing = store.find_duplicate(image, args.category, box, DUPLICATE_IOU)
        if existing is not None:
            duplicates.append({"image": image, "box": box.as_list(), "existing": existing.id})
        else:
            fresh.append((image, box, score, source))
    added = []
    if fresh:
        query = store.add_query(args.category, [(rel or str(path), query_box)])
        added = [store.add(image, args.category, box, score=score, query_id=query.id, source=source)
                 for image, box, score, source in fresh]
    try:
        store.save()
    except ProjectFileError as exc:
        print(f"dasr-annotator label: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"category": args.category, "query_id": added[0].query_id if added else None,
                          "added": [a.as_json() for a in added], "duplicates": duplicates}, indent=1))
    else:
        for a in added:
            score = "" if a.score is None else f" score {a.score:.3f}"
            print(f"added {a.id}: {a.image} {args.category} {_fmt(a.box.as_list())}{score}")
        for d in duplicates:
            print(f"duplicate skipped: {d['image']} {_fmt(d['box'])} (matches {d['existing']})")
        print(f"{len(added)} annotations added to {args.category!r} ({len(duplicates)} duplicates skipped)")
    return 0


def accepted_hits(searcher, descriptor, exclude: str | None, top: int | None, above: float | None):
    """The N best hits, or every hit scoring above the cut (fetched a page at a time)."""
    if top is not None:
        return searcher.search(descriptor[None], top, exclude_image=exclude) if top else []
    want = SEARCH_STEP
    while True:
        hits = searcher.search(descriptor[None], want, exclude_image=exclude)
        if len(hits) < want or hits[-1].score <= above:
            return [h for h in hits if h.score > above]
        want *= 4


def _fmt(box) -> str:
    return ",".join(f"{v:.0f}" for v in box)
