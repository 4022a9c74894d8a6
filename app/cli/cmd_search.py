"""`dasr-annotator search PHOTOS`: find the images that contain the instance in a query box.

Hit boxes are placed coarse-to-fine: a query-shaped window on the photo's stored map, then
windows on zoomed crops of the full-resolution photo around the best few (engine/search/refine.py;
`--no-refine` keeps the stored-map boxes; the same for `--propagate`'s frames, whose refined
proposals also carry `region_score` and `box_score`). The folder must have been indexed (`dasr-annotator
index PHOTOS`); search never indexes on the fly, because a first index of a large folder can take hours and should be asked for. Queries
use the settings the folder was indexed with; many queries (`--queries FILE`) share one loaded
model and index.

Without a box (`--query IMAGE` alone, or a `--queries` item without "box") the whole photo is the
query: every region of the photo votes for the photos it matches (engine/search/image_search.py);
each hit's box is the whole photo, so the JSON keeps its keys.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from dasr_annotator.engine.types import Box


@dataclass
class QuerySpec:
    id: str
    image: str
    box: Box | None  # None: the whole photo is the query (whole-image search)


def add_arguments(parser) -> None:
    parser.add_argument("photos", metavar="PHOTOS", help="indexed photo folder")
    parser.add_argument("--query", metavar="IMAGE", help="query image (relative to PHOTOS, or a path)")
    parser.add_argument("--box", metavar="X,Y,W,H",
                        help="query box in the image's pixels (without it: photos like the whole image)")
    parser.add_argument("--queries", metavar="FILE",
                        help='JSON list of {"id", "image", "box": [x, y, w, h]} queries ("box" left out: '
                             'photos like the whole image)')
    parser.add_argument("--top", type=int, default=20, metavar="K", help="images per query (default 20)")
    parser.add_argument("--no-refine", action="store_true",
                        help="place hit boxes (and --propagate's) on the stored maps only (16-px steps of the network "
                             "input): faster, coarser")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--propagate", type=float, metavar="SECONDS",
                        help="for a query in a video frame, also find the box in the frames within SECONDS of it "
                             "(nearest in time first; JSON key 'propagated')")
    parser.add_argument("--propagate-fps", type=float, default=10.0, metavar="F",
                        help="frames per second looked at when propagating (default 10)")
    parser.add_argument("--json", action="store_true", help="print the hits as JSON on stdout")


class UsageError(Exception):
    pass


def query_image(project, image: str) -> str:
    """An image named on the command line: relative to PHOTOS, else to the working folder, or absolute."""
    p = Path(image)
    if p.is_absolute() or (project.photos / p).exists() or not p.exists():
        return image
    return str(p.resolve())


def read_queries(path: str) -> list[QuerySpec]:
    from dasr_annotator.engine.search.searcher import BoxError
    from dasr_annotator.engine.store.storage import ProjectFileError, read_json

    try:
        data = read_json(path, fallback_to_backup=False, expect=list)
    except ProjectFileError as exc:
        raise UsageError(exc.message) from None
    out, seen = [], set()
    for i, q in enumerate(data):
        where = f"{path}: query {i}"
        if not isinstance(q, dict) or not isinstance(q.get("image"), str):
            raise UsageError(f"{where} needs an \"image\" path")
        box = q.get("box")
        if box is not None and (not isinstance(box, list) or len(box) != 4 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise UsageError(f"{where}: \"box\" must be [x, y, w, h] numbers (or left out for the whole image)")
        qid = str(q.get("id", i))
        if qid in seen:
            raise UsageError(f"{where}: id {qid!r} is used twice")
        seen.add(qid)
        try:
            out.append(QuerySpec(qid, q["image"], None if box is None else Box.from_list(box)))
        except (BoxError, ValueError) as exc:
            raise UsageError(f"{where}: {exc}") from None
    return out


def parse_queries(args, project) -> list[QuerySpec]:
    """The queries asked for: one (--query/--box) or a file of them (--queries)."""
    from dasr_annotator.engine.search.searcher import parse_box

    if args.queries and (args.query or args.box):
        raise UsageError("give either --query with --box, or --queries FILE, not both")
    if args.queries:
        return read_queries(args.queries)
    if not args.query:
        raise UsageError("give --query IMAGE (with --box X,Y,W,H to find an object; without, photos like the "
                         "whole image), or --queries FILE")
    return [QuerySpec("query", query_image(project, args.query), parse_box(args.box) if args.box else None)]


def announce_state(project) -> None:
    """Say where the project's state is when it is not in the photo folder (read-only folders)."""
    if not project.state_dir.is_relative_to(project.photos):
        print(f"note: {project.state_note}", file=sys.stderr)


