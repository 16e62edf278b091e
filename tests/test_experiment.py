"""`testbed run` end to end: the dry run, mixed backends, Ctrl-C, resume, and bad configs.

These start the real thing: stage emulators behind the real drivers, the coordinator with CURVE,
and four node processes training a tiny Llama. Rounds are few to keep the suite fast.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dryrun_kit import DRYRUN, FAST, ROOT, sets, wait_for
from process_kit import hears_ctrl_c

from sim.grbl_device import GrblDevice
from sim.serial_url import EmulatorTcpServer
from testbed.cli import main
from testbed.records import read_events


def only_run_dir(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def test_dry_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", DRYRUN, "--json", *sets(*FAST, "fl.rounds=2", f"run.output_dir={tmp_path}")])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == tmp_path and summary["rounds"] == 2
    docs = read_events(run_dir / "events.jsonl")
    assert docs[0]["doc"] == "start" and docs[-1] == {**docs[-1], "doc": "stop", "status": "success"}
    kinds = [d.get("kind") for d in docs]
    assert kinds.count("round") == 2 and "homed" in kinds and "plan" in kinds
    half = summary["region_m"] / 2
    for r in [d["data"] for d in docs if d.get("kind") == "round"]:
        assert len(r["selected"]) == 2 and not r["dropped"]
        positions = np.asarray(r["positions_m"])
        assert positions.shape == (4, 2) and np.all(np.abs(positions) <= half + 1e-6)
        gaps = [np.linalg.norm(a - b) for i, a in enumerate(positions) for b in positions[i + 1 :]]
        assert min(gaps) >= 0.5 * 0.1249 - 1e-4  # D = lambda/2 held where the stages really are
        # The OTA aggregate measured against the digital reference agrees with the symbol-level score.
        assert r["nmse_db"] == pytest.approx(r["nmse_live_symbols_db"], abs=1.0)
        assert r["nmse_db"] == pytest.approx(r["nmse_theory_db"], abs=1.0)
        # Where the round's time went, the nodes' own slices, and the update norms (issue 12).
        slices = r["time_breakdown_s"]
        assert slices["move_s"] > 0 and slices["train_s"] > 0 and slices["ota_s"] > 0
        assert slices["plan_s"] > 0 and slices["estimate_s"] > 0
        # The slices add up to the round's wall time, the move counted once.
        assert sum(slices.values()) == pytest.approx(r["latency_wall_s"], rel=1e-9)
        assert slices["move_s"] + slices["settle_s"] == pytest.approx(r["move_wall_s"], rel=1e-6)
        assert sorted(r["update_sq_norms"]) == sorted(str(k) for k in r["selected"])
        assert r["aggregate_sq_norm"] > 0
    assert summary["median_time_breakdown_s"]["train_s"] > 0
    assert summary["mean_nmse_fpa_db"] is not None and summary["ma_gain_over_fpa_db"] is not None
    report = (run_dir / "report" / "report.md").read_text()
    assert "![Aggregation NMSE](nmse.png)" in report and (run_dir / "report" / "nmse.png").exists()
    assert (run_dir / "config.yaml").exists() and (run_dir / "run.log").stat().st_size > 0
    assert any((run_dir / "fl" / "checkpoints").iterdir())


def test_bad_config_stops_before_any_device_moves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    device = GrblDevice(time_scale=50.0, name="guard")
    with EmulatorTcpServer(device) as server:
        code = main(
            ["run", DRYRUN, *sets(
                "lab.stages.ma0.backend=grbl", f"lab.stages.ma0.port={server.url}",
                "lab.stages.ma1.travel_m=-0.5", f"run.output_dir={tmp_path}",
            )]
        )  # fmt: skip
        assert code == 2
        assert "lab.stages.ma1.travel_m: must be > 0.0 (got -0.5)" in capsys.readouterr().err
        assert device.state_name.startswith("Alarm")  # never homed: nobody spoke to it
        assert device.position_mm[:2] == (0.0, 0.0)
    assert not any(tmp_path.iterdir())  # no run directory either


def _rounds_in(run_dir: Path) -> list[int]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    return [d["data"]["round"] for d in read_events(path) if d.get("kind") == "round"]


@pytest.mark.slow
def test_ctrl_c_with_a_real_stage_driver_then_resume(tmp_path: Path) -> None:
    """Mixed backends: ma0 is a GRBL board over socket:// (the real driver and wire protocol,
    served by an emulator in this process), the rest sim. Ctrl-C mid-run leaves that stage
    stopped and the records readable; --resume finishes the run with every round once."""
    device = GrblDevice(time_scale=50.0, travel_mm=(800.0, 800.0), max_rate_mm_min=6000.0, name="ma0")
    out = tmp_path / "runs"
    with EmulatorTcpServer(device) as server:
        args = sets(*FAST, "fl.rounds=3", f"run.output_dir={out}", "lab.stages.ma0.backend=grbl",
                    f"lab.stages.ma0.port={server.url}")  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "testbed.cli", "run", DRYRUN, "-q", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=hears_ctrl_c,
        )
        try:
            wait_for(lambda: out.exists() and any(out.iterdir()) and _rounds_in(only_run_dir(out)),
                      240, "the first round")  # fmt: skip
            proc.send_signal(signal.SIGINT)
            output, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, output.decode(errors="replace")[-3000:]
        run_dir = only_run_dir(out)
        docs = read_events(run_dir / "events.jsonl")
        assert docs[-1]["doc"] == "stop" and docs[-1]["status"] == "interrupted"
        assert "run directory" in (run_dir / "run.log").read_text()  # the run's log, even under -q
        time.sleep(0.3)
        assert not device.state_name.startswith(("Run", "Jog", "Home"))  # the stage is not moving
        done = set(_rounds_in(run_dir))
        assert done and done < {1, 2, 3}

        assert main(["run", "--resume", str(run_dir), "-q"]) == 0
    rounds = _rounds_in(run_dir)
    assert sorted(rounds) == [1, 2, 3]  # each round recorded once: nothing lost, nothing twice
    final = read_events(run_dir / "events.jsonl")
    assert final[-1]["status"] == "success"
    # The resume opened a new start after the interrupted run's stop: nothing after a stop but a start.
    docs = [d["doc"] for d in final]
    assert all(after == "start" for doc, after in itertools.pairwise(docs) if doc == "stop")
    starts = [d for d in final if d["doc"] == "start"]
    assert [d.get("resumed", False) for d in starts] == [False, True]
    assert starts[1]["completed_rounds"] == sorted(done)
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 3


def test_radio_path_run_matches_theory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fl.airlink=radio: every OTA slot is IQ through SimRadios on the shared medium (pilots,
    estimation, timed bursts) with every impairment on (free-running CFO, phase drift, timing
    offsets). The measured aggregation NMSE still lands on the analytic MSE of docs/explanation/system-model.md section 3,
    and the fixed array, replayed at the same SNR, on its own."""
    code = main(
        [
            "run",
            DRYRUN,
            "--json",
            *sets(*FAST, "fl.airlink=radio", "fl.rounds=1", f"run.output_dir={tmp_path}"),
        ]
    )
    assert code == 0
    run_dir = Path(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_dir"])
    (r,) = [d["data"] for d in read_events(run_dir / "events.jsonl") if d.get("kind") == "round"]
    assert r["nmse_db"] == pytest.approx(r["nmse_theory_db"], abs=1.5)
    assert r["nmse_fpa_db"] == pytest.approx(r["nmse_fpa_theory_db"], abs=1.5)
    assert r["nmse_db"] < -20


def test_budgets_that_cannot_pay_a_round_stop_the_run_with_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["run", DRYRUN, *sets(*FAST, "allocation.energy_budget_j=1e-15", f"run.output_dir={tmp_path}")]
    )
    assert code == 2
    # Refused before it started (testbed.preflight, as `testbed check` refuses it), naming the budget
    # to raise and by how much (fl.cost): no run directory.
    err = capsys.readouterr().err
    assert (
        "allocation.energy_budget_j=1e-15 cannot pay 5 rounds" in err
        and "raise allocation.energy_budget_j" in err
    )
    assert not any(tmp_path.iterdir())


