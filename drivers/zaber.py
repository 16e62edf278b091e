"""Zaber ASCII-protocol XY stage driver (one two-axis controller: X on axis 1, Y on axis 2).

Several controllers may share one cable (a daisy chain, each at its own address). One
``ZaberChain`` (``drivers.zaber_wire``, with the reply parsing and the checksum) owns the port
and serves every address on it: ``ZaberStage`` objects opened on the same port share its chain,
so no stage can read another's replies. Every command carries a
message id that is unique on the chain (``/1 1 07 move abs 1000``) and only the reply from that
address with that id (``@01 1 07 OK BUSY -- 0``) answers it, so a late reply after a timeout is
never taken for the answer to a newer command.

Checksums: every command ends in ``:XX``, the LRC of the bytes between ``/`` and ``:`` (two's
complement of their sum, mod 256), and at start-up each stage sets ``comm.checksum 1`` so its
device appends the same to each reply; a reply whose checksum is wrong or missing raises
``StageError`` (the command's outcome is unknown). Alerts (``!01 1 IDLE --``) are read and noted.

Warning flags (the manual's classes: ``F*`` faults, ``W*`` warnings, ``N*`` notices): every fault
and ``WL`` (unexpected limit) is an alarm that fails the motion and loses the position; ``WR``
means not homed. Before a move, a fault the device shows while idle fails it before anything is
sent, and an ``NI`` left from an earlier interruption is cleared (``warnings clear``). A move ends
by polling until ``IDLE``, then reading each moved axis' warnings: ``NI`` (someone else stopped or
replaced the movement) fails it with ``MoveInterrupted``, and the final position must be within
``position_tol_m`` of the target. ``RJ AGAIN``/``STATUSBUSY`` are sent again with a bounded
backoff. At start-up ``resolution`` and ``limit.min`` are read: a resolution other than the one
``microstep_m`` is for, or a travel that starts above 0, is refused.

An XY move sets each axis' speed and acceleration in proportion to its share of the distance,
so both axes arrive together and the antenna follows the straight line that
``drivers.stage_array`` checked for clearance. Positions in the API are metres; on the wire,
microsteps (``microstep_m`` each).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import serial

from drivers.errors import (
    StageAborted,
    StageAlarm,
    StageCommandError,
    StageError,
    StageNotHomed,
    StageTimeout,
)
from drivers.positioner import StageLimits, StageState
from drivers.serial_link import StageLinkError
from drivers.serial_stage import SerialStage
from drivers.zaber_wire import (
    FAULTS,
    REJECT_REASONS,
    ChainShare,
    ChecksumError,
    ZaberAlert,
    ZaberChain,
    ZaberReply,
    fault_meaning,
    is_fault,
    lrc,
    parse_alert,
    parse_reply,
)

log = logging.getLogger(__name__)

DEFAULT_MICROSTEP_M = 0.047625e-6  # X-LSQ series; pass the stage's own value
# Zaber's default microstep resolution (microsteps per full step), the one DEFAULT_MICROSTEP_M is for
DEFAULT_RESOLUTION = 64
# RJ reasons that mean "not now": the manual says to send the command again
RETRY_REASONS = ("AGAIN", "STATUSBUSY")
RETRY_FIRST_S = (
    0.01  # the first pause before a retry; it doubles, and all of them stay under command_timeout_s
)
VELOCITY_UNIT = 1.6384  # Zaber data units per microstep/s
ACCEL_UNIT = 1.6384 / 10000.0  # Zaber data units per microstep/s^2


class MoveInterrupted(StageAborted):
    """The device reports ``NI``: someone else (a ``stop``, an ``estop``, another move) cut the move short."""

    code = "NI"


class ZaberStage(SerialStage):
    """One antenna on a two-axis Zaber controller (the ``Positioner`` contract).

    See the module docstring for the protocol.

    Parameters
    ----------
    port
        A pyserial URL, an open port, or a ``ZaberChain``; stages on the same port share one chain
        and must have distinct ``address``es.
    limits
        The travel from home (metres), the top speed and the acceleration; the driver refuses any
        move outside them before anything is sent.
    name
        The stage's name in logs and errors (``"<name> on <port>"``).
    address
        The controller's device address on the chain, 1..99.
    microstep_m
        Metres per microstep (the axis' ``resolution`` and lead screw); positions on the wire are
        microsteps.
    resolution
        The microstep resolution ``microstep_m`` is for (the device's ``resolution`` setting, 64
        by default); a device set otherwise is refused at start-up, naming both.
    command_timeout_s
        How long one reply may take.
    homing_timeout_s
        The bound on ``home`` (the device reports busy until it ends).
    settle_s
        Pause after each finished move.
    poll_s
        How often a running motion is polled (``/0`` with no command: status and flags).
    baudrate
        The serial rate (115200 for the ASCII protocol's default).
    checksum
        Send LRC checksums and have the device send them (``comm.checksum 1``); default on.
    position_tol_m
        How far from the target a finished move may end (at least one microstep).
    """

    def __init__(
        self,
        port: str | serial.SerialBase | ZaberChain,
        limits: StageLimits,
        *,
        name: str = "zaber",
        address: int = 1,
        microstep_m: float = DEFAULT_MICROSTEP_M,
        resolution: int = DEFAULT_RESOLUTION,
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
        self.resolution = resolution
        self.poll_s = poll_s
        self.checksum = checksum
        self.position_tol_m = max(position_tol_m, microstep_m)
        self.last_reply: ZaberReply | None = None
        self.last_alert: ZaberAlert | None = None
        self.alarm_flag: str | None = None
        self.device_id: str | None = None
        self.firmware: str | None = None
        self._axis_settings: dict[tuple[int, str], int] = {}
        self._chain = port.acquire() if isinstance(port, ZaberChain) else ZaberChain.shared(port, baudrate)
        self._link = ChainShare(self._chain)  # type: ignore[assignment]  # SerialStage.close() releases it
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
        """Send ``/<address> <axis> <id> <text>[:XX]``; return its reply; raise on RJ, timeout, noise.

        ``RJ AGAIN`` and ``RJ STATUSBUSY`` (the manual: the command cannot be processed right now,
        send it again) are retried after 10, 20, 40 ... ms, for at most ``command_timeout_s``."""
        timeout = self.command_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + self.command_timeout_s
        pause, tries = RETRY_FIRST_S, 1
        while True:
            try:
                return self._command_once(axis, text, timeout)
            except StageCommandError as exc:
                if exc.code not in RETRY_REASONS or time.monotonic() + pause > deadline:
                    if exc.code in RETRY_REASONS:
                        raise StageCommandError(
                            f"{exc} still, after {tries} tries over {self.command_timeout_s:g} s",
                            code=exc.code,
                        ) from exc
                    raise
                log.info(
                    "%s: %r answered RJ %s; sending it again in %.0f ms",
                    self._where,
                    text,
                    exc.code,
                    pause * 1e3,
                )
                time.sleep(pause)
                pause, tries = pause * 2, tries + 1

    def _command_once(self, axis: int, text: str, timeout: float) -> ZaberReply:
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
        self._check_resolution_and_range()
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

    def _check_resolution_and_range(self) -> None:
        """Refuse a device whose microstep is not the config's (limit.max and every move would scale
        with it), or whose travel does not start at or below 0."""
        resolution = self.command(0, "get resolution").data.split()
        for axis, value in zip("XY", resolution, strict=False):
            if int(value) != self.resolution:
                raise StageError(
                    f"{self._where}: the {axis} axis' resolution is {value} microsteps per step, but "
                    f"microstep_m={self.microstep_m:g} m is for resolution={self.resolution}; set the "
                    "device's resolution back, or give the config the microstep_m and resolution it has"
                )
        limit_min = self.command(0, "get limit.min").data.split()
        for axis, value in zip("XY", limit_min, strict=False):
            if int(value) > 0:
                raise StageError(
                    f"{self._where}: the {axis} axis' limit.min={value} microsteps is above 0, so the "
                    "config's travel from 0 starts outside the device's range; set limit.min to 0"
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

    def _flags_before_move(self) -> None:
        """Before a move: a fault the device shows while idle fails it before anything is sent, and
        an ``NI`` left from an earlier interruption is cleared, so that the check after the move
        reads this move's flags. (The reply to ``get pos`` carries the most urgent flag.)"""
        warn = self.last_reply.warning if self.last_reply is not None else "--"
        if warn == "--":
            return
        flags = self.command(0, "warnings").data.split()[1:]
        faults = [f for f in flags if is_fault(f)]
        if faults:
            self._alarm(faults[0])
            raise StageAlarm(
                f"{self._where}: {faults[0]} ({fault_meaning(faults[0])}) found while idle, before the "
                "move; nothing was sent: clear its cause, then home()",
                code=faults[0],
            )
        if "NI" in flags:
            self.command(0, "warnings clear")

    def _move_body(self, target_m: tuple[float, float], speed_m_s: float) -> None:
        here = self.position()
        self._flags_before_move()
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
        if "WR" in flags or "NI" in flags:
            # An interrupted homing never reached the sensor: whatever reference is left is not its.
            self.homed = False
            self._state = StageState.ALARM
            why = "it was interrupted (NI: a stop from someone else?)" if "NI" in flags else "WR still set"
            raise StageNotHomed(f"{self._where}: homing ended without a reference position: {why}")
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


__all__ = [  # the wire names too, so ``from drivers.zaber import parse_reply`` keeps working
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
