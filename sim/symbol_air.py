"""A symbol-level AirLink: y = sum_k h_k b_k s_k + n, vectorised, no waveform.

For big payloads (millions of LoRA parameters) and parameter sweeps, where an IQ-level medium
would be far too slow. The channel is the field-response model at the antennas' current
positions; the noise is circular Gaussian of power ``noise_power_w`` per receive antenna.
Bursts only add up when they are scheduled for the same slot time, as in the real air.

Speed (payloads of millions of symbols): ``send`` keeps a reference to the caller's symbols and
their scale (no copy: do not modify the array before the slot is collected), and ``collect``
forms m^H y directly as sum_k (m^H h_k b_k) s_k + m^H n, with m^H n drawn as one CN(0,
sigma^2 ||m||^2) per symbol. That is the same distribution as building y on every antenna and
combining it, at a fraction of the memory traffic (and with no BLAS threads, which on a
small shared machine fight each other); ``receive`` still gives the per-antenna y.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from allocation.channel import ChannelModel

_BLOCK = 8192  # symbols per block when combining (the block of the sum stays in cache)


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
        self._pending: dict[int, dict[int, tuple[complex, np.ndarray]]] = {}
        self.set_positions(positions_m)

    def reseed(self, rng: np.random.Generator) -> None:
        """Draw the noise from ``rng`` from now on (a run derives one per round, so a resumed run
        draws exactly what an uninterrupted one would)."""
        self._rng = rng

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
        burst = np.asarray(symbols)
        if burst.ndim != 1 or not np.issubdtype(burst.dtype, np.number):
            raise ValueError(
                f"client {client}: symbols must be a 1-D numeric array (got {burst.shape} {burst.dtype})"
            )
        slot[int(client)] = (complex(scale), burst)

    def _take(self, num_symbols: int, at_s: float) -> tuple[list[int], list[tuple[complex, np.ndarray]]]:
        bursts = self._pending.pop(_slot_key(at_s), {})
        clients = sorted(bursts)
        return clients, [bursts[k] for k in clients]

    def collect(self, num_symbols: int, at_s: float, combiner: np.ndarray) -> np.ndarray:
        """m^H y over the slot: sum_k (m^H h_k b_k) s_k plus combined noise (see the module doc)."""
        m = np.asarray(combiner).ravel()
        if m.size != self.num_antennas:
            raise ValueError(f"combiner has {m.size} weights for {self.num_antennas} antennas")
        clients, bursts = self._take(num_symbols, at_s)
        out = np.zeros(num_symbols, dtype=np.complex128)
        if clients:
            gains = (self.true_channels(clients) @ np.conj(m)) * np.array([b for b, _ in bursts])
            # Cache-sized blocks, plain ufuncs (no BLAS threads): every symbol is read once.
            scratch = np.empty(_BLOCK, dtype=np.complex128)
            for lo in range(0, num_symbols, _BLOCK):
                hi = min(lo + _BLOCK, num_symbols)
                block = out[lo:hi]
                for g, (_, sym) in zip(gains, bursts, strict=True):
                    take = max(0, min(sym.size, hi) - lo)
                    if take:
                        np.multiply(sym[lo : lo + take], g, out=scratch[:take])
                        block[:take] += scratch[:take]
        if self._noise_power_w > 0:
            power = self._noise_power_w * float(np.sum(np.abs(m) ** 2))
            noise = self._rng.standard_normal(2 * num_symbols).view(np.complex128)
            noise *= np.sqrt(power / 2.0)
            out += noise
        return out

    def receive(self, num_symbols: int, at_s: float) -> np.ndarray:
        """The per-antenna y (N x n) of the slot, before any combining (slow path)."""
        clients, bursts = self._take(num_symbols, at_s)
        x = np.zeros((len(clients), num_symbols), dtype=np.complex128)
        for row, (b, s) in enumerate(bursts):
            n = min(s.size, num_symbols)
            x[row, :n] = b * s[:n]
        y = self.true_channels(clients).T @ x  # (N, n): the air adds the bursts up
        if self._noise_power_w > 0:
            y += self._complex_noise(y.shape, self._noise_power_w)
        return y

    def _complex_noise(self, shape: tuple[int, ...], power_w: float) -> np.ndarray:
        scale = np.sqrt(power_w / 2.0)
        return scale * (self._rng.standard_normal(shape) + 1j * self._rng.standard_normal(shape))
