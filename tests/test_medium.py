"""The simulated medium: channel at current positions, gains, impairments, clock, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from drivers.errors import RadioError, RadioLimitError, RadioTimingError
from drivers.radio import RadioSettings
from sim.channel import FieldResponseChannel, wavelength_m
from sim.impairments import Impairments, fractional_delay
from sim.links import FieldResponseLinks, IdealLinks
from sim.medium import Medium
from sim.radio import SimRadio
from testbed.config import load_config

RATE = 1e6
WL = wavelength_m(2.4e9)


def _air(impairments: Impairments, seed: int = 0, noise_w: float = 0.0, clients: int = 2, **kw):
    rng = np.random.default_rng(seed)
    ch = FieldResponseChannel.draw(rng, clients, 6, WL, path_gain=1e-6)
    medium = Medium(
        FieldResponseLinks(ch), rng, RATE, noise_w, impairments, tx_gain_ref_db=60.0, rx_gain_ref_db=0.0, **kw
    )
    return medium, ch


def _pair(medium: Medium, positions, tx_gain_db: float = 60.0, rx_gain_db: float = 0.0):
    settings = RadioSettings(tx_gain_db=tx_gain_db, rx_gain_db=rx_gain_db, max_tx_gain_db=70.0)
    tx = SimRadio.client(medium, 0, settings)
    rx = SimRadio.receiver(medium, len(positions) if not callable(positions) else 3, positions, settings)
    return tx, rx


def _tone(n: int) -> np.ndarray:
    return np.full(n, 0.5 + 0.0j, dtype=np.complex64)


def test_capture_is_the_channel_at_the_current_positions() -> None:
    medium, ch = _air(Impairments.none())
    where = {"pos": np.array([[0.0, 0.0], [0.3 * WL, 0.1 * WL], [1.2 * WL, -0.7 * WL]])}
    tx, rx = _pair(medium, lambda: where["pos"])
    x = (np.random.default_rng(5).standard_normal(64) * 0.3).astype(np.complex64)
    for _ in range(2):
        t = rx.time_now() + 1e-3
        tx.transmit(x, t)
        y = rx.receive(64, t).samples
        h = ch.response(where["pos"])[0]
        np.testing.assert_allclose(y, h[:, None] * x[None, :], rtol=2e-5, atol=1e-12)
        where["pos"] = where["pos"] + 0.25 * WL  # the stages moved: the next capture sees it


def test_gains_map_to_amplitude() -> None:
    medium, _ = _air(Impairments.none())
    medium.add_client("a", 0)
    medium.add_receiver("r", 1, np.zeros((1, 2)))
    medium.links = IdealLinks(1.0)
    tx = SimRadio(medium, "a", RadioSettings(tx_gain_db=50.0, rx_gain_db=0.0))
    rx = SimRadio(medium, "r", RadioSettings(tx_gain_db=0.0, rx_gain_db=20.0))
    tx.transmit(_tone(10), 1e-3)
    y = rx.receive(10, 1e-3).samples
    # -10 dB of TX amplitude (0.316) times +20 dB of RX amplitude (10): 0.5 * 3.16
    np.testing.assert_allclose(np.abs(y), 0.5 * 10 ** (-10 / 20) * 10.0, rtol=1e-5)


def test_awgn_has_the_configured_power() -> None:
    medium, _ = _air(Impairments(awgn=True), noise_w=1e-10)
    _, rx = _pair(medium, np.zeros((2, 2)), rx_gain_db=10.0)
    y = rx.receive(20000, 1e-3).samples
    power = np.mean(np.abs(y) ** 2, axis=1)
    np.testing.assert_allclose(power, 1e-10 * 10.0, rtol=0.05)
    assert abs(np.mean(y.real * y.imag)) < 0.05 * power.mean()  # circular


def test_awgn_switch_off_gives_silence() -> None:
    medium, _ = _air(Impairments(awgn=False), noise_w=1e-10)
    _, rx = _pair(medium, np.zeros((1, 2)))
    assert np.all(rx.receive(100, 1e-3).samples == 0)


def test_cfo_rotates_at_the_relative_offset() -> None:
    medium, ch = _air(Impairments(awgn=False, cfo_hz_max=500.0))
    tx, rx = _pair(medium, np.zeros((1, 2)))
    tx.transmit(_tone(4000), 1e-3)
    y = rx.receive(4000, 1e-3).samples[0]
    slope = np.angle(np.sum(y[1:] * np.conj(y[:-1]))) * RATE / (2 * np.pi)
    want = medium.node(tx.name).cfo_hz - medium.node(rx.name).cfo_hz
    assert abs(want) > 1.0
    assert slope == pytest.approx(want, abs=0.01)
    np.testing.assert_allclose(np.abs(y), 0.5 * np.abs(ch.response(np.zeros((1, 2)))[0, 0]), rtol=1e-4)


def test_lo_phase_is_redrawn_at_retune_only() -> None:
    medium, _ = _air(Impairments(awgn=False, random_lo_phase=True))
    tx, rx = _pair(medium, np.zeros((1, 2)))

    def phase() -> float:
        t = rx.time_now() + 1e-3
        tx.transmit(_tone(8), t)
        return float(np.angle(rx.receive(8, t).samples[0, 0]))

    first = phase()
    tx.configure(dataclasses.replace(tx.settings, tx_gain_db=55.0))  # a gain change is no retune
    assert phase() == pytest.approx(first, abs=1e-5)
    tx.configure(dataclasses.replace(tx.settings, frequency_hz=2.401e9))
    rx.configure(dataclasses.replace(rx.settings, frequency_hz=2.401e9))
    assert abs(np.angle(np.exp(1j * (phase() - first)))) > 1e-3


def test_phase_drift_is_smooth_at_the_configured_rms_rate() -> None:
    medium, _ = _air(Impairments(awgn=False, phase_drift_rad_s=2.0), seed=3)
    node = medium.add_client("x", 0)
    block_s = 1024 / RATE
    phase = medium.oscillators.drift(node, 0, int(400 / block_s))  # 400 s of drift
    rate = np.diff(phase) / block_s
    assert np.sqrt(np.mean(rate**2)) == pytest.approx(2.0, rel=0.15)
    assert np.max(np.abs(np.diff(rate))) * block_s < 0.01  # smooth: the rate barely moves per block


def test_fractional_timing_offset_delays_by_the_node_difference() -> None:
    medium, _ = _air(Impairments(awgn=False, timing_offset_samples_max=0.5), seed=7)
    medium.links = IdealLinks(1.0)
    tx, rx = _pair(medium, np.zeros((1, 2)))
    n = 512
    spectrum_limited = np.fft.ifft(np.r_[np.ones(n // 4), np.zeros(n // 2), np.ones(n // 4)]).astype(
        np.complex64
    )
    tx.transmit(spectrum_limited * 1.5, 1e-3)
    y = rx.receive(n + 40, 1e-3 - 20 / RATE).samples[0]
    delay = medium.node(tx.name).delay_samples - medium.node(rx.name).delay_samples
    assert abs(delay) > 0.05
    # the delayed copy of a band-limited burst is its ideal (sinc-interpolated) shift
    off, ideal = fractional_delay(spectrum_limited[None, :] * 1.5, delay)
    got = y[20 + off : 20 + off + ideal.shape[1]]
    assert np.linalg.norm(got - ideal[0]) < 1e-5 * np.linalg.norm(ideal)
    freq = np.fft.fftfreq(n)
    phase = np.angle(np.fft.fft(y[20 : 20 + n])[1:20] / np.fft.fft(spectrum_limited * 1.5)[1:20])
    est = -np.polyfit(2 * np.pi * freq[1:20], np.unwrap(phase), 1)[0]
    assert est == pytest.approx(delay, abs=0.02)


def test_dac_clips_each_rail_to_full_scale() -> None:
    for clipping, want in ((True, 1.0 + 0.25j), (False, 3.0 + 0.25j)):
        medium, _ = _air(Impairments(awgn=False, dac_clipping=clipping))
        medium.links = IdealLinks(1.0)
        tx, rx = _pair(medium, np.zeros((1, 2)))
        tx.transmit(np.full(4, 3.0 + 0.25j, np.complex64), 1e-3)
        assert rx.receive(4, 1e-3).samples[0, 0] == pytest.approx(want, rel=1e-6)


def test_same_seed_same_samples() -> None:
    def run() -> np.ndarray:
        medium, _ = _air(
            Impairments(
                cfo_hz_max=100, phase_drift_rad_s=1, timing_offset_samples_max=0.3, random_lo_phase=True
            ),
            seed=11,
            noise_w=1e-14,
        )
        tx, rx = _pair(medium, np.zeros((2, 2)))
        tx.transmit(_tone(300), 2e-3)
        return rx.receive(400, 2e-3 - 50 / RATE).samples

    np.testing.assert_array_equal(run(), run())


def test_capture_history_lets_a_second_radio_capture_the_same_window() -> None:
    medium, _ = _air(Impairments.none(), capture_history_s=0.01)
    medium.links = IdealLinks(1.0)
    tx, rx = _pair(medium, np.zeros((1, 2)))
    rx2 = SimRadio.receiver(medium, 1, np.zeros((1, 2)), rx.settings, name="rx2")
    tx.transmit(_tone(20), 1e-3)
    a = rx.receive(20, 1e-3).samples
    b = rx2.receive(20, 1e-3).samples  # already past, within the history
    np.testing.assert_array_equal(a, b)
    with pytest.raises(RadioTimingError) as info:
        rx2.receive(20, 1e-3 - 0.02)
    assert info.value.code == "late"


def test_pps_aligns_local_clocks() -> None:
    medium, _ = _air(Impairments.none())
    tx, rx = _pair(medium, np.zeros((1, 2)))
    medium.advance_to(2.4)
    tx.set_time_next_pps(0.0)
    rx.set_time_next_pps(0.0)
    assert tx.time_now() == pytest.approx(-0.6) and rx.time_now() == pytest.approx(-0.6)
    medium.advance(0.6)
    assert tx.time_now() == pytest.approx(0.0, abs=1e-9)


def test_bad_input_is_refused_with_reasons() -> None:
    medium, _ = _air(Impairments.none())
    tx, rx = _pair(medium, np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\(n,\) or \(1, n\)"):
        tx.transmit(np.zeros((2, 5), np.complex64), 1e-3)
    with pytest.raises(ValueError, match="NaN"):
        tx.transmit(np.array([np.nan], np.complex64), 1e-3)
    with pytest.raises(ValueError, match="channels"):
        rx.receive(5, 1e-3, channels=[2])
    with pytest.raises(RadioLimitError, match="rate_sps"):
        rx.configure(dataclasses.replace(rx.settings, rate_sps=2e6))
    with pytest.raises(RadioError, match="no node"):
        medium.node("nobody")
    with pytest.raises(ValueError, match="positions"):
        medium.set_positions(rx.name, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="cfo_hz_max"):
        Impairments(cfo_hz_max=-1.0)
    rx.close()
    with pytest.raises(RadioError, match="closed"):
        rx.time_now()


def test_from_config_builds_the_lab() -> None:
    config = load_config(None, ["lab.clients.count=3"])
    medium = Medium.from_config(config.lab, np.random.default_rng(0))
    assert medium.node_names == ["client0", "client1", "client2", "receiver"]
    assert medium.node("receiver").num_antennas == config.lab.num_antennas
    assert medium.noise_power_w == pytest.approx(1e-12)
    assert medium.impairments.cfo_hz_max == config.lab.medium.impairments.cfo_hz_max


def test_medium_server_process_serves_radios_and_the_clock() -> None:
    """``python -m sim.medium_server --ideal`` in its own process; radios and medium ops reach it."""
    import subprocess
    import sys

    from sim.medium_server import MediumClient
    from sim.radio import build_sim_radios

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sim.medium_server",
            "--ideal",
            "tx0,rx:2",
            "--bind",
            "tcp://127.0.0.1:0",
            "--insecure",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # READY <endpoint> nodes=...
        assert line.startswith("READY "), (line, proc.stderr.read() if proc.poll() is not None else "")
        endpoint = line.split()[1]
        tx, rx = build_sim_radios([("tx0", 1), ("rx", 2)], medium_address=endpoint)
        client = MediumClient(endpoint)
        client.advance_to(0.5)
        assert tx.time_now() == pytest.approx(0.5)
        x = (0.25 * np.exp(1j * np.arange(40) / 3.0)).astype(np.complex64)
        tx.transmit(x, 0.501)
        y = rx.receive(40, 0.501).samples
        np.testing.assert_allclose(y, np.stack([x, x]), rtol=1e-6)
        info = client.info()
        assert {n["name"] for n in info["nodes"]} == {"tx0", "rx"}
        assert info["time_s"] == pytest.approx(0.501 + 40e-6)
        for radio in (tx, rx):
            radio.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_medium_client_reports_bad_requests_and_a_missing_server() -> None:
    import threading
    import time

    from sim.medium_server import MediumClient, MediumServer
    from sim.radio import build_sim_radios, ideal_medium

    medium = ideal_medium(2)
    build_sim_radios([("tx0", 1), ("rx", 2)], medium=medium)
    server = MediumServer(medium, "tcp://127.0.0.1:*", insecure=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_ms": 20}, daemon=True)
    thread.start()
    try:
        client = MediumClient(server.endpoint)
        with pytest.raises(RadioError, match="no node 'nobody'"):
            client.set_positions("nobody", np.zeros((2, 2)))
        with pytest.raises(RadioError, match="positions"):
            client.set_positions("rx", np.zeros((3, 2)))  # rx has two antennas
        with pytest.raises(RadioError, match="time_s"):
            client._call("medium_advance_to", {"time_s": "soon"})
        client.set_positions("rx", [[0.0, 0.0], [0.1, 0.0]])
        assert client.info()["nodes"][1]["positions_m"] == [[0.0, 0.0], [0.1, 0.0]]
    finally:
        server.stop()
        thread.join(timeout=5)
        server.close()
    gone = MediumClient(server.endpoint, timeout_s=0.3)
    start = time.monotonic()
    with pytest.raises(RadioError, match="medium server"):
        gone.info()
    assert time.monotonic() - start < 3.0  # a clear error, never a hang


def test_a_round_draws_the_same_air_whether_resumed_or_not() -> None:
    """Issue 18 point 20: the noise, the oscillators' drift and the clock are keyed by round
    (``start_round`` + ``reseed`` with a (seed, stream, round) generator), so round 3 of a medium
    that ran rounds 1 and 2 captures exactly what round 3 of a fresh one (a resumed run) does."""
    imp = Impairments(
        cfo_hz_max=100, phase_drift_rad_s=2.0, timing_offset_samples_max=0.3, random_lo_phase=True
    )

    def rounds(which: list[int]) -> np.ndarray:
        medium, _ = _air(imp, seed=11, noise_w=1e-14)
        tx, rx = _pair(medium, np.zeros((2, 2)))
        got = None
        for r in which:
            medium.start_round(r)
            medium.reseed(np.random.default_rng([11, 21, r]))
            for _ in range(3 if r < 3 else 1):  # earlier rounds use the air more than once
                t = rx.time_now() + 0.5
                tx.transmit(_tone(300), t)
                got = rx.receive(400, t - 50 / RATE).samples
        assert got is not None
        return got

    np.testing.assert_array_equal(rounds([1, 2, 3]), rounds([3]))
