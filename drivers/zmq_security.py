"""CurveZMQ for every ZeroMQ service of the testbed (the FL coordinator, the radio servers).

Key pairs are ZeroMQ certificate files (``NAME.key`` public, ``NAME.key_secret`` secret) made
by ``testbed keys``. A server admits only clients whose public certificates sit in its allow-list
folder (ironhouse pattern). Plain-text sockets are allowed on loopback only.

Runs under the system Python too (the radio server): pyzmq and the standard library only.
"""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path
from urllib.parse import urlparse

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

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


def start_authenticator(context: zmq.Context, allow_dir: str | Path) -> ThreadAuthenticator:
    """Admit only clients whose public certificates are in ``allow_dir``."""
    allow_dir = Path(allow_dir)
    if not allow_dir.is_dir():
        raise ConfigError(f"{allow_dir}: no such allow-list folder of client public keys")
    auth = ThreadAuthenticator(context)
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
    """ZeroMQ drops the peer of any message larger than this (MAXMSGSIZE)."""
    socket.setsockopt(zmq.MAXMSGSIZE, int(max_bytes))


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
        self._monitor: zmq.Socket | None = socket.get_monitor_socket(self.EVENTS)
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
