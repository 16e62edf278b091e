"""The radio server's wire format: a JSON header frame, then at most one raw complex64 frame.

Shared by ``drivers/usrp_server.py`` (under the system Python: NumPy 1.24, pyzmq 24) and
``drivers/remote_radio.py`` (in the venv: NumPy 2, pyzmq 27), so it uses only the standard
library and NumPy calls common to both lines. No pickle: headers are JSON, IQ is little-endian
complex64 bytes whose shape the header states.

Request header: ``{"v": 1, "id": n, "op": "...", "radio": "name" | null, "args": {...}}``.
Reply header: ``{"v": 1, "id": n, "ok": true, "result": {...}}`` or
``{"v": 1, "id": n, "ok": false, "error": {"type": "...", "message": "...", "code": ..., "time_s": ...}}``.
A frame of IQ follows the header when the header's ``iq`` field gives its shape.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

from drivers.errors import ConfigError, ProtocolError, RadioError, RadioLimitError, RadioTimingError
from drivers.radio import RadioSettings, RxResult, TxResult

VERSION = 1
IQ_DTYPE = np.dtype("<c8")  # complex64, little-endian on the wire
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
OPS = (
    "hello",
    "configure",
    "time_now",
    "set_time_next_pps",
    "set_time_unknown_pps",
    "transmit",
    "receive",
    "sensors",
)
# Error types a reply may name; anything else arrives as a plain RadioError.
ERROR_TYPES: dict[str, type[Exception]] = {
    "RadioError": RadioError,
    "RadioTimingError": RadioTimingError,
    "RadioLimitError": RadioLimitError,
    "ConfigError": ConfigError,
    "ProtocolError": ProtocolError,
}


def _plain(value: Any) -> Any:
    """JSON's ``default`` hook: NumPy scalars become Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot encode {type(value).__name__} in a radio message header")


def encode_header(header: dict[str, Any]) -> bytes:
    return json.dumps(header, default=_plain, allow_nan=False, separators=(",", ":")).encode()


def decode_header(frame: bytes) -> dict[str, Any]:
    """Parse a header frame or raise ``ProtocolError`` saying what is wrong with it."""
    if len(frame) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header frame of {len(frame)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(frame).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"header frame is not UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a JSON object (got {type(header).__name__})")
    if header.get("v") != VERSION:
        raise ProtocolError(f"wire version {header.get('v')!r} not supported (this side speaks {VERSION})")
    return header


def iq_to_frame(samples: np.ndarray) -> tuple[list[int], bytes]:
    block = np.ascontiguousarray(samples, dtype=IQ_DTYPE)
    return [int(d) for d in block.shape], block.tobytes()


def frame_to_iq(shape: Any, frame: bytes, max_bytes: int) -> np.ndarray:
    """Rebuild an IQ array from its header shape and raw frame, checking every size first."""
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ProtocolError(f"iq shape must be a list of 1 or 2 non-negative ints (got {shape!r})")
    expected = math.prod(shape) * IQ_DTYPE.itemsize
    if expected > max_bytes:
        raise ProtocolError(f"iq of shape {shape} is {expected} bytes, over the cap of {max_bytes}")
    if len(frame) != expected:
        raise ProtocolError(f"iq frame holds {len(frame)} bytes but shape {shape} needs {expected}")
    # Copy: frombuffer views are read-only and tied to the message's memory.
    return np.frombuffer(frame, dtype=IQ_DTYPE).reshape(shape).astype(np.complex64)


def settings_to_dict(settings: RadioSettings) -> dict[str, Any]:
    return dataclasses.asdict(settings)


def settings_from_dict(data: Any) -> RadioSettings:
    if not isinstance(data, dict):
        raise ProtocolError(f"settings must be an object (got {type(data).__name__})")
    allowed = {f.name for f in dataclasses.fields(RadioSettings)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ProtocolError(f"unknown settings {unknown}; allowed: {sorted(allowed)}")
    return RadioSettings(**data)


def tx_result_to_dict(result: TxResult) -> dict[str, Any]:
    return {
        "start_time_s": float(result.start_time_s),
        "num_samples": int(result.num_samples),
        "warnings": {str(k): int(v) for k, v in result.warnings.items()},
    }


def tx_result_from_dict(data: dict[str, Any]) -> TxResult:
    return TxResult(
        start_time_s=float(data["start_time_s"]),
        num_samples=int(data["num_samples"]),
        warnings={str(k): int(v) for k, v in data.get("warnings", {}).items()},
    )


def rx_result_meta(result: RxResult) -> dict[str, Any]:
    return {
        "start_time_s": float(result.start_time_s),
        "warnings": {str(k): int(v) for k, v in result.warnings.items()},
    }


def error_to_dict(exc: BaseException) -> dict[str, Any]:
    """An exception as a reply's ``error`` object (type name, message, timing code and time)."""
    name = type(exc).__name__
    if name not in ERROR_TYPES:
        # Walk the bases so e.g. a StageError subclass arrives as its nearest known type.
        name = next((c.__name__ for c in type(exc).__mro__ if c.__name__ in ERROR_TYPES), "RadioError")
    out: dict[str, Any] = {"type": name, "message": str(exc)}
    if isinstance(exc, RadioTimingError):
        out["code"] = exc.code
        out["time_s"] = exc.time_s
    return out


def error_from_dict(data: Any, where: str) -> Exception:
    """The exception a reply's ``error`` object describes, naming the server it came from."""
    if not isinstance(data, dict):
        return RadioError(f"{where}: malformed error reply {data!r}")
    kind = ERROR_TYPES.get(str(data.get("type")), RadioError)
    message = f"{where}: {data.get('message', 'unknown error')}"
    if kind is RadioTimingError:
        code = str(data.get("code") or "timeout")
        time_s = data.get("time_s")
        return RadioTimingError(message, code=code, time_s=None if time_s is None else float(time_s))
    if kind is ProtocolError:
        # The client's contract raises RadioError; keep the server's words.
        return RadioError(f"{message} (the server refused the request)")
    return kind(message)
