"""A GRBL 1.1 firmware emulator that speaks the real serial grammar.

What it models (gnea/grbl ``doc/markdown/interface.md``, ``commands.md``):

- Power-up/reset banner ``\\r\\nGrbl 1.1h ['$' for help]\\r\\n``; ``Alarm`` at power-up when homing
  is enabled (``$22=1``) with ``[MSG:'$H'|'$X' to unlock]``.
- The state machine Idle, Run, Hold:0/1, Jog, Home, Alarm, Door:0-3, with real-time commands
  ``?`` (status report), ``!`` (feed hold), ``~`` (cycle start), ``0x18`` (soft reset), ``0x85``
  (jog cancel) handled the moment they arrive, outside the line stream.
- Lines: G-code (G0/G1/G4/G17/G20/G21/G53/G54/G90/G91/G94, F, M3/M4/M5/M7/M8/M9, N, S, T) and
  ``$`` commands (``$$``, ``$N=v``, ``$H``, ``$X``, ``$J=``, ``$I``, ``$G``, ``$#``). Every line
  gets ``ok`` or ``error:N``; ``ok`` of a motion line means *queued* (a 15-block planner), while
  ``G4`` and ``$H`` answer only once done, so replies stay in order.
- Motion follows distance, feed and acceleration (``sim.motion``) on a real-time or scaled clock.
  Soft limits (``$20``) give ``ALARM:2`` (``error:15`` for jogs); leaving the travel with hard
  limits on (``$21``) gives ``ALARM:1`` and loses the position. Both are critical alarms: nothing
  but ``?`` and reset is served until ``0x18``.
- Status reports ``<State|MPos|WPos,Bf,Ln,FS,Pn,WCO,Ov,A>`` in GRBL's order, with WCO and Ov
  rotated in every few reports as the firmware does.

Machine frame: homing finds the switches at (0, 0, 0) and the travel is ``[0, $13x]`` mm on each
axis (the ``HOMING_FORCE_SET_ORIGIN`` build option); this is the frame ``drivers.grbl`` expects.

Faults (``GrblFaults``) are switched on per test: a lost ``ok``, garbage bytes, a slow reply, a
disconnect mid-move, ``ALARM:1`` mid-move, and homing that never ends.

The emulator has no thread of its own: every read, write or ``in_waiting`` first advances the
model to the clock's present, and a blocked reader sleeps until the next scheduled event.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from dataclasses import dataclass, field

from sim.endpoint import EmulatorEndpoint, Faults, LinkDown
from sim.motion import LinearMove

BANNER = "Grbl 1.1h ['$' for help]"
VERSION_LINE = "[VER:1.1h.20190830:]"
OPTIONS_LINE = "[OPT:V,15,128]"
PLANNER_BLOCKS = 15
RX_BUFFER_BYTES = 128
LINE_MAX_CHARS = 80  # GRBL's LINE_BUFFER_SIZE; longer lines give error:11

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


@dataclass
class _Modal:
    motion: int = 0  # 0 or 1
    absolute: bool = True  # G90
    metric: bool = True  # G21
    feed_mm_min: float = 0.0
    spindle: str = "M5"
    coolant: set[str] = field(default_factory=set)
    spindle_speed: float = 0.0
    tool: int = 0


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
        name: str = "grbl",
    ) -> None:
        super().__init__(name, time_scale)
        self.settings: dict[int, float] = dict(DEFAULT_SETTINGS)
        self.settings.update({
            130: float(travel_mm[0]), 131: float(travel_mm[1]),
            110: float(max_rate_mm_min), 111: float(max_rate_mm_min),
            120: float(accel_mm_s2), 121: float(accel_mm_s2),
            22: int(homing), 20: int(soft_limits), 21: int(hard_limits),
            25: float(seek_mm_min if seek_mm_min is not None else max_rate_mm_min),
        })  # fmt: skip
        self._rx = bytearray()
        self._pending: deque[str] = deque()  # lines waiting for the planner / a sync
        self._queue: deque[_Block] = deque()
        self._pos = (0.0, 0.0, 0.0)  # GRBL's step count: zero at power-up
        # Where the carriage really is, minus what GRBL believes: it knows only after homing.
        self._offset = (float(start_mm[0]), float(start_mm[1]), 0.0)
        self._wco = (0.0, 0.0, 0.0)
        self._hold: LinearMove | None = None  # braking move of a feed hold / door
        self._held_block: _Block | None = None
        self._reports = 0
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
        if self._queue and self._queue[0].t_end is not None and self._state in ("Run", "Jog", "Home"):
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
        self._modal = _Modal()
        self._critical = False
        self._homed = False
        self._door_sub = 0
        self._state = "Alarm" if self.settings[22] else "Idle"
        self._emit_banner()

    def _emit_banner(self) -> None:
        self._out.append((time.monotonic(), b"\r\n"))
        self._emit(BANNER, reply=False)
        if self._state == "Alarm":
            self._emit("[MSG:'$H'|'$X' to unlock]", reply=False)

    def _current_pos(self) -> tuple[float, float, float]:
        now = self.clock.now()
        if self._hold is not None:
            return self._hold.state_at(now)[0]  # type: ignore[return-value]
        if self._queue and self._queue[0].move is not None and self._state in ("Run", "Jog", "Home"):
            return self._queue[0].move.state_at(now)[0]  # type: ignore[return-value]
        return self._pos

    def _current_speed_mm_min(self) -> float:
        now = self.clock.now()
        if self._hold is not None:
            return self._hold.state_at(now)[1] * 60.0
        if self._queue and self._queue[0].move is not None and self._state in ("Run", "Jog", "Home"):
            return self._queue[0].move.state_at(now)[1] * 60.0
        return 0.0

    def _state_text(self) -> str:
        if self._state == "Hold":
            return f"Hold:{1 if self._hold is not None else 0}"
        if self._state == "Door":
            return f"Door:{self._door_sub}"
        return self._state

    def _advance(self) -> None:
        """Bring the model up to the clock's present."""
        now = self.clock.now()
        while True:
            if self._hold is not None and now >= self._hold.t_end:
                self._pos = self._hold.end  # type: ignore[assignment]
                self._hold = None
                if self._state == "Door":
                    self._door_sub = 1 if self._door_open else 0
                elif self._state == "Jog":  # a cancelled jog ends idle
                    self._state = "Idle"
                continue
            if self._state not in ("Run", "Jog", "Home") or not self._queue:
                break
            block = self._queue[0]
            if block.t_start is None:
                self._start_block(block, now)
            if block.fault_disconnect_t is not None and now >= block.fault_disconnect_t:
                self._pos = block.move.state_at(block.fault_disconnect_t)[0] if block.move else self._pos
                block.move = LinearMove.plan(self._pos, self._pos, 1.0, 1.0, now)
                self._queue.clear()
                self._state = "Idle"
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
            seek = self.settings[25] / 60.0
            locate = self.settings[24] / 60.0
            pull = self.settings[27]
            switches = tuple(-o for o in self._offset)  # the physical corner, in GRBL's count
            block.move = LinearMove.plan(self._pos, switches, seek, self._accel(), t0)
            block.t_end = block.move.t_end + 2 * pull / max(locate, 1e-9)
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

    def _finish_block(self, block: _Block) -> None:
        self._queue.popleft()
        if block.kind == "home":
            self._pos = (0.0, 0.0, 0.0)
            self._offset = (0.0, 0.0, 0.0)
            self._homed = True
        elif block.move is not None:
            self._pos = block.move.end  # type: ignore[assignment]
        if block.defer_ok:
            self._ok()
        if self._queue:
            self._queue[0].t_start = None
            self._start_block(self._queue[0], block.t_end if block.t_end is not None else self.clock.now())
            if self._queue[0].kind == "jog":
                self._state = "Jog"
            elif self._queue[0].kind != "home":
                self._state = "Run"
        else:
            self._state = "Idle"

    def _hard_limit(self, block: _Block, t: float) -> None:
        if block.move is not None:
            self._pos = block.move.state_at(t)[0]  # type: ignore[assignment]
        self._queue.clear()
        self._pending.clear()
        self._state = "Alarm"
        self._homed = False
        self._pins.add("X")
        self._raise_alarm(1)

    def _raise_alarm(self, code: int) -> None:
        self._critical = code in (1, 2)
        self._state = "Alarm"
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
        box = [(-self._offset[i], self.settings[130 + i] - self._offset[i]) for i in range(3)]
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
        if self._state == "Home":
            self._queue.clear()
            self._homed = False
            self._raise_alarm(7)
            return
        if self._state in ("Run", "Jog"):
            block = self._queue[0]
            assert block.move is not None
            self._hold = block.move.stopping(now, self._accel())
            self._held_block = block
            self._door_sub = 2
        elif self._state in ("Idle", "Hold"):
            self._door_sub = 1 if self._hold is None else 2
        else:
            return
        self._state = "Door"

    # --- real-time commands ------------------------------------------------------------------
    def _realtime(self, byte: bytes) -> bool:
        if byte == RT_STATUS:
            self._emit(self._status_report(), reply=False)
        elif byte == RT_HOLD:
            self._feed_hold()
        elif byte == RT_RESUME:
            self._cycle_start()
        elif byte == RT_RESET:
            self._soft_reset()
        elif byte == RT_JOG_CANCEL:
            if self._state == "Jog":
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
        if self._state in ("Run", "Jog"):
            block = self._queue[0]
            assert block.move is not None
            self._hold = block.move.stopping(now, self._accel())
            if self._state == "Jog":  # GRBL cancels a jog on hold and flushes jog blocks
                self._queue.clear()
                return
            self._held_block = block
            self._state = "Hold"
        elif self._state == "Idle":
            self._state = "Hold"

    def _cycle_start(self) -> None:
        now = self.clock.now()
        resumable = (self._state == "Hold" and self._hold is None) or (
            self._state == "Door" and self._door_sub == 0
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
            self._state = "Run"
        elif self._queue:
            self._state = "Run"
        else:
            self._state = "Idle"

    def _soft_reset(self) -> None:
        moving = self._state in ("Run", "Jog", "Home") or self._hold is not None
        self._pos = self._current_pos()
        if self._state == "Home":
            self._homed = False
            self._emit("ALARM:6", reply=False)
            self._state = "Alarm"
        elif moving and self._state != "Jog":
            self._homed = False
            self._emit("ALARM:3", reply=False)
            self._state = "Alarm"
        elif self._state in ("Hold", "Jog", "Door"):
            self._state = "Idle"
        self._hold = None
        self._held_block = None
        self._queue.clear()
        self._pending.clear()
        self._rx.clear()
        self._critical = False
        self._pins.discard("X")
        self._modal = _Modal(feed_mm_min=self._modal.feed_mm_min)  # GRBL re-initialises the parser
        self._emit_banner()

    def _status_report(self) -> str:
        mask = int(self.settings[10])
        pos = self._current_pos()
        parts = [self._state_text()]
        if mask & 1:
            parts.append("MPos:" + ",".join(f"{v:.3f}" for v in pos))
        else:
            parts.append("WPos:" + ",".join(f"{p - w:.3f}" for p, w in zip(pos, self._wco, strict=True)))
        if mask & 2:
            parts.append(f"Bf:{PLANNER_BLOCKS - len(self._queue)},{RX_BUFFER_BYTES - len(self._rx)}")
        if self._queue and self._queue[0].line_number is not None:
            parts.append(f"Ln:{self._queue[0].line_number}")
        parts.append(f"FS:{self._current_speed_mm_min():.0f},{self._modal.spindle_speed:.0f}")
        if self._pins:
            parts.append("Pn:" + "".join(p for p in "XYZPDHRS" if p in self._pins))
        n = self._reports % 10
        self._reports += 1
        if n == 0:
            parts.append("WCO:" + ",".join(f"{v:.3f}" for v in self._wco))
        elif n == 1:
            parts.append("Ov:100,100,100")
            acc = "S" if self._modal.spindle == "M3" else "C" if self._modal.spindle == "M4" else ""
            acc += "".join(c for c, m in (("F", "M8"), ("M", "M7")) if m in self._modal.coolant)
            if acc:
                parts.append("A:" + acc)
        return "<" + "|".join(parts) + ">"

    # --- lines ---------------------------------------------------------------------------------
    def _blocking(self) -> bool:
        """True while a line must wait: a sync (G4/$H) is pending or the planner is full."""
        return any(b.defer_ok for b in self._queue) or len(self._queue) >= PLANNER_BLOCKS

    def _service_lines(self) -> None:
        while self._pending and not self._blocking():
            if self._critical:
                self._pending.clear()  # GRBL serves nothing but ? and reset until reset
                return
            self._line(self._pending.popleft())

    def _line(self, raw: str) -> None:
        self.lines_received.append(raw)
        line = re.sub(r"\(.*?\)|;.*$", "", raw).replace(" ", "").replace("\t", "").upper()
        if len(raw) > LINE_MAX_CHARS:
            self._emit("error:11")
            return
        if not line:
            self._ok()
            return
        if line.startswith("$"):
            self._system(line)
            return
        if self._state == "Alarm" or self._state == "Jog":
            self._emit("error:9")
            return
        code = self._gcode(line, jog=False)
        if code:
            self._emit(f"error:{code}")

    def _system(self, line: str) -> None:
        idle_like = self._state in ("Idle", "Alarm")
        if line == "$":
            self._emit("[HLP:$$ $# $G $I $N $x=val $Nx=line $J=line $SLP $C $X $H ~ ! ? ctrl-x]")
            self._ok()
        elif line == "$$":
            if not idle_like:
                self._emit("error:8")
                return
            for key in sorted(self.settings):
                v = self.settings[key]
                self._emit(f"${key}={int(v)}" if key in INT_SETTINGS else f"${key}={v:.3f}")
            self._ok()
        elif line == "$I":
            self._emit(VERSION_LINE)
            self._emit(OPTIONS_LINE)
            self._ok()
        elif line == "$G":
            m = self._modal
            words = [f"G{m.motion}", "G54", "G17", "G21" if m.metric else "G20", "G90" if m.absolute else "G91",
                     "G94", m.spindle, *(sorted(m.coolant) or ["M9"]), f"T{m.tool}",
                     f"F{m.feed_mm_min:g}", f"S{m.spindle_speed:g}"]  # fmt: skip
            self._emit("[GC:" + " ".join(words) + "]")
            self._ok()
        elif line == "$#":
            for name in ("G54", "G55", "G56", "G57", "G58", "G59", "G28", "G30", "G92"):
                self._emit(f"[{name}:0.000,0.000,0.000]")
            self._emit("[TLO:0.000]")
            self._emit("[PRB:0.000,0.000,0.000:0]")
            self._ok()
        elif line == "$X":
            if self._state == "Alarm":
                self._state = "Idle"
                self._emit("[MSG:Caution: Unlocked]")
            self._ok()
        elif line == "$H":
            if not self.settings[22]:
                self._emit("error:5")
                return
            if not idle_like:
                self._emit("error:8")
                return
            if self._door_open:
                self._raise_alarm(7)
                return
            self._state = "Home"
            self._pins.discard("X")
            self._queue.append(_Block("home", defer_ok=True))
            self._start_block(self._queue[0], self.clock.now())
        elif line.startswith("$J="):
            if self._state not in ("Idle", "Jog"):
                self._emit("error:9" if self._state == "Alarm" else "error:8")
                return
            code = self._gcode(line[3:], jog=True)
            if code:
                self._emit(f"error:{code}")
        elif re.fullmatch(r"\$\d+=.*", line):
            key_s, value_s = line[1:].split("=", 1)
            key = int(key_s)
            if not idle_like:
                self._emit("error:8")
                return
            if key not in self.settings:
                self._emit("error:3")
                return
            try:
                value = float(value_s)
            except ValueError:
                self._emit("error:2")
                return
            if value < 0:
                self._emit("error:4")
                return
            if key == 20 and value and not self.settings[22]:
                self._emit("error:10")
                return
            self.settings[key] = float(int(value)) if key in INT_SETTINGS else value
            self._ok()
        else:
            self._emit("error:3")

    _WORD = re.compile(r"([A-Z])([-+]?(?:\d+\.?\d*|\.\d+))")

    def _gcode(self, line: str, jog: bool) -> int:
        """Parse and execute one G-code block; return an error code or 0."""
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
        m = self._modal
        motion, absolute, metric, feed = m.motion, m.absolute, m.metric, m.feed_mm_min
        axes: dict[str, float] = {}
        dwell: float | None = None
        gcodes: list[int] = []
        mcodes: list[int] = []
        line_number = None
        machine = False
        seen: set[str] = set()
        for letter, value in words:
            if letter in "XYZFPNST":
                if letter in seen:
                    return 25
                seen.add(letter)
            if letter == "G":
                if value not in (0, 1, 4, 17, 20, 21, 53, 54, 90, 91, 94):
                    return 20
                gcodes.append(int(value))
            elif letter == "M":
                if value not in (3, 4, 5, 7, 8, 9):
                    return 20
                mcodes.append(int(value))
            elif letter in "XYZ":
                axes[letter] = value
            elif letter == "F":
                if value < 0:
                    return 4
                feed = value * (1.0 if metric else 25.4)
                seen.add("F")
            elif letter == "P":
                dwell = value
            elif letter == "N":
                line_number = int(value)
            elif letter == "S":
                m.spindle_speed = value
            elif letter == "T":
                m.tool = int(value)
            else:
                return 20
        groups = {"motion": [g for g in gcodes if g in (0, 1, 4)], "dist": [g for g in gcodes if g in (90, 91)],
                  "units": [g for g in gcodes if g in (20, 21)]}  # fmt: skip
        if any(len(v) > 1 for v in groups.values()):
            return 21
        for g in gcodes:
            if g in (90, 91):
                absolute = g == 90
            elif g in (20, 21):
                metric = g == 21
                if "F" in seen:
                    feed = dict(words)["F"] * (1.0 if metric else 25.4)
            elif g == 53:
                machine = True
        if jog:
            if 4 in gcodes or 0 in gcodes or 1 in gcodes or mcodes:
                return 16
            if "F" not in seen:
                return 22
            if not axes:
                return 26
        scale = 1.0 if metric else 25.4
        if 4 in gcodes:
            if dwell is None:
                return 28
            if axes:
                return 31
            if dwell < 0:
                return 4
            self._apply_modal(mcodes, absolute, metric, feed, motion)
            self._queue.append(_Block("dwell", dwell_s=dwell, defer_ok=True, line_number=line_number))
            self._kick()
            return 0
        if groups["motion"]:
            motion = groups["motion"][0]
        if dwell is not None:
            return 36
        if axes and motion == 1 and feed <= 0 and not jog:
            return 22
        self._apply_modal(mcodes, absolute if not jog else m.absolute, metric if not jog else m.metric,
                          feed if not jog else m.feed_mm_min, motion)  # fmt: skip
        if not axes:
            self._ok()
            return 0
        base = self._queue[-1].target if self._queue else self._pos
        target = list(base)
        for k, letter in enumerate("XYZ"):
            if letter in axes:
                v = axes[letter] * scale
                target[k] = v if (absolute or machine) else base[k] + v
                if not (absolute or machine):
                    continue
                if not machine:
                    target[k] = v + self._wco[k]
        tgt = (target[0], target[1], target[2])
        if self.settings[20] and not all(-1e-6 <= tgt[k] <= self.settings[130 + k] + 1e-6 for k in range(3)):
            if jog:
                return 15
            self._queue.clear()
            self._raise_alarm(2)
            return 0
        if jog:
            block = _Block("jog", target=tgt, feed_mm_min=feed, line_number=line_number)
        else:
            rate = feed if motion == 1 else math.inf
            block = _Block("line", target=tgt, feed_mm_min=rate, line_number=line_number)
        self._queue.append(block)
        self._ok()
        self._kick(jog)
        return 0

    def _apply_modal(self, mcodes: list[int], absolute: bool, metric: bool, feed: float, motion: int) -> None:
        m = self._modal
        m.absolute, m.metric, m.feed_mm_min, m.motion = absolute, metric, feed, motion
        for code in mcodes:
            if code in (3, 4, 5):
                m.spindle = f"M{code}"
            elif code in (7, 8):
                m.coolant.add(f"M{code}")
            elif code == 9:
                m.coolant.clear()

    def _kick(self, jog: bool = False) -> None:
        """Auto cycle start: a block queued while idle starts running now."""
        if self._state == "Idle" and self._queue:
            self._state = "Jog" if jog else "Run"
            self._start_block(self._queue[0], self.clock.now())


__all__ = ["BANNER", "GrblDevice", "GrblFaults", "LinkDown"]
