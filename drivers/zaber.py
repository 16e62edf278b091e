"""Zaber ASCII-protocol XY stage driver (one two-axis controller: X on axis 1, Y on axis 2).

Several controllers may share one cable (a daisy chain, each at its own address). One
``ZaberChain`` owns the port and serves every address on it: ``ZaberStage`` objects opened on the
same port share its chain, so no stage can read another's replies. Every command carries a
message id that is unique on the chain (``/1 1 07 move abs 1000``) and only the reply from that
address with that id (``@01 1 07 OK BUSY -- 0``) answers it, so a late reply after a timeout is
never taken for the answer to a newer command.

Checksums: every command ends in ``:XX``, the LRC of the bytes between ``/`` and ``:`` (two's
complement of their sum, mod 256), and at start-up each stage sets ``comm.checksum 1`` so its
device appends the same to each reply; a reply whose checksum is wrong or missing raises
``StageError`` (the command's outcome is unknown). Alerts (``!01 1 IDLE --``) are read and noted.

Warning flags (the manual's classes: ``F*`` faults, ``W*`` warnings, ``N*`` notices): every fault
and ``WL`` (unexpected limit) is an alarm that fails the motion and loses the position; ``WR``
means not homed. A move ends by polling until ``IDLE``, then reading each moved axis' warnings:
``NI`` (someone else stopped or replaced the movement) fails it with ``MoveInterrupted``, and the
final position must be within ``position_tol_m`` of the target.

An XY move sets each axis' speed and acceleration in proportion to its share of the distance,
so both axes arrive together and the antenna follows the straight line that
``drivers.stage_array`` checked for clearance. Positions in the API are metres; on the wire,
microsteps (``microstep_m`` each).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import serial

from drivers.errors import StageAlarm, StageCommandError, StageError, StageNotHomed, StageTimeout
from drivers.positioner import StageLimits, StageState
from drivers.serial_link import LineLink, StageLinkError, open_port
from drivers.serial_stage import SerialStage

log = logging.getLogger(__name__)

DEFAULT_MICROSTEP_M = 0.047625e-6  # X-LSQ series; pass the stage's own value
VELOCITY_UNIT = 1.6384  # Zaber data units per microstep/s
ACCEL_UNIT = 1.6384 / 10000.0  # Zaber data units per microstep/s^2
MAX_MESSAGE_ID = 99
FAULTS = {
    "FF": "critical system error",
    "FN": "peripheral not supported",
    "FZ": "peripheral inactive",
    "FH": "hardware emergency stop, driver disabled",
    "FV": "overvoltage or undervoltage, driver disabled",
    "FO": "driver disabled on start-up or by command",
    "FC": "current inrush error",
    "FM": "motor temperature error",
    "FD": "driver disabled",
    "FQ": "encoder error",
    "FI": "index error",
    "FA": "analog encoder sync error",
    "FR": "overdrive limit exceeded",
    "FS": "stalled and stopped",
    "FB": "stream bounds error",
    "FP": "interpolated path deviation",
    "FE": "limit error",
    "FT": "excessive twist",
    "WL": "unexpected limit trigger",
}
REJECT_REASONS = {
    "AGAIN": "the command cannot run now; send it again",
    "BADAXIS": "the command needs an axis (or that axis does not exist)",
    "BADCOMMAND": "the command or setting is not known",
    "BADDATA": "a value is out of range or malformed",
    "BADMESSAGEID": "the message id is not 0..99",
    "DEVICEONLY": "the command must go to the device (axis 0)",
    "FULL": "the device's buffer is full",
    "LOCKSTEP": "the axis is in lockstep; move the lockstep group instead",
    "NOACCESS": "the command needs a higher access level",
    "PARKED": "the device is parked; unpark it first",
    "STATUSBUSY": "the device is busy",
}


def is_fault(flag: str) -> bool:
    """True for a flag that stops motion and loses the position: every ``F*`` fault, and ``WL``."""
    return len(flag) == 2 and (flag[0] == "F" or flag == "WL")


def fault_meaning(flag: str) -> str:
    return FAULTS.get(flag, "a fault; see the Zaber ASCII manual")


def lrc(text: str) -> str:
    """The checksum of ``text`` (the bytes between ``/``, ``@`` or ``!`` and ``:``), two hex digits."""
    return f"{-sum(text.encode('ascii', errors='replace')) & 0xFF:02X}"


class ChecksumError(ValueError):
    """A line's ``:XX`` does not match its content."""


