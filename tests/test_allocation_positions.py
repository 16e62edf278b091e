"""Antenna positions: gradient, curvature bound, feasible iterates and a monotone objective."""

from __future__ import annotations

import numpy as np
import pytest
from allocation_kit import LAMBDA_M, make_problem

from allocation.positions import (
    _projection,
    curvature_bound,
    is_feasible,
    optimize_positions,
    random_feasible_positions,
    weighted_gain_gradient,
)

SETUP = {"path_gain": 1e-9, "clients_per_round": 5}  # allocation_kit's problem; all 5 send


def test_weighted_gain_gradient_matches_finite_differences() -> None:
    p = make_problem(0, **SETUP)
    rng = np.random.default_rng(1)
    r = random_feasible_positions(rng, 4, p.half_region_m, p.min_spacing_m)
    m = rng.standard_normal(4) + 1j * rng.standard_normal(4)
    w = rng.uniform(0, 1, p.num_clients)

    def gain(pos: np.ndarray) -> float:
        return float(np.sum(w * np.abs(np.conj(p.effective_channels(pos)) @ m) ** 2))

    grad = weighted_gain_gradient(p, r, m, w)
    step = 1e-7
    for n in range(4):
        for axis in range(2):
            e = np.zeros_like(r)
            e[n, axis] = step
            fd = (gain(r + e) - gain(r - e)) / (2 * step)
            assert grad[n, axis] == pytest.approx(fd, rel=1e-4, abs=1e-6 * abs(gain(r)) / LAMBDA_M)


def test_curvature_bound_gives_a_global_minorant() -> None:
    p = make_problem(2, **SETUP)
    rng = np.random.default_rng(3)
    m = rng.standard_normal(4) + 1j * rng.standard_normal(4)
    w = rng.uniform(0, 1, p.num_clients)
    delta = curvature_bound(p, m, w)

    def gain(pos: np.ndarray) -> float:
        return float(np.sum(w * np.abs(np.conj(p.effective_channels(pos)) @ m) ** 2))

    r0 = random_feasible_positions(rng, 4, p.half_region_m, p.min_spacing_m)
    g0, grad = gain(r0), weighted_gain_gradient(p, r0, m, w)
    for _ in range(200):
        r1 = r0 + rng.normal(0, LAMBDA_M / 2, r0.shape)
        minorant = g0 + np.sum(grad * (r1 - r0)) - delta / 2 * np.sum((r1 - r0) ** 2)
        assert gain(r1) >= minorant - 1e-9 * abs(g0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_position_iterate_is_feasible_and_the_objective_never_worsens(seed: int) -> None:
    p = make_problem(seed, **{**SETUP, "clients": 4, "clients_per_round": 4})
    rng = np.random.default_rng(seed + 10)
    start = random_feasible_positions(rng, 4, p.half_region_m, p.min_spacing_m)
    res = optimize_positions(p, start, iterations=12)
    assert all(res.feasible)
    assert is_feasible(res.positions_m, p.half_region_m, p.min_spacing_m)
    trace = np.array(res.trace)
    assert np.all(np.diff(trace) <= 1e-9 * trace[0])
    assert trace[-1] <= trace[0]


def test_qp_fallback_projects_onto_box_and_linearised_spacing() -> None:
    lam = LAMBDA_M
    half, d = 2 * lam, lam / 2
    current = np.array([[0.0, 0.0], [d * 1.2, 0.0], [0.0, d * 1.5], [-d * 1.1, -d * 1.1]])
    target = current.copy()
    target[1] = [0.01 * d, 0.0]  # antenna 1 jumps onto antenna 0
    target[2] = [0.0, 5 * lam]  # antenna 2 jumps out of the region
    out = _projection(4)(current, target, half, d)
    assert is_feasible(out, half, d, tol=1e-7)


def test_active_set_projection_matches_clarabel() -> None:
    from allocation.positions import _ProjectionQP, project_active_set

    rng = np.random.default_rng(7)
    lam = LAMBDA_M
    half, d = 2 * lam, lam / 2
    for _ in range(5):
        current = random_feasible_positions(rng, 6, half, d)
        target = current + rng.normal(0, lam / 3, current.shape)
        fast = project_active_set(current, target, half, d)
        ref = _ProjectionQP(6)(current, target, half, d)
        assert fast is not None and is_feasible(fast, half, d, tol=1e-9)
        assert np.sum((fast - target) ** 2) == pytest.approx(np.sum((ref - target) ** 2), rel=1e-4, abs=1e-12)
