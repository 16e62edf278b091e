"""A fake ``uhd`` module as strict as Debian's python3-uhd 4.3, with a virtual-clock device.

Real uhd cannot stream without hardware, so ``UsrpRadio``'s loops run against this fake. It is
held to the real module's shape, not kinder:

- every API member carries the real pybind11 signature as its ``__doc__`` (copied from uhd 4.3)
  and checks its arguments against it, overloads included: ``TimeSpec(12.0, 0.5)`` is a
  ``TypeError`` (the two-argument form takes (int, float)), ``StreamCMD()`` needs its mode and has
  no ``.mode``, ``get_clock_sources()`` needs its board, rate setters default to every channel;
- ``RXMetadata`` and ``TXAsyncMetadata`` fields are read-only; a fresh ``TXAsyncMetadata``'s
  ``event_code`` is not a valid member (its name is ``???``, as in uhd);
- ``MultiUSRP(args)`` parses the args as UHD's ``device_addr_t`` and, like pybind11 over it,
  raises ``TypeError`` for a malformed string such as ``type=b200,,==``.

``describe`` turns a module's classes into names, kinds and signatures; ``test_usrp_uhd.py``
compares the fake's description with the real module's (under the system Python) and fails on
any divergence. This file imports only the standard library and NumPy, so it runs there too.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
from collections.abc import Callable
from typing import Any

import numpy as np

ALL_CHANS = 18446744073709551615  # uhd's ALL_CHANS / ALL_MBOARDS (size_t(~0))
MB = "uhd.libpyuhd.usrp.multi_usrp"
T = "uhd.libpyuhd.types"


# --- recording what the driver touches ---------------------------------------------------------------
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


# --- pybind11-style signatures -----------------------------------------------------------------------
PYBIND_CLASSES: dict[str, type] = {}  # pybind11 type name -> fake class (filled by @pybind_class)


def pybind_class(*names: str) -> Callable[[type], type]:
    def register(cls: type) -> type:
        for name in names:
            PYBIND_CLASSES[name] = cls
        return cls

    return register


def _params(sig: str) -> list[tuple[str, str, bool]]:
    """'f(self: X, a: float, b: int = 0) -> None' -> [('a', 'float', False), ('b', 'int', True)]."""
    inside = sig[sig.index("(") + 1 : sig.rindex(") ->")]
    out = []
    for part in [p.strip() for p in inside.split(", ")][1:]:  # drop self
        name, _, rest = part.partition(": ")
        kind, _, default = rest.partition(" = ")
        out.append((name, kind, bool(default)))
    return out


def _fits(kind: str, value: Any) -> bool:
    value = raw(value)
    if kind == "float":
        return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, str)
    if kind == "int":
        return isinstance(value, int | np.integer)
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool | np.bool_)
    if kind == "object":
        return True
    cls = PYBIND_CLASSES.get(kind)
    return cls is not None and isinstance(value, cls)


def _bind(sigs: list[str], args: tuple, kwargs: dict, name: str) -> tuple[int, dict[str, Any]]:
    for index, sig in enumerate(sigs):
        params = _params(sig)
        if len(args) > len(params) or set(kwargs) - {p[0] for p in params}:
            continue
        bound: dict[str, Any] = {}
        ok = True
        for i, (pname, kind, has_default) in enumerate(params):
            if i < len(args):
                value = args[i]
            elif pname in kwargs:
                value = kwargs[pname]
            elif has_default:
                continue
            else:
                ok = False
                break
            if not _fits(kind, value):
                ok = False
                break
            bound[pname] = value
        if ok:
            return index, bound
    what = "constructor" if name == "__init__" else "function"
    listed = "\n".join(f"    {i}. {s}" for i, s in enumerate(sigs, 1))
    invoked = ", ".join([*(repr(raw(a)) for a in args), *(f"{k}={raw(v)!r}" for k, v in kwargs.items())])
    raise TypeError(
        f"{name}(): incompatible {what} arguments. The following argument types are supported:\n"
        f"{listed}\n\nInvoked with: {invoked}"
    )


def pybind(*sigs: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a fake method uhd's signature(s) as its doc, and check every call against them.

    The method gets the bound arguments by their pybind11 names (plus ``overload``, the index
    of the signature that matched, when it declares it).
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = fn.__name__
        wants_overload = "overload" in inspect.signature(fn).parameters

        @functools.wraps(fn)
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            index, bound = _bind(list(sigs), args, kwargs, name)
            if wants_overload:
                bound["overload"] = index
            return fn(self, **bound)

        if len(sigs) == 1:
            method.__doc__ = sigs[0]
        else:
            numbered = "\n\n".join(f"{i}. {s}" for i, s in enumerate(sigs, 1))
            method.__doc__ = f"{name}(*args, **kwargs)\nOverloaded function.\n\n{numbered}\n"
        method.__pybind__ = True  # type: ignore[attr-defined]
        return method

    return wrap


def field(name: str, kind: str, writable: bool = True) -> property:
    """A metadata field: read-only where uhd's is, type-checked where it is writable."""

    def get(self: Any) -> Any:
        return getattr(self, f"_{name}")

    def put(self: Any, value: Any) -> None:
        if not _fits(kind, value):
            raise TypeError(
                f"(): incompatible function arguments for {name}: expected {kind}, got {raw(value)!r}"
            )
        setattr(self, f"_{name}", raw(value))

    return property(get, put if writable else None)


