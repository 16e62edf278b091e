"""The simulated air served over ZeroMQ, so radios in separate processes share one medium.

    python -m sim.medium_server configs/dryrun.yaml --bind tcp://127.0.0.1:5700 --insecure
    python -m sim.medium_server --ideal tx0,tx1,rx:4 --bind tcp://127.0.0.1:5700 --insecure

The server is the radio server of ``drivers.usrp_server`` (its ROUTER loop, CURVE with an allow
list, size cap, and the wire format of ``drivers.radio_wire``: JSON headers and raw complex64
frames, no pickle) hosting one ``SimRadio`` per node of one ``Medium``. Any process reaches a
node with ``drivers.remote_radio.RemoteRadio(address, radio=<node>)``, the client proxy that
implements the radio contract; ``sim.radio.build_sim_radios(specs, medium_address=...)`` makes
them. On top of the radio ops the server answers the medium's own ops, which ``MediumClient``
calls: ``medium_info``, ``medium_set_positions`` (the stages moved the antennas) and
``medium_advance_to`` (the virtual clock).

Requests are served one at a time, so the virtual clock stays deterministic for a given order
of requests. As in a real lab, every transmitter must schedule its burst before the receiver's
capture of that window is requested (the FL protocol acknowledges the schedule first).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from drivers import radio_wire as wire
from drivers.errors import ConfigError, ProtocolError, RadioError, TestbedError
from drivers.usrp_server import (
    RadioServer,
    add_server_arguments,
    parse_radio_specs,
    serve_until_stopped,
    server_options,
)
from drivers.zmq_security import cap_inbound_size, require_loopback_for_insecure, secure_client
from sim.medium import Medium
from sim.radio import SimRadio

MEDIUM_OPS = ("medium_info", "medium_set_positions", "medium_advance_to")


class MediumServer(RadioServer):
    """A ``RadioServer`` whose radios are every node of ``medium``, plus the medium's own ops."""

    def __init__(self, medium: Medium, bind: str, **kwargs: Any) -> None:
        self.medium = medium
        radios = {name: SimRadio(medium, name) for name in medium.node_names}
        if not radios:
            raise ConfigError("the medium has no nodes to serve; add clients and a receiver first")
        super().__init__({name: (lambda r=r: r) for name, r in radios.items()}, bind, **kwargs)

    def handle(self, body: list[bytes]) -> list[bytes]:
        try:
            header = wire.decode_header(body[0]) if len(body) == 1 else None
        except ProtocolError:
            header = None  # the radio server answers the malformed request with its own words
        if header is None or header.get("op") not in MEDIUM_OPS:
            return super().handle(body)
        try:
            args = header.get("args", {})
            if not isinstance(args, dict):
                raise ProtocolError("args must be a JSON object")
            result = self._medium_op(str(header["op"]), args)
            reply = {"v": wire.VERSION, "id": header.get("id"), "ok": True, "result": result}
        except Exception as exc:  # the server keeps serving; the caller gets the reason
            if not isinstance(exc, TestbedError):
                exc = RadioError(f"medium server: {type(exc).__name__}: {exc}")
            reply = {"v": wire.VERSION, "id": header.get("id"), "ok": False, "error": wire.error_to_dict(exc)}
        return [wire.encode_header(reply)]

    def _medium_op(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        m = self.medium
        if op == "medium_set_positions":
            node = args.get("node")
            positions = args.get("positions_m")
            if not isinstance(node, str) or not isinstance(positions, list):
                raise ProtocolError("medium_set_positions needs node (str) and positions_m ([[x, y], ...])")
            m.set_positions(node, np.asarray(positions, dtype=float))
        elif op == "medium_advance_to":
            when = args.get("time_s")
            if not isinstance(when, (int, float)) or isinstance(when, bool):
                raise ProtocolError(f"medium_advance_to needs time_s (a number), got {when!r}")
            m.advance_to(float(when))
        nodes = []
        for name in m.node_names:
            node = m.node(name)
            entry: dict[str, Any] = {
                "name": name,
                "role": node.role,
                "num_antennas": node.num_antennas,
                "client": node.client,
            }
            if node.positions is not None:
                entry["positions_m"] = m.positions_of(name).tolist()
            nodes.append(entry)
        return {
            "time_s": m.time_s(),
            "rate_sps": m.rate_sps,
            "noise_power_w": m.noise_power_w,
            "tx_gain_ref_db": m.tx_gain_ref_db,
            "rx_gain_ref_db": m.rx_gain_ref_db,
            "nodes": nodes,
        }


class MediumClient:
    """The medium's own ops from another process (radios themselves go through RemoteRadio)."""

    def __init__(
        self,
        address: str,
        secret_key_file: str | Path | None = None,
        server_public_key_file: str | Path | None = None,
        timeout_s: float = 5.0,
        context: zmq.Context | None = None,
    ) -> None:
        if not secret_key_file:
            require_loopback_for_insecure(address)
        self.address = address
        self.timeout_s = float(timeout_s)
        self._keys = (secret_key_file, server_public_key_file)
        self._context = context or zmq.Context.instance()
        self._ids = itertools.count(1)

    def _call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for a server that is not there
        sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout_s * 1000)))
        cap_inbound_size(sock, 16 * 1024 * 1024)
        secret, public = self._keys
        if secret and public:
            secure_client(sock, secret, public)
        try:
            sock.connect(self.address)
            request_id = next(self._ids)
            header = {"v": wire.VERSION, "id": request_id, "op": op, "radio": None, "args": args}
            deadline = time.monotonic() + self.timeout_s
            try:
                sock.send_multipart([wire.encode_header(header)])
            except zmq.Again:
                raise RadioError(
                    f"medium server {self.address}: not reachable for {op!r} within {self.timeout_s:.1f} s; "
                    "is it running?"
                ) from None
            while True:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0 or not sock.poll(left_ms, zmq.POLLIN):
                    raise RadioError(
                        f"medium server {self.address}: no reply to {op!r} within {self.timeout_s:.1f} s; "
                        "is it running (python -m sim.medium_server ...)?"
                    )
                reply = wire.decode_header(sock.recv_multipart()[0])
                if reply.get("id") == request_id:
                    break
        finally:
            sock.close(linger=0)
        if not reply.get("ok"):
            raise wire.error_from_dict(reply.get("error"), f"medium server {self.address}")
        return dict(reply.get("result") or {})

    def info(self) -> dict[str, Any]:
        return self._call("medium_info", {})

    def time_s(self) -> float:
        return float(self.info()["time_s"])

    def set_positions(self, node: str, positions_m: np.ndarray) -> None:
        pos = np.asarray(positions_m, dtype=float).reshape(-1, 2)
        self._call("medium_set_positions", {"node": node, "positions_m": pos.tolist()})

    def advance_to(self, time_s: float) -> None:
        self._call("medium_advance_to", {"time_s": float(time_s)})


