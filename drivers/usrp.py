"""``UsrpRadio``: the radio contract on a real USRP through UHD's ``uhd.usrp.MultiUSRP``.

This module runs inside the radio server (``drivers/usrp_server.py``) under the system Python,
because Debian's python3-uhd is built against NumPy 1.x. ``uhd`` is imported lazily, in the
constructor, so the module itself imports anywhere. Everything that is logic rather than a UHD
call (metadata error mapping, tolerated-warning counting, burst packetising, capture assembly,
first-call timeouts, waits for a PPS edge or a reference lock) lives in the pure helpers below,
which the tests drive without a device.

Timing follows UHD's sync guide (host/docs/driver_usage/sync.dox): a shared 10 MHz + PPS gives a
common clock; ``set_time_next_pps`` is called right after a PPS edge so every motherboard latches
the same time at the following edge; timed bursts carry ``TXMetadata.time_spec`` and timed
captures use a ``num_done`` ``StreamCMD`` with ``stream_now=False``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from drivers.errors import ConfigError, RadioError, RadioLimitError, RadioTimingError
from drivers.radio import TIMING_CODES, RadioSettings, RxResult, TxResult, parse_device_args

# --- metadata error mapping ----------------------------------------------------------------------
# RX: uhd.types.RXMetadataErrorCode names -> the contract's codes (None: not an error).
RX_ERROR_CODES: dict[str, str | None] = {
    "none": None,
    "late": "late",  # the stream command's time had passed when it reached the device
    "timeout": "timeout",  # no packet within the recv timeout
    "overflow": "overflow",  # host too slow: samples dropped ('O'); with out_of_sequence: 'D'
    "broken_chain": "broken_chain",  # a num_more chain was not continued in time
    "alignment": "alignment",  # multi-channel packets could not be time-aligned
    "bad_packet": "bad_packet",  # a packet failed to parse
}
# TX async events: uhd.types.TXMetadataEventCode names -> contract codes (None: not an error).
TX_EVENT_CODES: dict[str, str | None] = {
    "burst_ack": None,  # the end of burst went out: the normal finish
    "user_payload": None,
    "underflow": "underflow",  # the device ran dry inside a burst ('U')
    "underflow_in_packet": "underflow",
    "seq_error": "seq_error",  # packets lost between host and device ('S')
    "seq_error_in_packet": "seq_error",
    # The burst's time_spec had passed when it reached the device ('L'). The contract names a
    # burst scheduled in the past ``late``, on every backend, so callers need not ask which.
    "time_error": "late",
}
RX_TRANSPORT_MARGIN_S = 0.1  # samples reach the host a little after their air time
ACK_MARGIN_S = 1.0  # how long after a burst's end its burst_ack may take before it is a timeout
# Codes that mean the stream itself is broken, not a timing slip: never tolerated.
FATAL_CODES = frozenset({"alignment", "bad_packet"})

# Every uhd name this driver touches, by "module.Class": attributes. The uhd test checks each one
# exists in the installed python3-uhd; the fake-device test checks the driver touches no other.
UHD_API_USED: dict[str, tuple[str, ...]] = {
    "usrp.MultiUSRP": (
        "get_rx_num_channels",
        "get_tx_num_channels",
        "get_rx_antennas",
        "get_tx_antennas",
        "get_clock_sources",
        "get_time_sources",
        "set_clock_source",
        "set_time_source",
        "get_num_mboards",
        "get_usrp_rx_info",
        "get_mboard_sensor_names",
        "get_mboard_sensor",
        "get_rx_sensor_names",
        "get_rx_sensor",
        "set_tx_rate",
        "set_rx_rate",
        "get_tx_rate",
        "get_rx_rate",
        "set_tx_gain",
        "set_rx_gain",
        "get_tx_gain_range",
        "get_tx_gain",
        "get_rx_gain",
        "set_tx_antenna",
        "set_rx_antenna",
        "set_tx_freq",
        "set_rx_freq",
        "get_rx_stream",
        "get_tx_stream",
        "get_time_now",
        "set_time_now",
        "get_time_last_pps",
        "set_time_next_pps",
        "set_time_unknown_pps",
    ),
    "usrp.StreamArgs": ("channels",),
    "usrp.RXStreamer": ("get_max_num_samps", "issue_stream_cmd", "recv"),
    "usrp.TXStreamer": ("get_max_num_samps", "send", "recv_async_msg"),
    "types.TimeSpec": ("get_real_secs",),
    "types.TuneRequest": ("target_freq",),
    "types.TuneResult": (
        "target_rf_freq",
        "actual_rf_freq",
        "clipped_rf_freq",
        "target_dsp_freq",
        "actual_dsp_freq",
    ),
    "types.TXMetadata": ("start_of_burst", "end_of_burst", "has_time_spec", "time_spec"),
    "types.TXAsyncMetadata": ("event_code", "channel", "has_time_spec", "time_spec"),
    "types.RXMetadata": ("error_code", "out_of_sequence", "has_time_spec", "time_spec"),
    "types.StreamCMD": ("num_samps", "stream_now", "time_spec"),
    "types.StreamMode": ("num_done", "stop_cont"),
    "types.RXMetadataErrorCode": tuple(RX_ERROR_CODES),
    "types.TXMetadataEventCode": tuple(TX_EVENT_CODES),
    "types.SensorValue": ("type", "to_bool", "to_int", "to_real", "value"),
    "types.MetaRange": ("clip",),
}


def enum_name(value: Any) -> str:
    """The member name of a pybind11 enum value (``value.name``), or of its ``str`` form."""
    name = getattr(value, "name", None)
    if isinstance(name, str):
        return name
    return str(value).rsplit(".", 1)[-1]


def rx_code(error_name: str, out_of_sequence: bool = False) -> str | None:
    """The contract code for one ``RXMetadata``: overflow with ``out_of_sequence`` is lost packets."""
    if error_name not in RX_ERROR_CODES:
        raise RadioError(f"unknown RX metadata error code {error_name!r} from UHD")
    code = RX_ERROR_CODES[error_name]
    if code == "overflow" and out_of_sequence:
        return "seq_error"
    return code


def tx_event_code(event_name: str) -> str | None:
    if event_name not in TX_EVENT_CODES:
        raise RadioError(f"unknown TX async event code {event_name!r} from UHD")
    return TX_EVENT_CODES[event_name]


def check_tolerate(tolerate: Iterable[str]) -> frozenset[str]:
    """Validate a caller's ``tolerate`` list against the contract's timing codes."""
    codes = frozenset(tolerate)
    unknown = sorted(codes - set(TIMING_CODES))
    if unknown:
        raise RadioError(f"tolerate={unknown} holds unknown codes; allowed: {list(TIMING_CODES)}")
    return codes


class TimingLog:
    """Turns metadata codes into ``RadioTimingError`` or, where tolerated, counted warnings."""

    def __init__(self, tolerate: Iterable[str], radio: str, what: str) -> None:
        self.tolerate = check_tolerate(tolerate)
        self.radio = radio
        self.what = what
        self.warnings: dict[str, int] = {}

    def report(self, code: str, time_s: float | None, detail: str = "") -> None:
        """Count ``code`` if tolerated, else raise. ``time_s`` is the device time it refers to."""
        when = "" if time_s is None else f" at device time {time_s:.9f} s"
        extra = f" ({detail})" if detail else ""
        if code in FATAL_CODES:
            raise RadioError(f"{self.radio}: {self.what}: stream error {code!r}{when}{extra}")
        if code in self.tolerate:
            self.warnings[code] = self.warnings.get(code, 0) + 1
            return
        raise RadioTimingError(
            f"{self.radio}: {self.what}: {code}{when}{extra}; pass tolerate=[{code!r}] to count it instead",
            code=code,
            time_s=time_s,
        )


# --- scheduling ----------------------------------------------------------------------------------
def split_time(time_s: float) -> tuple[int, float]:
    """(full seconds, fractional seconds), so a ``TimeSpec`` keeps sub-sample precision."""
    if not math.isfinite(time_s) or time_s < 0:
        raise RadioError(f"device time must be a finite number >= 0 s (got {time_s!r})")
    full = math.floor(time_s)
    return int(full), float(time_s - full)


def check_schedule(at_s: float, now_s: float, min_lead_s: float, log: TimingLog) -> bool:
    """Catch a timed command whose time has (nearly) passed before it reaches the device.

    True: go ahead. A late command raises ``late`` (with the device time ``now_s``), or, if the
    caller tolerates ``late``, is counted and False says to skip it, as the device would.
    """
    if not math.isfinite(at_s):
        raise RadioError(f"{log.radio}: {log.what}: at_s must be finite (got {at_s!r})")
    if at_s >= now_s + min_lead_s:
        return True
    log.report(
        "late",
        now_s,
        f"scheduled for {at_s:.6f} s, needs >= {min_lead_s * 1e3:.1f} ms of lead; schedule it later",
    )
    return False


def check_capture_window(
    at_s: float, num_samples: int, rate_sps: float, now_s: float, timeout_s: float, log: TimingLog
) -> bool:
    """``timeout_s`` bounds the whole capture from now, as on the sim: a window that ends later
    cannot arrive within the wait, so it is a ``timeout`` at once (counted if tolerated: False)."""
    end_s = at_s + num_samples / rate_sps
    if end_s <= now_s + timeout_s:
        return True
    log.report(
        "timeout",
        now_s,
        f"the window ends {end_s - now_s:.3f} s from now, beyond timeout_s={timeout_s}; pass a longer timeout_s",
    )
    return False


def recv_timeouts_s(timeout_s: float, started: float, clock_now: float) -> float:
    """The wait for the next ``recv``: what is left of ``timeout_s`` (counted from the call, so
    the first ``recv`` covers the wait until ``at_s``) plus the transport's latency."""
    return max(0.0, started + timeout_s - clock_now) + RX_TRANSPORT_MARGIN_S


