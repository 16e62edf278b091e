"""The fixed-array comparison: every OTA slot of a run also goes through the lambda/2 array.

An AirLink wrapper (``fl.airlink``) that the coordinator sees as the live air; it replays each
slot's symbols through the same sim world with the antennas fixed on the grid, so a run measures
both arrays' NMSE on identical updates.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from allocation.aircomp import effective_channels, power_scale, zero_forcing_scalars
from allocation.beamformer import optimize_beamformer


def db(x: float) -> float:
    return 10.0 * math.log10(x) if x > 0 else float("-inf")


def optimal_precoding(
    channels: np.ndarray, power_w: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """The min-MSE unit-norm combiner for these channels, with its zero-forcing b_k and eta."""
    m = optimize_beamformer(effective_channels(channels, power_w, weights)).combiner
    m = m / np.linalg.norm(m)
    eta = power_scale(m, channels, power_w, weights)
    return m, zero_forcing_scalars(m, channels, weights, eta), eta


class FixedArrayComparison:
    """An AirLink that forwards to the live air and replays every slot through a fixed array.

    The coordinator sees the live air only. Each burst's symbols are kept, and at ``collect`` the
    same symbols go through ``fixed_air`` (the same channel model with the antennas on the
    lambda/2 grid) with that array's own optimal combiner and precoding. Both estimates of
    sum_k phi_k s_k are scored against the true sum, so ``last`` holds the two NMSEs of one round
    on identical updates.
    """

    def __init__(self, air: Any, fixed_air: Any | None, power_w: float) -> None:
        self.air = air
        self.fixed_air = fixed_air  # None: no fixed array to compare with (real radios)
        self.power_w = float(power_w)
        self.weights: dict[int, float] = {}
        self.last: dict[str, float] = {}
        self._symbols: dict[int, np.ndarray] = {}
        self._estimates: dict[int, np.ndarray] = {}  # the channels the coordinator precoded on

    @property
    def num_antennas(self) -> int:
        return self.air.num_antennas

    @property
    def noise_power_w(self) -> float:
        return self.air.noise_power_w

    def estimate_channels(self, clients: list[int]) -> np.ndarray:
        h = self.air.estimate_channels(clients)
        self._estimates.update({int(k): row for k, row in zip(clients, h, strict=True)})
        return h

    def send(self, client: int, symbols: np.ndarray, scale: complex, at_s: float) -> None:
        self._symbols[int(client)] = np.asarray(symbols)
        self.air.send(client, symbols, scale, at_s)

    def collect(self, num_symbols: int, at_s: float, combiner: np.ndarray) -> np.ndarray:
        y = self.air.collect(num_symbols, at_s, combiner)
        clients = sorted(self._symbols)
        symbols, self._symbols = self._symbols, {}
        if not clients or self.fixed_air is None:
            return y
        phi = np.array([self.weights.get(k, 1.0) for k in clients])
        power = np.full(len(clients), self.power_w)
        truth = sum(phi[i] * symbols[k][:num_symbols] for i, k in enumerate(clients))
        signal = float(np.sum(np.abs(truth) ** 2))
        # The live array, as the coordinator precoded it (zero forcing on these channels).
        eta = power_scale(combiner, np.array([self._estimates[k] for k in clients]), power, phi)
        live_err = float(np.sum(np.abs(y / np.sqrt(eta) - truth) ** 2))
        # The fixed array, with its own best combiner, on the very same symbols.
        h_fixed = self.fixed_air.estimate_channels(clients)
        m_fixed, b_fixed, eta_fixed = optimal_precoding(h_fixed, power, phi)
        for i, k in enumerate(clients):
            self.fixed_air.send(k, symbols[k], b_fixed[i], at_s)
        y_fixed = self.fixed_air.collect(num_symbols, at_s, m_fixed)
        fixed_err = float(np.sum(np.abs(y_fixed / np.sqrt(eta_fixed) - truth) ** 2))
        noise = self.noise_power_w
        self.last = {
            "nmse_symbols_db": db(live_err / signal),
            "nmse_fpa_db": db(fixed_err / signal),
            "mse_theory_live": noise * float(np.sum(np.abs(combiner) ** 2)) / eta,
            "mse_theory_fpa": self.fixed_air.noise_power_w / eta_fixed,  # the fixed air has its own noise
            "signal_per_symbol": signal / num_symbols,
        }
        return y
