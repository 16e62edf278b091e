"""UsrpRadio's logic without a device: metadata error mapping, scheduling, gain cap, assembly.

Real uhd cannot run a stream without hardware, so the loops of ``UsrpRadio`` run here against
``tests/fake_uhd.py``: a fake as strict as Debian's uhd 4.3 (its signatures, read-only metadata,
no ``StreamCMD.mode``), with a virtual-clock device whose RX streamer honours timed num_done
commands (and reports late/timeout/overflow as UHD does) and whose TX streamer reports
burst_ack/time_error/underflow. Every uhd attribute the driver touches is recorded, and must be
in ``UHD_API_USED`` and in the fake's API (``test_usrp_uhd.py`` compares both with python3-uhd).
"""

from __future__ import annotations

import math
import re
import sys
import types
from typing import Any

import numpy as np
import pytest
from fake_uhd import DeviceState, build_module, describe_fake, raw

from drivers.errors import ConfigError, RadioError, RadioLimitError, RadioTimingError
from drivers.radio import TIMING_CODES, RadioSettings
from drivers.usrp import UsrpRadio
from drivers.usrp_bursts import BurstTracker, tx_packets
from drivers.usrp_capture import RX_TRANSPORT_MARGIN_S, RxAssembler, check_capture_window, recv_timeouts_s
from drivers.usrp_metadata import RX_ERROR_CODES, TX_EVENT_CODES, UHD_API_USED, rx_code, tx_event_code
from drivers.usrp_timing import (
    FATAL_CODES,
    TimingLog,
    check_schedule,
    split_time,
    wait_for_lock,
    wait_for_pps_edge,
)


# --- pure helpers ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "oos", "code"),
    [
        ("none", False, None),
        ("late", False, "late"),
        ("timeout", False, "timeout"),
        ("overflow", False, "overflow"),
        ("overflow", True, "seq_error"),
        ("broken_chain", False, "broken_chain"),
        ("alignment", False, "alignment"),
    ],
)
def test_rx_metadata_codes_map_to_contract_codes(name: str, oos: bool, code: str | None) -> None:
    assert rx_code(name, oos) == code


def test_tx_events_map_to_contract_codes() -> None:
    assert tx_event_code("burst_ack") is None
    assert tx_event_code("time_error") == "late"  # a past burst is 'late' on every backend
    assert tx_event_code("underflow_in_packet") == "underflow"
    assert tx_event_code("seq_error") == "seq_error"
    every_code = {c for c in [*RX_ERROR_CODES.values(), *TX_EVENT_CODES.values()] if c}
    assert every_code - FATAL_CODES <= set(TIMING_CODES)
    with pytest.raises(RadioError, match="unknown TX async event"):
        tx_event_code("nonsense")
    with pytest.raises(RadioError, match="unknown RX metadata"):
        rx_code("nonsense")


def test_timing_log_raises_with_code_and_time_or_counts_when_tolerated() -> None:
    log = TimingLog(["underflow"], "tx0", "transmit")
    log.report("underflow", 3.5)
    log.report("underflow", 3.6)
    assert log.warnings == {"underflow": 2}
    with pytest.raises(RadioTimingError, match="tx0: transmit: late at device time 4.0") as info:
        log.report("late", 4.0)
    assert (info.value.code, info.value.time_s) == ("late", 4.0)
    with pytest.raises(RadioError, match="stream error 'bad_packet'"):
        TimingLog(TIMING_CODES, "rx", "receive").report("bad_packet", 1.0)  # never tolerated
    with pytest.raises(RadioError, match="unknown codes"):
        TimingLog(["lateish"], "rx", "receive")


