"""A Zaber ASCII-protocol emulator: a daisy chain of two-axis controllers (X on axis 1, Y on axis 2).

Grammar (Zaber ASCII protocol manual, Firmware 6/7; the zproto crate parses the same way):

- Command ``/[address] [axis] [message id] [command] [data][:checksum]`` ending in LF (CR LF
  accepted). Address 0 (or none) is every device on the chain, each of which answers; axis 0 (or
  none) is the whole device. A message id is 0..99; another number gives ``RJ BADMESSAGEID``.
- Checksum: ``:XX`` after the text is the LRC of every byte between the leading ``/`` (or ``@``,
  ``!``) and the ``:``, i.e. ``(-sum(bytes)) & 0xFF`` in two upper-case hex digits. A command
  with a wrong checksum is dropped unanswered (our reading of the manual; the driver treats no
  answer and an ``RJ`` alike, as a failure); replies and alerts carry one once
  ``comm.checksum`` is 1. (The LRC is written out here again, not imported from the driver, so
  that the emulator checks the driver against an independent implementation.)
- Reply ``@aa x [id] FLAG STATUS WARN DATA`` ending in CR LF, e.g. ``@01 1 12 OK BUSY -- 0``.
  FLAG is ``OK`` or ``RJ`` (DATA names the reason: ``BADCOMMAND``, ``BADDATA``, ``BADAXIS``,
  ``BADMESSAGEID``, ``DEVICEONLY``). STATUS is ``IDLE`` or ``BUSY``. WARN is the most urgent
  flag in ``WARNING_PRIORITY`` (the manual's order: faults ``F*``, then warnings ``W*``, then
  notices ``N*``) or ``--``.
- Alert ``!aa x STATUS WARN`` (``!01 1 IDLE --``), sent when ``comm.alert`` is 1 and an axis comes
  to rest or faults.
- ``NI`` (movement interrupted) is set when ``stop``/``estop`` or a new movement cuts a movement
  short, and cleared by the next movement sent to that axis while it is idle (the driver does not
  rely on this: it clears ``NI`` itself before the next move).
- Rejections: a movement (``move``, ``home``) on an axis whose driver is off (``FO``, ``FD``, ``FH``,
  ``FV``) is ``RJ DRIVERDISABLED``, on an inactive peripheral (``FZ``) ``RJ INACTIVE``, as the FW7
  manual's reply reasons name them. For no reference (``WR``) the reasons name nothing, so such a
  move runs; other faults: no rejection either (kept as before).
- ``estop`` brakes at ``ESTOP_DECEL_FACTOR`` times the axis' acceleration: it answers ``BUSY``
  while the axis stops.
- Commands served: ``home``, ``move abs|rel N``, ``move min|max``, ``stop``, ``estop``,
  ``warnings [clear]``, the empty command (a status query), ``system reset``, ``renumber``
  (``/0 renumber``: addresses 1, 2, ... along the cable), ``--`` as a message id (echoed),
  ``get``/``set`` of ``pos``, ``maxspeed``, ``accel``, ``limit.min``, ``limit.max``,
  ``resolution`` (setting it rescales the counts: the same travel in the new microsteps), and of
  the device-only ``device.id``, ``version``, ``comm.checksum``, ``comm.alert``,
  ``system.axiscount`` (sent to an axis: ``DEVICEONLY``).

Units: positions in microsteps; ``maxspeed`` in microsteps/s x 1.6384; ``accel`` in
microsteps/s^2 x 1.6384 / 10000, as Zaber's firmware counts them. Each axis runs its own trapezoid
on the chain's scaled clock (``sim.motion``).

Faults: the endpoint's ``Faults`` (``sim.endpoint``: a lost reply, garbage, a slow reply, a
disconnect mid-move, a stall ``FS`` mid-move, homing that never ends), ``corrupt_replies`` (a
bit flipped in the next replies) and ``again_replies`` (the next commands answered ``RJ AGAIN``, unexecuted) and ``inject_fault`` for any
``F*`` flag (``FZ`` peripheral inactive, ``FQ`` encoder error, ``FE`` limit error, ``FD`` driver
disabled, ...), now or at a fraction of the next move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sim.endpoint import EmulatorEndpoint
from sim.motion import LinearMove, Trapezoid

DEFAULT_MICROSTEP_M = 0.047625e-6  # X-LSQ series lead-screw stages
VELOCITY_UNIT = 1.6384  # data units per (microstep/s)
ACCEL_UNIT = 1.6384 / 10000.0  # data units per (microstep/s^2)
# The manual's order, most urgent first (Zaber Motion Library's WarningFlags lists the same order).
WARNING_PRIORITY = (
    "FF", "FN", "FZ", "FH", "FV", "FO", "FC", "FM", "FD", "FQ", "FI", "FA", "FR", "FS", "FB", "FP",
    "FE", "FT", "WL", "WV", "WT", "WS", "WM", "WP", "WR", "WH", "NC", "NI", "ND", "NR", "NT", "NU",
    "NJ", "NB",
)  # fmt: skip
FAULT_FLAGS = tuple(w for w in WARNING_PRIORITY if w.startswith("F"))
# Faults after which the axis' driver is off: a movement is rejected (RJ DRIVERDISABLED)
DRIVER_OFF_FLAGS = frozenset({"FO", "FD", "FH", "FV"})
RESOLUTIONS = range(1, 257)  # the resolution setting: microsteps per full step
DEFAULT_RESOLUTION = 64
MAX_MESSAGE_ID = 99
ESTOP_DECEL_FACTOR = 20.0  # an emergency stop brakes this much harder than ``accel``
DEVICE_SETTINGS = ("device.id", "version", "comm.checksum", "comm.alert", "system.axiscount")
DEVICE_ID = 30222
FIRMWARE = "7.38"


def lrc(text: str) -> str:
    """Zaber's checksum of ``text`` (the bytes between the start marker and ``:``): two hex digits."""
    return f"{-sum(text.encode('ascii', errors='replace')) & 0xFF:02X}"