# --- command line ----------------------------------------------------------------------------
def _ideal_medium(spec: str, seed: int) -> Medium:
    from sim.radio import build_sim_radios, ideal_medium

    medium = ideal_medium(seed)
    build_sim_radios(parse_radio_specs(spec, "--ideal"), medium=medium)
    return medium


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sim.medium_server", description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", help="testbed YAML config: the medium of its lab section")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B.C=VALUE")
    p.add_argument("--ideal", default="", help="no config: ideal cabled air with radios name[:channels],...")
    p.add_argument("--seed", type=int, default=None, help="the medium's seed (default: run.seed)")
    add_server_arguments(p, bind="tcp://127.0.0.1:5700")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.ideal:
            medium = _ideal_medium(args.ideal, args.seed or 0)
        else:
            # up a floor: this command line (not the library) reads the lab's testbed config file
            from testbed.config import load_config

            config = load_config(args.config, args.overrides)
            seed = config.run.seed if args.seed is None else args.seed
            medium = Medium.from_config(config.lab, np.random.default_rng(seed))
        server = MediumServer(medium, args.bind, **server_options(args))
    except (TestbedError, zmq.ZMQError) as exc:
        print(f"medium_server: {exc}", file=sys.stderr)
        return 2
    return serve_until_stopped(server, f"READY {server.endpoint} nodes={','.join(medium.node_names)}")


if __name__ == "__main__":
    sys.exit(main())
