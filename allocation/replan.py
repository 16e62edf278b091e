"""Per-round re-planning: one round planned from the current channels and what is left of the
budgets, on the round's critical path (so fast: one position start besides the previous
positions, and the PDD warm-started from them).

Every strategy spends at most the round's share of what is left, the baselines included: a
round that the share cannot pay raises ``BudgetError`` (what is left, what a round needs), so a
run ends cleanly within its budgets instead of overspending them.
"""

from __future__ import annotations

import numpy as np

from allocation.design import Strategy, design_round, to_round_plan
from allocation.errors import BudgetError
from allocation.plan import RoundPlan
from allocation.problem import AllocationError, Problem, air_energy_j, movement_time_s
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
    ``previous_positions_m`` counts against its latency. Its transmit energy is reserved at the
    power cap (|b_k|^2 <= P_k): the precoding a run computes on its own channel estimates may
    differ from the plan's, never by more than that. Fast: one position start besides the
    previous positions, and the PDD warm-started from them. Raises ``BudgetError`` when the share
    cannot pay the least round this strategy runs.
    """
    strategy = strategy or Strategy()
    if remaining_rounds < 1:
        raise AllocationError(f"remaining_rounds must be >= 1 (got {remaining_rounds})")
    prev = None if previous_positions_m is None else np.asarray(previous_positions_m, dtype=float)
    des = design_round(problem, strategy, round_index, np.asarray(counts), prev, rng, position_starts=2)
    move = movement_time_s(prev, des.positions_m, problem.stage_speed_m_s)
    deadline = remaining_latency_s / remaining_rounds - des.airtime_s - move
    s = des.selected
    tau, cyc, fmax = problem.local_steps, problem.cycles[s], problem.clock_max[s]
    cap = np.minimum(problem.batch_max, np.floor(fmax * deadline / (tau * cyc) + 1e-9))
    if deadline <= 0 or np.any(cap < 1):
        need = des.airtime_s + move + float(np.max(tau * cyc / fmax))
        raise BudgetError(
            round_index, "latency_budget_s", remaining_latency_s, remaining_rounds, need,
            f"air {des.airtime_s:.4g} s, movement {move:.4g} s and batch 1 at f_max",
        )  # fmt: skip
    air_reserved = (
        des.air_energy_j
        if strategy.aggregation == "digital"
        else air_energy_j(problem.payload_reals, problem.bandwidth_hz, problem.power[s])
    )
    energy = remaining_energy_j / remaining_rounds - float(np.sum(air_reserved))
    if strategy.resources == "max_clock":
        # Flat out at f_max with one batch for all: the largest that meets the deadline and the
        # round's energy share (E_k = kappa tau c_k b f_max^2 grows with b).
        per_sample = problem.switched_capacitance * tau * cyc * fmax**2
        common = min(float(np.min(cap)), np.floor(energy / float(np.sum(per_sample)) + 1e-9))
        least, at = float(np.sum(per_sample)), "batch 1 at f_max"
    else:
        # The energy-optimal clocks just meet the deadline: E_k = a_k b_k^3.
        a = problem.switched_capacitance * (tau * cyc) ** 3 / deadline**2
        least, at = float(np.sum(a)), "batch 1 at the clock that just meets the deadline"
    if least > energy * (1 + 1e-12):
        raise BudgetError(
            round_index, "energy_budget_j", remaining_energy_j, remaining_rounds,
            least + float(np.sum(air_reserved)), f"{len(s)} client(s) at {at}, plus their transmit energy",
        )  # fmt: skip
    if strategy.resources == "max_clock":
        b = np.full(len(s), common)
        f = np.asarray(fmax, dtype=float)
    else:
        b = integer_batches(a, cap, energy)
        f = tau * cyc * b / deadline
    return to_round_plan(problem, round_index, des, b, f, move, deadline, des.airtime_s)
