"""`dasr-annotator label PHOTOS`: record search hits as annotations of a category.

    label PHOTOS --query IMAGE --box X,Y,W,H --category NAME (--accept-top N | --accept-above S)
    label PHOTOS --queries FILE --category NAME (--accept-top N | --accept-above S) [--fusion max|mean]
    label PHOTOS --import FILE_OR_DIR --format coco|yolo|voc|cvat|labelme   (--import-coco IN.json: COCO)
    label PHOTOS --restore-backup

A damaged labels file (`annotations.json`) is refused with what is wrong; when its backup
(`annotations.json.bak`, the previous save) is good, `--restore-backup` puts it back and keeps the
damaged file as `annotations.json.damaged`.

`--queries FILE` is a JSON list of examples `{"id", "image", "box": [x, y, w, h], "negative": false}`
("negative" optional) that together form ONE query: several positive boxes of the instance, from
different images, and boxes of look-alikes it is not. Hits are scored as the GUI's "find more"
does (`feedback.feedback_scores`: best or mean positive, minus a penalty near a negative), and
the positives' own images are left out of them. The file is checked whole before anything runs;
a bad one is refused with every reason and no label is written.

The positive boxes are recorded too (source "manual"); hits are recorded with source "search",
their score and the id of the query, which the store keeps with its positive and negative boxes.
A box that matches an existing annotation of the category (IoU >= 0.9) is reported as a
duplicate and not added.

Which hits are accepted: the ones `search` lists first, with the scores it shows. Hit boxes are
refined on zoomed crops of the photos (search/refine.py) and refined hits are ordered by the mean
of region and box score (`refine.rank_by_box`), as `search`, `eval` and the window order them;
so `--accept-top N` takes the first N of what `search --top max(N, 100)` lists for the same query
(the 100 best images by region score are refined, then re-ordered), and `--accept-above S` takes
every hit whose blended score, the `score` of `search --json`, is above S. A box score is at most
1, so only images whose region score is above 2S - 1 are refined: a low S refines many photos.
The score recorded with each label is that blended score. `--no-refine` keeps the boxes on the
stored maps and takes the best hits by region score (recorded as their score), as before refining
existed. With several positives the region score is the fused one (`--fusion`).

`--import` brings in the labels of a label file or folder (`engine/store/formats/`): checked whole
first (a box outside its photo, a negative size, an unknown photo or an unreadable file refuses
it, each reason naming the file and line), then added with source "import", duplicates of
existing labels skipped and reported.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

import numpy as np

from dasr_annotator.app.cli.cmd_search import UsageError, announce_state, open_searcher, query_image
from dasr_annotator.engine.store.formats import FORMATS
from dasr_annotator.engine.store.formats.common import check_image, finite_number
from dasr_annotator.engine.store.storage import ProjectFileError
from dasr_annotator.engine.types import Box

DUPLICATE_IOU = 0.9
SEARCH_STEP = 100  # hits fetched at a time while looking for the --accept-above cut
# Hits refined and re-ordered before --accept-top N takes the first N: the first N of what
# `search --top max(N, REFINE_POOL)` lists (a hit whose box matches well can rise from far down).
REFINE_POOL = 100
# The largest box score (a cosine; the margin covers float rounding), bounding what a region
# score can still reach once blended with one.
BOX_SCORE_MAX = 1.0 + 1e-4
MAX_REASONS = 20  # problems of a query file shown at most
EXAMPLE_KEYS = ("id", "image", "box", "negative")
REQUIRED_KEYS = ("id", "image", "box")


@dataclass(frozen=True)
class Example:
    """One box of a query file, checked: `image` relative to the photo folder, `box` inside it."""

    id: str
    image: str
    box: Box
    negative: bool = False


@dataclass
class LabelQuery:
    """What one label run searches with and records besides the accepted hits."""

    positives: list[tuple[str, Box]]  # (image, box) examples of the instance
    negatives: list[tuple[str, Box]]  # look-alikes it is not
    exclude: set[str]  # images left out of the hits (the positives' own)
    labels: list[tuple[str, Box, float | None, str]]  # (image, box, score, source) to record


def add_arguments(parser) -> None:
    parser.add_argument("photos", metavar="PHOTOS", help="indexed photo folder")
    parser.add_argument("--query", metavar="IMAGE", help="query image (relative to PHOTOS, or a path)")
    parser.add_argument("--box", metavar="X,Y,W,H", help="query box in the image's pixels")
    parser.add_argument("--queries", metavar="FILE",
                        help='JSON list of {"id", "image", "box": [x, y, w, h], "negative": false} examples '
                             "forming one query (images inside PHOTOS)")
    parser.add_argument("--category", metavar="NAME", help="category to record the boxes as")
    accept = parser.add_mutually_exclusive_group()
    accept.add_argument("--accept-top", type=int, metavar="N", help="accept the N best images")
    accept.add_argument("--accept-above", type=float, metavar="SCORE", help="accept every hit scoring above SCORE")
    parser.add_argument("--fusion", choices=("max", "mean"),
                        help="how several positives score a region: the best match (default) or the average")
    parser.add_argument("--no-refine", action="store_true",
                        help="place hit boxes on the stored maps only (16-px steps of the network input): faster, coarser")
    parser.add_argument("--import", dest="import_path", metavar="FILE_OR_DIR",
                        help="bring in the labels of a file or folder in --format instead")
    parser.add_argument("--format", choices=tuple(FORMATS), help="the label format of --import")
    parser.add_argument("--import-coco", metavar="IN.json", help="the same as --import IN.json --format coco")
    parser.add_argument("--restore-backup", action="store_true",
                        help="put back the previous save of a damaged labels file (annotations.json.bak); "
                             "the damaged file is kept as annotations.json.damaged")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", action="store_true", help="print what was added as JSON on stdout")


def run(args) -> int:
    from dasr_annotator.engine.project.project import Project

    try:
        project = Project.open(args.photos)
    except FileNotFoundError as exc:
        print(f"dasr-annotator label: {exc}", file=sys.stderr)
        return 2
    announce_state(project)
    query_options = (args.query or args.box or args.queries or args.category or args.fusion
                     or args.accept_top is not None or args.accept_above is not None)
    if args.restore_backup:
        if query_options or args.import_coco or args.import_path or args.format:
            print("dasr-annotator label: --restore-backup takes no other options", file=sys.stderr)
            return 2
        return run_restore(args, project)
    try:
        project.annotations  # noqa: B018 - a damaged labels file is refused before any work
    except ProjectFileError as exc:
        print(f"dasr-annotator label: {exc.message}", file=sys.stderr)
        return 2
    if args.import_coco or args.import_path:
        flag = "--import-coco" if args.import_coco else "--import"
        if query_options:
            print(f"dasr-annotator label: {flag} takes no query options", file=sys.stderr)
            return 2
        if args.import_coco and (args.import_path or (args.format or "coco") != "coco"):
            print("dasr-annotator label: --import-coco IN.json is --import IN.json --format coco; give one",
                  file=sys.stderr)
            return 2
        if args.import_path and not args.format:
            print(f"dasr-annotator label: say the format of {args.import_path}: --format "
                  + "|".join(FORMATS), file=sys.stderr)
            return 2
        return run_import(args, project, args.format or "coco", args.import_coco or args.import_path)
    if args.format:
        print("dasr-annotator label: --format goes with --import FILE_OR_DIR", file=sys.stderr)
        return 2
    return run_query(args, project)


def run_restore(args, project) -> int:
    from dasr_annotator.engine.store.storage import backup_path, damaged_copy_path

    path = project.annotations_path
    try:
        restored = project.restore_labels_backup()
    except ProjectFileError as exc:
        print(f"dasr-annotator label: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"restored": str(path), "from": str(backup_path(path)),
                          "damaged_copy": str(damaged_copy_path(path)), "annotations": restored}, indent=1))
    else:
        print(f"restored {path.name} from {backup_path(path).name}: {restored} annotations "
              f"(the damaged file is kept as {damaged_copy_path(path)})")
    return 0


def run_import(args, project, name: str, path: str) -> int:
    from dasr_annotator.engine.store.formats.common import LabelFileError

    try:
        report = FORMATS[name].import_labels(project, path)
    except LabelFileError as exc:
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
        print(json.dumps({"file": path, "format": name, **report.as_json()}, indent=1))
    else:
        print(f"imported {report.added} annotations ({len(report.duplicates)} duplicates skipped"
              + (f"; new categories: {', '.join(report.categories_added)}" if report.categories_added else "") + ")")
    return 0


def run_query(args, project) -> int:
    """Search with the --query/--box box or the --queries examples, then record the accepted hits."""
    from dasr_annotator.engine.dasr.backbones import WeightsMissing
    from dasr_annotator.engine.dasr.extractor import DeviceUnavailable
    from dasr_annotator.engine.project.project import IncompatibleIndex, NoIndex
    from dasr_annotator.engine.search.searcher import BoxError
    from dasr_annotator.engine.store.imageio import ImageError

    try:
        check_usage(args)
        if args.queries:
            query = query_from_examples(read_examples(args.queries, project))
            searcher = open_searcher(project, args.device)
        else:
            searcher = open_searcher(project, args.device)
            query = query_from_box(searcher, project, query_image(project, args.query), args.box)
        positives, windows = _query_vectors(searcher, query.positives)
        negatives = _descriptors(searcher, query.negatives)
        examples = [] if args.no_refine else [searcher.example(image, box) for image, box in query.positives]
        hits = chosen_hits(searcher, positives, negatives, windows, [e for e in examples if e is not None],
                           query.exclude, args.accept_top, args.accept_above, args.fusion or "max")
    except (FileNotFoundError, UsageError, BoxError, NoIndex, WeightsMissing, DeviceUnavailable) as exc:
        print(f"dasr-annotator label: {exc}", file=sys.stderr)
        return 2
    except ImageError as exc:
        print(f"dasr-annotator label: {args.query or args.queries}: {exc.reason}", file=sys.stderr)
        return 2
    except (IncompatibleIndex, ProjectFileError) as exc:
        print(f"dasr-annotator label: {exc.message}", file=sys.stderr)
        return 2
    labels = query.labels + [(hit.image, hit.box, hit.score, "search") for hit in hits]
    return record(project, args.category.strip(), query, labels, args.json)


def check_usage(args) -> None:
    if args.queries and (args.query or args.box):
        raise UsageError("give either --query with --box, or --queries FILE, not both")
    if not ((args.queries or (args.query and args.box)) and args.category and args.category.strip()):
        raise UsageError("give --query IMAGE, --box X,Y,W,H (or --queries FILE) and --category NAME "
                         "(or --import FILE_OR_DIR --format FORMAT)")
    if args.accept_top is None and args.accept_above is None:
        raise UsageError("say which hits to accept: --accept-top N or --accept-above SCORE")
    if args.accept_top is not None and args.accept_top < 0:
        raise UsageError("--accept-top must not be negative")


# ---- the query ---------------------------------------------------------------------------------
def query_from_box(searcher, project, image: str, box_text: str) -> LabelQuery:
    """The --query/--box query. The image may lie outside the photo folder; its box is then
    searched with but not recorded as a label."""
    from dasr_annotator.engine.search.searcher import checked_box, parse_box
    from dasr_annotator.engine.store.imageio import image_size

    box = parse_box(box_text)
    path, rel = searcher.resolve(image)
    inside = checked_box(box, *image_size(path))  # refuses an unusable box before any forward pass
    if rel is None:
        print(f"note: the query image lies outside {project.photos}; only the hits are recorded", file=sys.stderr)
    return LabelQuery(positives=[(rel or str(path), box)], negatives=[], exclude={rel} if rel else set(),
                      labels=[(rel, inside, None, "manual")] if rel else [])


def query_from_examples(examples: list[Example]) -> LabelQuery:
    """The --queries query: its positives are recorded as labels too."""
    positives = [(e.image, e.box) for e in examples if not e.negative]
    return LabelQuery(positives=positives, negatives=[(e.image, e.box) for e in examples if e.negative],
                      exclude={image for image, _ in positives},
                      labels=[(image, box, None, "manual") for image, box in positives])


def _query_vectors(searcher, pairs):
    """Raw descriptors [N, D] of positive (image, box) pairs and their window queries."""
    from dasr_annotator.engine.dasr.relocate import WindowQuery

    described = [searcher.query(image, box) for image, box in pairs]
    windows = [w for _, w in described]
    return np.stack([d for d, _ in described]), WindowQuery.stack(windows) if all(w is not None for w in windows) else None


def _descriptors(searcher, pairs) -> np.ndarray | None:
    """Raw descriptors [N, D] of (image, box) pairs, or None for no pairs."""
    if not pairs:
        return None
    return np.stack([searcher.query_descriptor(image, box) for image, box in pairs])


def read_examples(path: str, project) -> list[Example]:
    """The examples of a --queries file, every box checked against its image; raises UsageError
    listing what is wrong (missing keys, wrong types, bad boxes, unknown images, paths outside
    the photo folder, no positive example)."""
    from dasr_annotator.engine.store.storage import read_json

    try:
        data = read_json(path, fallback_to_backup=False, expect=list)
    except ProjectFileError as exc:
        raise UsageError(exc.message) from None
    examples, reasons, seen = [], [], set()
    for i, item in enumerate(data):
        example = _checked_example(item, f"example {i}", project, reasons)
        if example is None:
            continue
        if example.id in seen:
            reasons.append(f"example {i}: id {example.id!r} is used twice")
            continue
        seen.add(example.id)
        examples.append(example)
    if not reasons and not any(not e.negative for e in examples):
        reasons.append("no positive example: at least one needs \"negative\": false (or no \"negative\")"
                       if examples else "the file lists no examples")
    if reasons:
        more = f"\n  ... and {len(reasons) - MAX_REASONS} more" if len(reasons) > MAX_REASONS else ""
        raise UsageError(f"{path}: not used, nothing was labelled:\n  " + "\n  ".join(reasons[:MAX_REASONS]) + more)
    return examples


def _checked_example(item, where: str, project, reasons: list[str]) -> Example | None:
    """`item` as an Example, or None with what is wrong appended to `reasons`."""
    from dasr_annotator.engine.search.searcher import BoxError, checked_box

    if not isinstance(item, dict):
        reasons.append(f"{where} must be an object with {', '.join(REQUIRED_KEYS)} (and optionally negative)")
        return None
    problems = []
    missing = [k for k in REQUIRED_KEYS if k not in item]
    if missing:
        problems.append("missing " + ", ".join(f'"{k}"' for k in missing))
    unknown = sorted(set(item) - set(EXAMPLE_KEYS))
    if unknown:  # a misspelt "negative" would silently turn a negative into a positive
        problems.append("unknown key " + ", ".join(f'"{k}"' for k in unknown)
                        + f" (expected {', '.join(EXAMPLE_KEYS)})")
    example_id, image, box, negative = (item.get(k) for k in EXAMPLE_KEYS)
    if "id" in item and not (isinstance(example_id, str) and example_id.strip()
                             or isinstance(example_id, int) and not isinstance(example_id, bool)):
        problems.append('"id" must be a non-empty string or a whole number')
    if "image" in item and not (isinstance(image, str) and image.strip()):
        problems.append('"image" must be a path (text)')
    values = [finite_number(v) for v in box] if isinstance(box, list) else []
    if "box" in item and (len(values) != 4 or None in values):
        problems.append(f'"box" must be [x, y, width, height] numbers, not {json.dumps(box)}')
    if negative is not None and not isinstance(negative, bool):
        problems.append(f'"negative" must be true or false, not {json.dumps(negative)}')
    if problems:
        reasons.append(f"{where}: " + "; ".join(problems))
        return None
    where = f"{where} ({example_id!r})"
    checked = check_image(project, image, (None, None), where, reasons)
    if checked is None:
        return None
    try:
        inside = checked_box(Box(*values), checked.width, checked.height)
    except BoxError as exc:
        reasons.append(f"{where}: {exc}")
        return None
    return Example(str(example_id), checked.rel, inside, bool(negative))


# ---- ranking -----------------------------------------------------------------------------------
def chosen_hits(searcher, positives: np.ndarray, negatives: np.ndarray | None, windows, examples: list,
                exclude: set[str], top: int | None, above: float | None, fusion: str = "max") -> list:
    """The hits to record, best first (module docstring, "Which hits are accepted").

    Refined (`examples` given and the searcher can refine): the candidates `search` would list
    for the query (the `max(top, REFINE_POOL)` best images by region score, or every image that
    could still pass `above`), re-localised, refined and ordered by `refine.rank_by_box`; the cut
    applies to that blended score, the one `search --json` shows. Otherwise (`--no-refine`): the
    best by region score, boxes re-localised on the stored maps."""
    from dasr_annotator.engine.search.refine import rank_by_box

    if not examples or windows is None or searcher.refiner is None:
        # the regions chose the images; the boxes are the re-localised ones (dasr/relocate.py)
        hits = accepted_hits(searcher, positives, negatives, exclude, top, above, fusion)
        return searcher.relocate(hits, windows)
    if top == 0:
        return []
    if top is not None:
        candidates = accepted_hits(searcher, positives, negatives, exclude, max(top, REFINE_POOL), None, fusion)
    else:
        # the blend is the mean of region and box score, and a box score is a cosine (at most 1):
        # a region score at or below 2 * above - 1 cannot pass, so paging stops there
        candidates = accepted_hits(searcher, positives, negatives, exclude, None, 2 * above - BOX_SCORE_MAX, fusion)
    ranked = rank_by_box(searcher.refine(searcher.relocate(candidates, windows), examples, windows))
    return ranked[:top] if top is not None else [h for h in ranked if h.score > above]


def accepted_hits(searcher, positives: np.ndarray, negatives: np.ndarray | None, exclude: set[str],
                  top: int | None, above: float | None, fusion: str = "max") -> list:
    """The `top` best hits, or every hit scoring above `above`, `exclude`d images left out.

    `Searcher.search` ranks by max fusion, a page at a time. A mean-fused score never exceeds the
    max-fused one, so mean fusion re-scores the page's images and stops paging once the page's
    last (max-fused) score is no better than the cut or the `top`-th mean-fused score: nothing
    further down can make it."""
    if top == 0:
        return []
    want = (top if top is not None else SEARCH_STEP) + len(exclude)
    while True:
        page = searcher.search(positives, want, negatives=negatives)
        hits = [h for h in page if h.image not in exclude]
        if fusion != "max" and len(positives) > 1:
            hits = rescored(searcher, hits, positives, negatives, fusion)
        cut = above if top is None else (hits[top - 1].score if len(hits) >= top else math.inf)
        if len(page) < want or page[-1].score <= cut:
            return hits[:top] if top is not None else [h for h in hits if h.score > above]
        want *= 4


def rescored(searcher, hits: list, positives: np.ndarray, negatives: np.ndarray | None, fusion: str) -> list:
    """The images of `hits` ranked by `fusion` over all their regions; each hit is its image's best
    region (the same scoring as the GUI's re-ranking)."""
    from dasr_annotator.engine.search import index as faiss_index
    from dasr_annotator.engine.search.feedback import feedback_scores, image_ranking
    from dasr_annotator.engine.types import Ellipse, Hit

    if not hits:
        return []
    rows = searcher.region_rows([h.image for h in hits])
    vectors = faiss_index.reconstruct(searcher.index, rows)
    negs = searcher.prepare(negatives) if negatives is not None else None
    scores = feedback_scores(searcher.prepare(positives), negs, vectors, fusion)
    images, best, image_scores = image_ranking(scores, searcher.region_image[rows])
    return [Hit(searcher.images[int(image)], float(score), Box(*map(float, searcher.boxes[row])),
                Ellipse(*map(float, searcher.ellipses[row])))
            for image, row, score in zip(images, rows[best], image_scores)]


# ---- recording ---------------------------------------------------------------------------------
def record(project, category: str, query: LabelQuery, labels: list, as_json: bool) -> int:
    """Add `labels` [(image, box, score, source)] that are not duplicates, under one new query
    record; save and report."""

    store = project.annotations
    try:
        store.sync()  # labels the window (or another command) saved meanwhile count as duplicates too
    except ProjectFileError as exc:
        print(f"dasr-annotator label: {exc.message}", file=sys.stderr)
        return 2
    fresh, duplicates = [], []
    for image, box, score, source in labels:
        existing = store.find_duplicate(image, category, box, DUPLICATE_IOU)
        if existing is not None:
            duplicates.append({"image": image, "box": box.as_list(), "existing": existing.id})
        else:
            fresh.append((image, box, score, source))
    added = []
    if fresh:
        recorded = store.add_query(category, query.positives, query.negatives)
        added = [store.add(image, category, box, score=score, query_id=recorded.id, source=source)
                 for image, box, score, source in fresh]
    try:
        store.save()
    except ProjectFileError as exc:
        print(f"dasr-annotator label: {exc.message}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps({"category": category, "query_id": added[0].query_id if added else None,
                          "added": [a.as_json() for a in added], "duplicates": duplicates}, indent=1))
    else:
        for a in added:
            score = "" if a.score is None else f" score {a.score:.3f}"
            print(f"added {a.id}: {a.image} {category} {_fmt(a.box.as_list())}{score}")
        for d in duplicates:
            print(f"duplicate skipped: {d['image']} {_fmt(d['box'])} (matches {d['existing']})")
        print(f"{len(added)} annotations added to {category!r} ({len(duplicates)} duplicates skipped)")
    return 0


def _fmt(box) -> str:
    return ",".join(f"{v:.0f}" for v in box)
