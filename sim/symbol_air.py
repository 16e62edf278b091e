"""A symbol-level AirLink: y = sum_k h_k b_k s_k + n, vectorised, no waveform.

For big payloads (millions of LoRA parameters) and parameter sweeps, where an IQ-level medium
would be far too slow. The channel is the field-response model at the antennas' current
positions; the noise is circular Gaussian of power ``noise_power_w`` per receive antenna.
Bursts only add up when they are scheduled for the same slot time, as in the real air.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from allocation.channel import ChannelModel


def _slot_key(at_s: float) -> int:
    return round(at_s * 1e9)  # nanosecond slots: float noise must not split one slot in two


class SymbolAir:
    """Implements ``fl.airlink.AirLink`` (both halves) in one process."""

    def __init__(
        self,
        channel: ChannelModel,
        positions_m: np.ndarray,
        noise_power_w: float,
        rng: np.random.Generator,
        estimation_noise_w: float = 0.0,
    ) -> None:
        self._channel = channel
        self._rng = rng
        self._noise_power_w = float(noise_power_w)
        self._estimation_noise_w = float(estimation_noise_w)
        self._pending: dict[int, dict[int, np.ndarray]] = {}
        self.set_positions(positions_m)

    @property
    def num_antennas(self) -> int:
        return self._positions.shape[0]

    @property
    def noise_power_w(self) -> float:
        return self._noise_power_w

    @property
    def positions_m(self) -> np.ndarray:
        return self._positions.copy()

    def set_positions(self, positions_m: np.ndarray) -> None:
        """The antennas moved: the air now sees the channel at the new positions."""
        self._positions = np.asarray(positions_m, dtype=float).reshape(-1, 2).copy()
        self._h = self._channel.response(self._positions)  # (U, N)

    def true_channels(self, clients: Sequence[int]) -> np.ndarray:
        return self._h[np.asarray(clients, dtype=int)]

    def estimate_channels(self, clients: Sequence[int]) -> np.ndarray:
        h = self.true_channels(clients)
        if self._estimation_noise_w > 0:
            h = h + self._complex_noise(h.shape, self._estimation_noise_w)
        return h

    def send(self, client: int, symbols: np.ndarray, scale: complex, at_s: float) -> None:
        slot = self._pending.setdefault(_slot_key(at_s), {})
        if client in slot:
            raise ValueError(f"client {client} already sent in the slot at {at_s} s")
        slot[int(client)] = complex(scale) * np.asarray(symbols, dtype=np.complex128)

    def collect(self, num_symbols: int, at_s: float, combiner: np.ndarray) -> np.ndarray:
        bursts = self._pending.pop(_slot_key(at_s), {})
        clients = sorted(bursts)
        x = np.zeros((len(clients), num_symbols), dtype=np.complex128)
        for row, client in enumerate(clients):
            burst = bursts[client][:num_symbols]
            x[row, : burst.size] = burst
        y = self.true_channels(clients).T @ x  # (N, n): the air adds the bursts up
        if self._noise_power_w > 0:
            y += self._complex_noise(y.shape, self._noise_power_w)
        return np.conj(np.asarray(combiner)) @ y

    def _complex_noise(self, shape: tuple[int, ...], power_w: float) -> np.ndarray:
        scale = np.sqrt(power_w / 2.0)
        return scale * (self._rng.standard_normal(shape) + 1j * self._rng.standard_normal(shape))
