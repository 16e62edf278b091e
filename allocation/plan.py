"""The Plan: plain data (lists and numbers), to and from JSON.

Complex vectors are stored as ``[[re, im], ...]`` pairs so the JSON stays portable.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


def complex_to_pairs(z: np.ndarray) -> list[list[float]]:
    z = np.asarray(z, dtype=complex).reshape(-1)
    return [[float(v.real), float(v.imag)] for v in z]


def pairs_to_complex(pairs: list[list[float]]) -> np.ndarray:
    arr = np.asarray(pairs, dtype=float).reshape(-1, 2)
    return arr[:, 0] + 1j * arr[:, 1]


@dataclass
class RoundPlan:
    """One round: who sends, where the antennas go, how the receiver combines, clocks, batches."""

    round_index: int
    selected: list[int]
    positions_m: list[list[float]]  # N x 2
    combiner: list[list[float]]  # m as (re, im) pairs, unit norm
    tx_scalars: list[list[float]]  # b_k of the selected, (re, im) pairs; |b_k|^2 <= P_k
    clocks_hz: list[float]
    batches: list[int]
    mse: float  # sigma^2 ||m||^2 / eta per complex symbol (the de-normalised sum)
    ota_error: float  # eps_t = MSE / K^2, the normalised error in the bound
    move_s: float
    compute_s: float
    air_s: float
    energy_j: float
    # The transmit part of energy_j (the digital baseline's TDMA air, say, has no b_k to price it by).
    air_energy_j: float = 0.0

    def combiner_array(self) -> np.ndarray:
        return pairs_to_complex(self.combiner)

    def tx_scalar_array(self) -> np.ndarray:
        return pairs_to_complex(self.tx_scalars)


@dataclass
class Plan:
    method: str
    feasible: bool
    rounds: int
    round_plans: list[RoundPlan] = field(default_factory=list)
    latency_s: float = 0.0
    energy_j: float = 0.0
    compute_energy_j: float = 0.0
    air_energy_j: float = 0.0
    mean_mse: float = 0.0
    bound: dict[str, float] = field(default_factory=dict)  # the bound's terms at R and "total"
    constants: dict[str, Any] = field(default_factory=dict)  # BoundConstants.to_record(): value + source
    bound_by_rounds: list[float] = field(default_factory=list)  # bound at R = 1.. (inf: infeasible)
    energy_by_rounds: list[float] = field(default_factory=list)
    traces: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    solve_s: float = 0.0
    # Why no R is feasible (budgets, participation floor): a plan with violations is never ranked.
    violations: list[str] = field(default_factory=list)

    # --- queries -------------------------------------------------------------------------------
    def rounds_to(self, target: float) -> int | None:
        """Fewest rounds whose bound reaches ``target`` (None if no feasible R does)."""
        for r, value in enumerate(self.bound_by_rounds, start=1):
            if math.isfinite(value) and value <= target:
                return r
        return None

    def energy_to(self, target: float) -> float | None:
        r = self.rounds_to(target)
        return None if r is None else self.energy_by_rounds[r - 1]

    def participation(self, num_clients: int) -> np.ndarray:
        counts = np.zeros(num_clients, dtype=int)
        for rp in self.round_plans:
            counts[rp.selected] += 1
        return counts

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return _finite(data)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        data = dict(data)
        data["round_plans"] = [RoundPlan(**rp) for rp in data.get("round_plans", [])]
        data["bound_by_rounds"] = [float("inf") if v is None else v for v in data.get("bound_by_rounds", [])]
        data["energy_by_rounds"] = [
            float("inf") if v is None else v for v in data.get("energy_by_rounds", [])
        ]
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))


def _finite(obj: Any) -> Any:
    """JSON has no inf/NaN: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj
