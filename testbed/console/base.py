"""The views' common part: the tail, start and stop documents, phases, warnings, the log.

``View`` folds documents as bluesky's callbacks do: ``start``, ``event`` and ``stop`` in order;
an event kind the view has no ``_event_<kind>`` method for is ignored, and so is a document it
cannot read. What it keeps is compact and bounded (rows, the latest state, deques), never the raw
documents. See ``testbed.console.view`` for the views themselves.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from testbed.console.control import is_running
from testbed.console.folders import CONFIG, EVENTS, Status, status_of
from testbed.console.tail import JsonlTail

log = logging.getLogger(__name__)

# One read of events.jsonl at most: a reader opening a 100 MB file catches up in such chunks
# (the chunk's parsed documents are the peak memory of a catch-up, on top of the rows kept).
CHUNK_BYTES = 1 << 20
WARNINGS_KEPT = 20
LOG_KEPT = 200
# The ETA averages the last rounds' (points') durations.
ETA_WINDOW = 10


def num(value: Any) -> float | None:
    """A finite float, or None (missing, not a number, NaN or infinite)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float as None (strict JSON: a browser's JSON.parse refuses
    NaN and Infinity, and a digital run's NMSE is -inf dB)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def load_dir_config(path: Path) -> Any:
    """The directory's resolved config, or None where it no longer validates (an older run)."""
    from testbed.config import load_config

    try:
        return load_config(path / CONFIG)
    except Exception as exc:  # noqa: BLE001 - the view still shows what the events say
        log.warning("%s: config.yaml does not load (%s); showing the events only", path, exc)
        return None


class View:
    """What every view shares: the tail, start and stop documents, phases, warnings and the log.

    Subclasses handle their event kinds in ``_event_<kind>(data, t)`` (t: the document's time) methods.
    """

    kind: ClassVar[str] = ""
    unit: ClassVar[str] = "round"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # The folder of the sweep this run is part of (a compare's), or None.
        self.within: Path | None = None
        self._tail = JsonlTail(self.path / EVENTS, max_bytes=CHUNK_BYTES)
        self.name = self.path.name
        self.scheme: str | None = None
        self.started: float | None = None
        self.segment_started: float | None = None
        self.stop_status: str | None = None
        self.stop_reason = ""
        self.phase: dict[str, Any] | None = None
        self.stop_request: dict[str, Any] | None = None
        self.warnings: deque[dict[str, Any]] = deque(maxlen=WARNINGS_KEPT)
        self.log: deque[dict[str, Any]] = deque(maxlen=LOG_KEPT)
        # Bumped on every change: a page can tell whether anything happened since it last looked.
        self.version = 0

    # --- reading ---------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Fold the documents appended since the last call; True if anything changed."""
        changed = False
        while docs := self._tail.read():
            changed = self.feed(docs) or changed
        return changed

    def feed(self, docs: list[dict[str, Any]]) -> bool:
        """Fold documents in order (unknown kinds and malformed ones are skipped)."""
        changed = False
        for doc in docs:
            try:
                folded = self._fold(doc)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                log.debug("%s: skipping a malformed %s document: %s", self.path, doc.get("kind"), exc)
                continue
            if folded:
                changed = True
                self.version += 1
        return changed

    def _fold(self, doc: dict[str, Any]) -> bool:
        kind, t = doc.get("doc"), num(doc.get("time"))
        if kind == "start":
            self._start(doc, t)
            return True
        if kind == "stop":
            self.stop_status = str(doc.get("status"))
            self.stop_reason = str(doc.get("reason") or "")
            self.phase = None
            text = f"stopped: {self.stop_status}" + (f" ({self.stop_reason})" if self.stop_reason else "")
            self._log(t, "stop", text)
            return True
        if kind != "event":
            return False
        handler = getattr(self, f"_event_{doc.get('kind')}", None)
        data = doc.get("data")
        if handler is None or not isinstance(data, dict):
            return False
        handler(data, t)
        return True

    def _start(self, doc: dict[str, Any], t: float | None) -> None:
        if self.started is None:
            self.started = t
        self.segment_started = t
        # A resumed segment starts afresh: the earlier segment's stop no longer holds.
        self.stop_status, self.stop_reason, self.stop_request, self.phase = None, "", None, None
        if doc.get("name"):
            self.name = str(doc["name"])
        if doc.get("scheme"):
            self.scheme = str(doc["scheme"])
        self._log(t, "start", "resumed" if doc.get("resumed") else "started")

    def _log(self, t: float | None, kind: str, text: str) -> None:
        self.log.append({"time": t, "kind": kind, "text": text})

    # --- the live documents every view reads -----------------------------------------------------
    def _event_phase(self, data: dict[str, Any], t: float | None) -> None:
        unit = data.get(self.unit)
        self.phase = {
            "phase": str(data["phase"]),
            self.unit: int(unit) if unit is not None else None,
            "t_start": num(data.get("t_start")) or t,
        }

    def _event_warning(self, data: dict[str, Any], t: float | None) -> None:
        row = {"time": t, "logger": str(data.get("logger", "")), "message": str(data.get("message", ""))}
        self.warnings.append(row)
        self._log(t, "warning", f"{row['logger']}: {row['message']}")

    def _event_stop_request(self, data: dict[str, Any], t: float | None) -> None:
        self.stop_request = {"now": bool(data.get("now")), "by": str(data.get("by", "")), "time": t}
        when = "now" if self.stop_request["now"] else f"at the end of this {self.unit}"
        self._log(t, "stop_request", f"stop requested by {self.stop_request['by'] or '?'}: {when}")

    # --- what it shows -----------------------------------------------------------------------------
    @property
    def status(self) -> Status:
        status = status_of(self.stop_status, self.path)
        if status == "crashed" and self.within is not None and is_running(self.within):
            # A compare's cell: its process is the compare's worker, marked in the compare's folder.
            return "running"
        return status

    def phase_now(self, now: float | None = None) -> dict[str, Any] | None:
        """The current phase with how long it has run (None between phases and after the end)."""
        if self.phase is None or self.status != "running":
            return None
        now = time.time() if now is None else now
        started = self.phase["t_start"]
        return {**self.phase, "elapsed_s": max(0.0, now - started) if started is not None else None}

    def _common(self, now: float) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "name": self.name,
            "scheme": self.scheme,
            "status": self.status,
            "stop_reason": self.stop_reason,
            "started": self.started,
            "version": self.version,
            "phase": self.phase_now(now),
            "stop_request": self.stop_request,
            "warnings": list(self.warnings),
            "log": list(self.log),
        }

    def _eta(self, times: Sequence[float], remaining: int, now: float) -> float | None:
        """Seconds left: the mean of the last durations times what is left, less the time the
        current unit has already run; None unless running and measurable."""
        if self.status != "running" or remaining <= 0:
            return 0.0 if remaining <= 0 and self.status == "running" else None
        if len(times) < 2:
            return None
        recent = list(times)[-(ETA_WINDOW + 1) :]
        per = (recent[-1] - recent[0]) / (len(recent) - 1)
        return max(0.0, per * remaining - max(0.0, now - times[-1]))
