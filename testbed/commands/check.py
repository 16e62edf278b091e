"""`testbed check CONFIG`: validate a config, then probe every configured device.

Exit codes: 0 all good, 1 a device could not be reached, 2 the config is invalid.
"""

from __future__ import annotations

import argparse
import json
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


def probe_stage(name: str, section) -> Probe:  # noqa: ANN001 - a StageSection
    from drivers.errors import TestbedError

    try:
        from testbed.stages import probe_stage as driver_probe
    except ImportError:  # the stage drivers are not installed in this build
        driver_probe = None
    if driver_probe is None:
        return Probe(f"stage {name}", section.backend, False, "stage drivers are not available")
    try:
        return Probe(f"stage {name}", section.backend, True, driver_probe(name, section))
    except (TestbedError, OSError) as exc:
        return Probe(f"stage {name}", section.backend, False, str(exc))


def probe_radio(label: str, section) -> Probe:  # noqa: ANN001 - a RadioSection
    from drivers.errors import TestbedError

    try:
        from testbed.radios import probe_radio as driver_probe
    except ImportError:
        driver_probe = None
    if driver_probe is None:
        return Probe(label, section.backend, False, "radio drivers are not available")
    try:
        return Probe(label, section.backend, True, driver_probe(label, section))
    except (TestbedError, OSError) as exc:
        return Probe(label, section.backend, False, str(exc))


def run(args: argparse.Namespace) -> int:
    from testbed.config import load_config

    config = load_config(args.config, args.overrides)  # ConfigError -> exit 2 in cli.main
    probes: list[Probe] = []
    if not args.no_probe:
        probes += [probe_stage(name, s) for name, s in config.lab.stages.items()]
        probes.append(probe_radio("receiver radio", config.lab.receiver))
        servers = config.lab.clients.radio_servers or [config.lab.clients.radio.server]
        for i, server in enumerate(servers):
            section = config.lab.clients.radio.model_copy(update={"server": server})
            probes.append(probe_radio(f"client {i} radio", section))
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
