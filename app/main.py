"""Command-line entry point. Headless subcommands never import Qt.

`dasr-annotator [PHOTOS]` opens the GUI; `dasr-annotator SUBCOMMAND ...` runs a headless job.
Each subcommand lives in its own module `dasr_annotator.app.cli.cmd_<name>` exposing
`add_arguments(parser)` and `run(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from dasr_annotator import __version__

# name -> one-line help. Order is the order shown in --help.
SUBCOMMANDS: dict[str, str] = {
    "index": "extract regions for every image of a folder and build its search index",
    "search": "find the images that contain the instance in a query box, or photos like a whole photo",
    "label": "record search hits as annotations of a category",
    "export": "export the project's annotations (COCO, YOLO, Pascal VOC, CVAT XML, labelme)",
    "eval": "measure retrieval quality on a manifest with ground truth",
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<8} {text}" for name, text in SUBCOMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="dasr-annotator",
        description="Label object instances across a photo collection by example.",
        usage="dasr-annotator [-h] [--version] [PHOTOS]\n       dasr-annotator {%s} ..." % ",".join(SUBCOMMANDS),
        epilog=f"subcommands (dasr-annotator SUBCOMMAND --help for details):\n{lines}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dasr-annotator {__version__}")
    parser.add_argument("photos", nargs="?", metavar="PHOTOS", help="photo folder to open in the annotator")
    return parser


def _command_module(name: str):
    return importlib.import_module(f"dasr_annotator.app.cli.cmd_{name}")


def _run_subcommand(name: str, argv: list[str]) -> int:
    module = _command_module(name)
    parser = argparse.ArgumentParser(prog=f"dasr-annotator {name}", description=SUBCOMMANDS[name])
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _run_subcommand(argv[0], argv[1:])
    args = _top_parser().parse_args(argv)
    from dasr_annotator.app.gui.application import run_gui  # Qt only for the GUI

    return run_gui(args.photos)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
