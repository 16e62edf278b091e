"""solve(), the baselines, per-round re-planning, the config bridge and `testbed plan`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from allocation_kit import LAMBDA_M, make_problem

from allocation import Plan, Problem, plan_round, solve, solve_baselines
from allocation.positions import is_feasible
from sim.channel import FieldResponseChannel

# allocation_kit's problem (5 clients) with budgets that R <= 4 rounds can meet
BUDGETS = {
    "latency_budget_s": 4000.0,
    "energy_budget_j": 2000.0,
    "max_rounds": 4,
    "position_starts": 2,
    "fairness_floor": 0.4,
}


@pytest.fixture(scope="module")
def solved() -> tuple[Problem, Plan, dict[str, Plan]]:
    p = make_problem(0, **BUDGETS)
    shared: dict = {}
    plan = solve(p, shared, sdr_diagnostic=True)
    return p, plan, solve_baselines(p, ["fpa", "max_clock", "non_ma", "digital", "random_placement"], shared)


def test_plan_respects_budgets_and_constraints(solved: tuple) -> None:
    p, plan, _ = solved
    assert plan.feasible and 1 <= plan.rounds <= p.max_rounds
    assert plan.latency_s <= p.latency_budget_s * (1 + 1e-9)
    assert plan.energy_j <= p.energy_budget_j * (1 + 1e-9)
    for rp in plan.round_plans:
        assert len(rp.selected) == 2
        assert is_feasible(np.array(rp.positions_m), p.half_region_m, p.min_spacing_m)
        assert all(f <= 2e9 * (1 + 1e-9) for f in rp.clocks_hz)
        assert all(1 <= b <= p.batch_max for b in rp.batches)
        assert np.all(np.abs(rp.tx_scalar_array()) ** 2 <= 0.1 * (1 + 1e-9))  # power caps
    assert plan.bound["total"] == pytest.approx(plan.bound_by_rounds[plan.rounds - 1])
    # 5 clients, K = 2: few enough sets that selection is exact enumeration, not PDD.
    assert "selection_enumerated" in plan.traces or plan.traces["pdd_violation"][-1] < 1e-3
    assert -0.05 <= plan.traces["sdr_gap_db"][0] <= 1.0  # round 0's beamformer vs the SDR bound
    assert Plan.from_json(plan.to_json()).to_dict() == plan.to_dict()


def test_hybrid_floor_keeps_everyone_within_a_round_of_the_floor(solved: tuple) -> None:
    p, plan, _ = solved
    counts = np.zeros(5)
    for t, rp in enumerate(plan.round_plans):
        counts[rp.selected] += 1
        # After round t nobody is a whole participation behind floor * (t + 1).
        assert np.max(p.effective_floor * (t + 1) - counts) < 1.0


def test_baselines_share_budgets_and_ma_beats_the_fixed_array(solved: tuple) -> None:
    p, plan, base = solved
    for name, b in base.items():
        if b.feasible:
            assert b.latency_s <= p.latency_budget_s * (1 + 1e-9), name
            assert b.energy_j <= p.energy_budget_j * (1 + 1e-9), name
    assert plan.mean_mse <= base["fpa"].mean_mse
    assert base["digital"].mean_mse == 0.0
    # Max clock burns more energy per round than the deadline clock at the same batches.
    if base["max_clock"].feasible:
        per_round = base["max_clock"].energy_j / base["max_clock"].rounds
        assert per_round >= min(rp.energy_j for rp in plan.round_plans)


def test_plan_round_replans_from_new_channels_quickly() -> None:
    p = make_problem(1, **{**BUDGETS, "max_rounds": 3})
    rng = np.random.default_rng(2)
    counts, prev = np.zeros(5, dtype=int), None
    for t in range(2):
        p.channel = FieldResponseChannel.draw(rng, 5, 8, LAMBDA_M, path_gain=1e-8)
        rp = plan_round(p, t, counts, prev, 4000.0 - 1000 * t, 2000.0 - 500 * t, 3 - t, rng)
        assert len(rp.selected) == 2 and rp.compute_s > 0
        assert is_feasible(np.array(rp.positions_m), p.half_region_m, p.min_spacing_m)
        assert rp.move_s == pytest.approx(
            0.0
            if prev is None
            else np.max(np.linalg.norm(np.array(rp.positions_m) - prev, axis=1)) / p.stage_speed_m_s
        )
        counts[rp.selected] += 1
        prev = np.array(rp.positions_m)


def test_build_problem_from_config_and_cli_json(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # noqa: ANN001
    from testbed.cli import main
    from testbed.config import load_config
    from testbed.planning import build_problem, parse_sweep

    over = [
        "lab.clients.count=3",
        "allocation.max_rounds=2",
        "allocation.position_starts=1",
        "allocation.latency_budget_s=2000",
        "allocation.clients_per_round=2",
        "allocation.air_overhead_s=0.01",
    ]
    cfg = load_config(None, over)
    p = build_problem(cfg)
    assert p.num_clients == 3 and p.num_antennas == cfg.lab.num_antennas
    assert p.noise_power_w == pytest.approx(1e-12)  # -90 dBm
    assert p.air_overhead_s == pytest.approx(0.01)
    assert parse_sweep("N=4,8;K=2") == {"N": [4.0, 8.0], "K": [2.0]}
    config = tmp_path / "plan.yaml"
    config.write_text("{}\n")
    rc = main(
        ["plan", "--json", *[a for o in over for a in ("--set", o)], "--baselines", "fpa,non_ma", str(config)]
    )
    assert rc in (0, 1)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {r["method"] for r in out["comparison"]} == {"ours", "fpa", "non_ma"}


def test_sweep_runs_in_local_processes_and_saves_plots(tmp_path) -> None:  # noqa: ANN001
    from testbed.config import load_config
    from testbed.planning import plot_sweep, run_sweep

    cfg = load_config(
        None,
        [
            "lab.clients.count=3",
            "allocation.max_rounds=2",
            "allocation.position_starts=1",
            "allocation.latency_budget_s=2000",
            "allocation.sweep_workers=2",
        ],
    )
    grid = {"K": [1.0, 2.0]}
    rows = run_sweep(cfg, grid, draws=1, baselines=("fpa",))
    assert len(rows) == 2 and all("error" not in r for r in rows)
    assert {r["K"] for r in rows} == {1.0, 2.0}
    assert all(r["ours.feasible"] for r in rows)
    paths = plot_sweep(rows, grid, tmp_path)
    assert paths[0].exists() and paths[0].stat().st_size > 1000


def test_sweep_engine_that_is_not_installed_is_a_clear_error() -> None:
    import importlib.util

    from drivers.errors import ConfigError
    from testbed.config import load_config
    from testbed.planning import parse_sweep, run_sweep

    with pytest.raises(ConfigError, match="unknown parameter"):
        parse_sweep("Q=1,2")
    if importlib.util.find_spec("ray") is None:
        with pytest.raises(ConfigError, match="ray"):
            run_sweep(load_config(None, ["allocation.sweep_engine=ray"]), {"K": [1.0]}, draws=1)
