"""The OTA link over radios (testbed.air.phy + testbed.air.radio_airlink) against docs/explanation/system-model.md section 3
and against the symbol-level AirLink (sim.symbol_air)."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from allocation.aircomp import power_scale, zero_forcing_scalars
from drivers.errors import RadioLimitError
from drivers.radio import RadioSettings
from fl.airlink import AirLink
from sim.channel import FieldResponseChannel, wavelength_m
from sim.impairments import Impairments
from sim.links import FieldResponseLinks
from sim.medium import Medium
from sim.radio import SimRadio
from sim.symbol_air import SymbolAir
from testbed.air.phy import (
    GainCalibration,
    LinkEstimate,
    PilotConfig,
    PulseShape,
    common_amplitude,
    data_burst,
    zadoff_chu,
)
from testbed.air.radio_airlink import (
    RadioAirLink,
    RadioAirReceiver,
    RadioAirTransmitter,
    measure_aggregation,
    strongest_direction,
)
from testbed.config import ImpairmentsSection

WL = wavelength_m(2.4e9)
RATE = 1e6
CAL = GainCalibration(tx_gain_ref_db=60.0, rx_gain_ref_db=0.0)
K, N = 4, 4
POWER_W = 0.1
WEIGHTS = np.array([1.0, 2.0, 3.0, 4.0])
DEFAULTS = Impairments.from_config(ImpairmentsSection())  # CFO, drift, LO phase, timing, clipping
# Radios locked to one 10 MHz reference (the lab's set-up): no CFO, so none is estimated.
LOCKED = dataclasses.replace(DEFAULTS, cfo_hz_max=0.0)
LOCKED_PILOTS = PilotConfig(estimate_cfo=False)


def _lab(seed: int, noise_w: float, impairments: Impairments, pilots: PilotConfig | None = None):
    rng = np.random.default_rng(seed)
    channel = FieldResponseChannel.draw(rng, K, 10, WL, path_gain=1e-8)
    positions = np.stack([np.arange(N) * 0.6 * WL, np.zeros(N)], axis=1)
    medium = Medium(FieldResponseLinks(channel), rng, RATE, noise_w, impairments, 60.0, 0.0)
    settings = RadioSettings(tx_gain_db=60.0, rx_gain_db=30.0, max_tx_gain_db=75.0)
    radios = {k: SimRadio.client(medium, k, settings) for k in range(K)}
    rx = SimRadio.receiver(medium, N, positions, settings)
    pulse = PulseShape()
    link = RadioAirLink(
        RadioAirTransmitter(radios, POWER_W, CAL, pilots=pilots, pulse=pulse),
        RadioAirReceiver(rx, CAL, noise_w, pilots=pilots, pulse=pulse),
        lead_s=2e-4,
    )
    return link, channel, positions, medium


def _symbols(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 100)
    return rng.standard_normal((K, n)) + 1j * rng.standard_normal((K, n))


def _radio_trial(
    seed: int, noise_w: float, impairments: Impairments, n: int = 3000, pilots: PilotConfig = LOCKED_PILOTS
):
    link, channel, positions, _ = _lab(seed, noise_w, impairments, pilots)
    assert isinstance(link, AirLink)
    trial = measure_aggregation(
        link,
        list(range(K)),
        _symbols(seed, n),
        WEIGHTS,
        np.full(K, POWER_W),
        lambda: link.time_now() + 2e-4,
        channel.response(positions),
    )
    return trial, link, channel, positions


def test_zadoff_chu_is_constant_modulus_with_ideal_autocorrelation() -> None:
    z = zadoff_chu(25, 127)
    np.testing.assert_allclose(np.abs(z), 1.0, rtol=1e-12)
    corr = np.array([abs(np.vdot(z, np.roll(z, s))) for s in range(127)])
    assert corr[0] == pytest.approx(127)
    assert corr[1:].max() < 1e-9
    with pytest.raises(ValueError, match="coprime"):
        zadoff_chu(127, 127)


def test_pulse_shape_keeps_power_and_returns_the_symbols() -> None:
    pulse = PulseShape()
    s = _symbols(0, 3000)[0] / np.sqrt(2)
    x = pulse.shape(s)
    assert x.size == pulse.num_samples(s.size)
    assert np.mean(np.abs(x) ** 2) == pytest.approx(1.0, rel=0.05)  # per-sample power = symbol power
    back = pulse.matched(x, s.size)
    assert 10 * np.log10(np.mean(np.abs(back - s) ** 2)) < -50  # no ISI to speak of
    with pytest.raises(ValueError, match="rolloff"):
        PulseShape(rolloff=0.0)


def test_pilots_recover_cfo_timing_and_channel() -> None:
    imp = Impairments(cfo_hz_max=300.0, timing_offset_samples_max=0.45, random_lo_phase=False)
    link, channel, positions, medium = _lab(1, 1e-15, imp)
    clients = [0, 1, 2, 3]
    h = link.estimate_channels(clients)
    rx = medium.node("receiver")
    for i, k in enumerate(clients):
        est = link.receiver.estimate(k)
        tx = medium.node(f"client{k}")
        assert est.cfo_hz == pytest.approx(tx.cfo_hz - rx.cfo_hz, abs=0.5)
        assert est.delay_samples == pytest.approx(tx.delay_samples - rx.delay_samples, abs=0.01)
        # The channel carries the CFO's phase at the pilot's reference time.
        ref = est.reference_time_s
        want = channel.response(positions)[k] * np.exp(2j * np.pi * (tx.cfo_hz * ref - rx.cfo_hz * ref))
        assert np.linalg.norm(h[i] - want) < 0.01 * np.linalg.norm(want)
        assert est.snr_db > 30


def test_feedback_is_plain_json_and_round_trips() -> None:
    import json

    est = LinkEstimate(2, np.array([1 + 2j, -0.5j]), 12.5, 0.25, 1.5, 30.0, 1e-12)
    back = LinkEstimate.from_feedback(json.loads(json.dumps(est.feedback())))
    np.testing.assert_array_equal(back.channel, est.channel)
    assert (back.cfo_hz, back.delay_samples, back.reference_time_s) == (12.5, 0.25, 1.5)
    held = dataclasses.replace(est, phase_rad=-0.75)
    assert LinkEstimate.from_feedback(json.loads(json.dumps(held.feedback()))).phase_rad == -0.75
    old = {k: v for k, v in est.feedback().items() if k != "phase_rad"}  # a record from before the hold
    assert LinkEstimate.from_feedback(old).phase_rad == 0.0
    with pytest.raises(ValueError, match="malformed link feedback"):
        LinkEstimate.from_feedback({"client": 1})


def test_data_burst_stays_inside_full_scale() -> None:
    pulse = PulseShape()
    s = _symbols(2, 5000)[0]
    peak = float(np.max(np.abs(pulse.shape(s))))
    amplitude = common_amplitude(POWER_W, peak)
    b = np.sqrt(POWER_W) * np.exp(0.7j)  # the largest |b_k| the power cap allows
    x, _ = data_burst(s, b, amplitude, 0.0, RATE, None, pulse)
    assert max(np.abs(x.real).max(), np.abs(x.imag).max()) <= 1.0 + 1e-6
    assert np.abs(x).max() > 0.5  # and not needlessly small


def test_over_budget_scale_and_over_cap_gain_are_refused_before_anything_is_sent() -> None:
    link, _, _, medium = _lab(3, 1e-12, Impairments.none())
    with pytest.raises(ValueError, match="power budget"):
        link.send(0, np.ones(10), 2 * np.sqrt(POWER_W), link.time_now() + 1e-3)
    hot = RadioAirTransmitter(link.transmitter.radios, 100.0, CAL)  # needs +20 dB over a 75 dB cap
    with pytest.raises(RadioLimitError, match="max_tx_gain_db"):
        hot.send_pilot(0, link.time_now() + 1e-3)
    assert medium.pending_bursts == 0


def test_estimate_needs_pilots_first() -> None:
    link, _, _, _ = _lab(4, 1e-12, Impairments.none())
    with pytest.raises(Exception, match="capture its pilot first"):
        link.receiver.estimate_channels([0])


@pytest.mark.parametrize("noise_w", [3e-10, 3e-11, 3e-12])
def test_radio_and_symbol_links_give_the_same_nmse(noise_w: float) -> None:
    trial, link, channel, positions = _radio_trial(5, noise_w, LOCKED)
    symbol_link = SymbolAir(channel, positions, link.noise_power_w, np.random.default_rng(6))
    sym = measure_aggregation(
        symbol_link,
        list(range(K)),
        _symbols(5, 3000),
        WEIGHTS,
        np.full(K, POWER_W),
        1.0,
        channel.response(positions),
        combiner=trial.combiner,  # the same m: only the links differ
    )
    assert abs(10 * np.log10(trial.nmse / sym.nmse)) < 0.5


def test_radio_nmse_matches_theory_over_an_snr_sweep() -> None:
    gaps, levels = [], []
    for noise_w in (1e-9, 3e-10, 1e-10, 3e-11, 1e-11, 3e-12):
        trial, *_ = _radio_trial(7, noise_w, LOCKED)
        gaps.append(10 * np.log10(trial.nmse / trial.theory_nmse))
        levels.append(10 * np.log10(trial.theory_nmse))
    assert levels[0] > levels[-1] + 15  # the sweep spans the SNR range
    assert max(abs(g) for g in gaps) < 1.0, gaps


@pytest.mark.parametrize("seed", [1, 4])
def test_unlocked_radios_cfo_is_estimated_and_precompensated(seed: int) -> None:
    """Free-running radios (200 Hz CFO): the pilots find each link's CFO to a few Hz and the
    clients pre-compensate it; longer pilots and short bursts keep the residual phase walk small.
    (The CFO estimate's error, ~1 Hz at these pilot SNRs, is what limits longer bursts.)"""
    noise_w, pilots = 1e-11, PilotConfig(repeats=8)
    trial, link, *_ = _radio_trial(seed, noise_w, DEFAULTS, n=500, pilots=pilots)
    medium = link.transmitter.radios[0].medium
    rx = medium.node("receiver")
    truth = [medium.node(f"client{k}").cfo_hz - rx.cfo_hz for k in range(K)]
    assert max(abs(t) for t in truth) > 20  # there was CFO to fix
    for k in range(K):
        assert link.receiver.estimate(k).cfo_hz == pytest.approx(truth[k], abs=3.0)
    assert abs(10 * np.log10(trial.nmse / trial.theory_nmse)) < 1.5
    # The same link with the CFO left out of the feedback: the bursts spin and the sum is lost.
    for k in range(K):
        est = link.transmitter.estimate_of(k)
        link.transmitter.apply_feedback(k, dataclasses.replace(est, cfo_hz=0.0))
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((K, 500)) + 1j * rng.standard_normal((K, 500))
    at = link.time_now() + 2e-4
    m = trial.combiner
    h = link.receiver.estimate_channels(list(range(K)))
    eta = power_scale(m, h, np.full(K, POWER_W), WEIGHTS)
    for k, b in enumerate(zero_forcing_scalars(m, h, WEIGHTS, eta)):
        link.send(k, s[k], complex(b), at)
    est = link.collect(500, at, m) / np.sqrt(eta)
    truth_sum = WEIGHTS @ s
    spun = np.sum(np.abs(est - truth_sum) ** 2) / np.sum(np.abs(truth_sum) ** 2)
    assert spun > 10 * trial.nmse


def test_round_through_the_medium_server_across_processes_shape() -> None:
    """Every radio reached through ZeroMQ (as FL nodes in other processes would)."""
    pytest.importorskip("drivers.remote_radio")
    from sim.medium_server import MediumClient, MediumServer
    from sim.radio import build_sim_radios

    noise_w = 1e-11
    _, channel, positions, medium = _lab(8, noise_w, LOCKED, LOCKED_PILOTS)
    server = MediumServer(medium, "tcp://127.0.0.1:*", insecure=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_ms": 20}, daemon=True)
    thread.start()
    try:
        names = [(f"client{k}", 1) for k in range(K)] + [("receiver", N)]
        remote = build_sim_radios(names, medium_address=server.endpoint)
        moved = positions + 0.3 * WL
        MediumClient(server.endpoint).set_positions("receiver", moved)  # the stages moved
        settings = RadioSettings(tx_gain_db=60.0, rx_gain_db=30.0, max_tx_gain_db=75.0)
        for radio in remote:
            radio.configure(settings)
        pulse = PulseShape()
        link = RadioAirLink(
            RadioAirTransmitter(dict(enumerate(remote[:K])), POWER_W, CAL, LOCKED_PILOTS, pulse=pulse),
            RadioAirReceiver(remote[K], CAL, noise_w, LOCKED_PILOTS, pulse=pulse),
            lead_s=2e-4,
        )
        trial = measure_aggregation(
            link,
            list(range(K)),
            _symbols(8, 1000),
            WEIGHTS,
            np.full(K, POWER_W),
            lambda: link.time_now() + 2e-4,
            channel.response(moved),
        )
        assert abs(10 * np.log10(trial.nmse / trial.theory_nmse)) < 1.0
        for r in remote:
            r.close()
    finally:
        server.stop()
        thread.join(timeout=5)
        server.close()


def test_symbol_air_combined_fast_path_equals_combining_every_antenna() -> None:
    rng = np.random.default_rng(12)
    channel = FieldResponseChannel.draw(rng, K, 10, WL, path_gain=1e-8)
    positions = rng.uniform(-0.1, 0.1, (N, 2))
    air = SymbolAir(channel, positions, 0.0, rng)
    s = _symbols(12, 500)
    m = rng.standard_normal(N) + 1j * rng.standard_normal(N)
    for slot in (1.0, 2.0):
        for k in range(K):
            air.send(k, s[k][: 500 - 100 * (k == 2)], 0.3 - 0.1j * k, slot)  # one shorter burst
    fast = air.collect(500, 1.0, m)
    slow = np.conj(m) @ air.receive(500, 2.0)
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-18)
    noisy = SymbolAir(channel, positions, 2e-12, rng)
    z = noisy.collect(200_000, 3.0, m)  # nothing sent: only combined noise
    assert np.mean(np.abs(z) ** 2) == pytest.approx(2e-12 * np.sum(np.abs(m) ** 2), rel=0.02)


def test_fl_over_the_air_strategy_runs_over_the_radio_link() -> None:
    """fl's OTA strategy (normalise, pack two reals per symbol, precode, de-normalise) over the
    radio AirLink aggregates as well as over the symbol-level link."""
    from fl.aggregation import OverTheAir

    noise_w = 3e-11
    link, channel, positions, _ = _lab(13, noise_w, LOCKED, LOCKED_PILOTS)
    rng = np.random.default_rng(13)
    updates = {
        k: {
            "a": rng.standard_normal((16, 8)).astype(np.float32),
            "b": rng.standard_normal(33).astype(np.float32),
        }
        for k in range(K)
    }
    weights = {k: float(WEIGHTS[k]) for k in range(K)}
    # A combiner blind to each client's LO phase, which the radio path's H carries and the
    # symbol link's does not (fl's default matched sum is not).
    radio = OverTheAir(
        link, POWER_W, combiner=strongest_direction, slot_clock=lambda: link.time_now() + 2e-4
    ).aggregate(updates, weights)
    symbol_link = SymbolAir(channel, positions, link.noise_power_w, np.random.default_rng(14))
    symbol = OverTheAir(symbol_link, POWER_W, combiner=strongest_direction).aggregate(updates, weights)
    assert radio.update["a"].shape == (16, 8) and radio.update["b"].shape == (33,)
    assert radio.metrics["nmse"] < 0.1
    assert (
        abs(10 * np.log10(radio.metrics["nmse"] / symbol.metrics["nmse"])) < 3.0
    )  # 161 reals: a rough match


def test_radio_airlink_from_the_default_config_aggregates() -> None:
    """The wiring a lab uses: the config's radios on its medium, fl's OTA strategy on top."""
    from fl.aggregation import OverTheAir
    from testbed.air.radio_airlink import open_radio_airlink
    from testbed.config import load_config

    config = load_config(None, ["lab.clients.count=3"])
    medium = Medium.from_config(config.lab, np.random.default_rng(config.run.seed))
    link = open_radio_airlink(config, medium)
    try:
        assert link.transmitter.pilots.estimate_cfo  # the default medium's radios run free
        moved = medium.positions_of("receiver") + 0.01
        link.set_positions(moved)
        np.testing.assert_allclose(medium.positions_of("receiver"), moved)
        rng = np.random.default_rng(21)
        updates = {k: {"w": rng.standard_normal(120).astype(np.float32)} for k in range(3)}
        result = OverTheAir(
            link, config.lab.clients.tx_power_w, combiner=strongest_direction, slot_clock=link.slot_time_s
        ).aggregate(updates, {0: 1.0, 1: 2.0, 2: 1.0})
        assert result.update["w"].shape == (120,)
        assert result.metrics["nmse"] < 0.1
    finally:
        link.close()
    with pytest.raises(Exception, match="closed"):
        link.time_now()


def test_long_payloads_go_out_in_frames_with_fresh_pilots() -> None:
    """A client whose CFO estimate is ~2.6 Hz off (seed 9) loses an 8000-symbol burst to its
    phase walk; in 500-symbol frames, each after fresh pilots, the sum stays at the theory."""
    gaps = {}
    for frame in (None, 500):
        link, channel, positions, _ = _lab(9, 1e-11, DEFAULTS, PilotConfig(repeats=8))
        link.frame_symbols = frame
        trial = measure_aggregation(
            link,
            list(range(K)),
            _symbols(9, 8000),
            WEIGHTS,
            np.full(K, POWER_W),
            lambda link=link: link.time_now() + 2e-4,
            channel.response(positions),
        )
        gaps[frame] = 10 * np.log10(trial.nmse / trial.theory_nmse)
    assert gaps[None] > 3.0
    assert abs(gaps[500]) < 1.0


def test_pilot_rounds_hold_each_clients_phase_and_refine_its_cfo() -> None:
    """Two pilot rounds 20 ms apart: with 200 Hz of CFO the raw h_k turn by a random phase in
    between; held, the second H lies on the first (CSI noise only), and the client's bursts turn
    by the same angle, so the link shows the held channel. The phase advance between the rounds
    measures the CFO over 20 ms instead of one 1 ms pilot (no drift here: the refinement would
    track the drift's rate too). After a move every client starts afresh."""
    no_drift = dataclasses.replace(DEFAULTS, phase_drift_rad_s=0.0)
    link, _, positions, medium = _lab(9, 1e-11, no_drift, PilotConfig())
    clients = list(range(K))
    rx = medium.node("receiver")
    truth = np.array([medium.node(f"client{k}").cfo_hz - rx.cfo_hz for k in clients])
    first = link.estimate_channels(clients)
    one_round = np.array([link.receiver.estimate(k).cfo_hz for k in clients]) - truth
    medium.advance(0.02)
    second = link.estimate_channels(clients)
    two_rounds = np.array([link.receiver.estimate(k).cfo_hz for k in clients]) - truth
    turns = [link.receiver.estimate(k).phase_rad for k in clients]
    assert max(abs(np.angle(np.exp(1j * t))) for t in turns) > 0.3  # the raw phases did move
    for k in clients:
        assert np.linalg.norm(second[k] - first[k]) < 0.05 * np.linalg.norm(first[k])
        assert link.transmitter.estimate_of(k).phase_rad == link.receiver.estimate(k).phase_rad
    assert np.max(np.abs(one_round)) > 1.0  # one pilot leaves a visible error ...
    assert np.max(np.abs(two_rounds)) < 0.15  # ... that two rounds 20 ms apart remove
    medium.advance(1.0)  # too far apart for the phase advance to be unambiguous: held only
    link.estimate_channels(clients)
    far = np.array([link.receiver.estimate(k).cfo_hz for k in clients]) - truth
    assert np.max(np.abs(far)) > 0.3 and all(link.receiver.estimate(k).phase_rad != 0.0 for k in clients)
    link.set_positions(positions + 0.2 * WL)  # the antennas moved: other channels
    link.estimate_channels(clients)
    assert all(link.receiver.estimate(k).phase_rad == 0.0 for k in clients)
    raw = link.receiver.capture_pilots(clients, link.time_now() + 1e-3, POWER_W, hold_phase=False)
    assert all(raw[k].phase_rad == 0.0 for k in clients)


@pytest.mark.parametrize("seed", [4, 9])
def test_slot_far_after_the_pilots_precoded_on_an_earlier_round_reaches_theory(seed: int) -> None:
    """The order of an FL round (fl.coordinator): the planner estimates H and precodes, the
    coordinator estimates again, and the slot comes fl.transport.ota_guard_s (50 ms) later.
    Free-running radios (200 Hz CFO): each pilot round's h_k carries the CFO's phase at its own
    time, and ~1 Hz of CFO estimate error (2.6 Hz for a client of seed 9) walks the phase over
    the 50 ms. The phase hold keeps the b_k coherent across the rounds, and fresh pilots right
    before the first frame (their CFO refined over the 50 ms) keep the walk short, so the sum
    reaches the analytic MSE."""
    link, channel, positions, _ = _lab(seed, 1e-12, DEFAULTS, PilotConfig())
    link.frame_symbols = 2000  # open_radio_airlink's frames for free-running radios
    clients = list(range(K))
    pilot_times = []

    def slot_after_the_coordinators_estimate() -> float:
        link.estimate_channels(clients)  # after the planner has precoded on its own round
        pilot_times.append(link.receiver.estimate(0).reference_time_s)
        return link.time_now() + 0.05

    trial = measure_aggregation(
        link,
        clients,
        _symbols(seed, 3000),
        WEIGHTS,
        np.full(K, POWER_W),
        slot_after_the_coordinators_estimate,
        channel.response(positions),
    )
    assert 10 * np.log10(trial.theory_nmse) < -30  # low noise: a phase error would show
    assert abs(10 * np.log10(trial.nmse / trial.theory_nmse)) < 2.0
    assert link.receiver.estimate(0).reference_time_s > pilot_times[0] + 0.04  # fresh pilots went first