# --- enums -------------------------------------------------------------------------------------------
class _Enum:
    """A pybind11 enum: members are class attributes; an unknown value's name is '???'."""

    _values: dict[int, str] = {}

    def __init__(self, value: int) -> None:
        self.value = int(value)

    @property
    def name(self) -> str:
        return self._values.get(self.value, "???")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.value == self.value  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.value))

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {self.value}>"


def _enum(cls_name: str, pybind_name: str, members: dict[str, int]) -> type:
    cls = type(cls_name, (_Enum,), {"_values": {v: k for k, v in members.items()}})
    init_sig = f"__init__(self: {pybind_name}, value: int) -> None"
    cls.__init__ = pybind(init_sig)(lambda self, value: _Enum.__init__(self, value))  # type: ignore[method-assign]
    cls.__init__.__name__ = "__init__"
    for member, value in members.items():
        setattr(cls, member, cls(value))
    PYBIND_CLASSES[pybind_name] = cls
    return cls


StreamMode = _enum(
    "StreamMode", f"{T}.stream_mode", {"start_cont": 97, "stop_cont": 111, "num_done": 100, "num_more": 109}
)
RXMetadataErrorCode = _enum(
    "RXMetadataErrorCode",
    f"{T}.rx_metadata_error_code",
    {"none": 0, "timeout": 1, "late": 2, "broken_chain": 4, "overflow": 8, "alignment": 12, "bad_packet": 15},
)
TXMetadataEventCode = _enum(
    "TXMetadataEventCode",
    f"{T}.tx_metadata_event_code",
    {
        "burst_ack": 1,
        "underflow": 2,
        "seq_error": 4,
        "time_error": 8,
        "underflow_in_packet": 16,
        "seq_error_in_packet": 32,
        "user_payload": 64,
    },
)


# --- value types -------------------------------------------------------------------------------------
@pybind_class(f"{T}.time_spec")
class TimeSpec:
    @pybind(
        f"__init__(self: {T}.time_spec, arg0: float) -> None",
        f"__init__(self: {T}.time_spec, arg0: int, arg1: float) -> None",
        f"__init__(self: {T}.time_spec, arg0: int, arg1: int, arg2: float) -> None",
    )
    def __init__(self, arg0: Any, arg1: Any = 0.0, arg2: Any = None, overload: int = 0) -> None:
        if overload == 2:  # (full seconds, ticks, tick rate)
            self._secs = float(arg0) + float(arg1) / float(arg2)
        else:
            self._secs = float(arg0) + float(arg1)

    @pybind(f"get_real_secs(self: {T}.time_spec) -> float")
    def get_real_secs(self) -> float:
        return self._secs


@pybind_class(f"{T}.tune_request")
class TuneRequest:
    @pybind(
        f"__init__(self: {T}.tune_request, arg0: float, arg1: float) -> None",
        f"__init__(self: {T}.tune_request, target_freq: float = 0.0) -> None",
    )
    def __init__(
        self, arg0: float = 0.0, arg1: float = 0.0, target_freq: float = 0.0, overload: int = 0
    ) -> None:
        self._target_freq = float(arg0 if overload == 0 else target_freq)

    target_freq = field("target_freq", "float")


@pybind_class(f"{T}.tune_result")
class TuneResult:
    @pybind(f"__init__(self: {T}.tune_result) -> None")
    def __init__(self) -> None:
        for k in (
            "target_rf_freq",
            "actual_rf_freq",
            "clipped_rf_freq",
            "target_dsp_freq",
            "actual_dsp_freq",
        ):
            setattr(self, f"_{k}", 0.0)

    target_rf_freq = field("target_rf_freq", "float")
    actual_rf_freq = field("actual_rf_freq", "float")
    clipped_rf_freq = field("clipped_rf_freq", "float")
    target_dsp_freq = field("target_dsp_freq", "float")
    actual_dsp_freq = field("actual_dsp_freq", "float")


@pybind_class(f"{T}.tx_metadata")
class TXMetadata:
    @pybind(f"__init__(self: {T}.tx_metadata) -> None")
    def __init__(self) -> None:
        self._start_of_burst = self._end_of_burst = self._has_time_spec = False
        self._time_spec = TimeSpec(0.0)

    start_of_burst = field("start_of_burst", "bool")
    end_of_burst = field("end_of_burst", "bool")
    has_time_spec = field("has_time_spec", "bool")
    time_spec = field("time_spec", f"{T}.time_spec")


