"""Channel sounders: Zadoff-Chu pilots through the radios, or the symbol-level sim air."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from drivers.errors import ConfigError
from testbed.campaign.common import _all_sim_radios, _client_sections
from testbed.campaign.formation import Formation
from testbed.config import TestbedConfig

log = logging.getLogger(__name__)


@dataclass
class Sounding:
    """What one step measured: ``h`` (U x N) complex, ``snr_db`` (U x N), raw IQ per client
    (N x samples, complex64) when the sounder has a waveform, and the radio time of the capture."""

    h: np.ndarray
    snr_db: np.ndarray
    radio_time_s: float
    iq: dict[int, np.ndarray] = field(default_factory=dict)
    meta: dict[int, dict[str, Any]] = field(default_factory=dict)
    segments: list[tuple[int, float]] = field(default_factory=lambda: [(0, 0.0)])  # per capture in iq
    hw: str = ""  # SigMF core:hw of the receiver: "simulated", or its model and serial
    capture_times_s: list[float] = field(default_factory=list)  # UTC (Unix s) per capture in iq


class Sounder(Protocol):
    """Measures every client's channel at the antennas' current positions."""

    num_clients: int
    sample_rate_sps: float
    carrier_hz: float

    def sound(self, positions_m: np.ndarray, rng: np.random.Generator) -> Sounding: ...

    def capture_time_s(self) -> float:
        """Air time of one step's pilots (for the timing model)."""
        ...

    def close(self) -> None: ...


class SymbolSounder:
    """A channel sounder without a waveform: the symbol-level air (``sim.symbol_air.SymbolAir``)
    with the least-squares error the radio path's pilot would leave, sigma^2 / (P_k n) per
    antenna for n pilot samples (``air.phy.PilotConfig``'s burst, times the captures averaged).
    Same air time as sequential pilots; fast; writes no IQ."""

    def __init__(
        self,
        channel: Any,
        noise_power_w: float,
        tx_power_w: float,
        pilot_length: int,
        sample_rate_sps: float,
        carrier_hz: float,
        captures_per_point: int = 1,
    ) -> None:
        from testbed.air.phy import PilotConfig

        self._channel = channel
        self._noise_power_w = float(noise_power_w)
        self._tx_power_w = float(tx_power_w)
        self._pilots = PilotConfig(zc_length=int(pilot_length), zc_root=_zc_roots(int(pilot_length), 1)[0])
        self._captures = int(captures_per_point)
        self.num_clients = int(channel.num_clients)
        self.sample_rate_sps = float(sample_rate_sps)
        self.carrier_hz = float(carrier_hz)

    def sound(self, positions_m: np.ndarray, rng: np.random.Generator) -> Sounding:
        from sim.symbol_air import SymbolAir

        samples = self._pilots.burst_samples * self._captures
        est_noise = self._noise_power_w / (self._tx_power_w * samples)
        air = SymbolAir(self._channel, positions_m, self._noise_power_w, rng, estimation_noise_w=est_noise)
        h = air.estimate_channels(range(self.num_clients))
        snr = self._tx_power_w * np.abs(h) ** 2 / max(self._noise_power_w, 1e-300)
        return Sounding(h=h, snr_db=10.0 * np.log10(np.maximum(snr, 1e-30)), radio_time_s=0.0)

    def capture_time_s(self) -> float:
        return self._captures * self._pilots.capture_samples(self.num_clients) / self.sample_rate_sps

    def close(self) -> None:
        pass


