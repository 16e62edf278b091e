"""Zaber ASCII-protocol XY stage driver (one two-axis controller: X on axis 1, Y on axis 2).

Every command carries a message id (``/1 1 07 move abs 1000``) and only the reply with that id
(``@01 1 07 OK BUSY -- 0``) answers it, so a late reply after a timeout can never be taken for
the answer to a newer command. ``RJ`` replies raise ``StageCommandError`` with Zaber's reason;
the warning flags drive the state: ``FS`` (stall) and ``WL`` (unexpected limit) are alarms that
lose the position, ``WR`` means not homed.

An XY move sets each axis' speed and acceleration in proportion to its share of the distance,
so both axes arrive together and the antenna follows the straight line that
``drivers.stage_array`` checked for clearance. Completion comes from polling the device's status
until ``IDLE``. Positions in the API are metres; on the wire, microsteps (``microstep_m`` each).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import serial

from drivers.errors import StageAlarm, StageCommandError, StageError, StageNotHomed, StageTimeout
from drivers.positioner import StageLimits, StageState
from drivers.serial_link import StageLinkError
from drivers.serial_stage import SerialStage

log = logging.getLogger(__name__)

DEFAULT_MICROSTEP_M = 0.047625e-6  # X-LSQ series; pass the stage's own value
VELOCITY_UNIT = 1.6384  # Zaber data units per microstep/s
ACCEL_UNIT = 1.6384 / 10000.0  # Zaber data units per microstep/s^2
ALARM_WARNINGS = {
    "FS": "stalled and stopped",
    "WL": "unexpected limit trigger",
    "FF": "critical system error",
}
REJECT_REASONS = {
    "AGAIN": "the command cannot run now; send it again",
    "BADAXIS": "the command needs an axis (or that axis does not exist)",
    "BADCOMMAND": "the command or setting is not known",
    "BADDATA": "a value is out of range or malformed",
    "BADMESSAGEID": "the message id is out of range",
    "DEVICEONLY": "the command must go to the device (axis 0)",
    "FULL": "the device's buffer is full",
    "LOCKSTEP": "the axis is in lockstep; move the lockstep group instead",
    "NOACCESS": "the command needs a higher access level",
    "PARKED": "the device is parked; unpark it first",
    "STATUSBUSY": "the device is busy",
}


@dataclass(frozen=True)
class ZaberReply:
    address: int
    axis: int
    message_id: int | None
    flag: str  # OK / RJ
    status: str  # IDLE / BUSY
    warning: str  # most urgent flag, or "--"
    data: str


def parse_reply(line: str) -> ZaberReply:
    """Parse ``@01 1 07 OK BUSY -- 0``; raise ValueError if it is not a reply."""
    if not line.startswith("@"):
        raise ValueError(f"not a Zaber reply: {line!r}")
    body = line.split(":", 1)[0] if ":" in line[1:] else line  # an optional checksum
    tokens = body[1:].split()
    try:
        address, axis = int(tokens[0]), int(tokens[1])
        rest = tokens[2:]
        message_id = None
        if rest and rest[0].isdigit():
            message_id = int(rest.pop(0))
        flag, status, warning = rest[0], rest[1], rest[2]
    except (ValueError, IndexError):
        raise ValueError(f"malformed Zaber reply: {line!r}") from None
    if flag not in ("OK", "RJ") or status not in ("IDLE", "BUSY") or len(warning) != 2:
        raise ValueError(f"malformed Zaber reply: {line!r}")
    return ZaberReply(address, axis, message_id, flag, status, warning, " ".join(rest[3:]))


class ZaberStage(SerialStage):
    """One antenna on a two-axis Zaber controller (the ``Positioner`` contract).

    ASCII commands matched to their replies by message id, completion by polling until ``IDLE``
    (see the module docstring); the contract's plumbing is ``SerialStage``'s.
    """

    def __init__(
        self,
        port: str | serial.SerialBase,
        limits: StageLimits,
        *,
        name: str = "zaber",
        address: int = 1,
        microstep_m: float = DEFAULT_MICROSTEP_M,
        command_timeout_s: float = 2.0,
        homing_timeout_s: float = 120.0,
        settle_s: float = 0.0,
        poll_s: float = 0.05,
        baudrate: int = 115200,
    ) -> None:
        if not 1 <= address <= 99:
            raise ValueError(f"Zaber address must be 1..99 (got {address})")
        super().__init__(port, limits, name, command_timeout_s, homing_timeout_s, settle_s)
        self.address = address
        self.microstep_m = microstep_m
        self.poll_s = poll_s
        self.last_reply: ZaberReply | None = None
        self.alarm_flag: str | None = None
        self.device_id: str | None = None
        self.firmware: str | None = None
        self._next_id = 0
        self._io_lock = threading.Lock()
        self._axis_settings: dict[tuple[int, str], int] = {}
        self._open(port, self._startup, baudrate=baudrate)

    # --- Positioner contract (the rest is SerialStage's) ----------------------------------------
    def position(self) -> tuple[float, float]:
        reply = self.command(0, "get pos")
        try:
            x, y = (int(v) for v in reply.data.split())
        except ValueError:
            raise StageError(
                f"{self._where}: 'get pos' returned {reply.data!r}, expected two integers"
            ) from None
        return x * self.microstep_m, y * self.microstep_m

    # --- protocol ------------------------------------------------------------------------------
    def command(self, axis: int, text: str, timeout_s: float | None = None) -> ZaberReply:
        """Send ``/<address> <axis> <id> <text>``; return its reply; raise on RJ, timeout, noise."""
        timeout = self.command_timeout_s if timeout_s is None else timeout_s
        if self._state == StageState.DISCONNECTED:
            raise StageLinkError(
                f"{self._where}: link lost; reopen the stage (last command {self.last_command!r})"
            )
        with self._io_lock:
            self._next_id = (self._next_id + 1) % 100
            msg_id = self._next_id
            line = f"/{self.address} {axis} {msg_id:02d} {text}".rstrip()
            self.last_command = line
            garbage: list[str] = []
            try:
                self._link.write_line(line)
                deadline = time.monotonic() + timeout
                while True:
                    left = deadline - time.monotonic()
                    raw = self._link.read_line(max(0.0, left)) if left > 0 else None
                    if raw is None:
                        raise StageTimeout(f"{self._where}: no reply to {line!r} within {timeout:g} s")
                    if not raw.strip() or raw.startswith(("#", "!")):
                        continue  # info lines and alerts: not replies
                    try:
                        reply = parse_reply(raw)
                    except ValueError:
                        log.warning("%s: garbled line %r", self._where, raw)
                        garbage.append(raw)
                        continue
                    if reply.address != self.address or reply.message_id != msg_id:
                        continue  # a late reply to an older command: skip it
                    break
            except StageLinkError:
                self._state = StageState.DISCONNECTED
                raise
        self.last_reply = reply
        self._note(reply)
        if reply.flag == "RJ":
            reason = reply.data.split()[0] if reply.data else "?"
            meaning = REJECT_REASONS.get(reason, "see the Zaber ASCII manual")
            raise StageCommandError(f"{self._where}: {line!r} rejected: RJ {reason} ({meaning})", code=reason)
        if garbage:
            raise StageError(
                f"{self._where}: garbled reply {garbage[-1]!r} while waiting for the reply to {line!r}; "
                "the link is noisy or out of step"
            )
        return reply

    def _note(self, reply: ZaberReply) -> None:
        """Update state from a reply's status and warning flag."""
        if reply.axis != 0:
            return  # an axis reply speaks for one axis only
        if reply.warning in ALARM_WARNINGS:
            self.alarm_flag = reply.warning
            self.homed = False
            self._state = StageState.ALARM
        elif reply.status == "BUSY":
            self._state = StageState.HOMING if self._state == StageState.HOMING else StageState.MOVING
        elif reply.warning == "WR":
            self.homed = False
            self._state = StageState.ALARM
        else:
            self._state = StageState.IDLE

    def _startup(self) -> None:
        self._link.clear_input()
        self.device_id = self.command(0, "get device.id").data
        self.firmware = self.command(0, "get version").data
        limit_max = [int(v) for v in self.command(0, "get limit.max").data.split()]
        if len(limit_max) < 2:
            raise StageError(
                f"{self._where}: expected a two-axis controller, 'get limit.max' gave {limit_max}"
            )
        for axis, travel, lim in zip("XY", self._limits.travel_m, limit_max, strict=False):
            if travel > lim * self.microstep_m * (1 + 1e-9):
                raise StageError(
                    f"{self._where}: config travel_m={travel:g} m exceeds the {axis} axis' limit.max="
                    f"{lim} microsteps ({lim * self.microstep_m:g} m at microstep_m={self.microstep_m:g})"
                )
        warnings = self.command(0, "warnings").data.split()[1:]
        self.homed = "WR" not in warnings
        alarms = [w for w in warnings if w in ALARM_WARNINGS]
        if alarms:
            self.alarm_flag = alarms[0]
            self._state = StageState.ALARM
        else:
            self._state = StageState.IDLE if self.homed else StageState.ALARM
        log.info(
            "%s: Zaber device %s firmware %s, warnings %s",
            self._where,
            self.device_id,
            self.firmware,
            warnings,
        )

    # --- motion --------------------------------------------------------------------------------
    def _check_ready(self) -> None:
        if self._state == StageState.DISCONNECTED:
            raise StageLinkError(f"{self._where}: link lost; reopen the stage")
        if self.alarm_flag:
            raise StageNotHomed(
                f"{self._where}: alarm {self.alarm_flag} ({ALARM_WARNINGS[self.alarm_flag]}): position lost; home() first"
            )
        if not self.homed:
            raise StageNotHomed(f"{self._where}: no reference position (WR): home() first")

    def _move_job(self, xy_m: tuple[float, float], speed_m_s: float | None) -> Callable[[], None]:
        speed = self._limits.max_speed_m_s if speed_m_s is None else float(speed_m_s)
        self._limits.check_move(xy_m, speed, self.name)
        self._check_ready()
        target = (float(xy_m[0]), float(xy_m[1]))
        return lambda: self._move_body(target, speed)

    def _set_axis(self, axis: int, setting: str, value: int) -> None:
        if self._axis_settings.get((axis, setting)) != value:
            self.command(axis, f"set {setting} {value}")
            self._axis_settings[(axis, setting)] = value

    def _move_body(self, target_m: tuple[float, float], speed_m_s: float) -> None:
        here = self.position()
        deltas = [abs(t - h) for t, h in zip(target_m, here, strict=True)]
        distance = math.hypot(*deltas)
        self._state = StageState.MOVING
        try:
            for axis, d in enumerate(deltas, start=1):
                if d <= self.microstep_m / 2:
                    continue
                share = d / distance  # both axes end together: the path is a straight line
                speed_units = max(1, round(speed_m_s * share / self.microstep_m * VELOCITY_UNIT))
                accel_units = max(1, round(self._limits.accel_m_s2 * share / self.microstep_m * ACCEL_UNIT))
                self._set_axis(axis, "maxspeed", speed_units)
                self._set_axis(axis, "accel", accel_units)
            for axis, (t, d) in enumerate(zip(target_m, deltas, strict=True), start=1):
                if d > self.microstep_m / 2:
                    self.command(axis, f"move abs {round(t / self.microstep_m)}")
            expected = self._limits.move_time_s(distance, speed_m_s)
            self._wait_idle(1.5 * expected + self.command_timeout_s + 1.0, what="move")
        except StageError as exc:
            self._recover(exc)
            raise
        if self.settle_s:
            time.sleep(self.settle_s)

    def _home_body(self) -> None:
        self.alarm_flag = None
        if self.last_reply is not None and self.last_reply.warning in ALARM_WARNINGS:
            self.command(0, "warnings clear")
        self._state = StageState.HOMING
        try:
            self.command(0, "home")
            self._wait_idle(self.homing_timeout_s, what="home")
        except StageTimeout as exc:
            self._recover(exc)
            self._state = StageState.ALARM
            raise StageTimeout(
                f"{self._where}: homing did not finish within homing_timeout_s={self.homing_timeout_s:g} s; "
                "it was stopped and the stage is not homed: check the stage and its home sensor"
            ) from exc
        except StageError as exc:
            self._recover(exc)
            raise
        reply = self.command(0, "warnings")
        if "WR" in reply.data.split()[1:]:
            self._state = StageState.ALARM
            raise StageNotHomed(f"{self._where}: homing ended without a reference position (WR still set)")
        self.homed = True
        self._state = StageState.IDLE

    def _wait_idle(self, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._stop_requested.is_set() and what != "stop":
                raise StageError(f"{self._where}: {what} stopped by stop()")
            reply = self.command(0, "")
            if reply.warning in ALARM_WARNINGS:
                flag = reply.warning
                raise StageAlarm(
                    f"{self._where}: {flag} ({ALARM_WARNINGS[flag]}) during {what}; position lost, home() first",
                    code=flag,
                )
            if reply.status == "IDLE":
                return
            if time.monotonic() >= deadline:
                raise StageTimeout(f"{self._where}: {what} not finished within {timeout_s:g} s (still BUSY)")
            time.sleep(self.poll_s)

    def _halt(self) -> None:
        """Decelerate both axes to rest now (``stop``), then wait until idle."""
        self.command(0, "stop")
        self._wait_idle(self.command_timeout_s, what="stop")

    def _rest_after(self, exc: StageError) -> None:
        """After a failed move: stop the axes and learn the state (polled until not BUSY)."""
        self.command(0, "stop")
        deadline = time.monotonic() + self.command_timeout_s
        while self.command(0, "").status == "BUSY" and time.monotonic() < deadline:
            time.sleep(self.poll_s)


__all__ = ["ZaberReply", "ZaberStage", "parse_reply"]
