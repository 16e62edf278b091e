"""What the tests that start a real `testbed run configs/dryrun.yaml` share: fast settings, the
--set arguments, and waiting on a run that is going on in another process."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
DRYRUN = str(ROOT / "configs" / "dryrun.yaml")
# Small and quick: fewer optimizer starts; short local training.
FAST = [
    "allocation.position_starts=1",
    "allocation.max_outer_iterations=10",
    "fl.training.local_steps=2",
    "fl.data.num_samples=120",
]
T = TypeVar("T")


def sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, proc: Any = None) -> T:
    """Poll ``predicate`` until it gives something true (returned); fail after ``timeout_s``, or at
    once if ``proc`` (a Popen with its stderr piped) ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = proc.stderr.read()[-3000:] if proc.stderr is not None else ""
            raise AssertionError(f"the run ended ({proc.returncode}) before {what}: {tail!r}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
