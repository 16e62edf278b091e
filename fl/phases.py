"""The round as named phases, and the clock that times them at their boundaries.

A round runs its phases in this order (a phase a round does not need takes no time)::

    estimate  plan  [move  settle  estimate]  dispatch  train  upload  ota  aggregate  evaluate  checkpoint

(the bracketed ones happen inside the planner, which moves the antennas). ``PhaseClock.enter``
closes the phase that is running and opens the next, so every second of a round lands in the
slice of the phase that was running then: nothing is moved or relabelled afterwards. Whoever
listens (``on_phase``) hears each phase as it starts; the console's ``phase`` documents are
those calls.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

PHASES = (
    "plan",
    "move",
    "settle",
    "estimate",
    "dispatch",
    "train",
    "upload",
    "ota",
    "aggregate",
    "evaluate",
    "checkpoint",
)
# The breakdown's slices (seconds each); "other_s" is the round's time outside every phase.
TIMING_SLICES = tuple(f"{phase}_s" for phase in PHASES)

# on_phase(round, phase, unix start time)
PhaseListener = Callable[[int, str, float], None]


class PhaseClock:
    """Times one round at a time, phase by phase.

    ``start_round(r)`` opens a round with no phase running; ``enter(name)`` switches phase;
    ``during(name)`` runs a block in a phase and returns to the one before (the planner moves
    the antennas inside the plan phase); ``finish()`` closes the round and gives its slices.
    """

    def __init__(self, on_phase: PhaseListener | None = None) -> None:
        self.on_phase = on_phase
        self.round = 0
        self.current: str | None = None
        self.slices: dict[str, float] = dict.fromkeys(TIMING_SLICES, 0.0)
        self._t_round = self._t_phase = time.monotonic()

    def start_round(self, r: int) -> None:
        self.round, self.current = r, None
        self.slices = dict.fromkeys(TIMING_SLICES, 0.0)
        self._t_round = self._t_phase = time.monotonic()

    def enter(self, phase: str | None) -> None:
        """Close the running phase and open ``phase`` (None: no phase, the time is "other")."""
        if phase is not None and phase not in PHASES:
            raise ValueError(f"phase {phase!r}; allowed {', '.join(PHASES)}")
        if phase == self.current:
            return
        now = time.monotonic()
        if self.current is not None:
            self.slices[f"{self.current}_s"] += now - self._t_phase
        self.current, self._t_phase = phase, now
        if phase is not None and self.on_phase is not None:
            self.on_phase(self.round, phase, time.time())

    @contextlib.contextmanager
    def during(self, phase: str) -> Iterator[None]:
        before = self.current
        self.enter(phase)
        try:
            yield
        finally:
            self.enter(before)

    def elapsed_s(self) -> float:
        """Wall seconds since the round started."""
        return time.monotonic() - self._t_round

    def breakdown(self) -> dict[str, float]:
        """The slices so far, the running phase up to now, and "other_s" for the rest."""
        out = dict(self.slices)
        if self.current is not None:
            out[f"{self.current}_s"] += time.monotonic() - self._t_phase
        out["other_s"] = max(self.elapsed_s() - sum(out.values()), 0.0)
        return out

    def finish(self) -> tuple[dict[str, float], float]:
        """Close the round: its slices (adding up to its wall time, "other_s" the rest) and that time."""
        self.enter(None)
        round_s = self._t_phase - self._t_round
        out = dict(self.slices)
        out["other_s"] = max(round_s - sum(out.values()), 0.0)
        return out, round_s