def test_scheduling_checks_and_time_split() -> None:
    assert check_schedule(10.01, 10.0, 0.002, TimingLog([], "r", "transmit"))
    with pytest.raises(RadioTimingError, match="late at device time 10.0") as info:
        check_schedule(10.001, 10.0, 0.002, TimingLog([], "r", "transmit"))
    assert info.value.code == "late" and info.value.time_s == 10.0  # the device time it was seen
    log = TimingLog(["late"], "r", "transmit")
    assert not check_schedule(9.0, 10.0, 0.002, log) and log.warnings == {"late": 1}
    assert check_capture_window(12.0, 1000, 1e3, 10.0, 3.0, TimingLog([], "r", "receive"))
    with pytest.raises(RadioTimingError, match="window ends 3.000 s from now, beyond timeout_s=2.5") as info:
        check_capture_window(12.0, 1000, 1e3, 10.0, 2.5, TimingLog([], "r", "receive"))
    assert info.value.code == "timeout"
    assert recv_timeouts_s(2.0, started=100.0, clock_now=100.5) == pytest.approx(1.5 + RX_TRANSPORT_MARGIN_S)
    assert recv_timeouts_s(2.0, started=100.0, clock_now=103.0) == RX_TRANSPORT_MARGIN_S
    full, frac = split_time(123456.000001)
    assert full == 123456 and frac == pytest.approx(1e-6, abs=1e-9)
    with pytest.raises(RadioError, match=">= 0"):
        split_time(-1.0)


@pytest.mark.parametrize(("n", "per"), [(1, 100), (100, 100), (250, 100), (1000, 363)])
def test_tx_packets_cover_the_burst_once(n: int, per: int) -> None:
    packets = tx_packets(n, per)
    assert packets[0][0] == 0 and packets[-1][1] == n
    assert all(b - a <= per for a, b in packets)
    assert all(packets[i][1] == packets[i + 1][0] for i in range(len(packets) - 1))
    assert len(packets) == math.ceil(n / per)


def test_rx_assembler_places_packets_by_time_after_a_tolerated_overflow() -> None:
    rate = 1000.0
    asm = RxAssembler(1, 10, 2.0, rate, TimingLog(["overflow"], "rx", "receive"))
    chunk = np.arange(1, 5, dtype=np.complex64)[np.newaxis, :]
    assert not asm.feed(None, 2.0, 4, chunk)
    assert not asm.feed("overflow", 2.004, 0, None)
    assert asm.feed(None, 2.006, 4, chunk)  # 2 samples lost: this packet starts at index 6
    out = asm.result()
    np.testing.assert_array_equal(out.samples[0], [1, 2, 3, 4, 0, 0, 1, 2, 3, 4])
    assert out.warnings == {"overflow": 1} and out.start_time_s == 2.0


def test_rx_assembler_tolerated_timeout_ends_the_capture_zero_filled() -> None:
    asm = RxAssembler(2, 8, 1.0, 1e3, TimingLog(["timeout"], "rx", "receive"))
    asm.feed(None, 1.0, 3, np.ones((2, 3), np.complex64))
    assert asm.feed("timeout", None, 0, None)
    np.testing.assert_array_equal(asm.result().samples[:, 3:], 0)
    with pytest.raises(RadioTimingError) as info:
        RxAssembler(1, 8, 1.0, 1e3, TimingLog([], "rx", "receive")).feed("timeout", None, 0, None)
    assert info.value.code == "timeout" and info.value.time_s == 1.0


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def sleep(self, dt: float) -> None:
        self.t += dt

    def __call__(self) -> float:
        return self.t


def test_wait_for_pps_edge_and_lock() -> None:
    clock = FakeClock()
    # The last-PPS time changes when the clock crosses 0.3 s.
    edge = wait_for_pps_edge(lambda: 7.0 if clock.t < 0.3 else 8.0, 1.5, clock.sleep, clock)
    assert edge == 8.0 and 0.3 <= clock.t < 0.32
    with pytest.raises(RadioError, match="no PPS edge within 1.5 s"):
        wait_for_pps_edge(lambda: 7.0, 1.5, clock.sleep, clock)
    start = clock.t
    wait_for_lock(lambda: clock.t > start + 0.5, 2.0, "ref", clock.sleep, clock)
    assert clock.t - start < 0.6
    with pytest.raises(RadioError, match="ref did not lock within 2.0 s"):
        wait_for_lock(lambda: False, 2.0, "ref", clock.sleep, clock)