class RadioSounder:
    """Zadoff-Chu pilots through the radios (``testbed.air.phy``), estimated per client and
    receive antenna (``air.phy.estimate_link``: timing, CFO, channel in physical units).

    ``sequential``: one slot per client, one after another, in one timed capture.
    ``simultaneous``: every client at once in one slot, each with its own ZC root, separated by
    successive interference cancellation (two roots correlate at 1/sqrt(L), -21 dB at L = 127,
    too much across a near-far gap without it): U times less air time for more computing. The
    raw capture (as the radio returned it) of each client's slot is kept for SigMF.

    Parameters
    ----------
    receiver
        The receiver's radio, one RX channel per antenna; the pilots are timed on its clock.
    clients
        One radio per client, in client order, sharing the receiver's time.
    calibration
        The ``GainCalibration`` that turns the radios' gains into physical amplitudes.
    power_w
        Each client's pilot power, P_k.
    pilot_length
        The Zadoff-Chu sequence length (``campaign.pilot_length``).
    mode
        ``sequential`` or ``simultaneous`` (``campaign.pilots``).
    captures_per_point
        Soundings averaged per raster point.
    lead_s
        How far ahead of the receiver's "now" the pilots are scheduled.
    carrier_hz
        The carrier the channel is estimated at; default the receiver's frequency.
    closers
        Called on ``close`` after the radios are closed (e.g. a sim medium's server).
    """

    def __init__(
        self,
        receiver: Any,
        clients: Sequence[Any],
        calibration: Any,
        power_w: float,
        pilot_length: int,
        mode: str = "sequential",
        captures_per_point: int = 1,
        lead_s: float = 2e-3,
        carrier_hz: float | None = None,
        closers: Sequence[Callable[[], None]] = (),
    ) -> None:
        from testbed.air.phy import PilotConfig
        from testbed.air.radio_airlink import RadioAirTransmitter

        if mode not in ("sequential", "simultaneous"):
            raise ConfigError(f"campaign.pilots: must be 'sequential' or 'simultaneous' (got {mode!r})")
        self.receiver = receiver
        self.num_clients = len(clients)
        self.mode = mode
        self.captures_per_point = int(captures_per_point)
        self.lead_s = float(lead_s)
        self.calibration = calibration
        self.power_w = float(power_w)
        self.sample_rate_sps = float(receiver.settings.rate_sps)
        self.carrier_hz = float(carrier_hz if carrier_hz is not None else receiver.settings.frequency_hz)
        roots = _zc_roots(pilot_length, self.num_clients if mode == "simultaneous" else 1)
        self.pilots = [
            PilotConfig(zc_length=pilot_length, zc_root=roots[k if mode == "simultaneous" else 0])
            for k in range(self.num_clients)
        ]
        # One transmitter per client, so each may carry its own root (simultaneous mode).
        self._tx = {
            k: RadioAirTransmitter({k: radio}, power_w, calibration, self.pilots[k])
            for k, radio in enumerate(clients)
        }
        self._radios = [receiver, *clients]
        self._closers = list(closers)
        self._hw: str | None = None  # the receiver's core:hw, asked once at the first sounding

    @classmethod
    def open(cls, config: TestbedConfig, formation: Formation) -> RadioSounder:
        """The configured radios (``testbed.radios.open_radio``).

        In-process sim: the medium asks the stages for the antennas' positions at every capture.
        Real radios: the receiver and one radio server per client (``lab.clients.radio_servers``);
        the radios must share time (PPS), since the pilots are scheduled on the receiver's clock,
        and ``h`` is in physical units only as far as the default ``GainCalibration`` holds.
        """
        from testbed.air.phy import GainCalibration
        from testbed.radios import open_radio

        lab = config.lab
        medium = None
        if _all_sim_radios(config):
            medium = sim_medium(config)
            medium.set_positions("receiver", formation.positions)
            calibration = GainCalibration(medium.tx_gain_ref_db, medium.rx_gain_ref_db)
            client_sections = [lab.clients.radio] * lab.clients.count
        else:
            calibration = GainCalibration()
            client_sections = _client_sections(config)
        radios: list[Any] = []
        try:
            radios.append(open_radio(lab.receiver, "receiver", medium))
            for k, section in enumerate(client_sections):
                radios.append(open_radio(section, f"client{k}", medium))
        except BaseException:
            for radio in radios:
                radio.close()
            raise
        return cls(
            radios[0],
            radios[1:],
            calibration,
            lab.clients.tx_power_w,
            config.campaign.pilot_length,
            config.campaign.pilots,
            config.campaign.captures_per_point,
            lead_s=config.fl.transport.ota_guard_s,  # schedule pilots this far ahead of "now"
            carrier_hz=lab.array.carrier_hz,
        )

    def capture_time_s(self) -> float:
        p = self.pilots[0]
        slots = self.num_clients if self.mode == "sequential" else 1
        return self.captures_per_point * p.capture_samples(slots) / self.sample_rate_sps

    def _sound_once(self) -> tuple[dict[int, Any], dict[int, np.ndarray], float, float]:
        from testbed.air.phy import estimate_link

        rate = self.sample_rate_sps
        p0 = self.pilots[0]
        slots = self.num_clients if self.mode == "sequential" else 1
        radio_now_s, wall_now_s = self.receiver.time_now(), time.time()
        at_s = radio_now_s + self.lead_s
        slot_s = p0.slot_samples / rate
        starts = {
            k: at_s + (k * slot_s if self.mode == "sequential" else 0.0) for k in range(self.num_clients)
        }
        for k in range(self.num_clients):
            self._tx[k].send_pilot(k, starts[k])
        got = self.receiver.receive(
            p0.capture_samples(slots), at_s - p0.search / rate, timeout_s=max(1.0, 10 * self.lead_s)
        )
        raw = np.asarray(got.samples)
        y = raw / self.calibration.rx_amplitude(self.receiver.settings.rx_gain_db)
        amplitude = math.sqrt(self.power_w)
        estimates, iq = {}, {}
        if self.mode == "simultaneous":
            estimates = self._cancel_interference(y, p0.search, amplitude, starts)
        for k in range(self.num_clients):
            first = k * p0.slot_samples if self.mode == "sequential" else 0
            if self.mode == "sequential":
                estimates[k] = estimate_link(
                    y, p0.search + first, self.pilots[k], rate, amplitude, k, starts[k]
                )
            iq[k] = raw[:, first : first + p0.slot_samples + 2 * p0.search]
        # The capture's UTC: the radio's clock mapped onto the host's at the moment it was read.
        wall_s = wall_now_s + (float(got.start_time_s) - radio_now_s)
        return estimates, iq, float(got.start_time_s), wall_s

    def _cancel_interference(
        self, y: np.ndarray, expected: int, amplitude: float, starts: dict[int, float], passes: int = 3
    ) -> dict[int, Any]:
        """Every client's link from one slot where all sent at once: successive interference
        cancellation. Two ZC roots correlate at 1/sqrt(L), which a near-far gap of 20 dB turns into
        a useless estimate of the weak client; so estimate the strongest first, subtract its
        pilot as received (channel, delay, CFO), estimate the next on what is left, and repeat the
        round with every other client's latest pilot removed."""
        from testbed.air.phy import estimate_link

        rate = self.sample_rate_sps
        clients = range(self.num_clients)
        first = {
            k: estimate_link(y, expected, self.pilots[k], rate, amplitude, k, starts[k]) for k in clients
        }
        order = sorted(clients, key=lambda k: -float(np.sum(np.abs(first[k].channel) ** 2)))
        received = {k: np.zeros_like(y) for k in clients}
        estimates: dict[int, Any] = {}
        residual = y.astype(np.complex128)
        for _ in range(passes):
            for k in order:
                mine = residual + received[k]  # everyone else's latest pilot taken out
                estimates[k] = estimate_link(mine, expected, self.pilots[k], rate, amplitude, k, starts[k])
                received[k] = _received_pilot(
                    estimates[k], self.pilots[k], expected, amplitude, rate, y.shape
                )
                residual = mine - received[k]
        return estimates

    def sound(self, positions_m: np.ndarray, rng: np.random.Generator) -> Sounding:
        """``positions_m`` is informational here: the medium asks the stages itself."""
        if self._hw is None:
            self._hw = radio_hw(self.receiver)
        hs, snrs, iqs, segments, t_first, walls = [], [], [], [], None, []
        for _ in range(self.captures_per_point):
            estimates, iq, t, wall_s = self._sound_once()
            t_first = t if t_first is None else t_first
            segments.append((sum(c[0].shape[1] for c in iqs), t))
            walls.append(wall_s)
            h = np.stack([estimates[k].channel for k in range(self.num_clients)])
            noise = np.array([estimates[k].noise_power_w for k in range(self.num_clients)])
            snr = self.power_w * np.abs(h) ** 2 / np.maximum(noise, 1e-300)[:, None]
            hs.append(h)
            snrs.append(snr)
            iqs.append(iq)
        meta = {
            k: {
                "pilots": self.mode,
                "zc_root": self.pilots[k].zc_root,
                "zc_length": self.pilots[k].zc_length,
                "zc_repeats": self.pilots[k].repeats,
                "captures": self.captures_per_point,
                "tx_power_w": self.power_w,
            }
            for k in range(self.num_clients)
        }
        return Sounding(
            h=np.mean(hs, axis=0),
            snr_db=10.0 * np.log10(np.maximum(np.mean(snrs, axis=0), 1e-30)),
            radio_time_s=float(t_first or 0.0),
            iq={k: np.concatenate([c[k] for c in iqs], axis=1) for k in range(self.num_clients)},
            meta=meta,
            segments=segments,
            hw=self._hw,
            capture_times_s=walls,
        )

    def close(self) -> None:
        for radio in self._radios:
            try:
                radio.close()
            except Exception as exc:  # noqa: BLE001 - close the rest regardless
                log.warning("closing radio %s: %s", getattr(radio, "name", "?"), exc)
        for closer in self._closers:
            closer()


