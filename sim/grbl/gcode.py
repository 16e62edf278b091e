"""GRBL's line parser and modal state (gcode.c gc_execute_line).

A line is split into words, grouped (a second axis command is ``error:24`` before any modal-group
check), checked in gcode.c's order (the feed rate before arc words), then executed: modal words
first, then the dwell, offsets, motion and program end. G0/G1/G2/G3 (arcs run along their chord),
G4 (axis words move after the dwell), G10 L2/L20, G17-19, G20/21, G28/G28.1/G30/G30.1, G53,
G54-G59, G80, G90/91, G92/G92.1, G94 (G93 and G38.x, which GRBL has, are error:20 here), M0-M9/M30,
words F N P R S T I J K L. ``GcodeMixin`` is one part of ``GrblDevice`` (``sim.grbl.device``): it
queues blocks on the device's planner (``sim.grbl.planner``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from sim.grbl.planner import Block
from sim.grbl.states import St


@dataclass(frozen=True)
class BlockWords:
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
class Modal:
    """The parser's modal state (gc_state.modal), reset by every soft reset (gc_init)."""

    motion: int = 0  # 0, 1, 2 or 3
    absolute: bool = True  # G90
    metric: bool = True  # G21
    feed_mm_min: float = 0.0
    spindle: str = "M5"
    coolant: set[str] = field(default_factory=set)
    spindle_speed: float = 0.0
    tool: int = 0
    coord_select: int = 0  # 0..5 = G54..G59


class GcodeMixin:
    """Parse, check and execute G-code lines and jogs (part of ``GrblDevice``)."""

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
        if code in GcodeMixin._MOTION:
            return "motion"
        if code in GcodeMixin._NON_MODAL:
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
        b = BlockWords(
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

    def _check_block(self, b: BlockWords) -> int:
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

    def _run_jog(self, b: BlockWords) -> int:
        base = self._queue[-1].target if self._queue else self._pos
        target = self._target(b.axes, b.absolute, base, b.nonmodal == 530, b.coord_select)
        if self.settings[20] and not self._inside_soft_limits(target):
            return 15
        self._queue.append(Block("jog", target=target, feed_mm_min=b.feed))
        self._ok()
        self._kick(jog=True)
        return 0

    def _run_block(self, b: BlockWords, quiet: bool) -> int:
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
        blocks: list[Block] = []
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
                    Block("line", target=mid, feed_mm_min=math.inf),
                    Block("line", target=end, feed_mm_min=math.inf),
                ]  # noqa: E501
            else:
                blocks.append(Block("line", target=(home[0], home[1], home[2]), feed_mm_min=math.inf))
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
            blocks.append(Block("line", target=target, feed_mm_min=rate, line_number=line_number))
        if any(c in (2, 30) for c in mcodes):  # program end: modal defaults, G54, [MSG:Pgm End]
            m.motion, m.absolute, m.coord_select, m.spindle = 1, True, 0, "M5"
            m.coolant.clear()
            self._wco_changed()
        for b in blocks:
            if self.settings[20] and not checking and not self._inside_soft_limits(b.target):
                self._queue.clear()
                self._raise_alarm(2)
                # limits_soft_check waits in the critical loop inside this line: its ok comes on reset
                self._held_ok = not quiet
                return 0
        if checking:
            blocks, dwell = [], None
        ok_now = not quiet
        if dwell is not None:  # G4 waits for the planner to drain, dwells, then the rest is queued
            self._queue.append(
                Block("dwell", dwell_s=dwell, defer_ok=ok_now, line_number=line_number, follow=blocks)
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


__all__ = ["BlockWords", "GcodeMixin", "Modal"]
