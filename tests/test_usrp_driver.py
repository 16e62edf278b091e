"""UsrpRadio's logic without a device: metadata error mapping, scheduling, gain cap, assembly.

Real uhd cannot run a stream without hardware, so the loops of ``UsrpRadio`` run here against a
small fake of the uhd module: a virtual-clock device whose RX streamer honours timed num_done
commands (and reports late/timeout/overflow as UHD does) and whose TX streamer reports
burst_ack/time_error/underflow. Every uhd attribute the driver touches is recorded, and must be
in ``UHD_API_USED`` (which ``test_usrp_uhd.py`` checks against the real python3-uhd).
"""

from __future__ import annotations

import math
import sys
import types
from typing import Any

import numpy as np
import pytest

from drivers import usrp
from drivers.errors import RadioError, RadioLimitError, RadioTimingError
from drivers.radio import TIMING_CODES, RadioSettings
from drivers.usrp import (
    RX_ERROR_CODES,
    TX_EVENT_CODES,
    UHD_API_USED,
    BurstTracker,
    RxAssembler,
    TimingLog,
    UsrpRadio,
    check_capture_window,
    check_schedule,
    recv_timeouts_s,
    rx_code,
    split_time,
    tx_event_code,
    tx_packets,
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
    assert every_code - usrp.FATAL_CODES <= set(TIMING_CODES)
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
    assert recv_timeouts_s(2.0, started=100.0, clock_now=100.5) == pytest.approx(
        1.5 + usrp.RX_TRANSPORT_MARGIN_S
    )
    assert recv_timeouts_s(2.0, started=100.0, clock_now=103.0) == usrp.RX_TRANSPORT_MARGIN_S
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


# --- a fake uhd module with a virtual-clock device -------------------------------------------------
class Tracked:
    """Wraps a fake uhd object and records every attribute the driver reads or writes."""

    def __init__(self, obj: Any, label: str, touched: set[str]) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_label", label)
        object.__setattr__(self, "_touched", touched)

    def __getattr__(self, name: str) -> Any:
        self._touched.add(f"{self._label}.{name}")
        return getattr(self._obj, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._touched.add(f"{self._label}.{name}")
        setattr(self._obj, name, value)


def raw(x: Any) -> Any:
    return object.__getattribute__(x, "_obj") if isinstance(x, Tracked) else x


class Enum:
    def __init__(self, name: str) -> None:
        self.name = name


class TimeSpec:
    def __init__(self, full: float, frac: float = 0.0) -> None:
        self.secs = float(full) + float(frac)

    def get_real_secs(self) -> float:
        return self.secs


class Meta:
    def __init__(self, *_: Any) -> None:
        self.start_of_burst = self.end_of_burst = self.has_time_spec = False
        self.out_of_sequence = False
        self.time_spec = TimeSpec(0.0)
        self.error_code = Enum("none")
        self.event_code = Enum("user_payload")
        self.channel = 0
        self.due = 0.0
        self.num_samps = 0
        self.stream_now = True
        self.mode = _[0] if _ else None


class Sensor:
    def __init__(self, value: bool) -> None:
        self.type = Enum("b")
        self.value = "true" if value else "false"
        self._v = value

    def to_bool(self) -> bool:
        return self._v


class GainRange:
    """A 0.5 dB-step gain range, as a device's ``MetaRange``."""

    def clip(self, value: float, clip_step: bool = False) -> float:
        value = min(max(value, 0.0), 89.5)
        return round(value * 2) / 2 if clip_step else value


class FakeDevice:
    """A virtual-clock USRP: time advances only when the driver waits on it."""

    RATE_OK = (1e6, 2e6)

    def __init__(self, args: str) -> None:
        if "type=none" in args:
            raise RuntimeError("LookupError: KeyError: No devices found for ----->\nDevice Address:\n")
        self.now = 10.0
        self.last_pps = 10.0
        self.pending_pps: float | None = None
        self.calls: list[str] = []
        self.lock_after_polls = 0
        self.rates = {"rx": 1e6, "tx": 1e6}
        self.rx_faults: dict[int, tuple[str, int]] = {}  # packet index -> (code, samples lost)
        self.tx_inject: list[str] = []  # extra async events before burst_ack
        self.rx_cmds: list[Meta] = []
        self.recv_timeouts: list[float] = []
        self.bursts: list[tuple[float, np.ndarray]] = []
        self._pending: dict[str, Any] | None = None
        self._burst: dict[str, Any] | None = None
        self._events: list[Meta] = []
        self.touched: set[str] = set()  # set by the fixture: what the driver reads on results

    def track(self, obj: Any, label: str) -> Tracked:
        return Tracked(obj, label, self.touched)

    def advance(self, dt: float) -> None:
        new = self.now + dt
        if math.floor(new) > math.floor(self.now):  # a PPS edge
            if self.pending_pps is not None:
                new, self.pending_pps = self.pending_pps + (new - math.floor(new)), None
            self.last_pps = float(math.floor(new))
        self.now = new

    def _log(self, name: str) -> None:
        self.calls.append(name)

    # configuration
    def get_rx_num_channels(self) -> int:
        return 2

    def get_tx_num_channels(self) -> int:
        return 1

    def get_rx_antennas(self, ch: int = 0) -> list[str]:
        return ["TX/RX", "RX2"]

    def get_tx_antennas(self, ch: int = 0) -> list[str]:
        return ["TX/RX"]

    def get_clock_sources(self, mb: int = 0) -> list[str]:
        return ["internal", "external", "gpsdo"]

    get_time_sources = get_clock_sources

    def set_clock_source(self, src: str) -> None:
        self._log(f"clock={src}")

    def set_time_source(self, src: str) -> None:
        self._log(f"time={src}")

    def get_num_mboards(self) -> int:
        return 1

    def get_usrp_rx_info(self, chan: int = 0) -> dict[str, str]:
        # UHD 4.3 answers a dict of strings (these keys from a B210)
        return {"mboard_id": "B210", "mboard_name": "", "mboard_serial": "31A7F0B", "rx_id": "B210 (0x0020)"}

    def get_mboard_sensor_names(self, mb: int = 0) -> list[str]:
        return ["ref_locked"]

    def get_mboard_sensor(self, name: str, mb: int = 0) -> Tracked:
        self.lock_after_polls -= 1
        return self.track(Sensor(self.lock_after_polls < 0), "types.SensorValue")

    def get_rx_sensor_names(self, ch: int = 0) -> list[str]:
        return ["lo_locked"]

    def get_rx_sensor(self, name: str, ch: int = 0) -> Tracked:
        return self.track(Sensor(True), "types.SensorValue")

    def _set_rate(self, kind: str, rate: float) -> None:
        self._log(f"{kind}_rate={rate}")
        self.rates[kind] = rate if rate in self.RATE_OK else 1.024e6

    def set_tx_rate(self, rate: float, ch: int = 0) -> None:
        self._set_rate("tx", rate)

    def set_rx_rate(self, rate: float, ch: int = 0) -> None:
        self._set_rate("rx", rate)

    def get_tx_rate(self, ch: int = 0) -> float:
        return self.rates["tx"]

    def get_rx_rate(self, ch: int = 0) -> float:
        return self.rates["rx"]

    def set_tx_gain(self, g: float, ch: int = 0) -> None:
        self._log(f"tx_gain={g}")
        self.tx_gain = GainRange().clip(g, True)

    def set_rx_gain(self, g: float, ch: int = 0) -> None:
        self._log(f"rx_gain={g}")
        self.rx_gain = g

    def get_tx_gain_range(self, ch: int = 0) -> Tracked:
        return self.track(GainRange(), "types.MetaRange")

    def get_tx_gain(self, ch: int = 0) -> float:
        return self.tx_gain

    def get_rx_gain(self, ch: int = 0) -> float:
        return self.rx_gain

    def set_tx_antenna(self, a: str, ch: int = 0) -> None:
        self._log(f"tx_ant={a}")

    def set_rx_antenna(self, a: str, ch: int = 0) -> None:
        self._log(f"rx_ant={a}")

    def _tune(self, req: Any) -> Tracked:
        result = Meta()
        f = req.target_freq
        for k in ("target_rf_freq", "actual_rf_freq", "clipped_rf_freq"):
            setattr(result, k, f - 1e6)
        result.target_dsp_freq = result.actual_dsp_freq = 1e6
        return self.track(result, "types.TuneResult")

    def set_tx_freq(self, req: Any, ch: int = 0) -> Tracked:
        self._log("tx_freq")
        return self._tune(req)

    def set_rx_freq(self, req: Any, ch: int = 0) -> Tracked:
        self._log("rx_freq")
        return self._tune(req)

    def get_rx_stream(self, args: Any) -> Tracked:
        return self.track(FakeRx(self, len(raw(args).channels)), "usrp.RXStreamer")

    def get_tx_stream(self, args: Any) -> Tracked:
        return self.track(FakeTx(self, len(raw(args).channels)), "usrp.TXStreamer")

    # time
    def get_time_now(self, mb: int = 0) -> Tracked:
        return self.track(TimeSpec(self.now), "types.TimeSpec")

    def set_time_now(self, ts: Any) -> None:
        self._log("set_time_now")
        self.now = raw(ts).secs

    def get_time_last_pps(self, mb: int = 0) -> Tracked:
        self.advance(0.1)  # time passes while the host polls
        return self.track(TimeSpec(self.last_pps), "types.TimeSpec")

    def set_time_next_pps(self, ts: Any) -> None:
        self._log("set_time_next_pps")
        self.pending_pps = raw(ts).secs

    def set_time_unknown_pps(self, ts: Any) -> None:
        self.pending_pps = raw(ts).secs
        self.advance(1.0)


class FakeRx:
    def __init__(self, dev: FakeDevice, channels: int) -> None:
        self.dev, self.channels, self.packets = dev, channels, 0

    def get_max_num_samps(self) -> int:
        return 100

    def issue_stream_cmd(self, cmd: Any) -> None:
        c = raw(cmd)
        self.dev.rx_cmds.append(c)
        if c.mode.name == "stop_cont":
            self.dev._pending = None
            return
        t = c.time_spec.get_real_secs()
        late = not c.stream_now and t < self.dev.now
        self.dev._pending = {"t": t, "left": c.num_samps, "late": late}

    def recv(self, buf: np.ndarray, md: Any, timeout: float = 0.1) -> int:
        dev, m, p = self.dev, raw(md), self.dev._pending
        dev.recv_timeouts.append(timeout)
        m.error_code, m.has_time_spec, m.out_of_sequence = Enum("none"), False, False
        if p is not None and p["late"]:
            dev._pending = None
            m.error_code, m.has_time_spec, m.time_spec = Enum("late"), True, TimeSpec(p["t"])
            return 0
        if p is None or p["t"] > dev.now + timeout:
            dev.advance(timeout)
            m.error_code = Enum("timeout")
            return 0
        fault = dev.rx_faults.pop(self.packets, None)
        self.packets += 1
        rate = dev.rates["rx"]
        if fault is not None:
            code, lost = fault
            m.error_code, m.has_time_spec, m.time_spec = Enum(code), True, TimeSpec(p["t"])
            p["t"] += lost / rate
            p["left"] -= lost
            return 0
        k = min(self.get_max_num_samps(), p["left"])
        start = round(p["t"] * rate)
        ramp = ((start + np.arange(k)) % 10_000).astype(np.float32)
        for ch in range(self.channels):
            buf[ch, :k] = ramp + 1j * ch
        m.has_time_spec, m.time_spec = True, TimeSpec(p["t"])
        dev.now = max(dev.now, p["t"] + k / rate)
        p["t"] += k / rate
        p["left"] -= k
        if p["left"] <= 0:
            dev._pending = None
        return k


class FakeTx:
    def __init__(self, dev: FakeDevice, channels: int) -> None:
        self.dev, self.channels = dev, channels

    def get_max_num_samps(self) -> int:
        return 64

    def send(self, buf: np.ndarray, md: Any, timeout: float = 0.1) -> int:
        dev, m = self.dev, raw(md)
        assert buf.flags.c_contiguous and buf.dtype == np.complex64
        if m.start_of_burst:
            assert m.has_time_spec, "a burst must start with its time"
            dev._burst = {"t": m.time_spec.get_real_secs(), "parts": [], "timeout": timeout}
        assert dev._burst is not None, "samples outside a burst"
        dev._burst["parts"].append(buf.copy())
        if m.end_of_burst:
            b, dev._burst = dev._burst, None
            late = b["t"] < dev.now
            samples = np.concatenate(b["parts"], axis=1)
            dev.bursts.append((b["t"], samples))
            end = b["t"] + samples.shape[1] / dev.rates["tx"]
            for name in ["time_error"] if late else [*dev.tx_inject, "burst_ack"]:
                event = Meta()
                event.event_code, event.has_time_spec, event.time_spec = Enum(name), True, TimeSpec(b["t"])
                event.due = dev.now if late else end  # the device reports once the burst is over
                dev._events.append(event)
        return buf.shape[1]

    def recv_async_msg(self, amd: Any, timeout: float = 0.1) -> bool:
        dev = self.dev
        if not dev._events or dev._events[0].due > dev.now + timeout:
            dev.advance(timeout)
            return False
        e, m = dev._events.pop(0), raw(amd)
        dev.now = max(dev.now, e.due)
        m.event_code, m.has_time_spec, m.time_spec, m.channel = e.event_code, True, e.time_spec, 0
        return True


class Namespace:
    """A fake uhd (sub)module that records which names the driver looks up."""

    def __init__(self, label: str, members: dict[str, Any], touched: set[str]) -> None:
        self._label, self._members, self._touched = label, members, touched

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        self._touched.add(f"{self._label}.{name}")
        return self._members[name]


@pytest.fixture
def fake_uhd(monkeypatch: pytest.MonkeyPatch) -> Any:
    touched: set[str] = set()
    devices: list[FakeDevice] = []

    def tracked(cls: Any, label: str) -> Any:
        def make(*a: Any) -> Tracked:
            obj = cls(*a)
            if isinstance(obj, FakeDevice):
                obj.touched = touched
                devices.append(obj)
            return Tracked(obj, label, touched)

        return make

    def args_obj(cpu: str, otw: str) -> Any:
        o = types.SimpleNamespace(cpu=cpu, otw=otw, channels=[])
        return o

    enum = lambda label, names: Namespace(label, {n: Enum(n) for n in names}, touched)  # noqa: E731
    module = types.SimpleNamespace(
        usrp=Namespace(
            "usrp",
            {
                "MultiUSRP": tracked(FakeDevice, "usrp.MultiUSRP"),
                "StreamArgs": tracked(args_obj, "usrp.StreamArgs"),
            },
            touched,
        ),
        types=Namespace(
            "types",
            {
                "TimeSpec": tracked(TimeSpec, "types.TimeSpec"),
                "TuneRequest": tracked(lambda f: types.SimpleNamespace(target_freq=f), "types.TuneRequest"),
                "TXMetadata": tracked(Meta, "types.TXMetadata"),
                "TXAsyncMetadata": tracked(Meta, "types.TXAsyncMetadata"),
                "RXMetadata": tracked(Meta, "types.RXMetadata"),
                "StreamCMD": tracked(Meta, "types.StreamCMD"),
                "StreamMode": enum("types.StreamMode", ["num_done", "stop_cont"]),
            },
            touched,
        ),
    )
    monkeypatch.setitem(sys.modules, "uhd", module)
    yield types.SimpleNamespace(touched=touched, devices=devices)
    # Whatever the driver touched must be listed in UHD_API_USED (checked against real uhd).
    for name in touched:
        parts = name.split(".")
        owner = ".".join(parts[:2])
        assert owner in UHD_API_USED, f"driver uses uhd.{owner}, missing from UHD_API_USED"
        if len(parts) == 3:
            assert parts[2] in UHD_API_USED[owner], f"driver uses uhd.{name}, missing from UHD_API_USED"


def open_radio(fake: Any, **kw: Any) -> tuple[UsrpRadio, FakeDevice]:
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
    streamer, tuned = radio._tx_streamer, dict(radio.tune_results)
    dev.calls.clear()
    radio.configure(radio.settings)
    assert dev.calls == []  # nothing changed: the device is not touched (no retune, no new LO phase)
    radio.configure(RadioSettings(tx_gain_db=20.0))
    assert dev.calls == ["tx_gain=20.0"] and radio._tx_streamer is streamer
    assert radio.tune_results == tuned
    x = np.ones(50, np.complex64)
    radio.transmit(x, dev.now + 0.5)
    radio.configure(RadioSettings(tx_gain_db=10.0))  # waits for the burst in flight first
    assert radio.sensors()["tx_bursts_pending"] == 0.0 and dev.now >= dev.bursts[-1][0]
    radio.configure(RadioSettings(tx_gain_db=10.0, rate_sps=2e6, frequency_hz=2.45e9))
    assert "rx_rate=2000000.0" in dev.calls and radio._tx_streamer is not streamer
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
    assert cmd.mode.name == "num_done" and cmd.num_samps == 250 and cmd.stream_now is False
    assert cmd.time_spec.get_real_secs() == pytest.approx(at_s)
    assert dev.recv_timeouts[0] >= 1.5 + 0.00025  # the first recv covers the wait and the window
    assert all(t <= 2.0 + usrp.RX_TRANSPORT_MARGIN_S for t in dev.recv_timeouts)
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
    assert dev.rx_cmds[-1].mode.name == "stop_cont"  # drained after the error
    dev.rx_faults = {1: ("overflow", 50)}
    radio._rx_streamer._obj.packets = 0
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
    radio.time_now = lambda: 0.0  # type: ignore[method-assign]  # the host thinks it has time
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