# --- the strict fake uhd (tests/fake_uhd.py) -------------------------------------------------------
@pytest.fixture
def fake_uhd(monkeypatch: pytest.MonkeyPatch) -> Any:
    touched: set[str] = set()
    devices: list[DeviceState] = []
    monkeypatch.setitem(sys.modules, "uhd", build_module(touched, devices))
    yield types.SimpleNamespace(touched=touched, devices=devices)
    # Whatever the driver touched must be listed in UHD_API_USED (checked against real uhd) and
    # be part of the fake's uhd-shaped API (compared with real uhd's signatures).
    api = describe_fake()
    for name in touched:
        parts = name.split(".")
        owner = ".".join(parts[:2])
        assert owner in UHD_API_USED, f"driver uses uhd.{owner}, missing from UHD_API_USED"
        if len(parts) == 3:
            assert parts[2] in UHD_API_USED[owner], f"driver uses uhd.{name}, missing from UHD_API_USED"
            assert parts[2] in api[owner], f"driver uses uhd.{name}, which the fake does not model"


def open_radio(fake: Any, **kw: Any) -> tuple[UsrpRadio, DeviceState]:
    radio = UsrpRadio("type=fake", name="u0", **kw)
    return radio, fake.devices[-1]


def test_open_failure_is_a_clear_radio_error(fake_uhd: Any) -> None:
    with pytest.raises(RadioError, match="could not open a USRP with args 'type=none'.*No devices found"):
        UsrpRadio("type=none")


def test_configure_applies_everything_and_keeps_the_tune_result(fake_uhd: Any) -> None:
    radio, dev = open_radio(fake_uhd)
    radio.configure(RadioSettings(frequency_hz=2.45e9, rate_sps=2e6, tx_gain_db=40, max_tx_gain_db=60))
    assert "tx_gain=40" in dev.calls and "rx_rate=2000000.0" in dev.calls
    assert radio.tune_results["rx1"]["actual_rf_freq"] == pytest.approx(2.449e9)
    assert radio.num_rx_channels == 2
    sensors = radio.sensors()
    assert sensors["mb0.ref_locked"] is True and sensors["tx0.actual_dsp_freq"] == 1e6
    assert (sensors["hw.model"], sensors["hw.serial"]) == ("B210", "31A7F0B")  # SigMF core:hw


def test_tx_gain_over_the_cap_never_reaches_the_device(fake_uhd: Any) -> None:
    radio, dev = open_radio(fake_uhd)
    before = list(dev.calls)
    with pytest.raises(RadioLimitError, match="tx_gain_db=65.*max_tx_gain_db=60"):
        radio.configure(RadioSettings(tx_gain_db=65, max_tx_gain_db=60))
    # Under the cap as asked, over it as the device would round it: refused too.
    with pytest.raises(RadioLimitError, match=r"tx_gain_db=59.9 would be 60.0 dB .*max_tx_gain_db=59.9"):
        radio.configure(RadioSettings(tx_gain_db=59.9, max_tx_gain_db=59.9))
    assert dev.calls == before
    radio.configure(RadioSettings(tx_gain_db=59.9, max_tx_gain_db=60))
    assert radio.settings.tx_gain_db == 60.0  # the gain the device really set


def test_configure_changes_only_what_changed(fake_uhd: Any) -> None:
    radio, dev = open_radio(fake_uhd)
    streamer, tuned = radio._tx.streamer, dict(radio.tune_results)
    dev.calls.clear()
    radio.configure(radio.settings)
    assert dev.calls == []  # nothing changed: the device is not touched (no retune, no new LO phase)
    radio.configure(RadioSettings(tx_gain_db=20.0))
    assert dev.calls == ["tx_gain=20.0"] and radio._tx.streamer is streamer
    assert radio.tune_results == tuned
    x = np.ones(50, np.complex64)
    radio.transmit(x, dev.now + 0.5)
    radio.configure(RadioSettings(tx_gain_db=10.0))  # waits for the burst in flight first
    assert radio.sensors()["tx_bursts_pending"] == 0.0 and dev.now >= dev.bursts[-1][0]
    radio.configure(RadioSettings(tx_gain_db=10.0, rate_sps=2e6, frequency_hz=2.45e9))
    assert "rx_rate=2000000.0" in dev.calls and radio._tx.streamer is not streamer
    assert radio.tune_results["rx0"]["target_rf_freq"] == pytest.approx(2.449e9)