@dataclass
class _Axis:
    number: int
    limit_max: int
    maxspeed: int  # data units
    accel: int  # data units
    limit_min: int = 0
    resolution: int = DEFAULT_RESOLUTION
    pos: float = 0.0
    move: LinearMove | None = None
    homing: bool = False
    warnings: set[str] = field(default_factory=lambda: {"WR"})
    fault_t: float | None = None  # model time at which ``fault_flag`` strikes this move
    fault_flag: str | None = None
    fault_disconnect_t: float | None = None

    def speed_usteps_s(self) -> float:
        return self.maxspeed / VELOCITY_UNIT

    def accel_usteps_s2(self) -> float:
        return self.accel / ACCEL_UNIT


@dataclass
class _Controller:
    """One device on the chain: its address, two axes and its device-scope settings."""

    address: int
    axes: list[_Axis]
    checksum: bool = False  # comm.checksum: replies and alerts carry ``:XX``
    alert: bool = False  # comm.alert: alerts are sent
    pending_faults: list[tuple[str, float]] = field(default_factory=list)  # (flag, fraction of next move)


class ZaberDevice(EmulatorEndpoint):
    """One serial port with Zaber two-axis controllers on it, at ``addresses`` (default: one, at ``address``)."""

    def __init__(
        self,
        *,
        time_scale: float = 1.0,
        travel_mm: tuple[float, float] = (500.0, 500.0),
        microstep_m: float = DEFAULT_MICROSTEP_M,
        max_speed_mm_s: float = 50.0,
        accel_mm_s2: float = 500.0,
        address: int = 1,
        addresses: tuple[int, ...] | None = None,
        start_mm: tuple[float, float] = (0.0, 0.0),
        name: str = "zaber",
    ) -> None:
        """
        Parameters
        ----------
        time_scale
            How much faster than real time the emulated motion runs (1: real time).
        travel_mm
            Each axis's travel, which its ``limit.max`` reports (mm).
        microstep_m
            One microstep's length; positions are counted in microsteps, as the device does.
        max_speed_mm_s, accel_mm_s2
            The axes' ``maxspeed`` and ``accel`` at power-up.
        address, addresses
            The device address (1..99) of a single controller, or every controller's on the
            chain, in cable order (``renumber`` counts along it).
        start_mm
            Where both axes stand at power-up (mm).
        name
            The port's name in logs and errors.
        """
        super().__init__(name, time_scale)
        chain = tuple(addresses) if addresses is not None else (address,)
        if not chain or len(set(chain)) != len(chain) or not all(1 <= a <= 99 for a in chain):
            raise ValueError(f"Zaber chain addresses must be distinct numbers 1..99 (got {chain!r})")
        self.microstep_m = microstep_m
        usteps_per_mm = 1e-3 / microstep_m

        def axes() -> list[_Axis]:
            return [
                _Axis(
                    number=i + 1,
                    limit_max=round(travel_mm[i] * usteps_per_mm),
                    maxspeed=round(max_speed_mm_s * usteps_per_mm * VELOCITY_UNIT),
                    accel=round(accel_mm_s2 * usteps_per_mm * ACCEL_UNIT),
                    pos=start_mm[i] * usteps_per_mm,
                )
                for i in range(2)
            ]

        self.controllers = {a: _Controller(a, axes()) for a in sorted(chain)}
        self._order = list(chain)  # the devices' order along the cable (renumber counts along it)
        self.dropped_checksums = 0  # commands dropped for a wrong checksum, for tests
        self.corrupt_replies = 0  # a fault: garble one character of the next N replies (line noise)
        # a fault: the next N commands are answered RJ AGAIN (not executed), as a busy device does
        self.again_replies = 0
        self._rx = bytearray()

    # --- the first device, for single-device tests ----------------------------------------------
    @property
    def address(self) -> int:
        return next(iter(self.controllers))

    @property
    def axes(self) -> list[_Axis]:
        return self.controllers[self.address].axes

    def power_cycle(self) -> None:
        """Power off and on: motion stops, the reference (home) is lost; comm.* settings persist."""
        with self._cond:
            self.connected = True
            self._out.clear()
            self._rx.clear()
            for c in self.controllers.values():
                self._reset(c)
            self._cond.notify_all()

    def inject_fault(
        self, flag: str, *, address: int | None = None, axis: int = 0, at: float | None = None
    ) -> None:
        """Raise fault ``flag`` (``FD``, ``FQ``, ``FZ``, ``FE``, ...) on ``axis`` (0: both) of the device
        at ``address`` (None: the first): now (a moving axis stops dead), or at fraction ``at`` of
        that device's next move."""
        if flag not in FAULT_FLAGS:
            raise ValueError(f"inject_fault: flag must be one of {FAULT_FLAGS} (got {flag!r})")
        if at is not None and not 0.0 <= at <= 1.0:
            raise ValueError(f"inject_fault: at must be a fraction in [0, 1] (got {at!r})")
        c = self.controllers[self.address if address is None else address]
        if axis not in range(len(c.axes) + 1):
            raise ValueError(f"inject_fault: axis must be 0..{len(c.axes)} (got {axis!r})")
        with self._cond:
            self._advance()
            if at is not None:
                c.pending_faults.append((flag, at))
                return
            for ax in c.axes if axis == 0 else [c.axes[axis - 1]]:
                self._fault(c, ax, flag, self.clock.now())
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

    def _all_axes(self) -> list[tuple[_Controller, _Axis]]:
        return [(c, ax) for c in self.controllers.values() for ax in c.axes]

    def _next_model_event(self) -> float | None:
        times = []
        for _, ax in self._all_axes():
            if ax.move is not None:
                times += [ax.move.t_end] if not ax.homing or math.isfinite(ax.move.t_end) else []
                times += [t for t in (ax.fault_t, ax.fault_disconnect_t) if t is not None]
        return min(times) if times else None

    def _advance(self) -> None:
        now = self.clock.now()
        for c, ax in self._all_axes():
            if ax.move is None:
                continue
            if ax.fault_disconnect_t is not None and now >= ax.fault_disconnect_t:
                ax.pos = ax.move.state_at(ax.fault_disconnect_t)[0][0]
                ax.move, ax.fault_disconnect_t = None, None
                self.connected = False
                continue
            if ax.fault_t is not None and ax.fault_flag is not None and now >= ax.fault_t:
                self._fault(c, ax, ax.fault_flag, ax.fault_t)
                continue
            if now >= ax.move.t_end:
                ax.pos = ax.move.end[0]
                ax.move = None
                if ax.homing:
                    ax.homing = False
                    ax.pos = 0.0
                    ax.warnings.discard("WR")
                self._alert(c, ax)

    def _fault(self, c: _Controller, ax: _Axis, flag: str, t: float) -> None:
        """``flag`` strikes ``ax`` at model time ``t``: a moving axis stops where it is."""
        if ax.move is not None:
            ax.pos = ax.move.state_at(t)[0][0]
        ax.move, ax.homing = None, False
        ax.fault_t = ax.fault_flag = None
        ax.warnings.add(flag)
        if flag == "FS":
            ax.warnings.add("WR")  # stalled: the controller no longer trusts its count
        self._alert(c, ax)

    def _axis_pos(self, ax: _Axis) -> float:
        if ax.move is None:
            return ax.pos
        return ax.move.state_at(self.clock.now())[0][0]

    def _axis_speed(self, ax: _Axis) -> float:
        if ax.move is None:
            return 0.0
        return ax.move.state_at(self.clock.now())[1]

    # --- replies and alerts --------------------------------------------------------------------
    @staticmethod
    def _flags(axes: list[_Axis]) -> tuple[str, str]:
        """(STATUS, WARN) of ``axes`` together."""
        busy = any(ax.move is not None for ax in axes)
        warns: set[str] = set().union(*(ax.warnings for ax in axes))
        warn = next((w for w in WARNING_PRIORITY if w in warns), "--")
        return ("BUSY" if busy else "IDLE"), warn

    def _framed(self, c: _Controller, line: str) -> str:
        return f"{line}:{lrc(line[1:])}" if c.checksum else line

    def _reply(self, c: _Controller, axis: int, msg_id: int | str | None, flag: str, data: str) -> None:
        if self._drop_reply():
            return
        status, warn = self._flags(c.axes if axis == 0 else [c.axes[axis - 1]])
        ident = "" if msg_id is None else f" {msg_id:02d}" if isinstance(msg_id, int) else f" {msg_id}"
        line = self._framed(c, f"@{c.address:02d} {axis}{ident} {flag} {status} {warn} {data}")
        if self.corrupt_replies > 0:
            self.corrupt_replies -= 1
            # Noise flips a bit of the last data character (before the checksum, if any).
            i = (line.rfind(":") if c.checksum else len(line)) - 1
            line = line[:i] + chr(ord(line[i]) ^ 0x08) + line[i + 1 :]
        self._send(line)

    def _alert(self, c: _Controller, ax: _Axis) -> None:
        if c.alert:
            status, warn = self._flags([ax])
            self._send(self._framed(c, f"!{c.address:02d} {ax.number} {status} {warn}"), reply=False)

    # --- commands ------------------------------------------------------------------------------
    def _line(self, raw: str) -> None:
        self.lines_received.append(raw)
        text = raw.strip()
        if not text.startswith("/"):
            return  # not a command: Zaber devices ignore it
        body = text[1:]
        if ":" in body:
            body, checksum = body.split(":", 1)
            if checksum.strip().upper() != lrc(body):
                self.dropped_checksums += 1
                return  # a corrupted command is dropped, never executed
        tokens = body.split()
        numbers: list[int] = []
        while tokens and tokens[0].isdigit() and len(numbers) < 3:
            numbers.append(int(tokens.pop(0)))
        address = numbers[0] if numbers else 0
        axis = numbers[1] if len(numbers) > 1 else 0
        msg_id: int | str | None = numbers[2] if len(numbers) > 2 else None
        if len(numbers) == 2 and tokens[:1] == ["--"]:
            msg_id = tokens.pop(0)  # '--': an id that says "none", echoed in the reply
        if tokens[:1] == ["renumber"] and address == 0 and len(tokens) == 1:
            self._renumber(axis, msg_id)
            return
        for c in self.controllers.values():
            if address not in (0, c.address):
                continue
            if isinstance(msg_id, int) and not 0 <= msg_id <= MAX_MESSAGE_ID:
                self._reply(c, axis if axis <= len(c.axes) else 0, None, "RJ", "BADMESSAGEID")
            elif axis > len(c.axes):
                self._reply(c, 0, msg_id, "RJ", "BADAXIS")
            elif self.again_replies > 0 and tokens:
                self.again_replies -= 1
                self._reply(c, axis, msg_id, "RJ", "AGAIN")
            else:
                flag, data = self._execute(c, axis, tokens)
                self._reply(c, axis, msg_id, flag, data)

    def _renumber(self, axis: int, msg_id: int | str | None) -> None:
        """``/0 renumber``: the devices take the addresses 1, 2, ... in their order along the cable,
        and each answers from its new address."""
        ordered = [self.controllers[a] for a in self._order]
        for new, c in enumerate(ordered, start=1):
            c.address = new
        self.controllers = {c.address: c for c in sorted(ordered, key=lambda c: c.address)}
        self._order = [c.address for c in ordered]
        for c in ordered:
            self._reply(c, axis, msg_id, "OK", "0")

    def _reset(self, c: _Controller) -> None:
        """``system reset``: as after power-up, motion stops and the reference is lost."""
        c.pending_faults.clear()
        for ax in c.axes:
            ax.pos = self._axis_pos(ax)
            ax.move, ax.homing = None, False
            ax.fault_t = ax.fault_flag = ax.fault_disconnect_t = None
            ax.warnings = {"WR"}

    def _execute(self, c: _Controller, axis: int, tokens: list[str]) -> tuple[str, str]:
        targets = c.axes if axis == 0 else [c.axes[axis - 1]]
        now = self.clock.now()
        if not tokens:
            return "OK", "0"
        cmd, args = tokens[0], tokens[1:]
        if cmd in ("get", "set") and args and args[0] in DEVICE_SETTINGS and axis != 0:
            return "RJ", "DEVICEONLY"
        if cmd == "system" and args == ["reset"]:
            if axis != 0:
                return "RJ", "DEVICEONLY"
            self._reset(c)
            return "OK", "0"
        if cmd in ("home", "move"):
            refused = self._refuse_motion(targets if cmd == "home" or axis == 0 else [c.axes[axis - 1]])
            if refused:
                return "RJ", refused
        if cmd == "home" and not args:
            for ax in targets:
                self._start_home(c, ax, now)
            return "OK", "0"
        if cmd == "move" and args:
            return self._move(c, axis, args, now)
        if cmd in ("stop", "estop") and not args:
            for ax in targets:
                self._stop(ax, now, estop=cmd == "estop")
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
            return self._get(c, targets, args[0])
        if cmd == "set" and len(args) == 2:
            return self._set(c, targets, args[0], args[1])
        return "RJ", "BADCOMMAND"

    @staticmethod
    def _refuse_motion(axes: list[_Axis]) -> str | None:
        """The reason a movement is rejected on ``axes``, or None. The FW7 manual's reply reasons
        include DRIVERDISABLED (the driver is off: FO, FD, FH, FV) and INACTIVE (FZ). For an axis
        with no reference (WR) the reasons list nothing that applies, so such a move runs (a
        device moves by its count), as it did before. Other faults: no rejection, as before."""
        flags: set[str] = set().union(*(ax.warnings for ax in axes))
        if flags & DRIVER_OFF_FLAGS:
            return "DRIVERDISABLED"
        if "FZ" in flags:
            return "INACTIVE"
        return None

    def _move(self, c: _Controller, axis: int, args: list[str], now: float) -> tuple[str, str]:
        if axis == 0:
            return "RJ", "BADAXIS"  # a movement needs one axis on a multi-axis controller
        ax = c.axes[axis - 1]
        kind = args[0]
        if kind in ("abs", "rel") and len(args) == 2:
            try:
                value = int(args[1])
            except ValueError:
                return "RJ", "BADDATA"
            target = value if kind == "abs" else self._axis_pos(ax) + value
        elif kind in ("min", "max") and len(args) == 1:
            target = ax.limit_min if kind == "min" else ax.limit_max
        else:
            return "RJ", "BADCOMMAND"
        if not ax.limit_min <= target <= ax.limit_max:
            return "RJ", "BADDATA"
        self._start_move(c, ax, float(target), now)
        return "OK", "0"

    def _stop(self, ax: _Axis, now: float, estop: bool) -> None:
        if ax.move is None:
            return
        ax.warnings.add("NI")
        decel = ax.accel_usteps_s2() * (ESTOP_DECEL_FACTOR if estop else 1.0)
        ax.move = ax.move.stopping(now, decel)
        ax.fault_t = ax.fault_flag = ax.fault_disconnect_t = None
        ax.homing = False  # an interrupted homing leaves no reference

    def _get(self, c: _Controller, targets: list[_Axis], name: str) -> tuple[str, str]:
        device = {
            "device.id": str(DEVICE_ID),
            "version": FIRMWARE,
            "comm.checksum": str(int(c.checksum)),
            "comm.alert": str(int(c.alert)),
            "system.axiscount": str(len(c.axes)),
        }
        if name in device:
            return "OK", device[name]
        getters = {
            "pos": lambda ax: str(round(self._axis_pos(ax))),
            "maxspeed": lambda ax: str(ax.maxspeed),
            "accel": lambda ax: str(ax.accel),
            "limit.min": lambda ax: str(ax.limit_min),
            "limit.max": lambda ax: str(ax.limit_max),
            "resolution": lambda ax: str(ax.resolution),
        }
        if name not in getters:
            return "RJ", "BADCOMMAND"
        return "OK", " ".join(getters[name](ax) for ax in targets)

    def _set(self, c: _Controller, targets: list[_Axis], name: str, value: str) -> tuple[str, str]:
        if name not in (
            "maxspeed",
            "accel",
            "limit.min",
            "limit.max",
            "comm.checksum",
            "comm.alert",
            "resolution",
        ):
            return "RJ", "BADCOMMAND"
        try:
            number = int(value)
        except ValueError:
            return "RJ", "BADDATA"
        if name.startswith("comm."):
            if number not in (0, 1):
                return "RJ", "BADDATA"
            setattr(c, name.removeprefix("comm."), bool(number))
            return "OK", "0"
        if name == "resolution":
            if number not in RESOLUTIONS:
                return "RJ", "BADDATA"
            for ax in targets:
                self._rescale(ax, number)
            return "OK", "0"
        ok = {
            "maxspeed": lambda ax: number > 0,
            "accel": lambda ax: number > 0,
            "limit.min": lambda ax: number < ax.limit_max,
            "limit.max": lambda ax: number > ax.limit_min,
        }[name]
        if not all(ok(ax) for ax in targets):
            return "RJ", "BADDATA"
        for ax in targets:
            setattr(ax, name.replace(".", "_"), number)
        return "OK", "0"

    def _rescale(self, ax: _Axis, resolution: int) -> None:
        """A new microstep resolution: the same travel and speeds counted in the new microsteps."""
        k = resolution / ax.resolution
        ax.pos = self._axis_pos(ax) * k
        ax.move = None
        ax.limit_min, ax.limit_max = round(ax.limit_min * k), round(ax.limit_max * k)
        ax.maxspeed, ax.accel = max(1, round(ax.maxspeed * k)), max(1, round(ax.accel * k))
        ax.resolution = resolution

    # --- motion --------------------------------------------------------------------------------
    def _plan(self, ax: _Axis, target: float, now: float) -> LinearMove:
        start = self._axis_pos(ax)
        v0 = (
            self._axis_speed(ax)
            if ax.move is not None and (ax.move.end[0] - start) * (target - start) > 0
            else 0.0
        )
        if ax.move is None:
            ax.warnings.discard("NI")  # a movement sent while idle clears the last interruption
        else:
            ax.warnings.add("NI")  # a new movement interrupted the old one
        return LinearMove.plan((start,), (target,), ax.speed_usteps_s(), ax.accel_usteps_s2(), now, v0=v0)

    def _arm_faults(self, c: _Controller, ax: _Axis, move: LinearMove) -> None:
        f = self.faults
        span = move.t_end - move.t0
        if f.alarm_at is not None:
            ax.fault_t, ax.fault_flag = move.t0 + f.alarm_at * span, "FS"
            f.alarm_at = None
        elif c.pending_faults:
            flag, at = c.pending_faults.pop(0)
            ax.fault_t, ax.fault_flag = move.t0 + at * span, flag
        if f.disconnect_at is not None:
            ax.fault_disconnect_t = move.t0 + f.disconnect_at * span
            f.disconnect_at = None

    def _start_move(self, c: _Controller, ax: _Axis, target: float, now: float) -> None:
        ax.homing = False
        ax.move = self._plan(ax, target, now)
        ax.fault_t = ax.fault_flag = ax.fault_disconnect_t = None
        self._arm_faults(c, ax, ax.move)

    def _start_home(self, c: _Controller, ax: _Axis, now: float) -> None:
        ax.warnings.discard("FS")
        ax.warnings.add("WR")  # the reference is re-made when the sensor trips, not before
        move = self._plan(ax, 0.0, now)
        ax.homing = True
        if self.faults.homing_never_ends:  # the sensor never trips: busy forever, going nowhere
            self.faults.homing_never_ends = False
            move = LinearMove(move.start, move.start, Trapezoid(0.0, 1.0, 1.0), math.inf)
        ax.move = move
        ax.fault_t = ax.fault_flag = ax.fault_disconnect_t = None


__all__ = ["DEVICE_ID", "FAULT_FLAGS", "FIRMWARE", "WARNING_PRIORITY", "ZaberDevice", "lrc"]
