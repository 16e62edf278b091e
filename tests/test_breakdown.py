"""The per-round time breakdown and the update norms the nodes report (issue 12, point 1)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch

from fl.phases import PHASES, TIMING_SLICES, PhaseClock
from fl.runner import LocalFederation
from fl.training import update_sq_norm
from testbed.config import load_config
from testbed.records import RunRecorder
from testbed.report import write_report
from testbed.run_summary import median_breakdown

OVERRIDES = [
    "lab.clients.count=2", "allocation.clients_per_round=2", "fl.rounds=2", "fl.data.num_samples=80",
    "fl.training.local_steps=2", "fl.transport.heartbeat_s=0.1", "fl.transport.round_deadline_s=20",
    "fl.transport.join_timeout_s=20", "fl.aggregation=digital", "fl.lora.mode=standard",
]  # fmt: skip


def test_the_phase_clock_times_each_phase_at_its_boundaries() -> None:
    heard: list[tuple[int, str]] = []
    clock = PhaseClock(on_phase=lambda r, phase, t: heard.append((r, phase)))
    clock.start_round(3)
    clock.enter("plan")
    time.sleep(0.02)
    with clock.during("move"):  # the planner moves the antennas inside its phase
        time.sleep(0.03)
    clock.enter("plan")  # already there: no second event
    time.sleep(0.01)
    clock.enter(None)  # between phases: "other"
    time.sleep(0.01)
    clock.enter("train")
    slices, round_s = clock.finish()
    assert heard == [(3, "plan"), (3, "move"), (3, "plan"), (3, "train")]
    assert slices["move_s"] >= 0.03 and slices["plan_s"] >= 0.03 and slices["other_s"] >= 0.01
    assert sum(slices.values()) == pytest.approx(round_s, rel=1e-9)
    assert set(slices) == set(TIMING_SLICES) | {"other_s"}
    with pytest.raises(ValueError, match="phase 'nap'; allowed plan, move"):
        clock.enter("nap")


def test_update_sq_norm_sums_every_tensor_in_float64() -> None:
    update = {"a": np.full((3, 4), 0.5, np.float32), "b": np.array([3.0, 4.0], np.float32)}
    assert update_sq_norm(update) == pytest.approx(12 * 0.25 + 25.0)


def test_every_round_record_carries_the_breakdown_and_the_norms(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = load_config(None, OVERRIDES)
    fed = LocalFederation(cfg, tmp_path / "run", node_mode="thread")
    metrics = fed.run()
    ckpt = tmp_path / "run" / "checkpoints"
    adapters = [
        safetensors.numpy.load_file(str(ckpt / f"round-{r:04d}" / "adapter.safetensors")) for r in (1, 2)
    ]
    for m in metrics:
        timing = m["timing_s"]
        assert set(TIMING_SLICES) | {"other_s"} <= set(timing)
        assert all(v >= 0 for v in timing.values())
        # The slices account for the whole round (other_s is the unexplained rest, never negative).
        assert sum(timing.values()) == pytest.approx(m["round_time_s"], rel=1e-9, abs=1e-9)
        assert timing["train_s"] > 0 and timing["evaluate_s"] > 0 and timing["checkpoint_s"] > 0
        assert timing["ota_s"] == timing["upload_s"] == 0.0  # digital: no slot
        for k in m["delivered"]:
            node = m["node_timing_s"][str(k)]
            assert node["train_s"] > 0  # its own clock; the round slice is checked below
            plan = m["nodes"][str(k)]["memory_plan"]  # what the node chose for memory, and why
            assert plan["gradient_checkpointing"] is False and "no GPU" in plan["reason"]
        # A node computes between its PLAN leaving and its update arriving: within dispatch + train.
        slowest = max(sum(t.values()) for t in m["node_timing_s"].values())
        assert slowest <= timing["dispatch_s"] + timing["train_s"] + 1e-3
        norms = m["update_sq_norms"]
        assert sorted(norms) == sorted(str(k) for k in m["delivered"]) and all(v > 0 for v in norms.values())
        # Equal weights: the mean's squared norm is at most the mean of the squared norms (Jensen).
        assert 0 < m["aggregate_sq_norm"] <= np.mean(list(norms.values())) * (1 + 1e-9)
    # The phases as the console reads them: one document per phase entered, in the round's order.
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    for r in (1, 2):
        order = [e["phase"] for e in events if e["event"] == "phase" and e["round"] == r]
        assert order == ["plan", "dispatch", "train", "aggregate", "evaluate", "checkpoint"]
        assert all(PHASES.index(a) < PHASES.index(b) for a, b in zip(order, order[1:], strict=False))
    # The aggregate's norm is that of the update really applied: round 2's adapter minus round 1's.
    applied = {n: adapters[1][n].astype(np.float64) - adapters[0][n] for n in adapters[0]}
    assert metrics[1]["aggregate_sq_norm"] == pytest.approx(update_sq_norm(applied), rel=1e-3)


def test_summary_medians_and_the_report_draw_the_breakdown(tmp_path: Path) -> None:
    rec = RunRecorder.create(tmp_path, "r", "", fsync=False)
    rec.start(num_clients=2, region_m=0.5)
    rounds = []
    for t in range(1, 4):
        breakdown = {"plan_s": 0.1 * t, "train_s": 1.0, "upload_s": 0.2, "other_s": 0.0}
        rounds.append({"round": t, "time_breakdown_s": breakdown})
        rec.event("round", round=t, selected=[0], dropped=[], time_breakdown_s=breakdown)
    median = median_breakdown([*rounds, {"round": 4}])  # a round without one is left out
    assert median == pytest.approx({"plan_s": 0.2, "train_s": 1.0, "upload_s": 0.2, "other_s": 0.0})
    rec.stop("success")
    rec.write_summary({"rounds": 3, "median_time_breakdown_s": median})
    rec.close()
    text = write_report(rec.run_dir).read_text()
    assert (
        "](time_breakdown.png)" in text
        and (rec.run_dir / "report" / "time_breakdown.png").stat().st_size > 1000
    )
    # Milliseconds, largest first, with each slice's share of the round.
    assert "| train | 1000.0 | 71 % |\n| plan | 200.0 | 14 % |" in text


def test_a_rewritten_report_redraws_only_plots_whose_data_changed(tmp_path: Path) -> None:
    rec = RunRecorder.create(tmp_path, "r", "", fsync=False)
    rec.start(num_clients=2, region_m=0.5)
    rec.event("round", round=1, selected=[0], dropped=[], train_loss=2.0, time_breakdown_s={"train_s": 1.0})
    rec.close()
    write_report(rec.run_dir)
    out = rec.run_dir / "report"
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert {"learning.png", "time_breakdown.png", "participation.png"} <= set(stamps)
    write_report(rec.run_dir)  # nothing changed: nothing is drawn again
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamps
    with RunRecorder.reopen(rec.run_dir, fsync=False) as again:
        again.event("round", round=2, selected=[1], dropped=[], time_breakdown_s={"train_s": 2.0})
    (out / "participation.png").unlink()
    text = write_report(rec.run_dir).read_text()
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert after["learning.png"] == stamps["learning.png"]  # its data (train loss) did not change
    assert after["time_breakdown.png"] != stamps["time_breakdown.png"]  # a new round's breakdown
    assert "participation.png" in after  # a missing PNG is drawn again
    assert "](learning.png)" in text and "](time_breakdown.png)" in text
