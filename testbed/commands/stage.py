"""`testbed stage status|home|move X Y|stop|accept-position --config FILE [--stage NAME]`: jog
the stages by hand.

``move X Y`` takes region coordinates in metres (``--frame stage`` for the stage's own frame)
and goes through the same safety checks as an experiment: travel, speed, and the minimum
spacing to every other antenna, all checked before anything is homed or moved. Nothing homes
unasked: ``status``, ``stop`` and ``accept-position`` never home; ``home`` homes the selected
stages; ``move`` homes only the stages whose position is unknown (the clearance check needs every
antenna's position), after saying so. The driver holds DTR low as the port opens, so an Arduino
running GRBL keeps its position between commands where its USB adapter allows; a controller that
restarted anyway is named. ``accept-position`` takes a stage without homing switches at its
count on the operator's word (``--note`` says what was checked), kept for later commands by
``testbed.accepted_positions``.

While a run or campaign under ``run.output_dir`` is running with these stages, the stages are
its: ``status`` shows their last reported states from its ``events.jsonl`` and names the run;
the other actions are refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ACTIONS = ["status", "home", "move", "stop", "accept-position"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="what to do")
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
    parser.add_argument(
        "--note",
        metavar="TEXT",
        help="accept-position: what you checked (e.g. 'carriage at the origin mark')",
    )


def _say(text: str) -> None:
    # progress goes to stderr, so --json keeps stdout to the rows
    print(text, file=sys.stderr, flush=True)


def _check_args(args: argparse.Namespace, names: list[str]) -> None:
    from drivers.errors import ConfigError

    if args.stage is not None and args.stage not in names:
        raise ConfigError(f"--stage {args.stage!r}: no such stage; configured stages are {names}")
    if args.action == "move":
        if len(args.coords) != 2:
            raise ConfigError(f"move needs X Y in metres (got {len(args.coords)} numbers)")
        if args.stage is None and len(names) > 1:
            raise ConfigError(f"move needs --stage NAME with several stages ({names})")
    elif args.coords:
        raise ConfigError(f"{args.action} takes no coordinates (got {args.coords})")
    if args.action == "accept-position":
        if args.stage is None:
            raise ConfigError("accept-position needs --stage NAME (one stage, whose carriage you checked)")
        if not (args.note or "").strip():
            raise ConfigError(
                "accept-position needs --note TEXT: what you checked about the carriage's place"
            )
    elif args.note is not None:
        raise ConfigError(f"--note is for accept-position, not {args.action}")


def holding_runs(config: Any) -> list[tuple[Path, dict[str, Any]]]:
    """The running runs and campaigns under ``run.output_dir`` that hold any of these stages:
    the same stage names (an emulator lives in its run's process) or the same ports."""
    import yaml

    from testbed.console.control import running_info

    out = Path(config.run.output_dir)
    if not out.is_dir():
        return []
    ours = config.lab.stages
    ports = {s.port for s in ours.values() if s.port}
    found = []
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        info = running_info(folder)
        if info is None or info.get("kind") not in ("run", "campaign"):
            continue
        try:
            theirs = (yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {})["lab"][
                "stages"
            ]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            theirs = None  # cannot tell: assume it holds them
        if theirs is None or set(theirs) & set(ours) or {s.get("port") for s in theirs.values()} & ports:
            found.append((folder, info))
    return found


def _held_status(
    args: argparse.Namespace, held: list[tuple[Path, dict[str, Any]]], selected: list[str]
) -> int:
    """``status`` while a run holds the stages: its stages' last reports, not a new opening."""
    from testbed.console.view import ConsoleError, open_view

    for folder, info in held:
        try:
            rows: dict[str, dict[str, Any]] = dict(getattr(open_view(folder), "stages", {}) or {})
        except (ConsoleError, OSError, ValueError) as exc:
            rows = {}
            _say(f"{folder}: its events could not be read ({exc})")
        head = (
            f"the stages are held by the running {info.get('kind', 'run')} {folder} (pid {info.get('pid')}); "
            f"their last reported states (follow it live: testbed watch {folder}):"
        )
        if args.json:
            print(json.dumps({"held_by": str(folder), "kind": info.get("kind"), "pid": info.get("pid"),
                              "watch": f"testbed watch {folder}"}))  # fmt: skip
        else:
            print(head)
        for name in selected:
            row = rows.get(name)
            if args.json:
                print(json.dumps({"stage": name, "held_by": str(folder), **(row or {"state": None})}))
                continue
            if row is None:
                print(f"{name:<8} no state reported yet")
                continue
            pos = row.get("position_m")
            where = "position unknown" if not pos or None in pos else f"region=({pos[0]:.4f}, {pos[1]:.4f}) m"
            alarm = f"  alarm {row['alarm']}" if row.get("alarm") is not None else ""
            print(f"{name:<8} {row.get('state') or '?':<12} {where}{alarm}")
    return 0


def _switchless(stage: Any) -> bool:
    """A GRBL stage without homing switches ($22=0): only the operator's word places it."""
    return isinstance(getattr(stage, "settings", None), dict) and not stage.settings.get(22)


def _next_step(args: argparse.Namespace, name: str, stage: Any, known: bool) -> str | None:
    """What the person should do next with a stage that cannot move now."""
    from drivers.positioner import StageState

    config = f"--config {args.config}"
    if not known:
        if _switchless(stage):
            return (
                f"no homing switches: check where the carriage is, then `testbed stage accept-position "
                f"{config} --stage {name} --note 'what you checked'`"
            )
        return f"`testbed stage home {config} --stage {name}` (checked against the other antennas first)"
    if stage.state == StageState.ALARM:
        return f"`testbed stage home {config} --stage {name}` clears the alarm by homing"
    return None


def _row(args: argparse.Namespace, stages: Any, config: Any, n: str) -> dict[str, Any]:
    from drivers.errors import StageError, StageNotHomed
    from drivers.grbl_wire import describe_alarm

    stage = stages.stages[n]
    section = config.lab.stages[n]
    xy: tuple[float, float] | None = None
    unknown = ""
    try:
        xy = stage.position()
    except StageNotHomed as exc:
        # the position is not established: say so, with what to do, instead of a raw count
        unknown = str(exc)
    except StageError as exc:
        unknown = str(exc)
    code = getattr(stage, "alarm_code", None)
    return {
        "stage": n, "backend": section.backend, "port": section.port or "(emulator)",
        "state": stage.state.value, "homed": bool(getattr(stage, "homed", True)),
        "alarm": describe_alarm(code) if code else None,
        "reset_at_open": bool(getattr(stage, "reset_at_open", False)),
        "basis": getattr(stage, "position_basis", None),
        "stage_m": None if xy is None else [round(v, 6) for v in xy],
        "region_m": None if xy is None else [round(v, 6) for v in stages.to_region(n, xy)],
        "position_unknown": unknown or None,
        "next": _next_step(args, n, stage, xy is not None),
    }  # fmt: skip


def _print_rows(args: argparse.Namespace, report: list[dict[str, Any]]) -> None:
    for row in report:
        if args.json:
            print(json.dumps(row))
            continue
        head = (
            f"{row['stage']:<8} {row['backend']:<5} {row['state']:<12} homed={str(row['homed']).lower():<5} "
        )
        if row["stage_m"] is None:
            print(f"{head}position unknown  port={row['port']}\n         {row['position_unknown']}")
        else:
            sx, sy = row["stage_m"]
            rx, ry = row["region_m"]
            print(f"{head}stage=({sx:.4f}, {sy:.4f}) m  region=({rx:.4f}, {ry:.4f}) m  port={row['port']}")
        if row["alarm"]:
            print(f"         alarm: {row['alarm']}")
        if row["next"]:
            print(f"         next: {row['next']}")


def _move(args: argparse.Namespace, stages: Any, config: Any, name: str) -> None:
    """Check the move (travel, speed, the clearance from where the antennas are, or will be once
    homed) before homing anything; home only the stages whose position is unknown; move."""
    from drivers.errors import StageError, StageNotHomed
    from drivers.positioner import wait_all
    from testbed.stages import home_stages

    xy = (args.coords[0], args.coords[1])
    if args.frame == "stage":
        xy = stages.to_region(name, xy)
    start: dict[str, tuple[float, float]] = {}
    unknown: list[str] = []
    for n in stages.names:
        try:
            start[n] = stages.positions([n])[n]
        except StageNotHomed:
            unknown.append(n)
            start[n] = stages.origins_m[n]  # where homing will leave it
    switchless = [n for n in unknown if _switchless(stages.stages[n])]
    if switchless:
        raise StageNotHomed(
            f"{', '.join(switchless)}: position unknown and no homing switches; the move needs every "
            f"antenna's position. {_next_step(args, switchless[0], stages.stages[switchless[0]], False)}"
        )
    stages.route({name: xy}, args.speed, start=start)  # raises, naming the limit; nothing has moved
    if unknown:
        _say(
            f"{', '.join(unknown)}: position unknown (see above); the move's clearance check needs every "
            "antenna's position, so they are homed first"
        )
        home_stages(stages, unknown, config.lab, _say)
    _say(f"moving {name} to region ({xy[0]:.4f}, {xy[1]:.4f}) m ...")
    statuses = stages.move_all({name: xy}, args.speed)
    try:
        wait_all(statuses, args.timeout)
    except StageError:
        stages.stop_all()
        raise


def run(args: argparse.Namespace) -> int:
    from drivers.errors import StageError
    from testbed import accepted_positions
    from testbed.config import load_config
    from testbed.stages import home_stages, open_stages, stage_limits

    config = load_config(args.config, args.overrides)
    names = list(config.lab.stages)
    _check_args(args, names)
    selected = [args.stage] if args.stage else names
    held = holding_runs(config)
    if held:
        if args.action == "status":
            return _held_status(args, held, selected)
        folder, info = held[0]
        raise StageError(
            f"the stages are held by the running {info.get('kind', 'run')} {folder} (pid {info.get('pid')}); "
            f"`testbed watch {folder}` follows it, `testbed stop {folder}` ends it after its round"
        )
    if args.action == "move":
        # travel and speed need no device: refuse before opening (and so before any homing)
        section = config.lab.stages[selected[0]]
        xy = tuple(args.coords)
        ox, oy = section.origin_m
        stage_xy = xy if args.frame == "stage" else (xy[0] - ox, xy[1] - oy)
        limits = stage_limits(section)
        speed = limits.max_speed_m_s if args.speed is None else args.speed
        limits.check_move(stage_xy, speed, f"{selected[0]} (target {xy})")
    stages = open_stages(config, home=False, say=_say)
    try:
        if args.action == "home":
            home_stages(stages, selected, config.lab, _say)
        elif args.action == "move":
            _move(args, stages, config, selected[0])
        elif args.action == "stop":
            for n in selected:
                stages.stages[n].stop()
        elif args.action == "accept-position":
            stage = stages.stages[selected[0]]
            if not hasattr(stage, "accept_position"):
                raise StageError(
                    f"{selected[0]}: a {config.lab.stages[selected[0]].backend} stage establishes its "
                    "position by homing: testbed stage home"
                )
            stage.accept_position(args.note)
            _say(accepted_positions.record(selected[0], stage, args.note.strip()))
        _print_rows(args, [_row(args, stages, config, n) for n in selected])
    finally:
        stages.close()
    return 0
