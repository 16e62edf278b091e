"""What a receiver hears over a window: every burst that overlaps it, through its link's gains,
delayed by the two nodes' timing offsets and rotated by their oscillators, summed per receive
antenna, then the receiver's noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sim.impairments import FIR_HALF, Impairments, Oscillators, SimNode, fractional_delay
from sim.links import LinkModel

# A fractional delay smears a burst this many samples beyond its ends.
DELAY_REACH = 2 * FIR_HALF + 2


@dataclass
class Burst:
    """One scheduled burst, as it leaves its node (clipped, scaled), with its delayed copies."""

    node: SimNode
    start: int  # medium sample index of the first sample (before the node's timing offset)
    samples: np.ndarray  # (tx antennas, n) complex64, clipped and scaled to sqrt(W)
    carrier_hz: float
    lo_phase_rad: float
    delayed: dict[float, tuple[int, np.ndarray]] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.start + self.samples.shape[1]


class AirMixer:
    """Renders a receiver's samples from the bursts in the air (``Medium.capture`` calls it)."""

    def __init__(
        self,
        rate_sps: float,
        impairments: Impairments,
        oscillators: Oscillators,
        noise_rng: np.random.Generator,
    ) -> None:
        self.rate_sps = float(rate_sps)
        self.impairments = impairments
        self.oscillators = oscillators
        self._noise_rng = noise_rng
        self._buffers: dict[str, np.ndarray] = {}

    def reseed(self, noise_rng: np.random.Generator) -> None:
        """Draw the noise from ``noise_rng`` from now on."""
        self._noise_rng = noise_rng

    def render(
        self, rx: SimNode, bursts: list[Burst], links: LinkModel, noise_power_w: float, start: int, n: int
    ) -> np.ndarray:
        """The receiver's samples over [start, start + n): the air, then its own front end.

        Every burst is cut to the window and rotated by its link's CFO, LO and drift phases
        (TX minus RX, so the receiver's own rotation needs no pass over the antennas) into one
        row of X; the gains of all links (RX amplitude included) form G; y = G X + noise."""
        imp = self.impairments
        half_rate = self.rate_sps / 2.0
        columns: list[np.ndarray] = []
        pieces: list[tuple[np.ndarray, np.ndarray | None, int, int]] = []
        for burst in bursts:
            if burst.end + DELAY_REACH < start or burst.start - DELAY_REACH > start + n:
                continue
            if burst.node is rx or abs(burst.carrier_hz - rx.carrier_hz) >= half_rate:
                continue  # own bursts are not heard (TX/RX switch); other carriers are filtered
            gains = np.asarray(links.gains(burst.node, rx))
            if not np.any(gains):
                continue
            delay = burst.node.delay_samples - rx.delay_samples if imp.timing_offset_samples_max > 0 else 0.0
            if delay not in burst.delayed:
                burst.delayed[delay] = fractional_delay(burst.samples, delay)
            offset, delayed = burst.delayed[delay]
            first = burst.start + offset  # medium sample of delayed[:, 0]
            a, b = max(start, first), min(start + n, first + delayed.shape[1])
            if a >= b:
                continue
            freq = burst.node.cfo_hz - rx.cfo_hz + (burst.carrier_hz - rx.carrier_hz)
            rot = self.oscillators.rotation(
                burst.node, rx, freq, burst.lo_phase_rad - rx.lo_phase_rad, a, b - a
            )
            columns.append(gains * rx.rx_amplitude)
            pieces.append((delayed[:, a - first : b - first], rot, a - start, b - start))
        y = np.zeros((rx.num_antennas, n), dtype=np.complex64)
        if pieces:
            rows = sum(seg.shape[0] for seg, *_ in pieces)
            x = self._buffer("x", (rows, n), np.complex64)
            x[...] = 0
            row = 0
            for seg, rot, a, b in pieces:
                if rot is None:
                    x[row : row + seg.shape[0], a:b] = seg
                else:
                    np.multiply(seg, rot, out=x[row : row + seg.shape[0], a:b])
                row += seg.shape[0]
            g = np.hstack(columns).astype(np.complex64)
            if rows <= 16:  # a few links: per-row multiply-adds beat a threaded BLAS call
                scratch = self._buffer("mix", (n,), np.complex64)
                for ant in range(rx.num_antennas):
                    np.multiply(x[0], g[ant, 0], out=y[ant])
                    for r in range(1, rows):
                        np.multiply(x[r], g[ant, r], out=scratch)
                        y[ant] += scratch
            else:
                np.matmul(g, x, out=y)
        if imp.awgn and noise_power_w > 0:
            sd = np.float32(math.sqrt(noise_power_w / 2.0) * rx.rx_amplitude)
            noise = self._buffer("noise", (rx.num_antennas, 2 * n), np.float32)
            self._noise_rng.standard_normal(dtype=np.float32, out=noise)
            noise *= sd
            y.view(np.float32)[...] += noise
        return y

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """A reused work array (no fresh pages, so no page faults, on every capture)."""
        size = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = np.empty(size, dtype=dtype)
            self._buffers[name] = buf
        return buf[:size].reshape(shape)
