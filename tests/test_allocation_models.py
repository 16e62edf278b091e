"""Latency, energy, the deadline clock, the bound and the Plan's JSON (allocation.problem/plan)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from allocation.plan import Plan, RoundPlan, complex_to_pairs, pairs_to_complex
from allocation.problem import (
    BoundConstants,
    air_energy_j,
    airtime_s,
    compute_energy_j,
    compute_time_s,
    convergence_bound,
    deadline_clock_hz,
    lambda_half_grid,
    movement_time_s,
    round_latency_s,
    selection_bias,
)
from allocation.resources import continuous_batches, integer_batches


def test_compute_time_and_energy_formulas() -> None:
    # tau = 10 steps, c = 2e10 cycles/sample, b = 4, f = 1e9 Hz: T = 800 s, E = kappa tau c b f^2.
    assert compute_time_s(10, 2e10, 4, 1e9) == pytest.approx(800.0)
    assert compute_energy_j(1e-28, 10, 2e10, 4, 1e9) == pytest.approx(1e-28 * 10 * 2e10 * 4 * 1e18)
    # Doubling the clock halves the time and quadruples the energy.
    assert compute_time_s(10, 2e10, 4, 2e9) == pytest.approx(400.0)
    assert compute_energy_j(1e-28, 10, 2e10, 4, 2e9) == pytest.approx(
        4 * compute_energy_j(1e-28, 10, 2e10, 4, 1e9)
    )


def test_airtime_energy_movement_and_round_latency() -> None:
    # q = 5 reals -> ceil(5/2) = 3 symbols at 1 MHz, plus 1 ms overhead.
    assert airtime_s(5, 1e6, 1e-3) == pytest.approx(3e-6 + 1e-3)
    assert air_energy_j(5, 1e6, np.array([0.1, 0.05])) == pytest.approx([3e-7, 1.5e-7])
    prev = np.array([[0.0, 0.0], [0.1, 0.0]])
    new = np.array([[0.03, 0.04], [0.1, 0.0]])  # the first antenna moves 5 cm
    assert movement_time_s(prev, new, 0.05) == pytest.approx(1.0)
    assert movement_time_s(None, new, 0.05) == 0.0
    assert round_latency_s(np.array([3.0, 7.0]), 2.0, 1.0) == pytest.approx(10.0)


def test_deadline_clock_meets_the_deadline_with_least_energy() -> None:
    tau, cyc, b, deadline = 10, np.array([2e10, 1e10]), np.array([3.0, 5.0]), 500.0
    f = deadline_clock_hz(tau, cyc, b, deadline)
    assert compute_time_s(tau, cyc, b, f) == pytest.approx([deadline, deadline])
    e_opt = compute_energy_j(1e-28, tau, cyc, b, f)
    # Any clock that still meets the deadline is at least as fast, hence costs more energy.
    for factor in (1.01, 1.5, 3.0):
        assert np.all(compute_energy_j(1e-28, tau, cyc, b, f * factor) > e_opt)
    # A slower clock misses the deadline.
    assert np.all(compute_time_s(tau, cyc, b, f * 0.99) > deadline)


def test_batches_kkt_and_integer_repair() -> None:
    a = np.array([1.0, 2.0, 8.0])
    cap = np.array([16.0, 16.0, 16.0])
    b = continuous_batches(a, cap, 100.0)
    assert np.sum(a * b**3) == pytest.approx(100.0, rel=1e-6)
    # KKT: interior batches satisfy a_k b_k^2 = const.
    interior = (b > 1) & (b < cap)
    assert np.ptp((a * b**2)[interior]) < 1e-6 * np.max(a * b**2)
    bi = integer_batches(a, cap, 100.0)
    assert np.all(bi == np.round(bi)) and np.all(bi >= 1) and np.all(bi <= cap)
    assert np.sum(a * bi**3) <= 100.0
    # Repair is greedy-tight: no single extra sample fits any more.
    assert all(
        np.sum(a * bi**3) + a[k] * ((bi[k] + 1) ** 3 - bi[k] ** 3) > 100.0 or bi[k] >= cap[k]
        for k in range(3)
    )
    assert np.all(continuous_batches(a, cap, 1e9) == cap)


def test_convergence_bound_terms_move_the_right_way() -> None:
    c = BoundConstants()
    base = convergence_bound(c, np.full(10, 8.0), np.full(10, 1e-6), np.zeros(10), 1000)
    assert base["total"] == pytest.approx(sum(v for k, v in base.items() if k != "total"))
    bigger_batch = convergence_bound(c, np.full(10, 32.0), np.full(10, 1e-6), np.zeros(10), 1000)
    assert bigger_batch["variance"] < base["variance"]
    more_rounds = convergence_bound(c, np.full(20, 8.0), np.full(20, 1e-6), np.zeros(20), 1000)
    assert more_rounds["optimization"] < base["optimization"]
    noisier = convergence_bound(c, np.full(10, 8.0), np.full(10, 1e-3), np.zeros(10), 1000)
    assert noisier["ota"] > base["ota"]
    shifted = convergence_bound(
        BoundConstants(wasserstein=0.5), np.full(10, 8.0), np.full(10, 1e-6), np.zeros(10), 1000
    )
    assert shifted["distribution_shift"] > base["distribution_shift"]
    # Leaving clients out adds bias; taking everyone adds none.
    assert selection_bias(np.ones(4), [0, 1]) == pytest.approx(4 * 4 / 16)
    assert selection_bias(np.ones(4), [0, 1, 2, 3]) == 0.0


def test_fixed_array_is_a_centred_lambda_half_grid() -> None:
    lam = 0.125
    grid = lambda_half_grid(4, lam, 4 * lam)
    assert grid.shape == (4, 2)
    assert np.allclose(np.mean(grid, axis=0), 0.0)
    d = np.linalg.norm(grid[:, None] - grid[None], axis=-1)
    assert np.min(d[np.triu_indices(4, 1)]) == pytest.approx(lam / 2)


def test_plan_json_round_trip_keeps_complex_and_inf() -> None:
    z = np.array([1 + 2j, -0.5j])
    assert np.allclose(pairs_to_complex(complex_to_pairs(z)), z)
    rp = RoundPlan(
        0,
        [1, 3],
        [[0.0, 0.0], [0.1, 0.0]],
        complex_to_pairs(z),
        complex_to_pairs(z),
        [1e9, 2e9],
        [4, 5],
        1e-3,
        2.5e-4,
        0.0,
        10.0,
        1.3,
        4.2,
    )
    plan = Plan(
        "ma-ota",
        True,
        1,
        [rp],
        bound_by_rounds=[3.0, math.inf],
        energy_by_rounds=[4.2, math.inf],
        traces={"pdd_violation": [0.1, 1e-4]},
    )
    back = Plan.from_json(plan.to_json())
    assert back.round_plans[0].selected == [1, 3]
    assert np.allclose(back.round_plans[0].combiner_array(), z)
    assert back.bound_by_rounds == [3.0, math.inf]
    assert back.rounds_to(3.0) == 1 and back.rounds_to(1.0) is None