@pybind_class(f"{T}.rx_metadata")
class RXMetadata:
    """Filled by ``recv``; read-only to the caller, as in uhd."""

    @pybind(f"__init__(self: {T}.rx_metadata) -> None")
    def __init__(self) -> None:
        self._error_code = RXMetadataErrorCode.none
        self._out_of_sequence = self._has_time_spec = False
        self._time_spec = TimeSpec(0.0)

    error_code = field("error_code", f"{T}.rx_metadata_error_code", writable=False)
    out_of_sequence = field("out_of_sequence", "bool", writable=False)
    has_time_spec = field("has_time_spec", "bool", writable=False)
    time_spec = field("time_spec", f"{T}.time_spec", writable=False)


@pybind_class(f"{T}.async_metadata")
class TXAsyncMetadata:
    """Filled by ``recv_async_msg``; read-only, and its fresh event code is no valid member."""

    @pybind(f"__init__(self: {T}.async_metadata) -> None")
    def __init__(self) -> None:
        self._event_code = TXMetadataEventCode(0)
        self._channel = 0
        self._has_time_spec = False
        self._time_spec = TimeSpec(0.0)

    event_code = field("event_code", f"{T}.tx_metadata_event_code", writable=False)
    channel = field("channel", "int", writable=False)
    has_time_spec = field("has_time_spec", "bool", writable=False)
    time_spec = field("time_spec", f"{T}.time_spec", writable=False)


@pybind_class(f"{T}.stream_cmd")
class StreamCMD:
    """Its mode is fixed at construction and not readable back (uhd has no ``.mode``)."""

    @pybind(f"__init__(self: {T}.stream_cmd, arg0: {T}.stream_mode) -> None")
    def __init__(self, arg0: Any) -> None:
        self._mode = raw(arg0)
        self._num_samps = 0
        self._stream_now = True
        self._time_spec = TimeSpec(0.0)

    num_samps = field("num_samps", "int")
    stream_now = field("stream_now", "bool")
    time_spec = field("time_spec", f"{T}.time_spec")


SensorType = _enum("SensorType", f"{T}.data_type", {"b": 98, "i": 105, "r": 114, "s": 115})


@pybind_class(f"{T}.sensor_value")
class SensorValue:
    @pybind(
        f"__init__(self: {T}.sensor_value, arg0: str, arg1: bool, arg2: str, arg3: str) -> None",
        f"__init__(self: {T}.sensor_value, arg0: str, arg1: int, arg2: str, arg3: str) -> None",
        f"__init__(self: {T}.sensor_value, arg0: str, arg1: float, arg2: str, arg3: str) -> None",
        f"__init__(self: {T}.sensor_value, arg0: str, arg1: str, arg2: str) -> None",
    )
    def __init__(self, arg0: str, arg1: Any, arg2: str, arg3: str = "", overload: int = 0) -> None:
        self._name = arg0
        self._type = [SensorType.b, SensorType.i, SensorType.r, SensorType.s][overload]
        self._bool = bool(arg1) if overload == 0 else False
        if overload == 0:
            self._value = "true" if arg1 else "false"
        elif overload == 2:
            self._value = arg3 % arg1 if "%" in arg3 else str(arg1)  # the format is the 4th argument
        else:
            self._value = str(arg1)

    type = field("type", f"{T}.data_type")
    value = field("value", "str")

    @pybind(f"to_bool(self: {T}.sensor_value) -> bool")
    def to_bool(self) -> bool:
        return self._bool

    @pybind(f"to_int(self: {T}.sensor_value) -> int")
    def to_int(self) -> int:
        return int(float(self._value))

    @pybind(f"to_real(self: {T}.sensor_value) -> float")
    def to_real(self) -> float:
        return float(self._value)


@pybind_class(f"{T}.meta_range_t")
class MetaRange:
    @pybind(
        f"__init__(self: {T}.meta_range_t) -> None",
        f"__init__(self: {T}.meta_range_t, arg0: float, arg1: float) -> None",
        f"__init__(self: {T}.meta_range_t, arg0: float, arg1: float, arg2: float) -> None",
    )
    def __init__(self, arg0: float = 0.0, arg1: float = 0.0, arg2: float = 0.0, overload: int = 0) -> None:
        self._start, self._stop, self._step = float(arg0), float(arg1), float(arg2)

    @pybind(f"clip(self: {T}.meta_range_t, value: float, clip_step: bool = False) -> float")
    def clip(self, value: float, clip_step: bool = False) -> float:
        value = min(max(float(value), self._start), self._stop)
        if clip_step and self._step > 0:
            value = self._start + round((value - self._start) / self._step) * self._step
        return value