def test_bad_antenna_coerced_rate_and_unlocked_reference_are_refused(fake_uhd: Any) -> None:
    radio, dev = open_radio(fake_uhd, lock_timeout_s=0.2)
    with pytest.raises(RadioLimitError, match=r"rx_antenna='RX9'.*allowed: \['TX/RX', 'RX2'\]"):
        radio.configure(RadioSettings(rx_antenna="RX9"))
    with pytest.raises(RadioLimitError, match="coerced rx rate_sps=3000000.0 to 1024000.0"):
        radio.configure(RadioSettings(rate_sps=3e6))
    dev.lock_after_polls = 3
    radio.configure(RadioSettings(clock_source="external", time_source="external"))
    assert "clock=external" in dev.calls
    dev.lock_after_polls = 10**6
    with pytest.raises(RadioError, match="ref_locked.*did not lock within 0.2 s"):
        radio.configure(RadioSettings(clock_source="gpsdo"))


def test_timed_capture_starts_at_its_time_with_a_first_timeout_covering_the_wait(fake_uhd: Any) -> None:
    radio, dev = open_radio(fake_uhd)
    at_s = dev.now + 1.5
    out = radio.receive(250, at_s, channels=[1], timeout_s=2.0)
    cmd = dev.rx_cmds[-1]
    assert cmd._mode.name == "num_done" and cmd.num_samps == 250 and cmd.stream_now is False
    assert cmd.time_spec.get_real_secs() == pytest.approx(at_s)
    assert dev.recv_timeouts[0] >= 1.5 + 0.00025  # the first recv covers the wait and the window
    assert all(t <= 2.0 + RX_TRANSPORT_MARGIN_S for t in dev.recv_timeouts)
    assert out.samples.shape == (1, 250) and out.start_time_s == pytest.approx(at_s)
    first = round(at_s * 1e6) % 10_000
    np.testing.assert_array_equal(out.samples[0].real, (first + np.arange(250)) % 10_000)
    np.testing.assert_array_equal(out.samples[0].imag, 1.0)


def test_capture_errors_carry_code_and_time_or_count_when_tolerated(fake_uhd: Any) -> None:
    radio, dev = open_radio(fake_uhd)
    with pytest.raises(RadioTimingError) as info:
        radio.receive(10, dev.now - 0.5)
    assert info.value.code == "late" and not dev.rx_cmds  # refused before the device
    skipped = radio.receive(10, dev.now - 0.5, tolerate=["late"])
    assert skipped.warnings == {"late": 1} and not np.any(skipped.samples) and not dev.rx_cmds
    with pytest.raises(RadioTimingError) as info:  # the window cannot come within timeout_s
        radio.receive(64, dev.now + 30.0, timeout_s=0.05)
    assert info.value.code == "timeout" and not dev.rx_cmds and dev.now < 30.0
    dev.rx_faults = {1: ("overflow", 50)}
    at_s = dev.now + 0.1
    with pytest.raises(RadioTimingError) as info:
        radio.receive(300, at_s)
    assert info.value.code == "overflow" and info.value.time_s == pytest.approx(at_s + 100e-6)
    assert dev.rx_cmds[-1]._mode.name == "stop_cont"  # drained after the error
    dev.rx_faults = {1: ("overflow", 50)}
    radio._rx.streamer._obj.packets = 0
    at_s = dev.now + 0.1
    out = radio.receive(300, at_s, tolerate=["overflow"])
    assert out.warnings == {"overflow": 1}
    np.testing.assert_array_equal(out.samples[:, 100:150], 0)  # the lost samples
    first = round(at_s * 1e6)
    assert out.samples[0, 150].real == (first + 150) % 10_000  # placed by its time stamp


