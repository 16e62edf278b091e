"""What a simulated radio's hardware does to a signal besides the channel, and the node that
carries those draws (docs/explanation/system-model.md section 3):

- per-node carrier frequency offset (CFO, drawn once per node) and oscillator phase drift;
- a random LO phase, redrawn at every retune (a configure that changes the carrier);
- a fractional timing offset per node (its timed commands run that many samples late), applied
  by a windowed-sinc fractional-delay filter;
- DAC clipping and AWGN, switched here and applied by the medium.

Phase drift is slow and smooth, as in a lab whose radios share a 10 MHz reference (thermal
drift of LOs and cables): each node's phase changes at a random rate whose rms is
``phase_drift_rad_s``; the rate is drawn afresh every ``DRIFT_KNOT_S`` seconds and interpolated
linearly in between, and the phase (its integral) is held per block of ``drift_block`` samples
(1024, about 1 ms at 1 MS/s). Fast oscillator phase noise is not modelled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PositionSource = Callable[[], np.ndarray]
# The drift rate's correlation time.
DRIFT_KNOT_S = 1.0
# Fractional-delay filter: 2 * FIR_HALF taps of a Blackman-windowed sinc.
FIR_HALF = 6


@dataclass(frozen=True)
class Impairments:
    """What the medium adds beyond the channel; each switch mirrors ``ImpairmentsSection``."""

    awgn: bool = True
    cfo_hz_max: float = 0.0
    phase_drift_rad_s: float = 0.0
    timing_offset_samples_max: float = 0.0
    random_lo_phase: bool = False
    dac_clipping: bool = True
    dac_full_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("cfo_hz_max", "phase_drift_rad_s", "timing_offset_samples_max"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"Impairments.{name} must be finite and >= 0 (got {value!r})")
        if not self.dac_full_scale > 0:
            raise ValueError(f"Impairments.dac_full_scale must be > 0 (got {self.dac_full_scale!r})")

    @classmethod
    def none(cls) -> Impairments:
        """An ideal air: no noise, no offsets, no clipping."""
        return cls(awgn=False, dac_clipping=False)

    @classmethod
    def from_config(cls, section: Any) -> Impairments:
        """From ``testbed.config.ImpairmentsSection`` (duck-typed: ``sim`` does not import testbed)."""
        return cls(
            awgn=bool(section.awgn),
            cfo_hz_max=float(section.cfo_hz_max),
            phase_drift_rad_s=float(section.phase_drift_rad_s),
            timing_offset_samples_max=float(section.timing_offset_samples_max),
            random_lo_phase=bool(section.random_lo_phase),
            dac_clipping=bool(section.dac_clipping),
            dac_full_scale=float(section.dac_full_scale),
        )


@dataclass
class SimNode:
    """One radio's presence in the air: its antennas, oscillator and clock errors, gains."""

    name: str
    role: str  # "client" (one antenna, channel row ``client``) or "receiver" (the MA array)
    num_antennas: int
    client: int | None
    cfo_hz: float
    delay_samples: float  # its timed commands execute this many samples late
    rng: np.random.Generator
    positions: PositionSource | None = None
    carrier_hz: float = 0.0
    lo_phase_rad: float = 0.0
    tx_amplitude: float = 0.0
    rx_amplitude: float = 1.0
    clock_offset_s: float = 0.0  # local time = medium time + offset (set_time_next_pps)
    drift: np.ndarray = field(default_factory=lambda: np.zeros(0))  # phase per block from drift_origin
    drift_rates: np.ndarray = field(default_factory=lambda: np.zeros(0))  # rate per knot, rad/s
    drift_origin: int = 0  # the block the drift starts from (0 at power-up; a round's start after reseed)


def fractional_delay_taps(frac: float) -> np.ndarray:
    """FIR taps h[i], i = -(M-1)..M, delaying by ``frac`` in [0, 1) samples (windowed sinc)."""
    i = np.arange(-(FIR_HALF - 1), FIR_HALF + 1, dtype=float)
    window = (
        0.42 + 0.5 * np.cos(np.pi * (i - frac) / FIR_HALF) + 0.08 * np.cos(2 * np.pi * (i - frac) / FIR_HALF)
    )
    taps = np.sinc(i - frac) * window
    return (taps / taps.sum()).astype(np.float32)


