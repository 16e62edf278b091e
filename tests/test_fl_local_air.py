"""The node-side transmitter seam: a node may send its burst on its own AirTransmitter (a radio)
instead of relaying it through the coordinator; the coordinator then only collects the slot.
Also: digital FedAvg mode, and --insecure refused off loopback."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from drivers.errors import ConfigError
from fl.node import Node
from fl.runner import LocalFederation
from testbed.config import load_config

OVERRIDES = [
    "lab.clients.count=2", "allocation.clients_per_round=2", "fl.rounds=2", "fl.data.num_samples=80",
    "fl.training.local_steps=2", "fl.transport.heartbeat_s=0.1", "fl.transport.round_deadline_s=20",
    "fl.transport.join_timeout_s=20",
]  # fmt: skip


class CountingTransmitter:
    """A node's own radio stand-in: forwards to the shared air and counts the bursts it sent."""

    def __init__(self, air) -> None:  # noqa: ANN001 - any AirTransmitter
        self.air = air
        self.sent: list[tuple[int, int, float]] = []

    def send(self, client: int, symbols: np.ndarray, scale: complex, at_s: float) -> None:
        self.sent.append((client, symbols.size, at_s))
        self.air.send(client, symbols, scale, at_s)


def test_nodes_with_their_own_transmitter(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = load_config(None, OVERRIDES)
    fed = LocalFederation(cfg, tmp_path / "run", node_mode="thread")
    radios = {k: CountingTransmitter(fed.coordinator.air) for k in range(2)}
    fed.node_kwargs = {k: {"transmitter": radios[k]} for k in range(2)}
    metrics = fed.run()
    assert [m["dropped"] for m in metrics] == [[], []]
    assert all(m["nmse"] < 0.05 for m in metrics)
    for k, radio in radios.items():
        assert [c for c, _, _ in radio.sent] == [k, k]  # one burst per round, on its own radio
        assert radio.sent[0][1] == metrics[0]["num_symbols"]
    assert {m["slot_s"] for m in metrics} == {s for _, _, s in radios[0].sent}


def test_digital_fedavg_mode_runs_and_records_no_air(tmp_path: Path) -> None:
    cfg = load_config(None, [*OVERRIDES, "fl.aggregation=digital", "fl.lora.mode=standard"])
    fed = LocalFederation(cfg, tmp_path / "run", node_mode="thread")
    assert fed.coordinator.air is None
    metrics = fed.run()
    assert [m["aggregation"] for m in metrics] == ["digital", "digital"]
    assert "nmse" not in metrics[0] and metrics[0]["lora_mode"] == "standard"
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss_before"]
    events = [json.loads(x)["event"] for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert "shared_stats_sent" not in events


def test_insecure_is_refused_off_loopback() -> None:
    cfg = load_config(None, [*OVERRIDES, "fl.transport.insecure=true"])
    node = Node(cfg, 0, "tcp://192.0.2.1:5570")
    with pytest.raises(ConfigError, match="loopback only"):
        node._open()
    node.ctx.term()
    with pytest.raises(Exception, match="outside 0..1"):
        Node(cfg, 5, "tcp://127.0.0.1:5570")


def test_a_busy_node_keeps_heartbeating_but_misses_the_deadline(tmp_path: Path) -> None:
    """Heartbeats run on their own thread: a node busy for longer than the round deadline is
    dropped from that round for lateness only, stays alive, and takes part again."""
    cfg = load_config(
        None, [*OVERRIDES, "fl.transport.round_deadline_s=3", "fl.transport.heartbeat_misses=5"]
    )
    fed = LocalFederation(cfg, tmp_path / "run", node_mode="thread")
    fed.start_nodes()
    slow = fed.nodes[1]
    real_round = slow._round

    def busy_first_round(plan) -> None:  # noqa: ANN001 - a Message
        if plan.round == 1:
            time.sleep(4.0)  # a long step in native code (as GPU training is): the GIL is free
        real_round(plan)

    slow._round = busy_first_round
    metrics = fed.run()
    assert metrics[0]["dropped"] == [1] and metrics[0]["delivered"] == [0]
    assert metrics[1]["delivered"] == [0, 1]
    events = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert not any(e["event"] == "node_lost" for e in events)  # its heartbeats never stopped
    assert any(e["event"] == "stale" and e["node"] == 1 and e["msg_round"] == 1 for e in events)
