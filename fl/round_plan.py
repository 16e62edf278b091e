"""What the planner decides for one round, as the FL layer needs it, and the planner's shape."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class RunEnds(Exception):  # noqa: N818 - an outcome the run ends on, not an error
    """The planner's word that the run ends before this round, cleanly (the message says why:
    e.g. the budgets left cannot pay it). The round before it is the run's last."""


@dataclass
class RoundPlan:
    """What the planner decides for one round (the allocation plan, as the FL layer needs it)."""

    round: int
    selected: list[int]
    local_steps: int
    lr: float
    batch: dict[int, int]
    clock_hz: dict[int, float]
    weights: dict[int, float]  # phi_k, the aggregation weight of each selected client
    combiner: np.ndarray | None = None  # m (N,); None: the normalised sum of the channels
    power_w: dict[int, float] | None = None  # P_k; None: lab.clients.tx_power_w
    b_k: dict[int, complex] | None = None  # the planner's precoding; recomputed if anyone drops
    extra: dict[str, Any] = field(default_factory=dict)  # predictions etc., recorded as they are

    def problem(self, alive: list[int]) -> str | None:
        """Why the coordinator cannot run this plan with the live nodes ``alive``, or None."""
        missing = [
            f"{name}[{k}]"
            for name, table in (("batch", self.batch), ("clock_hz", self.clock_hz), ("weights", self.weights))
            for k in self.selected
            if k not in table or not table[k] > 0
        ]
        if missing:
            return f"the plan lacks positive values for {missing}"
        down = [k for k in self.selected if k not in alive]
        if not self.selected or down:
            return f"the planner selected {self.selected}; nodes {down} are not available {alive}"
        return None


# planner(round, channels (U x N, or None without an air), available node ids) -> RoundPlan.
# A planner that moves the antennas enters the "move", "settle" and "estimate" phases on the
# coordinator's ``phases`` clock while it does (fl.phases). A planner that finds the round
# cannot run (its budgets cannot pay it) raises ``RunEnds`` before it moves anything.
Planner = Callable[[int, "np.ndarray | None", list[int]], RoundPlan]
