"""What a newcomer's first hour found wrong in the reports (issue 20, part 5), each held fixed:
the time breakdown as a table of rounded numbers, the initial evaluation recorded and drawn,
positions with start and end marks and the legend off the region, baselines whose bars read the
right way round on a log energy scale, the measured wall time on its own axis, the campaign's own
report, `testbed measure` saying its run directory and how to resume, and `testbed plan` saying
which channel it planned on."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from process_kit import hears_ctrl_c

from testbed.campaign.report import is_campaign, write_campaign_report
from testbed.commands.plan import channel_source
from testbed.config import load_config
from testbed.records import RunRecorder
from testbed.report import (
    baselines_figure,
    breakdown_table,
    cost_figure,
    format_breakdown,
    initial_eval,
    positions_figure,
    write_report,
)

ROOT = Path(__file__).resolve().parent.parent
BREAKDOWN = {"plan_s": 0.14587504500013893, "train_s": 0.9160605609999948, "other_s": 4.324299993641034e-05}


def _run(tmp_path: Path, rounds: int = 3, initial: float | None = 6.2755) -> RunRecorder:
    rec = RunRecorder.create(tmp_path, "r", "", fsync=False)
    rec.start(num_clients=4, region_m=0.5)
    rng = np.random.default_rng(1)
    for t in range(1, rounds + 1):
        rec.event(
            "round",
            round=t,
            selected=[0, 1],
            dropped=[],
            train_loss=6.0 - 0.1 * t,
            val_loss=6.0 - 0.1 * t,
            val_ppl=float(np.exp(6.0 - 0.1 * t)),
            positions_m=rng.uniform(-0.2, 0.2, (4, 2)),
            latency_model_s=120.0,
            latency_wall_s=1.2,
            energy_model_j=3e-4,
            time_breakdown_s=BREAKDOWN,
        )
    rec.stop("success")
    rec.write_summary(
        {"scheme": "ours", "rounds": rounds, "first_val_loss": 5.9, "median_time_breakdown_s": BREAKDOWN}
    )
    rec.close()
    if initial is not None:
        (rec.run_dir / "fl").mkdir(exist_ok=True)
        lines = [
            {"t": 1.0, "event": "bound", "round": 0},
            {"t": 2.0, "event": "initial_eval", "round": 0, "val_loss": initial},
        ]
        # A torn last line, as a writer mid-line leaves it, is not an error.
        text = "".join(json.dumps(d) + "\n" for d in lines) + '{"t": 3.0, "event": "pla'
        (rec.run_dir / "fl" / "events.jsonl").write_text(text)
    return rec


def test_the_breakdown_is_a_table_of_rounded_milliseconds_largest_first(tmp_path: Path) -> None:
    assert breakdown_table(BREAKDOWN) == [
        "| slice | median (ms) | share |",
        "|---|---:|---:|",
        "| train | 916.1 | 86 % |",
        "| plan | 145.9 | 14 % |",
        "| other | 0.0 | 0 % |",
    ]
    assert format_breakdown(BREAKDOWN) == "train 916 ms, plan 146 ms, other 0 ms"
    report = write_report(_run(tmp_path).run_dir).read_text()
    assert "| train | 916.1 | 86 % |" in report
    # No raw floats anywhere: the old report printed 16-digit numbers.
    assert not re.search(r"\d\.\d{6,}", report)


def test_the_initial_evaluation_is_read_shown_and_named_apart_from_round_1(tmp_path: Path) -> None:
    rec = _run(tmp_path)
    assert initial_eval(rec.run_dir) == pytest.approx(6.2755)
    report = write_report(rec.run_dir).read_text()
    assert "| initial val loss (before round 1) | 6.276 |" in report
    assert "| val loss after round 1 (first_val_loss) | 5.9 |" in report
    assert "round 0 is the evaluation before any training" in report
    # A run without the coordinator's record (an older run) has no such row, and no error.
    other = _run(tmp_path / "old", initial=None)
    assert initial_eval(other.run_dir) is None
    assert "initial val loss" not in write_report(other.run_dir).read_text()


def test_positions_mark_start_and_end_and_keep_the_legend_off_the_region() -> None:
    rng = np.random.default_rng(0)
    rounds = [{"round": t, "positions_m": rng.uniform(-0.2, 0.2, (3, 2)).tolist()} for t in (1, 2, 3)]
    fig = positions_figure(rounds, 0.5, None)
    ax = fig.axes[0]
    starts = [ln for ln in ax.lines if ln.get_marker() == "s" and len(ln.get_xdata()) == 1]
    ends = [ln for ln in ax.lines if ln.get_marker() == "o" and len(ln.get_xdata()) == 1]
    assert len(starts) == 3 and len(ends) == 3
    assert starts[0].get_xdata()[0] == pytest.approx(rounds[0]["positions_m"][0][0])
    assert ends[0].get_xdata()[0] == pytest.approx(rounds[-1]["positions_m"][0][0])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend, axes_box = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 >= axes_box.x1  # beside the region, not on it
    assert legend.x1 <= fig.bbox.x1  # and still inside the picture
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "round 1" in labels and "round 3 (last)" in labels


def test_baselines_bars_grow_with_the_mse_and_energy_is_on_a_log_scale() -> None:
    plan = {
        "optimized": {"mse_db": -34.2, "energy_j": 1e-3},
        "baselines": {
            "fpa": {"mse_db": -28.1, "energy_j": 1e-3},
            "non_ma": {"mse_db": -26.0, "energy_j": 1.6},
            "digital": {"mse_db": float("-inf"), "energy_j": 3e-3},
        },
    }
    fig = baselines_figure(plan)
    mse_ax, energy_ax = fig.axes
    heights = [p.get_height() for p in mse_ax.patches]
    # dB above the best: the best plan is 0, the worse one is taller; no bar hangs below 0.
    assert heights == pytest.approx([0.0, 6.1, 8.2, 0.0])
    assert "shorter is better" in mse_ax.get_title()
    assert energy_ax.get_yscale() == "log" and "log scale" in energy_ax.get_title()
    notes = [t.get_text() for t in mse_ax.texts]
    assert "best" in notes and "+6.1" in notes and "error-free" in notes


def test_the_measured_wall_time_has_its_own_axis() -> None:
    rounds = [{"round": t, "latency_model_s": 300.0, "latency_wall_s": 1.5} for t in (1, 2, 3)]
    fig = cost_figure(rounds)
    latency_axes = [a for a in fig.axes if a.get_lines() and a.bbox.x0 < fig.bbox.width / 2]
    walls = [a for a in latency_axes if a.get_ylabel() == "measured wall (s)"]
    assert len(walls) == 1
    wall = walls[0]
    (line,) = wall.get_lines()
    assert list(line.get_ydata()) == pytest.approx([1.5, 3.0, 4.5])
    # Not flat at the bottom: the line spans most of its own axis.
    assert wall.get_ylim()[1] < 2 * 4.5


def _campaign(tmp_path: Path) -> Path:
    rec = RunRecorder.create(tmp_path, "campaign", "", fsync=False)
    rec.start(kind="campaign", num_clients=2, num_antennas=2, region_m=0.5, steps=2)
    for step in range(2):
        rec.event(
            "point", point=step, snr_db=[[20.0 + step, 22.0], [10.0, 12.0]], positions_m=[[0, 0], [0.1, 0]]
        )
    rec.stop("completed", "2 of 2 steps measured")
    rec.write_summary(
        {"kind": "campaign", "steps": 2, "grid_nx": 2, "grid_ny": 1, "num_antennas": 2, "num_clients": 2,
         "rows": 8, "recordings": 4, "snr_db_median": 16.0, "region_m": 0.5, "table": "channels.parquet",
         "chain_gain_db": [0.0, 0.1], "chain_phase_deg": [0.0, 3.0]}
    )  # fmt: skip
    rec.close()
    np.savez(
        rec.run_dir / "channel_map.npz",
        x_m=np.array([-0.1, 0.1]),
        y_m=np.array([0.0]),
        gain_db=np.array([[-70.0, -72.0]]),
    )
    return rec.run_dir


def test_a_campaign_report_has_its_own_template_and_says_whose_gain(tmp_path: Path) -> None:
    run_dir = _campaign(tmp_path)
    assert is_campaign(run_dir)
    text = write_campaign_report(run_dir).read_text()
    assert text.startswith("# Campaign report: ")
    assert "Scheme" not in text and "No data for this plot" not in text
    assert "| points measured | 2 of 2 |" in text and "| 1 | 11.0 | 10.0 | 12.0 |" in text
    assert "channel gain summed over the clients, sum_k |h_k|^2 (dB)" in text
    assert (run_dir / "report" / "gain_map.png").stat().st_size > 1000
    # `testbed report DIR` picks the campaign's template too.
    from testbed.cli import main

    (run_dir / "report" / "report.md").unlink()
    assert main(["report", str(run_dir), "-q"]) == 0
    assert (run_dir / "report" / "report.md").read_text().startswith("# Campaign report")
    assert not is_campaign(_run(tmp_path / "run").run_dir)


def test_plan_says_which_channel_it_planned_on() -> None:
    simulated = channel_source(load_config(ROOT / "configs" / "dryrun.yaml"))
    assert simulated.startswith("channel: the simulated world")
    measured = channel_source(
        load_config(ROOT / "configs" / "dryrun.yaml", ["allocation.channel_map=runs/campaign-1"])
    )
    assert measured.startswith("channel: the measured map of campaign runs/campaign-1")


@pytest.mark.slow
def test_measure_says_its_run_directory_first_and_how_to_resume_after_ctrl_c(tmp_path: Path) -> None:
    args = ["measure", str(ROOT / "configs" / "campaign.yaml"), "--set", f"run.output_dir={tmp_path}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed.cli", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=hears_ctrl_c,
    )  # fmt: skip
    first = proc.stdout.readline()
    assert first.startswith("run directory: "), first
    run_dir = Path(first.split(": ", 1)[1].strip())
    assert run_dir.parent == tmp_path
    # Interrupt once a point is on disk, as an operator's Ctrl-C would.
    deadline = time.monotonic() + 120
    while '"kind": "point"' not in (run_dir / "events.jsonl").read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"continue with: testbed measure --resume {run_dir}" in err
