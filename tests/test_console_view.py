"""The console's view model, built from synthetic events files written by ``RunRecorder``: a run
with every live document kind, a torn last line, a campaign and a compare directory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from testbed.config import load_config, to_yaml
from testbed.console.base import LOG_KEPT, WARNINGS_KEPT
from testbed.console.control import RunningMarker
from testbed.console.view import CampaignView, CompareView, ConsoleError, RunView, open_view
from testbed.records import RunRecorder

ROOT = Path(__file__).resolve().parent.parent
DRYRUN = ROOT / "configs" / "dryrun.yaml"


def dryrun_yaml() -> str:
    return to_yaml(load_config(DRYRUN))


def round_data(r: int, nmse_fpa_db: float = -15.0) -> dict:
    """A round record with the fields the experiment writes that the view reads."""
    return {
        "round": r,
        "scheme": "ours",
        "val_loss": 3.0 - 0.1 * r,
        "val_ppl": math.exp(3.0 - 0.1 * r),
        "train_loss": 3.2 - 0.1 * r,
        "nmse_db": -20.0 - r,
        "nmse_live_symbols_db": -21.0 - r,
        "nmse_fpa_db": nmse_fpa_db,
        "energy_model_j": 10.0,
        "latency_model_s": 3.0,
        "latency_wall_s": 4.0,
        "time_breakdown_s": {"plan_s": 0.1, "move_s": 1.0, "train_s": 2.0, "other_s": 0.9},
        "positions_m": [[0.1 * r, 0.0], [0.0, 0.1], [0.2, 0.2], [0.3, 0.1]],
        "selected": [0, 2],
        "dropped": [],
        "node_timing_s": {"0": {"load_s": 0.1, "train_s": 1.5 + r, "update_s": 0.1}, "2": {"train_s": 2.5}},
    }


def write_run(tmp_path: Path, rounds: int = 3) -> RunRecorder:
    """A run with every live kind: phases, nodes, stages, budget, warning, stop request, and an
    event kind no view knows."""
    rec = RunRecorder.create(tmp_path, "dryrun", dryrun_yaml(), fsync=False)
    rec.start(name="dryrun", scheme="ours", num_clients=4, num_antennas=4, region_m=0.5)
    rec.event("cost_model", cycles_per_sample=1.0)
    rec.event("homed", positions_m=[[-0.25, -0.3], [-0.32, -0.3], [-0.39, -0.3], [-0.46, -0.3]])
    for r in range(1, rounds + 1):
        rec.event("phase", round=r, phase="plan", t_start=1000.0 + r)
        rec.event("phase", round=r, phase="train", t_start=1001.0 + r)
        rec.event("round", **round_data(r))
        rec.event(
            "budget", round=r, energy_j=10.0 * r, energy_budget_j=5e4, latency_s=3.0 * r, latency_budget_s=600
        )
    rec.event("phase", round=rounds + 1, phase="move", t_start=2000.0)
    rec.event(
        "nodes",
        round=rounds + 1,
        nodes=[
            {"node": k, "alive": k != 3, "heartbeat_age_s": 0.5 + k, "participation": 1, "tokens_per_s": 100.0 * (k + 1), "gpu_mem_bytes": None}
            for k in range(4)
        ],
    )  # fmt: skip
    rec.event("stage", stage="ma0", state="moving", position_m=[0.1, 0.1], target_m=[0.2, 0.1], alarm=None)
    rec.event("stage", stage="ma1", state="alarm", position_m=[0.0, 0.1], target_m=None, alarm=2)
    rec.event("warning", logger="testbed.experiment", message="round 4: nodes [3] are down")
    rec.event("mystery_kind", anything=[1, 2, 3])
    return rec


def test_run_view_folds_every_live_kind(tmp_path: Path) -> None:
    rec = write_run(tmp_path)
    with RunningMarker(rec.run_dir, "run"):
        view = open_view(rec.run_dir)
        assert isinstance(view, RunView)
        assert view.status == "running"
        assert (view.name, view.scheme, view.rounds_total, view.rounds_done) == ("dryrun", "ours", 5, 3)
        assert view.current_round == 4
        phase = view.phase_now(now=2003.5)
        assert phase == {"phase": "move", "round": 4, "t_start": 2000.0, "elapsed_s": pytest.approx(3.5)}
        # Rows: compact, in order, with running totals of the modeled energy and latency.
        assert [x["round"] for x in view.rounds] == [1, 2, 3]
        last = view.rounds[-1]
        assert last["energy_j"] == pytest.approx(30.0) and last["latency_s"] == pytest.approx(9.0)
        assert last["nmse_ma_db"] == -24.0 and last["nmse_fpa_db"] == -15.0 and last["nmse_db"] == -23.0
        assert last["time_breakdown_s"]["train_s"] == 2.0
        assert last["positions_m"][0] == [pytest.approx(0.3), 0.0]
        # Nodes: the nodes document, the last round's train time, and the heartbeat aged to now.
        nodes = {n["node"]: n for n in view.node_table(now=rec.events("nodes")[-1]["time"] + 2.0)}
        assert sorted(nodes) == ["0", "1", "2", "3"]
        assert nodes["3"]["alive"] is False and nodes["0"]["alive"] is True
        assert nodes["0"]["train_s"] == 4.5 and nodes["1"]["train_s"] is None
        assert nodes["1"]["tokens_per_s"] == 200.0
        assert nodes["2"]["heartbeat_age_s"] == pytest.approx(2.5 + 2.0)
        assert nodes["0"]["selected"] is True and nodes["1"]["selected"] is False
        # Stages, budgets, antennas, warnings, and an alarm in the log.
        stages = {s["stage"]: s for s in view.to_dict()["stages"]}
        assert stages["ma0"]["state"] == "moving" and stages["ma0"]["target_m"] == [0.2, 0.1]
        assert stages["ma1"]["alarm"] == 2
        assert view.budgets() == {
            "energy_j": 30.0,
            "energy_budget_j": 5e4,
            "latency_s": 9.0,
            "latency_budget_s": 600.0,
        }
        snap = view.to_dict()
        assert snap["antennas"]["num_antennas"] == 4
        assert snap["antennas"]["region_m"] == pytest.approx(0.5, rel=1e-3)
        assert snap["antennas"]["clearance_m"] == pytest.approx(load_config(DRYRUN).lab.array.min_spacing_m)
        assert [w["message"] for w in view.warnings] == ["round 4: nodes [3] are down"]
        assert any(line["kind"] == "alarm" and "ma1" in line["text"] for line in view.log)
    assert view.status == "crashed"  # the marker is gone and no stop document was written
    assert view.current_round is None and view.phase_now() is None


def test_status_follows_stop_documents_and_resumes(tmp_path: Path) -> None:
    rec = write_run(tmp_path, rounds=2)
    rec.stop("interrupted", reason="Ctrl-C")
    view = open_view(rec.run_dir)
    assert view.status == "interrupted" and view.stop_reason == "Ctrl-C"
    rec.start(name="dryrun", scheme="ours", resumed=True, completed_rounds=[1, 2])
    with RunningMarker(rec.run_dir, "run"):
        assert view.refresh() is True
        assert view.status == "running" and view.current_round == 3
    for r in (3, 4, 5):
        rec.event("round", **round_data(r))
    rec.stop("success")
    view.refresh()
    assert view.status == "done" and view.rounds_done == 5 and view.current_round is None
    assert view.summary_row() == {
        "kind": "run",
        "path": str(rec.run_dir),
        "name": "dryrun",
        "scheme": "ours",
        "status": "done",
        "done": 5,
        "total": 5,
        "unit": "rounds",
        "final_ppl": pytest.approx(math.exp(2.5)),
        "started": view.started,
    }
    rec.stop("failed", reason="PlanError: budgets spent")
    view.refresh()
    assert view.status == "failed"


def test_a_torn_last_line_is_read_once_complete(tmp_path: Path) -> None:
    rec = write_run(tmp_path, rounds=1)
    rec.close()
    line = json.dumps({"doc": "event", "kind": "round", "data": round_data(2), "time": 5.0}) + "\n"
    with rec.events_path.open("a") as f:
        f.write(line[:40])  # the writer mid-line
    view = open_view(rec.run_dir)
    assert view.rounds_done == 1
    assert view.refresh() is False
    with rec.events_path.open("a") as f:
        f.write(line[40:])
    assert view.refresh() is True
    assert [x["round"] for x in view.rounds] == [1, 2]


def test_refresh_reads_only_what_was_appended(tmp_path: Path) -> None:
    rec = write_run(tmp_path, rounds=2)
    view = open_view(rec.run_dir)
    assert view.refresh() is False
    # Blank out everything already read (same length): a view that read the file again would
    # lose its rounds; one that reads from its offset only sees the new round.
    size = rec.events_path.stat().st_size
    with rec.events_path.open("r+b") as f:
        f.write(b" " * (size - 1) + b"\n")
    rec.event("round", **round_data(3))
    assert view.refresh() is True
    assert [x["round"] for x in view.rounds] == [1, 2, 3]
    assert view.rounds[-1]["energy_j"] == pytest.approx(30.0)


def test_small_chunks_read_the_same_as_one(tmp_path: Path) -> None:
    rec = write_run(tmp_path, rounds=4)
    whole = open_view(rec.run_dir)
    chunked = RunView(rec.run_dir)
    chunked._tail.max_bytes = 100  # shorter than every line: each read runs on to its line's end
    chunked.refresh()
    assert chunked.to_dict(now=0.0) == whole.to_dict(now=0.0)


def test_memory_stays_bounded(tmp_path: Path) -> None:
    rec = write_run(tmp_path, rounds=1)
    view = open_view(rec.run_dir)
    docs = [
        {"doc": "event", "kind": "warning", "time": float(i), "data": {"logger": "x", "message": f"w{i}"}}
        for i in range(1000)
    ]
    assert view.feed(docs) is True
    assert len(view.warnings) == WARNINGS_KEPT and view.warnings[-1]["message"] == "w999"
    assert len(view.log) == LOG_KEPT
    # Rows hold the figures, not the documents: the memory plans and cost model are not kept.
    rec.event("round", **round_data(2), memory_plans={"0": {"x": "y" * 1000}}, cost_model={"a": 1})
    view.refresh()
    assert "memory_plans" not in view.rounds[-1] and "cost_model" not in view.rounds[-1]


def test_eta_from_the_last_rounds(tmp_path: Path) -> None:
    rec = RunRecorder.create(tmp_path, "dryrun", dryrun_yaml(), fsync=False)
    view = RunView(rec.run_dir)
    docs = [{"doc": "start", "time": 100.0, "name": "dryrun"}]
    docs += [{"doc": "event", "kind": "round", "time": 100.0 + 10 * r, "data": round_data(r)} for r in (1, 2)]
    view.feed(docs)
    with RunningMarker(rec.run_dir, "run"):
        # Two rounds took 10 s each; three are left, and the third has run 4 s.
        assert view.eta_s(now=124.0) == pytest.approx(26.0)
    assert view.eta_s(now=124.0) is None  # not running: no ETA


def test_snapshot_is_strict_json(tmp_path: Path) -> None:
    rec = write_run(tmp_path, rounds=1)
    digital = round_data(2)
    digital["nmse_db"] = digital["nmse_live_symbols_db"] = float("-inf")
    digital["nmse_fpa_db"] = float("nan")
    rec.event("round", **digital)
    view = open_view(rec.run_dir)
    snap = view.to_dict()
    json.dumps(snap, allow_nan=False)
    assert snap["rounds"][-1]["nmse_db"] is None and snap["rounds"][-1]["nmse_fpa_db"] is None
    assert [x["round"] for x in view.rounds_since(1)] == [2]


def test_malformed_documents_are_skipped(tmp_path: Path) -> None:
    rec = write_run(tmp_path, rounds=1)
    rec.event("round", val_loss=1.0)  # no round number
    rec.event("nodes", nodes="not a list of nodes")
    rec.event("round", **round_data(2))
    view = open_view(rec.run_dir)
    assert [x["round"] for x in view.rounds] == [1, 2]


# --- campaign -------------------------------------------------------------------------------------
def write_campaign(tmp_path: Path) -> RunRecorder:
    rec = RunRecorder.create(tmp_path, "survey", dryrun_yaml(), fsync=False)
    rec.start(
        kind="campaign",
        num_clients=2,
        num_antennas=2,
        region_m=0.5,
        steps=4,
        grid_x_m=[0.0, 0.5],
        grid_y_m=[0.0, 0.5],
    )
    for step in (0, 1):
        # Client 0 hears antenna 0 at |h| = 0.1 (-20 dB), client 1 at 0.01 (-40 dB).
        h_re = [[0.1, 0.2], [0.01, 0.0]]
        rec.event("phase", point=step, phase="move", t_start=10.0 + step)
        rec.event("point", point=step, cells=[[step, 0], [step, 1]], positions_m=[[0.0, 0.0], [0.5, 0.0]], read_m=[[0.0, 0.01 * step], [0.5, 0.0]], h_re=h_re, h_im=[[0.0, 0.0], [0.0, 0.0]], snr_db=[[30.0, 31.0], [10.0, 11.0]])  # fmt: skip
    rec.event("phase", point=2, phase="estimate", t_start=30.0)
    return rec


def test_campaign_view(tmp_path: Path) -> None:
    rec = write_campaign(tmp_path)
    with RunningMarker(rec.run_dir, "campaign"):
        view = open_view(rec.run_dir)
        assert isinstance(view, CampaignView)
        assert view.status == "running"
        snap = view.to_dict()
        assert (snap["points_done"], snap["points_total"]) == (2, 4)
        assert snap["phase"]["phase"] == "estimate" and snap["phase"]["point"] == 2
        assert snap["latest"]["point"] == 1
        assert snap["latest"]["gain_db"][0] == [pytest.approx(-20.0), pytest.approx(-13.98, abs=0.01)]
        assert snap["latest"]["snr_db"][1] == [10.0, 11.0]
        # The map: one row per point, the gain per antenna summed over clients, at the read positions.
        assert [p["point"] for p in snap["points"]] == [0, 1]
        assert snap["points"][1]["positions_m"][0] == [0.0, 0.01]
        assert snap["points"][0]["gain_db"][0] == pytest.approx(10 * math.log10(0.1**2 + 0.01**2), abs=0.01)
        assert snap["grid_x_m"] == [0.0, 0.5] and snap["num_antennas"] == 2
    rec.stop("partial", "2 of 4 steps measured")
    view.refresh()
    assert view.status == "stopped"
    assert view.summary_row()["unit"] == "points" and view.summary_row()["done"] == 2


# --- compare --------------------------------------------------------------------------------------
def write_compare(tmp_path: Path) -> Path:
    from testbed.compare.cells import build_spec

    spec = build_spec(DRYRUN, [], "ours,fpa,digital", [], 1)
    root = tmp_path / "cmp"
    root.mkdir()
    (root / "compare.json").write_text(json.dumps(spec.to_dict()), encoding="utf-8")
    cells = root / "cells"
    done_dir = cells / "g0-s0-ours"
    done_dir.mkdir(parents=True)
    summary = {"rounds": 5, "final_val_ppl": 12.5, "mean_nmse_ma_db": -25.0, "wall_s": 60.0}
    (done_dir / "done.json").write_text(
        json.dumps({"cell_id": "g0-s0-ours", "run_dir": "x", "summary": summary})
    )
    rec = RunRecorder.create(cells / "g0-s0-fpa", "g0-s0-fpa", dryrun_yaml(), fsync=False)
    rec.start(name="g0-s0-fpa", scheme="fpa")
    rec.event("round", **round_data(1))
    rec.event("phase", round=2, phase="train", t_start=1.0)
    rec.close()
    return root


def test_compare_view(tmp_path: Path) -> None:
    root = write_compare(tmp_path)
    with RunningMarker(root, "compare"):
        view = open_view(root)
        assert isinstance(view, CompareView)
        snap = view.to_dict()
        assert snap["status"] == "running"
        assert (snap["cells_done"], snap["cells_total"]) == (1, 3)
        states = {c["cell"]: c["state"] for c in snap["cells"]}
        assert states == {"g0-s0-ours": "done", "g0-s0-fpa": "running", "g0-s0-digital": "pending"}
        [running] = snap["running"]
        assert (running["cell"], running["rounds_done"], running["rounds_total"]) == ("g0-s0-fpa", 1, 5)
        # Its run has no marker of its own: the compare's marker says it is worked on.
        assert (running["current_round"], running["phase"]) == (2, "train")
        done = next(c for c in snap["cells"] if c["state"] == "done")
        assert done["final_ppl"] == 12.5 and done["summary"]["mean_nmse_ma_db"] == -25.0
        assert view.refresh() is False
        # The running cell records a round: the next refresh sees it.
        run_dir = Path(running["run_dir"])
        rec = RunRecorder.reopen(run_dir, fsync=False)
        rec.event("round", **round_data(2))
        assert view.refresh() is True
        assert view.cells["g0-s0-fpa"]["rounds_done"] == 2
        rec.stop("failed", reason="boom")
        rec.close()
        view.refresh()
        assert view.cells["g0-s0-fpa"]["state"] == "failed"
    assert view.status == "failed"
    row = view.summary_row()
    assert (row["kind"], row["done"], row["total"], row["unit"], row["scheme"]) == (
        "compare",
        1,
        3,
        "cells",
        "ours,fpa,digital",
    )


# --- bad input ------------------------------------------------------------------------------------
def test_a_folder_that_is_none_of_the_three(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConsoleError, match="config.yaml"):
        open_view(tmp_path / "empty")
    with pytest.raises(ConsoleError, match="no such directory"):
        open_view(tmp_path / "missing")
    (tmp_path / "badcmp").mkdir()
    (tmp_path / "badcmp" / "compare.json").write_text("{not json")
    with pytest.raises(ConsoleError, match="compare.json"):
        open_view(tmp_path / "badcmp")


def test_homing_stages_report_no_position(tmp_path: Path) -> None:
    rec = RunRecorder.create(tmp_path, "dryrun", dryrun_yaml(), fsync=False)
    rec.start(name="dryrun", scheme="ours")
    homed = [[-0.25, -0.3], [-0.32, -0.3], [-0.39, -0.3], [-0.46, -0.3]]
    for k in range(4):
        rec.event(
            "stage", stage=f"ma{k}", state="homing", position_m=[float("nan")] * 2, target_m=None, alarm=None
        )
    rec.event("homed", positions_m=homed)
    view = open_view(rec.run_dir)
    # While they home, the stages' NaN positions are not where the antennas are.
    assert view.positions_m() == homed
    assert view.to_dict()["stages"][0]["position_m"] == [None, None]
    # No node has reported yet: every client of the config still has its row.
    assert [(n["node"], n["alive"]) for n in view.node_table()] == [(str(k), None) for k in range(4)]
    for k in range(4):
        rec.event("stage", stage=f"ma{k}", state="idle", position_m=[0.1 * k, 0.0], target_m=None, alarm=None)
    view.refresh()
    assert view.positions_m() == [[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [pytest.approx(0.3), 0.0]]
