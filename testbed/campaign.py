"""Channel measurement campaigns: raster the receive antennas over the region, sound every client.

``testbed measure CONFIG`` lands here. The shape of one campaign:

1. **Plan** (``plan_campaign``): a square grid over the whole region, edge to edge, with step
   ``campaign.step_wavelengths`` lambda (or the next smaller one that divides the region). The
   N antennas move together in a rigid formation: the grid's columns are cut into N strips of
   equal width (neighbouring strips share a column where N does not divide the column count),
   antenna n covers strip n, and all antennas visit the same (column-in-strip, row) at once, in
   snake order (or raster order). A rigid formation keeps every pairwise distance constant, so
   one check at plan time covers the whole campaign; the plan also says how close two paths come
   under the ``StageArray``'s conservative any-point test (below the clearance, the array runs
   those moves one antenna at a time). Every check (clearance, stage travel, radio backends)
   runs before any device is opened, so a bad config stops before anything moves.
2. **Per step**: move the formation, wait for it, read the positions back, then sound every client
   (``RadioSounder``: Zadoff-Chu pilots one client after another, or all at once with distinct
   roots separated by interference cancellation; or ``SymbolSounder``, the symbol-level sim air
   without a waveform) and estimate the channel per client per antenna, with its SNR.
3. **Record**: the raw IQ of each (step, client) as a SigMF recording (cf32_le, N interleaved
   channels, the antennas' positions in the ``spatial`` extension's ``element_geometry``, our
   keys in the declared ``ma_ota`` namespace), then one ``point`` event in ``events.jsonl``
   (flushed and fsynced by ``RunRecorder``). That event *is* the index: a step counts as done
   once its event is on disk, so ``--resume`` skips exactly those steps, and a step cut short by
   a crash is measured again (its half-written files overwritten), never recorded twice.
4. **At the end**: the tidy table (Parquet or CSV; one row per step x antenna x client, raw), the
   receive chains' relative gains from the shared columns (``estimate_chain_gains``), a ``.mat``
   export, the ``.sigmf-collection``, ``channel_map.npz`` (the gain map summed over clients,
   which the report draws behind the positions) and the report. ``testbed.channel_map`` turns
   the table into a channel model for the allocation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from drivers.errors import ConfigError, TestbedError
from testbed.config import TestbedConfig

log = logging.getLogger(__name__)

SIGMF_NAMESPACE = "ma_ota"
SIGMF_NAMESPACE_VERSION = "0.1.0"
SPATIAL_VERSION = "1.1.0"
COLLECTION_NAME = "campaign"
TABLE_COLUMNS = (
    "point",
    "antenna",
    "client",
    "ix",
    "iy",
    "x_m",
    "y_m",
    "x_read_m",
    "y_read_m",
    "h_re",
    "h_im",
    "snr_db",
    "radio_time_s",
    "time",
)
_GRID_TOL = 1e-9  # metres: float slack when fitting grid points into the region and travel


class CampaignError(TestbedError):
    """A campaign cannot start, resume or finish (bad run directory, config changed, ...)."""


# --- plan ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CampaignPlan:
    """The grid and who stands where at every step.

    ``x_m`` (nx,) and ``y_m`` (ny,) are the grid lines in region coordinates. ``cells`` is
    (steps, N, 2) integer (ix, iy) per antenna per step; ``positions_m`` the same in metres.
    """

    x_m: np.ndarray
    y_m: np.ndarray
    cells: np.ndarray
    strip_starts: tuple[int, ...]
    strip_width: int
    min_separation_m: float
    min_move_gap_m: float = math.inf  # closest two antennas' paths come during one formation move

    @property
    def num_steps(self) -> int:
        return int(self.cells.shape[0])

    @property
    def num_antennas(self) -> int:
        return int(self.cells.shape[1])

    @property
    def positions_m(self) -> np.ndarray:
        return np.stack([self.x_m[self.cells[..., 0]], self.y_m[self.cells[..., 1]]], axis=-1)

    def step_positions_m(self, step: int) -> np.ndarray:
        ix, iy = self.cells[step, :, 0], self.cells[step, :, 1]
        return np.stack([self.x_m[ix], self.y_m[iy]], axis=1)

    def step_distance_m(self, step: int) -> float:
        """How far the formation moves to reach ``step`` from the one before (0 for step 0)."""
        if step == 0:
            return 0.0
        d = self.step_positions_m(step) - self.step_positions_m(step - 1)
        return float(np.max(np.hypot(d[:, 0], d[:, 1])))


def grid_lines(region_m: float, step_m: float) -> np.ndarray:
    """Grid coordinates along one axis, edge to edge of the region (so a measured map covers
    every position the allocation may pick), at the largest step not above ``step_m``."""
    count = int(math.ceil(region_m / step_m - 1e-9)) + 1
    return np.linspace(-region_m / 2.0, region_m / 2.0, count)


def plan_campaign(
    region_m: float,
    step_m: float,
    num_antennas: int,
    min_spacing_m: float,
    order: str = "snake",
) -> CampaignPlan:
    """The formation raster of ``num_antennas`` antennas over the square region; see the module doc.

    Raises ``ConfigError`` naming the field to change when the grid cannot be covered with the
    antennas at least ``min_spacing_m`` apart.
    """
    if not (step_m > 0 and math.isfinite(step_m)):
        raise ConfigError(f"campaign.step_wavelengths: the raster step must be > 0 (got {step_m} m)")
    if order not in ("snake", "raster"):
        raise ConfigError(f"campaign.order: must be 'snake' or 'raster' (got {order!r})")
    if num_antennas < 1:
        raise ConfigError(f"lab.stages: need at least one antenna (got {num_antennas})")
    x = grid_lines(region_m, step_m)
    y = x.copy()
    nx, ny = x.size, y.size
    if nx < num_antennas:
        raise ConfigError(
            f"campaign.step_wavelengths: the grid has only {nx} columns for {num_antennas} antennas "
            f"(step {step_m:.4g} m over a {region_m:.4g} m region); use a smaller step or fewer stages"
        )
    width = math.ceil(nx / num_antennas)
    if num_antennas == 1:
        starts = [0]
    else:  # spread the strips evenly; where N does not divide nx, neighbours share a column
        starts = [round(n * (nx - width) / (num_antennas - 1)) for n in range(num_antennas)]
    gaps = np.diff(starts) if num_antennas > 1 else np.array([nx])
    grid_step_m = float(x[1] - x[0]) if nx > 1 else step_m  # edge to edge: may be under step_m
    separation = float(np.min(gaps) * grid_step_m) if num_antennas > 1 else math.inf
    if num_antennas > 1 and separation < min_spacing_m - _GRID_TOL:
        raise ConfigError(
            f"campaign: {num_antennas} antennas in strips of {width} columns stand only "
            f"{separation:.4g} m apart, below lab.array.min_spacing_wavelengths "
            f"({min_spacing_m:.4g} m); use fewer stages, a larger region or a smaller step"
        )
    cells = []
    for col in range(width):
        rows = range(ny)
        if order == "snake" and col % 2 == 1:
            rows = range(ny - 1, -1, -1)
        for row in rows:
            cells.append([(s + col, row) for s in starts])
    cells_arr = np.asarray(cells, dtype=int)
    return CampaignPlan(
        x_m=x,
        y_m=y,
        cells=cells_arr,
        strip_starts=tuple(int(s) for s in starts),
        strip_width=int(width),
        min_separation_m=separation,
        min_move_gap_m=_min_move_gap(cells_arr, starts, grid_step_m),
    )


def _min_move_gap(cells: np.ndarray, starts: list[int], step_m: float) -> float:
    """How close two antennas' straight paths come during a formation move (the conservative
    any-point-of-both-segments test the ``StageArray`` applies). The formation is rigid, so with
    offset o between two antennas and move d, that is the distance from o to the segment [-d, d]."""
    from drivers.stage_array import point_segment_distance

    if len(starts) < 2:
        return math.inf
    moves = {tuple(m) for m in np.diff(cells[:, 0, :], axis=0) * step_m}
    offsets = [((b - a) * step_m, 0.0) for i, a in enumerate(starts) for b in starts[i + 1 :]]
    return min(
        point_segment_distance(o, (-dx, -dy), (dx, dy)) for o in offsets for dx, dy in moves or {(0.0, 0.0)}
    )


def plan_from_config(config: TestbedConfig) -> CampaignPlan:
    """The campaign plan of a config, with every check that needs no device."""
    array = config.lab.array
    plan = plan_campaign(
        array.region_m,
        config.campaign.step_wavelengths * array.wavelength_m,
        config.lab.num_antennas,
        array.min_spacing_m,
        config.campaign.order,
    )
    check_stage_reach(config, plan)
    return plan


def check_stage_reach(config: TestbedConfig, plan: CampaignPlan) -> None:
    """Every antenna's strip must lie inside its stage's travel (origin .. origin + travel)."""
    positions = plan.positions_m  # (steps, N, 2)
    for n, (name, stage) in enumerate(config.lab.stages.items()):
        lo = np.asarray(stage.origin_m, dtype=float)
        hi = lo + stage.travel_m
        p = positions[:, n, :]
        low, high = p.min(axis=0), p.max(axis=0)
        if np.any(low < lo - _GRID_TOL) or np.any(high > hi + _GRID_TOL):
            raise ConfigError(
                f"lab.stages.{name}: its campaign strip spans x {low[0]:.4g}..{high[0]:.4g} m, "
                f"y {low[1]:.4g}..{high[1]:.4g} m, outside its travel "
                f"x {lo[0]:.4g}..{hi[0]:.4g} m, y {lo[1]:.4g}..{hi[1]:.4g} m "
                "(origin_m + travel_m); move the stage's origin_m or enlarge travel_m"
            )


# --- sounding -----------------------------------------------------------------------------------
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
    too much across a near-far gap without it): U times less air time for more computing. The raw capture (as the radio returned it) of
    each client's slot is kept for SigMF.
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

    def _sound_once(self) -> tuple[dict[int, Any], dict[int, np.ndarray], float]:
        from testbed.air.phy import estimate_link

        rate = self.sample_rate_sps
        p0 = self.pilots[0]
        slots = self.num_clients if self.mode == "sequential" else 1
        at_s = self.receiver.time_now() + self.lead_s
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
        return estimates, iq, float(got.start_time_s)

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
        hs, snrs, iqs, segments, t_first = [], [], [], [], None
        for _ in range(self.captures_per_point):
            estimates, iq, t = self._sound_once()
            t_first = t if t_first is None else t_first
            segments.append((sum(c[0].shape[1] for c in iqs), t))
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
        )

    def close(self) -> None:
        for radio in self._radios:
            try:
                radio.close()
            except Exception as exc:  # noqa: BLE001 - close the rest regardless
                log.warning("closing radio %s: %s", getattr(radio, "name", "?"), exc)
        for closer in self._closers:
            closer()


def _received_pilot(
    estimate: Any, pilots: Any, expected: int, amplitude: float, rate_sps: float, shape: tuple[int, ...]
) -> np.ndarray:
    """A client's pilot as the capture holds it, from its link estimate: the burst delayed by
    ``delay_samples`` (fractional part filtered), turned by its CFO from the expected start, times
    its channel at the pilot's amplitude. The inverse of ``air.phy.estimate_link``."""
    from sim.medium import fractional_delay

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


# --- motion -------------------------------------------------------------------------------------
class Formation(Protocol):
    """Moves all N antennas at once, in region coordinates, and waits until they have settled."""

    def move(self, positions_m: np.ndarray) -> np.ndarray:
        """Move antenna n to ``positions_m[n]``; return the positions read back (N x 2)."""
        ...

    def positions(self) -> np.ndarray:
        """The antennas' current positions (N x 2), e.g. for the sim medium to read."""
        ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


class StageFormation:
    """The ``Formation`` over a ``StageArray`` (``testbed.stages.open_stages``, which homes): one
    simultaneous move of every stage (the array checks travel and clearance before anything is
    sent), a wait for all of them (each driver waits its settle time), then the positions read
    back."""

    def __init__(self, array: Any, config: TestbedConfig) -> None:
        self.array = array
        self.names = list(config.lab.stages)
        stages = list(config.lab.stages.values())
        scale = [s.sim_time_scale if s.backend == "sim" else 1.0 for s in stages]
        # The emulators run their clock sim_time_scale times faster than the wall clock.
        self.time_scale = min(scale)
        self.settle_s = max(s.settle_s / k for s, k in zip(stages, scale, strict=True))
        self.speed_m_s = min(s.max_speed_m_s for s in stages)
        self.accel_m_s2 = min(s.accel_m_s2 for s in stages)
        self.command_timeout_s = max(s.command_timeout_s for s in stages)
        self._last: np.ndarray | None = None

    def move_time_s(self, distance_m: float) -> float:
        """Modeled wall time of a rest-to-rest move (the emulators' scaled clock included)."""
        from sim.motion import move_time_s

        return move_time_s(distance_m, self.speed_m_s, self.accel_m_s2) / self.time_scale

    def move(self, positions_m: np.ndarray) -> np.ndarray:
        from drivers.positioner import wait_all

        pos = np.asarray(positions_m, dtype=float).reshape(-1, 2)
        targets = {name: (float(x), float(y)) for name, (x, y) in zip(self.names, pos, strict=True)}
        here = self._last if self._last is not None else self.positions()
        distance = float(np.max(np.hypot(*(pos - here).T)))
        # Generous: the array may run the moves in batches, and a real stage is not a model.
        timeout = self.command_timeout_s + len(self.names) * 3.0 * self.move_time_s(distance) + 5.0
        wait_all(self.array.move_all(targets), timeout)
        self._last = self.positions()
        return self._last

    def positions(self) -> np.ndarray:
        read = self.array.positions()
        return np.asarray([read[name] for name in self.names], dtype=float)

    def stop(self) -> None:
        self._last = None
        self.array.stop_all()

    def close(self) -> None:
        self.array.close()


