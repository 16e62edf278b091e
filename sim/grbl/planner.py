"""GRBL's planner and motion (planner.c, stepper.c, limits.c, motion_control.c), on the model clock.

``ok`` of a motion line means *queued* (a 15-block planner); ``G4`` and ``$H`` answer once done.
Motion follows distance, feed and acceleration (``sim.motion``). Soft limits (``$20``) give
``ALARM:2`` (``error:15`` for jogs); crossing a switch with hard limits on (``$21``) gives
``ALARM:1`` and loses the position. A feed hold brakes along the path (``Hold:1``, then
``Hold:0``); ``~`` resumes it. Homing (limits.c): seek the switches, locate, pull off ``$27``; the
machine frame after it is 0 on a HOMING_FORCE_SET_ORIGIN build, else ``-$27`` at the positive end
or ``-$13x + $27`` at the negative end (``$23`` bit set). A stuck switch gives ``ALARM:8``, a dead
one ``ALARM:9`` after searching 1.5 x ``$13x``.

``PlannerMixin`` is one part of ``GrblDevice`` (``sim.grbl.device``): ``_advance`` brings the model
to the clock's present, ``_next_model_event`` says when a blocked reader should wake.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from sim.grbl.states import ALARM_DELAY_S, HOMING_SEARCH_SCALAR, MOVING, St
from sim.motion import LinearMove


@dataclass
class Block:
    """One planner block (or a synchronous line that waits in the queue: G4, $H)."""

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
    fail_pos: tuple[float, float, float] | None = None  # GRBL's count after that failure
    fail_phys: tuple[float, float, float] | None = None  # where the carriage really is then
    follow: list[Block] = field(default_factory=list)  # queued once this (synchronous) block ends


class PlannerMixin:
    """The block queue, motion in time, homing, holds and limits (part of ``GrblDevice``)."""

    _queue: deque[Block]

    def _next_model_event(self) -> float | None:
        times: list[float] = []
        if (
            self._queue
            and self._queue[0].t_end is not None
            and (self._state in MOVING or self._dwell_in_hold())
        ):
            b = self._queue[0]
            times += [t for t in (b.t_end, b.fault_alarm_t, b.fault_disconnect_t, b.limit_t) if t is not None]
        if self._hold is not None:
            times.append(self._hold.t_end)
        return min(times) if times else None

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
                elif self._state == St.HOLD:
                    self._hold_done()
                continue
            if not self._queue or not (self._state in MOVING or self._dwell_in_hold()):
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

    def _dwell_in_hold(self) -> bool:
        """A G4 behind a hold runs on: nothing moves, and the planner is empty (protocol.c's sync)."""
        return self._state == St.HOLD and self._hold is None and self._queue[0].kind == "dwell"

    def _hold_done(self) -> None:
        """The hold has braked (Hold:0). If braking used up the held block, that block is done."""
        held = self._held_block
        if held is None or not self._queue or self._queue[0] is not held:
            return
        if math.dist(self._pos, held.target) > 1e-6:
            return
        self._held_block = None
        held.move = None
        self._finish_block(held)

    def _start_block(self, block: Block, now: float) -> None:
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

    def _finish_block(self, block: Block) -> None:
        self._queue.popleft()
        if block.kind == "home":
            self._homing_done(block)
            return
        if block.move is not None:
            self._pos = block.move.end  # type: ignore[assignment]
        if block.defer_ok:
            self._ok()
        self._queue.extend(block.follow)
        if self._state == St.HOLD:  # held: what follows waits for '~' (a dwell runs on, see _advance)
            if self._queue:
                self._queue[0].t_start = None
            return
        if self._queue:
            self._queue[0].t_start = None
            self._start_block(self._queue[0], block.t_end if block.t_end is not None else self.clock.now())
            if self._queue[0].kind == "jog":
                self._state = St.JOG
            elif self._queue[0].kind != "home":
                self._state = St.RUN
        else:
            self._state = St.IDLE

    def _kick(self, jog: bool = False) -> None:
        """Auto cycle start: a block queued while idle starts running now."""
        if self._state == St.IDLE and self._queue:
            self._state = St.JOG if jog else St.RUN
            self._start_block(self._queue[0], self.clock.now())

    def _accel(self) -> float:
        return min(self.settings[120], self.settings[121])

    def _max_rate(self, a: tuple[float, ...], b: tuple[float, ...]) -> float:
        # The path speed whose per-axis components stay under each axis' $11x max rate.
        d = math.dist(a, b)
        if d == 0:
            return self.settings[110]
        limits = [self.settings[110 + i] * d / abs(b[i] - a[i]) for i in range(3) if b[i] != a[i]]
        return min(limits)

    def _soft_box(self, axis: int) -> tuple[float, float]:
        """settings/limits.c soft limits: [-$13x, 0], or [0, $13x] for a force-origin axis homing
        to its negative end."""
        travel = self.settings[130 + axis]
        if self.force_origin and self._home_dir_negative(axis):
            return 0.0, travel
        return -travel, 0.0

    def _inside_soft_limits(self, target: tuple[float, ...]) -> bool:
        return all(self._soft_box(k)[0] - 1e-6 <= target[k] <= self._soft_box(k)[1] + 1e-6 for k in range(3))

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

    def _switches_pressed(self) -> set[str]:
        phys = [p + o for p, o in zip(self._current_pos(), self._offset, strict=True)]
        beyond = {a for a, v, t in zip("XYZ", phys, self._travel, strict=True) if not -1e-6 <= v <= t + 1e-6}
        return beyond | self.stuck_switches

    def _hard_limit(self, block: Block, t: float) -> None:
        if block.move is not None:
            self._pos = block.move.state_at(t)[0]  # type: ignore[assignment]
        self._queue.clear()
        self._pending.clear()
        self._state = St.ALARM
        self._homed = False
        self._pins.add("X")
        self._raise_alarm(1)

    def _alarm_line(self, code: int) -> None:
        """report.c report_alarm_message: ``ALARM:N``, then 500 ms in which GRBL sends nothing."""
        start = max(time.monotonic(), self._silent_until)
        self._emit(f"ALARM:{code}", reply=False)
        self._silent_until = start + self.clock.to_real_s(ALARM_DELAY_S)

    def _raise_alarm(self, code: int) -> None:
        """protocol.c protocol_exec_rt_system: the alarm line and its delay; a critical one (1, 2) then
        says ``[MSG:Reset to continue]``, and a reset that arrived during the delay is cleared."""
        self._critical = code in (1, 2)
        self._state = St.ALARM
        self._alarm_line(code)
        if self._critical:
            self._deaf_until = self._silent_until
            self._emit("[MSG:Reset to continue]", reply=False)

    def _home_dir_negative(self, axis: int) -> bool:
        return bool(int(self.settings[23]) >> axis & 1)

    def _plan_homing(self, block: Block, t0: float) -> None:
        """limits.c: seek each switch (searching 1.5 x $13x), locate it at $24, pull off $27.

        The cycles run Z first, then X and Y together (config.h HOMING_CYCLE_0/1). A failed cycle
        ends homing: the axes of earlier cycles are homed, and the failed cycle's axes keep the count
        limits_go_home left, which it zeroes at the start of each phase: the search's end
        (``ALARM:9``, 1.5 x the cycle's largest ``$13x`` toward the switch) or the pull-off's
        (``ALARM:8``, ``$27`` away from the switch, which still reads pressed)."""
        seek, locate, pull = self.settings[25] / 60.0, self.settings[24] / 60.0, self.settings[27]
        # The switches: the positive end of each axis, or the negative one where $23 says so.
        switch_phys = [0.0 if self._home_dir_negative(i) else self._travel[i] for i in range(3)]
        target = tuple(p - o for p, o in zip(switch_phys, self._offset, strict=True))
        block.move = LinearMove.plan(self._pos, target, seek, self._accel(), t0)
        block.t_end = block.move.t_end + 2 * pull / max(locate, 1e-9)
        for cycle in ("Z", "XY"):
            stuck, dead = self.stuck_switches & set(cycle), self.dead_switches & set(cycle)
            if stuck or dead:
                self._homing_failure(block, t0, cycle, 8 if stuck else 9)
                return

    def _homing_failure(self, block: Block, t0: float, cycle: str, code: int) -> None:
        """Where a failed homing cycle leaves GRBL's count and the carriage (see ``_plan_homing``)."""
        seek, locate, pull = self.settings[25] / 60.0, self.settings[24] / 60.0, self.settings[27]
        axes = ["XYZ".index(a) for a in cycle]
        count = list(self._pos)
        phys = [p + o for p, o in zip(self._pos, self._offset, strict=True)]
        if cycle == "XY":  # the Z cycle ran first and homed Z
            count[2] = self._home_position(2)
            phys[2] = pull if self._home_dir_negative(2) else self._travel[2] - pull
        search = HOMING_SEARCH_SCALAR * max(self.settings[130 + i] for i in axes)
        for i in axes:
            toward = -1.0 if self._home_dir_negative(i) else 1.0
            if code == 9:  # the search ran its full length; the carriage stops at the end stop
                count[i] = toward * search
                phys[i] = 0.0 if toward < 0 else self._travel[i]
            else:  # the pull-off ran its full length off a switch that never released
                count[i] = -toward * pull
                phys[i] -= toward * pull
        block.move = LinearMove.plan(self._pos, self._pos, seek, self._accel(), t0)
        block.t_end = t0 + (search / max(seek, 1e-9) if code == 9 else pull / max(locate, 1e-9))
        block.homing_fail = code
        block.fail_pos = (count[0], count[1], count[2])
        block.fail_phys = (phys[0], phys[1], phys[2])

    def _home_position(self, axis: int) -> float:
        """limits.c limits_go_home's machine position at the pull-off point."""
        if self.force_origin:
            return 0.0
        pull, travel = self.settings[27], self.settings[130 + axis]
        return -travel + pull if self._home_dir_negative(axis) else -pull

    def _homing_done(self, block: Block) -> None:
        if block.homing_fail is not None:
            assert block.fail_pos is not None and block.fail_phys is not None
            self._pos = block.fail_pos
            self._offset = tuple(p - c for p, c in zip(block.fail_phys, block.fail_pos, strict=True))  # type: ignore[assignment]
            self._homed = False
            # limits.c: alarm (and its 500 ms), mc_reset(); $H still answers ok; then main() restarts.
            self._state = St.ALARM
            self._alarm_line(block.homing_fail)
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

    def _feed_hold(self) -> None:
        now = self.clock.now()
        if self._state == St.RUN and self._queue[0].move is None:
            # A dwell (G4) runs with nothing moving: the hold is complete at once (Hold:0).
            self._state = St.HOLD
            return
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


__all__ = ["Block", "PlannerMixin"]
