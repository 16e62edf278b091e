"""The radio server: one process owns a radio (a USRP, or sim radios) and serves the radio contract.

    /usr/bin/python3 -m drivers.usrp_server --args "type=b200" --bind tcp://0.0.0.0:5600 \\
        --secret-key keys/radio-0.key_secret --allow keys/allow/radio --max-tx-gain-db 70
    python -m drivers.usrp_server --backend sim --radios tx0,tx1,rx:4 --bind tcp://127.0.0.1:5600 --insecure

It runs under the system Python (Debian's python3-uhd needs NumPy 1.x) and in the venv, so it
uses only NumPy, pyzmq, uhd and the standard library. A ROUTER socket takes requests from any
number of ``RemoteRadio`` clients and answers them one at a time (the device is one). The wire
format is ``drivers/radio_wire.py``: JSON headers plus raw complex64 frames, never pickle.
Security: CURVE with an allow list of client keys (``drivers/zmq_security.py``); plain text only
on loopback; ZeroMQ drops any peer whose message exceeds ``--max-message-bytes``. A malformed
request gets an error reply, and a radio that fails to open is reported to every caller (and
retried) rather than ending the server, so the client sees the real cause. Requests are served
in arrival order, one at a time: a long capture delays the next caller's reply (each
``RemoteRadio`` allows ``rpc_timeout_s`` beyond its own operation's time).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import zmq

from drivers import radio_wire as wire
from drivers.errors import ConfigError, ProtocolError, RadioError, RadioLimitError, TestbedError
from drivers.radio import Radio, RadioSettings
from drivers.zmq_security import (
    cap_inbound_size,
    require_loopback_for_insecure,
    secure_server,
    start_authenticator,
)

Opener = Callable[[], Radio]


class _Slot:
    """One served radio: opened on first use; an open failure is kept and retried later."""

    def __init__(self, name: str, opener: Opener, retry_s: float) -> None:
        self.name = name
        self.opener = opener
        self.retry_s = retry_s
        self.radio: Radio | None = None
        self.error: Exception | None = None
        self.failed_at = -float("inf")

    def get(self) -> Radio:
        if self.radio is not None:
            return self.radio
        if self.error is not None and time.monotonic() - self.failed_at < self.retry_s:
            raise self.error.with_traceback(None)  # fresh each time: no traceback piling up
        try:
            self.radio = self.opener()
            self.error = None
        except TestbedError as exc:
            self.error, self.failed_at = exc, time.monotonic()
            raise
        except Exception as exc:  # a driver bug or a library error: report it, keep serving
            self.error = RadioError(f"radio {self.name!r} failed to open: {type(exc).__name__}: {exc}")
            self.failed_at = time.monotonic()
            raise self.error from exc
        return self.radio

    def close(self) -> None:
        if self.radio is not None:
            try:
                self.radio.close()
            finally:
                self.radio = None


def _arg(args: dict[str, Any], key: str, kinds: tuple[type, ...], default: Any = ...) -> Any:
    """One request argument, type-checked; ``ProtocolError`` names the field and what it got."""
    if key not in args:
        if default is ...:
            raise ProtocolError(f"missing argument {key!r}")
        return default
    value = args[key]
    if isinstance(value, bool) and bool not in kinds:
        raise ProtocolError(f"argument {key!r} must be {'/'.join(k.__name__ for k in kinds)} (got a bool)")
    if not isinstance(value, kinds):
        raise ProtocolError(
            f"argument {key!r} must be {'/'.join(k.__name__ for k in kinds)} (got {type(value).__name__})"
        )
    return value


def _str_list(args: dict[str, Any], key: str) -> list[str]:
    value = _arg(args, key, (list,), [])
    if not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"argument {key!r} must be a list of strings")
    return value


class RadioServer:
    """Serves named radios over one ROUTER socket (see the module docstring).

    Parameters
    ----------
    openers
        Radio name -> a function that opens it; a radio that fails to open is retried and its
        error reported to every caller meanwhile.
    bind
        The ZeroMQ address to bind, e.g. ``tcp://0.0.0.0:5600``.
    secret_key
        CURVE: the server's ``.key_secret`` file (with ``allow_dir``).
    allow_dir
        CURVE: the folder of client public keys allowed to connect.
    insecure
        Plain text, without CURVE; refused on any address but loopback.
    max_message_bytes
        The largest message ZeroMQ accepts; a peer sending more is dropped.
    retry_open_s
        How long after a failed open the radio is tried again.
    context
        The ZeroMQ context; default a new one, closed with the server.
    max_tx_gain_db
        The radio owner's TX gain cap, which no request can lift; None: only the callers' caps.
    """

    def __init__(
        self,
        openers: dict[str, Opener],
        bind: str,
        secret_key: str | None = None,
        allow_dir: str | None = None,
        insecure: bool = False,
        max_message_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES,
        retry_open_s: float = 2.0,
        context: zmq.Context | None = None,
        max_tx_gain_db: float | None = None,
    ) -> None:
        if not openers:
            raise ConfigError("the radio server needs at least one radio to serve")
        if max_tx_gain_db is not None and not (0.0 <= max_tx_gain_db <= 100.0):
            raise ConfigError(f"--max-tx-gain-db must be within [0, 100] dB (got {max_tx_gain_db})")
        # The server's own TX gain cap: a client's settings carry a cap too, but a client could
        # raise it; this one is the radio owner's and no request can lift it.
        self.max_tx_gain_db = max_tx_gain_db
        self.slots = {name: _Slot(name, opener, retry_open_s) for name, opener in openers.items()}
        self.default = next(iter(self.slots))
        self.max_message_bytes = int(max_message_bytes)
        self._context = context or zmq.Context()
        self._own_context = context is None
        self._auth = None
        self.socket = self._context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        try:
            if insecure:
                require_loopback_for_insecure(bind)
            else:
                if not secret_key or not allow_dir:
                    raise ConfigError(
                        "the radio server needs --secret-key and --allow (CURVE), or --insecure on loopback"
                    )
                self._auth = start_authenticator(self._context, allow_dir)
                secure_server(self.socket, secret_key)
            cap_inbound_size(self.socket, self.max_message_bytes)
            self.socket.bind(bind)
        except BaseException:
            self._shutdown_socket()
            raise
        self.endpoint: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self.requests_served = 0

    # --- the loop ---
    def serve_forever(self, poll_ms: int = 100) -> None:
        while not self._stop.is_set():
            self.serve_once(poll_ms)

    def serve_once(self, poll_ms: int = 100) -> bool:
        """Answer at most one request; False if none came within ``poll_ms``."""
        if not self.socket.poll(poll_ms, zmq.POLLIN):
            return False
        frames = self.socket.recv_multipart()
        if len(frames) < 2:
            return True  # nothing but an identity: ignore
        envelope, body = [frames[0]], frames[1:]
        if body and body[0] == b"":  # a REQ client's empty delimiter: keep it for the reply
            envelope.append(b"")
            body = body[1:]
        reply = self.handle(body)
        # A client that is gone or stuck will time out on its side: never block on it.
        with contextlib.suppress(zmq.Again):
            self.socket.send_multipart(envelope + reply, flags=zmq.NOBLOCK)
        self.requests_served += 1
        return True

    def stop(self) -> None:
        self._stop.set()

    # --- one request ---
    def handle(self, body: list[bytes]) -> list[bytes]:
        """Frames of one request -> frames of its reply. Never raises."""
        request_id: Any = None
        try:
            if not body or len(body) > 2:
                raise ProtocolError(
                    f"a request is a header frame plus at most one IQ frame (got {len(body)})"
                )
            header = wire.decode_header(body[0])
            request_id = header.get("id")
            op = header.get("op")
            if op not in wire.OPS:
                raise ProtocolError(f"unknown op {op!r}; allowed: {list(wire.OPS)}")
            args = header.get("args", {})
            if not isinstance(args, dict):
                raise ProtocolError("args must be a JSON object")
            name = header.get("radio") or self.default
            if name not in self.slots:
                raise ProtocolError(f"no radio named {name!r} here; this server has {sorted(self.slots)}")
            payload = body[1] if len(body) == 2 else None
            result, iq = self._dispatch(op, self.slots[name], args, payload)
            reply: dict[str, Any] = {"v": wire.VERSION, "id": request_id, "ok": True, "result": result}
            frames = []
            if iq is not None:
                reply["iq"], raw = wire.iq_to_frame(iq)
                frames = [raw]
            return [wire.encode_header(reply), *frames]
        except Exception as exc:  # every failure becomes an error reply; the server keeps serving
            if not isinstance(exc, TestbedError):
                traceback.print_exc(file=sys.stderr)  # unexpected: keep the trace for the operator
                exc = RadioError(f"server error: {type(exc).__name__}: {exc}")
            error = {"v": wire.VERSION, "id": request_id, "ok": False, "error": wire.error_to_dict(exc)}
            return [wire.encode_header(error)]

    def _dispatch(
        self, op: str, slot: _Slot, args: dict[str, Any], payload: bytes | None
    ) -> tuple[dict[str, Any], Any]:
        if payload is not None and op != "transmit":
            raise ProtocolError(f"op {op!r} takes no IQ frame")
        radio = slot.get()
        if op == "hello":
            return {
                "name": radio.name,
                "radios": sorted(self.slots),
                "num_rx_channels": int(radio.num_rx_channels),
                "settings": wire.settings_to_dict(radio.settings),
                "max_message_bytes": self.max_message_bytes,
                "backend": type(radio).__name__,
            }, None
        if op == "configure":
            radio.configure(self._capped(wire.settings_from_dict(_arg(args, "settings", (dict,)))))
            return {"settings": wire.settings_to_dict(radio.settings)}, None
        if op == "time_now":
            return {"time_s": float(radio.time_now())}, None
        if op in ("set_time_next_pps", "set_time_unknown_pps"):
            method = getattr(radio, op, None)
            if method is None:
                raise RadioError(f"radio {slot.name!r} ({type(radio).__name__}) has no {op}")
            method(float(_arg(args, "time_s", (int, float))))
            return {}, None
        if op == "transmit":
            if payload is None:
                raise ProtocolError("transmit needs an IQ frame after the header")
            samples = wire.frame_to_iq(args.get("shape"), payload, self.max_message_bytes)
            at_s = float(_arg(args, "at_s", (int, float)))
            return wire.tx_result_to_dict(radio.transmit(samples, at_s, _str_list(args, "tolerate"))), None
        if op == "receive":
            num = _arg(args, "num_samples", (int,))
            channels = _arg(args, "channels", (list, type(None)), None)
            if channels is not None and not all(
                isinstance(c, int) and not isinstance(c, bool) for c in channels
            ):
                raise ProtocolError("channels must be a list of ints or null")
            width = radio.num_rx_channels if channels is None else len(channels)
            if num * max(width, 1) * wire.IQ_DTYPE.itemsize > self.max_message_bytes:
                raise RadioLimitError(
                    f"a capture of {num} samples x {width} channels exceeds the server's message cap "
                    f"of {self.max_message_bytes} bytes; capture in pieces"
                )
            result = radio.receive(
                num,
                float(_arg(args, "at_s", (int, float))),
                channels=channels,
                timeout_s=float(_arg(args, "timeout_s", (int, float), 1.0)),
                tolerate=_str_list(args, "tolerate"),
            )
            return wire.rx_result_meta(result), result.samples
        if op == "sensors":
            return {"sensors": dict(radio.sensors())}, None
        raise ProtocolError(f"unknown op {op!r}")  # unreachable: checked against wire.OPS

    def _capped(self, settings: RadioSettings) -> RadioSettings:
        """The client's settings under the server's TX gain cap; over it, refused before the radio."""
        cap = self.max_tx_gain_db
        if cap is None:
            return settings
        if settings.tx_gain_db > cap + 1e-9:
            raise RadioLimitError(
                f"tx_gain_db={settings.tx_gain_db} exceeds this radio server's cap --max-tx-gain-db={cap}; "
                "nothing was applied"
            )
        return dataclasses.replace(settings, max_tx_gain_db=min(settings.max_tx_gain_db, cap))

    # --- shutdown ---
    def _shutdown_socket(self) -> None:
        self.socket.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context:
            self._context.term()

    def close(self) -> None:
        for slot in self.slots.values():
            try:
                slot.close()
            except Exception as exc:  # closing the rest matters more than one failure
                print(f"usrp_server: closing {slot.name}: {exc}", file=sys.stderr)
        self._shutdown_socket()


# --- command line ----------------------------------------------------------------------------------
def _channels(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise ConfigError(f"channel list {text!r} must be comma-separated ints, e.g. 0,1") from None


# sim.medium_server shares these: the server options, radio specs and the serve loop.
def add_server_arguments(p: argparse.ArgumentParser, bind: str) -> None:
    """The options of every radio-contract server: its address and its security."""
    p.add_argument("--bind", default=bind)
    p.add_argument("--secret-key", default="", help="this server's NAME.key_secret (CURVE)")
    p.add_argument("--allow", default="", help="folder of the public keys of allowed clients")
    p.add_argument("--insecure", action="store_true", help="no CURVE; loopback addresses only")
    p.add_argument("--max-message-bytes", type=int, default=wire.DEFAULT_MAX_MESSAGE_BYTES)
    p.add_argument(
        "--max-tx-gain-db", type=float, default=None, metavar="DB",
        help="refuse any client's TX gain above this (the radio owner's cap; default: the client's)",
    )  # fmt: skip


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """``RadioServer`` keyword arguments from the options of ``add_server_arguments``."""
    return {
        "secret_key": args.secret_key or None,
        "allow_dir": args.allow or None,
        "insecure": args.insecure,
        "max_message_bytes": args.max_message_bytes,
        "max_tx_gain_db": args.max_tx_gain_db,
    }


def parse_radio_specs(spec: str, option: str) -> list[tuple[str, int]]:
    """``name[:rx_channels],...`` (channels default 1) as (name, channels) pairs; ``option`` names it in errors."""
    specs: list[tuple[str, int]] = []
    for item in spec.split(","):
        name, _, chans = item.strip().partition(":")
        if not name:
            raise ConfigError(f"{option} {spec!r}: empty radio name")
        try:
            specs.append((name, int(chans) if chans else 1))
        except ValueError:
            raise ConfigError(f"{option} {spec!r}: {item!r} should be name or name:channels") from None
    return specs


def serve_until_stopped(server: RadioServer, ready_line: str) -> int:
    """Serve until SIGTERM/SIGINT, after printing ``ready_line`` (``spawn_server`` waits for it)."""
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    print(ready_line, flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0


def usrp_openers(args: argparse.Namespace) -> dict[str, Opener]:
    def open_usrp() -> Radio:
        from drivers.usrp import UsrpRadio  # keeps uhd out of the sim-only path

        return UsrpRadio(
            args.args,
            name=args.name,
            rx_channels=_channels(args.rx_channels),
            tx_channels=_channels(args.tx_channels) or [0],
            lock_timeout_s=args.lock_timeout_s,
            wait_for_ack=args.tx_wait_ack,
        )

    return {args.name: open_usrp}


def sim_openers(args: argparse.Namespace) -> dict[str, Opener]:
    """``--radios tx0,tx1,rx:4``: sim radios (name[:rx channels]) sharing one medium."""
    # up a floor: the server also hosts sim radios (tests without hardware); lazy: usrp needs no sim/
    from sim.radio import build_sim_radios

    specs = parse_radio_specs(args.radios, "--radios")
    radios = build_sim_radios(specs, medium_address=args.medium or None, seed=args.seed)
    return {r.name: (lambda r=r: r) for r in radios}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m drivers.usrp_server", description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=("usrp", "sim"), default="usrp")
    p.add_argument("--args", default="", help="UHD device args, e.g. 'type=b200,serial=31A7F0B'")
    p.add_argument("--name", default="usrp", help="the radio's name (usrp backend)")
    p.add_argument("--rx-channels", default="", help="device RX channels, e.g. 0,1 (default: all)")
    p.add_argument("--tx-channels", default="0", help="device TX channels (default: 0)")
    p.add_argument("--lock-timeout-s", type=float, default=5.0, help="wait for ref_locked this long")
    p.add_argument(
        "--tx-wait-ack",
        action="store_true",
        help="transmit waits for its burst's ack (default: returns once handed over; see UsrpRadio)",
    )
    p.add_argument("--radios", default="radio", help="sim backend: name[:rx_channels],... on one medium")
    p.add_argument("--medium", default="", help="sim backend: ZeroMQ address of a medium server")
    p.add_argument("--seed", type=int, default=0, help="sim backend: the medium's seed")
    add_server_arguments(p, bind="tcp://127.0.0.1:5600")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        openers = sim_openers(args) if args.backend == "sim" else usrp_openers(args)
        server = RadioServer(openers, args.bind, **server_options(args))
    except (TestbedError, zmq.ZMQError) as exc:
        print(f"usrp_server: {exc}", file=sys.stderr)
        return 2
    # Open now so a missing device shows in the log at once; callers get the same error.
    for slot in server.slots.values():
        try:
            slot.get()
        except TestbedError as exc:
            print(f"usrp_server: {exc} (serving the error; retrying on requests)", file=sys.stderr)
    return serve_until_stopped(server, f"READY {server.endpoint}")


# --- starting a server from another process --------------------------------------------------------
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-uhd
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def spawn_server(
    argv: Sequence[str],
    python: str = SYSTEM_PYTHON,
    ready_timeout_s: float = 30.0,
    stderr: int | IO[Any] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start ``python -m drivers.usrp_server ARGV``; return the process and its bound endpoint.

    Waits for the ``READY <endpoint>`` line (so ``--bind tcp://127.0.0.1:*`` works). A server
    that exits or stays silent is killed and reported as a ``RadioError`` with its log. Its
    stderr goes to ``stderr`` if given, else to a temporary file (read only on failure).
    """
    if not Path(python).exists():
        raise RadioError(f"no {python} to run the radio server (Debian: apt install python3-uhd python3-zmq)")
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT), PYTHONUNBUFFERED="1")
    # Its log goes to a file, not a pipe: a long-lived server must never block on a full pipe.
    log = tempfile.TemporaryFile("w+") if stderr is None else None  # noqa: SIM115
    proc = subprocess.Popen(
        [python, "-m", "drivers.usrp_server", *argv],
        cwd=PACKAGE_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log if log is not None else stderr,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + ready_timeout_s
    while True:
        left = deadline - time.monotonic()
        ready = select.select([proc.stdout], [], [], max(0.0, left))[0] if left > 0 else []
        line = proc.stdout.readline() if ready else ""
        if line.startswith("READY "):
            if log is not None:
                log.close()  # the child keeps its own handle
            return proc, line.split()[1]
        if not line:  # timed out, or the server exited
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            err = ""
            if log is not None:
                log.seek(0)
                err = log.read().strip()
            raise RadioError(
                f"radio server {' '.join(argv)} did not start within {ready_timeout_s} s "
                f"(exit status {proc.returncode}): {err[-2000:]}"
            )


def stop_server(proc: subprocess.Popen, timeout_s: float = 5.0) -> int:
    """SIGTERM, then SIGKILL if it lingers; close its pipes; return the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return int(proc.returncode)


if __name__ == "__main__":
    sys.exit(main())
