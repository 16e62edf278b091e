"""`testbed run --scheme`: the whole run follows one scheme's plan, and the records say which."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from allocation.problem import lambda_half_grid
from testbed.cli import main
from testbed.config import load_config
from testbed.experiment import run_experiment
from testbed.records import read_events

ROOT = Path(__file__).resolve().parent.parent
DRYRUN = ROOT / "configs" / "dryrun.yaml"
FAST = [
    "allocation.position_starts=1",
    "allocation.max_outer_iterations=10",
    "fl.training.local_steps=1",
    "fl.data.num_samples=60",
    "fl.rounds=2",
    "fl.transport.insecure=true",
]


def _run(tmp_path: Path, scheme: str) -> tuple[Path, dict, list[dict]]:
    config = load_config(DRYRUN, [*FAST, f"run.output_dir={tmp_path}"])
    run_dir, summary = run_experiment(config, scheme=scheme, node_mode="thread", whole_run_plan=False)
    rounds = [d["data"] for d in read_events(run_dir / "events.jsonl") if d.get("kind") == "round"]
    return run_dir, summary, rounds


def test_fpa_antennas_stay_on_the_half_wavelength_grid(tmp_path: Path) -> None:
    run_dir, summary, rounds = _run(tmp_path, "fpa")
    cfg = load_config(DRYRUN)
    a = cfg.lab.array
    grid = lambda_half_grid(cfg.lab.num_antennas, a.wavelength_m, a.region_m, a.min_spacing_m)
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["scheme"] == "fpa"
        np.testing.assert_allclose(np.asarray(r["positions_m"]), grid, atol=1e-4)
        np.testing.assert_allclose(np.asarray(r["planned_positions_m"]), grid, atol=1e-12)
        # Its own optimal combiner on the same fixed array: the live NMSE is the fixed array's.
        assert r["nmse_live_symbols_db"] == pytest.approx(r["nmse_fpa_db"], abs=1.5)
    assert rounds[1]["move_model_s"] < 1e-3  # nothing moves after the first round
    # The planner feeds the bound's G^2 tracker: round 1 plans on the config's constants, round 2
    # on G^2 estimated from round 1's aggregated update.
    assert all(r["aggregate_sq_norm"] > 0 for r in rounds)
    first, second = (r["bound_constants"]["update_sq_norm"] for r in rounds)
    assert first["source"] in ("config", "default") and second["source"] == "estimated"
    assert second["value"] == pytest.approx(rounds[0]["aggregate_sq_norm"])
    assert summary["scheme"] == "fpa"


def test_digital_is_error_free_fedavg(tmp_path: Path) -> None:
    run_dir, summary, rounds = _run(tmp_path, "digital")
    assert rounds and all(r["nmse_db"] == -math.inf and r["scheme"] == "digital" for r in rounds)
    assert summary["mean_nmse_db"] == -math.inf and summary["scheme"] == "digital"
    start = read_events(run_dir / "events.jsonl")[0]
    assert start["doc"] == "start" and start["scheme"] == "digital"
    assert "fl:\n" in (run_dir / "config.yaml").read_text()
    assert load_config(run_dir / "config.yaml").fl.aggregation == "digital"
    assert json.loads((run_dir / "summary.json").read_text())["scheme"] == "digital"
    assert "Scheme: **digital**" in (run_dir / "report" / "report.md").read_text()


def test_unknown_scheme_exits_2_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", str(DRYRUN), "--scheme", "magic", "--set", f"run.output_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--scheme" in err and "'magic'" in err and "non_ma" in err and "digital" in err
    assert not any(tmp_path.iterdir())
