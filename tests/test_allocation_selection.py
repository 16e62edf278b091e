"""PDD selection: the violation trace ends below 1e-3; the hybrid floor; small brute force."""

from __future__ import annotations

import itertools

import numpy as np
from allocation_kit import LAMBDA_M, make_problem

from allocation.beamformer import optimize_beamformer
from allocation.problem import lambda_half_grid
from allocation.selection import forced_by_floor, pdd_select, x_tilde_update

SETUP = {"clients": 6, "max_outer_iterations": 50}  # allocation_kit's problem, 6 clients


def test_pdd_violation_ends_below_tolerance_and_is_logged() -> None:
    p = make_problem(0, **SETUP)
    grid = lambda_half_grid(4, LAMBDA_M, 4 * LAMBDA_M)
    res = pdd_select(p, 2, grid, np.random.default_rng(0))
    assert len(res.violation_trace) >= 1 and len(res.objective_trace) == len(res.violation_trace)
    assert res.violation_trace[-1] < 1e-3
    assert len(res.selected) == 2 and len(set(res.selected.tolist())) == 2


def test_pdd_with_fixed_positions_finds_the_best_set_on_small_instances() -> None:
    for seed in (1, 2):
        p = make_problem(seed, **SETUP)
        grid = lambda_half_grid(4, LAMBDA_M, 4 * LAMBDA_M)
        h = p.effective_channels(grid)
        values = {}
        for c in itertools.combinations(range(6), 2):
            x = np.zeros(6)
            x[list(c)] = 1
            values[c] = optimize_beamformer(h, x, starts=3).objective
        best = min(values.values())
        res = pdd_select(p, 2, grid, np.random.default_rng(seed), movable=False)
        assert values[tuple(int(v) for v in res.selected)] <= best * 10 ** (0.5 / 10)  # within 0.5 dB


def test_hybrid_floor_forces_clients_that_fell_behind() -> None:
    counts = np.array([3, 0, 2, 1])
    # Round t = 4, floor 0.5: clients 1 and 3 already owe turns (most behind first); client 2
    # owes one by round 5, client 0 by round 7, so neither has to go now.
    assert forced_by_floor(counts, 4, 0.5, 2).tolist() == [1, 3]
    assert forced_by_floor(counts, 4, 0.5, 1).tolist() == [1]
    # Everyone owes a turn by R = 2 and two rounds seat only 2 + 2: two must go now.
    assert len(forced_by_floor(np.zeros(4), 0, 0.5, 2)) == 2
    # A loose floor forces nobody at the start.
    assert forced_by_floor(np.zeros(4), 0, 0.1, 2).tolist() == []


def test_pdd_keeps_forced_clients_and_copy_update_is_k_hot() -> None:
    p = make_problem(3, **SETUP)
    grid = lambda_half_grid(4, LAMBDA_M, 4 * LAMBDA_M)
    res = pdd_select(p, 2, grid, np.random.default_rng(3), forced=np.array([5]), movable=False)
    assert 5 in res.selected.tolist()
    xt = x_tilde_update(np.array([0.2, 0.9, 0.4, 0.1]), np.zeros(4), 1.0, 2, np.array([3]))
    assert xt.tolist() == [0.0, 1.0, 0.0, 1.0]
