"""The live documents a run writes for the operator's console (schema: ``testbed.console``).

``LiveFeed`` writes them through the run's recorder without an fsync each (a power cut may lose
the last second of them, and nothing a resume needs), rate-limits the stage states (at most
one document per stage a second: a newer state waits, and replaces an older one still
waiting), and turns the process's WARNING log lines into ``warning`` documents.
"""

from __future__ import annotations

import logging
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
        """Each named stage's state; ``force`` writes what waits regardless of the rate (run end)."""
        now = time.monotonic()
        for i, name in enumerate(names):
            self._stage_waiting[name] = {
                "stage": name,
                "state": state,
                "position_m": [float(v) for v in positions_m[i]],
                "target_m": None if targets_m is None else [float(v) for v in targets_m[i]],
                "alarm": alarm,
            }
        for name in list(self._stage_waiting):
            if force or now - self._stage_t.get(name, -STAGE_PERIOD_S) >= STAGE_PERIOD_S:
                self.recorder.live("stage", **self._stage_waiting.pop(name))
                self._stage_t[name] = now

    # --- warnings --------------------------------------------------------------------------------
    def capture_warnings(self) -> None:
        if self._warnings is None:
            self._warnings = _WarningHandler(self.recorder)
            logging.getLogger().addHandler(self._warnings)

    def close(self) -> None:
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