def radio_hw(radio: Any) -> str:
    """SigMF ``core:hw`` of a radio, from its sensors: "simulated" for a sim radio (here or behind
    a radio server), else the model and serial its driver reports (``hw.model``, ``hw.serial``)."""
    sensors = radio.sensors()
    if sensors.get("backend") == "sim":
        return "simulated"
    model, serial = sensors.get("hw.model"), sensors.get("hw.serial")
    if model or serial:
        return f"USRP {model or '(model unknown)'} serial {serial or 'unknown'}"
    return f"USRP (model and serial unknown; args {sensors.get('args', '')!r})"


def _received_pilot(
    estimate: Any, pilots: Any, expected: int, amplitude: float, rate_sps: float, shape: tuple[int, ...]
) -> np.ndarray:
    """A client's pilot as the capture holds it, from its link estimate: the burst delayed by
    ``delay_samples`` (fractional part filtered), turned by its CFO from the expected start, times
    its channel at the pilot's amplitude. The inverse of ``air.phy.estimate_link``."""
    from sim.impairments import fractional_delay

    offset, ref = fractional_delay(pilots.burst()[None, :], float(estimate.delay_samples))
    out = np.zeros(shape, dtype=np.complex128)
    first = expected + offset
    lo, hi = max(first, 0), min(first + ref.shape[1], shape[1])
    if lo >= hi:
        return out
    t = (np.arange(lo, hi) - expected) / rate_sps
    wave = ref[0, lo - first : hi - first] * np.exp(2j * np.pi * estimate.cfo_hz * t)
    out[:, lo:hi] = (np.asarray(estimate.channel) * amplitude)[:, None] * wave[None, :]
    return out


