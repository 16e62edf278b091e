"""Contract tests of ``drivers.radio.Radio``, written as functions over a ``RadioBench``.

Each ``check_*`` takes a bench (two or more transmitters and one receiver sharing an air) and
asserts the contract: timed TX/RX aligned to the sample, ``late``, ``timeout``, the sum of
several radios, the TX gain cap, channel selection. ``CONTRACT_CHECKS`` lists them, so another
backend (``RemoteRadio`` through the radio server, real USRPs on cables) runs the very same
assertions: build a ``RadioBench`` and parametrize over ``CONTRACT_CHECKS``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from drivers.errors import RadioLimitError, RadioTimingError
from drivers.radio import Radio
from sim.radio import build_sim_radios, ideal_medium

LEAD_S = 0.01  # how far ahead bursts are scheduled (real radios need a few ms)


@dataclass
class RadioBench:
    """Radios on one air. ``gains[i]`` is the end-to-end digital gain of transmitter i to each
    receive channel at the radios' current settings (1 for the ideal sim; measured for cables)."""

    tx: list[Radio]
    rx: Radio
    gains: list[complex]
    rate_sps: float
    close: Callable[[], None] = field(default=lambda: None)
    exact: bool = True  # noiseless, impairment-free: sample values must match to float precision


def _burst(rng: np.random.Generator, n: int) -> np.ndarray:
    x = (rng.standard_normal(n) + 1j * rng.standard_normal(n)) * 0.25
    return x.astype(np.complex64)


def _fit(y: np.ndarray, x: np.ndarray) -> tuple[complex, float]:
    """Least-squares gain of x in y and the residual power relative to y's."""
    g = complex(np.vdot(x, y) / np.vdot(x, x))
    resid = y - g * x
    return g, float(np.vdot(resid, resid).real / max(np.vdot(y, y).real, 1e-30))


def check_timed_alignment(bench: RadioBench) -> None:
    """A burst sent at T appears in a capture started 7 samples earlier exactly 7 samples in."""
    rng = np.random.default_rng(1)
    x = _burst(rng, 256)
    t = bench.tx[0].time_now() + LEAD_S
    pre = 7
    bench.tx[0].transmit(x, at_s=t)
    got = bench.rx.receive(400, at_s=t - pre / bench.rate_sps, timeout_s=1.0)
    assert got.samples.shape == (bench.rx.num_rx_channels, 400)
    assert got.samples.dtype == np.complex64
    assert got.start_time_s == pytest.approx(t - pre / bench.rate_sps, abs=0.5 / bench.rate_sps)
    y = got.samples[0]
    corr = np.abs(np.correlate(y, x, mode="valid"))
    assert int(np.argmax(corr)) == pre
    assert np.max(np.abs(y[:pre])) <= 1e-3 * np.max(np.abs(y))  # nothing before the burst
    g, resid = _fit(y[pre : pre + x.size], x)
    assert abs(g - bench.gains[0]) <= 1e-3 + 0.05 * abs(bench.gains[0])
    assert resid < (1e-9 if bench.exact else 1e-2)
    assert bench.rx.time_now() >= t + x.size / bench.rate_sps - 1e-9


def check_late_transmit(bench: RadioBench) -> None:
    """A burst for a time already past is ``late`` with the device time; tolerated, it counts."""
    now = bench.tx[0].time_now()
    with pytest.raises(RadioTimingError) as info:
        bench.tx[0].transmit(np.ones(16, np.complex64), at_s=now - 0.5)
    assert info.value.code == "late"
    assert info.value.time_s is not None and info.value.time_s >= now - 1e-9
    result = bench.tx[0].transmit(np.ones(16, np.complex64), at_s=now - 0.5, tolerate=["late"])
    assert result.warnings.get("late") == 1


def check_late_receive(bench: RadioBench) -> None:
    now = bench.rx.time_now()
    bench.rx.receive(32, at_s=now + LEAD_S)  # moves the clock past ``now``
    with pytest.raises(RadioTimingError) as info:
        bench.rx.receive(32, at_s=now)
    assert info.value.code == "late"


