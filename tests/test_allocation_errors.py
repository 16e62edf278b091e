"""Bad problem data gives a clear AllocationError, never a silent wrong plan."""

from __future__ import annotations

import numpy as np
import pytest

from allocation import AllocationError, Problem
from sim.channel import FieldResponseChannel

LAMBDA_M = 0.125


class _NanChannel:
    def __init__(self, inner: FieldResponseChannel) -> None:
        self.inner = inner

    def response(self, positions_m: np.ndarray) -> np.ndarray:
        h = self.inner.response(positions_m)
        h[1, 0] = np.nan
        return h

    def gradient(self, positions_m: np.ndarray) -> np.ndarray:
        return self.inner.gradient(positions_m)


def _kwargs(**over: object) -> dict:
    ch = FieldResponseChannel.draw(np.random.default_rng(0), 4, 5, LAMBDA_M, path_gain=1e-9)
    base = dict(
        channel=ch,
        num_antennas=4,
        wavelength_m=LAMBDA_M,
        region_m=4 * LAMBDA_M,
        min_spacing_m=LAMBDA_M / 2,
        noise_power_w=1e-12,
        power_w=0.1,
        clients_per_round=2,
        latency_budget_s=1e4,
    )
    base.update(over)
    return base


def test_valid_data_builds() -> None:
    assert Problem(**_kwargs()).num_clients == 4


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"latency_budget_s": 10.0}, "latency_budget_s"),
        ({"energy_budget_j": 1e-9}, "energy_budget_j"),
        ({"num_antennas": 40, "min_spacing_m": LAMBDA_M}, "do not fit"),
        ({"clients_per_round": 9}, "clients_per_round"),
        ({"noise_power_w": float("nan")}, "noise_power_w"),
        ({"selection": "best"}, "selection"),
        ({"power_w": np.array([0.1, 0.1])}, "power_w"),
    ],
)
def test_bad_data_raises_a_clear_error(over: dict, words: str) -> None:
    with pytest.raises(AllocationError, match=words):
        Problem(**_kwargs(**over))


def test_nan_channel_is_refused() -> None:
    ch = FieldResponseChannel.draw(np.random.default_rng(0), 4, 5, LAMBDA_M, path_gain=1e-9)
    with pytest.raises(AllocationError, match="NaN"):
        Problem(**_kwargs(channel=_NanChannel(ch)))
