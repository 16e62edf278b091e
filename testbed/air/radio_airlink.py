"""The AirLink seam (``fl.airlink``) over radios, using the PHY of ``testbed.air.phy``.

- ``RadioAirTransmitter`` (the client side; one radio per client, on that client's host or all
  in one process): ``send_pilot``, ``apply_feedback`` (the digital feedback of the link
  estimate) and the AirTransmitter's ``send``.
- ``RadioAirReceiver`` (the PS side, the movable-antenna radio): ``capture_pilots``, then
  the AirReceiver's ``estimate_channels`` and ``collect``; ``feedback(client)`` is what goes
  back to each client.
- ``RadioAirLink``: both halves in one object (a lab where one host owns every radio, or the
  sim), which runs the pilot slots itself when ``estimate_channels`` is called.

Times are radio times in seconds (the clock the radios share through PPS, or the medium's).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from drivers.errors import RadioError
from drivers.radio import Radio
from fl.airlink import AirLink
from testbed.air.phy import (
    GainCalibration,
    LinkEstimate,
    PilotConfig,
    PulseShape,
    combine,
    common_amplitude,
    data_burst,
    estimate_link,
    symbol_peak,
    track_link,
)


def _set_tx_gain(radio: Radio, gain_db: float) -> None:
    if abs(radio.settings.tx_gain_db - gain_db) > 1e-9:
        radio.configure(dataclasses.replace(radio.settings, tx_gain_db=gain_db))  # the cap is checked here


class RadioAirTransmitter:
    """Client radios by client index. ``power_w`` is P_k (one value, or per client);
    ``common_peak`` the round's shared largest waveform modulus |g * s| (None: each burst's own);
    ``pulse`` the symbol shaping, which the receiver must share."""

    def __init__(
        self,
        radios: Mapping[int, Radio],
        power_w: float | Mapping[int, float],
        calibration: GainCalibration,
        pilots: PilotConfig | None = None,
        common_peak: float | None = None,
        pulse: PulseShape | None = None,
    ) -> None:
        if not radios:
            raise ValueError("RadioAirTransmitter needs at least one client radio")
        self.radios = dict(radios)
        self.power_w = power_w
        self.calibration = calibration
        self.pilots = pilots or PilotConfig()
        self.common_peak = common_peak
        self.pulse = pulse or PulseShape()
        self._estimates: dict[int, LinkEstimate] = {}

    def _radio(self, client: int) -> Radio:
        try:
            return self.radios[int(client)]
        except KeyError:
            raise RadioError(f"no radio for client {client} (have {sorted(self.radios)})") from None

    def power_of(self, client: int) -> float:
        if isinstance(self.power_w, Mapping):
            return float(self.power_w[int(client)])
        return float(self.power_w)

    def send_pilot(self, client: int, at_s: float) -> None:
        """The client's ZC pilot at full power, at ``at_s``."""
        radio = self._radio(client)
        _set_tx_gain(radio, self.calibration.tx_gain_db(np.sqrt(self.power_of(client))))
        radio.transmit(self.pilots.burst(), at_s)

    def apply_feedback(self, client: int, feedback: LinkEstimate | dict) -> None:
        """The link estimate the PS fed back (as the JSON record or the object)."""
        est = feedback if isinstance(feedback, LinkEstimate) else LinkEstimate.from_feedback(feedback)
        self._estimates[int(client)] = est

    def estimate_of(self, client: int) -> LinkEstimate | None:
        """This client's h_k (and CFO, timing), as fed back."""
        return self._estimates.get(int(client))

    def send(self, client: int, symbols: np.ndarray, scale: complex, at_s: float) -> None:
        radio = self._radio(client)
        power = self.power_of(client)
        if abs(scale) ** 2 > power * (1 + 1e-9):
            raise ValueError(
                f"client {client}: |b_k|^2 = {abs(scale) ** 2:.3g} W exceeds its power budget P_k = {power:.3g} W"
            )
        own = symbol_peak(self.pulse.shape(symbols))  # the waveform's peak, overshoot included
        amplitude = common_amplitude(power, max(own, self.common_peak or 0.0))
        _set_tx_gain(radio, self.calibration.tx_gain_db(amplitude))
        actual = self.calibration.tx_amplitude(radio.settings.tx_gain_db)  # a real radio may round
        samples, start_s = data_burst(
            symbols,
            scale,
            actual,
            at_s,
            radio.settings.rate_sps,
            self._estimates.get(int(client)),
            self.pulse,
        )
        radio.transmit(samples, start_s)


