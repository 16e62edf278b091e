"""The ``testbed`` command.

Each subcommand lives in ``testbed/commands/<name>.py``, which defines
``add_arguments(parser)`` and ``run(args) -> int``. Those modules keep heavy imports (torch,
cvxpy, uhd) inside ``run`` so ``testbed --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from drivers.errors import TestbedError

COMMANDS: dict[str, str] = {
    "run": "run an experiment: plan, move antennas, federated rounds with OTA aggregation",
    "measure": "run a channel measurement campaign over a grid of antenna positions",
    "plan": "solve the allocation problem and compare it with every baseline",
    "compare": "full FL runs per scheme over a grid of configs and seeds, and their report",
    "coordinator": "start the FL coordinator (parameter server) of a lab run",
    "node": "start one FL edge node (client) of a lab run",
    "check": "validate a config and probe each configured device",
    "stage": "jog the antenna stages by hand: status, home, move X Y, stop, accept-position",
    "keys": "make CurveZMQ key pairs for the coordinator, nodes and radio servers",
    "report": "write the plots and report.md of a run directory",
    "watch": "follow a run, campaign or compare live in the terminal (--once: one frame)",
    "serve": "the console in a browser: live pages of the runs, campaigns and compares under DIR",
    "stop": "ask a running run, campaign or compare to stop after its round (--now: at once)",
}

log = logging.getLogger("testbed")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "t": record.created,
                "level": record.levelname,
                "logger": record.name,
                "msg": record.getMessage(),
            }
        )


def setup_logging(quiet: bool = False, as_json: bool = False, verbose: bool = False) -> None:
    """One line per event at INFO on stderr (JSON lines with --json)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter() if as_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.setLevel(level)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(min(level, logging.INFO))  # a run's own log file keeps INFO even under --quiet


def _common_options(in_subcommand: bool) -> argparse.ArgumentParser:
    """-q/--json/-v, accepted before or after the subcommand. The subcommand's copies default to
    absent, so ``testbed --json stage ...`` keeps the --json given before the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    absent = {"default": argparse.SUPPRESS} if in_subcommand else {}
    common.add_argument(
        "-q", "--quiet", action="store_true", help="warnings and errors only; no progress bars", **absent
    )
    common.add_argument("--json", action="store_true", help="machine-readable output (JSON lines)", **absent)
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging", **absent)
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="testbed",
        description="Movable-antenna, over-the-air federated LoRA fine-tuning testbed controller.",
        parents=[_common_options(in_subcommand=False)],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[_common_options(True)])
        _command_module(name).add_arguments(p)
    return parser


def _command_module(name: str):  # noqa: ANN202 - a module
    return importlib.import_module(f"testbed.commands.{name}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.quiet, args.json, args.verbose)
    try:
        return int(_command_module(args.command).run(args) or 0)
    except TestbedError as exc:
        if args.json:
            print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        else:
            print(f"testbed {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"testbed {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
