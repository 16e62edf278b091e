"""The radio server and RemoteRadio: the radio contract through ZeroMQ, security, bad input, death.

The server runs as a real subprocess (``python -m drivers.usrp_server --backend sim``) hosting
sim radios on one ideal medium; the radio contract's own checks (tests/test_radio_contract.py)
run through ``RemoteRadio`` with CURVE off and on. Then: a client whose key is not on the allow
list is refused, oversized and malformed requests get dropped or answered without harm, and a
killed server is a ``RadioError`` within the client's timeout, never a hang.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from radio_server_proc import REPO, SYSTEM_PYTHON, ServerProcess
from test_radio_contract import CONTRACT_CHECKS, RadioBench, check_multi_radio_sum, check_timed_alignment

from drivers import radio_wire as wire
from drivers.errors import ConfigError, RadioError, RadioLimitError
from drivers.remote_radio import RemoteRadio
from drivers.usrp_server import RadioServer
from drivers.zmq_security import make_keypair
from sim.radio import build_sim_radios, ideal_medium

# A call's bound is its timeout plus the op's own allowance; the slack below only absorbs a
# loaded test machine. What these bounds catch is a hang (an unbounded wait), not slowness.
SLACK_S = 10.0
SIM_ARGS = ["--backend", "sim", "--radios", "tx0,tx1,rx:2", "--bind", "tcp://127.0.0.1:*"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    _, server_secret = make_keypair(root / "server", "radio0")
    client_public, client_secret = make_keypair(root / "client", "controller")
    _, stranger_secret = make_keypair(root / "stranger", "stranger")
    allow = root / "allow"
    allow.mkdir()
    shutil.copy(client_public, allow / client_public.name)
    return {
        "server_secret": server_secret,
        "server_public": root / "server" / "radio0.key",
        "client_secret": client_secret,
        "stranger_secret": stranger_secret,
        "stranger_public": root / "stranger" / "stranger.key",
        "allow": allow,
    }


@pytest.fixture(scope="module", params=["insecure", "curve"])
def served(request: pytest.FixtureRequest, keys: dict[str, Path]) -> Iterator[tuple[ServerProcess, dict]]:
    if request.param == "insecure":
        proc, client = ServerProcess([*SIM_ARGS, "--insecure"]), {}
    else:
        proc = ServerProcess(
            [*SIM_ARGS, "--secret-key", str(keys["server_secret"]), "--allow", str(keys["allow"])]
        )
        client = {"secret_key_file": keys["client_secret"], "server_public_key_file": keys["server_public"]}
    yield proc, client
    assert proc.stop() == 0  # SIGTERM: a clean shutdown


def remote_bench(endpoint: str, **client: object) -> RadioBench:
    radios = [RemoteRadio(endpoint, radio=name, rpc_timeout_s=5.0, **client) for name in ("tx0", "tx1", "rx")]

    def close() -> None:
        for r in radios:
            r.close()

    return RadioBench(radios[:2], radios[2], [1.0, 1.0], radios[2].settings.rate_sps, close)


@pytest.mark.parametrize("check", CONTRACT_CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_radio_contract_through_the_server(
    served: tuple[ServerProcess, dict], check: Callable[[RadioBench], None]
) -> None:
    proc, client = served
    bench = remote_bench(proc.endpoint, **client)
    try:
        assert bench.rx.num_rx_channels == 2 and bench.tx[0].name == "tx0"
        check(bench)
    finally:
        bench.close()


def test_wrong_or_missing_keys_are_refused(served: tuple[ServerProcess, dict], keys: dict) -> None:
    proc, client = served
    # Each refusal says why (a ZeroMQ socket monitor: connected, but no handshake).
    stranger = {"secret_key_file": keys["stranger_secret"], "server_public_key_file": keys["server_public"]}
    wrong_server_key = {
        "secret_key_file": keys["client_secret"],
        "server_public_key_file": keys["stranger_public"],
    }
    keys_hint = "the socket connected but the CURVE handshake never completed: the keys are the likely cause"
    if client:  # CURVE on: a key off the allow list, a wrong server key and plain text get nowhere
        strangers = [
            (stranger, "the server refused this client's key: put its public key in the server's allow list"),
            (wrong_server_key, keys_hint),
            ({}, "the handshake never completed: the server likely requires CURVE"),
        ]
    else:  # a CURVE client at a plain-text server
        strangers = [(stranger, keys_hint)]
    for keyed, words in strangers:
        start = time.monotonic()
        with pytest.raises(RadioError, match="could not connect to 'hello' within 0.5 s") as info:
            RemoteRadio(proc.endpoint, rpc_timeout_s=0.5, **keyed)
        assert words in str(info.value)
        assert time.monotonic() - start < 0.5 + SLACK_S
    # The refused peers did not disturb the server.
    with RemoteRadio(proc.endpoint, radio="rx", rpc_timeout_s=5.0, **client) as ok:
        assert ok.time_now() >= 0.0


def test_req_socket_clients_are_served_too(small_server: ServerProcess) -> None:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(small_server.endpoint)
        sock.send(header("hello"))
        assert sock.poll(5000, zmq.POLLIN)
        reply = json.loads(sock.recv())
        assert reply["ok"] and reply["result"]["num_rx_channels"] == 2 and reply["id"] == 7
    finally:
        sock.close(linger=0)


def raw_request(endpoint: str, frames: list[bytes], timeout_ms: int = 2000) -> list[bytes] | None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        if not sock.poll(timeout_ms, zmq.POLLIN):
            return None
        return sock.recv_multipart()
    finally:
        sock.close(linger=0)


def header(op: str, **args: object) -> bytes:
    return json.dumps({"v": 1, "id": 7, "op": op, "radio": "rx", "args": args}).encode()


@pytest.fixture(scope="module")
def small_server() -> Iterator[ServerProcess]:
    """An insecure sim server with a 64 KiB message cap."""
    proc = ServerProcess([*SIM_ARGS, "--insecure", "--max-message-bytes", "65536"])
    yield proc
    proc.stop()


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([b"\xff\xfe not json"], "not UTF-8 JSON"),
        ([b"[1, 2]"], "must be a JSON object"),
        ([b'{"v": 99, "op": "hello"}'], "wire version 99"),
        ([header("reboot")], "unknown op 'reboot'"),
        ([header("receive", num_samples="many", at_s=1.0)], "'num_samples' must be int"),
        ([header("receive", num_samples=True, at_s=1.0)], "got a bool"),
        ([header("transmit", at_s=1.0, shape=[1, 4])], "needs an IQ frame"),
        ([header("transmit", at_s=1.0, shape=[1, 4]), b"\0" * 31], "holds 31 bytes but shape"),
        ([header("transmit", at_s=1.0, shape="x"), b""], "iq shape must be"),
        ([header("configure", settings={"tx_gain_db": 1, "colour": "red"})], "unknown settings"),
        ([header("time_now"), b"x", b"y"], "at most one IQ frame"),
        ([json.dumps({"v": 1, "id": 1, "op": "hello", "radio": "ghost"}).encode()], "no radio named 'ghost'"),
        ([header("receive", num_samples=10**6, at_s=1.0)], "exceeds the server's message cap"),
    ],
)
def test_malformed_requests_get_an_error_reply(
    small_server: ServerProcess, frames: list[bytes], match: str
) -> None:
    reply = raw_request(small_server.endpoint, frames)
    assert reply is not None, "the server must answer, not crash or hang"
    head = json.loads(reply[0])
    assert head["ok"] is False
    assert head["error"]["type"] in ("ProtocolError", "RadioLimitError", "RadioError")
    assert match in head["error"]["message"]


def test_oversized_frame_drops_that_peer_only(small_server: ServerProcess) -> None:
    big = [header("transmit", at_s=1.0, shape=[1, 10_000]), b"\0" * 80_000]
    assert raw_request(small_server.endpoint, big, timeout_ms=300) is None  # ZeroMQ cut it off
    with RemoteRadio(small_server.endpoint, radio="tx0", max_message_bytes=65536) as radio:
        with pytest.raises(RadioLimitError, match="exceed the message cap of 65536"):
            radio.transmit(np.zeros(10_000, np.complex64), at_s=radio.time_now() + 0.01)
        result = radio.transmit(np.ones(100, np.complex64), at_s=radio.time_now() + 0.01)
        assert result.num_samples == 100  # the server still serves
    assert small_server.proc.poll() is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_killed_server_is_a_radio_error_within_the_timeout_and_a_restart_is_picked_up() -> None:
    bind = f"tcp://127.0.0.1:{free_port()}"
    proc = ServerProcess(["--backend", "sim", "--radios", "tx0,rx:2", "--bind", bind, "--insecure"])
    radio = RemoteRadio(bind, radio="rx", rpc_timeout_s=0.5)
    try:
        t = radio.time_now()
        proc.kill()
        for call in (radio.time_now, lambda: radio.receive(100, at_s=t + 0.01, timeout_s=0.1)):
            start = time.monotonic()
            with pytest.raises(RadioError, match=f"radio server {bind}"):
                call()
            assert time.monotonic() - start < 0.5 + 0.1 + 0.01 + 1.0 + 1.0 + SLACK_S  # rpc + op allowance
        proc = ServerProcess(["--backend", "sim", "--radios", "tx0,rx:2", "--bind", bind, "--insecure"])
        assert radio.time_now() >= 0.0  # the same client reconnects to the new server
    finally:
        radio.close()
        proc.stop()


def test_no_server_and_insecure_off_loopback_are_clear_errors() -> None:
    start = time.monotonic()
    with pytest.raises(
        RadioError, match="within 0.3 s; no connection: is the server running at that address"
    ):
        RemoteRadio(f"tcp://127.0.0.1:{free_port()}", rpc_timeout_s=0.3)
    assert time.monotonic() - start < 0.3 + SLACK_S
    with pytest.raises(ConfigError, match="loopback only"):
        RemoteRadio("tcp://192.0.2.7:5600")
    with pytest.raises(ConfigError, match="loopback only"):
        RadioServer(
            {"r": lambda: build_sim_radios([("r", 1)], medium=ideal_medium())[0]},
            "tcp://0.0.0.0:0",
            insecure=True,
        )
    with pytest.raises(ConfigError, match="--secret-key and --allow"):
        RadioServer(
            {"r": lambda: build_sim_radios([("r", 1)], medium=ideal_medium())[0]}, "tcp://127.0.0.1:0"
        )


def test_a_new_client_socket_can_watch_its_handshake_whatever_closed_before_it() -> None:
    """pyzmq names a socket monitor by the socket's file descriptor; the OS gives a closed socket's
    descriptor to the next one while the old monitor may still hold that name (CI saw "Address
    already in use" from a RemoteRadio made right after a failed one)."""
    from drivers.zmq_security import HandshakeWatch

    context = zmq.Context()
    try:
        for _ in range(300):
            sock = context.socket(zmq.DEALER)
            watch = HandshakeWatch(sock)  # raised ZMQError on about one in eight, before
            sock.connect(f"tcp://127.0.0.1:{free_port()}")
            sock.close(linger=0)  # the socket first, as a garbage-collected client does
            watch.close()
    finally:
        context.destroy(linger=0)  # closes any socket a failure left open
    # A client whose server never answers leaves no socket behind for the next one to collide with.
    for _ in range(3):
        with pytest.raises(RadioError, match="no connection"):
            RemoteRadio(f"tcp://127.0.0.1:{free_port()}", rpc_timeout_s=0.1)


def test_in_process_server_serves_and_closed_client_refuses() -> None:
    radios = build_sim_radios([("tx0", 1), ("tx1", 1), ("rx", 4)], medium=ideal_medium(5))
    server = RadioServer({r.name: (lambda r=r: r) for r in radios}, "tcp://127.0.0.1:*", insecure=True)
    import threading

    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_ms": 20}, daemon=True)
    thread.start()
    try:
        bench = remote_bench(server.endpoint)
        check_multi_radio_sum(bench)
        assert bench.rx.num_rx_channels == 4 and bench.rx.sensors()["backend"] == "sim"
        bench.close()
        with pytest.raises(RadioError, match="is closed"):
            bench.rx.time_now()
        assert server.requests_served > 5
    finally:
        server.stop()
        thread.join(timeout=5)
        server.close()


@pytest.mark.skipif(shutil.which(SYSTEM_PYTHON) is None, reason="no system python")
def test_system_python_server_speaks_the_same_wire() -> None:
    """The server under the system Python (NumPy 1.x, pyzmq 24) against this venv's client."""
    modules = "drivers.errors, drivers.radio, drivers.radio_wire, drivers.remote_radio, drivers.usrp"
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", f"import {modules}"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    if "No module named 'numpy'" in done.stderr or "No module named 'zmq'" in done.stderr:
        pytest.skip(f"the system Python lacks numpy/pyzmq: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr  # our modules import cleanly there (uhd stays lazy)
    try:
        proc = ServerProcess([*SIM_ARGS, "--insecure"], python=SYSTEM_PYTHON)
    except RadioError as exc:
        pytest.skip(f"the system Python cannot run the server here: {exc}")
    try:
        bench = remote_bench(proc.endpoint)
        check_timed_alignment(bench)
        check_multi_radio_sum(bench)
        bench.close()
    finally:
        assert proc.stop() == 0


def test_wire_roundtrip_keeps_errors_and_iq() -> None:
    from drivers.errors import RadioTimingError

    err = wire.error_from_dict(wire.error_to_dict(RadioTimingError("late!", "late", 3.25)), "srv")
    assert isinstance(err, RadioTimingError) and (err.code, err.time_s) == ("late", 3.25)
    assert "srv: late!" in str(err)
    x = (np.arange(6) + 1j).astype(np.complex64).reshape(2, 3)
    shape, raw = wire.iq_to_frame(x)
    np.testing.assert_array_equal(wire.frame_to_iq(shape, raw, 1024), x)
    with pytest.raises(Exception, match="over the cap"):
        wire.frame_to_iq([2, 1000], b"", 1024)


def test_open_radio_from_config_sections(small_server: ServerProcess) -> None:
    from sim.medium import Medium
    from testbed.config import RadioSection, TestbedConfig
    from testbed.radios import open_radio, probe_radio

    lab = TestbedConfig().lab
    medium = Medium.from_config(lab, np.random.default_rng(0))
    radio = open_radio(lab.clients.radio, "client1", medium=medium)
    assert radio.name == "client1" and radio.settings.tx_gain_db == lab.clients.radio.tx_gain_db
    with pytest.raises(ConfigError, match=r"no such node; it has \['client0'"):
        open_radio(lab.clients.radio, "client99", medium=medium)
    with pytest.raises(ConfigError, match="needs the lab's medium"):
        open_radio(lab.clients.radio, "client0")
    section = RadioSection(server=small_server.endpoint, tx_gain_db=12.0)
    remote = open_radio(section, "tx1")
    try:
        assert isinstance(remote, RemoteRadio) and remote.settings.tx_gain_db == 12.0
        assert remote.num_rx_channels == 1
    finally:
        remote.close()
    with pytest.raises(ConfigError, match="not on loopback, so CURVE is required"):
        open_radio(RadioSection(backend="usrp", server="tcp://10.0.0.11:5600"), "client0")
    with pytest.raises(ConfigError, match="set both client_key"):
        open_radio(RadioSection(server=small_server.endpoint, client_key="k.key_secret"), "tx1")
    assert "tx0' at tcp://127.0.0.1" in probe_radio("rx", RadioSection(server=small_server.endpoint))
    assert "simulated" in probe_radio("rx", RadioSection())


def test_the_servers_tx_gain_cap_holds_whatever_cap_a_client_sends() -> None:
    """TX power on the radio side: `--max-tx-gain-db` is checked before the radio is touched, and
    a client that raises its own max_tx_gain_db cannot lift it."""
    radios = build_sim_radios([("tx0", 1), ("rx", 1)], medium=ideal_medium(2))
    server = RadioServer(
        {r.name: (lambda r=r: r) for r in radios}, "tcp://127.0.0.1:*", insecure=True, max_tx_gain_db=40.0
    )
    import dataclasses
    import threading

    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_ms": 20}, daemon=True)
    thread.start()
    try:
        with RemoteRadio(server.endpoint, radio="tx0", rpc_timeout_s=5.0) as tx:
            before = radios[0].settings
            greedy = dataclasses.replace(tx.settings, tx_gain_db=55.0, max_tx_gain_db=90.0)
            with pytest.raises(
                RadioLimitError,
                match=r"tx_gain_db=55.0 exceeds this radio server's cap --max-tx-gain-db=40.0",
            ):
                tx.configure(greedy)
            assert radios[0].settings == before  # nothing reached the radio
            tx.configure(dataclasses.replace(greedy, tx_gain_db=35.0))
            assert radios[0].settings.tx_gain_db == 35.0 and radios[0].settings.max_tx_gain_db == 40.0
        with pytest.raises(ConfigError, match="--max-tx-gain-db must be within"):
            RadioServer({"x": lambda: radios[0]}, "tcp://127.0.0.1:*", insecure=True, max_tx_gain_db=-1.0)
    finally:
        server.stop()
        thread.join(timeout=5)
        server.close()
    from drivers.usrp_server import build_parser, server_options

    assert server_options(build_parser().parse_args(["--max-tx-gain-db", "62.5"]))["max_tx_gain_db"] == 62.5