class RadioAirReceiver:
    """The PS's receive radio. ``noise_power_w`` is the noise power per sample at the antenna
    (the config's, over the full sample rate)."""

    def __init__(
        self,
        radio: Radio,
        calibration: GainCalibration,
        noise_power_w: float,
        pilots: PilotConfig | None = None,
        channels: Sequence[int] | None = None,
        timeout_s: float = 2.0,
        pulse: PulseShape | None = None,
    ) -> None:
        self.radio = radio
        self.pulse = pulse or PulseShape()
        self.calibration = calibration
        self.pilots = pilots or PilotConfig()
        self.channels = None if channels is None else [int(c) for c in channels]
        self.timeout_s = float(timeout_s)
        self._noise_power_w = float(noise_power_w)
        self._estimates: dict[int, LinkEstimate] = {}
        self._moved: set[int] = set()  # clients whose estimate predates the last move

    @property
    def num_antennas(self) -> int:
        return self.radio.num_rx_channels if self.channels is None else len(self.channels)

    @property
    def noise_power_w(self) -> float:
        """sigma^2 per symbol after the matched filter: the antenna's per-sample noise power
        over the samples per symbol (the noise in the signal's bandwidth)."""
        return self._noise_power_w / self.pulse.samples_per_symbol

    @property
    def measured_noise_power_w(self) -> float:
        """The mean noise power the last pilots' residuals showed (nan before any)."""
        if not self._estimates:
            return float("nan")
        return (
            float(np.mean([e.noise_power_w for e in self._estimates.values()]))
            / self.pulse.samples_per_symbol
        )

    def pilot_schedule(self, clients: Sequence[int], at_s: float) -> dict[int, float]:
        """When each client sends its pilot: one slot each, in the order given."""
        slot_s = self.pilots.slot_samples / self.radio.settings.rate_sps
        return {int(k): at_s + i * slot_s for i, k in enumerate(clients)}

    def _capture(self, num_samples: int, at_s: float) -> np.ndarray:
        got = self.radio.receive(num_samples, at_s, channels=self.channels, timeout_s=self.timeout_s)
        return got.samples / self.calibration.rx_amplitude(self.radio.settings.rx_gain_db)

    def capture_pilots(
        self,
        clients: Sequence[int],
        at_s: float,
        pilot_power_w: float | Mapping[int, float],
        hold_phase: bool = True,
    ) -> dict[int, LinkEstimate]:
        """Capture the pilot slots starting at ``at_s`` and estimate every client's link.

        ``pilot_power_w`` is each client's pilot power (its P_k), so h comes out physical.
        ``hold_phase``: continue each client's previous estimate at these antenna positions
        (``air.phy.track_link``): its CFO refined over both rounds, its new h_k turned onto the
        previous one (``LinkEstimate.phase_rad``). Between two pilot rounds a free-running link
        turns by 2 pi CFO dt (and drift), so without the hold a b_k precoded on the earlier
        round would land at a random phase; with it, every round's H shares one phase frame per
        client. False: every round stands alone, h_k as the pilots show it."""
        rate = self.radio.settings.rate_sps
        p = self.pilots
        y = self._capture(p.capture_samples(len(clients)), at_s - p.search / rate)
        schedule = self.pilot_schedule(clients, at_s)
        out = {}
        for i, k in enumerate(clients):
            out[int(k)] = estimate_link(
                y,
                p.search + i * p.slot_samples,
                p,
                rate,
                float(
                    np.sqrt(pilot_power_w[int(k)] if isinstance(pilot_power_w, Mapping) else pilot_power_w)
                ),
                int(k),
                schedule[int(k)],
            )
            previous = self._estimates.get(int(k))
            if hold_phase and previous is not None and int(k) not in self._moved:
                out[int(k)] = track_link(out[int(k)], previous, p, rate)
            self._moved.discard(int(k))
        self._estimates.update(out)
        return out

    def forget(self) -> None:
        """Drop every estimate: the next pilots start afresh (a round of a reseeded air)."""
        self._estimates.clear()
        self._moved.clear()

    def antennas_moved(self) -> None:
        """The receive antennas moved: the estimates so far describe other channels, so the
        next pilot round of each client starts afresh (no phase hold, no CFO over the move)."""
        self._moved = set(self._estimates)

    def estimate(self, client: int) -> LinkEstimate:
        try:
            return self._estimates[int(client)]
        except KeyError:
            raise RadioError(f"no pilot estimate for client {client}: capture its pilot first") from None

    def feedback(self, client: int) -> dict:
        """The record to send client ``client`` (JSON-able)."""
        return self.estimate(client).feedback()

    def estimate_channels(self, clients: Sequence[int]) -> np.ndarray:
        """H (K x N) from the last pilots, in physical units, LO phases included."""
        return np.stack([self.estimate(k).channel for k in clients])

    def collect(self, num_symbols: int, at_s: float, combiner: np.ndarray) -> np.ndarray:
        capture = self._capture(self.pulse.num_samples(int(num_symbols)), at_s)
        return combine(capture, combiner, 1.0, int(num_symbols), self.pulse)


