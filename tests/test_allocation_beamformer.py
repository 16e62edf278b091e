"""The SCA beamformer against the SDR lower bound, both exact step solvers, the dual QP."""

from __future__ import annotations

import numpy as np
import pytest

from allocation.beamformer import (
    _cvxpy_step,
    _numpy_step,
    feasible_start,
    nnqp,
    optimize_beamformer,
    sdr_lower_bound,
)
from sim.channel import FieldResponseChannel

LAMBDA_M = 0.125


def _channels(seed: int, k: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ch = FieldResponseChannel.draw(rng, k, 6, LAMBDA_M, path_gain=1e-9)
    return ch.response(rng.uniform(-0.2, 0.2, (n, 2))) * np.sqrt(0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sca_is_feasible_monotone_and_close_to_the_sdr_bound(seed: int) -> None:
    h = _channels(seed, 4, 4)
    res = optimize_beamformer(h, solver="numpy", max_steps=100, starts=4, rng=np.random.default_rng(seed))
    g = np.abs(np.conj(h) @ res.combiner) ** 2
    assert np.all(g >= 1 - 1e-6)  # |h~^H m|^2 >= 1 for every client
    assert np.all(np.diff(res.trace) <= 1e-9 * res.trace[0])
    sdr = sdr_lower_bound(h)
    gap_db = 10 * np.log10(res.objective / sdr)
    assert gap_db >= -0.05  # SDR is a lower bound (up to SCS accuracy)
    assert gap_db <= 1.0


def test_single_client_sca_matches_mrc_exactly() -> None:
    h = _channels(3, 1, 4)
    res = optimize_beamformer(h)
    # min ||m||^2 s.t. |h^H m|^2 >= 1 is m = h / ||h||^2 with value 1 / ||h||^2.
    assert res.objective == pytest.approx(1.0 / np.sum(np.abs(h) ** 2), rel=1e-6)


def test_numpy_dual_and_cvxpy_steps_agree() -> None:
    h = _channels(4, 6, 4)
    h = h / np.sqrt(np.mean(np.abs(h) ** 2))
    x = np.ones(6)
    m0 = feasible_start(h, x)
    m_np, mu_np = _numpy_step(h, x, m0)
    m_cv, mu_cv = _cvxpy_step(6, 4)(h, x, m0)
    assert np.sum(np.abs(m_np) ** 2) == pytest.approx(np.sum(np.abs(m_cv) ** 2), rel=1e-4)
    assert np.allclose(mu_np, mu_cv, atol=1e-4 * np.max(mu_np))


def test_nnqp_satisfies_kkt() -> None:
    rng = np.random.default_rng(5)
    a = rng.standard_normal((5, 8))
    q = a.T @ a + 1e-3 * np.eye(8)
    t = rng.standard_normal(8)
    mu = nnqp(q, t)
    grad = q @ mu - t
    assert np.all(mu >= 0)
    assert np.all(grad >= -1e-8)  # dual feasibility
    assert np.abs(mu @ grad) < 1e-8  # complementarity


def test_fractional_demands_drop_clients_with_zero_demand() -> None:
    h = _channels(6, 5, 4)
    x = np.array([1.0, 0.0, 1.0, 0.0, 0.5])
    res = optimize_beamformer(h, x)
    g = np.abs(np.conj(h) @ res.combiner) ** 2
    assert np.all(g[x > 0] >= x[x > 0] * (1 - 1e-6))
    assert res.duals[1] == 0 and res.duals[3] == 0
