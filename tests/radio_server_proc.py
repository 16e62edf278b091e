"""Start ``python -m drivers.usrp_server`` in a subprocess and wait for its READY line (tests only)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"


class ServerProcess:
    """A radio server subprocess; ``endpoint`` is where it bound (``--bind tcp://127.0.0.1:*``)."""

    def __init__(self, args: list[str], python: str = sys.executable, ready_timeout_s: float = 20.0) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.args = args
        self.python = python
        self.proc = subprocess.Popen(
            [python, "-m", "drivers.usrp_server", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.endpoint = self._wait_ready(ready_timeout_s)

    def _wait_ready(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.proc.stdout.readline()
            if not line:  # exited
                break
            if line.startswith("READY "):
                return line.split()[1]
        self.kill()
        err = self.proc.stderr.read() if self.proc.stderr else ""
        raise RuntimeError(f"radio server {self.args} did not start: rc={self.proc.returncode} {err}")

    def stderr_text(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM, as a lab operator would; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return int(self.proc.returncode)