class RadioAirLink:
    """Both halves over radios in one process (implements ``fl.airlink.AirLink``).

    Every pilot round holds each client's phase (``RadioAirReceiver.capture_pilots``), so a b_k
    precoded on any earlier round of the same antenna positions stays coherent.

    ``frame_symbols``: slots go out at ``collect``, in frames of this many symbols, with fresh
    pilots before every frame after the first, and before the first too when the last pilots
    are older than fresh ones would be (the slot lies far ahead, e.g. ``fl.transport.ota_guard_s``
    after them): the CFO estimate's error (~1 Hz) and phase drift walk the phase with the time
    from pilot to symbol, and the phase hold keeps the b_k valid across the fresh pilots, so the
    sum stays coherent however long the payload and however far the slot. None: each burst goes
    out at ``send``, pre-compensated from the pilots before it (keep the slot close to them)."""

    def __init__(
        self,
        transmitter: RadioAirTransmitter,
        receiver: RadioAirReceiver,
        lead_s: float = 1e-3,
        position_sink: Callable[[np.ndarray], None] | None = None,
        closers: Sequence[Callable[[], None]] = (),
        frame_symbols: int | None = None,
        medium: Any = None,
    ) -> None:
        if frame_symbols is not None and frame_symbols < 1:
            raise ValueError(f"frame_symbols must be >= 1 or None (got {frame_symbols})")
        self.transmitter = transmitter
        self.receiver = receiver
        self.lead_s = float(lead_s)
        self.frame_symbols = frame_symbols
        self._position_sink = position_sink
        self._closers = list(closers)
        self._pending: dict[int, dict[int, tuple[np.ndarray, complex]]] = {}
        self._medium = medium  # the simulated air (sim.medium.Medium), or None with real radios

    def reseed(self, rng: np.random.Generator) -> None:
        """Sim: the medium draws its noise and oscillators from ``rng`` from now on (a run passes
        one per round, keyed by (seed, stream, round)), and the pilots start afresh, so a resumed
        run draws what an uninterrupted one does. Real radios: nothing to do."""
        if self._medium is not None:
            self._medium.reseed(rng)
            self.receiver.forget()

    def start_round(self, round_index: int) -> None:
        """Sim: the medium's clock moves to the round's epoch (``Medium.start_round``)."""
        if self._medium is not None:
            self._medium.start_round(round_index)
            self.receiver.forget()

    def set_positions(self, positions_m: np.ndarray) -> None:
        """The stages moved the antennas. In sim the medium is told (unless it reads the stages
        itself); with real radios the air already knows. Either way the next pilots start afresh."""
        self.receiver.antennas_moved()
        if self._position_sink is not None:
            self._position_sink(np.asarray(positions_m, dtype=float))

    def slot_time_s(self) -> float:
        """A data slot time far enough ahead to schedule every client (``slot_clock`` of
        ``fl.aggregation.OverTheAir``)."""
        return self.time_now() + self.lead_s

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers = []

    @property
    def num_antennas(self) -> int:
        return self.receiver.num_antennas

    @property
    def noise_power_w(self) -> float:
        return self.receiver.noise_power_w

    def time_now(self) -> float:
        return self.receiver.radio.time_now()

    def estimate_channels(self, clients: Sequence[int]) -> np.ndarray:
        """Pilot slots now + lead, estimation, and the digital feedback to every client."""
        return self._sound(clients, self.time_now() + self.lead_s)

    def _pilot_span_s(self, num_clients: int) -> float:
        """Air time of one pilot capture for ``num_clients`` clients."""
        return self.receiver.pilots.capture_samples(num_clients) / self.receiver.radio.settings.rate_sps

    def _sound(self, clients: Sequence[int], at_s: float) -> np.ndarray:
        """Pilot slots from ``at_s``, estimation (phase held), and the feedback to every client."""
        schedule = self.receiver.pilot_schedule(clients, at_s)
        for k in clients:
            self.transmitter.send_pilot(k, schedule[int(k)])
        power = {int(k): self.transmitter.power_of(k) for k in clients}
        self.receiver.capture_pilots(clients, at_s, power)
        for k in clients:
            self.transmitter.apply_feedback(k, self.receiver.feedback(k))  # as over ZeroMQ: JSON
        return self.receiver.estimate_channels(clients)

    def send(self, client: int, symbols: np.ndarray, scale: complex, at_s: float) -> None:
        if self.frame_symbols is None:
            self.transmitter.send(client, symbols, scale, at_s)
            return
        slot = self._pending.setdefault(round(at_s * 1e9), {})
        if int(client) in slot:
            raise ValueError(f"client {client} already sent in the slot at {at_s} s")
        slot[int(client)] = (np.asarray(symbols), complex(scale))  # framed out at collect

    def collect(self, num_symbols: int, at_s: float, combiner: np.ndarray) -> np.ndarray:
        pending = self._pending.pop(round(at_s * 1e9), None)
        if not pending:
            return self.receiver.collect(num_symbols, at_s, combiner)
        m = np.asarray(combiner)
        clients = sorted(pending)
        frame = int(self.frame_symbols or num_symbols)
        parts, when = [], self._first_frame_s(clients, at_s)
        for lo in range(0, num_symbols, frame):
            hi = min(lo + frame, num_symbols)
            if lo > 0:
                self.estimate_channels(clients)  # fresh pilots and feedback, phase held
                when = self.slot_time_s()
            for k in clients:
                symbols, scale = pending[k]
                if symbols.size > lo:
                    self.transmitter.send(k, symbols[lo:hi], scale, when)
            parts.append(self.receiver.collect(hi - lo, when, m))
        return np.concatenate(parts)

    def _first_frame_s(self, clients: Sequence[int], at_s: float) -> float:
        """When the slot's first frame goes out: at ``at_s``, after fresh pilots that end a lead
        before it when the last ones are older than fresh ones would be (a frame after fresh
        pilots starts one pilot span plus a lead or so after them; one more lead is slack)."""
        span_s = self._pilot_span_s(len(clients))
        known = [self.transmitter.estimate_of(k) for k in clients]  # what the bursts are compensated by
        oldest_s = min((e.reference_time_s if e is not None else -math.inf) for e in known)
        if at_s - oldest_s <= span_s + 2 * self.lead_s:
            return at_s
        self._sound(clients, max(self.time_now() + self.lead_s, at_s - span_s - self.lead_s))
        return max(at_s, self.slot_time_s())  # late pilots (a slow host) push the frame, never fail it


