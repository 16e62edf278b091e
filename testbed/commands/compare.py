"""`testbed compare CONFIG`: full FL runs per scheme over a grid and seeds, and compare.md."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from testbed.commands import add_config_arguments, run_with_progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--schemes",
        default=None,
        metavar="S1,S2",
        help="schemes to compare (default ours,fpa,non_ma,digital); also random_placement",
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=v1,v2",
        help="a config field and its values (repeatable; the cells cover every combination)",
    )
    parser.add_argument(
        "--seeds", type=int, default=1, help="seeds per grid point: run.seed, run.seed+1, ..."
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="the compare directory (default under run.output_dir)"
    )
    parser.add_argument(
        "--resume", type=Path, default=None, metavar="DIR", help="finish the unfinished cells of DIR"
    )
    parser.add_argument("--engine", choices=("local", "dask"), default="local", help="where the cells run")
    parser.add_argument(
        "--scheduler", default=None, metavar="ADDRESS", help="--engine dask: the scheduler's address"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="--engine local: cells at once (one core each)"
    )


def run(args: argparse.Namespace) -> int:
    from drivers.errors import ConfigError
    from testbed.compare import build_spec, open_compare_dir, run_compare

    if args.workers < 1:
        raise ConfigError(f"--workers: must be >= 1 (got {args.workers})")
    if args.engine == "dask" and not args.scheduler:
        raise ConfigError("--engine dask: give --scheduler ADDRESS (e.g. tcp://10.0.0.5:8786)")
    if args.resume is not None and args.out is not None and args.out != args.resume:
        raise ConfigError("--out and --resume name different directories; give one")
    # Every option is checked here, before any cell runs or anything is written.
    spec = build_spec(args.config, args.overrides, args.schemes, args.grid, args.seeds)
    compare_dir = open_compare_dir(spec, args.out, args.resume)

    def work(progress):  # noqa: ANN001, ANN202
        return run_compare(spec, compare_dir, args.engine, args.workers, args.scheduler, progress)

    if args.quiet or args.json or not sys.stderr.isatty():
        report, ran = work(None)
    else:
        report, ran = run_with_progress("compare", "cells", work)
    if args.json:
        print(json.dumps({"compare_dir": str(compare_dir), "report": str(report), "ran": ran}))
    elif not args.quiet:
        print(f"compare directory: {compare_dir}\n  cells run now: {len(ran)}\nreport: {report}")
    return 0
