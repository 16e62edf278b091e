"""`testbed stop DIR [--now] [--wait]`: ask a running run, campaign or compare to stop cleanly.

Without ``--now`` the run stops at the end of the round it is in (a campaign after its point, a
compare once its running cells finish and no new one starts): the last round is checkpointed,
the stop record says who asked, the process exits 0, and ``--resume`` continues it as after
Ctrl-C. ``--now`` also sends the process SIGINT, which stops the stages and ends the round at
once, as Ctrl-C does. On a compare, ``--now`` interrupts each running cell's run instead (a cell
on another host stops after its round); the compare starts no new cell, writes its report and
exits 0, and ``--resume`` continues the interrupted cells from their last checkpointed round.
``--wait`` returns once the process has stopped.

Exit status: 0 asked (and with ``--wait``, stopped); 1 nothing is running there (nothing is
changed); 2 not a run, campaign or compare directory.
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import socket
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="a running run, campaign or compare directory")
    parser.add_argument(
        "--now", action="store_true", help="end the round at once (stages stopped), as Ctrl-C does"
    )
    parser.add_argument("--wait", action="store_true", help="return once the process has stopped")
    parser.add_argument(
        "--timeout", type=float, default=600.0, metavar="S", help="--wait: give up after S seconds (600)"
    )


def run(args: argparse.Namespace) -> int:
    from testbed.console.control import request_stop, running_info
    from testbed.console.folders import identify

    folder = identify(args.dir)
    info = running_info(folder.path)
    if info is None:
        print(f"testbed stop: {folder.path} is a {folder.kind} that is not running; nothing to stop")
        return 1
    here = socket.gethostname()
    by = f"{getpass.getuser()}@{here} (pid {os.getpid()})"
    request_stop(folder.path, args.now, by)
    where = f"pid {info['pid']} on {info.get('host')}"
    if args.now and folder.kind == "compare":
        _interrupt_cells(folder.path, here, by)
        print(f"testbed stop: interrupted the compare's running cells ({where}); --resume continues them")
    elif args.now:
        if info.get("host") != here:
            print(
                f"testbed stop: {folder.path} runs on {info.get('host')}; asked it to stop after this round"
            )
        else:
            os.kill(int(info["pid"]), signal.SIGINT)
            print(f"testbed stop: interrupted the {folder.kind} ({where}); --resume continues it")
    else:
        unit = {"run": "round", "campaign": "point", "compare": "running cells"}[folder.kind]
        print(f"testbed stop: asked the {folder.kind} ({where}) to stop after its current {unit}")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while running_info(folder.path) is not None:
        if time.monotonic() > deadline:
            print(f"testbed stop: still running after {args.timeout:g} s")
            return 1
        time.sleep(0.2)
    print(f"testbed stop: the {folder.kind} has stopped")
    return 0


def _interrupt_cells(compare_dir: Path, here: str, by: str) -> None:
    """SIGINT to each running cell's run on this host; a cell elsewhere is asked to stop after its
    round (its worker's host is not this one)."""
    from testbed.console.control import RUNNING, request_stop, running_info

    for marker in sorted(compare_dir.glob(f"cells/*/*/{RUNNING}")):
        cell_info = running_info(marker.parent)
        if cell_info is None:
            continue
        if cell_info.get("host") == here:
            os.kill(int(cell_info["pid"]), signal.SIGINT)
        else:
            request_stop(marker.parent, now=False, by=by)