def open_radio_airlink(
    config: Any, medium: Any = None, lead_s: float = 2e-3, frame_symbols: int | None = None
) -> RadioAirLink:
    """The radio AirLink of a ``TestbedConfig``: ``lab.receiver`` and one radio per client
    (``testbed.radios.open_radio``: in-process sim on ``medium``, sim or USRP behind a server).

    Sim: the gain calibration is the medium's and ``set_positions`` moves the medium's
    receiver; CFO is estimated when the medium has any. Real: the default ``GainCalibration``
    (replace it with a measured one) and CFO is estimated unless every radio takes an external
    or GPSDO reference. The noise power is ``lab.medium.noise_power_dbm`` (sim) per sample.
    ``frame_symbols`` defaults to 2000 symbols (4 ms at 1 MS/s) with free-running radios, whose
    ~1 Hz CFO estimate error walks the phase, and to 20000 with a shared reference (drift only)."""
    from sim.medium import dbm_to_w
    from testbed.radios import open_radio

    lab = config.lab
    sections = [lab.receiver] + [lab.clients.radio] * lab.clients.count
    if medium is not None:
        calibration = GainCalibration(medium.tx_gain_ref_db, medium.rx_gain_ref_db)
        unlocked = medium.impairments.cfo_hz_max > 0
        noise_w = medium.noise_power_w if medium.impairments.awgn else 0.0
    else:
        calibration = GainCalibration()
        unlocked = any(s.clock_source == "internal" for s in sections)
        noise_w = dbm_to_w(lab.medium.noise_power_dbm)
    pilots = PilotConfig(zc_length=config.campaign.pilot_length, estimate_cfo=unlocked)
    radios: list[Radio] = []
    try:
        radios.append(open_radio(lab.receiver, "receiver", medium))
        for k in range(lab.clients.count):
            radios.append(open_radio(lab.clients.radio, f"client{k}", medium))
    except BaseException:
        for radio in radios:
            radio.close()
        raise
    pulse = PulseShape()
    sink = None
    if medium is not None:
        sink = lambda positions: medium.set_positions("receiver", positions)  # noqa: E731
    return RadioAirLink(
        RadioAirTransmitter(
            dict(enumerate(radios[1:])), lab.clients.tx_power_w, calibration, pilots, pulse=pulse
        ),
        RadioAirReceiver(radios[0], calibration, noise_w, pilots, pulse=pulse),
        lead_s=lead_s,
        position_sink=sink,
        closers=[r.close for r in radios],
        frame_symbols=frame_symbols or (2000 if unlocked else 20000),
        medium=medium,
    )


