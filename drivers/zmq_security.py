"""CurveZMQ for every ZeroMQ service of the testbed (the FL coordinator, the radio servers).

Key pairs are ZeroMQ certificate files (``NAME.key`` public, ``NAME.key_secret`` secret) made
by ``testbed keys``. A server admits only clients whose public certificates sit in its allow-list
folder (ironhouse pattern). Plain-text sockets are allowed on loopback only.

Runs under the system Python too (the radio server): pyzmq and the standard library only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from drivers.errors import ConfigError


def make_keypair(keys_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Create ``keys_dir/NAME.key`` and ``keys_dir/NAME.key_secret``; return both paths."""
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(keys_dir), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def load_keypair(secret_file: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file, with a clear error if it is missing."""
    path = Path(secret_file)
    if not path.is_file():
        raise ConfigError(f"{path}: no such key file; make one with `testbed keys`")
    public, secret = zmq.auth.load_certificate(str(path))
    if secret is None:
        raise ConfigError(f"{path}: holds no secret key (use the .key_secret file, not the .key)")
    return public, secret


def load_public_key(public_file: str | Path) -> bytes:
    path = Path(public_file)
    if not path.is_file():
        raise ConfigError(f"{path}: no such public key file; copy it from the server's keys folder")
    public, _ = zmq.auth.load_certificate(str(path))
    return public


def is_loopback(address: str) -> bool:
    """True for tcp://127.x.x.x, tcp://[::1], tcp://localhost, ipc:// and inproc://."""
    parsed = urlparse(address)
    if parsed.scheme in ("ipc", "inproc"):
        return True
    host = parsed.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback_for_insecure(address: str) -> None:
    if not is_loopback(address):
        raise ConfigError(
            f"insecure (no CURVE) is allowed on loopback only, but the address is {address!r}; "
            "drop --insecure and make keys with `testbed keys`"
        )


class AuditedAuthenticator(ThreadAuthenticator):
    """A ``ThreadAuthenticator`` that keeps every refused handshake (address, key, reason), so
    an unauthenticated peer leaves a trace. ``denied()`` hands them over and forgets them; past
    ``max_kept`` unread ones only the count grows."""

    def __init__(self, context: zmq.Context, max_kept: int = 256) -> None:
        super().__init__(context)
        self.max_kept = max_kept
        self.denied_count = 0
        self._denied: list[dict[str, str]] = []
        self._request: dict[str, str] = {}
        self._lock = threading.Lock()

    def handle_zap_message(self, msg: list[bytes]) -> Any:
        # [version, request id, domain, address, identity, mechanism, credentials...]; the base
        # method is a coroutine in newer pyzmq and plain in Debian's: hand back what it gives.
        key = z85.encode(msg[6]).decode() if len(msg) > 6 and len(msg[6]) == 32 else ""
        address = msg[3].decode(errors="replace") if len(msg) > 3 else ""
        self._request = {"address": address, "key": key}
        return super().handle_zap_message(msg)

    def _send_zap_reply(
        self, request_id: bytes, status_code: bytes, status_text: bytes, user_id: str = "anonymous"
    ) -> None:
        if status_code != b"200":
            with self._lock:
                self.denied_count += 1
                if len(self._denied) < self.max_kept:
                    self._denied.append({**self._request, "reason": status_text.decode(errors="replace")})
        super()._send_zap_reply(request_id, status_code, status_text, user_id)

    def denied(self) -> list[dict[str, str]]:
        with self._lock:
            out, self._denied = self._denied, []
        return out


def start_authenticator(context: zmq.Context, allow_dir: str | Path) -> AuditedAuthenticator:
    """Admit only clients whose public certificates are in ``allow_dir``; refusals are kept."""
    allow_dir = Path(allow_dir)
    if not allow_dir.is_dir():
        raise ConfigError(f"{allow_dir}: no such allow-list folder of client public keys")
    auth = AuditedAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(allow_dir))
    return auth


def secure_server(socket: zmq.Socket, secret_file: str | Path) -> None:
    public, secret = load_keypair(secret_file)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True


def secure_client(socket: zmq.Socket, secret_file: str | Path, server_public_file: str | Path) -> None:
    public, secret = load_keypair(secret_file)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = load_public_key(server_public_file)


def cap_inbound_size(socket: zmq.Socket, max_bytes: int) -> None:
    """ZeroMQ drops the peer of any message frame larger than this (MAXMSGSIZE), as soon as the
    frame's length arrives, before a byte of it is stored."""
    socket.setsockopt(zmq.MAXMSGSIZE, int(max_bytes))


def harden_router(socket: zmq.Socket, heartbeat_s: float, misses: int, inbound_hwm: int = 64) -> None:
    """A ROUTER whose peers' routing ids cannot be taken over, and whose dead connections go.

    No ROUTER_HANDOVER: a second connection claiming a routing id in use is ignored, instead of
    inheriting the first one's messages. ZMTP heartbeats close a connection whose peer has been
    silent for ``heartbeat_s * misses``, so a restarted peer gets its routing id back in bounded
    time. ``inbound_hwm``: messages queued per connection (each at most MAXMSGSIZE per frame).
    """
    socket.setsockopt(zmq.ROUTER_HANDOVER, 0)
    socket.setsockopt(zmq.HEARTBEAT_IVL, max(int(heartbeat_s * 1000), 1))
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(int(heartbeat_s * misses * 1000), 1))
    socket.setsockopt(zmq.RCVHWM, int(inbound_hwm))


_WATCH_IDS = itertools.count()


class HandshakeWatch:
    """Watches a client socket's connection and ZMTP handshake (a ZeroMQ socket monitor), so a
    failed connect can say why: no server at all, or a server whose handshake never completed,
    which with CURVE means the keys (not on the allow list, or the wrong server key)."""

    EVENTS = (
        zmq.EVENT_CONNECTED
        | zmq.EVENT_HANDSHAKE_SUCCEEDED
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    )

    def __init__(self, socket: zmq.Socket) -> None:
        self._socket = socket
        # Its own address: pyzmq's default names it by the socket's file descriptor, which the OS
        # hands to the next socket while a closed one's monitor may still hold that name.
        address = f"inproc://handshake-watch-{next(_WATCH_IDS)}"
        self._monitor: zmq.Socket | None = socket.get_monitor_socket(self.EVENTS, addr=address)
        self.seen: set[int] = set()

    def _drain(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor is not None:
            try:
                self.seen.add(int(recv_monitor_message(self._monitor, zmq.NOBLOCK)["event"]))
            except zmq.Again:
                return

    def diagnose(self, secure: bool) -> str:
        """Why a connect failed, in words for the error message."""
        self._drain()
        if zmq.EVENT_HANDSHAKE_FAILED_AUTH in self.seen:
            return "the server refused this client's key: put its public key in the server's allow list"
        if zmq.EVENT_CONNECTED not in self.seen:
            return "no connection: is the server running at that address? (python3 -m drivers.usrp_server --bind ...)"
        if zmq.EVENT_HANDSHAKE_SUCCEEDED in self.seen:
            return "connected, but the server did not take the request"
        if secure:
            return (
                "the socket connected but the CURVE handshake never completed: the keys are the likely "
                "cause (this client's public key not in the server's allow list, the wrong server key, or a "
                "server without CURVE)"
            )
        return (
            "the socket connected but the handshake never completed: the server likely requires CURVE "
            "(give this client a secret key and the server's public key)"
        )

    def close(self) -> None:
        if self._monitor is not None:
            with contextlib.suppress(zmq.ZMQError):  # the socket may be closed already
                self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
