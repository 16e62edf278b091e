"""`testbed coordinator`: start the FL coordinator (parameter server) of a lab run.

The nodes are started separately (`testbed node`), on this host or others. The air is the
sim's symbol-level AirLink (``fl.airlink: symbol``), or with ``fl.airlink: radio`` the radio
AirLink of ``testbed.air.radio_airlink`` with every radio owned by this host (the nodes relay their
bursts here, as in a dry run). The plan is round robin; ``testbed run`` uses the allocation plan.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from testbed.commands import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="run folder (default run.output_dir/<name>-<time>)"
    )
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue RUN_DIR after its last complete round",
    )
    parser.add_argument("--insecure", action="store_true", help="no CURVE (loopback addresses only)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from fl.coordinator import Coordinator
    from fl.runner import build_symbol_air, round_robin_planner
    from testbed.config import load_config, to_yaml

    overrides = list(args.overrides) + (["fl.transport.insecure=true"] if args.insecure else [])
    config = load_config(args.config, overrides)
    run_dir = (
        args.resume
        or args.run_dir
        or (config.run.output_dir / f"{config.run.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(config), encoding="utf-8")
    rng = np.random.default_rng([config.run.seed, 3])
    air = None
    if config.fl.aggregation == "ota" and config.fl.airlink == "radio":
        from testbed.air.radio_airlink import open_radio_airlink

        air = open_radio_airlink(config)  # this host owns the receiver and every client radio
    elif config.fl.aggregation == "ota":
        air = build_symbol_air(config, rng)
    try:
        coordinator = Coordinator(
            config, run_dir, round_robin_planner(config), air, rng, resume=args.resume is not None
        )
        endpoint = coordinator.bind()
        print(f"coordinator listening on {endpoint}; run folder {run_dir}", flush=True)
        metrics = coordinator.run()
    finally:
        if air is not None and hasattr(air, "close"):
            air.close()
    print(json.dumps({"rounds": len(metrics), "val_loss": [m["val_loss"] for m in metrics]}))
    return 0