@pybind_class("uhd::stream_args_t", "uhd.libpyuhd.usrp.stream_args")
class StreamArgs:
    @pybind("__init__(self: uhd.libpyuhd.usrp.stream_args, arg0: str, arg1: str) -> None")
    def __init__(self, arg0: str, arg1: str) -> None:
        self.cpu, self.otw = arg0, arg1  # (not read back by the driver)
        self._channels: list[int] = []

    @property
    def channels(self) -> list[int]:
        return list(self._channels)

    @channels.setter
    def channels(self, value: Any) -> None:
        value = raw(value)
        if not all(isinstance(c, int | np.integer) for c in value):
            raise TypeError(f"channels: expected a list of ints, got {value!r}")
        self._channels = [int(c) for c in value]


def parse_device_args(text: str) -> dict[str, str]:
    """UHD's ``device_addr_t(string)``: comma-separated key=value pairs (empty pairs skipped).

    Written out here as UHD's C++ does it, not imported from ``drivers.radio``, so that the driver's
    own check is tested against an independent reading of UHD."""
    out: dict[str, str] = {}
    for pair in text.split(","):
        if not pair.strip():
            continue
        toks = pair.split("=")
        if len(toks) == 1:
            toks.append("")
        if len(toks) != 2:
            raise ValueError(f"invalid args string: {text}")
        out[toks[0].strip()] = toks[1].strip()
    return out


# --- the device ------------------------------------------------------------------------------------
class DeviceState:
    """A virtual-clock USRP behind ``MultiUSRP``: time advances only when the driver waits on it.

    The test hooks live here, not on the API class: ``calls`` (what was set), ``now``,
    ``rx_faults`` (packet index -> (code, samples lost)), ``tx_inject`` (extra async events before
    each burst_ack), ``lock_after_polls``, ``bursts``, ``rx_cmds``, ``recv_timeouts``.
    """

    RATE_OK = (1e6, 2e6)
    RX_CHANNELS, TX_CHANNELS = 2, 1

    def __init__(self, args: dict[str, str], touched: set[str]) -> None:
        self.args = args
        self.touched = touched
        self.now = 10.0
        self.last_pps = 10.0
        self.pending_pps: float | None = None
        self.calls: list[str] = []
        self.lock_after_polls = 0
        self.rates = {"rx": [1e6] * self.RX_CHANNELS, "tx": [1e6] * self.TX_CHANNELS}
        self.gains = {"rx": [0.0] * self.RX_CHANNELS, "tx": [0.0] * self.TX_CHANNELS}
        self.rx_faults: dict[int, tuple[str, int]] = {}
        self.tx_inject: list[str] = []
        self.rx_cmds: list[StreamCMD] = []
        self.recv_timeouts: list[float] = []
        self.bursts: list[tuple[float, np.ndarray]] = []
        self.pending: dict[str, Any] | None = None
        self.burst: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []

    def track(self, obj: Any, label: str) -> Tracked:
        return Tracked(obj, label, self.touched)

    def advance(self, dt: float) -> None:
        new = self.now + dt
        if math.floor(new) > math.floor(self.now):  # a PPS edge
            if self.pending_pps is not None:
                new, self.pending_pps = self.pending_pps + (new - math.floor(new)), None
            self.last_pps = float(math.floor(new))
        self.now = new

    def channels(self, kind: str, chan: int) -> list[int]:
        total = self.RX_CHANNELS if kind == "rx" else self.TX_CHANNELS
        if chan == ALL_CHANS:
            return list(range(total))
        if not 0 <= chan < total:
            raise IndexError(f"multi_usrp: {kind} channel {chan} out of range for {total} channels")
        return [chan]


GAIN_RANGE = (0.0, 89.5, 0.5)  # a B200's TX gain range: 0.5 dB steps


