"""A GRBL 1.1 firmware emulator that speaks the real serial grammar: the entry point.

The emulator lives in the package ``sim.grbl`` (one file per part of the firmware: line parser and
modal state, planner and motion, settings and EEPROM, reports, and the device that ties them).
This module names what other code uses, so ``from sim.grbl_device import GrblDevice`` keeps working.

What it models, in brief (each part's docstring has the detail and the firmware file it follows):
power-up and reset with the banner, ``[MSG:...]`` lines and the start-up lines; the state machine
Idle, Run, Hold:0/1, Jog, Home, Alarm, Door:0-3, Check, Sleep with real-time commands handled as
they arrive; G-code lines checked in gcode.c's order; ``$`` commands; a 15-block planner whose
``ok`` means *queued*; homing with switches (``ALARM:8``/``9`` for stuck and dead ones); soft and
hard limits (``ALARM:2``/``1``, critical: nothing but a reset is served); status reports with
report.c's refresh counters.

``travel_mm`` is the usable travel from the homed position: the switches sit a pull-off beyond it,
so ``$13x = travel_mm + $27``.

Faults (``GrblFaults``) are switched on per test: a lost ``ok``, garbage bytes, a slow reply, a
disconnect mid-move, ``ALARM:1`` mid-move, and homing that never ends; ``stuck_switches`` and
``dead_switches`` (axis letters) model switch wiring faults.

The emulator has no thread of its own: every read, write or ``in_waiting`` first advances the
model to the clock's present, and a blocked reader sleeps until the next scheduled event.
"""

from __future__ import annotations

from sim.endpoint import Faults, LinkDown
from sim.grbl.device import GrblDevice
from sim.grbl.states import BANNER, MOVING, St

# the faults every emulator takes (see sim.endpoint.Faults)
GrblFaults = Faults

__all__ = ["BANNER", "GrblDevice", "GrblFaults", "LinkDown", "MOVING", "St"]
