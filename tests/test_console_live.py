"""The console against a live `testbed run`: `watch --once` mid-run, `stop` then `--resume`.

These start the real thing (stage emulators, the coordinator with CURVE, node processes training
a tiny Llama); `stop --now` is checked against a stand-in process, since Ctrl-C itself is tested
in test_experiment.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dryrun_kit import DRYRUN, FAST, ROOT, sets, wait_for
from process_kit import hears_ctrl_c

from fl.phases import PHASES
from testbed.console.control import RUNNING, STOP_REQUEST, request_stop, running_info
from testbed.records import read_events

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "testbed.cli", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


# Enough rounds that the run is still going when `watch` has started (each takes about a second).
RUN_ROUNDS = 10


def start_run(out: Path, rounds: int) -> subprocess.Popen[bytes]:
    args = sets(*FAST, "fl.training.local_steps=6", f"fl.rounds={rounds}", f"run.output_dir={out}")
    return subprocess.Popen(
        [sys.executable, "-m", "testbed.cli", "run", DRYRUN, "-q", *args],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=hears_ctrl_c,
    )  # fmt: skip


def run_dir_in(out: Path) -> Path | None:
    dirs = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
    return dirs[0] if dirs and (dirs[0] / "events.jsonl").exists() else None


def docs_of(run_dir: Path, kind: str) -> list[dict]:
    return [d["data"] for d in read_events(run_dir / "events.jsonl") if d.get("kind") == kind]


def trained(nodes_doc: dict) -> bool:
    return any((n.get("tokens_per_s") or 0) > 0 for n in nodes_doc["nodes"])


def test_watch_once_shows_the_current_round_and_phase_of_a_live_run(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    proc = start_run(out, rounds=RUN_ROUNDS)
    try:
        run_dir = wait_for(lambda: run_dir_in(out), 120, "the run directory", proc)
        wait_for(lambda: docs_of(run_dir, "round"), 240, "round 1's record", proc)
        # The node table is rate-limited (one document a second), so the first one to carry a
        # trained node's tokens/s may follow round 1's record by up to that second.
        wait_for(lambda: any(trained(d) for d in docs_of(run_dir, "nodes")), 60, "a trained node's row", proc)
        frame = json.loads(cli("watch", str(run_dir), "--once", "--json").stdout)
        text = cli("watch", str(run_dir), "--once").stdout
        assert proc.poll() is None, "the run must still be going for this test to mean anything"
    finally:
        proc.wait(timeout=300)
    assert proc.returncode == 0
    assert frame["status"] == "running" and frame["rounds_total"] == RUN_ROUNDS
    assert 2 <= frame["current_round"] <= RUN_ROUNDS and frame["phase"]["phase"] in PHASES
    # Every node is heard from; those that trained say how fast (the node table's tokens/s).
    assert all(n["alive"] and n["heartbeat_age_s"] is not None for n in frame["nodes"])
    assert any((n.get("tokens_per_s") or 0) > 0 for n in frame["nodes"])
    # The phase the frame shows is one this round really entered (the record stream says so).
    entered = {(p["round"], p["phase"]) for p in docs_of(run_dir, "phase")}
    assert (frame["phase"]["round"], frame["phase"]["phase"]) in entered
    shown = re.search(rf"round (\d+) of {RUN_ROUNDS}", text)  # a moment later than the JSON frame
    assert shown is not None and frame["current_round"] <= int(shown.group(1)) <= RUN_ROUNDS, text
    assert any(f"phase: {p} for" in text for p in PHASES)
    done = json.loads(cli("watch", str(run_dir), "--once", "--json").stdout)
    assert done["status"] == "done" and done["rounds_done"] == RUN_ROUNDS
    # The stages end idle where the last round left them (a held state is written before the stop).
    assert {s["state"] for s in done["stages"]} == {"idle"}


def test_stop_ends_a_run_after_a_checkpointed_round_and_resume_completes_it(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    proc = start_run(out, rounds=4)
    try:
        run_dir = wait_for(lambda: run_dir_in(out), 120, "the run directory", proc)
        wait_for(lambda: docs_of(run_dir, "round"), 240, "round 1's record", proc)
        asked = cli("stop", str(run_dir), "--wait", "--timeout", "240", timeout=300)
    finally:
        proc.wait(timeout=300)
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert "stop after its current round" in asked.stdout and "has stopped" in asked.stdout
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    docs = read_events(run_dir / "events.jsonl")
    rounds = [d["data"]["round"] for d in docs if d.get("kind") == "round"]
    assert (
        docs[-1]["doc"] == "stop" and docs[-1]["status"] == "stopped" and "testbed stop" in docs[-1]["reason"]
    )
    assert 1 <= len(rounds) < 4 and any(d.get("kind") == "stop_request" for d in docs)
    latest = (run_dir / "fl" / "checkpoints" / "LATEST").read_text().strip()
    assert latest == f"round-{max(rounds):04d}"  # the last recorded round is the checkpointed one
    assert not (run_dir / RUNNING).exists() and not (run_dir / STOP_REQUEST).exists()
    # Nothing runs there now: stop says so, exits 1 and changes nothing.
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.iterdir())
    again = cli("stop", str(run_dir))
    assert again.returncode == 1 and "not running" in again.stdout
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.iterdir()) == before
    resumed = cli("run", "--resume", str(run_dir), "-q", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = read_events(run_dir / "events.jsonl")
    assert sorted(d["data"]["round"] for d in final if d.get("kind") == "round") == [1, 2, 3, 4]
    assert final[-1]["status"] == "success"


def test_stop_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    result = cli("stop", str(tmp_path))
    assert result.returncode == 2
    assert "no config.yaml" in result.stderr and "compare.json" in result.stderr


_STAND_IN = """
import sys, time
from pathlib import Path
from testbed.console.control import RunningMarker
run_dir = Path(sys.argv[1])
with RunningMarker(run_dir, "run"):
    try:
        time.sleep(120)
    except KeyboardInterrupt:
        (run_dir / "interrupted").write_text("yes")
