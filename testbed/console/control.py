"""Who is running a directory, and how ``testbed stop`` asks it to stop.

A run, campaign or compare writes ``running.json`` (pid, host, start time) into its directory
while it works and removes it when it ends. ``testbed stop`` writes ``stop_request.json``; the
loop reads it at the end of each round (point, cell), checkpoints, records why, and exits 0.
``--now`` also sends the process SIGINT, which ends the round at once as Ctrl-C does.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

RUNNING = "running.json"
STOP_REQUEST = "stop_request.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_info(path: str | Path) -> dict[str, Any] | None:
    """The marker of the process working in ``path``, or None if nothing runs there now."""
    try:
        info = json.loads((Path(path) / RUNNING).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return None
    if info.get("host") == socket.gethostname() and not _pid_alive(info["pid"]):
        return None  # a crash left the marker behind
    return info


def is_running(path: str | Path) -> bool:
    return running_info(path) is not None


class RunningMarker:
    """``with RunningMarker(dir, "run"):`` marks the directory as worked on by this process.

    Entering clears a stop request left from an earlier segment (a resumed run starts afresh).
    """

    def __init__(self, path: str | Path, kind: str) -> None:
        self.path = Path(path)
        self.kind = kind

    def __enter__(self) -> RunningMarker:
        (self.path / STOP_REQUEST).unlink(missing_ok=True)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "kind": self.kind, "started": time.time()}
        tmp = self.path / (RUNNING + ".tmp")
        tmp.write_text(json.dumps(info), encoding="utf-8")
        os.replace(tmp, self.path / RUNNING)
        return self

    def __exit__(self, *exc: object) -> None:
        (self.path / RUNNING).unlink(missing_ok=True)
        (self.path / STOP_REQUEST).unlink(missing_ok=True)


def request_stop(path: str | Path, now: bool, by: str) -> None:
    tmp = Path(path) / (STOP_REQUEST + ".tmp")
    tmp.write_text(json.dumps({"now": now, "time": time.time(), "by": by}), encoding="utf-8")
    os.replace(tmp, Path(path) / STOP_REQUEST)


def stop_requested(path: str | Path) -> dict[str, Any] | None:
    """The pending stop request, or None (read at the end of every round, so it must be cheap)."""
    try:
        request = json.loads((Path(path) / STOP_REQUEST).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return request if isinstance(request, dict) else None
