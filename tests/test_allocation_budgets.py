"""Per-round re-planning keeps every scheme within the run's budgets (allocation.replan).

The problem is configs/edge.yaml's (the real channel, four clients at the cell edge) with every
client sending each round and an energy budget a third of what non_ma's flat-out rounds cost: the
compare cell in which non_ma's planner used to spend 204.8 J a round against an 83.3 J share and
died at round 6 with -24 J left. Each round is charged as a run charges it (testbed.budgets), on
b_k precoded afresh from the channel at the planned positions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from dryrun_kit import ROOT

from allocation import BudgetError, plan_round
from testbed.air.comparison import optimal_precoding
from testbed.budgets import round_charge_j
from testbed.config import load_config
from testbed.planning import build_problem
from testbed.schemes import SCHEMES, scheme_config, scheme_strategy

EDGE = ROOT / "configs" / "edge.yaml"
ROUNDS = 6


def edge_problem(energy_budget_j: float, *more: str) -> tuple[object, object]:
    config = load_config(
        EDGE,
        [
            "allocation.clients_per_round=4",
            f"allocation.energy_budget_j={energy_budget_j}",
            f"fl.rounds={ROUNDS}",
            f"allocation.max_rounds={ROUNDS}",
            *more,
        ],
    )
    return config, build_problem(config)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_replans_within_a_tight_energy_budget(scheme: str) -> None:
    budget = 500.0  # 83.3 J a round over 6 rounds; non_ma at f_max and batch 8 costs 204.8 J
    config, problem = edge_problem(budget)
    strategy = scheme_strategy(scheme)
    aggregation = scheme_config(config, scheme).fl.aggregation
    counts, positions = np.zeros(problem.num_clients, dtype=int), None
    latency_spent = energy_spent = 0.0
    # The plan's b_k and a run's (precoded again on its own channel estimates) both keep
    # |b_k|^2 <= P_k, so a round's charge may exceed its plan by at most the transmit energy the
    # plan left under the cap; the plan reserved the cap, so the charge stays within the share.
    symbol_s = math.ceil(problem.payload_reals / 2) / problem.bandwidth_hz
    for r in range(1, ROUNDS + 1):
        left = ROUNDS - r + 1
        share = (budget - energy_spent) / left
        rp = plan_round(
            problem, r, counts, positions, config.allocation.latency_budget_s - latency_spent,
            budget - energy_spent, left, np.random.default_rng([config.run.seed, 11, r]), strategy=strategy,
        )  # fmt: skip
        assert rp.energy_j <= share * (1 + 1e-9), (
            f"round {r}: planned {rp.energy_j:.4g} J, share {share:.4g} J"
        )
        sel = np.asarray(rp.selected)
        h = np.asarray(problem.channel.response(np.asarray(rp.positions_m)))[sel]
        _, b, _ = optimal_precoding(h, problem.power[sel], np.asarray(rp.batches, dtype=float))
        charged = round_charge_j(problem, rp, rp.selected, rp.batches, rp.clocks_hz, b, aggregation)
        headroom = symbol_s * float(np.sum(problem.power[sel] - np.abs(rp.tx_scalar_array()) ** 2))
        if aggregation == "digital":
            headroom = 0.0  # charged at the plan's own TDMA air energy
        assert charged <= rp.energy_j + headroom + 1e-12 * rp.energy_j
        assert charged <= share * (1 + 1e-9)
        counts[sel] += 1
        positions = np.asarray(rp.positions_m)
        latency_spent += rp.move_s + rp.compute_s + rp.air_s
        energy_spent += charged
    assert energy_spent <= budget * (1 + 1e-9)
    assert latency_spent <= config.allocation.latency_budget_s * (1 + 1e-9)


def test_non_ma_takes_the_largest_batch_its_share_pays_at_f_max() -> None:
    config, problem = edge_problem(500.0)
    rp = plan_round(
        problem, 1, np.zeros(4, dtype=int), None, config.allocation.latency_budget_s, 500.0, ROUNDS,
        np.random.default_rng(0), strategy=scheme_strategy("non_ma"),
    )  # fmt: skip
    # 1e-28 x 8 steps x 2e9 cycles x (2e9 Hz)^2 = 6.4 J a sample at f_max; 4 clients share 83.3 J.
    assert rp.clocks_hz == [pytest.approx(2e9)] * 4 and rp.batches == [3] * 4
    assert rp.energy_j == pytest.approx(4 * 3 * 6.4, rel=1e-4)


def test_a_round_its_share_cannot_pay_is_a_budget_error_saying_what_is_left_and_needed() -> None:
    # 150 J over 6 rounds is 25 J a round, under 4 clients x 6.4 J of batch 1 at f_max.
    config, problem = edge_problem(150.0)
    with pytest.raises(BudgetError) as caught:
        plan_round(
            problem, 1, np.zeros(4, dtype=int), None, config.allocation.latency_budget_s, 150.0, ROUNDS,
            np.random.default_rng(0), strategy=scheme_strategy("non_ma"),
        )  # fmt: skip
    err = caught.value
    assert (err.budget, err.left, err.rounds) == ("energy_budget_j", 150.0, ROUNDS)
    assert err.need == pytest.approx(25.6, rel=1e-3)
    assert (
        "energy_budget_j has 150 J left for 6 round(s) (25 J a round); round 1 needs at least 25.6 J"
        in str(err)
    )
    # The latency budget too: a share shorter than one round's air and batch 1 at f_max.
    with pytest.raises(
        BudgetError, match=r"latency_budget_s has 30 s left .* round 2 needs at least 8\.0"
    ) as caught:
        plan_round(
            problem, 2, np.zeros(4, dtype=int), None, 30.0, 150.0, ROUNDS, np.random.default_rng(0),
            strategy=scheme_strategy("ours"),
        )  # fmt: skip
    assert caught.value.budget == "latency_budget_s"
