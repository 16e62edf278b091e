"""`testbed node`: start one FL edge node (client) of a lab run."""

from __future__ import annotations

import argparse

from testbed.commands import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--node-id", type=int, required=True, help="this node's id, 0..lab.clients.count-1")
    parser.add_argument(
        "--connect", default="", help="coordinator address (default fl.transport.connect, else bind)"
    )
    parser.add_argument("--insecure", action="store_true", help="no CURVE (loopback addresses only)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--apply-clock",
        action="store_true",
        help="apply the planned clock (NVML GPU lock or cpufreq) where permitted",
    )
    parser.add_argument(
        "--rejoin-timeout-s",
        type=float,
        default=None,
        help="after the coordinator misses heartbeat_s x heartbeat_misses, how long to keep saying HELLO "
        "before exiting (0: exit at once; default fl.transport.join_timeout_s)",
    )
    parser.add_argument("--radio-time-offset-s", type=float, default=0.0, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    import torch

    from fl.node import HostClock, Node
    from testbed.config import load_config

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    overrides = list(args.overrides) + (["fl.transport.insecure=true"] if args.insecure else [])
    config = load_config(args.config, overrides)
    connect = args.connect or config.fl.transport.connect or config.fl.transport.bind
    node = Node(
        config,
        args.node_id,
        connect,
        time_source=HostClock(args.radio_time_offset_s),
        apply_clocks=args.apply_clock,
        rejoin_timeout_s=args.rejoin_timeout_s,
    )
    return node.run()
