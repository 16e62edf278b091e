"""Allocation: client selection, rounds, clocks, batches, antenna positions and beamformers.

Pure maths: this package imports nothing from the rest of the project.
"""

from __future__ import annotations

from allocation.baselines import BASELINES, solve_baseline, solve_baselines, solve_with_baselines
from allocation.bound import (
    UpdateNormTracker,
    convergence_bound,
    fit_pilot,
    heterogeneity_from_partition,
)
from allocation.core import min_energy_to_target, solve_with
from allocation.design import Strategy
from allocation.errors import BudgetError
from allocation.method import solve
from allocation.plan import Plan, RoundPlan
from allocation.problem import AllocationError, BoundConstants, Problem
from allocation.replan import plan_round

__all__ = [
    "BASELINES",
    "AllocationError",
    "BoundConstants",
    "BudgetError",
    "Plan",
    "Problem",
    "RoundPlan",
    "Strategy",
    "UpdateNormTracker",
    "convergence_bound",
    "fit_pilot",
    "heterogeneity_from_partition",
    "min_energy_to_target",
    "plan_round",
    "solve",
    "solve_baseline",
    "solve_baselines",
    "solve_with",
    "solve_with_baselines",
]
