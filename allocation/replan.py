"""Per-round re-planning: one round planned from the current channels and what is left of the
budgets, on the round's critical path (so fast: one position start besides the previous
positions, and the PDD warm-started from them).
"""

from __future__ import annotations

import numpy as np

from allocation.design import Strategy, design_round, to_round_plan
from allocation.plan import RoundPlan
from allocation.problem import AllocationError, Problem, movement_time_s
from allocation.resources import integer_batches


def plan_round(
    problem: Problem,
    round_index: int,
    counts: np.ndarray,
    previous_positions_m: np.ndarray | None,
    remaining_latency_s: float,
    remaining_energy_j: float,
    remaining_rounds: int,
    rng: np.random.Generator,
    strategy: Strategy | None = None,
) -> RoundPlan:
    """Plan one round from the current channels (``problem.channel``) and what is left.

    The round gets an equal share of the remaining latency and energy; the movement from
    ``previous_positions_m`` counts against its latency. Fast: one position start besides the
    previous positions, and the PDD warm-started from them.
    """
    strategy = strategy or Strategy()
    if remaining_rounds < 1:
        raise AllocationError(f"remaining_rounds must be >= 1 (got {remaining_rounds})")
    prev = None if previous_positions_m is None else np.asarray(previous_positions_m, dtype=float)
    des = design_round(problem, strategy, round_index, np.asarray(counts), prev, rng, position_starts=2)
    move = movement_time_s(prev, des.positions_m, problem.stage_speed_m_s)
    share_t = remaining_latency_s / remaining_rounds
    deadline = share_t - des.airtime_s - move
    s = des.selected
    tau, cyc, fmax = problem.local_steps, problem.cycles[s], problem.clock_max[s]
    if deadline <= 0:
        raise AllocationError(
            f"round {round_index}: {share_t:.4g} s left per round cannot cover air {des.airtime_s:.4g} s "
            f"and movement {move:.4g} s"
        )
    cap = np.minimum(problem.batch_max, np.floor(fmax * deadline / (tau * cyc) + 1e-9))
    a = problem.switched_capacitance * (tau * cyc) ** 3 / deadline**2
    energy = remaining_energy_j / remaining_rounds - float(np.sum(des.air_energy_j))
    if np.any(cap < 1) or np.sum(a) > energy:
        raise AllocationError(
            f"round {round_index}: the remaining budgets ({remaining_latency_s:.4g} s, "
            f"{remaining_energy_j:.4g} J over {remaining_rounds} rounds) cannot pay batch 1"
        )
    if strategy.resources == "max_clock":
        # Flat out at f_max with one batch for all: the largest that still meets the deadline.
        b = np.full(len(s), np.min(cap))
        f = np.asarray(fmax, dtype=float)
    else:
        b = integer_batches(a, cap, energy)
        f = tau * cyc * b / deadline
    return to_round_plan(problem, round_index, des, b, f, move, deadline, des.airtime_s)