@pybind_class(MB)
class MultiUSRP:
    """``uhd.usrp.MultiUSRP`` with the members the driver uses, each with uhd 4.3's signature."""

    def __init__(self, args: str) -> None:
        # uhd.usrp.MultiUSRP(args) converts args to a device_addr; pybind11 turns a failed
        # conversion into TypeError (UHD's own ValueError text is lost on the way).
        try:
            parsed = parse_device_args(args) if isinstance(args, str) else None
        except ValueError:
            parsed = None
        if parsed is None:
            raise TypeError(
                "__init__(): incompatible constructor arguments. The following argument types are "
                f"supported:\n    1. {MB}(arg0: uhd.libpyuhd.types.device_addr)\n\nInvoked with: {args!r}"
            )
        if parsed.get("type") == "none":
            raise RuntimeError("LookupError: KeyError: No devices found for ----->\nDevice Address:\n")
        self._dev = DeviceState(parsed, set())

    __init__.__doc__ = "MultiUSRP constructor"

    # configuration
    @pybind(f"get_rx_num_channels(self: {MB}) -> int")
    def get_rx_num_channels(self) -> int:
        return self._dev.RX_CHANNELS

    @pybind(f"get_tx_num_channels(self: {MB}) -> int")
    def get_tx_num_channels(self) -> int:
        return self._dev.TX_CHANNELS

    @pybind(f"get_rx_antennas(self: {MB}, chan: int = 0) -> List[str]")
    def get_rx_antennas(self, chan: int = 0) -> list[str]:
        self._dev.channels("rx", chan)
        return ["TX/RX", "RX2"]

    @pybind(f"get_tx_antennas(self: {MB}, chan: int = 0) -> List[str]")
    def get_tx_antennas(self, chan: int = 0) -> list[str]:
        self._dev.channels("tx", chan)
        return ["TX/RX"]

    @pybind(f"get_clock_sources(self: {MB}, arg0: int) -> List[str]")
    def get_clock_sources(self, arg0: int) -> list[str]:
        return ["internal", "external", "gpsdo"]

    @pybind(f"get_time_sources(self: {MB}, arg0: int) -> List[str]")
    def get_time_sources(self, arg0: int) -> list[str]:
        return ["internal", "external", "gpsdo"]

    @pybind(f"set_clock_source(self: {MB}, source: str, mboard: int = {ALL_CHANS}) -> None")
    def set_clock_source(self, source: str, mboard: int = ALL_CHANS) -> None:
        self._dev.calls.append(f"clock={source}")

    @pybind(f"set_time_source(self: {MB}, source: str, mboard: int = {ALL_CHANS}) -> None")
    def set_time_source(self, source: str, mboard: int = ALL_CHANS) -> None:
        self._dev.calls.append(f"time={source}")

    @pybind(f"get_num_mboards(self: {MB}) -> int")
    def get_num_mboards(self) -> int:
        return 1

    @pybind(f"get_usrp_rx_info(self: {MB}, chan: int = 0) -> Dict[str, str]")
    def get_usrp_rx_info(self, chan: int = 0) -> dict[str, str]:
        # UHD 4.3 answers a dict of strings (these keys from a B210)
        return {"mboard_id": "B210", "mboard_name": "", "mboard_serial": "31A7F0B", "rx_id": "B210 (0x0020)"}

    @pybind(f"get_mboard_sensor_names(self: {MB}, mboard: int = 0) -> List[str]")
    def get_mboard_sensor_names(self, mboard: int = 0) -> list[str]:
        return ["ref_locked"]

    @pybind(f"get_mboard_sensor(self: {MB}, name: str, mboard: int = 0) -> {T}.sensor_value")
    def get_mboard_sensor(self, name: str, mboard: int = 0) -> Tracked:
        self._dev.lock_after_polls -= 1
        locked = self._dev.lock_after_polls < 0
        return self._dev.track(SensorValue(name, locked, "locked", "unlocked"), "types.SensorValue")

    @pybind(f"get_rx_sensor_names(self: {MB}, chan: int = 0) -> List[str]")
    def get_rx_sensor_names(self, chan: int = 0) -> list[str]:
        return ["lo_locked"]

    @pybind(f"get_rx_sensor(self: {MB}, name: str, chan: int = 0) -> {T}.sensor_value")
    def get_rx_sensor(self, name: str, chan: int = 0) -> Tracked:
        return self._dev.track(SensorValue(name, True, "locked", "unlocked"), "types.SensorValue")

    def _set_rate(self, kind: str, rate: float, chan: int) -> None:
        for ch in self._dev.channels(kind, chan):
            self._dev.calls.append(f"{kind}_rate={rate}" + ("" if chan != ALL_CHANS else " (all)"))
            self._dev.rates[kind][ch] = rate if rate in self._dev.RATE_OK else 1.024e6

    @pybind(f"set_tx_rate(self: {MB}, rate: float, chan: int = {ALL_CHANS}) -> None")
    def set_tx_rate(self, rate: float, chan: int = ALL_CHANS) -> None:
        self._set_rate("tx", rate, chan)

    @pybind(f"set_rx_rate(self: {MB}, rate: float, chan: int = {ALL_CHANS}) -> None")
    def set_rx_rate(self, rate: float, chan: int = ALL_CHANS) -> None:
        self._set_rate("rx", rate, chan)

    @pybind(f"get_tx_rate(self: {MB}, chan: int = 0) -> float")
    def get_tx_rate(self, chan: int = 0) -> float:
        return self._dev.rates["tx"][self._dev.channels("tx", chan)[0]]

    @pybind(f"get_rx_rate(self: {MB}, chan: int = 0) -> float")
    def get_rx_rate(self, chan: int = 0) -> float:
        return self._dev.rates["rx"][self._dev.channels("rx", chan)[0]]

    def _set_gain(self, kind: str, gain: float, chan: int, name: str | None) -> None:
        if name not in (None, "", "PGA"):
            raise KeyError(f"no gain element {name!r}")
        (ch,) = self._dev.channels(kind, chan)
        self._dev.calls.append(f"{kind}_gain={gain}")
        self._dev.gains[kind][ch] = MetaRange(*GAIN_RANGE).clip(gain, True)

    @pybind(
        f"set_tx_gain(self: {MB}, gain: float, name: str, chan: int = 0) -> None",
        f"set_tx_gain(self: {MB}, gain: float, chan: int = 0) -> None",
    )
    def set_tx_gain(self, gain: float, name: str | None = None, chan: int = 0) -> None:
        self._set_gain("tx", gain, chan, name)

    @pybind(
        f"set_rx_gain(self: {MB}, gain: float, name: str, chan: int = 0) -> None",
        f"set_rx_gain(self: {MB}, gain: float, chan: int = 0) -> None",
    )
    def set_rx_gain(self, gain: float, name: str | None = None, chan: int = 0) -> None:
        self._set_gain("rx", gain, chan, name)

    @pybind(
        f"get_tx_gain_range(self: {MB}, name: str, chan: int = 0) -> {T}.meta_range_t",
        f"get_tx_gain_range(self: {MB}, chan: int = 0) -> {T}.meta_range_t",
    )
    def get_tx_gain_range(self, name: str | None = None, chan: int = 0) -> Tracked:
        self._dev.channels("tx", chan)
        return self._dev.track(MetaRange(*GAIN_RANGE), "types.MetaRange")

    @pybind(
        f"get_tx_gain(self: {MB}, name: str, chan: int = 0) -> float",
        f"get_tx_gain(self: {MB}, chan: int = 0) -> float",
    )
    def get_tx_gain(self, name: str | None = None, chan: int = 0) -> float:
        return self._dev.gains["tx"][self._dev.channels("tx", chan)[0]]

    @pybind(
        f"get_rx_gain(self: {MB}, name: str, chan: int = 0) -> float",
        f"get_rx_gain(self: {MB}, chan: int = 0) -> float",
    )
    def get_rx_gain(self, name: str | None = None, chan: int = 0) -> float:
        return self._dev.gains["rx"][self._dev.channels("rx", chan)[0]]

    @pybind(f"set_tx_antenna(self: {MB}, ant: str, chan: int = 0) -> None")
    def set_tx_antenna(self, ant: str, chan: int = 0) -> None:
        self._dev.calls.append(f"tx_ant={ant}")

    @pybind(f"set_rx_antenna(self: {MB}, ant: str, chan: int = 0) -> None")
    def set_rx_antenna(self, ant: str, chan: int = 0) -> None:
        self._dev.calls.append(f"rx_ant={ant}")

    def _tune(self, request: Any) -> Tracked:
        result = TuneResult()
        f = raw(request).target_freq
        for k in ("target_rf_freq", "actual_rf_freq", "clipped_rf_freq"):
            setattr(result, k, f - 1e6)
        result.target_dsp_freq = result.actual_dsp_freq = 1e6
        return self._dev.track(result, "types.TuneResult")

    @pybind(f"set_tx_freq(self: {MB}, tune_request: {T}.tune_request, chan: int = 0) -> {T}.tune_result")
    def set_tx_freq(self, tune_request: Any, chan: int = 0) -> Tracked:
        self._dev.calls.append("tx_freq")
        return self._tune(tune_request)

    @pybind(f"set_rx_freq(self: {MB}, tune_request: {T}.tune_request, chan: int = 0) -> {T}.tune_result")
    def set_rx_freq(self, tune_request: Any, chan: int = 0) -> Tracked:
        self._dev.calls.append("rx_freq")
        return self._tune(tune_request)

    @pybind(f"get_rx_stream(self: {MB}, arg0: uhd::stream_args_t) -> uhd::rx_streamer")
    def get_rx_stream(self, arg0: Any) -> Tracked:
        return self._dev.track(RXStreamer(self._dev, len(raw(arg0).channels)), "usrp.RXStreamer")

    @pybind(f"get_tx_stream(self: {MB}, arg0: uhd::stream_args_t) -> uhd::tx_streamer")
    def get_tx_stream(self, arg0: Any) -> Tracked:
        return self._dev.track(TXStreamer(self._dev, len(raw(arg0).channels)), "usrp.TXStreamer")

    # time
    @pybind(f"get_time_now(self: {MB}, mboard: int = 0) -> {T}.time_spec")
    def get_time_now(self, mboard: int = 0) -> Tracked:
        return self._dev.track(TimeSpec(self._dev.now), "types.TimeSpec")

    @pybind(f"set_time_now(self: {MB}, time_spec: {T}.time_spec, mboard: int = {ALL_CHANS}) -> None")
    def set_time_now(self, time_spec: Any, mboard: int = ALL_CHANS) -> None:
        self._dev.calls.append("set_time_now")
        self._dev.now = raw(time_spec).get_real_secs()

    @pybind(f"get_time_last_pps(self: {MB}, mboard: int = 0) -> {T}.time_spec")
    def get_time_last_pps(self, mboard: int = 0) -> Tracked:
        self._dev.advance(0.1)  # time passes while the host polls
        return self._dev.track(TimeSpec(self._dev.last_pps), "types.TimeSpec")

    @pybind(f"set_time_next_pps(self: {MB}, time_spec: {T}.time_spec, mboard: int = {ALL_CHANS}) -> None")
    def set_time_next_pps(self, time_spec: Any, mboard: int = ALL_CHANS) -> None:
        self._dev.calls.append("set_time_next_pps")
        self._dev.pending_pps = raw(time_spec).get_real_secs()

    @pybind(f"set_time_unknown_pps(self: {MB}, arg0: {T}.time_spec) -> None")
    def set_time_unknown_pps(self, arg0: Any) -> None:
        self._dev.pending_pps = raw(arg0).get_real_secs()
        self._dev.advance(1.0)