def check_timeout(bench: RadioBench) -> None:
    """A capture whose samples cannot come within ``timeout_s`` fails with ``timeout``."""
    now = bench.rx.time_now()
    with pytest.raises(RadioTimingError) as info:
        bench.rx.receive(64, at_s=now + 30.0, timeout_s=0.05)
    assert info.value.code == "timeout"
    assert bench.rx.time_now() < now + 30.0  # the window never came


def check_multi_radio_sum(bench: RadioBench) -> None:
    """Every transmitter's burst adds up at the receiver, each at its own offset."""
    assert len(bench.tx) >= 2
    rng = np.random.default_rng(2)
    bursts = [_burst(rng, 300) for _ in bench.tx]
    t = max(r.time_now() for r in [*bench.tx, bench.rx]) + LEAD_S
    for i, (radio, x) in enumerate(zip(bench.tx, bursts, strict=True)):
        radio.transmit(x, at_s=t + 5 * i / bench.rate_sps)
    n = 300 + 5 * len(bench.tx) + 10
    y = bench.rx.receive(n, at_s=t).samples
    want = np.zeros(n, dtype=complex)
    for i, (g, x) in enumerate(zip(bench.gains, bursts, strict=True)):
        want[5 * i : 5 * i + x.size] += g * x
    for row in y:
        err = np.linalg.norm(row - want) / np.linalg.norm(want)
        assert err < (1e-5 if bench.exact else 0.1)


def check_channel_subset(bench: RadioBench) -> None:
    if bench.rx.num_rx_channels < 2:
        pytest.skip("the receiver has one channel")
    t = bench.rx.time_now() + LEAD_S
    got = bench.rx.receive(50, at_s=t, channels=[1])
    assert got.samples.shape == (1, 50)


def check_tx_gain_cap(bench: RadioBench) -> None:
    """A TX gain above the cap is refused before anything reaches the device."""
    radio = bench.tx[0]
    before = radio.settings
    over = dataclasses.replace(before, tx_gain_db=before.max_tx_gain_db + 1.0)
    with pytest.raises(RadioLimitError, match="max_tx_gain_db"):
        radio.configure(over)
    assert radio.settings == before


def check_time_moves_forward(bench: RadioBench) -> None:
    a = bench.rx.time_now()
    bench.rx.receive(100, at_s=a + LEAD_S)
    b = bench.rx.time_now()
    assert b >= a + LEAD_S


CONTRACT_CHECKS = [
    check_timed_alignment,
    check_late_transmit,
    check_late_receive,
    check_timeout,
    check_multi_radio_sum,
    check_channel_subset,
    check_tx_gain_cap,
    check_time_moves_forward,
]


def sim_bench() -> RadioBench:
    tx0, tx1, rx = build_sim_radios([("tx0", 1), ("tx1", 1), ("rx", 2)], medium=ideal_medium(3))
    return RadioBench(tx=[tx0, tx1], rx=rx, gains=[1.0, 1.0], rate_sps=rx.settings.rate_sps)


def medium_server_bench() -> RadioBench:
    """The same radios, each reached through the medium server by its own ZeroMQ proxy."""
    pytest.importorskip("drivers.usrp_server", reason="the radio server is not in this checkout")
    from sim.medium_server import MediumServer

    medium = ideal_medium(4)
    build_sim_radios([("tx0", 1), ("tx1", 1), ("rx", 2)], medium=medium)
    server = MediumServer(medium, "tcp://127.0.0.1:*", insecure=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_ms": 20}, daemon=True)
    thread.start()
    radios = build_sim_radios([("tx0", 1), ("tx1", 1), ("rx", 2)], medium_address=server.endpoint)

    def close() -> None:
        for r in radios:
            r.close()
        server.stop()
        thread.join(timeout=5)
        server.close()

    return RadioBench(radios[:2], radios[2], [1.0, 1.0], radios[2].settings.rate_sps, close)


@pytest.fixture(params=["sim", "medium-server"])
def radio_bench(request: pytest.FixtureRequest) -> Iterator[RadioBench]:
    bench = sim_bench() if request.param == "sim" else medium_server_bench()
    try:
        yield bench
    finally:
        bench.close()


@pytest.mark.parametrize("check", CONTRACT_CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_radio_contract(radio_bench: RadioBench, check: Callable[[RadioBench], None]) -> None:
    check(radio_bench)