def tx_packets(num_samples: int, max_per_packet: int) -> list[tuple[int, int]]:
    """Sample ranges of a burst, one ``send`` each; the first carries SOB+time, the last EOB."""
    if max_per_packet <= 0:
        raise RadioError(f"max samples per packet must be > 0 (got {max_per_packet})")
    if num_samples <= 0:
        raise RadioError(f"a burst needs at least one sample (got {num_samples})")
    return [(a, min(a + max_per_packet, num_samples)) for a in range(0, num_samples, max_per_packet)]


def as_tx_block(samples: np.ndarray, num_channels: int, radio: str) -> np.ndarray:
    """Samples as a C-contiguous complex64 (channels, n) block, with a clear error on shape."""
    block = np.asarray(samples)
    if block.ndim == 1:
        block = block[np.newaxis, :]
    if block.ndim != 2 or block.shape[0] != num_channels or block.shape[1] == 0:
        raise RadioError(
            f"{radio}: transmit samples must be shaped ({num_channels}, n>0) or (n,) for one channel "
            f"(got {np.shape(samples)})"
        )
    if not np.iscomplexobj(block) and not np.isrealobj(block):
        raise RadioError(f"{radio}: transmit samples must be numeric (got dtype {block.dtype})")
    block = np.ascontiguousarray(block, dtype=np.complex64)
    if not np.all(np.isfinite(block)):
        raise RadioError(f"{radio}: transmit samples hold NaN or inf")
    return block