class MoveInterrupted(StageError):
    """The device reports ``NI``: someone else (a ``stop``, an ``estop``, another move) cut the move short."""

    code = "NI"


@dataclass(frozen=True)
class ZaberReply:
    address: int
    axis: int
    message_id: int | None
    flag: str  # OK / RJ
    status: str  # IDLE / BUSY
    warning: str  # most urgent flag, or "--"
    data: str
    checksummed: bool = False  # the line carried a (valid) checksum


@dataclass(frozen=True)
class ZaberAlert:
    address: int
    axis: int
    status: str
    warning: str
    data: str
    checksummed: bool = False


def _unframe(line: str, marker: str) -> tuple[str, bool]:
    """The text of a ``marker`` line without marker and checksum, and whether it had one (verified)."""
    if not line.startswith(marker):
        raise ValueError(f"not a Zaber {'reply' if marker == '@' else 'alert'}: {line!r}")
    body = line[1:]
    if ":" not in body:
        return body, False
    body, checksum = body.rsplit(":", 1)
    if checksum.upper() != lrc(body):
        raise ChecksumError(f"checksum :{checksum} does not match its line (expected :{lrc(body)})")
    return body, True


def parse_reply(line: str) -> ZaberReply:
    """Parse ``@01 1 07 OK BUSY -- 0[:XX]``; raise ``ChecksumError`` on a bad checksum, ValueError if not a reply."""
    body, checksummed = _unframe(line, "@")
    tokens = body.split()
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
    return ZaberReply(address, axis, message_id, flag, status, warning, " ".join(rest[3:]), checksummed)


def parse_alert(line: str) -> ZaberAlert:
    """Parse ``!01 1 IDLE --[ data][:XX]``; raise ``ChecksumError`` or ValueError like ``parse_reply``."""
    body, checksummed = _unframe(line, "!")
    tokens = body.split()
    try:
        address, axis, status, warning = int(tokens[0]), int(tokens[1]), tokens[2], tokens[3]
    except (ValueError, IndexError):
        raise ValueError(f"malformed Zaber alert: {line!r}") from None
    if status not in ("IDLE", "BUSY") or len(warning) != 2:
        raise ValueError(f"malformed Zaber alert: {line!r}")
    return ZaberAlert(address, axis, status, warning, " ".join(tokens[4:]), checksummed)


