"""`testbed stage status|home|move X Y|stop --config FILE [--stage NAME]`: jog stages by hand.

``move X Y`` takes region coordinates in metres (``--frame stage`` for the stage's own frame)
and goes through the same safety checks as an experiment: travel, speed, and the minimum
spacing to every other antenna. ``status`` and ``stop`` never home; ``home`` and ``move`` home
the stages whose ``home_on_start`` is set, as opening a GRBL port resets the board anyway.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["status", "home", "move", "stop"], help="what to do")
    parser.add_argument("coords", nargs="*", type=float, metavar="X Y", help="move: target in metres")
    parser.add_argument("--config", required=True, metavar="FILE", help="YAML config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="A.B.C=VALUE",
        help="override one config field (repeatable); the value is parsed as YAML",
    )  # fmt: skip
    parser.add_argument("--stage", metavar="NAME", help="one stage (default: all; move needs one)")
    parser.add_argument(
        "--frame", choices=["region", "stage"], default="region", help="move: coordinates' frame"
    )
    parser.add_argument(
        "--speed", type=float, metavar="M_S", help="move: speed in m/s (default: max_speed_m_s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, metavar="S", help="longest wait for a move/home"
    )


def run(args: argparse.Namespace) -> int:
    from drivers.errors import ConfigError, StageNotHomed
    from drivers.positioner import wait_all
    from testbed.config import load_config
    from testbed.stages import open_stages

    config = load_config(args.config, args.overrides)
    names = list(config.lab.stages)
    if args.stage is not None and args.stage not in names:
        raise ConfigError(f"--stage {args.stage!r}: no such stage; configured stages are {names}")
    if args.action == "move":
        if len(args.coords) != 2:
            raise ConfigError(f"move needs X Y in metres (got {len(args.coords)} numbers)")
        if args.stage is None and len(names) > 1:
            raise ConfigError(f"move needs --stage NAME with several stages ({names})")
    elif args.coords:
        raise ConfigError(f"{args.action} takes no coordinates (got {args.coords})")
    selected = [args.stage] if args.stage else names
    # move: home per home_on_start (a GRBL board forgets its position when the port opens);
    # home: open without homing, then home the selected stages; status/stop: never home.
    stages = open_stages(config, home=None if args.action == "move" else False)
    try:
        if args.action == "home":
            wait_all([stages.stages[n].home() for n in selected], args.timeout)
        elif args.action == "move":
            name = selected[0]
            xy = (args.coords[0], args.coords[1])
            if args.frame == "stage":
                xy = stages.to_region(name, xy)
            wait_all(stages.move_all({name: xy}, args.speed), args.timeout)
        elif args.action == "stop":
            for n in selected:
                stages.stages[n].stop()
        report = []
        for n in selected:
            stage = stages.stages[n]
            section = config.lab.stages[n]
            try:
                xy: tuple[float, float] | None = stage.position()
                unknown = ""
            except StageNotHomed as exc:
                # the position is not established: say so, with what to do, instead of a raw count
                xy, unknown = None, str(exc)
            report.append({
                "stage": n, "backend": section.backend, "port": section.port or "(emulator)",
                "state": stage.state.value, "homed": bool(getattr(stage, "homed", True)),
                "stage_m": None if xy is None else [round(v, 6) for v in xy],
                "region_m": None if xy is None else [round(v, 6) for v in stages.to_region(n, xy)],
                "position_unknown": unknown or None,
            })  # fmt: skip
        if args.json:
            for row in report:
                print(json.dumps(row))
        else:
            for row in report:
                head = f"{row['stage']:<8} {row['backend']:<5} {row['state']:<12} homed={str(row['homed']).lower():<5} "
                if row["stage_m"] is None:
                    print(f"{head}position unknown  port={row['port']}\n         {row['position_unknown']}")
                    continue
                sx, sy = row["stage_m"]
                rx, ry = row["region_m"]
                print(
                    f"{head}stage=({sx:.4f}, {sy:.4f}) m  region=({rx:.4f}, {ry:.4f}) m  port={row['port']}"
                )
    finally:
        stages.close()
    return 0
