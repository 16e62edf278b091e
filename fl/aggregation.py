"""Aggregation strategies behind one small interface: ``aggregate(updates, weights) -> result``.

- ``DigitalFedAvg``: the error-free weighted mean (the upper bound on learning, and the NMSE
  reference).
- ``OverTheAir``: normalise, precode (``allocation.aircomp`` through ``fl.ota``), send every
  client's burst through the AirLink in one slot, collect through the combiner, de-normalise.
  The coordinator runs the same two halves split across processes: ``fl.ota`` on the node, and
  ``OverTheAir.receive`` here.

Which tensors travel depends on the LoRA mode: ``standard`` sends A and B (and averages them
separately, which is not the average of B A); ``ffa`` (FFA-LoRA) freezes A, so only B travels and
the aggregate is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fl import ota
from fl.airlink import AirLink, AirReceiver

TensorDict = dict[str, np.ndarray]


def payload_names(names: Sequence[str], lora_mode: str) -> list[str]:
    """The adapter tensors that are trained and aggregated in this LoRA mode (sorted)."""
    if lora_mode == "ffa":
        return sorted(n for n in names if "lora_B" in n)
    if lora_mode == "standard":
        return sorted(n for n in names if "lora_" in n)
    raise ValueError(f"fl.lora.mode: {lora_mode!r}; allowed standard, ffa")


def apply_update(global_adapter: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> TensorDict:
    out = {n: np.array(v, dtype=np.float32) for n, v in global_adapter.items()}
    for n, d in delta.items():
        out[n] = (out[n].astype(np.float64) + d).astype(np.float32)
    return out


@dataclass
class AggregateResult:
    update: TensorDict
    metrics: dict[str, Any] = field(default_factory=dict)


class Strategy(Protocol):
    name: str

    def aggregate(
        self, updates: Mapping[int, TensorDict], weights: Mapping[int, float]
    ) -> AggregateResult: ...


def _check(updates: Mapping[int, TensorDict], weights: Mapping[int, float]) -> list[int]:
    if not updates:
        raise ValueError("nothing to aggregate: no client delivered an update")
    clients = sorted(updates)
    missing = [k for k in clients if k not in weights or weights[k] <= 0]
    if missing:
        raise ValueError(f"clients {missing} have no positive weight")
    return clients


class DigitalFedAvg:
    name = "digital"

    def aggregate(self, updates: Mapping[int, TensorDict], weights: Mapping[int, float]) -> AggregateResult:
        clients = _check(updates, weights)
        total = float(sum(weights[k] for k in clients))
        names = sorted(updates[clients[0]])
        out = {}
        for n in names:
            acc = np.zeros(np.shape(updates[clients[0]][n]), dtype=np.float64)
            for k in clients:
                acc += weights[k] * np.asarray(updates[k][n], dtype=np.float64)
            out[n] = (acc / total).astype(np.float32)
        return AggregateResult(out, {"strategy": self.name, "clients": clients, "total_weight": total})


class OverTheAir:
    """OTA aggregation through an AirLink; the combiner comes from the plan (default: matched sum)."""

    name = "ota"

    def __init__(
        self,
        air: AirLink,
        power_w: float | Mapping[int, float],
        combiner: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
        normalization: str = "max",
        slot_clock: Callable[[], float] | None = None,
    ) -> None:
        self.air = air
        self.power_w = power_w
        self.combiner = combiner
        self.normalization = normalization
        self._slot_clock = slot_clock
        self._slot = 0

    def _power(self, clients: Sequence[int]) -> list[float]:
        if isinstance(self.power_w, Mapping):
            return [float(self.power_w[k]) for k in clients]
        return [float(self.power_w)] * len(clients)

    def _next_slot(self) -> float:
        if self._slot_clock is not None:
            return self._slot_clock()
        self._slot += 1
        return float(self._slot)

    def aggregate(self, updates: Mapping[int, TensorDict], weights: Mapping[int, float]) -> AggregateResult:
        clients = _check(updates, weights)
        names = sorted(updates[clients[0]])
        w = [float(weights[k]) for k in clients]
        stats = [ota.group_stats(updates[k], names) for k in clients]
        shared = ota.shared_stats(stats, w, self.normalization)
        channels = self.air.estimate_channels(clients)
        m = (
            default_combiner(channels)
            if self.combiner is None
            else (self.combiner(channels) if callable(self.combiner) else np.asarray(self.combiner))
        )
        pre = ota.precode(m, channels, clients, w, self._power(clients), self.air.noise_power_w)
        slot = self._next_slot()
        q = 0
        for k, b in zip(clients, pre.b_k, strict=True):
            reals = ota.normalize(updates[k], shared)
            q = reals.size
            self.air.send(k, ota.pack(reals), complex(b), slot)
        shapes = {n: np.shape(updates[clients[0]][n]) for n in names}
        estimate = self.receive(self.air, pre, q, slot, m, sum(w), shared, shapes)
        reference = DigitalFedAvg().aggregate(updates, weights).update
        return AggregateResult(
            estimate,
            {
                "strategy": self.name,
                "clients": clients,
                "total_weight": sum(w),
                "eta": pre.eta,
                "predicted_mse": pre.mse,
                "nmse": ota.nmse(estimate, reference),
                "num_symbols": ota.num_symbols(q),
            },
        )

    @staticmethod
    def receive(
        air: AirReceiver,
        precoding: ota.Precoding,
        num_reals: int,
        slot_s: float,
        combiner: np.ndarray,
        total_weight: float,
        shared: ota.GroupStats,
        shapes: Mapping[str, tuple[int, ...]],
    ) -> TensorDict:
        """Collect the slot through ``combiner`` and de-normalise to the weighted mean update."""
        y = air.collect(ota.num_symbols(num_reals), slot_s, combiner)
        summed = ota.unpack(ota.combine(y, precoding.eta), num_reals)
        return ota.denormalize(summed, total_weight, shared, shapes)


def default_combiner(channels: np.ndarray) -> np.ndarray:
    """m = normalised sum of the channels (a matched-filter guess until the planner supplies m)."""
    h = np.asarray(channels)
    m = h.sum(axis=0)
    norm = np.linalg.norm(m)
    return m / norm if norm > 0 else np.ones(h.shape[1]) / np.sqrt(h.shape[1])


def make_strategy(kind: str, air: AirLink | None = None, **kwargs: Any) -> Strategy:
    if kind == "digital":
        return DigitalFedAvg()
    if kind == "ota":
        if air is None:
            raise ValueError("fl.aggregation=ota needs an AirLink")
        return OverTheAir(air, **kwargs)
    raise ValueError(f"fl.aggregation: {kind!r}; allowed ota, digital")
