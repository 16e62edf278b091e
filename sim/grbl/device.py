"""The GRBL device that ties the parts together: power-up and reset, the byte stream, real-time
commands and the line dispatcher (main.c, protocol.c, serial.c, system.c).

- Power-up/reset (main.c, protocol.c): banner ``\\r\\nGrbl 1.1h ['$' for help]\\r\\n``; with hard
  limits on and a switch pressed, ``[MSG:Check Limits]`` and Alarm (CHECK_LIMITS_AT_INIT); Alarm
  at power-up when homing is enabled (``$22=1``) with ``[MSG:'$H'|'$X' to unlock]``; otherwise
  the start-up lines ``$N0``/``$N1`` run (``>line:ok``).
- Real-time commands ``?`` (status report), ``!`` (feed hold), ``~`` (cycle start), ``0x18`` (soft
  reset), ``0x85`` (jog cancel) are handled the moment they arrive, outside the line stream.
- Lines: whitespace and comments are dropped before the 79-character limit (``error:11``); ``$``
  lines go to the system commands, the rest to the G-code parser (``sim.grbl.gcode``).

The parts: ``sim.grbl.gcode`` (line parser and modal state), ``sim.grbl.planner`` (planner and
motion), ``sim.grbl.settings`` (settings and EEPROM), ``sim.grbl.reports`` (what it reports).
"""

from __future__ import annotations

import re
import time
from collections import deque

from sim.endpoint import EmulatorEndpoint
from sim.grbl.gcode import GcodeMixin, Modal
from sim.grbl.planner import Block, PlannerMixin
from sim.grbl.reports import ReportsMixin
from sim.grbl.settings import DEFAULT_SETTINGS, SettingsMixin
from sim.grbl.states import (
    BANNER,
    LINE_MAX_CHARS,
    MOVING,
    PLANNER_BLOCKS,
    RT_HOLD,
    RT_JOG_CANCEL,
    RT_RESET,
    RT_RESUME,
    RT_SAFETY_DOOR,
    RT_STATUS,
    St,
)
from sim.motion import LinearMove


class GrblDevice(GcodeMixin, PlannerMixin, SettingsMixin, ReportsMixin, EmulatorEndpoint):
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
        line_numbers: bool = False,
        name: str = "grbl",
    ) -> None:
        """One emulated controller, powered up (its banner is waiting to be read).

        Parameters
        ----------
        time_scale
            Model seconds per wall second (50: a 2 s move takes 40 ms); delays scale with it.
        travel_mm
            Usable X, Y travel from the homed position; the switches sit ``$27`` beyond it, so
            ``$13x = travel_mm + $27``.
        max_rate_mm_min
            ``$110``/``$111``: each axis' top speed.
        accel_mm_s2
            ``$120``/``$121``: each axis' acceleration.
        homing
            ``$22``: homing cycle enabled (GRBL then powers up in Alarm until ``$H`` or ``$X``).
        soft_limits
            ``$20``: targets outside ``[-$13x, 0]`` raise ``ALARM:2`` (needs ``homing``).
        hard_limits
            ``$21``: crossing a switch raises ``ALARM:1``.
        start_mm
            Where the carriage physically is at power-up (mm from the X, Y switches' far ends).
        seek_mm_min
            ``$25``, the homing seek rate; None: ``max_rate_mm_min``.
        homing_dir_mask
            ``$23``: bit set, that axis homes to its negative end.
        force_origin
            Built with HOMING_FORCE_SET_ORIGIN (``Z`` in ``$I``'s ``[OPT:...]``): homing sets 0.
        first_boot
            An empty EEPROM: ``error:7`` and a settings dump before the first banner.
        stuck_switches
            Axis letters whose switch reads pressed from power-up on (``ALARM:8`` when homing).
        line_numbers
            Built with USE_LINE_NUMBERS (``N`` in ``[OPT:...]``): status reports carry ``Ln:``. A
            stock build has none.
        name
            The device's name in messages and ``LinkDown`` errors.
        """
        super().__init__(name, time_scale)
        self.settings: dict[int, float] = dict(DEFAULT_SETTINGS)
        self.settings.update({
            110: float(max_rate_mm_min), 111: float(max_rate_mm_min),
            120: float(accel_mm_s2), 121: float(accel_mm_s2),
            # settings.c: $22=0 forces soft limits off ($20 needs homing), so no EEPROM holds both
            22: int(homing), 20: int(soft_limits and homing), 21: int(hard_limits),
            25: float(seek_mm_min if seek_mm_min is not None else max_rate_mm_min),
            23: int(homing_dir_mask),
        })  # fmt: skip
        self.force_origin = force_origin
        self.line_numbers = line_numbers
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
        self._init_eeprom()
        self._rx = bytearray()
        self._pending: deque[str] = deque()  # lines waiting for the planner / a sync
        self._queue: deque[Block] = deque()
        self._pos = (0.0, 0.0, 0.0)  # GRBL's step count: zero at power-up
        # Where the carriage really is, minus what GRBL believes: it knows only after homing.
        self._offset = (float(start_mm[0]), float(start_mm[1]), 0.0)
        self._hold: LinearMove | None = None  # braking move of a feed hold / door
        self._held_block: Block | None = None
        self._wco_count = 0  # report.c's refresh counters, zeroed by every reset
        self._ovr_count = 0
        self._report_pending = False  # a '?' that arrived while GRBL could not answer it
        self._g92 = [0.0, 0.0, 0.0]
        self._pins: set[str] = set()
        self._door_open = False
        # A line GRBL is stuck in (a soft limit's critical loop): its ok goes out on the reset.
        self._held_ok = False
        # protocol.c clears a reset that arrives before this wall time (a critical alarm's delay).
        self._deaf_until = 0.0
        self._power_up()

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

    def take_output(self) -> list[tuple[float, bytes]]:
        """Take everything the device has queued to send, each chunk with the model time it goes
        out on the wire (for transcript tests of the firmware's order and delays)."""
        with self._cond:
            self._advance()
            t0 = self.clock.real_deadline(0.0)
            out = [((t - t0) * self.clock.scale, b) for t, b in self._out]
            self._out.clear()
            return out

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

    def _emit(self, line: str, reply: bool = True) -> None:
        self._send(line, reply)

    def _ok(self) -> None:
        if not self._drop_reply():
            self._emit("ok")

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
        self._modal = Modal()  # gc_init: the parser state starts over (feed 0)
        self._g92 = [0.0, 0.0, 0.0]  # gc_init clears G92; G54 comes back from EEPROM
        self._wco_count = self._ovr_count = 0
        self._report_pending = False
        self._critical = False
        self._held_ok = False
        self._out.append((max(time.monotonic(), self._silent_until), b"\r\n"))
        self._emit(BANNER, reply=False)
        if self.settings[21] and self._switches_pressed():  # CHECK_LIMITS_AT_INIT (on by default)
            self._state = St.ALARM
            self._emit("[MSG:Check Limits]", reply=False)
        # protocol.c: a reset out of Sleep comes back in Alarm, as sleeping may lose position
        if self._state in (St.ALARM, St.SLEEP):
            self._state = St.ALARM
            self._emit("[MSG:'$H'|'$X' to unlock]", reply=False)
            return
        self._state = St.IDLE
        for text in self.startup_lines:
            if text:
                code = self._gcode(text.upper().replace(" ", ""), jog=False, quiet=True)
                self._emit(f">{text}:" + (f"error:{code}" if code else "ok"), reply=False)

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

    def _soft_reset(self) -> None:
        """0x18 (motion_control.c mc_reset, then main.c), in the order the firmware sends it: while
        homing ``ALARM:6`` then the ``$H`` line's ``ok``; mid-motion the held line's ``ok`` (a G4
        waiting) then ``ALARM:3``; each alarm is followed by 500 ms of silence; then the banner. A
        reset within 500 ms of ``ALARM:1/2`` is cleared by protocol.c and does nothing."""
        if self._critical and time.monotonic() < self._deaf_until:
            return
        front = self._queue[0] if self._queue else None
        in_motion = (self._state in MOVING and front is not None and front.kind != "dwell") or (
            self._hold is not None
        )
        # the synchronising line (G4, $H) or the line a soft limit stopped returns once aborted
        held_ok = any(b.defer_ok for b in self._queue) or self._held_ok
        self._pos = self._current_pos()
        if self._state == St.HOME:
            self._homed = False
            self._state = St.ALARM
            self._alarm_line(6)
            if held_ok:
                self._ok()
        elif in_motion:
            self._homed = False
            self._state = St.ALARM
            if held_ok:
                self._ok()
            self._alarm_line(3)
        elif held_ok:
            self._ok()
        self._reset_buffers()
        self._restart()

    def _reset_buffers(self) -> None:
        self._hold = None
        self._held_block = None
        self._queue.clear()
        self._pending.clear()
        self._rx.clear()
        self._pins.discard("X")

    def _blocking(self) -> bool:
        """True while a line must wait: a sync (G4/$H) is pending or the planner is full."""
        return any(b.defer_ok for b in self._queue) or len(self._queue) >= PLANNER_BLOCKS

    def _service_lines(self) -> None:
        # protocol.c: asleep, GRBL loops on real-time commands only until a reset
        while self._pending and not self._blocking() and self._state != St.SLEEP:
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
            self._print_offsets()
        elif cmd == "H":
            self._home_command()
        elif cmd == "I":
            self._build_info()
        elif cmd == "N":
            self._list_startup_lines()
        elif cmd.startswith("N") and cmd[1:2].isdigit():
            self._store_startup_line(cmd)
        elif cmd == "SLP":
            # system.c answers ok; protocol.c then enters the sleep state and says so
            self._ok()
            self._state = St.SLEEP
            self._emit("[MSG:Sleeping]", reply=False)
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
            self._parser_state()
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
        self._queue.append(Block("home", defer_ok=True))
        self._start_block(self._queue[0], self.clock.now())


__all__ = ["GrblDevice"]
