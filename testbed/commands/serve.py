"""`testbed serve [DIR] [--host H] [--port P]`: the console in a browser.

An index of the runs, campaigns and compares under DIR (default runs/), and a live page each.
Loopback by default; any other ``--host`` needs the token printed at start (as Jupyter does).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir", nargs="?", type=Path, default=Path("runs"), help="the folder of runs to show (default: runs/)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; others need the token)"
    )
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    parser.add_argument(
        "--token", help="the token a non-loopback bind asks for (default: a fresh random one, printed)"
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from testbed.console.folders import ConsoleError
    from testbed.console.server import Catalog, bind_socket, is_loopback, make_app

    if not 0 <= args.port <= 65535:
        raise ConsoleError(f"--port {args.port}: a port is 0 to 65535 (0: any free port)")
    if args.token is not None and len(args.token) < 16:
        raise ConsoleError("--token: give at least 16 characters (or leave it out for a random one)")
    Catalog(args.dir).check()
    token = None if is_loopback(args.host) else (args.token or secrets.token_urlsafe(24))
    sock = bind_socket(args.host, args.port)
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    if ":" in shown:
        shown = f"[{shown.strip('[]')}]"
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"testbed serve: {args.dir} at {url}", flush=True)
    if token:
        print("testbed serve: not loopback: every request needs that token (403 without it)", flush=True)
    config = uvicorn.Config(
        make_app(args.dir, token=token, port=port),
        log_level="warning" if not args.verbose else "info",
        access_log=args.verbose,
        timeout_graceful_shutdown=1,
        lifespan="off",
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    print("testbed serve: stopped", file=sys.stderr)
    return 0
