"""``UsrpRadio``: the radio contract on a real USRP through UHD's ``uhd.usrp.MultiUSRP``.

This module runs inside the radio server (``drivers/usrp_server.py``) under the system Python,
because Debian's python3-uhd is built against NumPy 1.x. ``uhd`` is imported lazily, in the
constructor, so the module itself imports anywhere.

The driver is split by job; this module is the device set-up (open, channels, configure,
clock and time sources, sensors, close), and it hands the streams to two parts:

- ``drivers/usrp_bursts.py``: timed bursts (``TxBursts``; packetising, the async verdicts);
- ``drivers/usrp_capture.py``: timed captures (``RxCaptures``; stream commands, assembly);
- ``drivers/usrp_timing.py``: the ``TimingLog``, schedule checks, PPS and lock waits, and the
  ``DeviceClock``;
- ``drivers/usrp_metadata.py``: UHD's codes in the contract's words, and ``UHD_API_USED``.

Everything that is logic rather than a UHD call lives in pure helpers there, which the tests
drive without a device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from drivers.errors import ConfigError, RadioError, RadioLimitError
from drivers.radio import RadioSettings, RxResult, TxResult, parse_device_args
from drivers.usrp_bursts import TxBursts
from drivers.usrp_capture import RxCaptures
from drivers.usrp_metadata import sensor_value, tune_result_dict
from drivers.usrp_timing import DeviceClock, TimingLog, wait_for_lock


class UsrpRadio:
    """One USRP (or several motherboards as one ``MultiUSRP``) behind the radio contract.

    ``transmit`` returns once the burst is handed to the device (so one thread can schedule
    several radios for one instant). The device's verdict on it (ack, late, underflow) is read
    on this radio's next ``transmit``/``receive``/``sensors``/``flush_tx``, which raises an
    untolerated one then; tolerated ones are counted in ``sensors()['warnings.<code>']``.

    Parameters
    ----------
    args
        UHD device args, ``key=value`` pairs separated by commas (``"type=b200,serial=31A7F0B"``);
        ``""`` opens the first device UHD finds.
    name
        This radio's name in every error and log line.
    settings
        The first configuration applied (default: ``RadioSettings()``).
    rx_channels
        The device's RX channels this radio captures on (default: every one).
    tx_channels
        The device's TX channels a burst goes out on (default: channel 0).
    lock_timeout_s
        How long a non-internal clock source may take to report ``ref_locked``.
    min_lead_s
        The least time between now and a timed command; anything closer is refused as ``late``
        before it reaches the device.
    otw_format
        The over-the-wire sample format of both streamers (UHD's ``sc16`` or ``sc8``).
    wait_for_ack
        Each ``transmit`` waits for its own burst's verdict and reports it itself, instead of
        leaving it to the next call.
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
        # What the device was last asked for (None: apply everything on the next configure).
        self._applied: RadioSettings | None = None
        self.tune_results: dict[str, dict[str, float]] = {}
        self.actual: dict[str, float] = {}
        self.warning_totals: dict[str, int] = {}
        self.clock = DeviceClock(uhd, self._usrp, name)
        # The two stream sides share the warning counts; _make_streamers gives them their streamers.
        self._tx = TxBursts(
            uhd, self.clock, len(self._tx_channels), name, min_lead_s, wait_for_ack, self.warning_totals
        )
        self._rx = RxCaptures(uhd, self.clock, len(self._rx_channels), min_lead_s, self.warning_totals)
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
        self._tx.flush_in_flight()
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
        if self._rx.streamer is None or changed("rate_sps"):
            self._make_streamers(settings.rate_sps)
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

    def _make_streamers(self, rate_sps: float) -> None:
        uhd, u = self._uhd, self._usrp
        rx_args = uhd.usrp.StreamArgs("fc32", self.otw_format)
        rx_args.channels = self._rx_channels
        tx_args = uhd.usrp.StreamArgs("fc32", self.otw_format)
        tx_args.channels = self._tx_channels
        rx_streamer = u.get_rx_stream(rx_args)
        tx_streamer = u.get_tx_stream(tx_args)
        self._rx.attach(rx_streamer, rate_sps)
        self._tx.attach(tx_streamer, rate_sps)

    # --- time ---
    def time_now(self) -> float:
        return self.clock.now()

    def set_time_next_pps(self, time_s: float) -> None:
        """Latch ``time_s`` at the next PPS edge on every motherboard (sync.dox's recipe).

        With ``time_source='internal'`` there is no shared PPS, so the time is set now instead.
        """
        self.clock.set_next_pps(time_s, self._settings.time_source)

    def set_time_unknown_pps(self, time_s: float) -> None:
        """UHD's own PPS-edge search, then the same time on every motherboard at the next edge."""
        self.clock.set_unknown_pps(time_s)

    # --- timed TX ---
    def transmit(self, samples: np.ndarray, at_s: float, tolerate: Sequence[str] = ()) -> TxResult:
        return self._tx.transmit(samples, at_s, tolerate)

    def poll_tx_events(self) -> None:
        """Read the async messages already here (no waiting); raise an untolerated burst error."""
        self._tx.poll()

    def flush_tx(self, timeout_s: float = 5.0) -> None:
        """Wait until every burst handed over has its verdict; raise the first untolerated one."""
        self._tx.flush(timeout_s)

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
        self._tx.poll()
        picked = list(range(self.num_rx_channels)) if channels is None else [int(c) for c in channels]
        bad = [c for c in picked if not 0 <= c < self.num_rx_channels]
        if bad or not picked:
            raise RadioError(f"{self.name}: channels={picked} invalid; this radio has {self.num_rx_channels}")
        num_samples = int(num_samples)
        if num_samples <= 0 or num_samples > 0x0FFFFFFF:
            raise RadioError(f"{self.name}: num_samples must be in 1..{0x0FFFFFFF} (got {num_samples})")
        return self._rx.receive(num_samples, at_s, picked, timeout_s, log)

    # --- sensors ---
    def sensors(self) -> dict[str, bool | float | str]:
        self.poll_tx_events()
        u = self._usrp
        out: dict[str, bool | float | str] = {"time_now_s": self.clock.now(), "args": self.args}
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
        out["tx_bursts_pending"] = float(self._tx.pending)
        return out

    def close(self) -> None:
        """Wait (briefly) for bursts in flight, then release the device."""
        # Closing anyway: the verdicts are moot.
        with contextlib.suppress(RadioError):
            self._tx.flush_in_flight(at_most_s=5.0)
        self._rx.streamer = None
        self._tx.streamer = None
        self._usrp = None
