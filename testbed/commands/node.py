"""`testbed node`: not built yet; see the open issue for it."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    print("testbed node: not implemented yet (its issue is still open)", file=sys.stderr)
    return 3
