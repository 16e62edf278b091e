"""Over-the-air aggregation, the parts around the air (docs/explanation/system-model.md section 3).

Per tensor group (one LoRA matrix) each client reports mean and variance of its update; the
server shares ``mu = sum_k w_k mu_k`` and ``v = max_k v_k`` (or the weighted mean). Each
client sends ``s_k = (Delta_k - mu) / sqrt(v)``, two reals per complex symbol, scaled by its
zero-forcing ``b_k``. The receiver's ``m^H y / sqrt(eta)`` estimates ``sum_k phi_k s_k``, and
one affine map per group gives back the weighted mean update. The precoding formulas live in
``allocation.aircomp``; this module only calls them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from allocation.aircomp import aggregation_mse, power_scale, zero_forcing_scalars

TensorDict = dict[str, np.ndarray]


@dataclass(frozen=True)
class GroupStats:
    """Per-group statistics, in a fixed group order (the names)."""

    names: tuple[str, ...]
    mean: np.ndarray  # (G,)
    var: np.ndarray  # (G,)


def group_stats(update: Mapping[str, np.ndarray], names: Sequence[str]) -> GroupStats:
    mean = np.array([float(np.mean(update[n], dtype=np.float64)) for n in names])
    var = np.array([float(np.var(update[n], dtype=np.float64)) for n in names])
    return GroupStats(tuple(names), mean, var)


def shared_stats(stats: Sequence[GroupStats], weights: Sequence[float], mode: str = "max") -> GroupStats:
    """The server's shared mu (weighted mean of means) and v (max, or weighted mean, of vars)."""
    if not stats:
        raise ValueError("shared_stats needs at least one client's statistics")
    names = stats[0].names
    for s in stats:
        if s.names != names:
            raise ValueError("clients reported statistics for different tensor groups")
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    mu = np.sum([wk * s.mean for wk, s in zip(w, stats, strict=True)], axis=0)
    if mode == "max":
        v = np.max([s.var for s in stats], axis=0)
    elif mode == "mean":
        v = np.sum([wk * s.var for wk, s in zip(w, stats, strict=True)], axis=0)
    else:
        raise ValueError(f"fl.normalization: {mode!r}; allowed max, mean")
    v = np.where(v > 0, v, 1.0)  # a constant group (e.g. B at zero) must not divide by zero
    return GroupStats(names, mu, v)


def normalize(update: Mapping[str, np.ndarray], shared: GroupStats) -> np.ndarray:
    """Flatten ``(Delta - mu) / sqrt(v)`` over the groups in order: the q reals to send."""
    parts = [
        (np.asarray(update[n], dtype=np.float64).ravel() - shared.mean[g]) / np.sqrt(shared.var[g])
        for g, n in enumerate(shared.names)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def pack(reals: np.ndarray) -> np.ndarray:
    """Two reals per complex symbol (I, Q); an odd count is padded with one zero."""
    reals = np.asarray(reals, dtype=np.float64)
    if reals.size % 2:
        reals = np.append(reals, 0.0)
    return reals[0::2] + 1j * reals[1::2]


def unpack(symbols: np.ndarray, num_reals: int) -> np.ndarray:
    out = np.empty(2 * symbols.size)
    out[0::2] = symbols.real
    out[1::2] = symbols.imag
    return out[:num_reals]


def num_symbols(num_reals: int) -> int:
    return (num_reals + 1) // 2


def denormalize(
    received_sum: np.ndarray,
    total_weight: float,
    shared: GroupStats,
    shapes: Mapping[str, tuple[int, ...]],
) -> TensorDict:
    """From the estimate of ``sum_k phi_k s_k`` (reals) to the weighted mean update per group."""
    avg = np.asarray(received_sum, dtype=np.float64) / total_weight
    out: TensorDict = {}
    offset = 0
    for g, n in enumerate(shared.names):
        size = int(np.prod(shapes[n])) if shapes[n] else 1
        chunk = avg[offset : offset + size]
        out[n] = (chunk * np.sqrt(shared.var[g]) + shared.mean[g]).reshape(shapes[n]).astype(np.float32)
        offset += size
    if offset != avg.size:
        raise ValueError(f"received {avg.size} reals, the groups hold {offset}")
    return out


@dataclass(frozen=True)
class Precoding:
    """Zero-forcing precoding for one slot: b_k per client, eta, and the predicted MSE."""

    clients: tuple[int, ...]
    b_k: np.ndarray  # (K,) complex
    eta: float
    mse: float


def precode(
    combiner: np.ndarray,
    channels: np.ndarray,
    clients: Sequence[int],
    weights: Sequence[float],
    power_w: Sequence[float],
    noise_power_w: float,
) -> Precoding:
    """b_k and eta for ``clients`` (rows of ``channels``) through ``allocation.aircomp``."""
    w = np.asarray(weights, dtype=float)
    p = np.asarray(power_w, dtype=float)
    eta = power_scale(combiner, channels, p, w)
    b = zero_forcing_scalars(combiner, channels, w, eta)
    mse = aggregation_mse(combiner, channels, p, w, noise_power_w)
    return Precoding(tuple(int(c) for c in clients), b, eta, mse)


def combine(collected: np.ndarray, eta: float) -> np.ndarray:
    """m^H y / sqrt(eta): the estimate of sum_k phi_k s_k (complex symbols)."""
    return np.asarray(collected) / np.sqrt(eta)


def nmse(estimate: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """||estimate - reference||^2 / ||reference||^2 over all groups."""
    num = sum(float(np.sum((np.asarray(estimate[n], np.float64) - reference[n]) ** 2)) for n in reference)
    den = sum(float(np.sum(np.asarray(reference[n], np.float64) ** 2)) for n in reference)
    return num / den if den > 0 else float("nan")


def complex_list(x: np.ndarray) -> list[list[float]]:
    """Complex array -> JSON-able [[re, im], ...]."""
    return [[float(v.real), float(v.imag)] for v in np.asarray(x).ravel()]


def from_complex_list(x: Sequence[Sequence[float]]) -> np.ndarray:
    a = np.asarray(x, dtype=float).reshape(-1, 2)
    return a[:, 0] + 1j * a[:, 1]