class RxAssembler:
    """Collects the packets of one timed capture into a (channels, n) block.

    ``feed`` takes what one ``recv`` call gave (its metadata code, time and sample count, and the
    samples) and says whether the capture is complete. Errors go through a ``TimingLog``: a
    tolerated overflow is counted and the capture goes on (the lost samples stay zero, placed by
    the packets' time stamps); a tolerated timeout or late command ends it early, zero-filled.
    """

    def __init__(
        self, num_channels: int, num_samples: int, at_s: float, rate_sps: float, log: TimingLog
    ) -> None:
        if num_samples <= 0:
            raise RadioError(f"{log.radio}: receive needs num_samples > 0 (got {num_samples})")
        self.samples = np.zeros((num_channels, num_samples), dtype=np.complex64)
        self.num_samples = num_samples
        self.at_s = at_s
        self.rate_sps = rate_sps
        self.log = log
        self.filled = 0  # samples written so far (the write position)
        self.start_time_s: float | None = None
        self.done = False

    def feed(self, code: str | None, time_s: float | None, count: int, chunk: np.ndarray | None) -> bool:
        if self.done:
            return True
        if code is not None:
            self.log.report(code, time_s if time_s is not None else self.at_s)
            # Tolerated. After timeout or late no more samples will come for this command.
            if code in ("timeout", "late", "broken_chain"):
                self.done = True
            return self.done
        if count <= 0:
            return False
        if self.start_time_s is None:
            self.start_time_s = self.at_s if time_s is None else time_s
        elif time_s is not None:
            # After a tolerated overflow the next packet's time says where it belongs.
            offset = round((time_s - self.start_time_s) * self.rate_sps)
            if offset > self.filled:
                self.filled = min(offset, self.num_samples)
        take = min(count, self.num_samples - self.filled)
        if take > 0 and chunk is not None:
            self.samples[:, self.filled : self.filled + take] = chunk[:, :take]
        self.filled += take
        self.done = self.filled >= self.num_samples
        return self.done

    def result(self) -> RxResult:
        start = self.at_s if self.start_time_s is None else self.start_time_s
        return RxResult(samples=self.samples, start_time_s=start, warnings=dict(self.log.warnings))


