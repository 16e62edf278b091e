"""A radio server subprocess for tests, on ``drivers.usrp_server.spawn_server``."""

from __future__ import annotations

import sys

from drivers.usrp_server import PACKAGE_ROOT, SYSTEM_PYTHON, spawn_server, stop_server

REPO = PACKAGE_ROOT
__all__ = ["REPO", "SYSTEM_PYTHON", "ServerProcess"]


class ServerProcess:
    """``python -m drivers.usrp_server ARGS``; ``endpoint`` is where it bound."""

    def __init__(self, args: list[str], python: str = sys.executable, ready_timeout_s: float = 20.0) -> None:
        self.proc, self.endpoint = spawn_server(args, python=python, ready_timeout_s=ready_timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM, as a lab operator would; returns the exit status."""
        return stop_server(self.proc)
