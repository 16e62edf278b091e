"""The full method: ``solve`` (SCA inside PDD over every round, then R, clocks and batches)."""

from __future__ import annotations

from allocation.core import solve_with
from allocation.design import Strategy
from allocation.plan import Plan
from allocation.problem import Problem


def solve(problem: Problem, shared: dict | None = None, sdr_diagnostic: bool = False) -> Plan:
    """Solve the allocation problem (docs/explanation/optimizer.md sections 6-7): the plan with the lowest convergence bound.

    Plans ``problem.max_rounds`` rounds (PDD selection with the fairness option, MA positions,
    SCA beamformers), then searches R, clocks and batches under the latency and energy budgets.
    Raises ``AllocationError`` for bad or infeasible data. Pass the same ``shared`` dict to
    ``solve_baselines`` to let the max-clock baseline reuse these round designs (and ours adopt
    theirs). ``sdr_diagnostic`` adds round 0's gap to the SDR bound (SCS through cvxpy: seconds
    to import, so off on the run's critical path).
    """
    plan = solve_with(problem, Strategy(portfolio=True), shared=shared)
    if sdr_diagnostic:
        _sdr_diagnostic(problem, plan)
    return plan


def _sdr_diagnostic(problem: Problem, plan: Plan, max_antennas: int = 16) -> None:
    """Round 0's beamformer gap to the SDR lower bound (SCS), in plan.traces['sdr_gap_db']."""
    if not plan.round_plans or problem.num_antennas > max_antennas:
        return
    import numpy as np

    from allocation.beamformer import sdr_lower_bound

    rp = plan.round_plans[0]
    h = problem.effective_channels(np.asarray(rp.positions_m))[rp.selected]
    m = rp.combiner_array()
    achieved = float(np.sum(np.abs(m) ** 2) / np.min(np.abs(np.conj(h) @ m) ** 2))
    try:
        bound = sdr_lower_bound(h)
    except Exception as exc:  # noqa: BLE001 - a diagnostic must never sink the plan
        plan.notes.append(f"SDR diagnostic failed: {exc}")
        return
    plan.traces["sdr_gap_db"] = [float(10.0 * np.log10(achieved / bound))]
