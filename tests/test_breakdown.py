"""The per-round time breakdown and the update norms the nodes report (issue 12, point 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch

from fl.coordinator import TIMING_SLICES, RoundClock
from fl.runner import LocalFederation
from fl.training import update_sq_norm
from testbed.config import load_config
from testbed.experiment import median_breakdown
from testbed.records import RunRecorder
from testbed.report import write_report

OVERRIDES = [
    "lab.clients.count=2", "allocation.clients_per_round=2", "fl.rounds=2", "fl.data.num_samples=80",
    "fl.training.local_steps=2", "fl.transport.heartbeat_s=0.1", "fl.transport.round_deadline_s=20",
    "fl.transport.join_timeout_s=20", "fl.aggregation=digital", "fl.lora.mode=standard",
]  # fmt: skip


def test_round_clock_moves_time_between_slices_and_keeps_the_rest() -> None:
    clock = RoundClock()
    clock.add("plan_s", 2.0)
    clock.move("plan_s", "move_s", 0.5)
    clock.move("plan_s", "settle_s", 5.0)  # more than is left: only what plan_s holds moves
    assert clock.slices["plan_s"] == 0.0 and clock.slices["settle_s"] == 1.5
    clock.add("collect_s", 1.0)
    clock.rename("collect_s", "upload_s")
    assert "collect_s" not in clock.slices and clock.slices["upload_s"] == 1.0
    out = clock.breakdown(4.0)
    assert out["other_s"] == pytest.approx(1.0) and sum(out.values()) == pytest.approx(4.0)
    assert set(TIMING_SLICES) <= set(out)


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
        assert timing["ota_slot_s"] == 0.0  # digital: no slot
        for k in m["delivered"]:
            node = m["node_timing_s"][str(k)]
            assert node["train_s"] > 0  # its own clock; the round slice is checked below
            plan = m["nodes"][str(k)]["memory_plan"]  # what the node chose for memory, and why
            assert plan["gradient_checkpointing"] is False and "no GPU" in plan["reason"]
        # The slowest node's compute is the round's train slice, up to the coordinator's own wait for
        # the uploads (a node may start computing while the plans are still going out).
        slowest = max(sum(t.values()) for t in m["node_timing_s"].values())
        assert timing["train_s"] == pytest.approx(min(slowest, timing["train_s"] + timing["upload_s"]))
        norms = m["update_sq_norms"]
        assert sorted(norms) == sorted(str(k) for k in m["delivered"]) and all(v > 0 for v in norms.values())
        # Equal weights: the mean's squared norm is at most the mean of the squared norms (Jensen).
        assert 0 < m["aggregate_sq_norm"] <= np.mean(list(norms.values())) * (1 + 1e-9)
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
    assert "| plan | 0.2 |" in text and "| train | 1 |" in text


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
