"""Link models: the complex gain between every TX antenna of one node and every RX antenna of
another, at the nodes' current positions. ``FieldResponseLinks`` carries the field-response
channel (docs/explanation/system-model.md section 2) between the clients and the movable-antenna receiver;
``IdealLinks`` is one flat gain everywhere (contract tests, cabled labs).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from drivers.errors import RadioError
from sim.channel import FieldResponseChannel
from sim.impairments import SimNode


class LinkModel(Protocol):
    def gains(self, tx: SimNode, rx: SimNode) -> np.ndarray:
        """Complex gains (rx antennas x tx antennas) at the nodes' current positions."""
        ...


class FieldResponseLinks:
    """Client k -> receiver: column h_k(r) of the field-response channel; receiver -> client k:
    its transpose (reciprocity). Client-client and receiver-receiver links carry nothing."""

    def __init__(self, channel: FieldResponseChannel) -> None:
        self.channel = channel

    def gains(self, tx: SimNode, rx: SimNode) -> np.ndarray:
        if tx.role == "client" and rx.role == "receiver":
            h = self._row(tx, rx)
            return h[:, None]
        if tx.role == "receiver" and rx.role == "client":
            return self._row(rx, tx)[None, :]
        return np.zeros((rx.num_antennas, tx.num_antennas), dtype=complex)

    def _row(self, client: SimNode, receiver: SimNode) -> np.ndarray:
        assert client.client is not None and receiver.positions is not None
        if client.client >= self.channel.num_clients:
            raise RadioError(
                f"node {client.name!r} is client {client.client}, but the channel has only "
                f"{self.channel.num_clients} clients"
            )
        positions = np.asarray(receiver.positions(), dtype=float).reshape(-1, 2)
        if positions.shape[0] != receiver.num_antennas:
            raise RadioError(
                f"receiver {receiver.name!r} has {receiver.num_antennas} antennas but its position "
                f"source gave {positions.shape[0]} positions"
            )
        return self.channel.subset([client.client]).response(positions)[0]


class IdealLinks:
    """Every TX antenna reaches every RX antenna with the same gain (contract tests, cabled labs)."""

    def __init__(self, gain: complex = 1.0) -> None:
        self.gain = complex(gain)

    def gains(self, tx: SimNode, rx: SimNode) -> np.ndarray:
        return np.full((rx.num_antennas, tx.num_antennas), self.gain, dtype=complex)
