"""`dasr-annotator search` (implemented by its own issue)."""
from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("rest", nargs="*", help="arguments (not implemented yet)")


def run(args) -> int:
    print("dasr-annotator search: not implemented yet", file=sys.stderr)
    return 2