"""


def test_stop_now_interrupts_the_process_as_ctrl_c_does(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("run: {name: x}\n")
    proc = subprocess.Popen([sys.executable, "-c", _STAND_IN, str(tmp_path)], cwd=ROOT, env=ENV,
                            preexec_fn=hears_ctrl_c)  # fmt: skip
    try:
        wait_for(lambda: running_info(tmp_path), 60, "the running marker", proc)
        result = cli("stop", str(tmp_path), "--now", "--wait", "--timeout", "30")
    finally:
        proc.wait(timeout=60)
    assert result.returncode == 0 and "interrupted the run" in result.stdout
    assert (tmp_path / "interrupted").read_text() == "yes"
    assert running_info(tmp_path) is None


def test_a_stop_request_left_behind_does_not_stop_the_next_segment(tmp_path: Path) -> None:
    from testbed.console.control import RunningMarker, stop_requested

    request_stop(tmp_path, now=False, by="someone")
    with RunningMarker(tmp_path, "run"):
        assert stop_requested(tmp_path) is None  # a resumed run starts without the old request
        request_stop(tmp_path, now=False, by="someone")
        assert stop_requested(tmp_path) == {**stop_requested(tmp_path), "now": False, "by": "someone"}
    assert stop_requested(tmp_path) is None and running_info(tmp_path) is None


@pytest.mark.parametrize("junk", ["", "{", "[1, 2]", '{"pid": "x"}'])
def test_a_damaged_running_marker_reads_as_not_running(tmp_path: Path, junk: str) -> None:
    (tmp_path / RUNNING).write_text(junk)
    assert running_info(tmp_path) is None


def test_stop_ends_a_campaign_after_its_point_and_resume_finishes_it(tmp_path: Path) -> None:
    from testbed.campaign import run_campaign
    from testbed.config import load_config

    config = load_config(
        ROOT / "configs" / "campaign.yaml", [f"run.output_dir={tmp_path}", "campaign.sounder=symbol"]
    )
    asked: list[int] = []

    def progress(done: int, total: int) -> None:
        if done == 3 and not asked:  # `testbed stop` from another terminal, after the third point
            asked.append(done)
            run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
            request_stop(run_dir, now=False, by="the test")

    first = run_campaign(config, progress=progress)
    docs = read_events(first.run_dir / "events.jsonl")
    assert docs[-1]["status"] == "stopped" and "the test" in docs[-1]["reason"]
    assert first.steps_measured == 3 and first.table_path is None
    phases = [(d["data"]["point"], d["data"]["phase"]) for d in docs if d.get("kind") == "phase"]
    assert phases[:2] == [(0, "move"), (0, "estimate")]
    second = run_campaign(resume_dir=first.run_dir)
    assert second.steps_skipped == 3 and second.steps_skipped + second.steps_measured == second.steps_total
    assert read_events(first.run_dir / "events.jsonl")[-1]["status"] == "completed"


def test_stop_lets_a_compare_finish_its_running_cell_and_start_no_other(tmp_path: Path) -> None:
    from testbed.compare import build_spec, open_compare_dir, run_compare

    tiny = ["fl.rounds=1", "allocation.max_rounds=1", "fl.data.num_samples=60", "fl.training.local_steps=1",
            "allocation.position_starts=1", f"run.output_dir={tmp_path}"]  # fmt: skip
    spec = build_spec(str(ROOT / "configs" / "edge.yaml"), tiny, "ours,digital", [], 1)
    out = open_compare_dir(spec, tmp_path / "cmp", None)

    def progress(done: int, total: int) -> None:
        if done == 1:
            request_stop(out, now=False, by="the test")

    _, ran = run_compare(spec, out, workers=1, progress=progress)
    assert len(ran) == 1 and not running_info(out)
    _, ran_after = run_compare(spec, out, workers=1)
    assert set(ran) | set(ran_after) == {"g0-s0-ours", "g0-s0-digital"} and not set(ran) & set(ran_after)


def test_stop_now_interrupts_a_compares_running_cell_and_resume_continues_it(tmp_path: Path) -> None:
    cmp_dir = tmp_path / "cmp"
    args = sets(*FAST, "fl.training.local_steps=6", "fl.rounds=10", "allocation.max_rounds=10",
                f"run.output_dir={tmp_path}")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed.cli", "compare", DRYRUN, "-q", *args, "--schemes", "ours,digital",
         "--workers", "1", "--out", str(cmp_dir)],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=hears_ctrl_c,
    )  # fmt: skip
    try:
        first = wait_for(
            lambda: next(iter(cmp_dir.glob("cells/*/*/events.jsonl")), None), 180, "a cell", proc
        )
        wait_for(lambda: docs_of(first.parent, "round"), 240, "the cell's round 1", proc)
        stopped = cli("stop", str(cmp_dir), "--now", "--wait", "--timeout", "120")
    finally:
        proc.wait(timeout=300)
    assert stopped.returncode == 0 and "interrupted the compare's running cells" in stopped.stdout
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    # The running cell was interrupted mid-run (not finished), and the other one never started.
    run_dir = first.parent
    docs = read_events(run_dir / "events.jsonl")
    rounds_then = len(docs_of(run_dir, "round"))
    assert docs[-1]["doc"] == "stop" and docs[-1]["status"] == "interrupted" and 1 <= rounds_then < 10
    assert not (run_dir.parent / "done.json").exists() and len(list(cmp_dir.glob("cells/*"))) == 1
    assert (cmp_dir / "compare.md").is_file() and running_info(cmp_dir) is None

    resumed = cli("compare", DRYRUN, "-q", *args, "--schemes", "ours,digital", "--workers", "1",
                  "--resume", str(cmp_dir), timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # The same run went on from its last checkpointed round: one record of each round, 1..10.
    assert [d["round"] for d in docs_of(run_dir, "round")] == list(range(1, 11))
    starts = [d for d in read_events(run_dir / "events.jsonl") if d["doc"] == "start"]
    assert len(starts) == 2 and starts[1].get("resumed") is True
    assert len(list(cmp_dir.glob("cells/*/done.json"))) == 2