class BurstTracker:
    """Bursts handed to the device whose outcome (UHD's async messages) is still to come.

    UHD reports a burst's fate later, in order: ``burst_ack`` per channel when its end went out,
    or ``time_error`` (late; the burst is dropped), ``underflow``, ``seq_error`` on the way.
    ``transmit`` returns once the burst is handed over, so several radios can be scheduled
    for one instant from one thread; their events are read on the radio's next call. Each
    burst keeps its caller's ``TimingLog``: a tolerated code is counted, any other raises then.
    """

    def __init__(self, num_channels: int, radio: str = "usrp") -> None:
        self.num_channels = num_channels
        self.radio = radio
        self.pending: list[tuple[float, float, TimingLog, set[int]]] = []  # at_s, deadline, log, acked
        self.totals: dict[str, int] = {}

    def add(self, at_s: float, ack_deadline: float, log: TimingLog) -> None:
        self.pending.append((at_s, ack_deadline, log, set()))

    def _finish(self, index: int) -> None:
        _, _, log, _ = self.pending.pop(index)
        for k, v in log.warnings.items():
            self.totals[k] = self.totals.get(k, 0) + v

    def event(self, name: str, time_s: float | None, channel: int) -> None:
        """One async message; raises the burst's ``RadioTimingError`` unless it tolerated it."""
        code = tx_event_code(name)
        if not self.pending:
            if code is not None:  # an event for no burst we know: never swallow it
                TimingLog((), self.radio, "transmit").report(
                    code, time_s, f"UHD event {name} outside any burst"
                )
            return
        at_s, _, log, acked = self.pending[0]
        if name == "burst_ack":
            acked.add(channel)
            if len(acked) >= self.num_channels:
                self._finish(0)
            return
        if code is None:
            return
        if code == "late":  # the device dropped the whole burst: no ack follows
            self._finish(0)
        log.report(
            code, at_s if time_s is None else time_s, f"UHD event {name} for the burst at {at_s:.6f} s"
        )

    def check_overdue(self, now: float) -> None:
        """A burst whose ack is overdue (by the host's clock) is a ``timeout``."""
        while self.pending and self.pending[0][1] < now:
            at_s, _, log, _ = self.pending[0]
            self._finish(0)
            log.report("timeout", at_s, "no burst_ack from the device in time")