class ZaberChain:
    """The owner of one serial port and every Zaber device on it (a daisy chain).

    ``ZaberChain.shared(port)`` returns the chain already open on ``port`` (the same URL string,
    or the same port object) or opens it; each user calls ``release()`` once, and the last one
    closes the port. ``request`` runs one command/reply round trip at a time under the chain's
    lock, with message ids unique on the chain, so stages at different addresses can poll and
    move concurrently. Alerts are handed to the listener registered for their address.
    """

    _registry: dict[str, ZaberChain] = {}
    _registry_lock = threading.Lock()

    def __init__(self, port: str | serial.SerialBase, baudrate: int = 115200) -> None:
        self.portstr = port if isinstance(port, str) else str(getattr(port, "portstr", None) or port)
        self.link = LineLink(open_port(port, baudrate=baudrate), name=self.portstr)
        self.dead = False  # the link failed: the next ``shared`` opens the port afresh
        self.checksummed: set[int] = set()  # addresses whose replies must carry a checksum
        self.alerts: deque[ZaberAlert] = deque(maxlen=100)
        self._listeners: dict[int, Callable[[ZaberAlert], None]] = {}
        self._lock = threading.Lock()
        self._next_id = 0
        self._users = 0
        self._key: str | None = None

    @classmethod
    def shared(cls, port: str | serial.SerialBase, baudrate: int = 115200) -> ZaberChain:
        key = port if isinstance(port, str) else f"<port object {id(port):#x}>"
        with cls._registry_lock:
            chain = cls._registry.get(key)
            if chain is None or chain.dead or chain.link.closed:
                chain = cls(port, baudrate)
                chain._key = key
                cls._registry[key] = chain
            chain._users += 1
            return chain

    def release(self) -> None:
        """One user is done; the last closes the port."""
        with self._registry_lock:
            self._users -= 1
            if self._users > 0:
                return
            if self._key is not None and self._registry.get(self._key) is self:
                del self._registry[self._key]
        self.link.close()

    def attach(self, address: int, on_alert: Callable[[ZaberAlert], None], who: str) -> bool:
        """Register the stage at ``address``; return True if it is the chain's first user."""
        with self._lock:
            if address in self._listeners:
                raise StageError(
                    f"{who}: address {address} on {self.portstr} is already served by another open stage; "
                    "close it first, or give each stage its own zaber_address"
                )
            self._listeners[address] = on_alert
            return len(self._listeners) == 1

    def detach(self, address: int) -> None:
        with self._lock:
            self._listeners.pop(address, None)

    def clear_input(self) -> None:
        with self._lock:
            self.link.clear_input()

    def request(
        self,
        address: int,
        axis: int,
        text: str,
        timeout_s: float,
        who: str,
        checksum: bool = True,
        on_sent: Callable[[str], None] | None = None,
    ) -> tuple[ZaberReply, list[str]]:
        """Send ``/<address> <axis> <id> <text>[:XX]``; return its reply and any garbled lines seen."""
        with self._lock:
            self._next_id = (self._next_id + 1) % (MAX_MESSAGE_ID + 1)
            msg_id = self._next_id
            body = f"{address} {axis} {msg_id:02d} {text}".rstrip()
            line = f"/{body}:{lrc(body)}" if checksum else f"/{body}"
            if on_sent is not None:
                on_sent(line)
            garbage: list[str] = []
            try:
                self.link.write_line(line)
                deadline = time.monotonic() + timeout_s
                while True:
                    left = deadline - time.monotonic()
                    raw = self.link.read_line(max(0.0, left)) if left > 0 else None
                    if raw is None:
                        raise StageTimeout(f"{who}: no reply to {line!r} within {timeout_s:g} s")
                    reply = self._classify(raw, line, who, garbage)
                    if reply is not None and reply.address == address and reply.message_id == msg_id:
                        return reply, garbage
            except StageLinkError:
                self.dead = True
                raise

    def _classify(self, raw: str, line: str, who: str, garbage: list[str]) -> ZaberReply | None:
        """A reply, or None after dealing with an info line, an alert or noise."""
        if not raw.strip() or raw.startswith("#"):
            return None  # info lines: not replies
        try:
            if raw.startswith("!"):
                self._alert(parse_alert(raw))
                return None
            reply = parse_reply(raw)
        except ChecksumError as exc:
            raise StageError(
                f"{who}: line {raw!r} while waiting for the reply to {line!r} fails its checksum ({exc}); "
                "the link is noisy: the command's outcome is unknown"
            ) from None
        except ValueError:
            log.warning("%s: garbled line %r", who, raw)
            garbage.append(raw)
            return None
        if reply.address in self.checksummed and not reply.checksummed:
            raise StageError(
                f"{who}: reply {raw!r} to {line!r} carries no checksum although comm.checksum is 1; "
                "the link is noisy or the device was reconfigured"
            )
        return reply

    def _alert(self, alert: ZaberAlert) -> None:
        if alert.address in self.checksummed and not alert.checksummed:
            log.warning("%s: alert %r without a checksum: ignored", self.portstr, alert)
            return
        self.alerts.append(alert)
        listener = self._listeners.get(alert.address)
        if listener is not None:
            listener(alert)


class _ChainHandle:
    """What ``SerialStage`` calls ``_link``: closing it releases the stage's share of the chain."""

    def __init__(self, chain: ZaberChain) -> None:
        self.chain = chain
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.chain.release()


