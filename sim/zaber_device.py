"""A Zaber ASCII-protocol emulator: one two-axis controller (X on axis 1, Y on axis 2).

Grammar (Zaber ASCII protocol manual):

- Command ``/[address] [axis] [message id] [command] [data]`` ending in LF (CR LF accepted).
  Address 0 (or none) is every device; axis 0 (or none) is the whole device.
- Reply ``@aa x [id] FLAG STATUS WARN DATA`` ending in CR LF, e.g. ``@01 0 OK IDLE -- 0`` or
  ``@01 1 12 OK BUSY -- 0``. FLAG is ``OK`` or ``RJ`` (rejected, DATA names the reason:
  ``BADCOMMAND``, ``BADDATA``, ``BADAXIS``...). STATUS is ``IDLE`` or ``BUSY``. WARN is the most
  urgent warning flag or ``--``: ``FS`` stalled and stopped, ``WL`` unexpected limit trigger,
  ``WR`` no reference position (not homed), ``NI`` a movement was interrupted.
- Commands served: ``home``, ``move abs N``, ``move rel N``, ``move min``, ``move max``,
  ``stop``, ``estop``, ``get X``/``set X N`` for ``pos``, ``maxspeed``, ``accel``, ``limit.min``,
  ``limit.max``, ``resolution``, ``device.id``, ``version``, ``warnings`` and
  ``warnings clear``, and the empty command (a status query).

Units: positions in microsteps; ``maxspeed`` in microsteps/s x 1.6384; ``accel`` in
microsteps/s^2 x 1.6384 / 10000, as Zaber's firmware counts them. The axes move independently,
each with its own trapezoid on the scaled clock (``sim.motion``).

Faults (``sim.endpoint.Faults``): a lost reply, garbage, a slow reply, a disconnect mid-move,
a stall (``FS``, the position is lost) mid-move, and homing that never ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sim.endpoint import EmulatorEndpoint
from sim.motion import LinearMove, Trapezoid

DEFAULT_MICROSTEP_M = 0.047625e-6  # X-LSQ series lead-screw stages
VELOCITY_UNIT = 1.6384  # data units per (microstep/s)
ACCEL_UNIT = 1.6384 / 10000.0  # data units per (microstep/s^2)
WARNING_PRIORITY = ("FF", "FS", "FD", "WL", "WR", "WH", "NI", "NC")
DEVICE_ID = 30222
FIRMWARE = "7.38"


@dataclass
class _Axis:
    number: int
    limit_max: int
    maxspeed: int  # data units
    accel: int  # data units
    pos: float = 0.0
    move: LinearMove | None = None
    homing: bool = False
    warnings: set[str] = field(default_factory=lambda: {"WR"})
    fault_stall_t: float | None = None
    fault_disconnect_t: float | None = None

    def speed_usteps_s(self) -> float:
        return self.maxspeed / VELOCITY_UNIT

    def accel_usteps_s2(self) -> float:
        return self.accel / ACCEL_UNIT


class ZaberDevice(EmulatorEndpoint):
    """A Zaber controller at ``address`` with two axes."""

    def __init__(
        self,
        *,
        time_scale: float = 1.0,
        travel_mm: tuple[float, float] = (500.0, 500.0),
        microstep_m: float = DEFAULT_MICROSTEP_M,
        max_speed_mm_s: float = 50.0,
        accel_mm_s2: float = 500.0,
        address: int = 1,
        start_mm: tuple[float, float] = (0.0, 0.0),
        name: str = "zaber",
    ) -> None:
        super().__init__(name, time_scale)
        self.address = address
        self.microstep_m = microstep_m
        usteps_per_mm = 1e-3 / microstep_m
        self.axes = [
            _Axis(
                number=i + 1,
                limit_max=round(travel_mm[i] * usteps_per_mm),
                maxspeed=round(max_speed_mm_s * usteps_per_mm * VELOCITY_UNIT),
                accel=round(accel_mm_s2 * usteps_per_mm * ACCEL_UNIT),
                pos=start_mm[i] * usteps_per_mm,
            )
            for i in range(2)
        ]
        self._rx = bytearray()

    def power_cycle(self) -> None:
        """Power off and on: motion stops, the reference (home) is lost."""
        with self._cond:
            self.connected = True
            self._out.clear()
            self._rx.clear()
            for ax in self.axes:
                ax.pos = self._axis_pos(ax)
                ax.move, ax.homing = None, False
                ax.warnings = {"WR"}
            self._cond.notify_all()

    # --- transport -----------------------------------------------------------------------------
    def _receive(self, data: bytes) -> None:
        for i in range(len(data)):
            byte = data[i : i + 1]
            if byte in (b"\n", b"\r"):
                if self._rx:
                    line = self._rx.decode("ascii", errors="replace")
                    self._rx.clear()
                    self._line(line)
                continue
            self._rx += byte

    def _next_model_event(self) -> float | None:
        times = []
        for ax in self.axes:
            if ax.move is not None:
                times += [ax.move.t_end] if not ax.homing or math.isfinite(ax.move.t_end) else []
                times += [t for t in (ax.fault_stall_t, ax.fault_disconnect_t) if t is not None]
        return min(times) if times else None

    def _advance(self) -> None:
        now = self.clock.now()
        for ax in self.axes:
            if ax.move is None:
                continue
            if ax.fault_disconnect_t is not None and now >= ax.fault_disconnect_t:
                ax.pos = ax.move.state_at(ax.fault_disconnect_t)[0][0]
                ax.move, ax.fault_disconnect_t = None, None
                self.connected = False
                continue
            if ax.fault_stall_t is not None and now >= ax.fault_stall_t:
                ax.pos = ax.move.state_at(ax.fault_stall_t)[0][0]
                ax.move, ax.fault_stall_t, ax.homing = None, None, False
                ax.warnings |= {"FS", "WR"}  # stalled: the controller no longer trusts its count
                continue
            if now >= ax.move.t_end:
                ax.pos = ax.move.end[0]
                ax.move = None
                if ax.homing:
                    ax.homing = False
                    ax.pos = 0.0
                    ax.warnings.discard("WR")

    def _axis_pos(self, ax: _Axis) -> float:
        if ax.move is None:
            return ax.pos
        return ax.move.state_at(self.clock.now())[0][0]

    def _axis_speed(self, ax: _Axis) -> float:
        if ax.move is None:
            return 0.0
        return ax.move.state_at(self.clock.now())[1]

    # --- replies -------------------------------------------------------------------------------
    def _reply(self, axis: int, msg_id: int | None, flag: str, data: str) -> None:
        if self._drop_reply():
            return
        axes = self.axes if axis == 0 else [self.axes[axis - 1]]
        busy = any(ax.move is not None for ax in axes)
        warns: set[str] = set().union(*(ax.warnings for ax in axes))
        warn = next((w for w in WARNING_PRIORITY if w in warns), "--")
        ident = f" {msg_id:02d}" if msg_id is not None else ""
        self._send(f"@{self.address:02d} {axis}{ident} {flag} {'BUSY' if busy else 'IDLE'} {warn} {data}")

    # --- commands ------------------------------------------------------------------------------
    def _line(self, raw: str) -> None:
        self.lines_received.append(raw)
        text = raw.strip()
        if not text.startswith("/"):
            return  # not addressed to anyone: Zaber devices ignore it
        if ":" in text:  # an optional checksum; accepted, not verified
            text = text.split(":", 1)[0]
        tokens = text[1:].split()
        numbers: list[int] = []
        while tokens and tokens[0].isdigit() and len(numbers) < 3:
            numbers.append(int(tokens.pop(0)))
        address = numbers[0] if numbers else 0
        axis = numbers[1] if len(numbers) > 1 else 0
        msg_id = numbers[2] if len(numbers) > 2 else None
        if address not in (0, self.address):
            return
        if axis > len(self.axes):
            self._reply(0, msg_id, "RJ", "BADAXIS")
            return
        flag, data = self._execute(axis, tokens)
        self._reply(axis, msg_id, flag, data)

    def _execute(self, axis: int, tokens: list[str]) -> tuple[str, str]:
        targets = self.axes if axis == 0 else [self.axes[axis - 1]]
        now = self.clock.now()
        if not tokens:
            return "OK", "0"
        cmd = tokens[0]
        args = tokens[1:]
        if cmd == "home" and not args:
            for ax in targets:
                self._start_home(ax, now)
            return "OK", "0"
        if cmd == "move" and args:
            if axis == 0:
                return "RJ", "BADAXIS"  # a movement needs one axis on a multi-axis controller
            ax = targets[0]
            kind = args[0]
            if kind in ("abs", "rel") and len(args) == 2:
                try:
                    value = int(args[1])
                except ValueError:
                    return "RJ", "BADDATA"
                target = value if kind == "abs" else self._axis_pos(ax) + value
            elif kind in ("min", "max") and len(args) == 1:
                target = 0 if kind == "min" else ax.limit_max
            else:
                return "RJ", "BADCOMMAND"
            if not 0 <= target <= ax.limit_max:
                return "RJ", "BADDATA"
            self._start_move(ax, float(target), now)
            return "OK", "0"
        if cmd in ("stop", "estop") and not args:
            for ax in targets:
                if ax.move is not None:
                    ax.warnings.add("NI")
                    if cmd == "estop":
                        ax.pos = self._axis_pos(ax)
                        ax.move = None
                    else:
                        ax.move = ax.move.stopping(now, ax.accel_usteps_s2())
                    ax.homing = False  # an interrupted homing leaves no reference
            return "OK", "0"
        if cmd == "warnings":
            warns: set[str] = set().union(*(ax.warnings for ax in targets))
            ordered = [w for w in WARNING_PRIORITY if w in warns]
            if args == ["clear"]:
                for ax in targets:
                    ax.warnings &= {"WR"}  # clearing never restores a lost reference
            elif args:
                return "RJ", "BADCOMMAND"
            return "OK", " ".join([f"{len(ordered):02d}", *ordered])
        if cmd == "get" and len(args) == 1:
            return self._get(axis, targets, args[0])
        if cmd == "set" and len(args) == 2:
            return self._set(targets, args[0], args[1])
        return "RJ", "BADCOMMAND"

    def _get(self, axis: int, targets: list[_Axis], name: str) -> tuple[str, str]:
        if name == "device.id":
            return "OK", str(DEVICE_ID)
        if name == "version":
            return "OK", FIRMWARE
        getters = {
            "pos": lambda ax: str(round(self._axis_pos(ax))),
            "maxspeed": lambda ax: str(ax.maxspeed),
            "accel": lambda ax: str(ax.accel),
            "limit.min": lambda ax: "0",
            "limit.max": lambda ax: str(ax.limit_max),
            "resolution": lambda ax: "64",
        }
        if name not in getters:
            return "RJ", "BADCOMMAND"
        return "OK", " ".join(getters[name](ax) for ax in targets)

    def _set(self, targets: list[_Axis], name: str, value: str) -> tuple[str, str]:
        if name not in ("maxspeed", "accel", "limit.max"):
            return "RJ", "BADCOMMAND"
        try:
            number = int(value)
        except ValueError:
            return "RJ", "BADDATA"
        if number <= 0:
            return "RJ", "BADDATA"
        for ax in targets:
            setattr(ax, name.replace("limit.max", "limit_max"), number)
        return "OK", "0"

    # --- motion --------------------------------------------------------------------------------
    def _plan(self, ax: _Axis, target: float, now: float, speed: float | None = None) -> LinearMove:
        start = self._axis_pos(ax)
        v0 = (
            self._axis_speed(ax)
            if ax.move is not None and (ax.move.end[0] - start) * (target - start) > 0
            else 0.0
        )
        if ax.move is not None:
            ax.warnings.add("NI")  # a new movement interrupted the old one
        return LinearMove.plan(
            (start,),
            (target,),
            speed or ax.speed_usteps_s(),
            ax.accel_usteps_s2(),
            now,
            v0=min(v0, speed or 1e30),
        )

    def _arm_faults(self, ax: _Axis, move: LinearMove) -> None:
        f = self.faults
        if f.alarm_at is not None:
            ax.fault_stall_t = move.t0 + f.alarm_at * (move.t_end - move.t0)
            f.alarm_at = None
        if f.disconnect_at is not None:
            ax.fault_disconnect_t = move.t0 + f.disconnect_at * (move.t_end - move.t0)
            f.disconnect_at = None

    def _start_move(self, ax: _Axis, target: float, now: float) -> None:
        ax.homing = False
        ax.move = self._plan(ax, target, now)
        ax.fault_stall_t = ax.fault_disconnect_t = None
        self._arm_faults(ax, ax.move)

    def _start_home(self, ax: _Axis, now: float) -> None:
        ax.homing = True
        ax.warnings.discard("FS")
        move = self._plan(ax, 0.0, now)
        if self.faults.homing_never_ends:  # the sensor never trips: busy forever, going nowhere
            self.faults.homing_never_ends = False
            move = LinearMove(move.start, move.start, Trapezoid(0.0, 1.0, 1.0), math.inf)
        ax.move = move
        ax.fault_stall_t = ax.fault_disconnect_t = None


__all__ = ["ZaberDevice"]
