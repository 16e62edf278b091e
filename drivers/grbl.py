"""GRBL 1.1 XY stage driver over any pyserial URL: the stage on top of the wire protocol
(``drivers.grbl_wire``: code tables, status reports, the line discipline).

- Opening a port resets an Arduino, so we wait for the ``Grbl 1.1x ['$' for help]`` banner (and
  send a soft reset if it does not come), then read ``$$`` and check it against the config.
- ``ok`` only means *queued*: completion comes from a following ``G4 P0.01`` (GRBL answers it once
  the planner is empty), with ``?`` status polling at most every ``status_poll_s`` (>= 0.2 s, i.e.
  <= 5 Hz) as a watchdog.
- ``stop()``: feed hold, wait for ``Hold:0`` (brakes without losing steps), then soft reset to
  flush the planner; the position is kept. Any timeout or garbled reply ends the same way, so
  the link is back in step (everything before the new banner is discarded).
- A motion is done when its ``G4 P0.01`` is answered *and* a final status report shows Idle at the
  target. GRBL also answers the held line with ``ok`` when a reset cuts the motion short (with an
  ``ALARM:3`` before or after it, then the banner), so an ``ok`` alone is never taken as success:
  a reset, an alarm or ``stop()`` during a motion raises ``StageAborted``/``StageAlarm``.
- ``$H`` is silent (no status reports, ``?`` ignored) until it ends with ``ok`` or ``ALARM:8/9`` plus
  an automatic reset, so it is bounded by ``homing_timeout_s`` alone. In ``ALARM:1/2`` GRBL ignores
  ``?`` too: ``position()`` raises the alarm instead of waiting.

Positions in the API are metres in the stage frame: from 0 where homing leaves the carriage into
the travel (``StageLimits.travel_m``, at most ``$13x - $27``). On the wire they are mm (G21) in
GRBL's machine frame, mapped per axis by ``machine_frame()`` from ``$23``, ``$27``, ``$13x`` and the
``$I`` build options (stock GRBL homes to the positive end and sets ``-$27`` there; its travel is
``[-$130, 0]``). Moves are sent with ``G53`` (machine coordinates), so work offsets (G54..G59,
G92) are left alone and never shift a target.
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
from drivers.grbl_frame import AxisFrame, machine_frame
from drivers.grbl_wire import (
    ALARMS_LOSING_POSITION,
    BOOT_TIMEOUT_S,
    GRBL_ALARMS,
    GRBL_ERRORS,
    HOMING_RESET_ALARMS,
    MIN_STATUS_POLL_S,
    POSITION_TOL_MM,
    RT_HOLD,
    RT_JOG_CANCEL,
    RT_RESUME,
    RT_STATUS,
    GrblStatus,
    GrblWire,
    describe_alarm,
    describe_error,
    fmt_mm,
    parse_setting,
    parse_status,
)
from drivers.positioner import StageLimits, StageState
from drivers.serial_link import StageLinkError

log = logging.getLogger(__name__)

# How long to listen for a banner after opening before asking '?' (a board that reset prints it at
# once if it was an emulator, or after its 1-2 s bootloader, which a '?' does not disturb).
OPEN_GRACE_S = 0.25


class GrblStage(GrblWire):
    """One antenna on one GRBL-driven XY stage (the ``Positioner`` contract).

    G-code lines and real-time bytes over the link, completion from ``G4 P0.01`` checked against a
    final status report (see the module docstring); the contract's plumbing is ``SerialStage``'s.

    Parameters
    ----------
    port
        A pyserial URL (``/dev/ttyUSB0``, ``socket://host:port``, ``grbl-sim://name``) or an open
        port.
    limits
        The travel from the homed corner (metres), the top speed and the acceleration; the driver
        refuses any move outside them before anything is sent.
    name
        The stage's name in logs and errors (``"<name> on <port>"``).
    command_timeout_s
        How long one reply may take (``ok``, a status report, the banner after a reset).
    homing_timeout_s
        The one bound on ``$H``: GRBL sends nothing until homing ends.
    settle_s
        Pause after each finished move (lets the mechanics ring down before a measurement).
    status_poll_s
        The watchdog's ``?`` period while a motion runs; at least 0.2 s (GRBL: <= 5 Hz).
    boot_timeout_s
        How long to wait for the banner after opening (an Arduino's bootloader takes 1-2 s);
        without one a soft reset is sent.
    check_settings
        Compare ``$$`` with ``limits`` at start-up, and refuse a stage whose firmware travel or
        max rate is smaller than the config's.
    """

    def __init__(
        self,
        port: str | serial.SerialBase,
        limits: StageLimits,
        *,
        name: str = "grbl",
        command_timeout_s: float = 2.0,
        homing_timeout_s: float = 120.0,
        settle_s: float = 0.0,
        status_poll_s: float = MIN_STATUS_POLL_S,
        boot_timeout_s: float = BOOT_TIMEOUT_S,
        check_settings: bool = True,
    ) -> None:
        if status_poll_s < MIN_STATUS_POLL_S:
            raise ValueError(
                f"status_poll_s must be >= {MIN_STATUS_POLL_S} s (GRBL: <= 5 Hz), got {status_poll_s}"
            )
        super().__init__(port, limits, name, command_timeout_s, homing_timeout_s, settle_s)
        self._init_wire()
        self.status_poll_s = status_poll_s
        self._frame = (AxisFrame(0.0, 1.0, 0.0), AxisFrame(0.0, 1.0, 0.0))  # set from $$ and $I at start-up
        self._here_mm: tuple[float, float] | None = None  # machine mm where the last motion ended
        self._basis = ""  # what established the position (see position_basis)
        self.reset_at_open = False  # the controller rebooted when the port opened (banner unasked)
        self._open(port, lambda: self._startup(boot_timeout_s, check_settings))

    # --- frames ---------------------------------------------------------------------------------
    @property
    def force_origin(self) -> bool:
        """HOMING_FORCE_SET_ORIGIN built in (``Z`` among ``$I``'s options)."""
        return "Z" in self.build_options

    def to_machine_mm(self, xy_m: tuple[float, float]) -> tuple[float, float]:
        """Stage metres -> GRBL machine mm (``G53``)."""
        return self._frame[0].machine(xy_m[0] * 1e3), self._frame[1].machine(xy_m[1] * 1e3)

    def to_stage_m(self, machine_mm: tuple[float, ...]) -> tuple[float, float]:
        """GRBL machine mm -> stage metres."""
        return self._frame[0].stage(machine_mm[0]) / 1e3, self._frame[1].stage(machine_mm[1]) / 1e3

    # --- Positioner contract (the rest is SerialStage's) ----------------------------------------
    def position(self) -> tuple[float, float]:
        """Where the stage is (metres, stage frame). Raises ``StageNotHomed`` while the position is
        not established; ``count_position()`` reads GRBL's count regardless."""
        xy = self.count_position()
        if not self.homed:
            raise StageNotHomed(
                f"{self._where}: position unknown (not established since power-up or the last alarm that "
                f"lost it); GRBL's count reads ({xy[0]:.4f}, {xy[1]:.4f}) m, counted from wherever it "
                f"woke up; {self._establish_hint()}"
            )
        return xy

    def count_position(self) -> tuple[float, float]:
        """GRBL's position count in stage metres, established or not (``position_basis``). Until it
        is, it counts from wherever the controller woke up, which need not be stage 0."""
        report = self.query_status()
        pos = report.machine_pos_mm(self._wco)
        if pos is None:
            raise StageError(f"{self._where}: status report carried no position")
        return self.to_stage_m(pos)

    @property
    def position_basis(self) -> str | None:
        """What established the position (homing, or the operator's word); None while unknown."""
        return self._basis if self.homed else None

    def accept_position(self, note: str) -> tuple[float, float]:
        """Without homing switches (``$22=0``): take GRBL's count as the true position, on the
        operator's word, and return it.

        The rule: without switches nothing in the controller can establish the position. At
        power-up GRBL counts from wherever the carriage was, and an alarm that stopped motion
        (``ALARM:1``, ``3``) may have lost steps; the driver then refuses moves until the operator
        has checked the carriage and says so here. ``note`` records what was checked ("carriage
        placed at the stage origin"); it is logged at WARNING and kept in ``position_basis``. An
        alarm is unlocked first (``$X``). With switches (``$22=1``) this is refused: ``home()``
        establishes the position.
        """
        if self.settings.get(22):
            raise StageCommandError(
                f"{self._where}: homing is enabled ($22=1): home() establishes the position; "
                "accept_position() is for stages without homing switches"
            )
        if not note.strip():
            raise ValueError("accept_position(note): note must say what the operator checked, got ''")
        if self._state == StageState.ALARM:
            self.unlock()
        xy = self.count_position()
        self.homed = True
        self.alarm_code = None
        self._basis = f"operator's word at count ({xy[0]:.4f}, {xy[1]:.4f}) m: {note.strip()}"
        log.warning("%s: position accepted on the operator's word: %s", self._where, self._basis)
        return xy

    def _establish_hint(self) -> str:
        if self.settings.get(22):
            return "home() first"
        return (
            "no homing switches ($22=0): check where the carriage is, then accept_position(note) "
            "takes the count on your word"
        )

    def _on_close(self) -> None:
        with self._status_cond:
            self._status_cond.notify_all()

    # --- more GRBL commands ---------------------------------------------------------------------
    def unlock(self) -> None:
        """``$X``: leave the alarm state without homing (only where the position was retained)."""
        self._ensure_not_critical()
        self.command("$X")
        self.alarm_code = None
        self._refresh_state()

    def jog(self, dxy_m: tuple[float, float], speed_m_s: float) -> None:
        """Relative jog (``$J=G91 ...``), checked against the soft limits first; returns when queued."""
        here = self.position()
        target = (here[0] + dxy_m[0], here[1] + dxy_m[1])
        self._check_target(target, speed_m_s)
        feed = speed_m_s * 60_000.0
        dx, dy = (f.sign * d * 1e3 for f, d in zip(self._frame, dxy_m, strict=True))
        self.command(f"$J=G91 G21 X{fmt_mm(dx)} Y{fmt_mm(dy)} F{feed:.1f}")
        self._state = StageState.MOVING

    def jog_cancel(self) -> None:
        self._link.write_raw(RT_JOG_CANCEL)

    def feed_hold(self) -> None:
        self._link.write_raw(RT_HOLD)

    def resume(self) -> None:
        self._link.write_raw(RT_RESUME)

    def _startup(self, boot_timeout_s: float, check: bool) -> None:
        # A board that resets on open (Arduino DTR) boots and prints its banner; one that did not
        # (DTR held low, socket://) answers '?' at once. A '?' lost in the bootloader is harmless.
        grace = min(OPEN_GRACE_S, boot_timeout_s)
        if not self._wait_banner(0, grace, raise_=False):
            try:
                self._link.write_raw(RT_STATUS)
                self._pump(lambda: self._banner_seq > 0 or self._status_seq > 0, boot_timeout_s - grace)
            except StageLinkError:
                raise self._lost_at_banner() from None
        self.reset_at_open = self._banner_seq > 0
        if not self.reset_at_open:
            # Running since before we opened: a soft reset flushes whatever an earlier program left
            # in its buffers and keeps the position (and the Alarm state, if any).
            self.soft_reset()
        for line in self._command("$$", self.command_timeout_s):
            parsed = parse_setting(line)
            if parsed:
                self.settings[parsed[0]] = parsed[1]
        for line in self._command("$I", self.command_timeout_s):
            if line.startswith("[OPT:"):
                self.build_options = line[5:-1].split(",")[0]
        self._frame = (machine_frame(self.settings, self.force_origin, 0),
                       machine_frame(self.settings, self.force_origin, 1))  # fmt: skip
        self._refresh_state()
        # GRBL with homing on is Idle only after $H (or a deliberate $X); without homing it counts
        # from wherever it woke up, and nothing better exists.
        # Without homing ($22=0) only the operator's word establishes it (accept_position).
        self.homed = self._state != StageState.ALARM and bool(self.settings.get(22))
        if self.homed:
            self._basis = "controller Idle at open, so homed before (homing is on: it powers up in Alarm)"
        if check:
            self._check_settings()

    def _check_settings(self) -> None:
        s, where = self.settings, self._where
        missing = [k for k in (13, 110, 111, 130, 131) if k not in s]
        if missing:
            raise StageError(f"{where}: $$ did not list settings {missing}; is this GRBL 1.1?")
        if s[13]:
            raise StageError(f"{where}: $13=1 reports inches; set $13=0 (mm) for this driver")
        for axis, key in (("X", 130), ("Y", 131)):
            need_mm = self._limits.travel_m[0 if axis == "X" else 1] * 1e3
            room_mm = self._frame[0 if axis == "X" else 1].room_mm
            if need_mm > room_mm + 1e-6:  # $13x bounds the soft limits and the homing search
                raise StageError(
                    f"{where}: config travel_m={need_mm / 1e3:g} m exceeds the firmware's {axis} travel "
                    f"from home, ${key}={s[key]:g} mm less the pull-off $27={s.get(27, 0.0):g} mm "
                    f"(= {room_mm:g} mm); lower travel_m or raise ${key}"
                )
        for axis, key in (("X", 110), ("Y", 111)):
            rate_mm_min = self._limits.max_speed_m_s * 60_000.0
            if rate_mm_min > s[key] + 1e-6:
                raise StageError(
                    f"{where}: config max_speed_m_s={self._limits.max_speed_m_s:g} exceeds the firmware's "
                    f"{axis} max rate ${key}={s[key]:g} mm/min; lower max_speed_m_s or raise ${key}"
                )
        for axis, steps, rate in (("X", 100, 110), ("Y", 101, 111)):
            if steps in s and s[steps] * s[rate] / 60.0 > 30_000:
                log.warning("%s: %s needs %.0f steps/s at $%d; GRBL tops out near 30 kHz", where, axis,
                            s[steps] * s[rate] / 60.0, rate)  # fmt: skip
        if not s.get(22):
            log.warning(
                "%s: homing is disabled ($22=0): GRBL counts from where it woke up; the position is "
                "unknown until accept_position(note)",
                where,
            )
        if not s.get(20):
            log.info("%s: firmware soft limits are off ($20=0); the driver enforces travel_m itself", where)

    def _refresh_state(self) -> None:
        try:
            self.query_status()
        except StageTimeout:
            self._state = StageState.UNKNOWN
            raise

    def _ensure_not_critical(self) -> None:
        if self._critical:
            self.soft_reset()

    # --- motion ------------------------------------------------------------------------------
    def _check_target(self, xy_m: tuple[float, float], speed_m_s: float) -> None:
        self._limits.check_move(xy_m, speed_m_s, self.name)

    def _plan_move(self, xy_m: tuple[float, float], speed_m_s: float | None) -> tuple[str, float, float]:
        speed = self._limits.max_speed_m_s if speed_m_s is None else float(speed_m_s)
        self._check_target(xy_m, speed)
        self._check_ready()
        x_mm, y_mm = self.to_machine_mm(xy_m)
        # G53: machine coordinates, so no work offset (G54..G59, G92, set by anyone) moves the target.
        line = f"G21 G53 G1 X{fmt_mm(x_mm)} Y{fmt_mm(y_mm)} F{speed * 60_000.0:.1f}"
        # For the completion timeout only: from where we last knew we were, else the worst case.
        here = self._here_mm
        worst = math.hypot(*(t * 1e3 for t in self._limits.travel_m))
        distance = math.dist(here, (x_mm, y_mm)) if here is not None else worst
        return line, distance, speed

    def _check_ready(self) -> None:
        if self._state == StageState.DISCONNECTED:
            raise StageLinkError(f"{self._where}: link lost; reopen the stage")
        if not self.homed:
            raise StageNotHomed(
                f"{self._where}: position unknown (not established since power-up or the last alarm "
                f"that lost it); {self._establish_hint()}"
            )
        if self._state == StageState.ALARM:
            raise StageAlarm(
                f"{self._where}: in alarm "
                f"({describe_alarm(self.alarm_code) if self.alarm_code else 'locked'}); unlock() or home() first",
                code=self.alarm_code,
            )

    def _move_job(self, xy_m: tuple[float, float], speed_m_s: float | None) -> Callable[[], None]:
        line, distance_mm, speed = self._plan_move(xy_m, speed_m_s)
        target_mm = self.to_machine_mm(xy_m)
        return lambda: self._move_body(line, distance_mm, speed, target_mm)

    def _move_body(
        self, line: str, distance_mm: float, speed_m_s: float, target_mm: tuple[float, float]
    ) -> None:
        self._state = StageState.MOVING
        model_s = self._limits.move_time_s(distance_mm / 1e3, speed_m_s)
        resets, alarms = self._banner_seq, self._alarm_seq
        try:
            self._command(line, self.command_timeout_s)
            # ok = queued; G4 P0.01's ok comes once the planner has run dry, i.e. the move is done,
            # or once a reset cut it short: GRBL answers the line it was holding either way.
            self._here_mm = None  # somewhere on the way until the move is done
            self._command("G4 P0.01", 1.5 * model_s + self.command_timeout_s + 1.0, watchdog=True)
            self._confirm_rest(f"move to {line.split('G1 ')[1]}", resets, alarms, target_mm)
        except StageAborted as exc:
            if self._banner_seq == resets and self._state in (StageState.MOVING, StageState.HOLD):
                self._recover(exc)  # no reset has stopped it: bring it to rest
            raise
        except StageAlarm as exc:
            self._await_reset_after_alarm(resets)
            self._recover(exc)
            raise
        except StageError as exc:
            self._recover(exc)
            raise
        if self.settle_s:
            time.sleep(self.settle_s)
        self._state = StageState.IDLE

    def _confirm_rest(
        self, what: str, resets: int, alarms: int, target_mm: tuple[float, float] | None
    ) -> GrblStatus:
        """After the ``ok`` that ends a motion: a reset, an alarm or stop() since it began, or a
        final status away from the target, means it did not finish (GRBL answers the held line's
        ``ok`` on reset too, before or after its ALARM:3)."""
        report: GrblStatus | None = None
        if not self._stop_requested.is_set() and self._banner_seq == resets and self._alarm_seq == alarms:
            seq = self._status_seq
            self._link.write_raw(RT_STATUS)
            self._pump(
                lambda: self._status_seq > seq or self._banner_seq > resets or self._alarm_seq > alarms,
                self.command_timeout_s,
            )
            report = self.last_status if self._status_seq > seq else None
        if self._alarm_seq > alarms and self.alarm_code is not None:
            code = self.alarm_code
            self._await_reset_after_alarm(resets)
            self._note_position()
            raise StageAlarm(f"{self._where}: {what} interrupted: {describe_alarm(code)}", code=code)
        if self._stop_requested.is_set():  # stop() brakes, resets and reads the position itself
            raise StageAborted(f"{self._where}: {what} cut short by stop(); it did not reach its target")
        if self._banner_seq > resets:
            self._note_position()
            raise StageAborted(
                f"{self._where}: {what} cut short by a controller reset; {self._state_words()}"
            )
        if report is None:
            raise StageTimeout(
                f"{self._where}: no status report within {self.command_timeout_s:g} s after {what}"
            )
        pos = report.machine_pos_mm(self._wco)
        if pos is not None:
            self._here_mm = (pos[0], pos[1])
        if report.state != "Idle":
            raise StageAborted(f"{self._where}: {what} ended in state {report.state}, not Idle")
        if (
            target_mm is not None
            and pos is not None
            and math.dist(pos[:2], target_mm) > self._position_tol_mm()
        ):
            raise StageAborted(
                f"{self._where}: {what} ended at machine ({pos[0]:.3f}, {pos[1]:.3f}) mm, not at the target "
                f"({target_mm[0]:.3f}, {target_mm[1]:.3f}) mm"
            )
        return report

    def _position_tol_mm(self) -> float:
        """How far a finished move may end from its target: GRBL rounds to whole steps ($100/$101)."""
        steps = min(self.settings.get(100, math.inf), self.settings.get(101, math.inf))
        return max(POSITION_TOL_MM, 1.0 / steps if 0 < steps < math.inf else 0.0)

    def _await_reset_after_alarm(self, resets: int) -> None:
        """GRBL raises most alarms from mc_reset(): the held line's ``ok`` and a banner follow. Read
        them now (briefly), so that they are not taken later for the replies of the next command.
        ALARM:1/2 wait for our reset instead; a missing banner is only waited for command_timeout_s."""
        if self._critical or self._banner_seq > resets or self._state == StageState.DISCONNECTED:
            return
        self._wait_banner(resets, self.command_timeout_s, raise_=False)

    def _note_position(self) -> None:
        """Best effort: read where the stage ended up, for a truthful state after a failure."""
        if self._critical or self._state == StageState.DISCONNECTED:
            return
        try:
            report = self.query_status()
        except StageError:
            return
        pos = report.machine_pos_mm(self._wco)
        self._here_mm = (pos[0], pos[1]) if pos is not None else None

    def _state_words(self) -> str:
        if self._state == StageState.ALARM:
            alarm = describe_alarm(self.alarm_code) if self.alarm_code else "alarm"
            return f"the stage is in {alarm}" + ("" if self.homed else " and not homed")
        here = self.to_stage_m(self._here_mm) if self._here_mm is not None else None
        where = f"at ({here[0]:.4f}, {here[1]:.4f}) m" if here is not None else "at an unknown position"
        return f"the stage is {self._state.name.lower()} {where}"

    def _home_body(self) -> None:
        if self._state == StageState.DISCONNECTED:
            raise StageLinkError(f"{self._where}: link lost; reopen the stage")
        self._ensure_not_critical()
        if not self.settings.get(22):
            raise StageCommandError(
                f"{self._where}: homing is disabled on the controller ($22=0): no switches to find; "
                "check where the carriage is, then accept_position(note) takes GRBL's count on your word",
                code=5,
            )
        self._state = StageState.HOMING
        resets, alarms = self._banner_seq, self._alarm_seq
        try:
            # GRBL sends nothing during $H and ignores '?': homing_timeout_s is the only bound.
            self._command("$H", self.homing_timeout_s)
        except StageTimeout as exc:
            self._abort_homing(exc)
        except StageAlarm as exc:
            self._await_reset_after_alarm(resets)
            if exc.code in HOMING_RESET_ALARMS:  # limits.c: GRBL reset itself; nothing to halt
                raise StageAlarm(
                    f"{self._where}: homing failed: {describe_alarm(exc.code)}; GRBL reset itself and is "
                    "in alarm, not homed",
                    code=exc.code,
                ) from exc
            self._recover(exc)
            raise
        except StageError as exc:
            self._recover(exc)
            raise
        report = self._confirm_rest("homing", resets, alarms, None)
        self.homed = True
        self._basis = "homed ($H)"
        self.alarm_code = None
        self._state = StageState.IDLE
        pos = report.machine_pos_mm(self._wco)
        self._here_mm = (pos[0], pos[1]) if pos is not None else None

    def _abort_homing(self, exc: StageTimeout) -> None:
        """$H gave no reply within homing_timeout_s: reset (GRBL answers ALARM:6), say what happened."""
        alarms = self._alarm_seq
        try:
            self.soft_reset()
            outcome = (
                f"it was aborted by a soft reset ({describe_alarm(self.alarm_code or -1)})"
                if self._alarm_seq > alarms
                else "a soft reset was sent to abort it"
            )
        except StageError as again:
            outcome = f"the soft reset sent to abort it failed too ({again})"
            self._state = StageState.UNKNOWN
        self.homed = False
        raise StageTimeout(
            f"{self._where}: $H got no reply within homing_timeout_s={self.homing_timeout_s:g} s; {outcome}; "
            "the stage is not homed: check the limit switches, $24/$25 (homing rates) and $130/$131"
        ) from exc

    @property
    def _log_who(self) -> str:
        return self.name

    def _rest_after(self, exc: StageError) -> None:
        """After a failed command: bring the stage to rest and the link back in step."""
        if isinstance(exc, StageAlarm):
            # GRBL raises every alarm through mc_reset(): the motion is already killed and the planner
            # flushed (ALARM:1/2 wait for our reset, which home() sends); nothing left to halt.
            return
        self._halt()

    def _braking_s(self) -> float:
        """How long GRBL may need to brake from full speed: v / a with $11x and $12x (mm, s)."""
        s = self.settings
        v = max(s.get(110, 0.0), s.get(111, 0.0)) / 60.0
        a = min(s.get(120, math.inf), s.get(121, math.inf))
        if self.last_status is not None and self.last_status.feed_mm_min is not None and v <= 0:
            v = self.last_status.feed_mm_min / 60.0
        return v / a if v > 0 and 0 < a < math.inf else 0.0

    def _halt(self) -> None:
        """Halt now: feed hold, wait until braked (Hold:0/Idle/Alarm; as long as braking from full
        speed takes, plus a reply's time), soft reset to flush, read the state; position is kept."""
        if self._critical:  # ALARM:1/2: already halted; GRBL waits for a reset and answers no '?'
            self.soft_reset()
            return
        if self.alarm_code in HOMING_RESET_ALARMS and self._state == StageState.ALARM:
            return  # GRBL reset itself after the homing failure: nothing moves, nothing to flush
        self._link.write_raw(RT_HOLD)
        deadline = time.monotonic() + self._braking_s() + self.command_timeout_s
        pause = 0.02
        while time.monotonic() < deadline:
            try:
                report = self.query_status(max(0.05, deadline - time.monotonic()))
            except StageAlarm:
                break
            except StageTimeout:
                break
            if (
                report.state in ("Idle", "Alarm", "Home")  # a hold does nothing while homing
                or (report.state == "Hold" and report.substate == 0)
                or (report.state == "Door" and report.substate in (0, 1))
            ):
                break
            time.sleep(pause)
            pause = min(pause * 2, MIN_STATUS_POLL_S)
        self.soft_reset()
        report = self.query_status()
        pos = report.machine_pos_mm(self._wco)
        self._here_mm = (pos[0], pos[1]) if pos is not None else None


__all__ = [
    "ALARMS_LOSING_POSITION",
    "GRBL_ALARMS",
    "GRBL_ERRORS",
    "AxisFrame",
    "GrblStage",
    "GrblStatus",
    "describe_alarm",
    "describe_error",
    "machine_frame",
    "parse_setting",
    "parse_status",
]
