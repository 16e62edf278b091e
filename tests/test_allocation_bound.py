"""The calibrated bound (allocation.bound): its terms, its constants' sources and their estimation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from allocation import AllocationError
from allocation.bound import (
    CONSTANT_NAMES,
    BoundConstants,
    UpdateNormTracker,
    constant_names,
    convergence_bound,
    fit_pilot,
    heterogeneity_from_partition,
)


def _terms(c: BoundConstants, rounds: int = 10, nmse: float = 1e-2, bias: float = 1.0) -> dict[str, float]:
    return convergence_bound(c, np.full(rounds, 8.0), np.full(rounds, nmse), np.full(rounds, bias))


def test_terms_follow_the_calibrated_formulas() -> None:
    c = BoundConstants(
        smoothness=2.0,
        sgd_step=0.25,
        initial_gap=3.0,
        gradient_variance=0.5,
        update_sq_norm=0.4,
        heterogeneity=0.2,
        pretrain_rounds=50,
        wasserstein=0.3,
        lipschitz_data=2.0,
        c1=0.5,
    )
    b = np.array([4.0, 8.0])
    t = convergence_bound(c, b, np.array([0.1, 0.3]), np.array([1.0, 0.0]))
    assert t["optimization"] == pytest.approx(2 * 3.0 / (0.25 * 2))
    assert t["variance"] == pytest.approx(2.0 * 0.25 * 0.5 * (1 / 4 + 1 / 8) / 2)
    assert t["distribution_shift"] == pytest.approx(0.5 * 4.0 * 0.09 * 50 / 52)
    assert t["ota"] == pytest.approx(2.0 * 0.25 * 0.4 * 0.2)
    assert t["selection_bias"] == pytest.approx(0.2 * 0.5)
    assert t["total"] == pytest.approx(sum(v for k, v in t.items() if k != "total"))


def test_pretrain_rounds_only_enter_the_shift_term() -> None:
    few, many = _terms(BoundConstants(pretrain_rounds=1)), _terms(BoundConstants(pretrain_rounds=10_000))
    for name in ("optimization", "variance", "ota", "selection_bias"):
        assert few[name] == pytest.approx(many[name])
    assert many["distribution_shift"] > few["distribution_shift"]
    # More fine-tuning rounds shrink both the optimisation and the shift term.
    longer = _terms(BoundConstants(pretrain_rounds=10_000), rounds=40)
    assert longer["optimization"] < many["optimization"]
    assert longer["distribution_shift"] < many["distribution_shift"]


def test_ota_term_scales_with_update_energy_and_vanishes_without_error() -> None:
    base = _terms(BoundConstants(update_sq_norm=0.1))
    assert _terms(BoundConstants(update_sq_norm=0.4))["ota"] == pytest.approx(4 * base["ota"])
    assert _terms(BoundConstants(), nmse=0.0)["ota"] == 0.0
    # Not the old q-times-unit-variance form: the payload length changes nothing.
    c = BoundConstants()
    one = convergence_bound(c, np.full(3, 8.0), np.full(3, 0.1), np.zeros(3), payload_reals=10)
    big = convergence_bound(c, np.full(3, 8.0), np.full(3, 0.1), np.zeros(3), payload_reals=10**7)
    assert one == big


def test_selection_bias_is_scaled_by_heterogeneity() -> None:
    assert _terms(BoundConstants(heterogeneity=0.0))["selection_bias"] == 0.0
    assert _terms(BoundConstants(heterogeneity=0.3))["selection_bias"] == pytest.approx(0.3)


def test_step_defaults_to_one_over_l_and_must_respect_it() -> None:
    assert BoundConstants(smoothness=4.0).eta == pytest.approx(0.25)
    assert BoundConstants(smoothness=4.0, sgd_step=0.1).eta == pytest.approx(0.1)
    with pytest.raises(AllocationError, match=r"sgd_step \* smoothness <= 1"):
        BoundConstants(smoothness=4.0, sgd_step=0.5)
    with pytest.raises(AllocationError, match="initial_gap"):
        BoundConstants(initial_gap=0.0)
    with pytest.raises(AllocationError, match="heterogeneity"):
        BoundConstants(heterogeneity=-1.0)


def test_sources_are_recorded_and_estimates_replace_them() -> None:
    assert constant_names() == CONSTANT_NAMES
    c = BoundConstants(smoothness=2.0, sources={"smoothness": "config"})
    assert c.sources["smoothness"] == "config" and c.sources["update_sq_norm"] == "default"
    est = c.with_estimates("estimated", update_sq_norm=0.02, heterogeneity=0.0)
    assert est.update_sq_norm == 0.02 and est.heterogeneity == 0.0
    assert est.sources["update_sq_norm"] == "estimated" and est.sources["smoothness"] == "config"
    assert c.update_sq_norm == 0.1  # the original is untouched
    record = est.to_record()
    assert set(CONSTANT_NAMES) <= set(record)
    assert record["update_sq_norm"] == {"value": 0.02, "source": "estimated"}
    assert record["eta_effective"]["value"] == pytest.approx(0.5)
    assert BoundConstants.from_record(record) == est
    with pytest.raises(AllocationError, match="use sgd_step"):
        c.with_estimates("pilot", learning_rate=5e-5)
    with pytest.raises(AllocationError, match="source must be one of"):
        c.with_estimates("guess", initial_gap=1.0)


def test_tracker_estimates_update_energy_and_spread() -> None:
    rng = np.random.default_rng(0)
    tracker = UpdateNormTracker(decay=1.0)  # the newest round only: exact identities
    updates = rng.standard_normal((4, 50))
    mean = updates.mean(axis=0)
    tracker.observe({k: float(u @ u) for k, u in enumerate(updates)}, float(mean @ mean))
    assert tracker.update_sq_norm == pytest.approx(float(mean @ mean))
    spread = float(np.mean([np.sum((u - mean) ** 2) for u in updates]))
    assert tracker.heterogeneity == pytest.approx(spread)
    # Identical clients: no spread. One client: the spread estimate stays where it was.
    same = UpdateNormTracker(decay=1.0)
    same.observe({0: 2.0, 1: 2.0}, 2.0)
    assert same.heterogeneity == pytest.approx(0.0)
    same.observe({3: 9.0}, 9.0)
    assert same.heterogeneity == pytest.approx(0.0) and same.update_sq_norm == 9.0
    assert same.rounds_seen == 2
    restored = UpdateNormTracker.from_dict(same.to_dict())
    assert restored.to_dict() == same.to_dict()
    assert BoundConstants().with_estimates("estimated", **restored.estimates()).update_sq_norm == 9.0
    with pytest.raises(AllocationError, match="aggregate_sq_norm"):
        same.observe({0: 1.0}, math.nan)


def test_tracker_moving_average_follows_shrinking_updates() -> None:
    tracker = UpdateNormTracker(decay=0.5)
    assert tracker.update_sq_norm is None and tracker.estimates() == {}
    for g2 in (8.0, 4.0, 2.0):
        tracker.observe({0: g2 * 1.5, 1: g2 * 1.5}, g2)
    assert tracker.update_sq_norm == pytest.approx(0.25 * 8 + 0.25 * 4 + 0.5 * 2)


def test_fit_pilot_recovers_a_known_curve() -> None:
    smoothness, eta, gap, floor = 2.0, 0.1, 0.8, 5.0
    rounds = np.arange(20)
    losses = floor + gap * (1 - eta * smoothness) ** rounds
    eta_fit, gap_fit = fit_pilot(losses.tolist(), smoothness)
    assert eta_fit == pytest.approx(eta, rel=0.05)
    assert gap_fit == pytest.approx(gap, rel=0.05)
    assert eta_fit * smoothness <= 1.0
    with pytest.raises(AllocationError, match="does not fall"):
        fit_pilot([5.0, 5.1, 5.2], 1.0)
    with pytest.raises(AllocationError, match="at least 3"):
        fit_pilot([5.0, 4.0], 1.0)


def test_heterogeneity_from_partition_is_zero_for_iid_and_grows_with_skew() -> None:
    iid = np.full((4, 10), 25)
    assert heterogeneity_from_partition(iid) == pytest.approx(0.0)
    skewed = np.eye(4) * 100 + 1
    disjoint = np.eye(4) * 100
    assert 0 < heterogeneity_from_partition(skewed) < heterogeneity_from_partition(disjoint) < 1
    assert heterogeneity_from_partition(disjoint, update_sq_norm=0.5) == pytest.approx(
        0.5 * heterogeneity_from_partition(disjoint)
    )
    with pytest.raises(AllocationError, match="at least one sample"):
        heterogeneity_from_partition(np.array([[1, 2], [0, 0]]))


def test_config_bound_section_records_sources_and_rejects_old_keys() -> None:
    from drivers.errors import ConfigError
    from testbed.config import load_config
    from testbed.planning import build_problem

    over = ["lab.clients.count=3", "allocation.max_rounds=2", "allocation.bound.sgd_step=0.5"]
    problem = build_problem(load_config(None, over))
    assert problem.bound.eta == 0.5 and problem.bound.sources["sgd_step"] == "config"
    assert problem.bound.sources["update_sq_norm"] == "default"
    # The config's defaults are the dataclass's.
    defaults = build_problem(load_config(None, over[:2])).bound
    assert {n: getattr(defaults, n) for n in CONSTANT_NAMES} == {
        n: getattr(BoundConstants(), n) for n in CONSTANT_NAMES
    }
    with pytest.raises(ConfigError, match=r"learning_rate was renamed: use sgd_step"):
        load_config(None, ["allocation.bound.learning_rate=5e-5"])
    with pytest.raises(ConfigError, match=r"pretrain_batch was removed"):
        load_config(None, ["allocation.bound.pretrain_batch=64"])
    with pytest.raises(ConfigError, match=r"sgd_step \* smoothness <= 1"):
        load_config(None, ["allocation.bound.smoothness=4", "allocation.bound.sgd_step=0.5"])


def test_plans_carry_every_constant_and_its_source() -> None:
    from allocation_kit import make_problem

    from allocation import solve

    p = make_problem(
        0, max_rounds=2, position_starts=1, bound=BoundConstants().with_estimates("pilot", initial_gap=0.3)
    )
    plan = solve(p)
    assert plan.constants["initial_gap"] == {"value": 0.3, "source": "pilot"}
    assert set(CONSTANT_NAMES) <= set(plan.constants)
    assert plan.to_dict()["constants"]["update_sq_norm"]["source"] == "default"
    assert plan.bound["optimization"] == pytest.approx(2 * 0.3 / (1.0 * plan.rounds))


def test_noise_curvature_reads_the_mean_curvature_of_a_quadratic_under_isotropic_noise() -> None:
    from allocation.bound import noise_curvature

    rng = np.random.default_rng(0)
    # F(w) = 1/2 w' H w with a flat training direction (0.01) and steep others: isotropic noise
    # meets the mean curvature trace(H) / d, far above the flat direction's.
    h = np.concatenate([[0.01], rng.uniform(1.0, 3.0, 4999)])
    w = np.zeros_like(h)
    w[0] = 1.0  # the run sits along the flat direction
    noise = rng.normal(0.0, 0.01, h.size)
    loss = lambda x: 0.5 * float(np.sum(h * x * x))  # noqa: E731
    curv = noise_curvature(loss(w + noise) - loss(w), float(noise @ noise))
    assert curv == pytest.approx(h.mean(), rel=0.05) and curv > 100 * h[0]
    with pytest.raises(AllocationError, match="noise_sq_norm"):
        noise_curvature(0.1, 0.0)