RX = "uhd.libpyuhd.usrp.rx_streamer"
TX = "uhd.libpyuhd.usrp.tx_streamer"


@pybind_class(RX)
class RXStreamer:
    def __init__(self, dev: DeviceState, channels: int) -> None:
        self._dev, self._channels, self.packets = dev, channels, 0

    @pybind(f"get_max_num_samps(self: {RX}) -> int")
    def get_max_num_samps(self) -> int:
        return 100

    @pybind(f"issue_stream_cmd(self: {RX}, arg0: {T}.stream_cmd) -> None")
    def issue_stream_cmd(self, arg0: Any) -> None:
        cmd = raw(arg0)
        dev = self._dev
        dev.rx_cmds.append(cmd)
        if cmd._mode == StreamMode.stop_cont:
            dev.pending = None
            return
        t = cmd.time_spec.get_real_secs()
        late = not cmd.stream_now and t < dev.now
        dev.pending = {"t": t, "left": cmd.num_samps, "late": late}

    @pybind(f"recv(self: {RX}, np_array: object, metadata: {T}.rx_metadata, timeout: float = 0.1) -> int")
    def recv(self, np_array: np.ndarray, metadata: Any, timeout: float = 0.1) -> int:
        dev, m, p, buf = self._dev, raw(metadata), self._dev.pending, np_array
        dev.recv_timeouts.append(timeout)
        m._error_code, m._has_time_spec, m._out_of_sequence = RXMetadataErrorCode.none, False, False
        if p is not None and p["late"]:
            dev.pending = None
            m._error_code, m._has_time_spec, m._time_spec = RXMetadataErrorCode.late, True, TimeSpec(p["t"])
            return 0
        if p is None or p["t"] > dev.now + timeout:
            dev.advance(timeout)
            m._error_code = RXMetadataErrorCode.timeout
            return 0
        fault = dev.rx_faults.pop(self.packets, None)
        self.packets += 1
        rate = dev.rates["rx"][0]
        if fault is not None:
            code, lost = fault
            m._error_code = getattr(RXMetadataErrorCode, code)
            m._has_time_spec, m._time_spec = True, TimeSpec(p["t"])
            p["t"] += lost / rate
            p["left"] -= lost
            return 0
        k = min(100, p["left"])
        start = round(p["t"] * rate)
        ramp = ((start + np.arange(k)) % 10_000).astype(np.float32)
        for ch in range(self._channels):
            buf[ch, :k] = ramp + 1j * ch
        m._has_time_spec, m._time_spec = True, TimeSpec(p["t"])
        dev.now = max(dev.now, p["t"] + k / rate)
        p["t"] += k / rate
        p["left"] -= k
        if p["left"] <= 0:
            dev.pending = None
        return k


