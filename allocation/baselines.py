"""Baselines under the same budgets (MODEL.md 7), each a ``Strategy`` run through the same code.

- ``fpa``: fixed-position array (the centred lambda/2 grid); everything else optimised.
- ``random_placement``: best of N random feasible placements (per chosen set).
- ``grid_search``: lambda/2-lattice coordinate search.
- ``random_selection`` / ``greedy_selection``: selection replaced by a uniform draw / by the
  strongest ||h~_k||; positions, beamformer and resources still optimised.
- ``max_clock``: every client at f_max with the fixed batch b_max; R as large as fits.
- ``non_ma``: conventional OTA-FL without movable antennas: the fixed array, uniform random
  selection, max clock and a fixed batch (the paper's "non-MA" comparison, as we read it).
- ``digital``: error-free digital FedAvg (TDMA airtime at the fixed array): the learning upper
  bound, with its real latency and energy.
"""

from __future__ import annotations

import numpy as np

from allocation.core import Strategy, solve_with
from allocation.plan import Plan
from allocation.problem import Problem

BASELINES: dict[str, Strategy] = {
    "fpa": Strategy(name="fpa", positions="fixed"),
    "random_placement": Strategy(name="random_placement", positions="random_best", random_placements=50),
    "grid_search": Strategy(name="grid_search", positions="grid_search"),
    "random_selection": Strategy(name="random_selection", selection="random"),
    "greedy_selection": Strategy(name="greedy_selection", selection="greedy"),
    "max_clock": Strategy(name="max_clock", resources="max_clock"),
    "non_ma": Strategy(name="non_ma", selection="random", positions="fixed", resources="max_clock"),
    "digital": Strategy(name="digital", positions="fixed", aggregation="digital"),
}


def solve_baseline(problem: Problem, name: str, rng: np.random.Generator | None = None) -> Plan:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
    rng = np.random.default_rng(problem.seed + 1) if rng is None else rng
    return solve_with(problem, BASELINES[name], rng)


def solve_baselines(problem: Problem, names: list[str] | None = None) -> dict[str, Plan]:
    """Every baseline (or those named), each with its own seeded generator."""
    return {name: solve_baseline(problem, name) for name in (names or list(BASELINES))}