def test_timed_burst_goes_out_in_packets_without_waiting_for_its_end(fake_uhd: Any) -> None:
    radio, dev = open_radio(fake_uhd)
    x = (np.arange(200) * (1 + 1j)).astype(np.complex128)  # any complex dtype is accepted
    at_s = dev.now + 0.25
    before = dev.now
    result = radio.transmit(x, at_s)
    assert dev.now == before  # returned at once: another radio can be scheduled for at_s too
    assert radio.sensors()["tx_bursts_pending"] == 1.0
    t, sent = dev.bursts[-1]
    assert t == pytest.approx(at_s) and result.start_time_s == at_s and result.num_samples == 200
    np.testing.assert_array_equal(sent[0], x.astype(np.complex64))
    radio.flush_tx(1.0)
    assert radio.sensors()["tx_bursts_pending"] == 0.0
    with pytest.raises(RadioTimingError) as info:
        radio.transmit(x, dev.now - 1.0)
    assert info.value.code == "late" and info.value.time_s == dev.now
    sent_count = len(dev.bursts)
    assert radio.transmit(x, dev.now - 1.0, tolerate=["late"]).warnings == {"late": 1}
    assert len(dev.bursts) == sent_count  # a tolerated late burst is dropped, as the device would
    with pytest.raises(RadioError, match=r"shaped \(1, n>0\)"):
        radio.transmit(np.zeros((2, 10), np.complex64), dev.now + 1)


def test_device_verdicts_surface_on_the_next_call_or_at_once_with_wait_for_ack(fake_uhd: Any) -> None:
    radio, dev = open_radio(fake_uhd)
    x = np.ones(100, np.complex64)
    dev.tx_inject = ["underflow", "underflow_in_packet"]
    assert radio.transmit(x, dev.now + 0.1, tolerate=["underflow"]).warnings == {}
    radio.flush_tx(1.0)
    assert radio.sensors()["warnings.underflow"] == 2.0  # counted once the events were read
    radio.transmit(x, dev.now + 0.1)  # not tolerated: it fails ...
    dev.advance(0.2)  # (its air time passes)
    with pytest.raises(RadioTimingError, match="UHD event underflow for the burst") as info:
        radio.receive(10, dev.now + 0.1)  # ... on the radio's next call
    assert info.value.code == "underflow"
    with pytest.raises(RadioTimingError, match="underflow_in_packet"):
        radio.flush_tx(1.0)  # its second event
    radio.flush_tx(1.0)  # then its ack
    assert radio.sensors()["tx_bursts_pending"] == 0.0
    patient, dev2 = open_radio(fake_uhd, wait_for_ack=True)
    dev2.tx_inject = ["underflow"]
    assert patient.transmit(x, dev2.now + 0.1, tolerate=["underflow"]).warnings == {"underflow": 1}
    with pytest.raises(RadioTimingError):
        patient.transmit(x, dev2.now + 0.1)


def test_device_reported_late_burst_is_late(fake_uhd: Any) -> None:
    radio, dev = open_radio(fake_uhd, min_lead_s=0.0, wait_for_ack=True)
    radio.clock.now = lambda: 0.0  # type: ignore[method-assign]  # the host thinks it has time
    with pytest.raises(RadioTimingError, match="UHD event time_error") as info:
        radio.transmit(np.ones(10, np.complex64), 5.0)
    assert info.value.code == "late" and info.value.time_s == 5.0
    assert radio.sensors()["tx_bursts_pending"] == 0.0  # the dropped burst is no longer awaited


