"""The shared air on a virtual clock (docs/explanation/system-model.md sections 2-3, DESIGN.md).

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

The pieces live by job: ``sim/impairments.py`` (the switches, the nodes' draws, the
fractional-delay filter and the oscillators' phase, slow drift included), ``sim/links.py`` (the
gains between nodes) and ``sim/mixing.py`` (what a receiver hears over a window). This module
keeps the nodes, the virtual clock, the scheduled bursts and the timed captures.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from drivers.errors import RadioError, RadioLimitError, RadioTimingError
from drivers.radio import RxResult, TxResult
from sim.channel import FieldResponseChannel, draw_lab_channel
from sim.impairments import Impairments, Oscillators, PositionSource, SimNode
from sim.links import FieldResponseLinks, LinkModel
from sim.mixing import DELAY_REACH, AirMixer, Burst

log = logging.getLogger(__name__)

# Medium time between round starts (``Medium.start_round``): far more air time than a round uses.
ROUND_EPOCH_S = 3600.0


def dbm_to_w(power_dbm: float) -> float:
    return 10.0 ** ((power_dbm - 30.0) / 10.0)


class Medium:
    """The shared air. Thread-safe: radios in several threads may use one medium.

    Parameters
    ----------
    links
        The gains between nodes (``sim.links``): the field-response channel, or one flat gain.
    rng
        Draws every node's impairments and seeds the noise; the same seed gives the same air.
    rate_sps
        The one sample rate of every node; the virtual clock counts samples at it.
    noise_power_w
        AWGN power per receive antenna, referred to the antenna (before RX gain).
    impairments
        What the air adds beyond the channel; default ``Impairments()`` (noise and DAC clipping).
    tx_gain_ref_db
        The TX gain at which a unit-modulus sample radiates 1 W.
    rx_gain_ref_db
        The RX gain at which a capture reads the antenna's amplitude in sqrt(W).
    capture_history_s
        How far back a capture may still start (a second radio capturing a window already past);
        0 refuses it as ``late``, as UHD does.
    drift_block
        Samples per block over which the slow phase drift is held constant.
    start_time_s
        The virtual clock's start.
    """

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
        self._impairments = impairments if impairments is not None else Impairments()
        self.tx_gain_ref_db = float(tx_gain_ref_db)
        self.rx_gain_ref_db = float(rx_gain_ref_db)
        self._history = int(round(capture_history_s * self.rate_sps))
        self._rng = rng
        self.oscillators = Oscillators(self.rate_sps, self._impairments.phase_drift_rad_s, drift_block)
        # SFC64: a third faster than PCG64 at float32 normals, and AWGN is most of the medium's work
        noise_rng = np.random.Generator(np.random.SFC64(int(rng.integers(2**63))))
        self._mixer = AirMixer(self.rate_sps, self._impairments, self.oscillators, noise_rng)
        self._now = int(round(start_time_s * self.rate_sps))
        self._nodes: dict[str, SimNode] = {}
        self._bursts: list[Burst] = []
        self._lock = threading.RLock()

    @property
    def impairments(self) -> Impairments:
        """What this medium adds beyond the channel (fixed when it is made)."""
        return self._impairments

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

    def reseed(self, rng: np.random.Generator) -> None:
        """Draw every stream that runs on from ``rng`` from now on: the noise, and each node's
        oscillator draws (drift, LO phase at a retune), its drift starting afresh now. A run
        derives one ``rng`` per round from (seed, stream, round), so a run resumed at a round
        draws what an uninterrupted run draws (with ``start_round`` for the clock)."""
        with self._lock:
            self._mixer.reseed(np.random.Generator(np.random.SFC64(int(rng.integers(2**63)))))
            block = self._now // self.oscillators.block
            for name in sorted(self._nodes):
                node = self._nodes[name]
                node.rng = np.random.default_rng(int(rng.integers(2**63)))
                self.oscillators.restart_drift(node, block)

    def start_round(self, round_index: int) -> None:
        """Move the clock to round ``round_index``'s epoch (``ROUND_EPOCH_S`` apart), so every round
        starts at the same medium time however the run got there (resumed or not); each node's
        drift starts afresh there. A round that ran past its epoch's end only logs it."""
        with self._lock:
            epoch_s = round_index * ROUND_EPOCH_S
            if self.time_s() > epoch_s:
                log.warning(
                    "medium: round %d starts at %.3f s, past its epoch %.0f s; a resumed run differs",
                    round_index, self.time_s(), epoch_s,
                )  # fmt: skip
            self.advance_to(epoch_s)
            block = self._now // self.oscillators.block
            for node in self._nodes.values():
                self.oscillators.restart_drift(node, block)

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
            self._bursts.append(Burst(node, start, burst, node.carrier_hz, node.lo_phase_rad))
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
            y = self._mixer.render(node, self._bursts, self.links, self.noise_power_w, start, num_samples)[
                rows
            ]
            self._now = max(self._now, end)
            self._prune()
            local_start = start / self.rate_sps + node.clock_offset_s
            return RxResult(y, local_start, warnings)

    def _prune(self) -> None:
        horizon = self._now - self._history - DELAY_REACH
        if self._bursts and self._bursts[0].end < horizon or any(b.end < horizon for b in self._bursts):
            self._bursts = [b for b in self._bursts if b.end >= horizon]

    @property
    def pending_bursts(self) -> int:
        return len(self._bursts)


__all__ = ["Medium", "PositionSource", "dbm_to_w"]
