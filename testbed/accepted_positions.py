"""The operator's word on a GRBL stage without homing switches, kept between commands.

Without switches (``$22=0``) only ``GrblStage.accept_position(note)`` establishes a position, and
that lasts as long as the driver's connection: every ``testbed stage`` command, run or campaign
opens the port anew. So ``testbed stage accept-position`` writes a record per port, and the next
opening takes the position again from it, but only where nothing can have moved the carriage
unseen since the record was last updated (when the stage array closed):

- the controller did not restart when the port opened (no power-up banner; the driver holds DTR
  low) and is Idle, not in an alarm;
- its position count is the one recorded (within a step), so no one moved it in between and a
  controller restarted while the port was closed (counting from zero again) shows, unless the
  recorded count was zero too.

Otherwise the record is dropped, and the reason is said. What no rule can see: a carriage pushed
by hand while its motors are released (GRBL releases them ``$1`` ms after each move unless
``$1=255``), or an unseen restart when the recorded count was zero; ``accept-position`` says so. The records live in
``$TESTBED_STATE_DIR/accepted_positions.json`` (default ``~/.local/state/ma-ota-testbed``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.errors import StageError
from drivers.positioner import StageState

STATE_ENV = "TESTBED_STATE_DIR"
FILE = "accepted_positions.json"
# how close the count must be to the recorded one (GRBL rounds to whole steps; $100 >= 10 steps/mm)
MATCH_M = 2e-4


def records_path() -> Path:
    base = os.environ.get(STATE_ENV) or str(Path.home() / ".local" / "state" / "ma-ota-testbed")
    return Path(base).expanduser() / FILE


def _load() -> dict[str, Any]:
    try:
        data = json.loads(records_path().read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(records: dict[str, Any]) -> None:
    path = records_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _switchless(stage: Any) -> bool:
    """A GRBL stage without homing switches (the only kind whose position needs the operator)."""
    settings = getattr(stage, "settings", None)
    return isinstance(settings, dict) and hasattr(stage, "accept_position") and not settings.get(22)


def record(name: str, stage: Any, note: str) -> str:
    """Write the record of ``stage`` (just accepted on the operator's word) under its port; return
    what the operator should know about keeping it."""
    xy = stage.count_position()
    records = _load()
    records[stage.port_url] = {"stage": name, "count_m": list(xy), "note": note, "at": time.time()}
    _save(records)
    words = f"{name}: position accepted and kept for later commands in {records_path()}"
    if stage.settings.get(1, 25.0) < 255:
        words += (
            f"; GRBL releases the motors {stage.settings.get(1, 25.0):g} ms after each move ($1), so a "
            "carriage pushed by hand goes unseen: $1=255 keeps them holding"
        )
    return words


def refresh(name: str, stage: Any) -> None:
    """Before the port closes: follow the count (the stage may have moved), or drop the record
    where the position is no longer established."""
    if not _switchless(stage):
        return
    records = _load()
    if stage.port_url not in records:
        return
    if stage.homed and stage.state == StageState.IDLE:
        try:
            records[stage.port_url]["count_m"] = list(stage.count_position())
        except StageError:
            records.pop(stage.port_url)
    else:
        records.pop(stage.port_url)
    _save(records)


def restore(name: str, stage: Any, say: Callable[[str], None]) -> bool:
    """At open: take the position from the port's record where the rules above allow; say what
    was done. Returns True if the position is established from it."""
    if not _switchless(stage) or stage.homed:
        return False
    records = _load()
    rec = records.get(stage.port_url)
    if rec is None:
        return False
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(rec.get("at", 0.0))))
    why = ""
    count = None
    if getattr(stage, "reset_at_open", False):
        why = "the controller restarted when its port opened"
    elif stage.state != StageState.IDLE:
        why = f"the controller is {stage.state.value}, not idle"
    else:
        try:
            count = stage.count_position()
        except StageError as exc:
            why = f"its count could not be read ({exc})"
    if count is not None:
        kept = rec.get("count_m") or [math.nan, math.nan]
        if not math.dist(count, kept) <= MATCH_M:
            why = (
                f"its count ({count[0]:.4f}, {count[1]:.4f}) m is not the recorded ({kept[0]:.4f}, "
                f"{kept[1]:.4f}) m: something moved it or the controller restarted"
            )
    if why:
        records.pop(stage.port_url)
        _save(records)
        say(
            f"{name}: the position accepted on {when} is not kept: {why}; check the carriage, then "
            f"testbed stage accept-position --stage {name} --note '...'"
        )
        return False
    stage.accept_position(
        f"{rec.get('note', '')} (accepted {when}; kept: no restart and the count is unchanged since)"
    )
    say(f"{name}: position kept from the operator's word of {when}: {rec.get('note', '')}")
    return True


__all__ = ["STATE_ENV", "record", "records_path", "refresh", "restore"]
