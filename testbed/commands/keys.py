"""`testbed keys`: make the CurveZMQ key pairs of a lab (layout in ``fl/keys.py``)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("keys_dir", help="folder to write the keys into (fl.transport.keys_dir)")
    parser.add_argument("--nodes", type=int, required=True, help="number of FL nodes (lab.clients.count)")
    parser.add_argument("--radios", type=int, default=0, help="number of radio servers")
    parser.add_argument("--overwrite", action="store_true", help="replace existing key pairs")


def run(args: argparse.Namespace) -> int:
    from drivers.errors import ConfigError
    from fl.keys import make_lab_keys

    if args.nodes < 1 or args.radios < 0:
        raise ConfigError(f"--nodes must be >= 1 and --radios >= 0 (got {args.nodes}, {args.radios})")
    layout = make_lab_keys(args.keys_dir, args.nodes, args.radios, overwrite=args.overwrite)
    print(
        f"keys in {layout.root}: coordinator, node-0..node-{args.nodes - 1}"
        + (f", radio-0..radio-{args.radios - 1}" if args.radios else "")
        + f"; allow lists in {layout.root / 'allow'}"
    )
    return 0