def slow_baselines(problem: object) -> dict:
    """Stands in for allocation.solve_baselines in the spawned process: still solving when the run fails."""
    time.sleep(300)
    return {}


def test_a_failed_run_leaves_no_baselines_process_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole-run baselines solve in a process beside the rounds; a run that fails before they
    are done kills it (it used to outlive the failure and hold the interpreter's exit until done)."""
    import multiprocessing

    import allocation
    from fl.runner import LocalFederation

    def fall_over(self: LocalFederation) -> None:
        assert multiprocessing.active_children()  # the baselines are still solving
        raise RuntimeError("the federation fell over")

    monkeypatch.setattr(allocation, "solve_baselines", slow_baselines)
    monkeypatch.setattr(LocalFederation, "run", fall_over)
    with pytest.raises(RuntimeError, match="fell over"):
        main(["run", DRYRUN, *sets(*FAST, "fl.rounds=2", f"run.output_dir={tmp_path}")])
    assert multiprocessing.active_children() == []
    docs = read_events(only_run_dir(tmp_path) / "events.jsonl")
    assert docs[-1]["doc"] == "stop" and docs[-1]["status"] == "failed"
    assert "fell over" in docs[-1]["reason"]


def dying_baselines(problem: object) -> dict:
    """Stands in for allocation.solve_baselines: its process dies as an OOM kill would end it."""
    os._exit(3)


def test_a_run_whose_baselines_process_dies_records_why_and_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import allocation

    monkeypatch.setattr(allocation, "solve_baselines", dying_baselines)
    assert main(["run", DRYRUN, "-q", *sets(*FAST, "fl.rounds=1", f"run.output_dir={tmp_path}")]) == 0
    docs = read_events(only_run_dir(tmp_path) / "events.jsonl")
    (plan,) = [d["data"] for d in docs if d.get("kind") == "plan"]
    assert "died (exit code 3)" in plan["baselines_error"] and plan["optimized"]["feasible"]
    assert docs[-1]["doc"] == "stop" and docs[-1]["status"] == "success"


@pytest.mark.slow
def test_remote_nodes_dial_in_with_their_own_keys(tmp_path: Path) -> None:
    """The lab recipe of the README: `testbed keys`, then `testbed run --remote-nodes` on the
    controller and `testbed node --node-id I --connect ADDR` per node host (here: processes on
    loopback, CURVE on, each node holding only its own key)."""
    import socket

    keys, out = tmp_path / "keys", tmp_path / "runs"
    assert main(["keys", str(keys), "--nodes", "4", "-q"]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    shared = sets(*FAST, "fl.rounds=1", f"fl.transport.keys_dir={keys}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "testbed.cli"]
    controller = subprocess.Popen(
        [*cli, "run", DRYRUN, "-q", "--remote-nodes", *shared, *sets(f"fl.transport.bind={address}", f"run.output_dir={out}")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    nodes = [
        subprocess.Popen(
            [
                *cli,
                "node",
                DRYRUN,
                "-q",
                "--node-id",
                str(i),
                "--connect",
                address,
                "--threads",
                "1",
                *shared,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for i in range(4)
    ]
    try:
        output, _ = controller.communicate(timeout=300)
        assert controller.returncode == 0, output.decode(errors="replace")[-3000:]
        for node in nodes:
            assert node.wait(timeout=60) == 0  # each node leaves on BYE
    finally:
        for p in [controller, *nodes]:
            if p.poll() is None:
                p.kill()
    docs = read_events(only_run_dir(out) / "events.jsonl")
    assert docs[-1]["status"] == "success"
    (r,) = [d["data"] for d in docs if d.get("kind") == "round"]
    assert len(r["selected"]) == 2 and not r["dropped"] and r["nmse_db"] < -20
