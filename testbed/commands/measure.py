"""`testbed measure CONFIG [--set A.B=V] [--resume RUN_DIR]`: a channel measurement campaign.

Rasters the receive antennas over the region, sounds every client at each grid point and writes
SigMF, a tidy table, a .mat export, the gain map and the report into the run directory (see
``testbed.campaign``). ``--resume RUN_DIR`` continues a campaign that a crash, ``kill -9`` or
Ctrl-C cut short, skipping the points already measured. Stages are stopped and radios closed on
every exit. Exit codes: 0 done, 2 bad config or device error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testbed.commands import add_config_arguments, run_with_progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, required=False)
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue the campaign in RUN_DIR (uses its config.yaml); points already measured are skipped",
    )


@contextmanager
def _sigterm_as_interrupt() -> Any:
    """SIGTERM ends the campaign like Ctrl-C does: stages stopped, records closed."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    from drivers.errors import ConfigError
    from testbed.campaign import run_campaign
    from testbed.config import load_config

    if args.config is None and args.resume is None:
        raise ConfigError("testbed measure: give a CONFIG file, or --resume RUN_DIR")
    if args.resume is not None and args.overrides and args.config is None:
        raise ConfigError("testbed measure: --set needs CONFIG; a resumed campaign keeps its config.yaml")
    config = load_config(args.config, args.overrides) if args.config is not None else None
    show_bar = not (args.quiet or args.json) and sys.stderr.isatty()
    started: list[Path] = []

    def on_start(run_dir: Path) -> None:
        # Said first, so an operator knows where the campaign is writing before it ends.
        started.append(run_dir)
        if not (args.quiet or args.json):
            print(f"run directory: {run_dir}", flush=True)

    try:
        with _sigterm_as_interrupt():
            if show_bar:
                result = run_with_progress(
                    "measure",
                    "points",
                    lambda progress: run_campaign(config, args.resume, progress=progress, on_start=on_start),
                )
            else:
                result = run_campaign(config, args.resume, on_start=on_start)
    except KeyboardInterrupt:
        if started:
            print(f"testbed measure: continue with: {resume_hint(started[0])}", file=sys.stderr, flush=True)
        raise

    done = result.steps_skipped + result.steps_measured
    out = {
        "run_dir": str(result.run_dir),
        "steps_total": result.steps_total,
        "steps_measured": result.steps_measured,
        "steps_skipped": result.steps_skipped,
        "complete": done == result.steps_total,
        "table": str(result.table_path) if result.table_path else None,
        "report": str(result.report_path) if result.report_path else None,
        "wall_s": round(result.wall_s, 3),
    }
    if args.json:
        print(json.dumps(out))
    elif not args.quiet:
        print(
            f"campaign {'complete' if out['complete'] else 'incomplete'}: {done}/{result.steps_total} "
            f"points ({result.steps_skipped} resumed) in {result.wall_s:.1f} s -> {result.run_dir}"
        )
        if not out["complete"]:
            print(f"continue with: {resume_hint(result.run_dir)}")
    return 0


def resume_hint(run_dir: Path) -> str:
    return f"testbed measure --resume {shlex.quote(str(run_dir))}"