def test_burst_tracker_attributes_events_in_order() -> None:
    tracker = BurstTracker(2, "tx")
    tracker.add(1.0, 10.0, TimingLog(["underflow"], "tx", "transmit"))
    tracker.add(2.0, 20.0, TimingLog([], "tx", "transmit"))
    tracker.event("underflow", 1.5, 0)
    tracker.event("burst_ack", 1.6, 0)
    assert len(tracker.pending) == 2  # one channel still to ack
    tracker.event("burst_ack", 1.6, 1)
    assert len(tracker.pending) == 1 and tracker.totals == {"underflow": 1}
    with pytest.raises(RadioTimingError) as info:
        tracker.event("time_error", 2.0, 0)
    assert info.value.code == "late" and not tracker.pending
    with pytest.raises(RadioTimingError, match="outside any burst"):
        tracker.event("seq_error", 3.0, 0)
    tracker.event("burst_ack", 3.0, 0)  # a stray ack is harmless
    tracker.add(4.0, 5.0, TimingLog([], "tx", "transmit"))
    tracker.check_overdue(4.9)
    with pytest.raises(RadioTimingError, match="no burst_ack") as info:
        tracker.check_overdue(5.1)
    assert info.value.code == "timeout" and info.value.time_s == 4.0


def test_time_alignment_at_a_pps_edge(fake_uhd: Any) -> None:
    radio, dev = open_radio(fake_uhd)
    radio.set_time_next_pps(0.0)  # internal time source: set now
    assert dev.now == 0.0 and "set_time_now" in dev.calls
    radio.configure(RadioSettings(clock_source="external", time_source="external"))
    dev.now = 20.55
    radio.set_time_next_pps(100.0)
    assert 100.0 <= radio.time_now() < 101.0 and dev.last_pps == 100.0
    radio.set_time_unknown_pps(200.0)
    assert 200.0 <= radio.time_now() < 201.0


def test_the_fake_is_as_strict_as_uhd_4_3(fake_uhd: Any) -> None:
    """What Debian's python3-uhd refuses, the fake refuses (test_usrp_uhd.py compares the rest)."""
    import uhd

    t = uhd.types
    assert t.TimeSpec(12, 0.25).get_real_secs() == 12.25 and t.TimeSpec(1.5).get_real_secs() == 1.5
    with pytest.raises(TypeError, match="incompatible constructor arguments"):
        t.TimeSpec(12.0, 0.25)  # the two-argument form is (int, float)
    with pytest.raises(TypeError, match="incompatible constructor arguments"):
        t.StreamCMD()  # the mode is required ...
    assert not hasattr(raw(t.StreamCMD(t.StreamMode.num_done)), "mode")  # ... and not readable back
    for md, fields in ((t.RXMetadata(), ("error_code", "time_spec")), (t.TXAsyncMetadata(), ("event_code",))):
        for name in fields:
            with pytest.raises(AttributeError):
                setattr(raw(md), name, getattr(md, name))
    assert t.TXAsyncMetadata().event_code.name == "???"  # not a valid member
    radio, dev = open_radio(fake_uhd)
    usrp = raw(radio._usrp)
    with pytest.raises(TypeError, match="get_clock_sources"):
        usrp.get_clock_sources()
    usrp.set_rx_rate(2e6)  # no channel: every channel, as in uhd
    assert dev.rates["rx"] == [2e6, 2e6] and dev.calls[-2:] == ["rx_rate=2000000.0 (all)"] * 2
    with pytest.raises(TypeError, match="incompatible function arguments"):
        usrp.set_tx_gain("40")


@pytest.mark.parametrize("args", ["type=b200,,==", "type=b200,serial=a=b"])
def test_malformed_device_args_are_a_config_error_in_uhds_words(fake_uhd: Any, args: str) -> None:
    import uhd

    with pytest.raises(TypeError):  # what pybind11 makes of it in uhd itself
        uhd.usrp.MultiUSRP(args)
    with pytest.raises(ConfigError, match=rf"u0: device args {re.escape(repr(args))}: ValueError: invalid args "
                       rf"string: {re.escape(args)}; UHD device args are key=value pairs"):  # fmt: skip
        UsrpRadio(args, name="u0")
    assert not fake_uhd.devices  # nothing was opened
