"""The GRBL 1.1 wire protocol (gnea/grbl ``doc/markdown/interface.md``): its code tables, status
reports, settings lines, and the line discipline every GRBL command goes through.

- One line at a time, then wait for ``ok`` or ``error:N``: each answer is a ``Reply``. ``ok`` only
  means *queued*.
- Whichever thread is waiting for a reply reads the port (one at a time, under a lock) and
  handles every line for everyone: ``ok``/``error``/``ALARM`` go to the pending command, status
  reports update the cached state, the banner marks a reset. No reader thread, so a reply costs
  no thread hand-off. Real-time bytes (``?``, ``!``, ``~``, ``0x18``, ``0x85``) go out at once,
  whatever command is pending.
- In ``ALARM:1/2`` GRBL serves nothing, not even ``?``, until a soft reset (protocol.c), and it
  ignores a reset for the first 0.5 s after the alarm (report.c waits, then protocol.c clears it):
  a reset waits for ``[MSG:Reset to continue]`` first.

``GrblWire`` is the base of ``drivers.grbl.GrblStage``, which adds the stage: frame, moves, homing
and alarms.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.errors import StageAborted, StageAlarm, StageCommandError, StageError, StageTimeout
from drivers.positioner import StageState
from drivers.serial_link import StageLinkError
from drivers.serial_stage import SerialStage

log = logging.getLogger("drivers.grbl")

# GRBL's own tables: doc/csv/error_codes_en_US.csv and alarm_codes_en_US.csv (code: short, meaning).
GRBL_ERRORS: dict[int, tuple[str, str]] = {
    1: ("Expected command letter", "G-code words consist of a letter and a value. Letter was not found."),
    2: ("Bad number format", "Missing the expected G-code word value or numeric value format is not valid."),
    3: ("Invalid statement", "Grbl '$' system command was not recognized or supported."),
    4: ("Value < 0", "Negative value received for an expected positive value."),
    5: ("Setting disabled", "Homing cycle failure. Homing is not enabled via settings."),
    6: ("Value < 3 usec", "Minimum step pulse time must be greater than 3usec."),
    7: ("EEPROM read fail. Using defaults", "An EEPROM read failed. Auto-restoring affected EEPROM to default values."),
    8: ("Not idle", "Grbl '$' command cannot be used unless Grbl is IDLE. Ensures smooth operation during a job."),
    9: ("G-code lock", "G-code commands are locked out during alarm or jog state."),
    10: ("Homing not enabled", "Soft limits cannot be enabled without homing also enabled."),
    11: ("Line overflow", "Max characters per line exceeded. Received command line was not executed."),
    12: ("Step rate > 30kHz", "Grbl '$' setting value cause the step rate to exceed the maximum supported."),
    13: ("Check Door", "Safety door detected as opened and door state initiated."),
    14: ("Line length exceeded", "Build info or startup line exceeded EEPROM line length limit. Line not stored."),
    15: ("Travel exceeded", "Jog target exceeds machine travel. Jog command has been ignored."),
    16: ("Invalid jog command", "Jog command has no '=' or contains prohibited g-code."),
    17: ("Setting disabled", "Laser mode requires PWM output."),
    20: ("Unsupported command", "Unsupported or invalid g-code command found in block."),
    21: ("Modal group violation", "More than one g-code command from same modal group found in block."),
    22: ("Undefined feed rate", "Feed rate has not yet been set or is undefined."),
    23: ("Invalid gcode ID:23", "G-code command in block requires an integer value."),
    24: ("Invalid gcode ID:24", "More than one g-code command that requires axis words found in block."),
    25: ("Invalid gcode ID:25", "Repeated g-code word found in block."),
    26: ("Invalid gcode ID:26", "No axis words found in block for g-code command or current modal state which requires them."),
    27: ("Invalid gcode ID:27", "Line number value is invalid."),
    28: ("Invalid gcode ID:28", "G-code command is missing a required value word."),
    29: ("Invalid gcode ID:29", "G59.x work coordinate systems are not supported."),
    30: ("Invalid gcode ID:30", "G53 only allowed with G0 and G1 motion modes."),
    31: ("Invalid gcode ID:31", "Axis words found in block when no command or current modal state uses them."),
    32: ("Invalid gcode ID:32", "G2 and G3 arcs require at least one in-plane axis word."),
    33: ("Invalid gcode ID:33", "Motion command target is invalid."),
    34: ("Invalid gcode ID:34", "Arc radius value is invalid."),
    35: ("Invalid gcode ID:35", "G2 and G3 arcs require at least one in-plane offset word."),
    36: ("Invalid gcode ID:36", "Unused value words found in block."),
    37: ("Invalid gcode ID:37", "G43.1 dynamic tool length offset is not assigned to configured tool length axis."),
    38: ("Invalid gcode ID:38", "Tool number greater than max supported value."),
}  # fmt: skip
GRBL_ALARMS: dict[int, tuple[str, str]] = {
    1: ("Hard limit", "Hard limit has been triggered. Machine position is likely lost due to sudden halt. Re-homing is highly recommended."),
    2: ("Soft limit", "Soft limit alarm. G-code motion target exceeds machine travel. Machine position retained. Alarm may be safely unlocked."),
    3: ("Abort during cycle", "Reset while in motion. Machine position is likely lost due to sudden halt. Re-homing is highly recommended."),
    4: ("Probe fail", "Probe fail. Probe is not in the expected initial state before starting probe cycle when G38.2 and G38.3 is not triggered and G38.4 and G38.5 is triggered."),
    5: ("Probe fail", "Probe fail. Probe did not contact the workpiece within the programmed travel for G38.2 and G38.4."),
    6: ("Homing fail", "Homing fail. The active homing cycle was reset."),
    7: ("Homing fail", "Homing fail. Safety door was opened during homing cycle."),
    8: ("Homing fail", "Homing fail. Pull off travel failed to clear limit switch. Try increasing pull-off setting or check wiring."),
    9: ("Homing fail", "Homing fail. Could not find limit switch within search distances. Try increasing max travel, decreasing pull-off distance, or check wiring."),
}  # fmt: skip
ALARMS_LOSING_POSITION = {1, 3, 6, 7, 8, 9}  # after these the machine must be homed again
CRITICAL_ALARMS = {1, 2}  # GRBL serves nothing, not even '?', until a soft reset (protocol.c)
HOMING_RESET_ALARMS = {8, 9}  # limits.c: homing failed, and GRBL reset itself
POSITION_TOL_MM = 0.01  # a finished move ends within this of its target (GRBL rounds to steps)

RT_STATUS, RT_HOLD, RT_RESUME, RT_RESET, RT_JOG_CANCEL = b"?", b"!", b"~", b"\x18", b"\x85"
# report.c: 500 ms of silence after every ALARM line; after ALARM:1/2 protocol.c then clears any
# reset that came in that time and says [MSG:Reset to continue]
ALARM_DELAY_S = 0.5
MIN_STATUS_POLL_S = 0.2  # GRBL's advice: status queries at 5 Hz at most
BOOT_TIMEOUT_S = 2.5  # an Arduino bootloader takes ~1-2 s before GRBL prints its banner

_STATES = {"Idle", "Run", "Hold", "Jog", "Alarm", "Door", "Check", "Home", "Sleep"}


def describe_error(code: int) -> str:
    short, meaning = GRBL_ERRORS.get(code, ("Unknown error", "Not in GRBL 1.1's error table."))
    return f"error:{code} ({short}: {meaning})"


def describe_alarm(code: int) -> str:
    short, meaning = GRBL_ALARMS.get(code, ("Unknown alarm", "Not in GRBL 1.1's alarm table."))
    return f"ALARM:{code} ({short}: {meaning})"


@dataclass(frozen=True)
class GrblStatus:
    """One parsed status report ``<State|MPos:...|...>``; fields absent from it are None."""

    state: str
    substate: int | None = None
    mpos_mm: tuple[float, ...] | None = None
    wpos_mm: tuple[float, ...] | None = None
    wco_mm: tuple[float, ...] | None = None
    buffer: tuple[int, int] | None = None  # (planner blocks free, rx bytes free)
    line_number: int | None = None
    feed_mm_min: float | None = None
    spindle_rpm: float | None = None
    pins: str | None = None
    overrides: tuple[int, int, int] | None = None  # feed, rapid, spindle (%)
    accessories: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def machine_pos_mm(self, wco_mm: tuple[float, ...] | None) -> tuple[float, ...] | None:
        """MPos, or WPos + WCO when the report carries work coordinates (``$10`` bit 0 clear)."""
        if self.mpos_mm is not None:
            return self.mpos_mm
        wco = self.wco_mm or wco_mm
        if self.wpos_mm is not None and wco is not None:
            return tuple(w + o for w, o in zip(self.wpos_mm, wco, strict=True))
        return None


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"bad {what} value {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"bad {what} value {text!r}")
    return values


def parse_status(line: str) -> GrblStatus:
    """Parse a GRBL 1.1 status report; fields may come in any order. Raise ValueError if malformed."""
    if not (line.startswith("<") and line.endswith(">")):
        raise ValueError(f"not a status report: {line!r}")
    fields = line[1:-1].split("|")
    head = fields[0]
    name, _, sub = head.partition(":")
    if name not in _STATES:
        raise ValueError(f"unknown machine state {head!r} in {line!r}")
    values: dict[str, object] = {"state": name, "substate": int(sub) if sub else None}
    extra: dict[str, str] = {}
    for item in fields[1:]:
        key, sep, val = item.partition(":")
        if not sep:
            raise ValueError(f"status field without ':' ({item!r}) in {line!r}")
        if key == "MPos":
            values["mpos_mm"] = _floats(val, key)
        elif key == "WPos":
            values["wpos_mm"] = _floats(val, key)
        elif key == "WCO":
            values["wco_mm"] = _floats(val, key)
        elif key == "Bf":
            blocks, rx = (int(v) for v in val.split(","))
            values["buffer"] = (blocks, rx)
        elif key == "Ln":
            values["line_number"] = int(val)
        elif key == "FS":
            feed, rpm = _floats(val, key)
            values["feed_mm_min"], values["spindle_rpm"] = feed, rpm
        elif key == "F":
            values["feed_mm_min"] = _floats(val, key)[0]
        elif key == "Pn":
            values["pins"] = val
        elif key == "Ov":
            ov = tuple(int(v) for v in val.split(","))
            if len(ov) != 3:
                raise ValueError(f"Ov needs three values, got {val!r}")
            values["overrides"] = ov
        elif key == "A":
            values["accessories"] = val
        else:
            extra[key] = val
    if "mpos_mm" not in values and "wpos_mm" not in values:
        raise ValueError(f"status report has neither MPos nor WPos: {line!r}")
    return GrblStatus(**values, extra=extra)  # type: ignore[arg-type]


def parse_setting(line: str) -> tuple[int, float] | None:
    """``$110=3000.000`` -> (110, 3000.0); None if the line is not a setting."""
    if not line.startswith("$") or "=" not in line:
        return None
    key, _, value = line[1:].partition("=")
    try:
        return int(key), float(value.split()[0])
    except (ValueError, IndexError):
        return None


def fmt_mm(v: float) -> str:
    """mm with GRBL's 3 decimals; never '-0.000'."""
    return f"{round(v, 3) + 0.0:.3f}"


