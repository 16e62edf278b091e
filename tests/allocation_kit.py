"""Small allocation problems for the allocation tests: one set-up, each test overriding its fields."""

from __future__ import annotations

from typing import Any

import numpy as np

from allocation import Problem
from sim.channel import FieldResponseChannel, path_loss_linear

LAMBDA_M = 0.125  # 2.4 GHz


def problem_kwargs(
    seed: int = 0, /, *, clients: int = 5, paths: int = 8, path_gain: float | None = None, **over: Any
) -> dict[str, Any]:
    """Keyword arguments of a small ``Problem``: ``clients`` clients, their channel drawn with ``seed``.

    Without ``path_gain`` each client's gain is the path loss of a distance drawn in 20-80 m
    (before the channel, from the same generator). ``over`` replaces any field.
    """
    rng = np.random.default_rng(seed)
    gain = path_loss_linear(rng.uniform(20, 80, clients)) if path_gain is None else path_gain
    kwargs: dict[str, Any] = {
        "channel": FieldResponseChannel.draw(rng, clients, paths, LAMBDA_M, path_gain=gain),
        "num_antennas": 4,
        "wavelength_m": LAMBDA_M,
        "region_m": 4 * LAMBDA_M,
        "min_spacing_m": LAMBDA_M / 2,
        "noise_power_w": 1e-12,
        "power_w": 0.1,
        "clients_per_round": 2,
        "latency_budget_s": 1e5,
    }
    kwargs.update(over)
    return kwargs


def make_problem(seed: int = 0, /, **kwargs: Any) -> Problem:
    """``Problem(**problem_kwargs(seed, **kwargs))``."""
    return Problem(**problem_kwargs(seed, **kwargs))


# The 20 seeded problems of the "ours is not beaten" test (issue 10): U = 10, N = 4, K in {1, 2, 4},
# unequal data sizes, a participation floor at half of K/U, budgets that bind, and noise levels
# from "the air does not matter" (-90 dBm) to noise-limited.
SEEDED_PROBLEMS = 20
SEEDED_NOISE_W = (1e-12, 1e-9, 1e-8)


def seeded_problem(seed: int, **over: Any) -> Problem:
    """Problem ``seed`` of the seeded suite (``over`` replaces any field)."""
    rng = np.random.default_rng(10_000 + seed)
    k = (1, 2, 4)[seed % 3]
    kwargs: dict[str, Any] = {
        "clients": 10,
        "weights": rng.uniform(0.5, 2.0, 10),
        "clients_per_round": k,
        "fairness_floor": 0.5 * k / 10,
        "noise_power_w": SEEDED_NOISE_W[(seed // 3) % 3],
        "max_rounds": 3,
        "position_starts": 2,
        "latency_budget_s": 3 * (100.0 * 8 + 5.0),
        "energy_budget_j": (40.0 if seed % 2 == 0 else 2000.0) * k,  # max clock affordable on odd seeds
    }
    kwargs.update(over)
    return make_problem(seed, **kwargs)
