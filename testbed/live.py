"""The live documents a run writes for the operator's console (schema: ``testbed.console``).

``LiveFeed`` writes them through the run's recorder without an fsync each (a power cut may lose
the last second of them, and nothing a resume needs), rate-limits the stage states (at most
one document per stage a second: a newer state waits, and replaces an older one still
waiting), and turns the process's WARNING log lines into ``warning`` documents.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from testbed.records import RunRecorder

STAGE_PERIOD_S = 1.0
# The coordinator's documents the console reads, copied into the run's own stream.
FORWARDED = ("phase", "nodes")


class LiveFeed:
    def __init__(self, recorder: RunRecorder) -> None:
        self.recorder = recorder
        self._stage_t: dict[str, float] = {}
        self._stage_waiting: dict[str, dict[str, Any]] = {}
        self._warnings: _WarningHandler | None = None
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._closed = False

    # --- from the coordinator --------------------------------------------------------------------
    def forward(self, fl_event: dict[str, Any]) -> None:
        """Copy a coordinator event the console needs (``phase``, ``nodes``) into the run's stream."""
        kind = fl_event.get("event")
        if kind in FORWARDED:
            data = {k: v for k, v in fl_event.items() if k not in ("t", "event")}
            self.recorder.live(kind, **data)

    # --- stages ----------------------------------------------------------------------------------
    def stages(
        self,
        names: Sequence[str],
        state: str,
        positions_m: Sequence[Sequence[float]],
        targets_m: Sequence[Sequence[float]] | None = None,
        alarm: int | str | None = None,
        force: bool = False,
    ) -> None:
        """Each named stage's state: written now if its last one is a period old (or ``force``),
        else held and written when the period is up (a newer state replaces a held one)."""
        with self._lock:
            for i, name in enumerate(names):
                self._stage_waiting[name] = {
                    "stage": name,
                    "state": state,
                    "position_m": [float(v) for v in positions_m[i]],
                    "target_m": None if targets_m is None else [float(v) for v in targets_m[i]],
                    "alarm": alarm,
                }
        self._flush_stages(force)

    def flush(self) -> None:
        """Write every held stage state now (before the run's stop document)."""
        self._flush_stages(force=True)

    def _flush_stages(self, force: bool = False) -> None:
        with self._lock:
            self._timer = None
            now = time.monotonic()
            due = STAGE_PERIOD_S
            for name in list(self._stage_waiting):
                age = now - self._stage_t.get(name, -STAGE_PERIOD_S)
                if force or age >= STAGE_PERIOD_S:
                    self.recorder.live("stage", **self._stage_waiting.pop(name))
                    self._stage_t[name] = now
                else:
                    due = min(due, STAGE_PERIOD_S - age)
            if self._stage_waiting and self._timer is None and not self._closed:
                self._timer = threading.Timer(due, self._flush_stages)
                self._timer.daemon = True
                self._timer.start()

    # --- warnings --------------------------------------------------------------------------------
    def capture_warnings(self) -> None:
        if self._warnings is None:
            self._warnings = _WarningHandler(self.recorder)
            logging.getLogger().addHandler(self._warnings)

    def close(self) -> None:
        """Write the stage states still held, and stop listening to the log."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
        self._flush_stages(force=True)
        if self._warnings is not None:
            logging.getLogger().removeHandler(self._warnings)
            self._warnings = None


class _WarningHandler(logging.Handler):
    def __init__(self, recorder: RunRecorder) -> None:
        super().__init__(logging.WARNING)
        self.recorder = recorder

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.recorder.live("warning", logger=record.name, message=record.getMessage()[:2000])
        except Exception:  # noqa: BLE001 - a closed recorder must not break the log call
            self.handleError(record)
