"""`testbed run CONFIG`: an experiment (see testbed/experiment.py); `--resume RUN_DIR` continues one."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from testbed.commands import add_config_arguments, run_with_progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, required=False)
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a crashed or interrupted run from its last complete round (uses its config.yaml)",
    )
    parser.add_argument(
        "--scheme",
        default=None,
        metavar="SCHEME",
        help="whose plan drives every round: ours (default), fpa, random_placement, non_ma, digital "
        "(error-free FedAvg); a resumed run keeps its own",
    )
    parser.add_argument(
        "--remote-nodes",
        action="store_true",
        help="start no local nodes: wait on fl.transport.bind for `testbed node` on other hosts",
    )


def run(args: argparse.Namespace) -> int:
    from drivers.errors import ConfigError
    from testbed.config import load_config
    from testbed.experiment import run_experiment
    from testbed.schemes import scheme_strategy

    if args.scheme is not None:
        scheme_strategy(args.scheme)  # an unknown scheme exits 2 before anything runs
    if args.resume is not None:
        if args.config is not None:
            raise ConfigError("--resume takes its config from RUN_DIR/config.yaml; give no CONFIG")
        config = load_config(args.resume / "config.yaml", args.overrides)
    elif args.config is None:
        raise ConfigError("give a CONFIG file (e.g. configs/dryrun.yaml) or --resume RUN_DIR")
    else:
        config = load_config(args.config, args.overrides)

    def work(progress: Callable[[int, int], None] | None) -> tuple[Path, dict]:
        return run_experiment(
            config,
            resume_dir=args.resume,
            remote_nodes=args.remote_nodes,
            progress=progress,
            scheme=args.scheme,
        )

    if args.quiet or args.json or not sys.stderr.isatty():
        run_dir, summary = work(None)
    else:
        run_dir, summary = run_with_progress("run", "rounds", work)
    if args.json:
        print(json.dumps({"run_dir": str(run_dir), **summary}, default=str))
    elif not args.quiet:
        from testbed.report import format_breakdown

        print(f"run directory: {run_dir}")
        for key, value in summary.items():
            if key == "median_time_breakdown_s" and isinstance(value, dict):
                print(f"  median round time: {format_breakdown(value)}")
            else:
                print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
        print(f"report: {run_dir / 'report' / 'report.md'}")
    return 0
