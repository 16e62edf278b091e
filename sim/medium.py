"""The shared air on a virtual clock (MODEL.md sections 2-3, DESIGN.md).

Every simulated radio is a *node* of one ``Medium``. Transmitters schedule timed bursts; a
receiver's capture at time t returns, per receive antenna, the sum of every burst overlapping the
window, each through the channel at the antennas' *current* positions (asked of the position
source at capture time, since stages move them), then:

- AWGN of power ``noise_power_w`` per receive antenna (referred to the antenna, before RX gain);
- per-node carrier frequency offset (CFO, drawn once per node) and oscillator phase noise;
- a random LO phase, redrawn at every retune (a configure that changes the carrier);
- a fractional timing offset per node (its timed commands run that many samples late);
- DAC clipping: each I and Q rail of a transmitted sample is clipped to the DAC full scale.

Every impairment can be switched off (``Impairments``). Gains map to amplitude: a unit-modulus
sample leaving a node at TX gain G radiates 10^((G - tx_gain_ref_db)/10) W, and a capture at RX
gain G returns the antenna's amplitude (sqrt(W)) times 10^((G - rx_gain_ref_db)/20).

**Virtual clock.** Time is an integer sample count at the medium's one sample rate, so timing is
exact to the sample. It moves only forward and only deterministically: ``advance``/``advance_to``,
and a capture, which completes by moving the clock to the end of its window (as a real device's
clock has passed the window when the samples are back). A burst scheduled before the clock is
``late`` (as UHD does); so is a capture that starts before ``now - capture_history_s`` (the
default history 0 is UHD's behaviour; a positive history lets a second radio capture a window
another radio already captured). A capture whose window ends more than ``timeout_s`` after now
never arrives within the wait: the clock advances by ``timeout_s`` and it fails with ``timeout``.
Callers in separate processes (through ``sim.medium_server``) must therefore schedule their
bursts before the receiver captures, as a real lab must schedule them before the air time comes.

Phase drift is slow and smooth, as in a lab whose radios share a 10 MHz reference (thermal
drift of LOs and cables): each node's phase changes at a random rate whose rms is
``phase_drift_rad_s``; the rate is drawn afresh every ``DRIFT_KNOT_S`` seconds and interpolated
linearly in between, and the phase (its integral) is held per block of ``drift_block`` samples
(1024, about 1 ms at 1 MS/s). Fast oscillator phase noise is not modelled.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from drivers.errors import RadioError, RadioLimitError, RadioTimingError
from drivers.radio import RxResult, TxResult
from sim.channel import FieldResponseChannel, draw_lab_channel

PositionSource = Callable[[], np.ndarray]
DRIFT_KNOT_S = 1.0  # the drift rate's correlation time
_FIR_HALF = 6  # fractional-delay filter: 2 * _FIR_HALF taps of a Blackman-windowed sinc


def dbm_to_w(power_dbm: float) -> float:
    return 10.0 ** ((power_dbm - 30.0) / 10.0)


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
    drift: np.ndarray = field(default_factory=lambda: np.zeros(0))  # phase per block
    drift_rates: np.ndarray = field(default_factory=lambda: np.zeros(0))  # rate per knot, rad/s


@dataclass
class _Burst:
    node: SimNode
    start: int  # medium sample index of the first sample (before the node's timing offset)
    samples: np.ndarray  # (tx antennas, n) complex64, clipped and scaled to sqrt(W)
    carrier_hz: float
    lo_phase_rad: float
    delayed: dict[float, tuple[int, np.ndarray]] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.start + self.samples.shape[1]


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


def fractional_delay_taps(frac: float) -> np.ndarray:
    """FIR taps h[i], i = -(M-1)..M, delaying by ``frac`` in [0, 1) samples (windowed sinc)."""
    i = np.arange(-(_FIR_HALF - 1), _FIR_HALF + 1, dtype=float)
    window = (
        0.42
        + 0.5 * np.cos(np.pi * (i - frac) / _FIR_HALF)
        + 0.08 * np.cos(2 * np.pi * (i - frac) / _FIR_HALF)
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
    return shift - (_FIR_HALF - 1), out


class Medium:
    """The shared air. Thread-safe: radios in several threads may use one medium."""

    def __init__(
        self,
        links: LinkModel,
        rng: np.random.Generator,
        rate_sps: float = 1e6,
        noise_power_w: float = 1e-12,
        impairments: Impairments | None = None,
        tx_gain_ref_db: float = 60.0,
        rx_gain_ref_db: float = 0.0,
        capture_history_s: float = 0.0,
        drift_block: int = 1024,
        start_time_s: float = 0.0,
    ) -> None:
        if not (rate_sps > 0 and math.isfinite(rate_sps)):
            raise ValueError(f"rate_sps must be > 0 (got {rate_sps!r})")
        if not noise_power_w >= 0:
            raise ValueError(f"noise_power_w must be >= 0 (got {noise_power_w!r})")
        if capture_history_s < 0:
            raise ValueError(f"capture_history_s must be >= 0 (got {capture_history_s!r})")
        self.links = links
        self.rate_sps = float(rate_sps)
        self.noise_power_w = float(noise_power_w)
        self.impairments = impairments if impairments is not None else Impairments()
        self.tx_gain_ref_db = float(tx_gain_ref_db)
        self.rx_gain_ref_db = float(rx_gain_ref_db)
        self._history = int(round(capture_history_s * self.rate_sps))
        self._block = int(drift_block)
        self._rng = rng
        # SFC64: a third faster than PCG64 at float32 normals, and AWGN is most of the medium's work
        self._noise_rng = np.random.Generator(np.random.SFC64(int(rng.integers(2**63))))
        self._now = int(round(start_time_s * self.rate_sps))
        self._nodes: dict[str, SimNode] = {}
        self._bursts: list[_Burst] = []
        self._fine_cache: dict[float, np.ndarray] = {}
        self._buffers: dict[str, np.ndarray] = {}
        self._lock = threading.RLock()

    # --- building ------------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls, lab: Any, rng: np.random.Generator, channel: FieldResponseChannel | None = None
    ) -> Medium:
        """The medium of ``testbed.config.LabSection``: the clients of ``channel`` (default: drawn
        by ``draw_lab_channel`` from ``rng``); one node per client (``client<k>``) and a receiver
        node ``receiver`` with one antenna per stage, placed on a line through the region's
        centre until ``set_positions`` moves them."""
        medium_cfg = lab.medium
        count = int(lab.clients.count)
        if channel is None:
            channel = draw_lab_channel(lab, rng)
        medium = cls(
            FieldResponseLinks(channel),
            rng,
            rate_sps=lab.receiver.rate_sps,
            noise_power_w=dbm_to_w(medium_cfg.noise_power_dbm),
            impairments=Impairments.from_config(medium_cfg.impairments),
            tx_gain_ref_db=float(medium_cfg.tx_gain_ref_db),
            rx_gain_ref_db=float(medium_cfg.rx_gain_ref_db),
            capture_history_s=float(medium_cfg.capture_history_s),
        )
        for k in range(count):
            medium.add_client(f"client{k}", k)
        n = lab.num_antennas
        xs = (np.arange(n) - (n - 1) / 2.0) * (lab.array.region_m / max(n, 1))
        medium.add_receiver("receiver", n, np.stack([xs, np.zeros(n)], axis=1))
        return medium

    def _new_node(self, name: str, role: str, num_antennas: int, client: int | None) -> SimNode:
        if not name or name in self._nodes:
            raise ValueError(f"node name {name!r} is empty or already taken on this medium")
        if num_antennas < 1:
            raise ValueError(f"num_antennas must be >= 1 (got {num_antennas})")
        imp = self.impairments
        node_rng = np.random.default_rng(int(self._rng.integers(2**63)))
        node = SimNode(
            name=name,
            role=role,
            num_antennas=int(num_antennas),
            client=client,
            cfo_hz=float(node_rng.uniform(-imp.cfo_hz_max, imp.cfo_hz_max)),
            delay_samples=float(
                node_rng.uniform(-imp.timing_offset_samples_max, imp.timing_offset_samples_max)
            ),
            rng=node_rng,
        )
        self._nodes[name] = node
        return node

    def add_client(self, name: str, client: int) -> SimNode:
        """A single-antenna client node; ``client`` is its row of the channel."""
        with self._lock:
            return self._new_node(name, "client", 1, int(client))

    def add_receiver(self, name: str, num_antennas: int, positions_m: np.ndarray | PositionSource) -> SimNode:
        """The movable-antenna receiver. ``positions_m`` is an (N x 2) array or a callable that
        answers the antennas' current positions (e.g. reading the stages) at each capture."""
        with self._lock:
            node = self._new_node(name, "receiver", num_antennas, None)
            self.set_positions(name, positions_m)
            return node

    def node(self, name: str) -> SimNode:
        try:
            return self._nodes[name]
        except KeyError:
            raise RadioError(f"no node {name!r} on this medium (known: {sorted(self._nodes)})") from None

    @property
    def node_names(self) -> list[str]:
        return list(self._nodes)

    def set_positions(self, name: str, positions_m: np.ndarray | PositionSource) -> None:
        """The antennas moved (array), or where to ask for their positions (callable)."""
        with self._lock:
            node = self.node(name)
            if callable(positions_m):
                node.positions = positions_m
                return
            pos = np.asarray(positions_m, dtype=float).reshape(-1, 2).copy()
            if pos.shape[0] != node.num_antennas or not np.all(np.isfinite(pos)):
                raise ValueError(
                    f"positions for {name!r} must be {node.num_antennas} finite (x, y) pairs in metres "
                    f"(got shape {np.asarray(positions_m).shape})"
                )
            node.positions = lambda: pos

    def positions_of(self, name: str) -> np.ndarray:
        node = self.node(name)
        if node.positions is None:
            raise RadioError(f"node {name!r} has no antenna positions (only receivers do)")
        return np.asarray(node.positions(), dtype=float).reshape(-1, 2)

    # --- clock ---------------------------------------------------------------------------------
    @property
    def now_samples(self) -> int:
        return self._now

    def time_s(self) -> float:
        return self._now / self.rate_sps

    def advance(self, dt_s: float) -> None:
        if dt_s < 0:
            raise ValueError(f"the clock only moves forward (dt_s={dt_s})")
        self.advance_to(self.time_s() + dt_s)

    def advance_to(self, time_s: float) -> None:
        with self._lock:
            self._now = max(self._now, int(round(time_s * self.rate_sps)))
            self._prune()

    def local_time_s(self, name: str) -> float:
        return self.time_s() + self.node(name).clock_offset_s

    def set_time_next_pps(self, name: str, time_s: float) -> None:
        """The node's clock reads ``time_s`` at the next whole second of medium time."""
        with self._lock:
            edge = math.floor(self.time_s()) + 1.0
            self.node(name).clock_offset_s = float(time_s) - edge

    def _to_sample(self, node: SimNode, at_s: float) -> int:
        if not math.isfinite(at_s):
            raise ValueError(f"at_s must be a finite time in seconds (got {at_s!r})")
        return int(round((at_s - node.clock_offset_s) * self.rate_sps))

    # --- settings ------------------------------------------------------------------------------
    def configure_node(
        self, name: str, frequency_hz: float, rate_sps: float, tx_gain_db: float, rx_gain_db: float
    ) -> None:
        """Apply checked settings; a carrier change is a retune and redraws the LO phase."""
        with self._lock:
            node = self.node(name)
            if abs(rate_sps - self.rate_sps) > 1e-9 * self.rate_sps:
                raise RadioLimitError(
                    f"{name}: rate_sps={rate_sps} is not the medium's rate {self.rate_sps}; every "
                    "simulated radio runs at the medium rate"
                )
            if frequency_hz != node.carrier_hz:
                node.carrier_hz = float(frequency_hz)
                if self.impairments.random_lo_phase:
                    node.lo_phase_rad = float(node.rng.uniform(0.0, 2.0 * np.pi))
            node.tx_amplitude = 10.0 ** ((tx_gain_db - self.tx_gain_ref_db) / 20.0)
            node.rx_amplitude = 10.0 ** ((rx_gain_db - self.rx_gain_ref_db) / 20.0)

    # --- transmit ------------------------------------------------------------------------------
    def schedule(self, name: str, samples: np.ndarray, at_s: float, tolerate: Sequence[str] = ()) -> TxResult:
        """Schedule a burst from node ``name`` to start at its local time ``at_s``."""
        with self._lock:
            node = self.node(name)
            x = np.asarray(samples)
            if x.ndim == 1:
                x = x[None, :]
            if x.ndim != 2 or x.shape[0] != node.num_antennas or x.shape[1] == 0:
                raise ValueError(
                    f"{name}: samples must be (n,) or ({node.num_antennas}, n) with n > 0 "
                    f"(got shape {np.asarray(samples).shape})"
                )
            if not np.all(np.isfinite(x)):
                raise ValueError(f"{name}: samples contain NaN or inf")
            start = self._to_sample(node, at_s)
            if start < self._now:
                if "late" in tolerate:  # UHD drops a late burst and reports it asynchronously
                    return TxResult(at_s, x.shape[1], {"late": 1})
                raise RadioTimingError(
                    f"{name}: burst scheduled for {at_s:.9f} s but the device time is already "
                    f"{self.local_time_s(name):.9f} s; schedule further ahead",
                    "late",
                    self.local_time_s(name),
                )
            burst = x.astype(np.complex64)  # always a copy: the caller may reuse its buffer
            if self.impairments.dac_clipping:
                rails = burst.view(np.float32)
                fs = np.float32(self.impairments.dac_full_scale)
                np.clip(rails, -fs, fs, out=rails)
            burst *= np.float32(node.tx_amplitude)
            self._bursts.append(_Burst(node, start, burst, node.carrier_hz, node.lo_phase_rad))
            return TxResult(at_s, x.shape[1], {})

    # --- receive -------------------------------------------------------------------------------
    def capture(
        self,
        name: str,
        num_samples: int,
        at_s: float,
        channels: Sequence[int] | None = None,
        timeout_s: float = 1.0,
        tolerate: Sequence[str] = (),
    ) -> RxResult:
        with self._lock:
            node = self.node(name)
            if int(num_samples) != num_samples or num_samples < 1:
                raise ValueError(f"{name}: num_samples must be a positive integer (got {num_samples!r})")
            num_samples = int(num_samples)
            rows = list(range(node.num_antennas)) if channels is None else [int(c) for c in channels]
            if not rows or any(c < 0 or c >= node.num_antennas for c in rows):
                raise ValueError(
                    f"{name}: channels must be a non-empty subset of 0..{node.num_antennas - 1} "
                    f"(got {channels!r})"
                )
            warnings: dict[str, int] = {}
            start = self._to_sample(node, at_s)
            if start < self._now - self._history:
                if "late" not in tolerate:
                    raise RadioTimingError(
                        f"{name}: capture requested at {at_s:.9f} s but the device time is already "
                        f"{self.local_time_s(name):.9f} s; ask further ahead",
                        "late",
                        self.local_time_s(name),
                    )
                warnings["late"] = 1  # like stream-now: capture from the present instead
                start = self._now
            end = start + num_samples
            wait = (end - self._now) / self.rate_sps
            if wait > timeout_s:
                self._now += max(0, int(round(timeout_s * self.rate_sps)))
                self._prune()
                raise RadioTimingError(
                    f"{name}: capture at {at_s:.9f} s for {num_samples} samples would end "
                    f"{wait:.6f} s from now, beyond timeout_s={timeout_s}; nothing arrived",
                    "timeout",
                    self.local_time_s(name),
                )
            y = self._render(node, start, num_samples)[rows]
            self._now = max(self._now, end)
            self._prune()
            local_start = start / self.rate_sps + node.clock_offset_s
            return RxResult(y, local_start, warnings)

    def _render(self, rx: SimNode, start: int, n: int) -> np.ndarray:
        """The receiver's samples over [start, start + n): the air, then its own front end.

        Every burst is cut to the window and rotated by its link's CFO, LO and drift phases
        (TX minus RX, so the receiver's own rotation needs no pass over the antennas) into one
        row of X; the gains of all links (RX amplitude included) form G; y = G X + noise."""
        imp = self.impairments
        half_rate = self.rate_sps / 2.0
        columns: list[np.ndarray] = []
        pieces: list[tuple[np.ndarray, np.ndarray | None, int, int]] = []
        for burst in self._bursts:
            if burst.end + 2 * _FIR_HALF + 2 < start or burst.start - 2 * _FIR_HALF - 2 > start + n:
                continue
            if burst.node is rx or abs(burst.carrier_hz - rx.carrier_hz) >= half_rate:
                continue  # own bursts are not heard (TX/RX switch); other carriers are filtered
            gains = np.asarray(self.links.gains(burst.node, rx))
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
            rot = self._rotation(burst.node, rx, freq, burst.lo_phase_rad - rx.lo_phase_rad, a, b - a)
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
        if imp.awgn and self.noise_power_w > 0:
            sd = np.float32(math.sqrt(self.noise_power_w / 2.0) * rx.rx_amplitude)
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

    def _rotation(
        self, tx: SimNode, rx: SimNode, freq_hz: float, lo_phase: float, start: int, n: int
    ) -> np.ndarray | None:
        """exp(j(2 pi f t + lo + drift_tx(t) - drift_rx(t))) over medium samples
        [start, start + n), or None where that is 1."""
        drifting = self.impairments.phase_drift_rad_s > 0
        if freq_hz == 0.0 and lo_phase == 0.0 and not drifting:
            return None
        block = self._block
        b0, b1 = start // block, (start + n - 1) // block + 1
        blocks = np.arange(b0, b1, dtype=np.int64)
        cycles = np.mod(blocks * (freq_hz * block / self.rate_sps), 1.0)
        phase = 2.0 * np.pi * cycles + lo_phase
        if drifting:
            phase = phase + self._drift(tx, b0, b1) - self._drift(rx, b0, b1)
        fine = self._fine_cache.get(freq_hz)
        if fine is None:
            fine = np.exp(2j * np.pi * freq_hz * np.arange(block) / self.rate_sps).astype(np.complex64)
            if len(self._fine_cache) > 256:
                self._fine_cache.clear()
            self._fine_cache[freq_hz] = fine
        rot = (np.exp(1j * phase).astype(np.complex64)[:, None] * fine[None, :]).ravel()
        lead = start - b0 * block
        return rot[lead : lead + n]

    def _drift(self, node: SimNode, b0: int, b1: int) -> np.ndarray:
        """The node's drift phase at blocks [b0, b1), generated forward as needed."""
        have = node.drift.size
        if b1 > have:
            grow = max(b1 - have, 1024)
            block_s = self._block / self.rate_sps
            times = (have + np.arange(grow)) * block_s
            knots_needed = int(times[-1] // DRIFT_KNOT_S) + 2
            if node.drift_rates.size < knots_needed:
                # sqrt(3/2): linear interpolation between iid knots keeps the rms rate at the setting
                extra = node.rng.normal(
                    0.0,
                    self.impairments.phase_drift_rad_s * math.sqrt(1.5),
                    knots_needed - node.drift_rates.size,
                )
                node.drift_rates = np.concatenate([node.drift_rates, extra])
            rates = np.interp(times / DRIFT_KNOT_S, np.arange(node.drift_rates.size), node.drift_rates)
            last = node.drift[-1] if have else 0.0
            node.drift = np.concatenate([node.drift, last + np.cumsum(rates * block_s)])
        lo = max(b0, 0)
        out = node.drift[lo:b1]
        if b0 < 0:  # before time zero the drift is held at its start
            out = np.concatenate([np.zeros(-b0), out])
        return out

    def _prune(self) -> None:
        horizon = self._now - self._history - 2 * _FIR_HALF - 2
        if self._bursts and self._bursts[0].end < horizon or any(b.end < horizon for b in self._bursts):
            self._bursts = [b for b in self._bursts if b.end >= horizon]

    @property
    def pending_bursts(self) -> int:
        return len(self._bursts)


__all__ = [
    "FieldResponseLinks",
    "IdealLinks",
    "Impairments",
    "LinkModel",
    "Medium",
    "SimNode",
    "dbm_to_w",
    "fractional_delay",
    "fractional_delay_taps",
]
