"""Process lifetime of a local federation: nothing outlives a crashed controller, a node exits
when its coordinator falls silent, a node that dies starting up ends the run at once with its
own error, and the zygote that forks the nodes never holds a CUDA state a child could inherit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from drivers.errors import FLError
from testbed.config import load_config

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "lab.clients.count=2",
    "allocation.clients_per_round=2",
    "fl.aggregation=digital",
    "fl.data.num_samples=40",
    "fl.training.local_steps=1",
    "fl.transport.heartbeat_s=0.1",
    "fl.transport.heartbeat_misses=5",
]


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for a reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_zygote_never_initialises_cuda() -> None:
    from fl.launcher import shared_zygote

    # Reported by the zygote itself after all its imports: torch.cuda.is_initialized() there.
    assert shared_zygote().cuda_initialized is False


def test_a_node_fails_to_start_when_its_zygote_is_already_gone(tmp_path: Path) -> None:
    from fl.launcher import _child

    # PR_SET_PDEATHSIG only covers a parent that is alive when it is armed: the child checks.
    spec = {"config": "unused.yaml", "node": 0, "connect": "tcp://127.0.0.1:1", "parent": os.getpid() + 10**6}
    assert _child(spec) == 1


_CONTROLLER = textwrap.dedent(
    """
    import json, sys
    from fl.runner import LocalFederation
    from testbed.config import load_config
    from fl.launcher import shared_zygote

    fed = LocalFederation(load_config(None, json.loads(sys.argv[2])), sys.argv[1])
    fed.start_nodes()
    pids = [p.pid for p in fed.processes.values()]
    print(json.dumps({"zygote": shared_zygote().proc.pid, "nodes": pids}), flush=True)
    fed.run()
    """
)


@pytest.mark.timeout(180)
def test_kill_9_of_the_coordinator_leaves_no_node_or_zygote_process(tmp_path: Path) -> None:
    overrides = [*FAST, "fl.rounds=1000"]  # still running when it is killed
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CONTROLLER, str(tmp_path / "run"), json.dumps(overrides)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        pids = json.loads(proc.stdout.readline())
        events = tmp_path / "run" / "events.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and '"plan_sent"' not in (
            events.read_text() if events.is_file() else ""
        ):
            time.sleep(0.05)
        assert '"plan_sent"' in events.read_text(), "the federation never got going"  # nodes are training
        everyone = [pids["zygote"], *pids["nodes"]]
        assert not any(_gone(p) for p in everyone)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10 and not all(_gone(p) for p in everyone):
            time.sleep(0.05)
        left = [p for p in everyone if not _gone(p)]
        assert not left, f"processes {left} outlived their controller"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything left of this test's own group


def _joined_node(tmp_path: Path, rejoin_timeout_s: float):  # noqa: ANN202
    from fl.coordinator import Coordinator
    from fl.node import Node
    from fl.runner import round_robin_planner

    cfg = load_config(None, [*FAST, "fl.transport.insecure=true", "fl.transport.bind=tcp://127.0.0.1:*"])
    coord = Coordinator(cfg, tmp_path / "run", round_robin_planner(cfg))
    endpoint = coord.bind()
    node = Node(cfg, 0, endpoint, workload=coord.work, rejoin_timeout_s=rejoin_timeout_s)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(node.run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (0 in coord.nodes and node.joined):
        coord.peers.pump(0.02)
    assert node.joined
    return coord, thread, result


@pytest.mark.parametrize("rejoin_timeout_s", [0.0, 1.5])
def test_a_node_exits_when_its_coordinator_falls_silent(tmp_path: Path, rejoin_timeout_s: float) -> None:
    coord, thread, result = _joined_node(tmp_path, rejoin_timeout_s)
    coord.close(say_bye=False)  # a crash: no BYE, no more heartbeats
    t0 = time.monotonic()
    thread.join(timeout=15)
    took = time.monotonic() - t0
    assert not thread.is_alive() and result == [1]
    window_s = 0.1 * 5
    # At once after the heartbeat window (local), or after the bounded rejoin wait (remote).
    assert window_s <= took < window_s + rejoin_timeout_s + 2.0


@pytest.mark.timeout(120)
def test_a_model_every_node_fails_to_load_ends_the_run_at_once_with_its_error(tmp_path: Path) -> None:
    from fl import training
    from fl.launcher import shared_zygote
    from fl.runner import LocalFederation

    tiny = load_config(None, ["fl.data.num_samples=40"])
    work = training.build_workload(tiny.fl, seed=0, num_clients=1, client=0)
    folder = tmp_path / "model"
    work.model.merge_and_unload().save_pretrained(folder)
    work.tokenizer.save_pretrained(folder)
    cfg = load_config(None, [*FAST, "fl.model.source=pretrained", f"fl.model.path={folder}",
                             "fl.transport.join_timeout_s=120"])  # fmt: skip
    fed = LocalFederation(cfg, tmp_path / "run")  # the coordinator loads the model fine...
    for weights in folder.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")  # ...then every node fails to
    shared_zygote()  # warm already (as in any run after the first): the timing is the controller's
    t0 = time.monotonic()
    with pytest.raises(FLError, match=r"node \d exited with code 1 during start-up") as err:
        fed.run()
    took = time.monotonic() - t0
    assert took < 20, f"the run took {took:.1f} s to notice"
    assert "SafetensorError: Error while deserializing header" in str(err.value)  # the node's own error
    assert all(p.poll() is not None for p in fed.processes.values())


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_nodes_started_as_fresh_interpreters_run_a_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The start method GPU nodes get (nothing inherited from the zygote), exercised on CPU.
    import fl.runner
    from fl.runner import LocalFederation

    monkeypatch.setattr(fl.runner, "node_start_method", lambda config: "spawn")
    fed = LocalFederation(load_config(None, [*FAST, "fl.rounds=1"]), tmp_path / "run")
    metrics = fed.run()
    assert [m["delivered"] for m in metrics] == [[0, 1]]
    assert {k: p.returncode for k, p in fed.processes.items()} == {0: 0, 1: 0}


def test_gpu_nodes_are_spawned_and_cpu_nodes_forked() -> None:
    from fl.runner import node_start_method

    assert node_start_method(load_config(None, [])) == "fork"
    four_bit = load_config(
        None, ["fl.model.source=pretrained", "fl.model.path=/m", "fl.model.load_in_4bit=true"]
    )
    assert node_start_method(four_bit) == "spawn"