class ReplyKind(enum.StrEnum):
    """What ended the wait for a command's answer."""

    OK = "ok"
    ERROR = "error"
    ALARM = "alarm"
    RESET = "reset"
    LOST = "lost"


@dataclass(frozen=True)
class Reply:
    """One line that answers (or ends) the pending command, in arrival order."""

    kind: ReplyKind
    code: int | None = None
    text: str = ""
    exc: BaseException | None = None


class GrblWire(SerialStage):
    """The line discipline of one GRBL controller: send lines and real-time bytes, read and sort
    what comes back (the stage logic is ``drivers.grbl.GrblStage``'s)."""

    def _init_wire(self) -> None:
        self.settings: dict[int, float] = {}
        self.build_options = ""  # the letters of $I's [OPT:...]
        self.banner: str | None = None
        self.last_status: GrblStatus | None = None
        self.alarm_code: int | None = None
        self._critical = False  # ALARM:1/2: GRBL serves nothing, not even '?', until a reset
        self._reset_armed = True  # False from ALARM:1/2 until [MSG:Reset to continue]: a reset is dropped
        self._alarm_t = 0.0  # when the last ALARM line was read (monotonic s)
        self._last_line: tuple[float, str] | None = None  # the last line read, and when
        self._wco: tuple[float, ...] = (0.0, 0.0, 0.0)
        self._acks: deque[Reply] = deque()  # ok/error/ALARM/reset/lost, in order
        self._info: list[str] = []
        self._garbage: list[str] = []
        self._cmd_lock = threading.Lock()
        self._status_cond = threading.Condition()  # notified on every line handled
        self._read_lock = threading.Lock()  # held by the one thread reading the port right now
        self._status_seq = 0
        self._banner_seq = 0
        self._alarm_seq = 0

    def _on_close(self) -> None:
        with self._status_cond:
            self._status_cond.notify_all()

    def soft_reset(self) -> None:
        """Send 0x18 and wait for the banner: flushes everything, resynchronises the link.

        After ``ALARM:1/2`` GRBL drops a reset sent before its ``[MSG:Reset to continue]`` (500 ms
        after the alarm), so the reset waits for that message (or those 500 ms); if no banner comes,
        the reset is sent once more."""
        self._await_reset_window()
        seq = self._banner_seq
        self._link.write_raw(RT_RESET)
        if not self._wait_banner(seq, self.command_timeout_s, raise_=False):
            log.warning("%s: no banner after a reset (%s); sending it once more", self._where, self._heard())
            self._link.write_raw(RT_RESET)
            self._wait_banner(seq, self.command_timeout_s)
        self._critical = False

    def _await_reset_window(self) -> None:
        """After ALARM:1/2, wait for ``[MSG:Reset to continue]``, at most until the alarm's 500 ms
        (and a margin for the line to arrive) are over."""
        if not self._critical or self._reset_armed:
            return
        left = self._alarm_t + ALARM_DELAY_S + 0.1 - time.monotonic()
        if left > 0:
            self._pump(lambda: self._reset_armed, left)

    def _heard(self) -> str:
        """What was last seen on the wire, for timeout messages."""
        if self._last_line is None:
            return "nothing received since the port opened; is it GRBL at 115200 baud?"
        t, line = self._last_line
        return f"last line received {line!r}, {time.monotonic() - t:.2f} s ago"

    def command(self, line: str, timeout_s: float | None = None) -> list[str]:
        """Send one line, wait for ``ok``; return the ``[...]``/``$`` lines that came before it."""
        return self._command(line, self.command_timeout_s if timeout_s is None else timeout_s)

    def query_status(self, timeout_s: float | None = None) -> GrblStatus:
        """Send ``?`` and return the next status report.

        In ALARM:1/2 GRBL answers no ``?`` until a reset, so that alarm is raised (``StageAlarm``) at
        once, also when it arrives while we wait, instead of a timeout."""
        timeout = self.command_timeout_s if timeout_s is None else timeout_s
        self._raise_if_critical()
        seq, alarms = self._status_seq, self._alarm_seq
        self._link.write_raw(RT_STATUS)
        if not self._pump(lambda: self._status_seq > seq or self._alarm_seq > alarms, timeout):
            raise StageTimeout(
                f"{self._where}: no status report within {timeout} s (last command {self.last_command!r})"
            )
        if self._status_seq == seq:
            self._raise_if_critical()
            code = self.alarm_code
            raise StageAlarm(
                f"{self._where}: {describe_alarm(code or -1)} while reading the status", code=code
            )
        assert self.last_status is not None
        return self.last_status

    def _raise_if_critical(self) -> None:
        if self._critical:
            code = self.alarm_code
            raise StageAlarm(
                f"{self._where}: {describe_alarm(code or -1)}; GRBL answers no status until a reset "
                "(home() resets and re-homes)",
                code=code,
            )

    def _pump(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Read and handle lines until ``done()``; False after ``timeout_s``.

        One thread at a time holds the read lock and reads; it handles every line (acks, status
        reports, alarms, banners) for everyone. Others wait to be notified and take over reading
        once it stops, so a ``stop()`` can run while a move is waiting for its reply.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            if done():
                return True
            if self._state == StageState.DISCONNECTED:
                raise StageLinkError(f"{self._where}: link lost (last command {self.last_command!r})")
            if self._closed.is_set():
                raise StageError(f"{self._where}: stage closed")
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._read_lock.acquire(blocking=False):
                try:
                    while not done():
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return False
                        try:
                            line = self._link.read_line(min(left, 0.05))
                        except StageLinkError as exc:
                            self._lost(exc)
                            raise
                        if line is not None:
                            self._handle(line)
                    return True
                finally:
                    self._read_lock.release()
                    with self._status_cond:
                        self._status_cond.notify_all()
            with self._status_cond:  # someone else is reading: wait for news (or for them to stop)
                if self._read_lock.locked() and not done():
                    self._status_cond.wait(min(left, 0.05))

    def _handle(self, line: str) -> None:
        if line.strip():
            self._last_line = (time.monotonic(), line.strip())
        try:
            self._dispatch(line)
        except Exception:  # a bug here must not wedge the link
            log.exception("%s: failed to handle %r", self.name, line)
        with self._status_cond:
            self._status_cond.notify_all()

    def _lost(self, exc: StageLinkError) -> None:
        if self._closed.is_set():
            return
        self._state = StageState.DISCONNECTED
        self._acks.append(Reply(ReplyKind.LOST, exc=exc))
        with self._status_cond:
            self._status_cond.notify_all()
        log.error("%s: %s", self.name, exc)

    def _dispatch(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        if line == "ok":
            self._acks.append(Reply(ReplyKind.OK))
        elif line.startswith("error:"):
            code = int(line[6:]) if line[6:].isdigit() else -1
            if code == 7:  # settings.c: EEPROM read failed and was restored to defaults (first boot)
                log.warning(
                    "%s: GRBL reports error:7: its EEPROM settings were restored to defaults", self._where
                )
            self._acks.append(Reply(ReplyKind.ERROR, code))
        elif line.startswith("<") and line.endswith(">"):
            try:
                report = parse_status(line)
            except ValueError as exc:
                self._garbled(f"{line} ({exc})")
                return
            self._on_status(report)
        elif line.startswith("ALARM:"):
            code = int(line[6:]) if line[6:].isdigit() else -1
            self._on_alarm(code)
        elif line.startswith("Grbl "):
            self.banner = line
            self._critical = False
            self._reset_armed = True
            self._acks.append(Reply(ReplyKind.RESET, text=line))
            with self._status_cond:
                self._banner_seq += 1
                self._status_cond.notify_all()
        elif line.startswith("[MSG:"):
            log.debug("%s: %s", self.name, line)
            if "Reset to continue" in line:
                self._critical = True
                self._reset_armed = True
            elif "to unlock" in line:
                self._state = StageState.ALARM
            elif "Check Limits" in line:  # a limit switch reads pressed at power-up: GRBL is in alarm
                log.warning("%s: GRBL reports %s: a limit switch is pressed", self._where, line)
                self._state = StageState.ALARM
        elif line.startswith("[") or line.startswith("$"):
            self._info.append(line)
        else:
            self._garbled(line)

    def _garbled(self, line: str) -> None:
        log.warning("%s: garbled line %r", self._where, line)
        self._garbage.append(line)

    def _on_status(self, report: GrblStatus) -> None:
        if report.wco_mm is not None:
            self._wco = report.wco_mm
        mapping = {
            "Idle": StageState.IDLE, "Run": StageState.MOVING, "Jog": StageState.MOVING,
            "Hold": StageState.HOLD, "Door": StageState.HOLD, "Home": StageState.HOMING,
            "Alarm": StageState.ALARM, "Check": StageState.IDLE, "Sleep": StageState.IDLE,
        }  # fmt: skip
        if self._state != StageState.DISCONNECTED:
            self._state = mapping[report.state]
        with self._status_cond:
            self.last_status = report
            self._status_seq += 1
            self._status_cond.notify_all()

    def _on_alarm(self, code: int) -> None:
        self.alarm_code = code
        self._state = StageState.ALARM
        if code in ALARMS_LOSING_POSITION:
            self.homed = False
        self._alarm_t = time.monotonic()
        if code in CRITICAL_ALARMS:
            self._critical = True
            self._reset_armed = False
        log.error("%s: %s", self.name, describe_alarm(code))
        self._acks.append(Reply(ReplyKind.ALARM, code))
        with self._status_cond:
            self._alarm_seq += 1
            self._status_cond.notify_all()

    def _command(self, line: str, timeout_s: float, watchdog: bool = False) -> list[str]:
        """Send ``line`` and wait for its reply; with ``watchdog``, poll ``?`` while waiting."""
        where = self._where
        if self._state == StageState.DISCONNECTED:
            raise StageLinkError(f"{where}: link lost; reopen the stage (last command {self.last_command!r})")
        with self._cmd_lock:
            self._acks.clear()  # anything left over is stale: it belongs to an older command or reset
            self._info.clear()
            garbage_before = len(self._garbage)
            self.last_command = line
            self._link.write_line(line)
            deadline = time.monotonic() + timeout_s
            last_query = last_heard = time.monotonic()
            seen_seq = sent_seq = self._status_seq
            while True:
                now = time.monotonic()
                if now >= deadline:
                    self._raise_timeout(line, timeout_s, sent_seq if watchdog else None)
                wait = deadline - now
                if watchdog:
                    wait = min(wait, max(0.0, last_query + self.status_poll_s - now))
                if not self._pump(lambda: bool(self._acks), wait):
                    now = time.monotonic()
                    if watchdog and now >= last_query + self.status_poll_s:
                        if self._status_seq != seen_seq:
                            seen_seq, last_heard = self._status_seq, now
                        elif now - last_heard > self.command_timeout_s:
                            raise StageTimeout(
                                f"{where}: no status report within {self.command_timeout_s:g} s "
                                f"while waiting for the reply to {line!r}"
                            )
                        self._link.write_raw(RT_STATUS)
                        last_query = now
                    continue
                reply = self._acks.popleft()
                kind = reply.kind
                if kind is not ReplyKind.OK and self._stop_requested.is_set():
                    raise StageAborted(f"{where}: {line!r} cancelled by stop()")
                if kind is ReplyKind.OK:
                    if len(self._garbage) > garbage_before:
                        raise StageError(
                            f"{where}: garbled reply {self._garbage[-1]!r} while waiting for the reply to "
                            f"{line!r}; the link is noisy or out of step"
                        )
                    return list(self._info)
                if kind is ReplyKind.ERROR:
                    code = reply.code
                    raise StageCommandError(
                        f"{where}: {line!r} rejected: {describe_error(code or -1)}", code=code
                    )
                if kind is ReplyKind.ALARM:
                    code = reply.code
                    raise StageAlarm(f"{where}: {describe_alarm(code or -1)} (during {line!r})", code=code)
                if kind is ReplyKind.RESET:
                    raise StageAborted(f"{where}: controller reset while waiting for the reply to {line!r}")
                if kind is ReplyKind.LOST:
                    raise StageLinkError(
                        f"{where}: link lost while waiting for the reply to {line!r} ({reply.exc})"
                    )

    def _raise_timeout(self, line: str, timeout_s: float, watched_from: int | None) -> None:
        """No reply in time. If every status report the watchdog read since the line went out said
        Hold, the motion was held (a feed hold with no resume), not lost: say so."""
        report = self.last_status
        fresh = watched_from is not None and self._status_seq > watched_from
        if fresh and report is not None and report.state == "Hold":
            sub = f":{report.substate}" if report.substate is not None else ""
            raise StageAborted(
                f"{self._where}: {line!r} held: the controller reports Hold{sub} (a feed hold, from "
                f"feed_hold() or the hold button) and nothing resumed it within {timeout_s:g} s; "
                "resume() continues it, stop() ends it"
            )
        raise StageTimeout(f"{self._where}: no reply to {line!r} within {timeout_s:g} s; {self._heard()}")

    def _lost_at_banner(self) -> StageLinkError:
        """The link went while a banner was awaited: say what was last heard (a bridge's "busy")."""
        hint = ""
        if self._last_line is None and self.port_url.startswith("socket://"):
            # a serial-over-TCP bridge closes a second client's connection at once
            hint = " (the bridge closed the connection: is another program, e.g. a running experiment, connected?)"
        return StageLinkError(
            f"{self._where}: link lost while waiting for the GRBL banner; {self._heard()}{hint}"
        )

    def _wait_banner(self, seq: int, timeout_s: float, raise_: bool = True) -> bool:
        try:
            ok = self._pump(lambda: self._banner_seq > seq, timeout_s)
        except StageLinkError:
            ok = False
        if self._state == StageState.DISCONNECTED:
            raise StageLinkError(
                f"{self._where}: link lost while waiting for the GRBL banner; {self._heard()}"
            )
        if not ok and raise_:
            raise StageTimeout(
                f"{self._where}: no 'Grbl 1.1' banner within {timeout_s:g} s "
                f"(last command {self.last_command!r}); {self._heard()}"
            )
        return ok


__all__ = [
    "ALARMS_LOSING_POSITION",
    "CRITICAL_ALARMS",
    "GRBL_ALARMS",
    "GRBL_ERRORS",
    "GrblStatus",
    "GrblWire",
    "Reply",
    "ReplyKind",
    "describe_alarm",
    "describe_error",
    "fmt_mm",
    "parse_setting",
    "parse_status",
]
