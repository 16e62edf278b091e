"""CurveZMQ for every ZeroMQ service of the testbed (the FL coordinator, the radio servers).

Key pairs are ZeroMQ certificate files (``NAME.key`` public, ``NAME.key_secret`` secret) made
by ``testbed keys``. A server admits only clients whose public certificates sit in its allow-list
folder (ironhouse pattern). Plain-text sockets are allowed on loopback only.

Runs under the system Python too (the radio server): pyzmq and the standard library only.
"""

from __future__ import annotations

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
