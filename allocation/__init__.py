"""Allocation: client selection, rounds, clocks, batches, antenna positions and beamformers.

Pure maths: this package imports nothing from the rest of the project.
"""

from __future__ import annotations

from allocation.baselines import BASELINES, solve_baseline, solve_baselines
from allocation.core import Strategy, min_energy_to_target, plan_round, solve_with
from allocation.plan import Plan, RoundPlan
from allocation.problem import AllocationError, BoundConstants, Problem


def solve(problem: Problem, shared: dict | None = None) -> Plan:
    """Solve the allocation problem (MODEL.md 6-7): the plan with the lowest convergence bound.

    Plans ``problem.max_rounds`` rounds (PDD selection with the fairness option, MA positions,
    SCA beamformers), then searches R, clocks and batches under the latency and energy budgets.
    Raises ``AllocationError`` for bad or infeasible data. Pass the same ``shared`` dict to
    ``solve_baselines`` to let the max-clock baseline reuse these round designs.
    """
    return solve_with(problem, Strategy(), shared=shared)


__all__ = [
    "BASELINES",
    "AllocationError",
    "BoundConstants",
    "Plan",
    "Problem",
    "RoundPlan",
    "Strategy",
    "min_energy_to_target",
    "plan_round",
    "solve",
    "solve_baseline",
    "solve_baselines",
]
