"""A GRBL 1.1 firmware emulator that speaks the real serial grammar.

What it models (gnea/grbl ``doc/markdown/interface.md``, ``commands.md`` and the sources named below):

- Power-up/reset (main.c, protocol.c): banner ``\\r\\nGrbl 1.1h ['$' for help]\\r\\n``; with hard
  limits on and a switch pressed, ``[MSG:Check Limits]`` and Alarm (CHECK_LIMITS_AT_INIT); Alarm at
  power-up when homing is enabled (``$22=1``) with ``[MSG:'$H'|'$X' to unlock]``; otherwise the
  start-up lines ``$N0``/``$N1`` run (``>line:ok``). ``first_boot``: ``error:7`` and a settings
  dump before the first banner (settings.c, an empty EEPROM).
- The state machine Idle, Run, Hold:0/1, Jog, Home, Alarm, Door:0-3, Check, with real-time commands
  ``?`` (status report), ``!`` (feed hold), ``~`` (cycle start), ``0x18`` (soft reset), ``0x85``
  (jog cancel) handled the moment they arrive, outside the line stream.
- Soft reset (motion_control.c mc_reset): ``ALARM:3`` if it stopped motion (a jog, a running block
  or a hold still braking; ``ALARM:6`` while homing), then the ``ok`` of the line GRBL was holding
  (a ``G4`` or ``$H`` waiting), then the banner. A reset after a completed hold keeps the position.
- Lines (protocol.c, gcode.c, system.c): whitespace and comments are dropped before the 79-character
  limit (``error:11``). G0/G1/G2/G3 (arcs run along their chord), G4 (axis words move after the
  dwell), G10 L2/L20, G17-19, G20/21, G28/G28.1/G30/G30.1, G53, G54-G59, G80, G90/91, G92/G92.1,
  G94 (G93 and G38.x, which GRBL has, are error:20 here), M0-M9/M30 (``[MSG:Pgm End]``), words
  F N P R S T I J K L; checks in gcode.c's order (a second axis command is ``error:24`` before
  any modal-group check, the feed rate before arc words).
  ``$`` commands: ``$$``, ``$x=v``, ``$#``, ``$G``, ``$I``, ``$N``, ``$Nx=line``, ``$C`` (check mode;
  leaving it resets), ``$X``, ``$H``, ``$J=``, ``$SLP``; anything else: ``error:2`` when no number
  can be read (``$Q``), ``error:3`` otherwise. ``ok`` of a motion line means *queued* (a 15-block
  planner); ``G4`` and ``$H`` answer once done.
- Homing (limits.c): seek the switches, locate, pull off ``$27``. The machine frame after it: 0 on a
  HOMING_FORCE_SET_ORIGIN build (``force_origin``, ``[OPT:VZ,...]``), else ``-$27`` at the positive
  end or ``-$13x + $27`` at the negative end (``$23`` bit set); soft limits ``[-$13x, 0]`` (or
  ``[0, $13x]`` on a force-origin build homing to the negative end). No status report while homing:
  a ``?`` is answered as the cycle ends. A stuck switch gives ``ALARM:8``, a dead one ``ALARM:9``
  after searching 1.5 x ``$13x``; both are followed by the ``$H`` line's ``ok`` and an automatic reset.
- Motion follows distance, feed and acceleration (``sim.motion``) on a real-time or scaled clock.
  Soft limits (``$20``) give ``ALARM:2`` (``error:15`` for jogs); crossing a switch with hard limits
  on (``$21``) gives ``ALARM:1`` and loses the position. Both are critical: nothing, not even ``?``,
  is served until ``0x18`` (protocol.c loops without reporting).
- Status reports ``<State|MPos|WPos,Bf,Ln,FS,Pn,WCO,Ov,A>`` in GRBL's order; ``WCO:`` in the first
  report after a reset, then every 10 (idle) or 30 (busy) reports and at once after an offset
  change, ``Ov:`` every 10 or 20 (report.c's counters).

``travel_mm`` is the usable travel from the homed position: the switches sit a pull-off beyond it,
so ``$13x = travel_mm + $27``.

Faults (``GrblFaults``) are switched on per test: a lost ``ok``, garbage bytes, a slow reply, a
disconnect mid-move, ``ALARM:1`` mid-move, and homing that never ends; ``stuck_switches`` and
``dead_switches`` (axis letters) model switch wiring faults.

The emulator has no thread of its own: every read, write or ``in_waiting`` first advances the
model to the clock's present, and a blocked reader sleeps until the next scheduled event.
"""

from __future__ import annotations

import enum
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field

from sim.endpoint import EmulatorEndpoint, Faults, LinkDown
from sim.motion import LinearMove

BANNER = "Grbl 1.1h ['$' for help]"
VERSION_LINE = "[VER:1.1h.20190830:]"
PLANNER_BLOCKS = 15
RX_BUFFER_BYTES = 128
# LINE_BUFFER_SIZE is 80: protocol.c drops spaces and comments, then overflows at 79 characters.
LINE_MAX_CHARS = 79

RT_STATUS, RT_HOLD, RT_RESUME = b"?", b"!", b"~"
RT_RESET, RT_JOG_CANCEL, RT_SAFETY_DOOR = b"\x18", b"\x85", b"\x84"

# GRBL 1.1 defaults (mm, mm/min, mm/s^2), with homing on: a positioner should home.
DEFAULT_SETTINGS: dict[int, float] = {
    0: 10, 1: 25, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 10: 1, 11: 0.010, 12: 0.002, 13: 0,
    20: 1, 21: 1, 22: 1, 23: 0, 24: 25.0, 25: 500.0, 26: 250, 27: 1.0, 30: 1000, 31: 0, 32: 0,
    100: 250.0, 101: 250.0, 102: 250.0, 110: 3000.0, 111: 3000.0, 112: 500.0,
    120: 500.0, 121: 500.0, 122: 10.0, 130: 500.0, 131: 500.0, 132: 50.0,
}  # fmt: skip
INT_SETTINGS = {0, 1, 2, 3, 4, 5, 6, 10, 13, 20, 21, 22, 23, 26, 30, 31, 32}


GrblFaults = Faults  # the faults every emulator takes (see sim.endpoint.Faults)

