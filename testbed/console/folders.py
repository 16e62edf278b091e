"""What kind of directory the console was given (a run, a campaign or a compare) and its status."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from drivers.errors import TestbedError
from testbed.console.control import is_running

Kind = Literal["run", "campaign", "compare"]
Status = Literal["running", "done", "failed", "interrupted", "stopped", "crashed"]

COMPARE_SPEC = "compare.json"
EVENTS = "events.jsonl"
CONFIG = "config.yaml"


class ConsoleError(TestbedError):
    """The console was pointed at something it cannot show (the message says what is missing)."""


@dataclass(frozen=True)
class Folder:
    path: Path
    kind: Kind


def _first_start(events: Path) -> dict | None:
    """The first start document (read from the head of the file only)."""
    try:
        with events.open("rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    return None
                try:
                    doc = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                if isinstance(doc, dict) and doc.get("doc") == "start":
                    return doc
    except FileNotFoundError:
        return None
    return None


def identify(path: str | Path) -> Folder:
    """The folder's kind; ``ConsoleError`` naming what it lacks if it is none of the three."""
    path = Path(path)
    if not path.is_dir():
        raise ConsoleError(f"{path}: no such directory; give a run, campaign or compare directory")
    if (path / COMPARE_SPEC).is_file():
        return Folder(path, "compare")
    if not (path / CONFIG).is_file():
        raise ConsoleError(
            f"{path}: not a run, a campaign or a compare: it has no {CONFIG} (every run and campaign "
            f"writes one) and no {COMPARE_SPEC} (a compare's spec)"
        )
    start = _first_start(path / EVENTS)
    if start is not None and start.get("kind") == "campaign":
        return Folder(path, "campaign")
    return Folder(path, "run")


def status_of(docs_tail_status: str | None, path: Path) -> Status:
    """The status from the last stop document after the last start (None: no stop yet)."""
    if docs_tail_status is None:
        return "running" if is_running(path) else "crashed"
    return {
        "success": "done",
        "completed": "done",
        "partial": "stopped",
        "stopped": "stopped",
        "interrupted": "interrupted",
    }.get(docs_tail_status, "failed")  # type: ignore[return-value]
