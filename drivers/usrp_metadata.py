"""What UHD reports, in the radio contract's words: metadata and async-event codes mapped to the
contract's codes, pybind11 enum names, sensor values and tune results as plain values, and
``UHD_API_USED``, the list of every uhd name the USRP driver touches.

Pure functions: nothing here imports ``uhd``, so the tests drive them without a device.
"""

from __future__ import annotations

from typing import Any

from drivers.errors import RadioError

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


def tune_result_dict(result: Any) -> dict[str, float]:
    """A ``TuneResult`` as plain floats (kept per channel, reported in ``sensors()``)."""
    keys = ("target_rf_freq", "actual_rf_freq", "clipped_rf_freq", "target_dsp_freq", "actual_dsp_freq")
    return {k: float(getattr(result, k)) for k in keys}


def sensor_value(value: Any) -> bool | float | str:
    """A ``SensorValue`` as a plain value: booleans through ``.to_bool()``, numbers as floats."""
    kind = enum_name(value.type)
    if kind == "b":
        return bool(value.to_bool())
    if kind in ("i", "r"):
        return float(value.to_real()) if kind == "r" else float(value.to_int())
    return str(value.value)
