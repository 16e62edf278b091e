"""Baselines under the same budgets (docs/explanation/optimizer.md section 7), each a ``Strategy`` run through the same code.

- ``fpa``: fixed-position array (the centred lambda/2 grid); everything else optimised.
- ``random_placement``: best of N random feasible placements (per chosen set).
- ``grid_search``: lambda/2-lattice coordinate search.
- ``random_selection`` / ``greedy_selection``: selection replaced by a uniform draw / by the
  strongest ||h~_k||; positions, beamformer and resources still optimised.
- ``max_clock``: every client at f_max with one fixed batch (the largest <= b_max that lets R
  rounds fit the latency budget); R chosen by the bound like everyone else.
- ``non_ma``: conventional OTA-FL without movable antennas: the fixed array, uniform random
  selection, max clock and a fixed batch (the paper's "non-MA" comparison, as we read it).
- ``digital``: error-free digital FedAvg (TDMA airtime at the fixed array): the learning upper
  bound, with its real latency and energy (a reference, not ranked against ours).

Every method keeps the problem's participation floor (the forced clients come first, whatever
fills the rest) and, unless it fixes them, picks its clocks and batches by the same search
(``resources="best"``), so energies and bounds compare like for like.
"""

from __future__ import annotations

import numpy as np

from allocation.core import solve_with
from allocation.design import Strategy
from allocation.method import solve
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


def solve_baseline(
    problem: Problem, name: str, rng: np.random.Generator | None = None, shared: dict | None = None
) -> Plan:
    """One baseline by name; ``shared`` reuses round designs between plans of the same problem."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
    return solve_with(problem, BASELINES[name], rng, shared)


def solve_baselines(
    problem: Problem, names: list[str] | None = None, shared: dict | None = None
) -> dict[str, Plan]:
    """Every baseline (or those named). Designs are shared where only the resources differ
    (max_clock reuses the full method's rounds), each schedule seeded from ``problem.seed``."""
    shared = {} if shared is None else shared
    return {name: solve_baseline(problem, name, shared=shared) for name in (names or list(BASELINES))}


def solve_with_baselines(
    problem: Problem, names: list[str] | None = None, shared: dict | None = None, sdr_diagnostic: bool = False
) -> tuple[Plan, dict[str, Plan]]:
    """The full method and the baselines, like for like: ours is solved first (its own designs and
    its own time), then the baselines, then ours again over every design now in ``shared``: the
    baselines' round designs are plans it could have picked, so it keeps the best of them and
    never reports a worse bound than a feasible baseline. ``solve_s`` adds both of ours' passes.
    """
    shared = {} if shared is None else shared
    first = solve(problem, shared)
    baselines = solve_baselines(problem, names, shared)
    ours = solve(problem, shared, sdr_diagnostic=sdr_diagnostic)
    ours.solve_s += first.solve_s
    return ours, baselines
