"""What a run has spent of its budgets, and what each round is charged.

``PlannerState`` is what the per-round planner carries between rounds (rebuilt from the round
events on resume). ``round_charge_j`` prices a round as it ran (the batches, clocks and b_k sent)
by the same cost model the plan was priced with (``allocation.problem.round_energy_j``), so the
budget is spent by what ran and checked by what is planned, alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class PlannerState:
    """What the per-round planner carries between rounds (rebuilt from events on resume)."""

    counts: np.ndarray
    positions_m: np.ndarray | None = None
    latency_spent_s: float = 0.0
    energy_spent_j: float = 0.0
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_rounds(cls, num_clients: int, rounds: list[dict[str, Any]]) -> PlannerState:
        state = cls(counts=np.zeros(num_clients, dtype=int))
        for r in sorted(rounds, key=lambda r: r["round"]):
            for k in r.get("selected", []):
                state.counts[k] += 1
            if r.get("positions_m") is not None:
                state.positions_m = np.asarray(r["positions_m"], dtype=float)
            state.latency_spent_s += float(r.get("latency_model_s") or 0.0)
            state.energy_spent_j += float(r.get("energy_model_j") or 0.0)
        return state


def round_charge_j(
    problem: Any,
    rp: Any,
    selected: list[int],
    batches: list[int],
    clocks_hz: list[float],
    tx_scalars: np.ndarray,
    aggregation: str,
) -> float:
    """Round ``rp``'s energy as it runs: compute at the batches and clocks sent, plus the transmit
    energy of the b_k precoded on the round's own channel estimates (digital: the plan's TDMA air
    energy, the only figure for it). ``plan_round`` reserved the transmit energy at the power
    cap, so this never exceeds the round's share of the budget."""
    from allocation.problem import air_energy_j, round_energy_j

    if aggregation == "digital":
        air = np.full(len(selected), rp.air_energy_j / max(1, len(rp.selected)))
    else:
        air = air_energy_j(problem.payload_reals, problem.bandwidth_hz, np.abs(np.asarray(tx_scalars)) ** 2)
    return round_energy_j(problem, np.asarray(selected), np.asarray(batches), np.asarray(clocks_hz), air)
