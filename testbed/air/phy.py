"""The over-the-air PHY over any radio contract (docs/explanation/system-model.md section 3, its hardware part).

One aggregation slot on real (or simulated) radios goes like this:

1. **Uplink pilots.** Each selected client sends a Zadoff-Chu pilot (``PilotConfig.repeats``
   copies of one ZC sequence, constant modulus, so it never clips) in its own time slot, at full
   power P_k. The receiver captures every slot in one timed capture.
2. **Estimation, per client and per receive antenna** (``estimate_link``): coarse timing from the
   noncoherent ZC correlation peak; CFO from the phase advance between repetitions, refined by a
   line through every repetition's phase (skipped with ``estimate_cfo=False`` for radios on one
   10 MHz reference); the fractional timing offset by maximum likelihood (a grid, seeded by the
   phase slope of the flat ZC spectrum, then golden section); and the channel per antenna by
   least squares against the pilot as it arrives. The channel is in physical units (received
   sqrt(W) per transmitted sqrt(W)) through the radios' ``GainCalibration``: the h_k of
   docs/explanation/system-model.md section 3, LO phases included.
3. **How the client gets its h_k: fed back digitally.** The receiver (the PS) keeps H, computes
   m, eta and every b_k (``allocation.aircomp``), and sends each client, over the ZeroMQ side
   channel, its b_k plus a ``LinkEstimate.feedback()`` record (its h_k, CFO, timing offset, the
   phase reference time and the phase hold). Each pilot round's h_k carries the CFO's phase at
   its own reference time, so two rounds a few ms apart differ by a random phase; the receiver
   therefore holds each client's phase across rounds (``phase_rad``: the new h_k is turned onto
   the previous one, and the client turns its bursts by the same angle), and a b_k precoded on
   an earlier round stays coherent. We do not use TDD reciprocity: USRP TX and RX chains have different,
   uncalibrated phases and delays, so a reverse pilot would need a reciprocity calibration first.
4. **The data burst** (``data_burst``): the client's symbols s_k (two reals per complex symbol,
   packed by ``fl.ota.pack``) through a root-raised-cosine pulse (``PulseShape``, 2 samples per
   symbol by default: the excess band is what lets a fractional timing offset be undone), times
   b_k, divided by a common amplitude A_k = sqrt(P_k) * peak (peak = the largest waveform
   modulus of the round, shared with the statistics, or the client's own), so the DAC never
   clips since |b_k| <= sqrt(P_k). The client turns it by its phase hold, pre-compensates its CFO (a phase ramp continuous
   from the pilot's reference time) and its timing offset (shift plus a fractional-delay
   filter), and the radio sends it at the shared slot time.
5. **Receive** (``combine``): one timed capture, converted back to the antenna's sqrt(W), m^H y,
   then the matched filter, one sample per symbol. The noise per symbol is the per-sample noise
   over the samples per symbol (``RadioAirReceiver.noise_power_w``). ``fl.ota.combine`` divides
   by sqrt(eta) and ``fl.ota.denormalize`` undoes the shared normalisation.

Residuals that remain, on purpose: phase drift and the CFO estimate's error, both growing with
the time from pilot to symbol (so pilots go right before the data, and free-running radios need
short bursts or ``RadioAirLink`` frames: at 15 dB pilot SNR one pilot knows the CFO to ~1 Hz,
0.06 rad after 10 ms; two pilot rounds of one link some ms apart know it far better,
``track_link``); CSI noise from the pilots (small: 8 repetitions of 127 samples); the RRC's
truncation (-60 dB).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.impairments import fractional_delay

INNER_BAND = 0.35  # cycles per sample: the band the delay estimate fits its phase slope over
# Tracking a link across pilot rounds (``track_link``): the CFO is refined from the phase advance
# between two rounds at most this far apart, which is unambiguous while the one-round estimate
# is within 1 / (2 * 0.1 s) = 5 Hz (it is ~1 Hz at 15 dB pilot SNR) ...
TRACK_MAX_GAP_S = 0.1
# ... and only when both rounds saw the same channel up to its phase (|cos| of the angle between
# the two h_k over the antennas): antennas that moved, or a channel that changed, start afresh.
TRACK_MIN_CORRELATION = 0.95


def zadoff_chu(root: int, length: int) -> np.ndarray:
    """The ZC sequence exp(-j pi u n (n + c) / L) (c = L mod 2): unit modulus, flat spectrum."""
    if length < 2 or root < 1 or math.gcd(root, length) != 1:
        raise ValueError(f"a ZC sequence needs length >= 2 and root coprime with it (got {root}, {length})")
    n = np.arange(length)
    return np.exp(-1j * np.pi * root * n * (n + length % 2) / length)


@dataclass(frozen=True)
class GainCalibration:
    """How a radio's gains map to physical amplitude.

    A unit-modulus digital sample at TX gain G leaves the antenna as 10^((G - tx_gain_ref_db)/20)
    sqrt(W); a capture at RX gain G returns the antenna's amplitude times
    10^((G - rx_gain_ref_db)/20). In sim these are the medium's reference gains; in the lab, a
    calibration measurement (power meter at the TX port, known source at the RX port)."""

    tx_gain_ref_db: float = 60.0
    rx_gain_ref_db: float = 0.0

    def tx_amplitude(self, gain_db: float) -> float:
        return 10.0 ** ((gain_db - self.tx_gain_ref_db) / 20.0)

    def tx_gain_db(self, amplitude: float) -> float:
        if not amplitude > 0:
            raise ValueError(f"TX amplitude must be > 0 (got {amplitude!r})")
        return self.tx_gain_ref_db + 20.0 * math.log10(amplitude)

    def rx_amplitude(self, gain_db: float) -> float:
        return 10.0 ** ((gain_db - self.rx_gain_ref_db) / 20.0)


@dataclass(frozen=True)
class PilotConfig:
    """The pilot burst: ``repeats`` copies of a ZC sequence, then ``guard`` silent samples.

    ``search`` bounds the timing offset the receiver looks for (samples, either way).
    ``estimate_cfo=False`` is for radios locked to one 10 MHz reference (the lab's usual set-up):
    their carriers agree, and a CFO estimate would only add its own noise to every burst."""

    zc_length: int = 127
    zc_root: int = 25
    repeats: int = 8
    guard: int = 24
    search: int = 8
    estimate_cfo: bool = True

    def __post_init__(self) -> None:
        if self.repeats < 3:
            raise ValueError(
                f"PilotConfig.repeats must be >= 3 (got {self.repeats}): the inner copies need neighbours"
            )
        if self.guard < self.search + 8:
            raise ValueError(
                f"PilotConfig.guard ({self.guard}) must exceed search ({self.search}) by 8 or more"
            )
        zadoff_chu(self.zc_root, self.zc_length)  # validates root and length

    @property
    def burst_samples(self) -> int:
        return self.repeats * self.zc_length

    @property
    def slot_samples(self) -> int:
        return self.burst_samples + self.guard

    def sequence(self) -> np.ndarray:
        return zadoff_chu(self.zc_root, self.zc_length)

    def burst(self) -> np.ndarray:
        return np.tile(self.sequence(), self.repeats).astype(np.complex64)

    def capture_samples(self, num_clients: int) -> int:
        """Samples of one capture covering ``num_clients`` slots with the search margins."""
        return num_clients * self.slot_samples + 2 * self.search


def root_raised_cosine(samples_per_symbol: int, rolloff: float, span_symbols: int) -> np.ndarray:
    """RRC taps (odd length), scaled so sum(g^2) = samples_per_symbol."""
    sps = samples_per_symbol
    t = np.arange(-span_symbols * sps // 2, span_symbols * sps // 2 + 1) / sps
    beta = rolloff
    g = np.empty_like(t)
    for i, ti in enumerate(t):
        if abs(ti) < 1e-12:
            g[i] = 1.0 - beta + 4 * beta / np.pi
        elif beta > 0 and abs(abs(4 * beta * ti) - 1.0) < 1e-9:
            g[i] = (beta / np.sqrt(2)) * (
                (1 + 2 / np.pi) * np.sin(np.pi / (4 * beta)) + (1 - 2 / np.pi) * np.cos(np.pi / (4 * beta))
            )
        else:
            num = np.sin(np.pi * ti * (1 - beta)) + 4 * beta * ti * np.cos(np.pi * ti * (1 + beta))
            g[i] = num / (np.pi * ti * (1 - (4 * beta * ti) ** 2))
    return g * np.sqrt(sps / np.sum(g**2))


@dataclass(frozen=True)
class PulseShape:
    """Symbols on the air: ``samples_per_symbol`` samples each through a root-raised-cosine.

    With 1 sample per symbol there is no shaping at all (a symbol is a sample); that wastes no
    airtime but leaves no excess band, so a fractional timing offset cannot be undone. With 2
    or more, the signal stays inside |f| < (1 + rolloff) / (2 sps), where pre-compensating the
    timing offset is accurate. The taps keep the per-sample power equal to the symbol power,
    and the matched filter returns each symbol with unit gain."""

    samples_per_symbol: int = 2
    rolloff: float = 0.35
    span_symbols: int = 16

    def __post_init__(self) -> None:
        if self.samples_per_symbol < 1:
            raise ValueError(f"samples_per_symbol must be >= 1 (got {self.samples_per_symbol})")
        if not 0 < self.rolloff <= 1:
            raise ValueError(f"rolloff must be in (0, 1] (got {self.rolloff})")
        if self.span_symbols < 2 or self.span_symbols % 2:
            raise ValueError(f"span_symbols must be an even number >= 2 (got {self.span_symbols})")

    def taps(self) -> np.ndarray:
        if self.samples_per_symbol == 1:
            return np.ones(1)
        return root_raised_cosine(self.samples_per_symbol, self.rolloff, self.span_symbols)

    def num_samples(self, num_symbols: int) -> int:
        """Samples a burst of ``num_symbols`` occupies on the air (filter tails included)."""
        return num_symbols * self.samples_per_symbol + self.taps().size - 1

    def shape(self, symbols: np.ndarray) -> np.ndarray:
        sps = self.samples_per_symbol
        s = np.asarray(symbols, dtype=np.complex128).ravel()
        if sps == 1:
            return s
        up = np.zeros(s.size * sps, dtype=np.complex128)
        up[::sps] = s
        return np.convolve(up, self.taps())

    def matched(self, samples: np.ndarray, num_symbols: int) -> np.ndarray:
        """The symbols back from a capture that starts where the burst starts."""
        sps = self.samples_per_symbol
        x = np.asarray(samples).ravel()
        if sps == 1:
            return x[:num_symbols].astype(np.complex128)
        g = self.taps()
        z = np.convolve(x.astype(np.complex128), g[::-1]) / sps
        return z[g.size - 1 : g.size - 1 + num_symbols * sps : sps]


@dataclass
class LinkEstimate:
    """What the pilots told the receiver about one client's link."""

    client: int
    channel: np.ndarray  # (N,) complex: received sqrt(W) per transmitted sqrt(W), at ``reference_time_s``
    cfo_hz: float  # the client's carrier minus the receiver's, as seen in the capture
    delay_samples: float  # how late the client's burst arrives (integer + fraction)
    reference_time_s: float  # the pilot's scheduled start (the clock both ends share): the phase reference
    snr_db: float  # pilot SNR per sample and antenna
    noise_power_w: float  # the noise power the residual shows (at the antenna)
    # The phase hold: ``channel`` is the pilots' h_k turned by this angle (onto the client's
    # previous estimate), and the client turns its bursts by it too, so the link shows ``channel``.
    phase_rad: float = 0.0

    def feedback(self) -> dict[str, Any]:
        """The JSON-able record the PS sends the client over the digital side channel."""
        return {
            "client": int(self.client),
            "channel": [[float(v.real), float(v.imag)] for v in np.asarray(self.channel)],
            "cfo_hz": float(self.cfo_hz),
            "delay_samples": float(self.delay_samples),
            "reference_time_s": float(self.reference_time_s),
            "snr_db": float(self.snr_db),
            "noise_power_w": float(self.noise_power_w),
            "phase_rad": float(self.phase_rad),
        }

    @classmethod
    def from_feedback(cls, data: dict[str, Any]) -> LinkEstimate:
        try:
            ch = np.asarray(data["channel"], dtype=float).reshape(-1, 2)
            return cls(
                client=int(data["client"]),
                channel=ch[:, 0] + 1j * ch[:, 1],
                cfo_hz=float(data["cfo_hz"]),
                delay_samples=float(data["delay_samples"]),
                reference_time_s=float(data["reference_time_s"]),
                snr_db=float(data["snr_db"]),
                noise_power_w=float(data["noise_power_w"]),
                phase_rad=float(data.get("phase_rad", 0.0)),  # records from before the hold: none
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"malformed link feedback ({exc}); expected the fields of LinkEstimate.feedback()"
            ) from None


def estimate_link(
    capture: np.ndarray,
    expected_start: int,
    pilots: PilotConfig,
    rate_sps: float,
    pilot_amplitude: float,
    client: int,
    reference_time_s: float,
) -> LinkEstimate:
    """Estimate one client's link from its pilot slot in ``capture`` (N x n, antenna sqrt(W)).

    ``expected_start`` is where the pilot should begin in the capture if the link had no timing
    offset; ``pilot_amplitude`` is the pilot's transmitted amplitude (sqrt(P_k))."""
    y = np.asarray(capture, dtype=np.complex128)
    if y.ndim != 2:
        raise ValueError(f"capture must be (antennas, samples) (got shape {y.shape})")
    length, reps, search = pilots.zc_length, pilots.repeats, pilots.search
    z = pilots.sequence()
    lo, hi = expected_start - search, expected_start + search
    if lo < 0 or hi + pilots.burst_samples > y.shape[1]:
        raise ValueError(
            f"the capture ({y.shape[1]} samples) does not cover client {client}'s pilot at "
            f"{expected_start} +- {search}"
        )
    # Coarse timing: per-repetition correlations, summed noncoherently (robust to CFO).
    energy = np.zeros(hi - lo + 1)
    for lag in range(lo, hi + 1):
        seg = y[:, lag : lag + pilots.burst_samples].reshape(y.shape[0], reps, length)
        energy[lag - lo] = np.sum(np.abs(seg @ np.conj(z)) ** 2)
    start = lo + int(np.argmax(energy))
    seg = y[:, start : start + pilots.burst_samples].reshape(y.shape[0], reps, length)
    # CFO: the phase advance from one repetition to the next, over every antenna.
    u = seg * np.conj(z)[None, None, :]
    advance = np.sum(u[:, 1:, :] * np.conj(u[:, :-1, :]))
    cfo_hz = 0.0
    if pilots.estimate_cfo:
        cfo_hz = float(np.angle(advance) * rate_sps / (2 * np.pi * length))  # unambiguous, coarse
        # Fine: with the coarse CFO removed, the phase of each repetition (combined over the
        # antennas by their own mean) lines up; a least-squares line through them uses the
        # whole pilot as baseline instead of one repetition.
        ramp = np.exp(-2j * np.pi * cfo_hz * np.arange(pilots.burst_samples) / rate_sps).reshape(reps, length)
        per_rep = np.sum(u * ramp[None, :, :], axis=2)  # (N, R)
        combined = np.sum(per_rep * np.conj(per_rep.mean(axis=1, keepdims=True)), axis=0)
        theta = np.unwrap(np.angle(combined))
        r = np.arange(reps) - (reps - 1) / 2
        weight = np.abs(combined)
        slope = np.sum(weight * r * (theta - np.average(theta, weights=weight))) / np.sum(weight * r**2)
        cfo_hz += float(slope * rate_sps / (2 * np.pi * length))
    # The fractional delay: the phase slope across the spectrum of the inner repetitions (CFO
    # removed), whose neighbours act as cyclic prefix and suffix.
    t = (start - expected_start + np.arange(pilots.burst_samples)) / rate_sps
    derot = (y[:, start : start + pilots.burst_samples] * np.exp(-2j * np.pi * cfo_hz * t)).reshape(
        y.shape[0], reps, length
    )
    inner = derot[:, 1 : reps - 1, :]
    per_bin = np.fft.fft(inner, axis=-1) / np.fft.fft(z)[None, None, :]  # (N, R-2, L)
    freq = np.fft.fftfreq(length)  # cycles per sample, centred so the ramp is symmetric
    order = np.argsort(freq)
    ordered = per_bin[:, :, order]
    # Only the inner band: near Nyquist no filter (nor any real front end) delays linearly.
    inner_band = np.abs(freq[order][:-1]) < INNER_BAND
    pairs = ordered[:, :, 1:] * np.conj(ordered[:, :, :-1])
    slope = np.sum(pairs[:, :, inner_band])
    frac = float(-np.angle(slope) * length / (2 * np.pi))  # residual delay beyond ``start``
    t_all = (np.arange(y.shape[1]) - expected_start) / rate_sps
    y = y * np.exp(-2j * np.pi * cfo_hz * t_all)[None, :]  # CFO removed, phase from the pilot start
    burst = pilots.burst()[None, :]

    def fit(delay: float) -> tuple[float, int, np.ndarray]:
        """Energy the pilot delayed by ``delay`` captures, its window start, the reference."""
        offset, ref = fractional_delay(burst, delay)
        w0 = start + offset
        if w0 < 0 or w0 + ref.shape[1] > y.shape[1]:
            raise ValueError(f"client {client}'s pilot runs past the capture; widen the guard")
        r = ref[0].astype(np.complex128)
        proj = y[:, w0 : w0 + r.size] @ np.conj(r)
        return float(np.sum(np.abs(proj) ** 2) / np.vdot(r, r).real), w0, r

    # Maximum likelihood: a grid over +-0.6 samples around the integer peak (the spectral slope
    # joins it when it is credible), then golden-section refinement around the best point.
    grid = list(np.arange(-0.6, 0.61, 0.1)) + ([frac] if abs(frac) < 0.6 else [])
    best = max(grid, key=lambda d: fit(d)[0])
    lo_d, hi_d = best - 0.1, best + 0.1
    golden = (np.sqrt(5) - 1) / 2
    a, b = hi_d - golden * (hi_d - lo_d), lo_d + golden * (hi_d - lo_d)
    fa, fb = fit(a)[0], fit(b)[0]
    for _ in range(20):
        if fa > fb:
            hi_d, b, fb = b, a, fa
            a = hi_d - golden * (hi_d - lo_d)
            fa = fit(a)[0]
        else:
            lo_d, a, fa = a, b, fb
            b = lo_d + golden * (hi_d - lo_d)
            fb = fit(b)[0]
    frac = (lo_d + hi_d) / 2
    # The channel per antenna: least squares against the pilot as it arrives.
    _, w0, r = fit(frac)
    window = y[:, w0 : w0 + r.size]
    h_digital = window @ np.conj(r) / np.vdot(r, r).real
    resid = window - h_digital[:, None] * r[None, :]
    noise_w = float(np.sum(np.abs(resid) ** 2) / (resid.size - y.shape[0]))
    signal = float(np.mean(np.abs(h_digital) ** 2))
    delay = float(start - expected_start) + frac
    return LinkEstimate(
        client=int(client),
        channel=h_digital / pilot_amplitude,
        cfo_hz=cfo_hz,
        delay_samples=delay,
        reference_time_s=float(reference_time_s),
        snr_db=float(10 * np.log10(signal / noise_w)) if noise_w > 0 else float("inf"),
        noise_power_w=noise_w,
    )


def track_link(
    estimate: LinkEstimate, previous: LinkEstimate, pilots: PilotConfig, rate_sps: float
) -> LinkEstimate:
    """``estimate`` continued from the same link's ``previous`` pilot round (same antennas).

    1. **CFO over two rounds.** When the rounds are close (``TRACK_MAX_GAP_S``) and saw the
       same channel (``TRACK_MIN_CORRELATION``), the phase the link advanced between them,
       2 pi CFO dt, measures the CFO over a baseline of dt instead of one pilot's length T
       (~2 dt / T times finer: 100x for 50 ms), drift included. The least-squares h_k had
       averaged the old estimate's residual ramp over the pilot (a phase of pi error T): that
       is undone too.
    2. **The phase hold.** The channel is turned onto ``previous.channel`` (the least-squares
       common phase over the antennas) and ``phase_rad`` records the turn, which the client
       applies to its bursts: the link shows the new channel exactly, whatever the angle, and a
       b_k precoded on the previous round stays coherent.
    """
    channel = np.asarray(estimate.channel)
    old = np.asarray(previous.channel)
    if channel.shape != old.shape:
        return estimate
    cfo_hz = estimate.cfo_hz
    dt = estimate.reference_time_s - previous.reference_time_s
    raw_old = old * np.exp(-1j * previous.phase_rad)  # as its own pilots showed it
    raw = channel * np.exp(-1j * estimate.phase_rad)
    inner = complex(np.vdot(raw_old, raw))
    similar = abs(inner) >= TRACK_MIN_CORRELATION * np.linalg.norm(raw_old) * np.linalg.norm(raw)
    if pilots.estimate_cfo and 0 < dt <= TRACK_MAX_GAP_S and similar:
        burst_s = pilots.burst_samples / rate_sps
        # advance = 2 pi CFO dt + pi (error_new - error_old) T: with the old error small (or
        # unknown), error_new = residual / (pi (2 dt + T)), unambiguous while |error| < 1/(2 dt + T)
        residual = np.angle(np.exp(1j * (np.angle(inner) - 2 * np.pi * cfo_hz * dt)))
        error_hz = float(residual / (np.pi * (2 * dt + burst_s)))
        cfo_hz += error_hz
        raw = raw * np.exp(-1j * np.pi * error_hz * burst_s)
    turn = float(np.angle(np.vdot(raw, old)))
    return dataclasses.replace(
        estimate, channel=raw * np.exp(1j * turn), cfo_hz=float(cfo_hz), phase_rad=turn
    )


def common_amplitude(power_w: float, peak: float) -> float:
    """A_k = sqrt(P_k) * peak: with |b_k| <= sqrt(P_k) and |s| <= peak no rail exceeds A_k."""
    if not (power_w > 0 and peak > 0):
        raise ValueError(f"power_w and peak must be > 0 (got {power_w!r}, {peak!r})")
    return math.sqrt(power_w) * peak


def symbol_peak(symbols: np.ndarray) -> float:
    """The largest |s| of a burst (>= 1, so a constant-modulus pilot fits too)."""
    s = np.asarray(symbols)
    return max(1.0, float(np.max(np.abs(s)))) if s.size else 1.0


def data_burst(
    symbols: np.ndarray,
    scale: complex,
    amplitude: float,
    at_s: float,
    rate_sps: float,
    estimate: LinkEstimate | None,
    pulse: PulseShape | None = None,
) -> tuple[np.ndarray, float]:
    """The client's digital samples and start time for ``scale * symbols`` at ``at_s``.

    Divides by the TX chain's ``amplitude`` (sqrt(W) per digital unit) and, given the link's
    fed-back ``estimate``, turns it by the phase hold, pre-compensates its CFO (continuous from
    the pilot's reference time) and its timing offset (the burst starts earlier by the delay,
    fractional part filtered)."""
    x = (pulse or PulseShape(1)).shape(symbols) * (complex(scale) / amplitude)
    start_s = float(at_s)
    if estimate is not None:
        if estimate.phase_rad != 0.0:
            x = x * np.exp(1j * estimate.phase_rad)
        if estimate.cfo_hz != 0.0:
            t = at_s - estimate.reference_time_s + np.arange(x.size) / rate_sps
            x = x * np.exp(-2j * np.pi * estimate.cfo_hz * t)
        if abs(estimate.delay_samples) > 1e-3:
            offset, shifted = fractional_delay(x[None, :].astype(np.complex64), -estimate.delay_samples)
            return shifted[0], start_s + offset / rate_sps
    return x.astype(np.complex64), start_s


def combine(
    capture: np.ndarray,
    combiner: np.ndarray,
    rx_amplitude: float,
    num_symbols: int,
    pulse: PulseShape | None = None,
) -> np.ndarray:
    """m^H y per symbol: the capture (from the burst's start) back in the antennas' sqrt(W),
    combined across antennas, then matched-filtered and sampled once per symbol."""
    y = np.asarray(capture)
    m = np.asarray(combiner, dtype=np.complex128).ravel()
    if m.size != y.shape[0]:
        raise ValueError(f"combiner has {m.size} weights for {y.shape[0]} receive antennas")
    combined = (np.conj(m) @ y.astype(np.complex128)) / rx_amplitude
    return (pulse or PulseShape(1)).matched(combined, int(num_symbols))


__all__ = [
    "GainCalibration",
    "LinkEstimate",
    "PilotConfig",
    "PulseShape",
    "combine",
    "common_amplitude",
    "data_burst",
    "estimate_link",
    "root_raised_cosine",
    "symbol_peak",
    "track_link",
    "zadoff_chu",
]
