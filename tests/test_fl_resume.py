"""Checkpoint and resume: a coordinator that crashes after round 2 and is resumed ends with the
same adapter as an uninterrupted run with the same seed; the nodes rejoin on their own. Also:
the coordinator refuses to start when the nodes' radio clocks disagree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch

from fl.coordinator import RadioTimeSkew
from fl.node import HostClock
from fl.runner import LocalFederation
from testbed.config import load_config

OVERRIDES = [
    "lab.clients.count=2",
    "allocation.clients_per_round=2",
    "fl.rounds=3",
    "fl.data.num_samples=120",
    "fl.training.lr=0.003",
    "fl.training.local_steps=3",
    "fl.transport.heartbeat_s=0.1",
    "fl.transport.heartbeat_misses=5",
    "fl.transport.round_deadline_s=20",
    "fl.transport.join_timeout_s=20",
]


class Crash(Exception):
    """Stands in for the coordinator process dying (no BYE is sent)."""


def _final_adapter(run_dir: Path) -> dict[str, np.ndarray]:
    latest = (run_dir / "checkpoints" / "LATEST").read_text().strip()
    return safetensors.numpy.load_file(str(run_dir / "checkpoints" / latest / "adapter.safetensors"))


def test_killed_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = load_config(None, OVERRIDES)  # OTA through the symbol air, noise on: the RNG state matters
    full = LocalFederation(cfg, tmp_path / "full", node_mode="thread").run()
    assert [m["round"] for m in full] == [1, 2, 3]

    def crash_after_2(record: dict) -> None:
        if record["round"] == 2:
            raise Crash

    first = LocalFederation(cfg, tmp_path / "crash", node_mode="thread", on_round=crash_after_2)
    with pytest.raises(Crash):
        first.run()
    assert (tmp_path / "crash" / "checkpoints" / "LATEST").read_text().strip() == "round-0002"
    # The same nodes (still running) rejoin the resumed coordinator on the same address.
    second = LocalFederation(
        cfg, tmp_path / "crash", node_mode="thread", resume=True, bind=first.coordinator.endpoint
    )
    assert second.coordinator.start_round == 3
    second.coordinator.bind()
    resumed = second.coordinator.run()
    first.stop_nodes()
    assert [m["round"] for m in resumed] == [1, 2, 3]

    a, b = _final_adapter(tmp_path / "full"), _final_adapter(tmp_path / "crash")
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert [m["val_loss"] for m in full] == pytest.approx([m["val_loss"] for m in resumed], rel=1e-12)
    events = [json.loads(line) for line in (tmp_path / "crash" / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "resume" and e["from_round"] == 3 for e in events)
    assert any(e["event"] == "rejoined" or e["event"] == "joined" for e in events if e["round"] == 2)
    state = json.loads((tmp_path / "crash" / "checkpoints" / "round-0003" / "state.json").read_text())
    assert (
        state["round"] == 3
        and state["metrics_rounds"] == 3
        and "metrics" not in state
        and "rng_state" in state
    )
    lines = (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2, 3]  # nothing lost, nothing doubled


def test_refuses_to_start_when_radio_times_disagree(tmp_path: Path) -> None:
    cfg = load_config(None, [*OVERRIDES, "fl.transport.max_clock_skew_s=1e-6"])
    fed = LocalFederation(
        cfg, tmp_path / "skew", node_mode="thread", node_kwargs={1: {"time_source": HostClock(offset_s=2e-6)}}
    )
    with pytest.raises(RadioTimeSkew, match=r"disagree by 2e-06 s \(offsets"):
        fed.run()
    assert not (tmp_path / "skew" / "checkpoints").exists()
