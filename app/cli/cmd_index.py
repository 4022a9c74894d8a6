"""`dasr-annotator index PHOTOS`: extract regions of every image and build the search index.

Settings not given on the command line are those the folder was indexed with before (else the
defaults), so a plain re-run only updates. Progress goes to stderr; `--json` prints the report on
stdout. Exit 0 when the run completed (even with skipped files), 1 when nothing could be indexed,
2 for unusable arguments or settings that clash with the existing index.
"""
from __future__ import annotations

import json
import sys

METHODS = {"dasr": "dasr", "dasr-star": "dasr*"}  # command-line name -> Extractor's


def _extractor_defaults() -> dict:
    """The Extractor's own defaults, shown in --help (so they are stated in one place only)."""
    import inspect

    from dasr_annotator.engine.dasr.extractor import Extractor

    return {k: p.default for k, p in inspect.signature(Extractor).parameters.items()}


def add_arguments(parser) -> None:
    d = _extractor_defaults()
    method = {v: k for k, v in METHODS.items()}[d["method"]]
    later = "a folder indexed before keeps its settings unless given"
    parser.add_argument("photos", metavar="PHOTOS", help="photo folder (searched recursively)")
    parser.add_argument("--backbone", help=f"network (default {d['backbone']}; {later})")
    parser.add_argument("--weights", metavar="PATH", help="weights file for the backbone (default: built-in)")
    parser.add_argument("--method", choices=sorted(METHODS), help=f"region seeds (default {method})")
    parser.add_argument("--mode", choices=("fast", "moments", "exact"), help=f"backward rule (default {d['mode']}): moments (quickest; hit "
                        "boxes are re-localised anyway), fast (region boxes near the exact rule's, ~2.4x slower), exact")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--max-side", type=int, metavar="PX", help=f"long side the network sees (default {d['max_side']})")
    parser.add_argument("--rebuild", action="store_true", help="forget stored regions and index everything anew")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="images per saved batch (a killed run loses at most one batch)")
    parser.add_argument("--video-fps", type=float, metavar="F",
                        help="frames sampled per second of each video (default 1; the folder keeps it for later runs)")
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="extract on a Ray cluster (the `cluster` extra): at ADDRESS (auto, HOST:PORT or "
                        "ray://HOST:PORT), or on a local Ray instance when no ADDRESS is given; workers must see "
                        "PHOTOS at the same path (shared storage)")
    parser.add_argument("--ray-actors", type=int, metavar="N",
                        help="extractor actors on Ray (default: one per GPU, else one per CPU core of the cluster)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def settings(args, project) -> dict:
    """Extractor keyword arguments: explicit options, else the folder's stored ones (also those
    without an option here, e.g. from the GUI), else the Extractor's defaults."""
    from dasr_annotator.engine.project.project import extractor_args

    manifest = None if args.rebuild else project.manifest()
    out = extractor_args(manifest) if manifest is not None else {}
    given = {"backbone": args.backbone, "method": args.method and METHODS[args.method], "mode": args.mode,
             "max_side": args.max_side, "weights": args.weights}
    if args.backbone is not None and args.backbone != out.get("backbone", args.backbone):
        out.pop("descriptor_layer", None)  # the stored layer belongs to the stored backbone
    out.update({k: v for k, v in given.items() if v is not None})
    return out


def run(args) -> int:
    from tqdm import tqdm

    from dasr_annotator.app.cli.cmd_search import announce_state
    from dasr_annotator.engine.dasr.backbones import WeightsMissing
    from dasr_annotator.engine.dasr.extractor import Extractor
    from dasr_annotator.engine.project.lock import ProjectBusy
    from dasr_annotator.engine.project.project import IncompatibleIndex, Project
    from dasr_annotator.engine.store.storage import ProjectFileError

    on_ray = args.ray is not None
    if args.ray_actors is not None and not on_ray:
        print("dasr-annotator index: --ray-actors needs --ray", file=sys.stderr)
        return 2
    cluster_errors: tuple = ()
    if on_ray:
        from dasr_annotator.engine.project.cluster import ClusterError, RayMissing, import_ray

        cluster_errors = (ClusterError,)
        try:
            import_ray()
        except RayMissing as exc:
            print(f"dasr-annotator index: --ray: {exc.message}", file=sys.stderr)
            return 2
        if args.ray_actors is not None and args.ray_actors < 1:
            print("dasr-annotator index: --ray-actors must be at least 1", file=sys.stderr)
            return 2
    try:
        project = Project.open(args.photos)
    except FileNotFoundError as exc:
        print(f"dasr-annotator index: {exc}", file=sys.stderr)
        return 2
    announce_state(project)
    try:
        options = settings(args, project)
        if options.get("max_side", 32) < 32:
            raise ValueError(f"--max-side {options['max_side']} is too small (at least 32)")
        # on Ray the driver's extractor only states the settings; the actors extract (and get the GPUs)
        extractor = Extractor(device="cpu" if on_ray else args.device, **options)
        if args.video_fps is not None:
            project.set_video_fps(args.video_fps)
    except (ValueError, WeightsMissing, ProjectFileError) as exc:
        print(f"dasr-annotator index: {exc}", file=sys.stderr)
        return 2
    bar = tqdm(total=0, unit="img", desc="extracting", file=sys.stderr, disable=None, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        if on_ray:
            report = _index_on_ray(args, project, extractor, options, progress)
        else:
            report = project.update_index(extractor, progress=progress, rebuild=args.rebuild,
                                          weights=options.get("weights"), batch_files=max(1, args.batch_size))
    except (IncompatibleIndex, ProjectBusy, ProjectFileError) as exc:
        bar.close()
        print(f"dasr-annotator index: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    except cluster_errors as exc:  # unreachable, no GPU for --device cuda, or a failure Ray gave up on
        bar.close()
        print(f"dasr-annotator index: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()
        print("interrupted: finished batches are saved; run the same command again to continue", file=sys.stderr)
        raise
    bar.close()
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for item in report.skipped:
        print(f"skipped {item['file']}: {item['reason']}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_json(), indent=1))
    else:
        print(f"{report.images} images in the index ({report.indexed} new, {report.reused} reused, "
              f"{report.removed} removed, {len(report.skipped)} skipped), {report.regions} regions")
    if report.images == 0:
        print("dasr-annotator index: no image could be indexed" if report.skipped or report.removed
              else f"dasr-annotator index: no images found in {project.photos}", file=sys.stderr)
        return 1
    return 0


def _index_on_ray(args, project, extractor, options: dict, progress):
    from dasr_annotator.engine.project.cluster import index_on_ray

    print(f"extracting on {'the Ray cluster at ' + args.ray if args.ray else 'a local Ray instance'}", file=sys.stderr)
    return index_on_ray(project, options, address=args.ray or None, device=args.device, actors=args.ray_actors,
                        progress=progress, rebuild=args.rebuild, batch_files=max(1, args.batch_size),
                        extractor=extractor)