@dataclasses.dataclass(frozen=True)
class AggregationTrial:
    """One OTA slot measured against docs/explanation/system-model.md section 3."""

    nmse: float  # ||estimate - sum phi_k s_k||^2 / ||sum phi_k s_k||^2, measured
    theory_nmse: float  # (n sigma^2 ||m||^2 / eta) / ||sum phi_k s_k||^2, from the true channels
    eta: float
    combiner: np.ndarray
    estimate: np.ndarray
    truth: np.ndarray


def strongest_direction(channels: np.ndarray) -> np.ndarray:
    """A unit combiner m: the principal direction of the clients' normalised channels."""
    h = np.asarray(channels)
    unit = h / np.linalg.norm(h, axis=1, keepdims=True)
    _, _, vh = np.linalg.svd(unit, full_matrices=False)
    return vh[0].conj() / np.linalg.norm(vh[0])


def measure_aggregation(
    link: AirLink,
    clients: Sequence[int],
    symbols: np.ndarray,
    weights: np.ndarray,
    power_w: np.ndarray,
    at_s: float | Callable[[], float],
    true_channels: np.ndarray,
    combiner: np.ndarray | None = None,
) -> AggregationTrial:
    """Estimate H on ``link``, precode (``allocation.aircomp``), send ``symbols`` (K x n), collect,
    and compare the estimate of sum phi_k s_k with the truth and with the analytic MSE.
    ``at_s`` is the data slot's time, or a callable giving it once the pilots are done."""
    from allocation.aircomp import aggregation_mse, power_scale, zero_forcing_scalars

    h_est = link.estimate_channels(clients)
    m = strongest_direction(h_est) if combiner is None else np.asarray(combiner)
    eta = power_scale(m, h_est, power_w, weights)
    b = zero_forcing_scalars(m, h_est, weights, eta)
    at_s = at_s() if callable(at_s) else float(at_s)
    for k, bk, s in zip(clients, b, symbols, strict=True):
        link.send(k, s, complex(bk), at_s)
    estimate = link.collect(symbols.shape[1], at_s, m) / np.sqrt(eta)
    truth = np.asarray(weights, dtype=float) @ symbols
    power = float(np.vdot(truth, truth).real)
    mse = aggregation_mse(m, true_channels, power_w, weights, link.noise_power_w)
    err = estimate - truth
    return AggregationTrial(
        nmse=float(np.vdot(err, err).real) / power,
        theory_nmse=mse * symbols.shape[1] / power,
        eta=float(eta),
        combiner=m,
        estimate=estimate,
        truth=truth,
    )


__all__ = [
    "AggregationTrial",
    "RadioAirLink",
    "RadioAirReceiver",
    "RadioAirTransmitter",
    "measure_aggregation",
    "open_radio_airlink",
    "strongest_direction",
]
