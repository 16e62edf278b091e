"""End to end: the coordinator and 4 node processes on loopback with CURVE on, the tiny Llama,
3 rounds of OTA aggregation through the symbol-level AirLink. Then the same with one node
killed (SIGKILL) mid-round: the run completes and the record shows the drop."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fl.runner import LocalFederation
from testbed.config import load_config

OVERRIDES = [
    "lab.clients.count=4",
    "allocation.clients_per_round=4",
    "fl.rounds=3",
    "fl.aggregation=ota",
    "fl.data.num_samples=200",
    "fl.training.lr=0.003",
    "fl.training.local_steps=4",
    "fl.training.batch_size=8",
    "fl.transport.heartbeat_s=0.25",
    "fl.transport.heartbeat_misses=4",
    "fl.transport.round_deadline_s=60",
    "fl.transport.join_timeout_s=120",
]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_four_node_processes_ota_curve_loss_falls(tmp_path: Path) -> None:
    cfg = load_config(None, OVERRIDES)
    assert cfg.fl.transport.insecure is False
    fed = LocalFederation(cfg, tmp_path / "run")
    metrics = fed.run()
    assert [m["round"] for m in metrics] == [1, 2, 3]
    assert all(m["dropped"] == [] and m["delivered"] == [0, 1, 2, 3] for m in metrics)
    assert metrics[0]["val_loss"] < metrics[0]["val_loss_before"]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]
    for m in metrics:
        assert m["nmse"] < 0.05 and not m["fallback"]  # through the air, close to the digital sum
        for node in m["nodes"].values():
            assert node["tokens_per_s"] > 0 and node["energy_source"] == "modeled"
            assert node["clock"]["method"] == "modeled"
    assert all(p.returncode == 0 for p in fed.processes.values())  # told BYE, left cleanly
    events = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "bound" and e["curve"] for e in events)
    assert sum(e["event"] == "joined" for e in events) == 4


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_node_killed_mid_round_is_dropped_and_the_run_completes(tmp_path: Path) -> None:
    cfg = load_config(None, OVERRIDES)
    fed = LocalFederation(cfg, tmp_path / "run")

    killed = []

    def kill_in_round_2(event: dict) -> None:
        if event["event"] == "plan_sent" and event["round"] == 2:
            killed.append(fed.processes[3])
            fed.kill_node(3)
        if event["event"] == "round_done" and event["round"] == 2:
            # Restart node 3; let the coordinator take its HELLO before planning round 3.
            fed.start_node(3)
            deadline = time.monotonic() + 90
            coord = fed.coordinator
            while time.monotonic() < deadline and not (
                3 in coord.nodes and coord.nodes[3].alive and coord.nodes[3].clock_offset_s is not None
            ):
                coord.peers.pump(0.05)

    fed.coordinator.on_event = kill_in_round_2
    metrics = fed.run()
    assert [m["round"] for m in metrics] == [1, 2, 3]
    assert metrics[0]["dropped"] == []
    assert metrics[1]["dropped"] == [3] and metrics[1]["delivered"] == [0, 1, 2]
    assert set(metrics[1]["weights"]) == {"0", "1", "2"}  # re-weighted over the nodes that delivered
    assert metrics[2]["selected"] == [0, 1, 2, 3]  # node 3 rejoined and takes part again
    assert metrics[2]["delivered"] == [0, 1, 2, 3]
    assert metrics[2]["val_loss"] < metrics[0]["val_loss_before"]
    events = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "node_lost" and e["node"] == 3 and e["round"] == 2 for e in events)
    assert any(e["event"] == "rejoined" and e["node"] == 3 for e in events)
    recorded = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert recorded[1]["dropped"] == [3]
    assert killed[0].returncode == -9 and fed.processes[3].returncode == 0
