"""GRBL's machine frame against the stage frame, per axis (limits.c, settings ``$23``, ``$27``,
``$13x`` and the HOMING_FORCE_SET_ORIGIN build option).

The stage frame runs from 0 where homing leaves the carriage into the travel; GRBL's machine frame
after homing depends on the homing direction, the pull-off and the build. ``drivers.grbl`` sends
every move in machine coordinates (``G53``) through this map.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AxisFrame:
    """Machine mm of one axis from stage mm: ``machine = home + sign * stage``.

    The stage frame runs from 0 where homing leaves the carriage (``$27`` off the switch) into the
    travel, up to ``room_mm``. GRBL's machine frame after homing depends on ``$23`` (homing
    direction), ``$27`` (pull-off), ``$13x`` and the HOMING_FORCE_SET_ORIGIN build option (``Z`` in
    ``$I``'s ``[OPT:...]``), limits.c.
    """

    home_mm: float
    sign: float
    room_mm: float  # how far the stage may go from home: inside the soft limits and the switches

    def machine(self, stage_mm: float) -> float:
        return self.home_mm + self.sign * stage_mm

    def stage(self, machine_mm: float) -> float:
        return (machine_mm - self.home_mm) * self.sign


def machine_frame(settings: dict[int, float], force_origin: bool, axis: int) -> AxisFrame:
    """The stage-to-machine map of one axis (0 = X) from ``$23``, ``$27``, ``$13x`` and the build.

    limits.c sets the machine position after homing to 0 (force-origin build), ``-$27`` (homed to
    the positive end, the default) or ``-$13x + $27`` (``$23`` bit set: the negative end). Soft
    limits are ``[-$13x, 0]``, or ``[0, $13x]`` on a force-origin build homing to the negative end.
    The stage runs away from the homed end, and never nearer the far switch than the pull-off:
    ``room = $13x - $27`` (on a force-origin build the soft-limit box sits a pull-off beyond it).
    Without homing (``$22=0``) the power-up position is stage 0 and the axes keep their direction.
    """
    travel = float(settings.get(130 + axis, 0.0))
    pull = float(settings.get(27, 0.0))
    negative_home = bool(int(settings.get(23, 0)) >> axis & 1)
    if not settings.get(22, 1):  # no homing: GRBL counts from power-up, where the stage's 0 is
        return AxisFrame(0.0, 1.0, travel)
    if force_origin:
        home = 0.0
    else:
        home = -travel + pull if negative_home else -pull
    return AxisFrame(home, 1.0 if negative_home else -1.0, max(0.0, travel - pull))


__all__ = ["AxisFrame", "machine_frame"]