@pybind_class(TX)
class TXStreamer:
    def __init__(self, dev: DeviceState, channels: int) -> None:
        self._dev, self._channels = dev, channels

    @pybind(f"get_max_num_samps(self: {TX}) -> int")
    def get_max_num_samps(self) -> int:
        return 64

    @pybind(f"send(self: {TX}, np_array: object, metadata: {T}.tx_metadata, timeout: float = 0.1) -> int")
    def send(self, np_array: np.ndarray, metadata: Any, timeout: float = 0.1) -> int:
        dev, m, buf = self._dev, raw(metadata), np_array
        assert buf.flags.c_contiguous and buf.dtype == np.complex64
        if m.start_of_burst:
            assert m.has_time_spec, "a burst must start with its time"
            dev.burst = {"t": m.time_spec.get_real_secs(), "parts": [], "timeout": timeout}
        assert dev.burst is not None, "samples outside a burst"
        dev.burst["parts"].append(buf.copy())
        if m.end_of_burst:
            b, dev.burst = dev.burst, None
            late = b["t"] < dev.now
            samples = np.concatenate(b["parts"], axis=1)
            dev.bursts.append((b["t"], samples))
            end = b["t"] + samples.shape[1] / dev.rates["tx"][0]
            for name in ["time_error"] if late else [*dev.tx_inject, "burst_ack"]:
                # The device reports once the burst is over (at once when it was late).
                dev.events.append(
                    {"code": getattr(TXMetadataEventCode, name), "t": b["t"], "due": dev.now if late else end}
                )
        return buf.shape[1]

    @pybind(f"recv_async_msg(self: {TX}, async_metadata: {T}.async_metadata, timeout: float = 0.1) -> bool")
    def recv_async_msg(self, async_metadata: Any, timeout: float = 0.1) -> bool:
        dev = self._dev
        if not dev.events or dev.events[0]["due"] > dev.now + timeout:
            dev.advance(timeout)
            return False
        e, m = dev.events.pop(0), raw(async_metadata)
        dev.now = max(dev.now, e["due"])
        m._event_code, m._has_time_spec, m._time_spec, m._channel = e["code"], True, TimeSpec(e["t"]), 0
        return True