def open_searcher(project, device: str):
    """The project's searcher with the extractor the folder was indexed with."""
    from dasr_annotator.engine.dasr.extractor import Extractor

    return project.searcher(Extractor(device=device, **project.stored_extractor_args()))


def run(args) -> int:
    from dasr_annotator.engine.dasr.backbones import WeightsMissing
    from dasr_annotator.engine.dasr.extractor import DeviceUnavailable
    from dasr_annotator.engine.project.project import IncompatibleIndex, NoIndex, Project
    from dasr_annotator.engine.search.searcher import BoxError
    from dasr_annotator.engine.store.imageio import ImageError
    from dasr_annotator.engine.store.storage import ProjectFileError

    if args.top < 1:
        print("dasr-annotator search: --top must be at least 1", file=sys.stderr)
        return 2
    try:
        project = Project.open(args.photos)
        announce_state(project)
        queries = parse_queries(args, project)
        searcher = open_searcher(project, args.device)
    except (FileNotFoundError, UsageError, BoxError, NoIndex, WeightsMissing, DeviceUnavailable) as exc:
        print(f"dasr-annotator search: {exc}", file=sys.stderr)
        return 2
    except (IncompatibleIndex, ProjectFileError) as exc:
        print(f"dasr-annotator search: {exc.message}", file=sys.stderr)
        return 2
    results, failures = [], 0
    for q in queries:
        try:
            if q.box is None:
                hits = searcher.search_image(q.image, args.top)
            else:
                hits = searcher.search_box(q.image, q.box, args.top, refine=not args.no_refine)
        except (BoxError, ImageError) as exc:
            print(f"dasr-annotator search: query {q.id} ({q.image}): {getattr(exc, 'reason', exc)}", file=sys.stderr)
            failures += 1
            continue
        result = {"id": q.id, "hits": [h.as_json() for h in hits]}
        if args.propagate is not None:
            from dasr_annotator.engine.search.propagate import propagate

            try:
                propagated = propagate(searcher, q.image, q.box, seconds=args.propagate, fps=args.propagate_fps,
                                       refine=not args.no_refine)
            except (ValueError, ImageError) as exc:
                print(f"dasr-annotator search: query {q.id}: not propagated: {getattr(exc, 'reason', exc)}",
                      file=sys.stderr)
                propagated = []
            result["propagated"] = [h.as_json() for h in propagated]
        results.append(result)
        if not args.json:
            print_table(q, hits)
            if args.propagate is not None:
                print_table(QuerySpec(f"{q.id} (propagated)", q.image, q.box), propagated)
    if args.json:
        print(json.dumps({"queries": results}, indent=1))
    return 0 if failures == 0 else (1 if results else 2)


def print_table(q: QuerySpec, hits) -> None:
    what = "whole image" if q.box is None else "box " + ",".join(f"{v:g}" for v in q.box.as_list())
    print(f"query {q.id}: {q.image} {what}")
    if not hits:
        print("  (no hits)")
        return
    width = max(len(h.image) for h in hits)
    print(f"  {'rank':>4}  {'score':>6}  {'image':<{width}}  box x,y,w,h")
    for rank, h in enumerate(hits, start=1):
        b = ",".join(f"{v:.0f}" for v in h.box.as_list())
        print(f"  {rank:>4}  {h.score:>6.3f}  {h.image:<{width}}  {b}")
