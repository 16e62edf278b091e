"""The field-response channel (docs/explanation/system-model.md section 2): gradient, r = 0 identity, movable-antenna gain."""

from __future__ import annotations

import numpy as np
import pytest

from sim.channel import FieldResponseChannel, path_loss_linear, wavelength_m

WAVELENGTH_M = wavelength_m(2.4e9)


def _grid(side_m: float, points: int) -> np.ndarray:
    g = np.linspace(-side_m / 2, side_m / 2, points)
    x, y = np.meshgrid(g, g)
    return np.stack([x.ravel(), y.ravel()], axis=1)


def test_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(0)
    ch = FieldResponseChannel.draw(rng, 3, 6, WAVELENGTH_M, path_gain=[1.0, 0.5, 2.0])
    pos = rng.uniform(-2 * WAVELENGTH_M, 2 * WAVELENGTH_M, (4, 2))
    grad = ch.gradient(pos)
    assert grad.shape == (3, 4, 2)
    step = 1e-7 * WAVELENGTH_M
    for n in range(4):
        for axis in range(2):
            up, down = pos.copy(), pos.copy()
            up[n, axis] += step
            down[n, axis] -= step
            fd = (ch.response(up) - ch.response(down)) / (2 * step)
            np.testing.assert_allclose(grad[:, n, axis], fd[:, n], rtol=1e-5, atol=1e-6)
            others = [m for m in range(4) if m != n]
            assert np.max(np.abs(fd[:, others])) < 1e-6  # antenna n moves only its own column


def test_origin_is_the_sum_of_path_gains() -> None:
    rng = np.random.default_rng(1)
    ch = FieldResponseChannel.draw(rng, 5, 8, WAVELENGTH_M)
    h0 = ch.response(np.zeros((2, 2)))
    np.testing.assert_allclose(h0[:, 0], ch.gains.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(h0[:, 1], h0[:, 0], rtol=1e-12)


def test_path_loss_sets_the_mean_power() -> None:
    rng = np.random.default_rng(2)
    beta = path_loss_linear(np.array([10.0, 100.0]), exponent=2.0, ref_loss_db=40.0)
    assert beta == pytest.approx([1e-6, 1e-8])
    ch = FieldResponseChannel.draw(rng, 2, 4000, WAVELENGTH_M, path_gain=beta)
    assert ch.path_power() == pytest.approx(beta, rel=0.1)


def _movable_gain_db(num_paths: int, draws: int, seed: int) -> float:
    """E[max over a 4-lambda square of |h|^2] over E[|h(0)|^2], in dB (one antenna, one client)."""
    rng = np.random.default_rng(seed)
    ch = FieldResponseChannel.draw(rng, draws, num_paths, WAVELENGTH_M)
    best = np.max(np.abs(ch.response(_grid(4 * WAVELENGTH_M, 41))) ** 2, axis=1)
    fixed = np.abs(ch.response(np.zeros((1, 2)))[:, 0]) ** 2
    return float(10 * np.log10(best.mean() / fixed.mean()))


def test_movable_antenna_gains_about_7_db_at_ten_paths() -> None:
    assert 6.0 < _movable_gain_db(10, 400, 3) < 8.5


def test_movable_antenna_gains_nothing_with_one_path() -> None:
    assert abs(_movable_gain_db(1, 100, 4)) < 1e-6
