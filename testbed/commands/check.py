"""`testbed check CONFIG`: validate a config as `testbed run` does, then probe every device.

Exit codes: 0 all good, 1 a device could not be reached, 2 the config is invalid.
"""

from __future__ import annotations

import argparse
import json
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


def _probe(device: str, backend: str, probe: Callable[[], str]) -> Probe:
    """Run one device's probe; its error message becomes the row's detail."""
    from drivers.errors import TestbedError

    try:
        return Probe(device, backend, True, probe())
    except (TestbedError, OSError) as exc:
        return Probe(device, backend, False, str(exc))


def run(args: argparse.Namespace) -> int:
    from testbed.config import load_config
    from testbed.preflight import check_run_config
    from testbed.radios import probe_radio
    from testbed.stages import probe_stage

    config = load_config(args.config, args.overrides)  # ConfigError -> exit 2 in cli.main
    check_run_config(config)  # the very checks `testbed run` makes before it starts
    probes: list[Probe] = []
    if not args.no_probe:
        for name, stage in config.lab.stages.items():
            probes.append(_probe(f"stage {name}", stage.backend, lambda n=name, s=stage: probe_stage(n, s)))
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
        console.print(f"[green]config OK[/green]: {args.config}")
        if probes:
            table = Table("device", "backend", "status", "detail")
            for p in probes:
                table.add_row(
                    p.device, p.backend, "[green]ok[/green]" if p.ok else "[red]FAIL[/red]", p.detail
                )
            console.print(table)
    return 0 if ok else 1