# --- recording ----------------------------------------------------------------------------------
_SIGMF_VALIDATED = False


def recording_name(step: int, client: int) -> str:
    return f"p{step:05d}_c{client:02d}"


def write_sigmf(
    captures_dir: Path,
    step: int,
    client: int,
    iq: np.ndarray,
    positions_m: np.ndarray,
    sample_rate_sps: float,
    carrier_hz: float,
    extra: dict[str, Any],
    segments: Sequence[tuple[int, float]] = ((0, 0.0),),
) -> Path:
    """One recording: the N antennas' IQ interleaved (cf32_le), their positions in
    ``spatial:element_geometry`` (metres, z = 0), our own keys under ``ma_ota:``. ``segments``
    are (first sample, radio time s) of each capture in it (several with captures_per_point)."""
    import sigmf
    from sigmf import SigMFFile

    iq = np.asarray(iq, dtype=np.complex64)
    num_elements = iq.shape[0]
    base = captures_dir / recording_name(step, client)
    data_path = base.with_suffix(".sigmf-data")
    # (samples, channels) in C order is SigMF's interleaving of multichannel data.
    np.ascontiguousarray(iq.T).tofile(data_path)
    meta = SigMFFile(
        data_file=data_path,
        global_info={
            sigmf.DATATYPE_KEY: "cf32_le",
            sigmf.SAMPLE_RATE_KEY: float(sample_rate_sps),
            sigmf.NUM_CHANNELS_KEY: int(num_elements),
            sigmf.DESCRIPTION_KEY: f"channel sounding: step {step}, client {client}",
            sigmf.RECORDER_KEY: "ma-ota-testbed campaign",
            sigmf.EXTENSIONS_KEY: [
                {"name": "spatial", "version": SPATIAL_VERSION, "optional": True},
                {"name": SIGMF_NAMESPACE, "version": SIGMF_NAMESPACE_VERSION, "optional": True},
            ],
            "spatial:num_elements": int(num_elements),
            "spatial:channel_index": 0,
            f"{SIGMF_NAMESPACE}:point": int(step),
            f"{SIGMF_NAMESPACE}:client": int(client),
            **{f"{SIGMF_NAMESPACE}:{k}": v for k, v in extra.items()},
        },
    )
    geometry = [{"point": [float(x), float(y), 0.0]} for x, y in np.asarray(positions_m, dtype=float)]
    for start, radio_time_s in segments:
        meta.add_capture(
            int(start),
            metadata={
                sigmf.FREQUENCY_KEY: float(carrier_hz),
                "spatial:element_geometry": geometry,
                f"{SIGMF_NAMESPACE}:radio_time_s": float(radio_time_s),
            },
        )
    # sigmf's validator re-checks the whole JSON schema on every call (~0.1 s); every recording
    # of a campaign has the same shape, so validate the first one this process writes.
    global _SIGMF_VALIDATED
    meta.tofile(base.with_suffix(".sigmf-meta"), overwrite=True, skip_validate=_SIGMF_VALIDATED)
    _SIGMF_VALIDATED = True
    return base.with_suffix(".sigmf-meta")


