"""The radio contract on real USRPs wired by cables (``pytest --hardware``; skipped otherwise).

Set up: two or more transmitting USRPs and one receiving USRP, each TX port cabled (through
attenuators, 30 dB or more) to an RX port of the receiver via a combiner, all fed one 10 MHz + PPS.

    TESTBED_USRP_TX="serial=31A1,serial=31A2" TESTBED_USRP_RX="serial=31B0" \\
        .venv/bin/python -m pytest tests/test_usrp_hardware.py --hardware

Each radio gets its own radio server under the system Python (``testbed.radios.open_radio``),
exactly as in the lab. The device clocks are aligned at a PPS edge, each cable's end-to-end gain
is measured with a burst, and then the very checks of ``tests/test_radio_contract.py`` run.
``TESTBED_USRP_SYNC=internal`` skips the shared reference (one device only, or a quick look).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from test_radio_contract import CONTRACT_CHECKS, RadioBench

from drivers.radio import Radio
from testbed.config import RadioSection
from testbed.radios import open_radio

pytestmark = pytest.mark.hardware

TX_ARGS = [a for a in os.environ.get("TESTBED_USRP_TX", "").split(",") if a]
RX_ARGS = os.environ.get("TESTBED_USRP_RX", "")
SYNC = os.environ.get("TESTBED_USRP_SYNC", "external")


def measure_gain(tx: Radio, rx: Radio, rng: np.random.Generator) -> complex:
    """The end-to-end gain of one cable: a known burst, captured, fitted by least squares."""
    x = ((rng.standard_normal(2000) + 1j * rng.standard_normal(2000)) * 0.25).astype(np.complex64)
    t = rx.time_now() + 0.05
    tx.transmit(x, t)
    y = rx.receive(x.size, t, timeout_s=1.0).samples[0]
    return complex(np.vdot(x, y) / np.vdot(x, x))


@pytest.fixture(scope="module")
def usrp_bench() -> Iterator[RadioBench]:
    if len(TX_ARGS) < 2 or not RX_ARGS:
        pytest.skip("set TESTBED_USRP_TX (two or more device args, comma-separated) and TESTBED_USRP_RX")
    common = {"backend": "usrp", "clock_source": SYNC, "time_source": SYNC, "rpc_timeout_s": 10.0}
    radios: list[Radio] = []
    try:
        for i, args in enumerate(TX_ARGS):
            radios.append(open_radio(RadioSection(args=args, tx_gain_db=40.0, **common), f"tx{i}"))
        rx = open_radio(RadioSection(args=RX_ARGS, rx_gain_db=20.0, **common), "rx")
        radios.append(rx)
        for radio in radios:
            radio.set_time_next_pps(0.0)
        rng = np.random.default_rng(0)
        gains = [measure_gain(tx, rx, rng) for tx in radios[:-1]]
        yield RadioBench(radios[:-1], rx, gains, rx.settings.rate_sps, exact=False)
    finally:
        for radio in radios:
            radio.close()


@pytest.mark.parametrize("check", CONTRACT_CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_radio_contract_on_usrps(usrp_bench: RadioBench, check: Callable[[RadioBench], None]) -> None:
    check(usrp_bench)
