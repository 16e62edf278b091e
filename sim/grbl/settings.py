"""GRBL's settings and EEPROM (settings.c, system.c): ``$$``, ``$x=v``, ``$#``, ``$N``/``$Nx=line``.

The EEPROM holds what survives a reset or power cycle: the ``$`` settings, the work coordinate
systems G54..G59, the G28/G30 positions and the start-up lines. ``SettingsMixin`` is one part of
``GrblDevice`` (``sim.grbl.device``) and works on its state.
"""

from __future__ import annotations

import re

from sim.grbl.states import St

# GRBL 1.1 defaults (mm, mm/min, mm/s^2), with homing on: a positioner should home.
DEFAULT_SETTINGS: dict[int, float] = {
    0: 10, 1: 25, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 10: 1, 11: 0.010, 12: 0.002, 13: 0,
    20: 1, 21: 1, 22: 1, 23: 0, 24: 25.0, 25: 500.0, 26: 250, 27: 1.0, 30: 1000, 31: 0, 32: 0,
    100: 250.0, 101: 250.0, 102: 250.0, 110: 3000.0, 111: 3000.0, 112: 500.0,
    120: 500.0, 121: 500.0, 122: 10.0, 130: 500.0, 131: 500.0, 132: 50.0,
}  # fmt: skip
INT_SETTINGS = {0, 1, 2, 3, 4, 5, 6, 10, 13, 20, 21, 22, 23, 26, 30, 31, 32}
# config.h N_STARTUP_LINE
STARTUP_LINES = 2
COORD_NAMES = ("G54", "G55", "G56", "G57", "G58", "G59")


class SettingsMixin:
    """The ``$`` commands that read or write the EEPROM (part of ``GrblDevice``: it uses the
    device's ``_emit``, ``_ok``, ``_mm_list``, ``_gcode`` and ``_state``)."""

    settings: dict[int, float]
    startup_lines: list[str]
    _coords: list[list[float]]
    _g28: list[float]
    _g30: list[float]
    _g92: list[float]

    def _init_eeprom(self) -> None:
        """An EEPROM with the defaults: zero offsets and stored positions, empty start-up lines."""
        self._coords = [[0.0, 0.0, 0.0] for _ in range(6)]
        self._g28 = [0.0, 0.0, 0.0]
        self._g30 = [0.0, 0.0, 0.0]
        self.startup_lines = [""] * STARTUP_LINES

    def _dump_settings(self) -> None:
        for key in sorted(self.settings):
            v = self.settings[key]
            self._emit(f"${key}={int(v)}" if key in INT_SETTINGS else f"${key}={v:.3f}")

    def _print_offsets(self) -> None:
        """``$#``: the stored coordinate systems and positions, G92 and the probe."""
        for name, c in zip(COORD_NAMES, self._coords, strict=True):
            self._emit(f"[{name}:" + self._mm_list(c) + "]")
        self._emit("[G28:" + self._mm_list(self._g28) + "]")
        self._emit("[G30:" + self._mm_list(self._g30) + "]")
        self._emit("[G92:" + self._mm_list(self._g92) + "]")
        self._emit("[TLO:" + self._mm_list([0.0]) + "]")
        self._emit("[PRB:" + self._mm_list([0.0, 0.0, 0.0]) + ":0]")
        self._ok()

    def _list_startup_lines(self) -> None:
        for i, text in enumerate(self.startup_lines):
            self._emit(f"$N{i}={text}")
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
        if key == 22 and not value:
            self.settings[20] = 0.0  # settings.c: disabling homing forces soft limits off
        self._ok()

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


__all__ = ["COORD_NAMES", "DEFAULT_SETTINGS", "INT_SETTINGS", "STARTUP_LINES", "SettingsMixin"]