def write_collection(captures_dir: Path, names: Sequence[str], num_elements: int, description: str) -> Path:
    """The ``.sigmf-collection`` over the finished recordings (rewritten whole each time)."""
    import sigmf
    from sigmf.sigmffile import SigMFCollection

    collection = SigMFCollection(
        metafiles=[f"{name}.sigmf-meta" for name in names], base_path=captures_dir, skip_checksums=True
    )
    collection.set_collection_field(
        sigmf.EXTENSIONS_KEY,
        [
            {"name": "spatial", "version": SPATIAL_VERSION, "optional": True},
            {"name": SIGMF_NAMESPACE, "version": SIGMF_NAMESPACE_VERSION, "optional": True},
        ],
    )
    collection.set_collection_field(sigmf.DESCRIPTION_KEY, description)
    # The antennas move: each recording's captures carry their geometry, which takes priority.
    collection.set_collection_field("spatial:element_geometry", [{"unknown": True}] * num_elements)
    path = captures_dir / f"{COLLECTION_NAME}.sigmf-collection"
    tmp = captures_dir / f"{COLLECTION_NAME}.tmp"
    collection.tofile(tmp, overwrite=True)
    (captures_dir / f"{COLLECTION_NAME}.tmp.sigmf-collection").replace(path)
    return path


def point_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The tidy rows (one per antenna x client) of one ``point`` event's data."""
    h_re = np.asarray(record["h_re"], dtype=float)
    h_im = np.asarray(record["h_im"], dtype=float)
    snr = np.asarray(record["snr_db"], dtype=float)
    pos = np.asarray(record["positions_m"], dtype=float)
    read = np.asarray(record["read_m"], dtype=float)
    cells = np.asarray(record["cells"], dtype=int)
    rows = []
    for n in range(pos.shape[0]):
        for k in range(h_re.shape[0]):
            rows.append(
                {
                    "point": int(record["point"]),
                    "antenna": n,
                    "client": k,
                    "ix": int(cells[n, 0]),
                    "iy": int(cells[n, 1]),
                    "x_m": float(pos[n, 0]),
                    "y_m": float(pos[n, 1]),
                    "x_read_m": float(read[n, 0]),
                    "y_read_m": float(read[n, 1]),
                    "h_re": float(h_re[k, n]),
                    "h_im": float(h_im[k, n]),
                    "snr_db": float(snr[k, n]),
                    "radio_time_s": float(record.get("radio_time_s", 0.0)),
                    "time": float(record["time"]),
                }
            )
    return rows


