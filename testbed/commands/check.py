"""`testbed check CONFIG [--only stages|radios|fl]`: validate a config as `testbed run` does, then
probe every device.

Every config error is reported at once. ``--only`` (repeatable) checks and probes just those parts,
so the stages of a lab whose model or channel map is not there yet can be probed already.

Exit codes: 0 all good, 1 a device could not be reached, 2 the config is invalid.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

from testbed.commands import add_config_arguments


@dataclass
class Probe:
    device: str
    backend: str
    ok: bool
    detail: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--no-probe", action="store_true", help="only validate the config")
    parser.add_argument(
        "--only", action="append", choices=["stages", "radios", "fl"], metavar="PART",
        help="check and probe only this part: stages, radios or fl (repeatable)",
    )  # fmt: skip


def _probe(device: str, backend: str, probe: Callable[[], str]) -> Probe:
    """Run one device's probe; its error message becomes the row's detail."""
    from drivers.errors import TestbedError

    try:
        return Probe(device, backend, True, probe())
    except (TestbedError, OSError) as exc:
        return Probe(device, backend, False, str(exc))


def run(args: argparse.Namespace) -> int:
    from drivers.errors import ConfigError
    from testbed.config import load_config
    from testbed.preflight import PARTS, check_run_config
    from testbed.radios import probe_radio
    from testbed.stages import probe_stage

    config = load_config(args.config, args.overrides)  # ConfigError -> exit 2 in cli.main
    parts = tuple(args.only) if args.only else PARTS
    try:
        check_run_config(config, parts)  # the very checks `testbed run` makes before it starts
    except ConfigError:
        if not args.only and not args.json:
            print(
                "(`testbed check --only stages` probes the stages regardless; also radios, fl)",
                file=sys.stderr,
            )
        raise
    probes: list[Probe] = []
    if not args.no_probe and "stages" in parts:
        for name, stage in config.lab.stages.items():
            probes.append(_probe(f"stage {name}", stage.backend, lambda n=name, s=stage: probe_stage(n, s)))
    if not args.no_probe and "radios" in parts:
        receiver = config.lab.receiver
        probes.append(
            _probe("receiver radio", receiver.backend, lambda: probe_radio("receiver radio", receiver))
        )
        servers = config.lab.clients.radio_servers or [config.lab.clients.radio.server]
        for i, server in enumerate(servers):
            section = config.lab.clients.radio.model_copy(update={"server": server})
            label = f"client {i} radio"
            probes.append(
                _probe(label, section.backend, lambda s=section, label=label: probe_radio(label, s))
            )
            if config.lab.clients.radio.backend == "sim":
                break  # every sim client radio is the same in-process medium
    ok = all(p.ok for p in probes)
    if args.json:
        print(
            json.dumps(
                {"config": str(args.config), "valid": True, "ok": ok, "probes": [asdict(p) for p in probes]}
            )
        )
    else:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        only = f" (only {', '.join(parts)})" if args.only else ""
        console.print(f"[green]config OK[/green]{only}: {args.config}")
        if probes:
            table = Table("device", "backend", "status", "detail")
            for p in probes:
                table.add_row(
                    p.device, p.backend, "[green]ok[/green]" if p.ok else "[red]FAIL[/red]", p.detail
                )
            console.print(table)
    return 0 if ok else 1