def _zc_roots(length: int, count: int) -> list[int]:
    """``count`` distinct ZC roots coprime with ``length``, starting from the project's 25."""
    candidates = [r for r in range(25, length) if math.gcd(r, length) == 1]
    candidates += [r for r in range(1, min(25, length)) if math.gcd(r, length) == 1]
    if len(candidates) < count:
        raise ConfigError(
            f"campaign.pilot_length={length}: only {len(candidates)} Zadoff-Chu roots for {count} "
            "simultaneous clients; use a prime length (e.g. 127) or sequential pilots"
        )
    return candidates[:count]


def sim_medium(config: TestbedConfig) -> Any:
    """The sim lab's air, drawn from the run seed (the same draw as every other sim run)."""
    from sim.medium import Medium
    from testbed.world import draw_channel

    # The same world `testbed run` sees with this config and seed: a campaign maps that world.
    return Medium.from_config(
        config.lab, np.random.default_rng(config.run.seed), channel=draw_channel(config)
    )


def open_sounder(config: TestbedConfig, formation: Formation) -> Sounder:
    """The configured sounder over the configured radios."""
    if config.campaign.sounder == "symbol":
        medium = sim_medium(config)
        return SymbolSounder(
            medium.links.channel,
            medium.noise_power_w if config.lab.medium.impairments.awgn else 0.0,
            config.lab.clients.tx_power_w,
            config.campaign.pilot_length,
            config.lab.receiver.rate_sps,
            config.lab.array.carrier_hz,
            config.campaign.captures_per_point,
        )
    return RadioSounder.open(config, formation)