# --- the module ------------------------------------------------------------------------------------
# The fake's classes under the names the driver reaches them by (uhd.<module>.<Class>).
API: dict[str, type] = {
    "usrp.MultiUSRP": MultiUSRP,
    "usrp.StreamArgs": StreamArgs,
    "usrp.RXStreamer": RXStreamer,
    "usrp.TXStreamer": TXStreamer,
    "types.TimeSpec": TimeSpec,
    "types.TuneRequest": TuneRequest,
    "types.TuneResult": TuneResult,
    "types.TXMetadata": TXMetadata,
    "types.TXAsyncMetadata": TXAsyncMetadata,
    "types.RXMetadata": RXMetadata,
    "types.StreamCMD": StreamCMD,
    "types.StreamMode": StreamMode,
    "types.RXMetadataErrorCode": RXMetadataErrorCode,
    "types.TXMetadataEventCode": TXMetadataEventCode,
    "types.SensorValue": SensorValue,
    "types.MetaRange": MetaRange,
}


class _Namespace:
    """A fake uhd submodule that records which names the driver looks up."""

    def __init__(self, label: str, members: dict[str, Any], touched: set[str]) -> None:
        self._label, self._members, self._touched = label, members, touched

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        self._touched.add(f"{self._label}.{name}")
        return self._members[name]


def build_module(touched: set[str], devices: list[DeviceState]) -> types.SimpleNamespace:
    """The fake ``uhd`` module; every device opened is appended to ``devices``."""

    def tracked(cls: type, label: str) -> Callable[..., Tracked]:
        def make(*args: Any) -> Tracked:
            obj = cls(*args)
            if isinstance(obj, MultiUSRP):
                obj._dev.touched = touched
                devices.append(obj._dev)
            return Tracked(obj, label, touched)

        return make

    members: dict[str, dict[str, Any]] = {"usrp": {}, "types": {}}
    for owner, cls in API.items():
        module, name = owner.split(".")
        members[module][name] = cls if issubclass(cls, _Enum) else tracked(cls, owner)
    for enum_owner in ("types.StreamMode", "types.RXMetadataErrorCode", "types.TXMetadataEventCode"):
        module, name = enum_owner.split(".")
        members[module][name] = _Namespace(enum_owner, dict(vars(API[enum_owner])), touched)
    return types.SimpleNamespace(
        usrp=_Namespace("usrp", members["usrp"], touched),
        types=_Namespace("types", members["types"], touched),
    )


# --- description, for the comparison with the real module --------------------------------------------
def _signature_lines(obj: Any) -> list[str]:
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    if not doc:
        return []
    if doc[0].endswith("(*args, **kwargs)"):  # overloaded: the numbered signatures too
        return [doc[0]] + [line.strip() for line in doc if line[:1].isdigit()]
    return [doc[0]]


def describe(cls: type, names: list[str] | None = None) -> dict[str, Any]:
    """Names, kinds and pybind11 signatures of a class (real or fake): methods give their
    signature lines, properties whether they are writable, enum members their value."""
    out: dict[str, Any] = {}
    if names is None:
        names = [n for n in dir(cls) if not n.startswith("_") and _is_api(cls, n)]
        if (
            getattr(cls.__init__, "__pybind__", False) or cls.__init__.__doc__
        ):  # a constructor the driver calls
            names.insert(0, "__init__")
    for name in names:
        if name == "__init__":
            out[name] = {"kind": "constructor", "signature": _signature_lines(cls.__init__)}
            continue
        try:
            attr = inspect.getattr_static(cls, name)
        except AttributeError:
            out[name] = {"kind": "missing"}
            continue
        if isinstance(attr, property):
            out[name] = {"kind": "property", "writable": attr.fset is not None}
        elif isinstance(attr, cls):
            out[name] = {"kind": "member", "value": int(attr.value)}
        else:
            out[name] = {"kind": "method", "signature": _signature_lines(getattr(cls, name))}
    return out


def _is_api(cls: type, name: str) -> bool:
    attr = inspect.getattr_static(cls, name)
    return isinstance(attr, property | cls) or getattr(attr, "__pybind__", False)


def describe_fake() -> dict[str, dict[str, Any]]:
    return {owner: describe(cls) for owner, cls in API.items()}


def describe_real(fake: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The real uhd, described at the names the fake has (run under the system Python)."""
    import uhd

    out = {}
    for owner, members in fake.items():
        module, name = owner.split(".")
        cls = getattr(getattr(uhd, module), name, None)
        out[owner] = {"missing": True} if cls is None else describe(cls, list(members))
    return out