HOMING_SEARCH_SCALAR = 1.5  # config.h HOMING_AXIS_SEARCH_SCALAR: the search runs 1.5 x $13x
STARTUP_LINES = 2  # config.h N_STARTUP_LINE
# report.c: WCO every 10 reports when idle, 30 when busy; Ov every 10 / 20 (config.h REPORT_*_REFRESH_*)
WCO_EVERY_IDLE, WCO_EVERY_BUSY, OV_EVERY_IDLE, OV_EVERY_BUSY = 10, 30, 10, 20


class St(enum.StrEnum):
    """GRBL's machine states, as its status reports name them."""

    IDLE = "Idle"
    RUN = "Run"
    HOLD = "Hold"
    JOG = "Jog"
    ALARM = "Alarm"
    DOOR = "Door"
    CHECK = "Check"
    HOME = "Home"
    SLEEP = "Sleep"


MOVING = frozenset({St.RUN, St.JOG, St.HOME})  # a block is executing
BUSY = frozenset({St.HOME, St.RUN, St.HOLD, St.JOG, St.DOOR})  # report.c's "motion state" for refresh counts


@dataclass
class _Block:
    kind: str  # "line" (G0/G1), "jog", "dwell", "home"
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)
    feed_mm_min: float = 0.0
    dwell_s: float = 0.0
    defer_ok: bool = False  # ok only when the block finishes (G4, $H)
    line_number: int | None = None
    move: LinearMove | None = None
    t_start: float | None = None
    t_end: float | None = None
    fault_alarm_t: float | None = None
    fault_disconnect_t: float | None = None
    limit_t: float | None = None  # when it crosses the travel (hard limit), if it does
    homing_fail: int | None = None  # ALARM:8/9 at t_end instead of a homed machine
    follow: list[_Block] = field(default_factory=list)  # queued once this (synchronous) block ends


@dataclass(frozen=True)
class _BlockWords:
    """One parsed G-code block with the modal state filled in (gcode.c's gc_block)."""

    values: dict[str, float]  # value words (F, N, P, X, ...) as written
    mcodes: list[int]
    jog: bool
    metric: bool
    absolute: bool
    nonmodal: int | None  # G code x10 of the non-modal group (40 = G4, 281 = G28.1, ...)
    motion: int
    axes: dict[str, float]  # mm
    feed: float  # mm/min
    coord_select: int

    @property
    def motion_axes(self) -> bool:
        """Axis words that drive the motion mode (not G10/G28/G30/G92's)."""
        return bool(self.axes) and self.nonmodal not in (100, 280, 300, 920, 281, 301)


@dataclass
class _Modal:
    motion: int = 0  # 0, 1, 2 or 3
    absolute: bool = True  # G90
    metric: bool = True  # G21
    feed_mm_min: float = 0.0
    spindle: str = "M5"
    coolant: set[str] = field(default_factory=set)
    spindle_speed: float = 0.0
    tool: int = 0
    coord_select: int = 0  # 0..5 = G54..G59