# --- waits ---------------------------------------------------------------------------------------
def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float,
    poll_s: float = 0.01,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Poll ``predicate`` until true (True) or ``timeout_s`` passes (False)."""
    deadline = clock() + timeout_s
    while True:
        if predicate():
            return True
        if clock() >= deadline:
            return False
        sleep(poll_s)


def wait_for_pps_edge(
    read_last_pps_s: Callable[[], float],
    timeout_s: float = 1.5,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """Return right after the time of the last PPS changes (a fresh edge); RadioError if none."""
    last = read_last_pps_s()
    if not wait_until(lambda: read_last_pps_s() != last, timeout_s, 0.005, sleep, clock):
        raise RadioError(
            f"no PPS edge within {timeout_s} s (last PPS time stayed {last}); check the PPS cable "
            "and the time_source setting"
        )
    return read_last_pps_s()


def wait_for_lock(
    read_locked: Callable[[], bool],
    timeout_s: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    if not wait_until(read_locked, timeout_s, 0.05, sleep, clock):
        raise RadioError(f"{what} did not lock within {timeout_s} s; check the 10 MHz reference")


def tune_result_dict(result: Any) -> dict[str, float]:
    """A ``TuneResult`` as plain floats (kept per channel, reported in ``sensors()``)."""
    keys = ("target_rf_freq", "actual_rf_freq", "clipped_rf_freq", "target_dsp_freq", "actual_dsp_freq")
    return {k: float(getattr(result, k)) for k in keys}


# --- the driver ----------------------------------------------------------------------------------
class UsrpRadio:
    """One USRP (or several motherboards as one ``MultiUSRP``) behind the radio contract.

    ``rx_channels``/``tx_channels`` pick the device channels this radio uses (default: every RX
    channel, TX channel 0). ``min_lead_s`` is the least time between now and a timed command;
    anything closer is refused as ``late`` before it reaches the device.

    ``transmit`` returns once the burst is handed to the device (so one thread can schedule
    several radios for one instant). The device's verdict on it (ack, late, underflow) is read
    on this radio's next ``transmit``/``receive``/``sensors``/``flush_tx``, which raises an
    untolerated one then; tolerated ones are counted in ``sensors()['warnings.<code>']``. With
    ``wait_for_ack=True`` each ``transmit`` waits for its own verdict and reports it itself.
    """

    def __init__(
        self,
        args: str = "",
        name: str = "usrp",
        settings: RadioSettings | None = None,
        rx_channels: Sequence[int] | None = None,
        tx_channels: Sequence[int] = (0,),
        lock_timeout_s: float = 5.0,
        min_lead_s: float = 0.002,
        otw_format: str = "sc16",
        wait_for_ack: bool = False,
    ) -> None:
        self.name = name
        self.wait_for_ack = wait_for_ack
        self.args = args
        self.lock_timeout_s = lock_timeout_s
        self.min_lead_s = min_lead_s
        self.otw_format = otw_format
        try:
            import uhd  # lazy: only the radio server's (system) Python has it
        except Exception as exc:  # missing, or built against another NumPy line (ImportError et al.)
            raise RadioError(
                f"{name}: cannot import uhd ({exc}); run the radio server under the system Python "
                "with Debian's python3-uhd: /usr/bin/python3 -m drivers.usrp_server --args ..."
            ) from exc
        self._uhd = uhd
        # pybind11 reports malformed args as a TypeError about constructor overloads, losing
        # UHD's reason: check them as UHD's device_addr_t does, and say it in UHD's words.
        try:
            parse_device_args(args)
        except ValueError as exc:
            raise ConfigError(
                f"{name}: device args {args!r}: ValueError: {exc}; UHD device args are key=value "
                "pairs separated by commas, e.g. 'type=b200,serial=31A7F0B'"
            ) from None
        try:
            self._usrp = uhd.usrp.MultiUSRP(args)
        except TypeError as exc:  # args that UHD could not take as a device address after all
            raise ConfigError(
                f"{name}: device args {args!r}: UHD could not read them as a device address "
                f"({str(exc).splitlines()[0]}); use key=value pairs separated by commas"
            ) from exc
        except (RuntimeError, KeyError, IndexError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RadioError(
                f"{name}: could not open a USRP with args {args!r}: {first}; check the cable/network "
                "and the args (uhd_find_devices lists what is attached)"
            ) from exc
        n_rx = int(self._usrp.get_rx_num_channels())
        n_tx = int(self._usrp.get_tx_num_channels())
        self._rx_channels = list(range(n_rx)) if rx_channels is None else [int(c) for c in rx_channels]
        self._tx_channels = [int(c) for c in tx_channels]
        for kind, chans, total in (("rx", self._rx_channels, n_rx), ("tx", self._tx_channels, n_tx)):
            bad = [c for c in chans if not 0 <= c < total]
            if bad or not chans:
                raise RadioLimitError(
                    f"{name}: {kind}_channels={chans} invalid; the device has {total} {kind} channels"
                )
        self._rx_streamer: Any = None
        self._tx_streamer: Any = None
        self._bursts = BurstTracker(len(self._tx_channels), name)
        self._applied: RadioSettings | None = None  # what the device was last asked for
        self._max_rx = 0
        self._max_tx = 0
        self.tune_results: dict[str, dict[str, float]] = {}
        self.actual: dict[str, float] = {}
        self.warning_totals: dict[str, int] = {}
        self._settings = RadioSettings()
        self.configure(settings or RadioSettings())

    # --- contract: properties ---
    @property
    def settings(self) -> RadioSettings:
        return self._settings

    @property
    def num_rx_channels(self) -> int:
        return len(self._rx_channels)

    # --- configure ---
    def configure(self, settings: RadioSettings) -> None:
        """Apply what changed since the last configure (all of it the first time).

        Every check runs before any call changes the device: the TX gain cap (on the gain the
        device would really use, its step included), the antennas it offers. Bursts still in
        flight go out first (``flush_tx``), so a change never lands inside an earlier burst.
        ``settings`` then reports the gains the device actually set.
        """
        settings = settings.checked()
        uhd, u = self._uhd, self._usrp
        old = self._applied

        def changed(field_name: str) -> bool:
            return old is None or getattr(old, field_name) != getattr(settings, field_name)

        for chans, allowed_fn, ant, kind in (
            (self._tx_channels, u.get_tx_antennas, settings.tx_antenna, "tx"),
            (self._rx_channels, u.get_rx_antennas, settings.rx_antenna, "rx"),
        ):
            for ch in chans:
                allowed = list(allowed_fn(ch))
                if ant not in allowed:
                    raise RadioLimitError(
                        f"{self.name}: {kind}_antenna={ant!r} not on channel {ch}; allowed: {allowed}"
                    )
        for ch in self._tx_channels:
            would_be = float(u.get_tx_gain_range(ch).clip(settings.tx_gain_db, True))
            if would_be > settings.max_tx_gain_db + 1e-9:
                raise RadioLimitError(
                    f"{self.name}: tx_gain_db={settings.tx_gain_db} would be {would_be} dB on channel {ch} "
                    f"(the device's gain step), over the cap max_tx_gain_db={settings.max_tx_gain_db}"
                )
        if old == settings:
            return
        if self._tx_streamer is not None and self._bursts.pending:
            self.flush_tx(max(0.1, self._bursts.pending[-1][1] - time.monotonic()))
        if changed("clock_source") or changed("time_source"):
            self._set_sources(settings.clock_source, settings.time_source)
        for ch in self._tx_channels:
            if changed("rate_sps"):
                u.set_tx_rate(settings.rate_sps, ch)
            if changed("tx_gain_db"):
                u.set_tx_gain(settings.tx_gain_db, ch)
            if changed("tx_antenna"):
                u.set_tx_antenna(settings.tx_antenna, ch)
            if changed("frequency_hz"):  # a retune draws a new LO phase: only when asked
                request = uhd.types.TuneRequest(settings.frequency_hz)
                self.tune_results[f"tx{ch}"] = tune_result_dict(u.set_tx_freq(request, ch))
        for ch in self._rx_channels:
            if changed("rate_sps"):
                u.set_rx_rate(settings.rate_sps, ch)
            if changed("rx_gain_db"):
                u.set_rx_gain(settings.rx_gain_db, ch)
            if changed("rx_antenna"):
                u.set_rx_antenna(settings.rx_antenna, ch)
            if changed("frequency_hz"):
                request = uhd.types.TuneRequest(settings.frequency_hz)
                self.tune_results[f"rx{ch}"] = tune_result_dict(u.set_rx_freq(request, ch))
        rx_rate = float(u.get_rx_rate(self._rx_channels[0]))
        tx_rate = float(u.get_tx_rate(self._tx_channels[0]))
        for kind, got in (("rx", rx_rate), ("tx", tx_rate)):
            # Time <-> sample conversions assume the requested rate; a coerced rate breaks them.
            if abs(got - settings.rate_sps) > 1e-6 * settings.rate_sps:
                self._applied = None  # the device is half-configured: apply everything next time
                raise RadioLimitError(
                    f"{self.name}: the device coerced {kind} rate_sps={settings.rate_sps} to {got}; "
                    "pick a rate the master clock divides evenly"
                )
        tx_gain = float(u.get_tx_gain(self._tx_channels[0]))
        rx_gain = float(u.get_rx_gain(self._rx_channels[0]))
        self.actual = {
            "rx_rate_sps": rx_rate,
            "tx_rate_sps": tx_rate,
            "tx_gain_db": tx_gain,
            "rx_gain_db": rx_gain,
        }
        if self._rx_streamer is None or changed("rate_sps"):
            self._make_streamers()
        self._applied = settings
        self._settings = replace(settings, tx_gain_db=tx_gain, rx_gain_db=rx_gain)

    def _set_sources(self, clock_source: str, time_source: str) -> None:
        u = self._usrp
        clocks = list(u.get_clock_sources(0))
        times = list(u.get_time_sources(0))
        if clock_source not in clocks:
            raise RadioLimitError(
                f"{self.name}: clock_source={clock_source!r} not offered; allowed: {clocks}"
            )
        if time_source not in times:
            raise RadioLimitError(f"{self.name}: time_source={time_source!r} not offered; allowed: {times}")
        u.set_clock_source(clock_source)
        u.set_time_source(time_source)
        if clock_source != "internal":
            for mb in range(int(u.get_num_mboards())):
                if "ref_locked" in list(u.get_mboard_sensor_names(mb)):
                    wait_for_lock(
                        lambda mb=mb: bool(u.get_mboard_sensor("ref_locked", mb).to_bool()),
                        self.lock_timeout_s,
                        f"{self.name}: motherboard {mb} ref_locked ({clock_source})",
                    )

    def _make_streamers(self) -> None:
        uhd, u = self._uhd, self._usrp
        rx_args = uhd.usrp.StreamArgs("fc32", self.otw_format)
        rx_args.channels = self._rx_channels
        tx_args = uhd.usrp.StreamArgs("fc32", self.otw_format)
        tx_args.channels = self._tx_channels
        self._rx_streamer = u.get_rx_stream(rx_args)
        self._tx_streamer = u.get_tx_stream(tx_args)
        self._max_rx = int(self._rx_streamer.get_max_num_samps())
        self._max_tx = int(self._tx_streamer.get_max_num_samps())

    def _time_spec(self, time_s: float) -> Any:
        full, frac = split_time(time_s)
        return self._uhd.types.TimeSpec(full, frac)

    # --- time ---
    def time_now(self) -> float:
        return float(self._usrp.get_time_now().get_real_secs())

    def set_time_next_pps(self, time_s: float) -> None:
        """Latch ``time_s`` at the next PPS edge on every motherboard (sync.dox's recipe).

        With ``time_source='internal'`` there is no shared PPS, so the time is set now instead.
        """
        u = self._usrp
        if self._settings.time_source == "internal":
            u.set_time_now(self._time_spec(time_s))
            return

        def last_pps() -> float:
            return float(u.get_time_last_pps(0).get_real_secs())

        # Set right after an edge so every board sees the command before the next one.
        wait_for_pps_edge(last_pps)
        u.set_time_next_pps(self._time_spec(time_s))
        wait_for_pps_edge(last_pps)
        self._check_boards_agree(time_s)

    def set_time_unknown_pps(self, time_s: float) -> None:
        """UHD's own PPS-edge search, then the same time on every motherboard at the next edge."""
        self._usrp.set_time_unknown_pps(self._time_spec(time_s))
        self._check_boards_agree(time_s)

    def _check_boards_agree(self, time_s: float) -> None:
        u = self._usrp
        pps = [float(u.get_time_last_pps(mb).get_real_secs()) for mb in range(int(u.get_num_mboards()))]
        if max(pps) - min(pps) > 0.5 or abs(pps[0] - time_s) > 1.5:
            raise RadioError(
                f"{self.name}: time alignment failed: last-PPS times per motherboard {pps} (wanted {time_s}); "
                "check that every board gets the same PPS"
            )

    # --- timed TX ---
    def transmit(self, samples: np.ndarray, at_s: float, tolerate: Sequence[str] = ()) -> TxResult:
        log = TimingLog(tolerate, self.name, "transmit")
        block = as_tx_block(samples, len(self._tx_channels), self.name)
        self.poll_tx_events()  # an earlier burst's failure surfaces before this one goes out
        now = self.time_now()
        n = block.shape[1]
        if not check_schedule(at_s, now, self.min_lead_s, log):
            return self._tx_done(at_s, n, log)
        uhd, streamer = self._uhd, self._tx_streamer
        duration_s = n / self._settings.rate_sps
        # A timed burst fills the device buffer and then waits: send may block until at_s.
        send_timeout = (at_s - now) + duration_s + 0.5
        md = uhd.types.TXMetadata()
        packets = tx_packets(n, self._max_tx)
        for i, (a, b) in enumerate(packets):
            md.start_of_burst = i == 0
            md.end_of_burst = i == len(packets) - 1
            md.has_time_spec = i == 0
            if i == 0:
                md.time_spec = self._time_spec(at_s)
            sent_to = a
            while sent_to < b:
                sent = int(streamer.send(np.ascontiguousarray(block[:, sent_to:b]), md, send_timeout))
                if sent == 0:
                    self._end_burst()
                    log.report("timeout", at_s, "the device took no samples within the send timeout")
                    return self._tx_done(at_s, n, log)
                sent_to += sent
                md.start_of_burst = False
                md.has_time_spec = False
        ack_deadline = time.monotonic() + (at_s - now) + duration_s + ACK_MARGIN_S
        self._bursts.add(at_s, ack_deadline, log)
        if self.wait_for_ack:
            self.flush_tx(ack_deadline - time.monotonic() + 0.1)
        return TxResult(start_time_s=at_s, num_samples=n, warnings=dict(log.warnings))

    def _end_burst(self) -> None:
        md = self._uhd.types.TXMetadata()
        md.end_of_burst = True
        empty = np.zeros((len(self._tx_channels), 0), dtype=np.complex64)
        self._tx_streamer.send(empty, md, 0.1)

    def _read_tx_event(self, amd: Any, timeout_s: float) -> bool:
        if not self._tx_streamer.recv_async_msg(amd, timeout_s):
            return False
        when = float(amd.time_spec.get_real_secs()) if amd.has_time_spec else None
        self._bursts.event(enum_name(amd.event_code), when, int(amd.channel))
        return True

    def poll_tx_events(self) -> None:
        """Read the async messages already here (no waiting); raise an untolerated burst error."""
        if self._tx_streamer is None:
            return
        amd = self._uhd.types.TXAsyncMetadata()
        try:
            while self._read_tx_event(amd, 0.0):
                pass
            self._bursts.check_overdue(time.monotonic())
        finally:
            self._sync_totals()

    def flush_tx(self, timeout_s: float = 5.0) -> None:
        """Wait until every burst handed over has its verdict; raise the first untolerated one."""
        amd = self._uhd.types.TXAsyncMetadata()
        deadline = time.monotonic() + max(0.0, timeout_s)
        try:
            while self._bursts.pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._bursts.check_overdue(float("inf"))
                    break
                self._read_tx_event(amd, min(left, 0.1))
                self._bursts.check_overdue(time.monotonic())
        finally:
            self._sync_totals()

    def _sync_totals(self) -> None:
        for k, v in self._bursts.totals.items():
            self.warning_totals[k] = self.warning_totals.get(k, 0) + v
        self._bursts.totals.clear()

    def _tx_done(self, at_s: float, n: int, log: TimingLog) -> TxResult:
        for k, v in log.warnings.items():
            self.warning_totals[k] = self.warning_totals.get(k, 0) + v
        return TxResult(start_time_s=at_s, num_samples=n, warnings=dict(log.warnings))

    # --- timed RX ---
    def receive(
        self,
        num_samples: int,
        at_s: float,
        channels: Sequence[int] | None = None,
        timeout_s: float = 1.0,
        tolerate: Sequence[str] = (),
    ) -> RxResult:
        log = TimingLog(tolerate, self.name, "receive")
        self.poll_tx_events()
        picked = list(range(self.num_rx_channels)) if channels is None else [int(c) for c in channels]
        bad = [c for c in picked if not 0 <= c < self.num_rx_channels]
        if bad or not picked:
            raise RadioError(f"{self.name}: channels={picked} invalid; this radio has {self.num_rx_channels}")
        num_samples = int(num_samples)
        if num_samples <= 0 or num_samples > 0x0FFFFFFF:
            raise RadioError(f"{self.name}: num_samples must be in 1..{0x0FFFFFFF} (got {num_samples})")
        started = time.monotonic()
        now = self.time_now()
        rate = self._settings.rate_sps
        assembler = RxAssembler(self.num_rx_channels, num_samples, at_s, rate, log)
        if not check_schedule(at_s, now, self.min_lead_s, log) or not check_capture_window(
            at_s, num_samples, rate, now, timeout_s, log
        ):
            return self._rx_done(assembler, picked)  # tolerated late/timeout: nothing captured
        uhd, streamer = self._uhd, self._rx_streamer
        cmd = uhd.types.StreamCMD(uhd.types.StreamMode.num_done)
        cmd.num_samps = num_samples
        cmd.stream_now = False
        cmd.time_spec = self._time_spec(at_s)
        buffer = np.zeros((self.num_rx_channels, self._max_rx), dtype=np.complex64)
        md = uhd.types.RXMetadata()
        streamer.issue_stream_cmd(cmd)
        try:
            while not assembler.done:
                timeout = recv_timeouts_s(timeout_s, started, time.monotonic())
                count = int(streamer.recv(buffer, md, timeout))
                code = rx_code(enum_name(md.error_code), bool(md.out_of_sequence))
                when = float(md.time_spec.get_real_secs()) if md.has_time_spec else None
                assembler.feed(code, when, count, buffer)
        except RadioError:
            self._drain_rx()
            raise
        return self._rx_done(assembler, picked)

    def _rx_done(self, assembler: RxAssembler, picked: list[int]) -> RxResult:
        result = assembler.result()
        result.samples = np.ascontiguousarray(result.samples[picked])
        for k, v in result.warnings.items():
            self.warning_totals[k] = self.warning_totals.get(k, 0) + v
        return result

    def _drain_rx(self) -> None:
        """Stop streaming and drop whatever is still queued, so the next capture starts clean."""
        uhd = self._uhd
        self._rx_streamer.issue_stream_cmd(uhd.types.StreamCMD(uhd.types.StreamMode.stop_cont))
        buffer = np.zeros((self.num_rx_channels, self._max_rx), dtype=np.complex64)
        md = uhd.types.RXMetadata()
        for _ in range(1000):
            if int(self._rx_streamer.recv(buffer, md, 0.05)) == 0:
                break

    # --- sensors ---
    def sensors(self) -> dict[str, bool | float | str]:
        self.poll_tx_events()
        u = self._usrp
        out: dict[str, bool | float | str] = {"time_now_s": self.time_now(), "args": self.args}
        # model and serial, e.g. for SigMF's core:hw (UHD: a dict of strings per channel)
        info = dict(u.get_usrp_rx_info(self._rx_channels[0]))
        out["hw.model"] = str(info.get("mboard_id", ""))
        out["hw.serial"] = str(info.get("mboard_serial", ""))
        for mb in range(int(u.get_num_mboards())):
            for sensor in list(u.get_mboard_sensor_names(mb)):
                out[f"mb{mb}.{sensor}"] = sensor_value(u.get_mboard_sensor(sensor, mb))
        for ch in self._rx_channels:
            for sensor in list(u.get_rx_sensor_names(ch)):
                out[f"rx{ch}.{sensor}"] = sensor_value(u.get_rx_sensor(sensor, ch))
        for key, tuned in self.tune_results.items():
            for field_name, value in tuned.items():
                out[f"{key}.{field_name}"] = value
        out.update({f"actual.{k}": v for k, v in self.actual.items()})
        out.update({f"warnings.{k}": float(v) for k, v in self.warning_totals.items()})
        out["tx_bursts_pending"] = float(len(self._bursts.pending))
        return out

    def close(self) -> None:
        """Wait (briefly) for bursts in flight, then release the device."""
        if self._tx_streamer is not None and self._bursts.pending:
            with contextlib.suppress(RadioError):  # closing anyway; the verdicts are moot
                self.flush_tx(min(5.0, max(0.1, self._bursts.pending[-1][1] - time.monotonic())))
        self._rx_streamer = None
        self._tx_streamer = None
        self._usrp = None


def sensor_value(value: Any) -> bool | float | str:
    """A ``SensorValue`` as a plain value: booleans through ``.to_bool()``, numbers as floats."""
    kind = enum_name(value.type)
    if kind == "b":
        return bool(value.to_bool())
    if kind in ("i", "r"):
        return float(value.to_real()) if kind == "r" else float(value.to_int())
    return str(value.value)
