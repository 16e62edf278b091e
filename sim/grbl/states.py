"""GRBL's fixed facts: its banner, buffer sizes, real-time bytes and machine states."""

from __future__ import annotations

import enum

BANNER = "Grbl 1.1h ['$' for help]"
VERSION_LINE = "[VER:1.1h.20190830:]"
PLANNER_BLOCKS = 15
RX_BUFFER_BYTES = 128
# LINE_BUFFER_SIZE is 80: protocol.c drops spaces and comments, then overflows at 79 characters.
LINE_MAX_CHARS = 79

RT_STATUS, RT_HOLD, RT_RESUME = b"?", b"!", b"~"
RT_RESET, RT_JOG_CANCEL, RT_SAFETY_DOOR = b"\x18", b"\x85", b"\x84"

# config.h HOMING_AXIS_SEARCH_SCALAR: the search runs 1.5 x $13x
HOMING_SEARCH_SCALAR = 1.5
# report.c report_alarm_message: delay_ms(500) after every ALARM line ("to clear the write buffer")
ALARM_DELAY_S = 0.5
MM_PER_INCH = 25.4


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


# a block is executing
MOVING = frozenset({St.RUN, St.JOG, St.HOME})
# report.c's "motion state", which sets the WCO/Ov refresh counts
BUSY = frozenset({St.HOME, St.RUN, St.HOLD, St.JOG, St.DOOR})

__all__ = [
    "BANNER",
    "BUSY",
    "HOMING_SEARCH_SCALAR",
    "LINE_MAX_CHARS",
    "MOVING",
    "PLANNER_BLOCKS",
    "RX_BUFFER_BYTES",
    "RT_HOLD",
    "RT_JOG_CANCEL",
    "RT_RESET",
    "RT_RESUME",
    "RT_SAFETY_DOOR",
    "RT_STATUS",
    "VERSION_LINE",
    "St",
]