class GrblDevice(EmulatorEndpoint):
    """One GRBL controller with an XY(Z) stage behind it."""

    resets_on_open = True  # an Arduino Uno/Nano resets when DTR toggles on open

    def __init__(
        self,
        *,
        time_scale: float = 1.0,
        travel_mm: tuple[float, float] = (500.0, 500.0),
        max_rate_mm_min: float = 3000.0,
        accel_mm_s2: float = 500.0,
        homing: bool = True,
        soft_limits: bool = True,
        hard_limits: bool = True,
        start_mm: tuple[float, float] = (0.0, 0.0),
        seek_mm_min: float | None = None,
        homing_dir_mask: int = 0,
        force_origin: bool = False,
        first_boot: bool = False,
        stuck_switches: str = "",
        name: str = "grbl",
    ) -> None:
        """``homing_dir_mask`` is ``$23`` (bit set: that axis homes to its negative end);
        ``force_origin`` builds in HOMING_FORCE_SET_ORIGIN (``[OPT:...Z...]``); ``first_boot`` starts
        with an empty EEPROM (``error:7`` and a settings dump before the first banner);
        ``stuck_switches`` (axis letters) read pressed from power-up on."""
        super().__init__(name, time_scale)
        self.settings: dict[int, float] = dict(DEFAULT_SETTINGS)
        self.settings.update({
            110: float(max_rate_mm_min), 111: float(max_rate_mm_min),
            120: float(accel_mm_s2), 121: float(accel_mm_s2),
            22: int(homing), 20: int(soft_limits), 21: int(hard_limits),
            25: float(seek_mm_min if seek_mm_min is not None else max_rate_mm_min),
            23: int(homing_dir_mask),
        })  # fmt: skip
        self.force_origin = force_origin
        self._first_boot = first_boot
        # The physical travel between the switches: $13x is only what GRBL is told.
        # travel_mm is the usable travel from the homed position: the switches sit a pull-off ($27)
        # beyond it, and $13x (GRBL's soft-limit span) is switch to switch.
        pull = self.settings[27]
        self.settings.update({130: float(travel_mm[0]) + pull, 131: float(travel_mm[1]) + pull})
        self._travel = (self.settings[130], self.settings[131], float(self.settings[132]))
        # Switch faults a test can set (axis letters): a stuck switch reads pressed (homing ends in
        # ALARM:8, power-up says [MSG:Check Limits]); a dead one never triggers (ALARM:9).
        self.stuck_switches: set[str] = set(stuck_switches.upper())
        self.dead_switches: set[str] = set()
        # EEPROM: coordinate systems G54..G59, G28/G30 positions, start-up lines (survive resets).
        self._coords: list[list[float]] = [[0.0, 0.0, 0.0] for _ in range(6)]
        self._g28 = [0.0, 0.0, 0.0]
        self._g30 = [0.0, 0.0, 0.0]
        self.startup_lines: list[str] = [""] * STARTUP_LINES
        self._rx = bytearray()
        self._pending: deque[str] = deque()  # lines waiting for the planner / a sync
        self._queue: deque[_Block] = deque()
        self._pos = (0.0, 0.0, 0.0)  # GRBL's step count: zero at power-up
        # Where the carriage really is, minus what GRBL believes: it knows only after homing.
        self._offset = (float(start_mm[0]), float(start_mm[1]), 0.0)
        self._hold: LinearMove | None = None  # braking move of a feed hold / door
        self._held_block: _Block | None = None
        self._wco_count = 0  # report.c's refresh counters, zeroed by every reset
        self._ovr_count = 0
        self._report_pending = False  # a '?' that arrived while GRBL could not answer it
        self._g92 = [0.0, 0.0, 0.0]
        self._pins: set[str] = set()
        self._door_open = False
        self._power_up()

    # --- transport side (EmulatorEndpoint) ------------------------------------------------------
    def _receive(self, data: bytes) -> None:
        for i in range(len(data)):
            byte = data[i : i + 1]
            if self._realtime(byte):
                continue
            if byte in (b"\n", b"\r"):
                if self._rx:
                    line = self._rx.decode("ascii", errors="replace")
                    self._rx.clear()
                    self._pending.append(line)
                continue
            self._rx += byte
        self._service_lines()

    def power_cycle(self) -> None:
        """Switch off and on (an Arduino resets when the port opens): position is lost."""
        with self._cond:
            self.connected = True
            self._power_up()
            self._cond.notify_all()

    # --- inputs a test can drive ---------------------------------------------------------------
    def set_door(self, open_: bool) -> None:
        """Open or close the safety door input."""
        with self._cond:
            self._advance()
            self._door_open = open_
            if open_:
                self._pins.add("D")
                self._enter_door()
            else:
                self._pins.discard("D")
                if self.state_name.startswith("Door"):
                    self._door_sub = 0 if self._hold is None else 3
            self._cond.notify_all()

    @property
    def position_mm(self) -> tuple[float, float, float]:
        with self._cond:
            self._advance()
            return self._current_pos()

    @property
    def state_name(self) -> str:
        with self._cond:
            self._advance()
            return self._state_text()

    # --- internals: time ------------------------------------------------------------------------
    def _next_model_event(self) -> float | None:
        times: list[float] = []
        if self._queue and self._queue[0].t_end is not None and self._state in MOVING:
            b = self._queue[0]
            times += [t for t in (b.t_end, b.fault_alarm_t, b.fault_disconnect_t, b.limit_t) if t is not None]
        if self._hold is not None:
            times.append(self._hold.t_end)
        return min(times) if times else None

    def _emit(self, line: str, reply: bool = True) -> None:
        self._send(line, reply)

    def _ok(self) -> None:
        if not self._drop_reply():
            self._emit("ok")

    # --- internals: state -------------------------------------------------------------------------
    def _power_up(self) -> None:
        if hasattr(self, "_queue"):  # a restart: the carriage stays where it is, the count restarts
            pos = self._current_pos()
            self._offset = tuple(o + p for o, p in zip(self._offset, pos, strict=True))  # type: ignore[assignment]
            self._pos = (0.0, 0.0, 0.0)
        self._out.clear()
        self._rx.clear()
        self._pending.clear()
        self._queue.clear()
        self._hold = None
        self._held_block = None
        self._critical = False
        self._homed = False
        self._door_sub = 0
        self._state = St.ALARM if self.settings[22] else St.IDLE
        if self._first_boot:  # settings.c settings_init: read fail -> error:7, restore, dump $$
            self._first_boot = False
            self._emit("error:7", reply=False)
            self._dump_settings()
        self._restart()

    def _restart(self) -> None:
        """What main.c does after power-up or a reset: re-initialise, banner, checks, start-up lines."""
        self._modal = _Modal()  # gc_init: the parser state starts over (feed 0)
        self._g92 = [0.0, 0.0, 0.0]  # gc_init clears G92; G54 comes back from EEPROM
        self._wco_count = self._ovr_count = 0
        self._report_pending = False
        self._critical = False
        self._out.append((time.monotonic(), b"\r\n"))
        self._emit(BANNER, reply=False)
        if self.settings[21] and self._switches_pressed():  # CHECK_LIMITS_AT_INIT (on by default)
            self._state = St.ALARM
            self._emit("[MSG:Check Limits]", reply=False)
        if self._state == St.ALARM:
            self._emit("[MSG:'$H'|'$X' to unlock]", reply=False)
            return
        self._state = St.IDLE
        for text in self.startup_lines:
            if text:
                code = self._gcode(text.upper().replace(" ", ""), jog=False, quiet=True)
                self._emit(f">{text}:" + (f"error:{code}" if code else "ok"), reply=False)

    def _switches_pressed(self) -> set[str]:
        phys = [p + o for p, o in zip(self._current_pos(), self._offset, strict=True)]
        beyond = {a for a, v, t in zip("XYZ", phys, self._travel, strict=True) if not -1e-6 <= v <= t + 1e-6}
        return beyond | self.stuck_switches

    def _dump_settings(self) -> None:
        for key in sorted(self.settings):
            v = self.settings[key]
            self._emit(f"${key}={int(v)}" if key in INT_SETTINGS else f"${key}={v:.3f}")

    def _current_pos(self) -> tuple[float, float, float]:
        now = self.clock.now()
        if self._hold is not None:
            return self._hold.state_at(now)[0]  # type: ignore[return-value]
        if self._queue and self._queue[0].move is not None and self._state in MOVING:
            return self._queue[0].move.state_at(now)[0]  # type: ignore[return-value]
        return self._pos

    def _current_speed_mm_min(self) -> float:
        now = self.clock.now()
        if self._hold is not None:
            return self._hold.state_at(now)[1] * 60.0
        if self._queue and self._queue[0].move is not None and self._state in MOVING:
            return self._queue[0].move.state_at(now)[1] * 60.0
        return 0.0

    def _state_text(self) -> str:
        if self._state == St.HOLD:
            return f"Hold:{1 if self._hold is not None else 0}"
        if self._state == St.DOOR:
            return f"Door:{self._door_sub}"
        return self._state

    def _advance(self) -> None:
        """Bring the model up to the clock's present."""
        now = self.clock.now()
        while True:
            if self._hold is not None and now >= self._hold.t_end:
                self._pos = self._hold.end  # type: ignore[assignment]
                self._hold = None
                if self._state == St.DOOR:
                    self._door_sub = 1 if self._door_open else 0
                elif self._state == St.JOG:  # a cancelled jog ends idle
                    self._state = St.IDLE
                continue
            if self._state not in (St.RUN, St.JOG, St.HOME) or not self._queue:
                break
            block = self._queue[0]
            if block.t_start is None:
                self._start_block(block, now)
            if block.fault_disconnect_t is not None and now >= block.fault_disconnect_t:
                self._pos = block.move.state_at(block.fault_disconnect_t)[0] if block.move else self._pos
                block.move = LinearMove.plan(self._pos, self._pos, 1.0, 1.0, now)
                self._queue.clear()
                self._state = St.IDLE
                self.connected = False
                break
            if block.fault_alarm_t is not None and now >= block.fault_alarm_t:
                self._hard_limit(block, block.fault_alarm_t)
                break
            if block.limit_t is not None and now >= block.limit_t:
                self._hard_limit(block, block.limit_t)
                break
            if block.t_end is None or now < block.t_end:
                break
            self._finish_block(block)
        self._service_lines()

    def _start_block(self, block: _Block, now: float) -> None:
        t0 = now
        block.t_start = t0
        f = self.faults
        if block.kind == "dwell":
            block.t_end = t0 + block.dwell_s
            return
        if block.kind == "home":
            if f.homing_never_ends:
                f.homing_never_ends = False
                block.t_end = math.inf
                return
            self._plan_homing(block, t0)
            return
        speed = min(block.feed_mm_min, self._max_rate(self._pos, block.target)) / 60.0
        block.move = LinearMove.plan(self._pos, block.target, speed, self._accel(), t0)
        block.t_end = block.move.t_end
        if f.alarm_at is not None:
            block.fault_alarm_t = t0 + f.alarm_at * (block.t_end - t0)
            f.alarm_at = None
        if f.disconnect_at is not None:
            block.fault_disconnect_t = t0 + f.disconnect_at * (block.t_end - t0)
            f.disconnect_at = None
        if self.settings[21]:
            block.limit_t = self._limit_crossing(block.move)

    def _home_dir_negative(self, axis: int) -> bool:
        return bool(int(self.settings[23]) >> axis & 1)

    def _plan_homing(self, block: _Block, t0: float) -> None:
        """limits.c: seek each switch (searching 1.5 x $13x), locate it at $24, pull off $27."""
        seek, locate, pull = self.settings[25] / 60.0, self.settings[24] / 60.0, self.settings[27]
        # The switches: the positive end of each axis, or the negative one where $23 says so.
        switch_phys = [0.0 if self._home_dir_negative(i) else self._travel[i] for i in range(3)]
        target = tuple(p - o for p, o in zip(switch_phys, self._offset, strict=True))
        block.move = LinearMove.plan(self._pos, target, seek, self._accel(), t0)
        block.t_end = block.move.t_end + 2 * pull / max(locate, 1e-9)
        if self.stuck_switches & set("XYZ"):  # found at once, still pressed after the pull-off
            block.move = LinearMove.plan(self._pos, self._pos, seek, self._accel(), t0)
            block.t_end = t0 + pull / max(locate, 1e-9)
            block.homing_fail = 8
        elif self.dead_switches & set("XYZ"):  # never triggers: gives up after the search distance
            search = HOMING_SEARCH_SCALAR * max(
                self.settings[130 + "XYZ".index(a)] for a in self.dead_switches
            )
            block.t_end = t0 + search / max(seek, 1e-9)
            block.homing_fail = 9

    def _home_position(self, axis: int) -> float:
        """limits.c limits_go_home's machine position at the pull-off point."""
        if self.force_origin:
            return 0.0
        pull, travel = self.settings[27], self.settings[130 + axis]
        return -travel + pull if self._home_dir_negative(axis) else -pull

    def _homing_done(self, block: _Block) -> None:
        if block.homing_fail is not None:
            if block.move is not None:
                self._pos = block.move.end  # type: ignore[assignment]
            self._homed = False
            # limits.c: alarm, mc_reset(); $H still answers ok; then main() restarts (banner).
            self._state = St.ALARM
            self._emit(f"ALARM:{block.homing_fail}", reply=False)
            self._ok()
            self._reset_buffers()
            self._restart()
            return
        pull = self.settings[27]
        pull_phys = [pull if self._home_dir_negative(i) else self._travel[i] - pull for i in range(3)]
        home = tuple(self._home_position(i) for i in range(3))
        self._offset = tuple(p - m for p, m in zip(pull_phys, home, strict=True))  # type: ignore[assignment]
        self._pos = home  # type: ignore[assignment]
        self._homed = True
        if self._report_pending:  # a '?' sent during the cycle is answered as it ends
            self._report_pending = False
            self._emit(self._status_report(), reply=False)
        self._state = St.IDLE
        self._ok()

    def _finish_block(self, block: _Block) -> None:
        self._queue.popleft()
        if block.kind == "home":
            self._homing_done(block)
            return
        if block.move is not None:
            self._pos = block.move.end  # type: ignore[assignment]
        if block.defer_ok:
            self._ok()
        self._queue.extend(block.follow)
        if self._queue:
            self._queue[0].t_start = None
            self._start_block(self._queue[0], block.t_end if block.t_end is not None else self.clock.now())
            if self._queue[0].kind == "jog":
                self._state = St.JOG
            elif self._queue[0].kind != "home":
                self._state = St.RUN
        else:
            self._state = St.IDLE

    def _hard_limit(self, block: _Block, t: float) -> None:
        if block.move is not None:
            self._pos = block.move.state_at(t)[0]  # type: ignore[assignment]
        self._queue.clear()
        self._pending.clear()
        self._state = St.ALARM
        self._homed = False
        self._pins.add("X")
        self._raise_alarm(1)

    def _raise_alarm(self, code: int) -> None:
        self._critical = code in (1, 2)
        self._state = St.ALARM
        self._emit(f"ALARM:{code}", reply=False)
        if self._critical:
            self._emit("[MSG:Reset to continue]", reply=False)

    def _accel(self) -> float:
        return min(self.settings[120], self.settings[121])

    def _max_rate(self, a: tuple[float, ...], b: tuple[float, ...]) -> float:
        # The path speed whose per-axis components stay under each axis' $11x max rate.
        d = math.dist(a, b)
        if d == 0:
            return self.settings[110]
        limits = [self.settings[110 + i] * d / abs(b[i] - a[i]) for i in range(3) if b[i] != a[i]]
        return min(limits)

    def _limit_crossing(self, move: LinearMove) -> float | None:
        """Model time at which the move leaves the travel box, if it does."""
        # The switches sit at the physical ends of the travel.
        box = [(-self._offset[i], self._travel[i] - self._offset[i]) for i in range(3)]
        tol = 1e-6
        if all(lo - tol <= v <= hi + tol for v, (lo, hi) in zip(move.end, box, strict=True)):
            return None
        lo_t, hi_t = move.t0, move.t_end
        for _ in range(60):  # bisection on the monotone path length
            mid = 0.5 * (lo_t + hi_t)
            p = move.state_at(mid)[0]
            if all(lo - tol <= v <= hi + tol for v, (lo, hi) in zip(p, box, strict=True)):
                lo_t = mid
            else:
                hi_t = mid
        return hi_t

    def _enter_door(self) -> None:
        now = self.clock.now()
        if self._state == St.HOME:
            self._queue.clear()
            self._homed = False
            self._raise_alarm(7)
            return
        if self._state in (St.RUN, St.JOG):
            block = self._queue[0]
            assert block.move is not None
            self._hold = block.move.stopping(now, self._accel())
            self._held_block = block
            self._door_sub = 2
        elif self._state in (St.IDLE, St.HOLD):
            self._door_sub = 1 if self._hold is None else 2
        else:
            return
        self._state = St.DOOR

    # --- real-time commands ------------------------------------------------------------------
    def _realtime(self, byte: bytes) -> bool:
        if byte == RT_STATUS:
            # Homing and a critical alarm (ALARM:1/2) run in loops that never reach the report code.
            if self._state == St.HOME:
                self._report_pending = True
            elif not self._critical:
                self._emit(self._status_report(), reply=False)
        elif byte == RT_HOLD:
            self._feed_hold()
        elif byte == RT_RESUME:
            self._cycle_start()
        elif byte == RT_RESET:
            self._soft_reset()
        elif byte == RT_JOG_CANCEL:
            if self._state == St.JOG:
                self._feed_hold()
        elif byte == RT_SAFETY_DOOR:
            self.set_door(True)
        elif byte[0] >= 0x80:
            pass  # other extended real-time commands (overrides): accepted, no effect here
        else:
            return False
        return True

    def _feed_hold(self) -> None:
        now = self.clock.now()
        if self._state in (St.RUN, St.JOG):
            block = self._queue[0]
            assert block.move is not None
            self._hold = block.move.stopping(now, self._accel())
            if self._state == St.JOG:  # GRBL cancels a jog on hold and flushes jog blocks
                self._queue.clear()
                return
            self._held_block = block
            self._state = St.HOLD
        elif self._state == St.IDLE:
            self._state = St.HOLD

    def _cycle_start(self) -> None:
        now = self.clock.now()
        resumable = (self._state == St.HOLD and self._hold is None) or (
            self._state == St.DOOR and self._door_sub == 0
        )
        if not resumable:
            return
        block = self._held_block
        self._held_block = None
        if block is not None and self._queue and self._queue[0] is block:
            speed = block.move.profile.v_max if block.move else 1.0
            block.move = LinearMove.plan(self._pos, block.target, speed, self._accel(), now)
            block.t_start, block.t_end = now, block.move.t_end
            block.fault_alarm_t = block.fault_disconnect_t = None
            if self.settings[21]:
                block.limit_t = self._limit_crossing(block.move)
            self._state = St.RUN
        elif self._queue:
            self._state = St.RUN
        else:
            self._state = St.IDLE

    def _soft_reset(self) -> None:
        """0x18 (motion_control.c mc_reset, then main.c): ALARM:3 if it stopped motion (ALARM:6 while
        homing), the ``ok`` of the line GRBL was executing (a G4 or $H waiting), then the banner."""
        front = self._queue[0] if self._queue else None
        in_motion = (self._state in MOVING and front is not None and front.kind != "dwell") or (
            self._hold is not None
        )
        self._pos = self._current_pos()
        if self._state == St.HOME:
            self._homed = False
            self._state = St.ALARM
            self._emit("ALARM:6", reply=False)
        elif in_motion:
            self._homed = False
            self._state = St.ALARM
            self._emit("ALARM:3", reply=False)
        if any(b.defer_ok for b in self._queue):
            self._ok()  # the synchronising line returns once aborted, and its ok goes out
        self._reset_buffers()
        self._restart()

    def _reset_buffers(self) -> None:
        self._hold = None
        self._held_block = None
        self._queue.clear()
        self._pending.clear()
        self._rx.clear()
        self._pins.discard("X")

    def _status_report(self) -> str:
        mask = int(self.settings[10])
        pos = self._current_pos()
        wco = self._wco()
        parts = [self._state_text()]
        if mask & 1:
            parts.append("MPos:" + ",".join(f"{v:.3f}" for v in pos))
        else:
            parts.append("WPos:" + ",".join(f"{p - w:.3f}" for p, w in zip(pos, wco, strict=True)))
        if mask & 2:
            parts.append(f"Bf:{PLANNER_BLOCKS - len(self._queue)},{RX_BUFFER_BYTES - len(self._rx)}")
        if self._queue and self._queue[0].line_number is not None:
            parts.append(f"Ln:{self._queue[0].line_number}")
        parts.append(f"FS:{self._current_speed_mm_min():.0f},{self._modal.spindle_speed:.0f}")
        if self._pins:
            parts.append("Pn:" + "".join(p for p in "XYZPDHRS" if p in self._pins))
        # report.c: each counter counts down; at zero the field goes out and the counter restarts
        # at 10 (idle) or 30/20 (busy) reports, and the other field is nudged to the next report.
        busy = self._state in BUSY
        if self._wco_count > 0:
            self._wco_count -= 1
        else:
            self._wco_count = (WCO_EVERY_BUSY if busy else WCO_EVERY_IDLE) - 1
            if self._ovr_count == 0:
                self._ovr_count = 1
            parts.append("WCO:" + ",".join(f"{v:.3f}" for v in wco))
        if self._ovr_count > 0:
            self._ovr_count -= 1
        else:
            self._ovr_count = (OV_EVERY_BUSY if busy else OV_EVERY_IDLE) - 1
            if self._wco_count == 0:
                self._wco_count = 1
            parts.append("Ov:100,100,100")
            acc = "S" if self._modal.spindle == "M3" else "C" if self._modal.spindle == "M4" else ""
            acc += "".join(c for c, m in (("F", "M8"), ("M", "M7")) if m in self._modal.coolant)
            if acc:
                parts.append("A:" + acc)
        return "<" + "|".join(parts) + ">"

    def _wco(self) -> tuple[float, float, float]:
        """Work coordinate offset: the active G54..G59 plus G92 (gcode.c; WPos = MPos - WCO)."""
        c = self._coords[self._modal.coord_select]
        return (c[0] + self._g92[0], c[1] + self._g92[1], c[2] + self._g92[2])

    def _wco_changed(self) -> None:
        self._wco_count = 0  # system_flag_wco_change: WCO goes out in the next report

    # --- lines ---------------------------------------------------------------------------------
    def _blocking(self) -> bool:
        """True while a line must wait: a sync (G4/$H) is pending or the planner is full."""
        return any(b.defer_ok for b in self._queue) or len(self._queue) >= PLANNER_BLOCKS

    def _service_lines(self) -> None:
        while self._pending and not self._blocking():
            if self._critical:
                self._pending.clear()  # GRBL serves nothing but reset until reset
                return
            self._line(self._pending.popleft())

    def _line(self, raw: str) -> None:
        self.lines_received.append(raw)
        # protocol.c drops whitespace, control characters and comments before counting the length.
        line = "".join(c for c in re.sub(r"\(.*?(\)|$)|;.*$", "", raw) if c > " ").upper()
        if len(line) > LINE_MAX_CHARS:
            self._emit("error:11")
            return
        if not line:
            self._ok()
            return
        if line.startswith("$"):
            self._system(line)
            return
        if self._state in (St.ALARM, St.JOG):
            self._emit("error:9")
            return
        code = self._gcode(line, jog=False)
        if code:
            self._emit(f"error:{code}")

    def _system(self, line: str) -> None:
        """system.c system_execute_line."""
        idle_like = self._state in (St.IDLE, St.ALARM)
        cmd = line[1:]
        if cmd == "":
            self._emit("[HLP:$$ $# $G $I $N $x=val $Nx=line $J=line $SLP $C $X $H ~ ! ? ctrl-x]")
            self._ok()
        elif cmd.startswith("J="):
            if self._state not in (St.IDLE, St.JOG):
                self._emit("error:8")
                return
            code = self._gcode(cmd[2:], jog=True)
            if code:
                self._emit(f"error:{code}")
        elif cmd in ("$", "G", "C", "X"):
            self._system_query(cmd)
        elif not idle_like:  # everything below needs Idle or Alarm
            self._emit("error:8")
        elif cmd == "#":
            names = ("G54", "G55", "G56", "G57", "G58", "G59")
            for name, c in zip(names, self._coords, strict=True):
                self._emit(f"[{name}:" + ",".join(f"{v:.3f}" for v in c) + "]")
            self._emit("[G28:" + ",".join(f"{v:.3f}" for v in self._g28) + "]")
            self._emit("[G30:" + ",".join(f"{v:.3f}" for v in self._g30) + "]")
            self._emit("[G92:" + ",".join(f"{v:.3f}" for v in self._g92) + "]")
            self._emit("[TLO:0.000]")
            self._emit("[PRB:0.000,0.000,0.000:0]")
            self._ok()
        elif cmd == "H":
            self._home_command()
        elif cmd == "I":
            self._emit(VERSION_LINE)
            self._emit(
                "[OPT:V" + ("Z" if self.force_origin else "") + f",{PLANNER_BLOCKS},{RX_BUFFER_BYTES}]"
            )
            self._ok()
        elif cmd == "N":
            for i, text in enumerate(self.startup_lines):
                self._emit(f"$N{i}={text}")
            self._ok()
        elif cmd.startswith("N") and cmd[1:2].isdigit():
            self._store_startup_line(cmd)
        elif cmd == "SLP":
            self._emit("[MSG:Sleeping]")
            self._ok()
        else:
            self._store_setting(cmd)

    def _system_query(self, cmd: str) -> None:
        if cmd == "$":
            if self._state in (St.RUN, St.HOLD):  # system.c: too slow to print during a cycle
                self._emit("error:8")
                return
            self._dump_settings()
            self._ok()
        elif cmd == "G":
            m = self._modal
            words = [f"G{m.motion}", f"G{54 + m.coord_select}", "G17", "G21" if m.metric else "G20",
                     "G90" if m.absolute else "G91", "G94", m.spindle, *(sorted(m.coolant) or ["M9"]),
                     f"T{m.tool}", f"F{m.feed_mm_min:g}", f"S{m.spindle_speed:g}"]  # fmt: skip
            self._emit("[GC:" + " ".join(words) + "]")
            self._ok()
        elif cmd == "C":  # check mode: parse everything, move nothing; leaving it resets
            if self._state == St.CHECK:
                self._emit("[MSG:Disabled]")
                self._ok()
                self._reset_buffers()
                self._state = St.IDLE
                self._restart()
            elif self._state != St.IDLE:
                self._emit("error:8")
            else:
                self._state = St.CHECK
                self._emit("[MSG:Enabled]")
                self._ok()
        elif cmd == "X":
            if self._state == St.ALARM:
                self._state = St.IDLE
                self._emit("[MSG:Caution: Unlocked]")
            self._ok()

    def _home_command(self) -> None:
        if not self.settings[22]:
            self._emit("error:5")
            return
        if self._door_open:
            self._emit("error:13")  # system.c: STATUS_CHECK_DOOR
            return
        self._state = St.HOME
        self._pins.discard("X")
        self._queue.append(_Block("home", defer_ok=True))
        self._start_block(self._queue[0], self.clock.now())

    def _store_startup_line(self, cmd: str) -> None:
        m = re.fullmatch(r"N(\d+)=(.*)", cmd)
        if not m:
            self._emit("error:3")
            return
        index = int(m.group(1))
        if index >= STARTUP_LINES:
            self._emit("error:3")
            return
        if self._state != St.IDLE:  # storing runs the line to check it: not in alarm
            self._emit("error:8")
            return
        code = self._gcode(m.group(2), jog=False, quiet=True)  # system.c runs it once to check it
        if code:
            self._emit(f"error:{code}")
            return
        self.startup_lines[index] = m.group(2)
        self._ok()

    def _store_setting(self, cmd: str) -> None:
        m = re.match(r"[-+]?(\d+\.?\d*|\.\d+)", cmd)
        if not m:
            self._emit("error:2")  # read_float fails: $Q, $/, ...
            return
        rest = cmd[m.end() :]
        if not rest.startswith("="):
            self._emit("error:3")
            return
        try:
            value = float(rest[1:])
        except ValueError:
            self._emit("error:2")
            return
        key = int(float(m.group(0)))
        if key not in self.settings:
            self._emit("error:3")
            return
        if value < 0:
            self._emit("error:4")
            return
        if key == 20 and value and not self.settings[22]:
            self._emit("error:10")
            return
        self.settings[key] = float(int(value)) if key in INT_SETTINGS else value
        self._ok()

    _WORD = re.compile(r"([A-Z])([-+]?(?:\d+\.?\d*|\.\d+))")
    _MOTION = {0: 0, 10: 1, 20: 2, 30: 3, 800: 80}  # G code x10 -> motion mode
    _NON_MODAL = {40, 100, 280, 281, 300, 301, 530, 920, 921}
    _AXIS_COMMANDS = {0, 10, 20, 30, 100, 280, 300, 920}  # gcode.c: these claim the axis words

    def _gcode(self, line: str, jog: bool, quiet: bool = False) -> int:
        """gcode.c gc_execute_line: parse, check (in the firmware's order), execute; an error code or 0.
        With ``quiet`` (start-up lines) nothing is acknowledged."""
        words: list[tuple[str, float]] = []
        i = 0
        while i < len(line):
            if not line[i].isalpha():
                return 1
            m = self._WORD.match(line, i)
            if not m:
                return 2
            words.append((m.group(1), float(m.group(2))))
            i = m.end()
        groups: dict[str, int] = {}
        axis_command = False
        mcodes: list[int] = []
        values: dict[str, float] = {}
        for letter, value in words:
            if letter == "G":
                code = round(value * 10)
                if code % 10 and code not in (281, 301, 921, 591, 592, 593):
                    return 20
                if code in (591, 592, 593):
                    return 29
                if code in self._AXIS_COMMANDS:
                    if axis_command:
                        return 24
                    axis_command = True
                group = self._g_group(code)
                if group is None:
                    return 20
                if group in groups:
                    return 21
                groups[group] = code
            elif letter == "M":
                if value not in (0, 1, 2, 3, 4, 5, 7, 8, 9, 30):
                    return 20
                group = (
                    "m_stop" if value in (0, 1, 2, 30) else "m_spindle" if value in (3, 4, 5) else "m_cool"
                )
                if group in groups and group != "m_cool":
                    return 21
                groups[group] = int(value)
                mcodes.append(int(value))
            elif letter in "FIJKLNPRSTXYZ":
                if letter in values:
                    return 25
                if letter in "FNST" and value < 0:
                    return 4
                values[letter] = value
            else:
                return 20
        if jog and (set(groups) - {"units", "dist", "nonmodal"} or groups.get("nonmodal", 530) != 530):
            return 16
        return self._execute(groups, values, mcodes, jog, quiet)

    @staticmethod
    def _g_group(code: int) -> str | None:
        if code in GrblDevice._MOTION:
            return "motion"
        if code in GrblDevice._NON_MODAL:
            return "nonmodal"
        table = {170: "plane", 180: "plane", 190: "plane", 200: "units", 210: "units", 900: "dist",
                 910: "dist", 940: "feedmode", 490: "tlo", 610: "path"}  # fmt: skip
        if code in table:
            return table[code]
        if 540 <= code <= 590 and code % 10 == 0:
            return "coord"
        return None

    def _execute(
        self, groups: dict[str, int], values: dict[str, float], mcodes: list[int], jog: bool, quiet: bool
    ) -> int:
        m = self._modal
        metric = groups.get("units", 210 if m.metric else 200) == 210
        scale = 1.0 if metric else 25.4
        b = _BlockWords(
            values=values,
            mcodes=mcodes,
            jog=jog,
            metric=metric,
            absolute=groups.get("dist", 900 if m.absolute else 910) == 900,
            nonmodal=groups.get("nonmodal"),
            motion=self._MOTION[groups["motion"]] if "motion" in groups else m.motion,
            axes={k: values[k] * scale for k in "XYZ" if k in values},
            feed=values["F"] * scale if "F" in values else (0.0 if jog else m.feed_mm_min),
            coord_select=(groups["coord"] - 540) // 10 if "coord" in groups else m.coord_select,
        )
        code = self._check_block(b)
        if code:
            return code
        if jog:
            return self._run_jog(b)
        return self._run_block(b, quiet)

    def _check_block(self, b: _BlockWords) -> int:
        """gcode.c's error checks, in its order; 0 if the block may run."""
        values, axes, nonmodal, motion, jog = b.values, b.axes, b.nonmodal, b.motion, b.jog
        used = {"N", "F", "S", "T", *axes}
        # [Non-modal checks] gcode.c order: G4 P, G10 L/P, G28/G30, G53, G92.
        if nonmodal == 40:
            if "P" not in values:
                return 28
            if values["P"] < 0:
                return 4
            used.add("P")
        elif nonmodal == 100:
            if not axes:
                return 26
            if "L" not in values or "P" not in values:
                return 28
            if values["L"] not in (2, 20) or values["P"] != int(values["P"]) or not 0 <= values["P"] <= 6:
                return 29 if values["P"] > 6 else 28 if values["L"] not in (2, 20) else 23
            used |= {"L", "P"}
        elif nonmodal in (920,) and not axes:
            return 26
        elif nonmodal == 530 and motion not in (0, 1) and not jog:
            return 30
        if b.motion_axes or (jog and axes):
            if (motion in (1, 2, 3) or jog) and b.feed <= 0:
                return 22
            if motion in (2, 3) and not jog:
                if not ({"X", "Y"} & set(axes)):
                    return 32
                if "R" in values:
                    used.add("R")
                elif not ({"I", "J"} & set(values)):
                    return 35
                used |= {"I", "J", "K"} & set(values)
            if motion == 80:
                return 31
        elif jog:
            return 26
        elif axes and nonmodal not in (100, 280, 300, 920):
            return 31
        if set(values) - used:
            return 36
        if jog and "F" not in values:
            return 22
        return 0

    def _run_jog(self, b: _BlockWords) -> int:
        base = self._queue[-1].target if self._queue else self._pos
        target = self._target(b.axes, b.absolute, base, b.nonmodal == 530, b.coord_select)
        if self.settings[20] and not self._inside_soft_limits(target):
            return 15
        self._queue.append(_Block("jog", target=target, feed_mm_min=b.feed))
        self._ok()
        self._kick(jog=True)
        return 0

    def _run_block(self, b: _BlockWords, quiet: bool) -> int:
        """Execute a checked block in gcode.c's order (modes, dwell, offsets, motion, program end)."""
        m, values, mcodes, axes, nonmodal = self._modal, b.values, b.mcodes, b.axes, b.nonmodal
        absolute, coord_select, feed, motion = b.absolute, b.coord_select, b.feed, b.motion
        m.metric, m.absolute, m.feed_mm_min, m.motion = b.metric, absolute, feed, motion
        if "S" in values:
            m.spindle_speed = values["S"]
        if "T" in values:
            m.tool = int(values["T"])
        for code in mcodes:
            if code in (3, 4, 5):
                m.spindle = f"M{code}"
            elif code in (7, 8):
                m.coolant.add(f"M{code}")
            elif code == 9:
                m.coolant.clear()
        if coord_select != m.coord_select:
            m.coord_select = coord_select
            self._wco_changed()
        checking = self._state == St.CHECK
        line_number = int(values["N"]) if "N" in values else None
        blocks: list[_Block] = []
        dwell = values["P"] if nonmodal == 40 else None
        base = self._queue[-1].target if self._queue else self._pos
        if nonmodal == 100:
            self._set_coords(int(values["L"]), int(values["P"]), axes, coord_select, base)
        elif nonmodal in (280, 300):
            home = self._g28 if nonmodal == 280 else self._g30
            if axes:  # the intermediate point, then the stored position (those axes only)
                mid = self._target(axes, absolute, base, False, coord_select)
                end = tuple(home[k] if "XYZ"[k] in axes else mid[k] for k in range(3))
                blocks += [
                    _Block("line", target=mid, feed_mm_min=math.inf),
                    _Block("line", target=end, feed_mm_min=math.inf),
                ]  # noqa: E501
            else:
                blocks.append(_Block("line", target=(home[0], home[1], home[2]), feed_mm_min=math.inf))
        elif nonmodal in (281, 301):
            here = self._current_pos() if not self._queue else base
            (self._g28 if nonmodal == 281 else self._g30)[:] = list(here)
        elif nonmodal == 920:
            wc = self._coords[coord_select]
            for k, letter in enumerate("XYZ"):
                if letter in axes:
                    self._g92[k] = base[k] - wc[k] - axes[letter]
            self._wco_changed()
        elif nonmodal == 921:
            self._g92 = [0.0, 0.0, 0.0]
            self._wco_changed()
        elif b.motion_axes:
            target = self._target(axes, absolute, base, nonmodal == 530, coord_select)
            # Arcs run here along their chord (same end point; the path and timing are approximate).
            rate = math.inf if motion == 0 else feed
            blocks.append(_Block("line", target=target, feed_mm_min=rate, line_number=line_number))
        if any(c in (2, 30) for c in mcodes):  # program end: modal defaults, G54, [MSG:Pgm End]
            m.motion, m.absolute, m.coord_select, m.spindle = 1, True, 0, "M5"
            m.coolant.clear()
            self._wco_changed()
        for b in blocks:
            if self.settings[20] and not checking and not self._inside_soft_limits(b.target):
                self._queue.clear()
                self._raise_alarm(2)
                return 0
        if checking:
            blocks, dwell = [], None
        ok_now = not quiet
        if dwell is not None:  # G4 waits for the planner to drain, dwells, then the rest is queued
            self._queue.append(
                _Block("dwell", dwell_s=dwell, defer_ok=ok_now, line_number=line_number, follow=blocks)
            )  # noqa: E501
            ok_now = False
        else:
            self._queue.extend(blocks)
        if any(c in (2, 30) for c in mcodes):
            self._emit("[MSG:Pgm End]")
        if ok_now:
            self._ok()
        self._kick()
        return 0

    def _target(
        self, axes: dict[str, float], absolute: bool, base: tuple[float, ...], machine: bool, coord: int
    ) -> tuple[float, float, float]:
        target = list(base)
        wc = self._coords[coord]
        for k, letter in enumerate("XYZ"):
            if letter not in axes:
                continue
            if machine:  # G53: machine coordinates, whatever G90/G91 say
                target[k] = axes[letter]
            elif absolute:
                target[k] = axes[letter] + wc[k] + self._g92[k]
            else:
                target[k] = base[k] + axes[letter]
        return (target[0], target[1], target[2])

    def _set_coords(
        self, mode: int, p: int, axes: dict[str, float], coord: int, here: tuple[float, ...]
    ) -> None:
        index = coord if p == 0 else p - 1
        c = self._coords[index]
        for k, letter in enumerate("XYZ"):
            if letter in axes:  # L2: the offset itself; L20: so that here reads as the value
                c[k] = axes[letter] if mode == 2 else here[k] - self._g92[k] - axes[letter]
        self._wco_changed()

    def _soft_box(self, axis: int) -> tuple[float, float]:
        """settings/limits.c soft limits: [-$13x, 0], or [0, $13x] for a force-origin axis homing
        to its negative end."""
        travel = self.settings[130 + axis]
        if self.force_origin and self._home_dir_negative(axis):
            return 0.0, travel
        return -travel, 0.0

    def _inside_soft_limits(self, target: tuple[float, ...]) -> bool:
        return all(self._soft_box(k)[0] - 1e-6 <= target[k] <= self._soft_box(k)[1] + 1e-6 for k in range(3))

    def _kick(self, jog: bool = False) -> None:
        """Auto cycle start: a block queued while idle starts running now."""
        if self._state == St.IDLE and self._queue:
            self._state = St.JOG if jog else St.RUN
            self._start_block(self._queue[0], self.clock.now())


__all__ = ["BANNER", "GrblDevice", "GrblFaults", "LinkDown", "MOVING", "St"]
