"""``RemoteRadio``: the radio contract, served by a radio server (``drivers/usrp_server.py``).

A DEALER socket sends one request at a time and waits for its reply under a deadline. The
deadline covers the operation itself (a timed capture waits until ``at_s``, then for its
samples), judged from the device clock the client tracks from ``time_now`` replies. When the
deadline passes, the socket is thrown away (linger 0, so nothing queued lingers) and a fresh one
connects for the next call: a dead, lost or unreachable server is a ``RadioError`` within the
timeout, never a hang. Replies carry the server's errors with their types, so a late burst is
a ``RadioTimingError`` with its code and time here as on the server.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from drivers import radio_wire as wire
from drivers.errors import ConfigError, RadioError, RadioLimitError
from drivers.radio import RadioSettings, RxResult, TxResult
from drivers.zmq_security import (
    HandshakeWatch,
    cap_inbound_size,
    require_loopback_for_insecure,
    secure_client,
)

HEADER_ALLOWANCE_BYTES = 1024 * 1024  # room for the header frames above the IQ cap


class RemoteRadio:
    """A radio hosted by a radio server at ``address``.

    Parameters
    ----------
    address
        The radio server's ZeroMQ address, e.g. ``tcp://10.0.0.7:5600``.
    radio
        One radio on a server that hosts several (sim); ``None`` takes its first.
    secret_key_file
        CURVE: this client's ``.key_secret``. With ``server_public_key_file``, CURVE is on;
        without both, the address must be loopback.
    server_public_key_file
        CURVE: the server's public ``.key``.
    rpc_timeout_s
        How long every call may take beyond the time the operation itself needs.
    max_wait_s
        The most that a timed call's wait until its device time adds to the reply's allowance
        (so a far-off time, or a wrong clock estimate, cannot hold a call for ever).
    max_message_bytes
        The largest IQ payload sent or accepted in one message.
    context
        The ZeroMQ context; default the process-wide one.
    """

    def __init__(
        self,
        address: str,
        radio: str | None = None,
        secret_key_file: str | Path | None = None,
        server_public_key_file: str | Path | None = None,
        rpc_timeout_s: float = 5.0,
        max_wait_s: float = 60.0,
        max_message_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES,
        context: zmq.Context | None = None,
    ) -> None:
        if rpc_timeout_s <= 0:
            raise ConfigError(f"rpc_timeout_s must be > 0 (got {rpc_timeout_s})")
        if bool(secret_key_file) != bool(server_public_key_file):
            raise ConfigError(
                "CURVE needs both secret_key_file (this client's .key_secret) and "
                "server_public_key_file (the server's .key), or neither on loopback"
            )
        if not secret_key_file:
            require_loopback_for_insecure(address)
        self.address = address
        self._radio = radio
        self._keys = (secret_key_file, server_public_key_file)
        self.rpc_timeout_s = float(rpc_timeout_s)
        self.max_wait_s = float(max_wait_s)
        self.max_message_bytes = int(max_message_bytes)
        self._context = context or zmq.Context.instance()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._socket: zmq.Socket | None = None
        self._watch: HandshakeWatch | None = None
        self._closed = False
        # Device time tracking: (device time, local monotonic time) at the last time_now reply.
        self._clock: tuple[float, float] | None = None
        try:
            hello = self._call("hello", {})[0]
        except BaseException:
            self.close()  # a client that never came up holds no socket
            raise
        self.name: str = str(hello["name"])
        self.backend: str = str(hello.get("backend", ""))
        self._num_rx = int(hello["num_rx_channels"])
        self._settings = wire.settings_from_dict(hello["settings"])
        if self._radio is None:
            self._radio = self.name

    # --- transport ---
    def _connect(self) -> zmq.Socket:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # Never queue requests for a server that is not there: a dead server's calls fail fast.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        cap_inbound_size(sock, self.max_message_bytes + HEADER_ALLOWANCE_BYTES)
        secret, server_public = self._keys
        if secret and server_public:
            secure_client(sock, secret, server_public)
        self._watch = HandshakeWatch(sock)  # before connect: a failed connect can then say why
        sock.connect(self.address)
        return sock

    def _drop_socket(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _call(
        self, op: str, args: dict[str, Any], iq: np.ndarray | None = None, extra_s: float = 0.0
    ) -> tuple[dict[str, Any], np.ndarray | None]:
        """Send one request and wait for its reply; raise the server's error or a timeout."""
        with self._lock:
            if self._closed:
                raise RadioError(f"radio at {self.address} is closed")
            if self._socket is None:
                self._socket = self._connect()
            request_id = next(self._ids)
            header: dict[str, Any] = {"v": wire.VERSION, "id": request_id, "op": op, "radio": self._radio}
            frames: list[bytes] = []
            if iq is not None:
                args = dict(args)
                args["shape"], raw = wire.iq_to_frame(iq)
                if len(raw) > self.max_message_bytes:
                    raise RadioLimitError(
                        f"{len(raw)} bytes of IQ exceed the message cap of {self.max_message_bytes}; "
                        "send shorter bursts"
                    )
                frames = [raw]
            header["args"] = args
            timeout_s = self.rpc_timeout_s + max(0.0, extra_s)
            deadline = time.monotonic() + timeout_s
            sock = self._socket
            # With IMMEDIATE set, the socket is writable only once a connection (and, with
            # CURVE, its handshake) is up. The op's own allowance is not for connecting.
            connect_ms = int(self.rpc_timeout_s * 1000)
            if not sock.poll(connect_ms, zmq.POLLOUT):
                error = self._no_reply(op, self.rpc_timeout_s, "could not connect")
                self._drop_socket()
                raise error
            try:
                sock.send_multipart([wire.encode_header(header), *frames], flags=zmq.NOBLOCK)
            except zmq.Again:
                self._drop_socket()
                raise self._no_reply(op, timeout_s, "could not send") from None
            while True:
                remaining_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
                if remaining_ms <= 0 or not sock.poll(remaining_ms, zmq.POLLIN):
                    # Drop the socket: a late reply must not be taken for the next call's.
                    self._drop_socket()
                    raise self._no_reply(op, timeout_s, "no reply")
                reply = sock.recv_multipart()
                try:
                    head = wire.decode_header(reply[0])
                except Exception as exc:
                    self._drop_socket()
                    raise RadioError(
                        f"radio server {self.address}: unreadable reply to {op}: {exc}"
                    ) from None
                if head.get("id") != request_id:
                    continue  # a stale reply to an earlier call
                break
        if not head.get("ok"):
            where = f"radio server {self.address}" + (f" ({self._radio})" if self._radio else "")
            raise wire.error_from_dict(head.get("error"), where)
        samples = None
        if "iq" in head:
            if len(reply) != 2:
                raise RadioError(f"radio server {self.address}: reply to {op} lacks its IQ frame")
            try:
                samples = wire.frame_to_iq(head["iq"], reply[1], self.max_message_bytes)
            except Exception as exc:
                raise RadioError(f"radio server {self.address}: bad IQ in reply to {op}: {exc}") from None
        result = head.get("result")
        if not isinstance(result, dict):
            raise RadioError(f"radio server {self.address}: reply to {op} has no result object")
        return result, samples

    def _no_reply(self, op: str, timeout_s: float, why: str) -> RadioError:
        if why == "could not connect" and self._watch is not None:
            hint = self._watch.diagnose(secure=bool(self._keys[0]))
        elif self._keys[0]:
            hint = "check that this client's public key is in the server's allow list and the server key is right"
        else:
            hint = "is the server running? (python3 -m drivers.usrp_server --bind ...)"
        return RadioError(f"radio server {self.address}: {why} to {op!r} within {timeout_s:.1f} s; {hint}")

    def _wait_until(self, at_s: float) -> float:
        """Seconds until device time ``at_s``, from the tracked clock (capped at ``max_wait_s``)."""
        if self._clock is None:
            self.time_now()
        assert self._clock is not None
        device_s, local_s = self._clock
        estimate = device_s + (time.monotonic() - local_s)
        return min(max(0.0, at_s - estimate), self.max_wait_s)

    # --- the contract ---
    @property
    def settings(self) -> RadioSettings:
        return self._settings

    @property
    def num_rx_channels(self) -> int:
        return self._num_rx

    def configure(self, settings: RadioSettings) -> None:
        settings = settings.checked()  # refuse over-cap gains here too, before the wire
        # A real device may wait for its reference to lock and retune: allow for it.
        result, _ = self._call("configure", {"settings": wire.settings_to_dict(settings)}, extra_s=15.0)
        self._settings = wire.settings_from_dict(result["settings"])

    def time_now(self) -> float:
        sent = time.monotonic()
        result, _ = self._call("time_now", {})
        back = time.monotonic()
        device_s = float(result["time_s"])
        self._clock = (device_s, (sent + back) / 2)
        return device_s

    def set_time_next_pps(self, time_s: float) -> None:
        self._call("set_time_next_pps", {"time_s": float(time_s)}, extra_s=5.0)
        self._clock = None

    def set_time_unknown_pps(self, time_s: float) -> None:
        self._call("set_time_unknown_pps", {"time_s": float(time_s)}, extra_s=5.0)
        self._clock = None

    def transmit(self, samples: np.ndarray, at_s: float, tolerate: Sequence[str] = ()) -> TxResult:
        block = np.asarray(samples)
        if not np.issubdtype(block.dtype, np.number):
            raise RadioError(f"{self.name}: transmit samples must be numeric (got dtype {block.dtype})")
        duration_s = block.shape[-1] / self._settings.rate_sps if block.ndim else 0.0
        result, _ = self._call(
            "transmit",
            {"at_s": float(at_s), "tolerate": list(tolerate)},
            iq=block.astype(np.complex64, copy=False),
            extra_s=self._wait_until(at_s) + duration_s + 1.0,
        )
        return wire.tx_result_from_dict(result)

    def receive(
        self,
        num_samples: int,
        at_s: float,
        channels: Sequence[int] | None = None,
        timeout_s: float = 1.0,
        tolerate: Sequence[str] = (),
    ) -> RxResult:
        num_samples = int(num_samples)
        duration_s = num_samples / self._settings.rate_sps
        result, samples = self._call(
            "receive",
            {
                "num_samples": num_samples,
                "at_s": float(at_s),
                "channels": None if channels is None else [int(c) for c in channels],
                "timeout_s": float(timeout_s),
                "tolerate": list(tolerate),
            },
            # The radio bounds the whole capture by timeout_s from the call (see UsrpRadio).
            extra_s=float(timeout_s) + duration_s + 1.0,
        )
        if samples is None:
            raise RadioError(f"radio server {self.address}: receive reply carried no samples")
        if samples.ndim == 1:
            samples = samples[np.newaxis, :]
        return RxResult(
            samples=samples,
            start_time_s=float(result["start_time_s"]),
            warnings={str(k): int(v) for k, v in result.get("warnings", {}).items()},
        )

    def sensors(self) -> dict[str, bool | float | str]:
        result, _ = self._call("sensors", {})
        return dict(result["sensors"])

    def close(self) -> None:
        """Close this client's socket; the server and its device stay up for other callers."""
        with self._lock:
            self._drop_socket()
            self._closed = True

    def __enter__(self) -> RemoteRadio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteRadio({self.address!r}, radio={self._radio!r})"
