"""`testbed watch DIR [--once]`: follow a run, a campaign or a compare in the terminal.

A running directory is redrawn in place about twice a second until it stops, and its last frame
stays on screen (where the output is not a terminal, only that last frame is written); a finished one is drawn once as it ended. ``--once`` draws one frame and exits
(for scripts and tests); with ``--json`` the frames are the view's JSON snapshots, one a line.
A folder that is none of the three exits 2, saying what it lacks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--interval: {text!r} is not a number of seconds") from None
    if not 0.05 <= value <= 60:
        raise argparse.ArgumentTypeError(f"--interval: {value} s; allowed 0.05 to 60 s")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="a run, campaign or compare directory")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument(
        "--interval", type=_interval, default=0.5, metavar="S", help="seconds between redraws (default 0.5)"
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from testbed.console.view import jsonable, open_view
    from testbed.console.watch import follow, render

    view = open_view(args.dir)
    try:
        if args.json:
            print(json.dumps(jsonable(view.to_dict()), allow_nan=False), flush=True)
            while not args.once and view.status == "running":
                time.sleep(args.interval)
                if view.refresh():
                    print(json.dumps(jsonable(view.to_dict()), allow_nan=False), flush=True)
            return 0
        console = Console()
        if args.once or view.status != "running":
            console.print(render(view))
            return 0
        follow(view, console, args.interval)
    except KeyboardInterrupt:
        # Leaving the watch is how a watch ends: the run goes on.
        return 0
    return 0