def fractional_delay(samples: np.ndarray, delay_samples: float) -> tuple[int, np.ndarray]:
    """Delay a (c, n) signal by ``delay_samples`` (any real). Returns (offset, out): out[:, j] is
    the delayed signal at sample ``offset + j`` relative to the input's first sample."""
    shift = math.floor(delay_samples)
    frac = delay_samples - shift
    if frac < 1e-9:
        return shift, samples
    taps = fractional_delay_taps(frac)
    # Real taps act on I and Q alike: shifted multiply-adds on the interleaved float32 view.
    x = np.ascontiguousarray(samples, dtype=np.complex64)
    rows, n = x.shape
    out = np.zeros((rows, n + taps.size - 1), dtype=np.complex64)
    out_f, x_f = out.view(np.float32), x.view(np.float32)
    scratch = np.empty_like(x_f)
    for i, h in enumerate(taps):
        np.multiply(x_f, h, out=scratch)
        out_f[:, 2 * i : 2 * i + 2 * n] += scratch
    return shift - (FIR_HALF - 1), out


class Oscillators:
    """The nodes' oscillators as one rotation per link: CFO, LO phase and slow phase drift.

    The phase is held per block of ``block`` samples; within a block only the frequency turns it
    (one cached ramp per frequency). Each node's drift is generated forward as time needs it.
    """

    def __init__(self, rate_sps: float, phase_drift_rad_s: float, block: int = 1024) -> None:
        self.rate_sps = float(rate_sps)
        self.phase_drift_rad_s = float(phase_drift_rad_s)
        self.block = int(block)
        self._fine_cache: dict[float, np.ndarray] = {}

    def rotation(
        self, tx: SimNode, rx: SimNode, freq_hz: float, lo_phase: float, start: int, n: int
    ) -> np.ndarray | None:
        """exp(j(2 pi f t + lo + drift_tx(t) - drift_rx(t))) over medium samples
        [start, start + n), or None where that is 1."""
        drifting = self.phase_drift_rad_s > 0
        if freq_hz == 0.0 and lo_phase == 0.0 and not drifting:
            return None
        block = self.block
        b0, b1 = start // block, (start + n - 1) // block + 1
        blocks = np.arange(b0, b1, dtype=np.int64)
        cycles = np.mod(blocks * (freq_hz * block / self.rate_sps), 1.0)
        phase = 2.0 * np.pi * cycles + lo_phase
        if drifting:
            phase = phase + self.drift(tx, b0, b1) - self.drift(rx, b0, b1)
        fine = self._fine_cache.get(freq_hz)
        if fine is None:
            fine = np.exp(2j * np.pi * freq_hz * np.arange(block) / self.rate_sps).astype(np.complex64)
            if len(self._fine_cache) > 256:
                self._fine_cache.clear()
            self._fine_cache[freq_hz] = fine
        rot = (np.exp(1j * phase).astype(np.complex64)[:, None] * fine[None, :]).ravel()
        lead = start - b0 * block
        return rot[lead : lead + n]

    def drift(self, node: SimNode, b0: int, b1: int) -> np.ndarray:
        """The node's drift phase at blocks [b0, b1), generated forward from its origin as needed."""
        origin = node.drift_origin
        have = node.drift.size
        if b1 - origin > have:
            grow = max(b1 - origin - have, 1024)
            block_s = self.block / self.rate_sps
            times = (have + np.arange(grow)) * block_s
            knots_needed = int(times[-1] // DRIFT_KNOT_S) + 2
            if node.drift_rates.size < knots_needed:
                # sqrt(3/2): linear interpolation between iid knots keeps the rms rate at the setting
                extra = node.rng.normal(
                    0.0,
                    self.phase_drift_rad_s * math.sqrt(1.5),
                    knots_needed - node.drift_rates.size,
                )
                node.drift_rates = np.concatenate([node.drift_rates, extra])
            rates = np.interp(times / DRIFT_KNOT_S, np.arange(node.drift_rates.size), node.drift_rates)
            last = node.drift[-1] if have else 0.0
            node.drift = np.concatenate([node.drift, last + np.cumsum(rates * block_s)])
        lo = max(b0 - origin, 0)
        out = node.drift[lo : b1 - origin] if b1 > origin else np.zeros(0)
        if b0 < origin:  # before its origin the drift is held at its start
            out = np.concatenate([np.zeros(min(origin, b1) - b0), out])
        return out

    def restart_drift(self, node: SimNode, block: int) -> None:
        """Start the node's drift afresh at ``block`` (drawn from ``node.rng`` from then on)."""
        node.drift = np.zeros(0)
        node.drift_rates = np.zeros(0)
        node.drift_origin = int(block)
