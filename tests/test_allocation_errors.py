"""Bad problem data gives a clear AllocationError, never a silent wrong plan."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
from allocation_kit import LAMBDA_M, problem_kwargs

from allocation import AllocationError, Problem, Strategy
from allocation.design import PLACEMENTS, RESOURCE_MODES, SELECTIONS
from sim.channel import FieldResponseChannel
from testbed.config import AllocationSection

# allocation_kit's problem with 4 clients, 5 paths and a short latency budget
SETUP = {"clients": 4, "paths": 5, "path_gain": 1e-9, "latency_budget_s": 1e4}


class _NanChannel:
    def __init__(self, inner: FieldResponseChannel) -> None:
        self.inner = inner

    def response(self, positions_m: np.ndarray) -> np.ndarray:
        h = self.inner.response(positions_m)
        h[1, 0] = np.nan
        return h

    def gradient(self, positions_m: np.ndarray) -> np.ndarray:
        return self.inner.gradient(positions_m)


def test_valid_data_builds() -> None:
    assert Problem(**problem_kwargs(0, **SETUP)).num_clients == 4


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
        Problem(**problem_kwargs(0, **{**SETUP, **over}))


def test_nan_channel_is_refused() -> None:
    kwargs = problem_kwargs(0, **SETUP)
    kwargs["channel"] = _NanChannel(kwargs["channel"])
    with pytest.raises(AllocationError, match="NaN"):
        Problem(**kwargs)


@pytest.mark.parametrize(
    ("field", "value"),
    [("selection", "best"), ("positions", "lattice"), ("resources", "fast"), ("aggregation", "fedavg")],
)
def test_a_strategy_naming_no_variant_is_refused_when_made(field: str, value: str) -> None:
    with pytest.raises(AllocationError, match=rf"Strategy 'x': {field}='{value}' is unknown; allowed: \["):
        Strategy(name="x", **{field: value})


def test_every_selection_the_config_allows_has_a_variant() -> None:
    allowed = set(get_args(AllocationSection.model_fields["selection"].annotation))
    assert set(SELECTIONS) == allowed
    for selection in (None, *SELECTIONS):
        for positions in PLACEMENTS:
            for resources in RESOURCE_MODES:
                Strategy(selection=selection, positions=positions, resources=resources)
