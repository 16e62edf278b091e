"""`testbed run` resumes exactly: a dry run killed with SIGKILL after round 2 and resumed with
--resume ends with the same adapter and the same round records (wall-clock fields aside) as a
run left alone. Both runs are real `testbed run` processes; the config is shrunk with --set."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

ROOT = Path(__file__).resolve().parents[1]
SHRINK = [
    "allocation.beamformer_solver=numpy",
    "fl.rounds=3",
    "allocation.max_rounds=3",
    "lab.clients.count=2",
    "allocation.clients_per_round=2",
    "fl.data.num_samples=48",
    "fl.training.local_steps=2",
    "fl.training.batch_size=4",
    "allocation.batch_max=4",
    # A fixed cost per sample: the online calibration from measured tokens/s (fl.cost) would
    # re-price the rounds from wall-clock speed, which no two runs share.
    "allocation.cycles_per_sample=2e7",
]
WALL_CLOCK = {"latency_wall_s", "move_wall_s", "plan_wall_s", "time_breakdown_s", "node_timing_s"}


def _testbed(args: list[str], out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = (out / "stdout.txt").open("ab")
    # A session of its own: whatever the run leaves behind can be cleaned up by its group id.
    return subprocess.Popen(
        [sys.executable, "-m", "testbed.cli", "run", "-q", *args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _run(args: list[str], out: Path, timeout_s: float = 240) -> None:
    proc = _testbed(args, out)
    try:
        assert proc.wait(timeout=timeout_s) == 0, (out / "stdout.txt").read_text()[-3000:]
    finally:
        _reap(proc)


def _reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # only the group this test started


def _group_alive(pgid: int) -> list[str]:
    """The live (not zombie) processes of process group ``pgid``, as "pid cmd" strings."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        comm_end = text.rindex(")")
        fields = text[comm_end + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            alive.append(f"{stat.parent.name} {text[text.index('(') + 1 : comm_end]}")
    return alive


def _run_dir(out: Path) -> Path:
    (run_dir,) = [p for p in (out / "runs").iterdir() if p.is_dir()]
    return run_dir


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(x) for x in lines if x.endswith("}")]  # a line being written is skipped


def _rounds(run_dir: Path) -> dict[int, dict]:
    rounds: dict[int, dict] = {}
    for e in _events(run_dir):
        if e.get("kind") == "round":
            data = e["data"]
            assert data["round"] not in rounds, f"round {data['round']} recorded twice"
            rounds[data["round"]] = {k: v for k, v in data.items() if k not in WALL_CLOCK}
    return rounds


def _adapter(run_dir: Path) -> dict[str, np.ndarray]:
    ckpt = run_dir / "fl" / "checkpoints"
    latest = (ckpt / "LATEST").read_text().strip()
    return safetensors.numpy.load_file(str(ckpt / latest / "adapter.safetensors"))


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("airlink", ["symbol", "radio"])
def test_killed_after_round_2_and_resumed_equals_a_run_left_alone(tmp_path: Path, airlink: str) -> None:
    """Both airs: the symbol-level one, and the IQ medium behind sim radios (issue 18 point 20:
    its noise, oscillators and clock are keyed by round, so a resumed run draws the same air)."""
    config = str(ROOT / "configs" / "dryrun.yaml")
    sets = [a for s in [*SHRINK, f"fl.airlink={airlink}"] for a in ("--set", s)]
    alone, crashed = tmp_path / "alone", tmp_path / "crashed"
    for out in (alone, crashed):
        out.mkdir()
    _run([config, *sets, "--set", f"run.output_dir={alone / 'runs'}"], alone)

    proc = _testbed([config, *sets, "--set", f"run.output_dir={crashed / 'runs'}"], crashed)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            runs = crashed / "runs"
            if runs.is_dir() and any(runs.iterdir()) and 2 in _rounds(_run_dir(crashed)):
                break
            time.sleep(0.02)
        assert proc.poll() is None, (crashed / "stdout.txt").read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)  # mid-run, no clean-up of any kind
        proc.wait()
        # Its zygote and node processes go with it: nothing is left to train beside a resumed run.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _group_alive(proc.pid):
            time.sleep(0.05)
        assert not _group_alive(proc.pid), f"left behind: {_group_alive(proc.pid)}"
    finally:
        _reap(proc)
    run_dir = _run_dir(crashed)
    assert sorted(_rounds(run_dir)) == [1, 2]
    _run(["--resume", str(run_dir)], crashed)

    starts = [e for e in _events(run_dir) if e.get("doc") == "start"]
    assert [(e.get("resumed", False), e.get("completed_rounds")) for e in starts] == [
        (False, None),
        (True, [1, 2]),
    ]
    want, got = _rounds(_run_dir(alone)), _rounds(run_dir)
    assert sorted(got) == [1, 2, 3]
    for r in (1, 2, 3):
        assert got[r] == want[r], f"round {r} differs"
    a, b = _adapter(_run_dir(alone)), _adapter(run_dir)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