def rows_to_columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    int_cols = {"point", "antenna", "client", "ix", "iy"}
    return {
        c: np.asarray([r[c] for r in rows], dtype=np.int64 if c in int_cols else np.float64)
        for c in TABLE_COLUMNS
    }


def write_table(run_dir: Path, columns: dict[str, np.ndarray], table_format: str) -> Path:
    """The tidy table: ``channels.parquet`` or ``channels.csv``, written atomically."""
    if table_format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = run_dir / "channels.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(pa.table({c: columns[c] for c in TABLE_COLUMNS}), tmp)
    elif table_format == "csv":
        path = run_dir / "channels.csv"
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write(",".join(TABLE_COLUMNS) + "\n")
            n = len(columns["point"])
            for i in range(n):
                f.write(",".join(repr(columns[c][i].item()) for c in TABLE_COLUMNS) + "\n")
    else:
        raise ConfigError(f"campaign.table_format: must be 'parquet' or 'csv' (got {table_format!r})")
    tmp.replace(path)
    return path


def read_table(path: str | Path) -> dict[str, np.ndarray]:
    """A campaign table (Parquet or CSV) as columns of numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise CampaignError(f"{path}: no campaign table (channels.parquet or channels.csv)")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return {c: table.column(c).to_numpy() for c in table.column_names}
    if path.suffix == ".csv":
        data = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
        return {c: np.atleast_1d(data[c]) for c in data.dtype.names or ()}
    raise CampaignError(f"{path}: a campaign table must be .parquet or .csv")


def find_table(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    for name in ("channels.parquet", "channels.csv"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise CampaignError(
        f"{run_dir}: no campaign table (channels.parquet or channels.csv); finish the campaign"
    )


def estimate_chain_gains(columns: dict[str, np.ndarray]) -> np.ndarray:
    """Each receive chain's complex gain relative to antenna 0's, from the cells two antennas
    both measured (the strips' shared columns).

    Real receivers differ per chain (LO phase after a retune, cable, gain): antenna n reports
    g_n h(r). Where antennas n and m measured the same cells, the least-squares ratio
    sum conj(h_m) h_n / sum |h_m|^2 estimates g_n / g_m; chaining the ratios from antenna 0 along
    the shared columns gives every g_n (g_0 = 1). An antenna that shares no cell with the others
    keeps g = 1 (nothing to tell). Divide antenna n's estimates by g_n to put all on one reference.
    """
    antenna = columns["antenna"].astype(int)
    num = int(antenna.max()) + 1 if antenna.size else 0
    h = columns["h_re"] + 1j * columns["h_im"]
    keys = np.stack([columns["client"], columns["iy"], columns["ix"]], axis=1).astype(int)
    per_antenna = []
    for n in range(num):
        sel = antenna == n
        per_antenna.append({tuple(key): value for key, value in zip(keys[sel], h[sel], strict=True)})
    ratio: dict[tuple[int, int], complex] = {}
    for n in range(num):
        for m in range(num):
            shared = per_antenna[n].keys() & per_antenna[m].keys() if n != m else set()
            if shared:
                hn = np.array([per_antenna[n][c] for c in shared])
                hm = np.array([per_antenna[m][c] for c in shared])
                power = float(np.vdot(hm, hm).real)
                if power > 0:
                    ratio[(n, m)] = complex(np.vdot(hm, hn) / power)  # g_n / g_m
    gains = np.full(num, np.nan + 0j)
    if num:
        gains[0] = 1.0
    frontier = [0] if num else []
    while frontier:  # breadth-first along the shared columns
        m = frontier.pop(0)
        for n in range(num):
            if np.isnan(gains[n]) and (n, m) in ratio:
                gains[n] = ratio[(n, m)] * gains[m]
                frontier.append(n)
    gains[np.isnan(gains)] = 1.0
    return gains


def grid_channels(
    columns: dict[str, np.ndarray],
    nx: int,
    ny: int,
    num_clients: int,
    chain_gains: np.ndarray | None = None,
) -> np.ndarray:
    """H on the grid, (U, ny, nx) complex: the mean over antennas that measured a cell (each
    divided by its ``chain_gains`` entry if given); NaN where none did."""
    total = np.zeros((num_clients, ny, nx), dtype=complex)
    count = np.zeros((num_clients, ny, nx))
    h = columns["h_re"] + 1j * columns["h_im"]
    if chain_gains is not None:
        h = h / np.asarray(chain_gains)[columns["antenna"].astype(int)]
    k, iy, ix = columns["client"].astype(int), columns["iy"].astype(int), columns["ix"].astype(int)
    np.add.at(total, (k, iy, ix), h)
    np.add.at(count, (k, iy, ix), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    out[count == 0] = np.nan + 1j * np.nan
    return out


def write_mat(
    run_dir: Path,
    columns: dict[str, np.ndarray],
    plan: CampaignPlan,
    h_grid: np.ndarray,
    chain_gains: np.ndarray | None = None,
) -> Path:
    """``campaign.mat`` for MATLAB: the grid, H (clients x ny x nx, complex, chain-corrected),
    the chain gains, and the raw table."""
    from scipy.io import savemat

    path = run_dir / "campaign.mat"
    tmp = run_dir / "campaign.tmp.mat"
    savemat(
        tmp,
        {
            "x_m": plan.x_m,
            "y_m": plan.y_m,
            "H": h_grid,
            "chain_gains": np.ones(plan.num_antennas) if chain_gains is None else chain_gains,
            "table": {c: columns[c] for c in TABLE_COLUMNS},
        },
        do_compression=True,
    )
    tmp.replace(path)
    return path


def write_channel_map(
    run_dir: Path, plan: CampaignPlan, h_grid: np.ndarray, chain_gains: np.ndarray | None = None
) -> Path:
    """``channel_map.npz``: the gain map summed over clients (what the report draws), and H."""
    with np.errstate(divide="ignore", invalid="ignore"):
        gain_db = 10.0 * np.log10(np.sum(np.abs(h_grid) ** 2, axis=0))
    path = run_dir / "channel_map.npz"
    tmp = run_dir / "channel_map.tmp.npz"
    gains = np.ones(plan.num_antennas, dtype=complex) if chain_gains is None else np.asarray(chain_gains)
    np.savez(
        tmp,
        x_m=plan.x_m,
        y_m=plan.y_m,
        gain_db=gain_db,
        h_re=h_grid.real,
        h_im=h_grid.imag,
        chain_gains=gains,
    )
    tmp.replace(path)
    return path


# --- the campaign -------------------------------------------------------------------------------
ProgressFn = Callable[[int, int], None]


@dataclass
class CampaignResult:
    run_dir: Path
    steps_total: int
    steps_measured: int
    steps_skipped: int
    wall_s: float
    table_path: Path | None = None
    report_path: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    step_wall_s: list[float] = field(default_factory=list)  # per step measured in this process
    step_model_s: list[float] = field(default_factory=list)  # modeled move + settle + air time

    def point_timing(self) -> tuple[float, float]:
        """(mean wall s, mean modeled s) per step, over the steps with a model (not the first)."""
        pairs = [(w, m) for w, m in zip(self.step_wall_s, self.step_model_s, strict=True) if m == m]
        if not pairs:
            return float("nan"), float("nan")
        wall, model = zip(*pairs, strict=True)
        return float(np.mean(wall)), float(np.mean(model))


def completed_steps(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The index: step -> its ``point`` record, from a run's events (first record of each wins)."""
    done: dict[int, dict[str, Any]] = {}
    for doc in events:
        if doc.get("kind") == "point":
            data = doc["data"]
            done.setdefault(int(data["point"]), data)
    return done


def step_rng(seed: int, step: int) -> np.random.Generator:
    """Each step's own noise stream: a resumed campaign draws what an unbroken one would."""
    return np.random.default_rng([int(seed), 0xCA, int(step)])


class Campaign:
    """Runs (or resumes) one campaign over already-opened devices; see the module doc."""

    def __init__(
        self,
        config: TestbedConfig,
        plan: CampaignPlan,
        formation: Formation,
        sounder: Sounder,
        recorder: Any,
    ) -> None:
        self.config = config
        self.plan = plan
        self.formation = formation
        self.sounder = sounder
        self.recorder = recorder

    def run(self, progress: ProgressFn | None = None, stop_after: int | None = None) -> CampaignResult:
        """Measure every step not yet in the index. ``stop_after`` ends early after that many new
        steps (tests use it to cut a campaign short without a crash)."""
        t0 = time.monotonic()
        rec = self.recorder
        done = completed_steps(rec.events())
        total = self.plan.num_steps
        result = CampaignResult(rec.run_dir, total, 0, len(done), 0.0)
        if done:
            log.info("resuming: %d of %d steps already measured", len(done), total)
        if progress:
            progress(len(done), total)
        here: np.ndarray | None = None
        for step in range(total):
            if step in done:
                continue
            if stop_after is not None and result.steps_measured >= stop_after:
                break
            target = self.plan.step_positions_m(step)
            t_step = time.monotonic()
            record = self._measure_step(step, target)
            result.step_wall_s.append(time.monotonic() - t_step)
            result.step_model_s.append(self._model_step_s(here, target))
            here = np.asarray(record["read_m"])
            rec.event("point", **record)  # flushed + fsynced: from now on the step is done
            done[step] = _jsonable(record)
            result.steps_measured += 1
            if progress:
                progress(len(done), total)
        if len(done) == total:
            self.finish(done, result)
        result.wall_s = time.monotonic() - t0
        return result

    def _model_step_s(self, here: np.ndarray | None, target: np.ndarray) -> float:
        """What one step should take: the modeled move (scaled clock included), settle, air time."""
        move_time = getattr(self.formation, "move_time_s", None)
        if here is None or move_time is None:
            return float("nan")  # the first move starts wherever homing left the stages
        distance = float(np.max(np.hypot(*(target - here).T)))
        return move_time(distance) + getattr(self.formation, "settle_s", 0.0) + self.sounder.capture_time_s()

    def _measure_step(self, step: int, target: np.ndarray) -> dict[str, Any]:
        """Move, sound, write the step's SigMF; return its index record (not yet appended)."""
        rec = self.recorder
        read = np.asarray(self.formation.move(target), dtype=float).reshape(-1, 2)
        sounding = self.sounder.sound(read, step_rng(self.config.run.seed, step))
        files = []
        if self.config.campaign.save_iq and sounding.iq:
            for client, iq in sorted(sounding.iq.items()):
                meta_path = write_sigmf(
                    rec.captures_dir,
                    step,
                    client,
                    iq,
                    read,
                    self.sounder.sample_rate_sps,
                    self.sounder.carrier_hz,
                    {
                        "h_re": sounding.h[client].real.tolist(),
                        "h_im": sounding.h[client].imag.tolist(),
                        "snr_db": sounding.snr_db[client].tolist(),
                        "radio_time_s": float(sounding.radio_time_s),
                        **sounding.meta.get(client, {}),
                    },
                    sounding.segments,
                )
                files.append(meta_path.stem)
        return {
            "point": step,
            "cells": self.plan.cells[step],
            "positions_m": target,
            "read_m": read,
            "h_re": sounding.h.real,
            "h_im": sounding.h.imag,
            "snr_db": sounding.snr_db,
            "radio_time_s": float(sounding.radio_time_s),
            "recordings": files,
            "time": time.time(),
        }

    def finish(self, done: dict[int, dict[str, Any]], result: CampaignResult) -> None:
        """Table, .mat, collection, gain map and summary from the index (the report comes after
        the stop record, in ``run_campaign``)."""
        rec = self.recorder
        rows = [row for step in sorted(done) for row in point_rows(done[step])]
        columns = rows_to_columns(rows)
        result.table_path = write_table(rec.run_dir, columns, self.config.campaign.table_format)
        gains = estimate_chain_gains(columns)
        h_grid = grid_channels(
            columns, self.plan.x_m.size, self.plan.y_m.size, self.sounder.num_clients, gains
        )
        write_mat(rec.run_dir, columns, self.plan, h_grid, gains)
        write_channel_map(rec.run_dir, self.plan, h_grid, gains)
        names = [name for step in sorted(done) for name in done[step].get("recordings", [])]
        if names:
            write_collection(
                rec.captures_dir,
                names,
                self.plan.num_antennas,
                f"channel measurement campaign {rec.run_dir.name}",
            )
        snr = columns["snr_db"]
        result.summary = {
            "kind": "campaign",
            "steps": result.steps_total,
            "grid_nx": int(self.plan.x_m.size),
            "grid_ny": int(self.plan.y_m.size),
            "num_antennas": self.plan.num_antennas,
            "num_clients": self.sounder.num_clients,
            "rows": int(snr.size),
            "recordings": len(names),
            "snr_db_median": float(np.median(snr)) if snr.size else None,
            "region_m": self.config.lab.array.region_m,
            "table": result.table_path.name,
            "chain_gain_db": (20 * np.log10(np.abs(gains))).round(3).tolist(),
            "chain_phase_deg": np.degrees(np.angle(gains)).round(2).tolist(),
        }
        wall, model = result.point_timing()
        if wall == wall:  # timing of the steps this process measured (a resume measures fewer)
            result.summary.update(
                point_wall_s=wall, point_model_s=model, point_ratio=wall / model if model > 0 else None
            )
        rec.write_summary(result.summary)


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    """The record as it reads back from events.jsonl (arrays as lists), so rows agree either way."""
    import json

    from testbed.records import to_json

    return json.loads(to_json(record))


# --- devices and the whole run ------------------------------------------------------------------
def _all_sim_radios(config: TestbedConfig) -> bool:
    return config.lab.receiver.backend == "sim" and config.lab.clients.radio.backend == "sim"


def check_config(config: TestbedConfig) -> CampaignPlan:
    """Everything that can be checked before a device is opened; returns the plan."""
    plan = plan_from_config(config)
    if config.campaign.sounder == "symbol" and not _all_sim_radios(config):
        raise ConfigError(
            "campaign.sounder: 'symbol' needs simulated radios (lab.receiver.backend and "
            "lab.clients.radio.backend = sim); use 'radio' with real radios"
        )
    if config.campaign.sounder == "radio":
        receiver, clients = config.lab.receiver, config.lab.clients.radio
        if (receiver.backend == "sim") != (clients.backend == "sim"):
            raise ConfigError(
                f"lab.receiver.backend={receiver.backend!r} with lab.clients.radio.backend="
                f"{clients.backend!r}: a simulated receiver cannot hear real clients (or the other way "
                "round); make both sim or both usrp"
            )
        if receiver.backend == "sim" and (receiver.server or clients.server):
            raise ConfigError(
                "lab.receiver.server / lab.clients.radio.server: a campaign needs the sim medium in "
                "this process (it reads the stage positions); leave the sim radios' server empty"
            )
        if receiver.backend != "sim":
            _client_sections(config)
    return plan


def _client_sections(config: TestbedConfig) -> list[Any]:
    """Each real client's radio section, pointed at its own radio server."""
    clients = config.lab.clients
    if clients.radio_servers:
        return [clients.radio.model_copy(update={"server": addr}) for addr in clients.radio_servers]
    if clients.count == 1:
        return [clients.radio]
    raise ConfigError(
        f"lab.clients.radio_servers: {clients.count} real clients need one radio server address each "
        "(got none)"
    )


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


def open_formation(config: TestbedConfig) -> StageFormation:
    """The stages as one formation (``open_stages`` homes those with ``home_on_start``)."""
    from testbed.stages import open_stages

    return StageFormation(open_stages(config), config)


def _resolved_yaml(config: TestbedConfig) -> str:
    from testbed.config import to_yaml

    return to_yaml(config)


def run_campaign(
    config: TestbedConfig | None = None,
    resume_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    stop_after: int | None = None,
) -> CampaignResult:
    """Plan, open the devices, measure (or resume), finish; closes every device on any exit.

    With ``resume_dir`` the run's own ``config.yaml`` is used; a ``config`` given as well must
    resolve to the same YAML, so a resumed campaign never mixes two settings.
    """
    from testbed.config import load_config
    from testbed.records import RecordError, RunRecorder

    if resume_dir is not None:
        resume_dir = Path(resume_dir)
        stored_path = resume_dir / "config.yaml"
        if not stored_path.is_file():
            raise CampaignError(f"--resume {resume_dir}: not a run directory (no config.yaml)")
        stored = load_config(stored_path)
        if config is not None and _resolved_yaml(config) != _resolved_yaml(stored):
            raise CampaignError(
                f"--resume {resume_dir}: the given config differs from the run's config.yaml; "
                "resume without CONFIG/--set, or start a new campaign"
            )
        config = stored
    if config is None:
        raise CampaignError("run_campaign: give a config or a run directory to resume")
    plan = check_config(config)  # a bad config stops here, before any device is opened
    if plan.min_move_gap_m < config.lab.array.min_spacing_m - _GRID_TOL:
        log.warning(
            "formation moves bring antennas' paths %.4g m apart, under the %.4g m clearance: the "
            "stage array will run those moves one antenna at a time (slower, still safe); a smaller "
            "campaign.step_wavelengths avoids it",
            plan.min_move_gap_m,
            config.lab.array.min_spacing_m,
        )

    if resume_dir is not None:
        try:
            recorder = RunRecorder.reopen(resume_dir)
        except RecordError as exc:
            raise CampaignError(str(exc)) from None
        events = recorder.events()
        start = next((d for d in events if d.get("doc") == "start"), {})
        if start.get("kind") != "campaign":
            recorder.close()
            raise CampaignError(
                f"--resume {resume_dir}: not a campaign run (its start record is "
                f"{start.get('kind', 'missing')!r}); `testbed run --resume` continues experiments"
            )
        recorder.event("resume", steps_done=len(completed_steps(events)))
    else:
        recorder = RunRecorder.create(config.run.output_dir, config.run.name, _resolved_yaml(config))
        recorder.start(
            kind="campaign",
            num_clients=config.lab.clients.count,
            num_antennas=plan.num_antennas,
            region_m=config.lab.array.region_m,
            steps=plan.num_steps,
            grid_x_m=plan.x_m,
            grid_y_m=plan.y_m,
            strip_starts=plan.strip_starts,
            seed=config.run.seed,
        )
    recorder.attach_log()
    status, reason = "error", ""
    formation: Formation | None = None
    sounder: Sounder | None = None
    try:
        formation = open_formation(config)
        sounder = open_sounder(config, formation)
        result = Campaign(config, plan, formation, sounder, recorder).run(progress, stop_after)
        done = result.steps_skipped + result.steps_measured
        status = "completed" if done == result.steps_total else "partial"
        reason = f"{done} of {result.steps_total} steps measured"
        return result
    except KeyboardInterrupt:
        status, reason = "interrupted", "Ctrl-C or SIGTERM"
        raise
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _close_quietly(formation, sounder)
        try:
            recorder.stop(status, reason)
            if status == "completed":
                from testbed.report import write_report

                result.report_path = write_report(recorder.run_dir)
        finally:
            recorder.close()


def _close_quietly(formation: Formation | None, sounder: Sounder | None) -> None:
    """Stages stopped and closed, radios closed: each attempted even if another fails."""
    for action in (
        getattr(formation, "stop", None),
        getattr(formation, "close", None),
        getattr(sounder, "close", None),
    ):
        if action is None:
            continue
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - closing must go on; the first error is already raised
            log.warning("while closing: %s: %s", type(exc).__name__, exc)