class ZaberStage(SerialStage):
    """One antenna on a two-axis Zaber controller (the ``Positioner`` contract).

    ``port`` is a pyserial URL, an open port, or a ``ZaberChain``; stages on the same port share
    one chain and must have distinct ``address``es. ``checksum`` (default on) sends LRC checksums
    and has the device send them (``comm.checksum 1``). ``position_tol_m`` is how far from the
    target a finished move may end. See the module docstring for the protocol.
    """

    def __init__(
        self,
        port: str | serial.SerialBase | ZaberChain,
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
        checksum: bool = True,
        position_tol_m: float = 1e-6,
    ) -> None:
        if not 1 <= address <= 99:
            raise ValueError(f"Zaber address must be 1..99 (got {address})")
        if not position_tol_m > 0:
            raise ValueError(f"position_tol_m must be > 0 m (got {position_tol_m!r})")
        super().__init__(port, limits, name, command_timeout_s, homing_timeout_s, settle_s)
        self.address = address
        self.microstep_m = microstep_m
        self.poll_s = poll_s
        self.checksum = checksum
        self.position_tol_m = max(position_tol_m, microstep_m)
        self.last_reply: ZaberReply | None = None
        self.last_alert: ZaberAlert | None = None
        self.alarm_flag: str | None = None
        self.device_id: str | None = None
        self.firmware: str | None = None
        self._axis_settings: dict[tuple[int, str], int] = {}
        self._chain = port if isinstance(port, ZaberChain) else ZaberChain.shared(port, baudrate)
        if isinstance(port, ZaberChain):
            port._users += 1  # released by close() like a shared one
        self._link = _ChainHandle(self._chain)  # type: ignore[assignment]  # SerialStage closes it
        try:
            first = self._chain.attach(address, self._on_alert, self._where)
        except BaseException:
            self._link.close()
            raise
        try:
            self._startup(first)
        except BaseException:
            self.close()
            raise

    @property
    def chain(self) -> ZaberChain:
        return self._chain

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
        """Send ``/<address> <axis> <id> <text>[:XX]``; return its reply; raise on RJ, timeout, noise."""
        timeout = self.command_timeout_s if timeout_s is None else timeout_s
        if self._state == StageState.DISCONNECTED or self._chain.dead:
            self._state = StageState.DISCONNECTED
            raise StageLinkError(
                f"{self._where}: link lost; reopen the stage (last command {self.last_command!r})"
            )
        try:
            reply, garbage = self._chain.request(
                self.address, axis, text, timeout, self._where, self.checksum, self._sent
            )
        except StageLinkError:
            self._state = StageState.DISCONNECTED
            raise
        line = self.last_command
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

    def _sent(self, line: str) -> None:
        self.last_command = line

    def _alarm(self, flag: str) -> None:
        self.alarm_flag = flag
        self.homed = False
        self._state = StageState.ALARM

    def _note(self, reply: ZaberReply) -> None:
        """Update state from a reply's status and warning flag (a fault on any axis is the stage's)."""
        if is_fault(reply.warning):
            self._alarm(reply.warning)
        elif reply.axis != 0:
            return  # an axis reply speaks for one axis only
        elif reply.status == "BUSY":
            self._state = StageState.HOMING if self._state == StageState.HOMING else StageState.MOVING
        elif reply.warning == "WR":
            self.homed = False
            self._state = StageState.ALARM
        elif self._state != StageState.ALARM or self.homed:
            self._state = StageState.IDLE

    def _on_alert(self, alert: ZaberAlert) -> None:
        """An alert from this stage's device (read by whichever stage on the chain was listening)."""
        self.last_alert = alert
        if is_fault(alert.warning):
            log.warning("%s: alert %s on axis %d", self._where, alert.warning, alert.axis)
            self._alarm(alert.warning)

    def _startup(self, first_on_chain: bool) -> None:
        if first_on_chain:
            self._chain.clear_input()  # stale bytes from before we opened the port
        if self.checksum:
            try:
                self.command(0, "set comm.checksum 1")
            except StageCommandError as exc:
                raise StageError(
                    f"{self._where}: the device refused 'set comm.checksum 1' ({exc.code}); "
                    "its firmware may not support checksums: open the stage with checksum=False"
                ) from exc
            self._chain.checksummed.add(self.address)
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
        faults = [w for w in warnings if is_fault(w)]
        if faults:
            self._alarm(faults[0])
        else:
            self._state = StageState.IDLE if self.homed else StageState.ALARM
        log.info(
            "%s: Zaber device %s firmware %s at address %d, warnings %s",
            self._where,
            self.device_id,
            self.firmware,
            self.address,
            warnings,
        )

    def _on_close(self) -> None:
        self._chain.detach(self.address)

    # --- motion --------------------------------------------------------------------------------
    def _check_ready(self) -> None:
        if self._state == StageState.DISCONNECTED:
            raise StageLinkError(f"{self._where}: link lost; reopen the stage")
        if self.alarm_flag:
            raise StageNotHomed(
                f"{self._where}: fault {self.alarm_flag} ({fault_meaning(self.alarm_flag)}): position lost; "
                "clear its cause, then home()"
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
        moved = [axis for axis, d in enumerate(deltas, start=1) if d > self.microstep_m / 2]
        self._state = StageState.MOVING
        try:
            for axis in moved:
                share = deltas[axis - 1] / distance  # both axes end together: the path is a straight line
                speed_units = max(1, round(speed_m_s * share / self.microstep_m * VELOCITY_UNIT))
                accel_units = max(1, round(self._limits.accel_m_s2 * share / self.microstep_m * ACCEL_UNIT))
                self._set_axis(axis, "maxspeed", speed_units)
                self._set_axis(axis, "accel", accel_units)
            for axis in moved:
                self.command(axis, f"move abs {round(target_m[axis - 1] / self.microstep_m)}")
            expected = self._limits.move_time_s(distance, speed_m_s)
            self._wait_idle(1.5 * expected + self.command_timeout_s + 1.0, what="move")
            self._check_arrival(target_m, moved)
        except MoveInterrupted:
            raise  # the stage is at rest where someone else stopped it: nothing to recover
        except StageError as exc:
            self._recover(exc)
            raise
        if self.settle_s:
            time.sleep(self.settle_s)

    def _check_arrival(self, target_m: tuple[float, float], moved: list[int]) -> None:
        """After a move went idle: no fault, no ``NI`` on a moved axis, and the position is the target."""
        interrupted = False
        for axis in moved:
            flags = self.command(axis, "warnings").data.split()[1:]
            faults = [f for f in flags if is_fault(f)]
            if faults:
                self._alarm(faults[0])
                raise StageAlarm(
                    f"{self._where}: {faults[0]} ({fault_meaning(faults[0])}) on axis {axis} during the move; "
                    "position lost, home() first",
                    code=faults[0],
                )
            interrupted |= "NI" in flags
        x, y = self.position()
        off_m = math.hypot(x - target_m[0], y - target_m[1])
        where = f"ended at ({x:.6f}, {y:.6f}) m, {off_m * 1e3:.3f} mm from the target ({target_m[0]:.6f}, {target_m[1]:.6f}) m"
        if self._stop_requested.is_set():
            raise StageError(f"{self._where}: move stopped by stop(); {where}")
        if interrupted:
            raise MoveInterrupted(
                f"{self._where}: move interrupted (NI: a stop, estop or another move from someone else); {where}"
            )
        if off_m > self.position_tol_m:
            raise StageError(
                f"{self._where}: move {where}, more than position_tol_m={self.position_tol_m:g} m"
            )

    def _home_body(self) -> None:
        had_fault = self.alarm_flag is not None or (
            self.last_reply is not None and is_fault(self.last_reply.warning)
        )
        self.alarm_flag = None
        if had_fault:
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
        flags = self.command(0, "warnings").data.split()[1:]
        faults = [f for f in flags if is_fault(f)]
        if faults:
            self._alarm(faults[0])
            raise StageAlarm(
                f"{self._where}: {faults[0]} ({fault_meaning(faults[0])}) after homing; clear its cause first",
                code=faults[0],
            )
        if "WR" in flags:
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
            if is_fault(reply.warning):
                flag = reply.warning
                raise StageAlarm(
                    f"{self._where}: {flag} ({fault_meaning(flag)}) during {what}; position lost, home() first",
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


__all__ = [
    "FAULTS",
    "ChecksumError",
    "MoveInterrupted",
    "ZaberAlert",
    "ZaberChain",
    "ZaberReply",
    "ZaberStage",
    "is_fault",
    "lrc",
    "parse_alert",
    "parse_reply",
]
