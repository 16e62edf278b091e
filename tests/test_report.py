"""Reports from run records: plots exist for the data a run has, and report.md links them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from testbed.cli import main
from testbed.records import RunRecorder
from testbed.report import jain_index, participation_counts, write_report


def test_jain_index_bounds() -> None:
    assert jain_index(np.array([3, 3, 3, 3])) == pytest.approx(1.0)
    assert jain_index(np.array([4, 0, 0, 0])) == pytest.approx(0.25)
    assert jain_index(np.array([0, 0])) == 0.0


def test_participation_counts_leave_out_dropped_clients() -> None:
    rounds = [{"selected": [0, 1], "dropped": [1]}, {"selected": [1, 2], "dropped": []}]
    assert participation_counts(rounds, 4).tolist() == [1, 1, 1, 0]


def _run_with_rounds(tmp_path: Path, rounds: int) -> RunRecorder:
    rec = RunRecorder.create(tmp_path, "r", "", fsync=False)
    rec.start(num_clients=4, region_m=0.5)
    rng = np.random.default_rng(0)
    for t in range(1, rounds + 1):
        rec.event(
            "round",
            round=t,
            selected=[t % 4, (t + 1) % 4],
            dropped=[],
            train_loss=3 - 0.1 * t,
            val_ppl=20.0 - t,
            nmse_db=-20.0,
            nmse_fpa_db=-15.0,
            positions_m=rng.uniform(-0.2, 0.2, (4, 2)),
            latency_model_s=3.0,
            latency_wall_s=4.0,
            energy_model_j=10.0,
        )
    return rec


def test_report_draws_each_plot_and_links_it(tmp_path: Path) -> None:
    rec = _run_with_rounds(tmp_path, 3)
    rec.event(
        "plan",
        optimized={"mse_db": -20, "energy_j": 1.0},
        baselines={"fpa": {"mse_db": -15, "energy_j": 1.0}},
    )
    rec.stop("success")
    rec.write_summary({"rounds": 3})
    rec.close()
    report = write_report(rec.run_dir)
    text = report.read_text()
    for png in [
        "learning.png",
        "nmse.png",
        "cost.png",
        "participation.png",
        "positions.png",
        "baselines.png",
    ]:
        assert (report.parent / png).stat().st_size > 1000
        assert f"]({png})" in text
    assert "Status: **success**" in text and "| rounds | 3 |" in text


def test_report_of_an_interrupted_run_says_so(tmp_path: Path) -> None:
    rec = _run_with_rounds(tmp_path, 2)
    rec.close()
    text = write_report(rec.run_dir).read_text()
    assert "incomplete (no stop record)" in text
    assert "_No data for this plot in this run._" in text  # no plan event: no baseline plot


def test_report_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = _run_with_rounds(tmp_path, 1)
    rec.close()
    assert main(["report", str(rec.run_dir), "--quiet"]) == 0
    assert (rec.run_dir / "report" / "report.md").exists()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_report_flags_every_round_whose_antennas_missed_the_plan(tmp_path: Path) -> None:
    """Issue 18 point 25: a round the move gate refused ran where the antennas stood; the report
    names each such round and how far off it was."""
    rec = RunRecorder.create(tmp_path, "r", "", fsync=False)
    rec.start(num_clients=4, region_m=0.5)
    plan = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1]])
    for t in range(1, 5):
        reached = plan + (0.02 if t in (2, 4) else 0.0)  # rounds 2 and 4 stayed 28.3 mm away
        rec.event("round", round=t, selected=[0], dropped=[], positions_m=reached, planned_positions_m=plan)
    rec.stop("success")
    rec.close()
    text = write_report(rec.run_dir).read_text()
    assert "**Antennas off the plan** in 2 of 4 rounds: round 2 (28.3 mm off), round 4 (28.3 mm off)" in text
