"""Issue 19: the coordinator holds against its own peers (a node holding a valid key).

One test (or one parametrised case) per finding of the issue, in its order:

1. one message ends the run: decode() lets only ``ProtocolError`` out (4,301-digit ints, dtype
   lists, 2**32 x 2**32 shapes), and the values that crashed the main thread (10**400 weights,
   means, PPS edges, 985-deep nesting, typed metrics) are refused on the wire;
2. finite extremes: the plan's b_k goes to the air, never the node's; updates past physics are
   refused and their node dropped for the round with the reason; norm clipping;
3. the ROUTER_HANDOVER hijack: a routing id in use cannot be taken over, and an id claimed with
   another node's key is refused and audited;
4. floods, memory and disk: per-peer rate limits and a bounded inbox, frames capped to what the
   run needs, checkpoint state that does not grow with the rounds;
5. stalls and loose ends: miss counts, a node restarted mid-round, uploads for rounds a node was
   not selected for and duplicates, audit events for refusals.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from drivers import zmq_security
from drivers.errors import ProtocolError
from fl import protocol as P
from fl.keys import KeyLayout, make_lab_keys
from fl.protocol import COORDINATOR, Message, MsgType, SocketLoop
from testbed.config import load_config

HUGE = 10**400
# The 985 levels ended the run in _event; under pytest's own stack json itself gives up
# earlier, so the test nests a little less: deep enough for any recursion, within json's reach.
DEEP = 900
BASE = [
    "lab.clients.count=4",
    "fl.data.num_samples=40",
    "fl.aggregation=digital",
    "fl.transport.bind=tcp://127.0.0.1:*",
    "fl.transport.heartbeat_s=0.1",
    "fl.transport.heartbeat_misses=50",
]


def _frames(kind: str, body: dict[str, Any], round_: Any = 1, node: int = 0) -> list[bytes]:
    """A message's frames with any JSON in its body; the text BIG becomes 4,301 digits (more
    than Python itself turns into an int), the text DEEP an object nested DEEP levels."""
    header = {
        "proto": "ma-ota-fl",
        "v": 1,
        "type": kind,
        "round": round_,
        "node": node,
        "body": body,
        "manifest": [],
    }
    deep = '{"x":' * DEEP + "{}" + "}" * DEEP
    return [json.dumps(header).replace('"BIG"', "9" * 4301).replace('"DEEP"', deep).encode()]


def _stats(**changes: Any) -> dict[str, Any]:
    return {"weight": 4.0, "groups": ["a"], "mean": [0.0], "var": [1.0], "metrics": {}, **changes}


def _safetensors(entry: dict[str, Any], data: bytes = b"\0" * 16) -> bytes:
    text = json.dumps({"t": entry}).encode()
    return len(text).to_bytes(8, "little") + text + data


# --- 1. one message ends the run ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (_frames("heartbeat", {"pad": "BIG"}), "digits"),
        (_frames("heartbeat", {}, round_="BIG"), "digits"),
        (_frames("stats", _stats(weight=HUGE)), "digits"),
        (_frames("stats", _stats(mean=[HUGE])), "digits"),
        (_frames("time_report", {"pps_edge_unix_s": HUGE, "radio_time_s": 0.0, "source": "x"}), "digits"),
        # Refused by the depth check, or by json itself when the caller's stack is deep already.
        (_frames("hello", {"capabilities": "DEEP"}), "nests more than|RecursionError"),
        (_frames("stats", _stats(metrics="DEEP")), "nests more than|RecursionError"),
        (_frames("stats", _stats(metrics={"loss": "x"})), "metrics.loss"),
        (_frames("stats", _stats(metrics={"update_sq_norm": HUGE})), "digits"),
        (_frames("stats", _stats(metrics={"update_sq_norm": 1e300})), "update_sq_norm"),
        (_frames("stats", _stats(metrics={"timing": {"train_s": HUGE}})), "digits"),
        (_frames("stats", _stats(metrics={"timing": {"train_s": 1e300}})), "train_s"),
        (_frames("stats", _stats(metrics={"pad": "x" * 100_000})), "metrics is"),
        (_frames("stats", _stats(mean=[1e300], var=[1e300])), "mean"),
        (_frames("ota", {"slot_s": 1.0, "b_k": [1e100, 0.0], "sent_locally": False}), "b_k"),
        (
            [b'{"proto":"ma-ota-fl","v":1,"type":"bye","round":0,"node":0,"body":{"x":1e400},"manifest":[]}'],
            "overflows",
        ),
    ],
    ids=[
        "int_4301_digits_in_a_heartbeat",
        "int_4301_digits_as_round",
        "stats_weight_10e400",
        "stats_mean_10e400",
        "time_report_pps_10e400",
        "hello_capabilities_985_deep",
        "stats_metrics_985_deep",
        "metrics_loss_is_text",
        "metrics_update_sq_norm_10e400",
        "metrics_update_sq_norm_1e300",
        "metrics_timing_10e400",
        "metrics_timing_1e300",
        "metrics_padded_to_100kB",
        "stats_mean_var_1e300",
        "ota_b_k_1e100",
        "float_literal_1e400",
    ],
)
def test_the_wire_refuses_what_ended_the_run(frames: list[bytes], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        P.decode(frames)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}, "dtype"),
        ({"dtype": {"a": 1}, "shape": [4], "data_offsets": [0, 16]}, "dtype"),
        # 2**64 elements wrap to 0 in int64: zero bytes of data "fit", and reshape fails.
        ({"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]}, "shape"),
        ({"dtype": "U8", "shape": [2**16, 2**16, 2**16, 2**16], "data_offsets": [0, 0]}, "shape"),
        ({"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}, "shape"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [0, int("9" * 30)]}, "digits"),
    ],
)
def test_odd_safetensors_headers_are_protocol_errors(entry: dict[str, Any], match: str) -> None:
    header = _frames("digital", {"weight": 1.0, "purpose": "update", "metrics": {}})[0]
    frame = _safetensors(entry)
    h = json.loads(header)
    h["manifest"] = [{"name": "update", "bytes": len(frame)}]
    with pytest.raises(ProtocolError, match=match):
        P.decode([json.dumps(h).encode(), frame])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    """A bound digital coordinator (insecure, loopback) in round 1, node 0 joined over a DEALER."""
    from fl.coordinator import Coordinator
    from fl.runner import round_robin_planner

    cfg = load_config(None, BASE + ["fl.transport.insecure=true"])
    coord = Coordinator(cfg, tmp_path_factory.mktemp("peers") / "run", round_robin_planner(cfg))
    coord.bind()
    dealer = _join(coord, 0)
    coord.peers.new_round(1)
    yield coord, dealer
    dealer.close()
    coord.close(say_bye=False)


def _join(coord: Any, k: int, incarnation: str = "a") -> zmq.Socket:
    """Node ``k`` over a DEALER, saying HELLO until it is in (as a node does: a reconnect may
    wait until the router has closed the old connection)."""
    dealer = coord.ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, P.node_identity(k))
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(coord.endpoint)
    hello = P.encode(Message(MsgType.HELLO, 0, k, {"capabilities": {"incarnation": incarnation}}))

    def joined() -> bool:
        info = coord.nodes.get(k)
        return info is not None and info.alive and info.capabilities.get("incarnation") == incarnation

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not joined():
        dealer.send_multipart(hello)
        for _ in range(5):
            coord.peers.pump(0.02)
    if not joined():
        dealer.close()  # an open socket would hang the context's teardown
        raise AssertionError(f"node {k} ({incarnation}) did not join within 30 s")
    return dealer


def _pump_until(coord: Any, cond: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not cond():
        coord.peers.pump(0.02)
    assert cond()


def _replies(sock: zmq.Socket, wait_s: float = 1.0) -> list[Message]:
    out, deadline = [], time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if sock.poll(50):
            msg = P.decode(sock.recv_multipart())
            if msg.type is not MsgType.HEARTBEAT:
                out.append(msg)
    return out


def test_each_killer_message_over_the_socket_is_refused_with_an_error_and_the_run_goes_on(live: Any) -> None:
    coord, dealer = live
    killers = [
        _frames("heartbeat", {"pad": "BIG"}),
        _frames("stats", _stats(weight=HUGE)),
        _frames("hello", {"capabilities": "DEEP"}, round_=0),
        _frames("stats", _stats(metrics={"loss": "x"})),
    ]
    before = coord.loop.audit.totals["malformed"]
    for frames in killers:
        dealer.send_multipart(frames)
    _pump_until(coord, lambda: coord.loop.audit.totals["malformed"] >= before + len(killers))
    coord.loop.last_seen[P.node_identity(0)] = time.monotonic()
    coord.peers.pump(0.0)
    assert coord.loop.error is None and coord.nodes[0].alive
    errors = [m for m in _replies(dealer) if m.type is MsgType.ERROR]
    assert len(errors) >= len(killers) and all(e.body["code"] == "malformed" for e in errors)
    # The refusals are events, counted per peer and reason.
    coord.peers._audit(force=True)
    events = [json.loads(x) for x in (coord.run_dir / "events.jsonl").read_text().splitlines()]
    refused = [e for e in events if e["event"] == "refused" and e["code"] == "malformed"]
    assert (
        refused and refused[-1]["identity"] == "node-0" and sum(e["count"] for e in refused) >= len(killers)
    )


# --- 2. finite extremes -----------------------------------------------------------------------------
def _digital(coord: Any, value: float, k: int = 0, round_: int = 1) -> Message:
    update = {n: np.full(coord.peers.shapes[n], value, np.float32) for n in coord.payload}
    body = {"weight": 4.0, "purpose": "update", "metrics": {}}
    return P.decode(P.encode(Message(MsgType.DIGITAL, round_, k, body, {"update": update})))


def _still_joined(coord: Any, k: int) -> None:
    """Node ``k`` of the shared fixture is in the federation: an earlier test's pumps may have
    outlived its heartbeat window, so it says HELLO again (as a node that was dropped does)."""
    if not coord.nodes[k].alive:
        hello = Message(MsgType.HELLO, 0, k, {"capabilities": dict(coord.nodes[k].capabilities)})
        coord.loop.inbox.put((P.node_identity(k), hello))
        coord.peers.pump(0.0)
    assert coord.nodes[k].alive


def _deliver(coord: Any, msg: Message, k: int = 0) -> None:
    coord.loop.last_seen[P.node_identity(k)] = time.monotonic()
    coord.loop.inbox.put((P.node_identity(k), msg))
    coord.peers.pump(0.0)


def test_an_update_past_physics_drops_its_node_for_the_round_with_the_reason(live: Any) -> None:
    coord, _ = live
    coord.peers.new_round(1)
    coord.peers.selected = {0}
    _deliver(coord, _digital(coord, 3e38))  # finite float32, but any sum of them is inf
    assert coord.rejected[-1]["code"] == "bad_payload" and "at most" in coord.rejected[-1]["reason"]
    assert "bad digital" in coord.peers.dropped[0]
    # The round does not wait for it: collect returns at once.
    assert coord.peers.collect(MsgType.DIGITAL, [0], time.monotonic() + 30) == []
    assert coord.nodes[0].alive  # out of this round, not out of the run


def test_updates_are_clipped_to_the_configured_norm_and_weighted_by_the_plan(live: Any) -> None:
    from fl.round_plan import RoundPlan

    coord, _ = live
    coord.peers.new_round(1)
    coord.peers.selected = {0}
    _deliver(coord, _digital(coord, 1e3))  # within physics, but it would poison the model
    plan = RoundPlan(1, [0], 1, 1e-3, {0: 2}, {0: 1e9}, {0: 0.5})
    coord.fl.transport.clip_norm = 1.0
    try:
        agg = coord.strategy.aggregate(1, plan, [0], None)
    finally:
        coord.fl.transport.clip_norm = None
    norm = np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in agg.update.values()))
    assert norm == pytest.approx(1.0, rel=1e-5)


class _Air:
    """Records what would go on the air; the estimate comes back as zeros."""

    noise_power_w = 1e-12

    def __init__(self) -> None:
        self.scales: dict[int, complex] = {}

    def send(self, k: int, symbols: np.ndarray, scale: complex, at_s: float) -> None:
        self.scales[k] = complex(scale)

    def collect(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise RuntimeError("no air in this test")


def test_the_ota_slot_scales_a_burst_by_the_plans_b_k_never_the_nodes(live: Any) -> None:
    from fl import ota
    from fl.round_plan import RoundPlan
    from fl.strategies import OtaRound, RoundContext

    coord, _ = live
    peers = coord.peers
    air = _Air()
    ctx = RoundContext(peers, coord.phases, coord.fl, peers.shapes, air, 1.0, time.time)
    strategy = OtaRound(ctx)
    peers.new_round(1)
    peers.selected = {0}
    update = {n: np.full(peers.shapes[n], 0.01, np.float32) for n in peers.payload}
    stats = ota.group_stats(update, peers.payload)
    body = {
        "weight": 4.0,
        "groups": peers.payload,
        "mean": stats.mean.tolist(),
        "var": stats.var.tolist(),
        "metrics": {},
    }
    _deliver(coord, P.decode(P.encode(Message(MsgType.STATS, 1, 0, body))))
    shared = ota.shared_stats([stats], [1.0])
    iq = P.complex_to_pairs(ota.pack(ota.normalize(update, shared)))
    # The node claims b_k = 1e8 (in range for the wire): the plan said 0.5.
    burst = {"slot_s": 1.0, "b_k": [1e8, 0.0], "sent_locally": False}
    _deliver(coord, P.decode(P.encode(Message(MsgType.OTA, 1, 0, burst, {"symbols": {"iq": iq}}))))
    plan = RoundPlan(1, [0], 1, 1e-3, {0: 2}, {0: 1e9}, {0: 1.0}, b_k={0: 0.5 + 0j})
    channels = np.ones((4, 2), complex)
    coord.fl.digital_reference = False
    try:
        with pytest.raises(RuntimeError, match="no air"):
            strategy.aggregate(1, plan, [0], channels)
    finally:
        coord.fl.digital_reference = True
    assert air.scales == {0: 0.5 + 0j}


def test_a_burst_louder_than_its_own_statistics_is_dropped() -> None:
    from fl import ota
    from fl.strategies import burst_problem

    update = {"a": np.random.default_rng(0).normal(0, 0.01, 1000).astype(np.float32)}
    own = ota.group_stats(update, ["a"])
    shared = ota.shared_stats([own], [1.0])
    honest = P.complex_to_pairs(ota.pack(ota.normalize(update, shared)))
    assert burst_problem(honest, own, shared, [1000]) is None
    assert "burst power" in burst_problem(honest * 100, own, shared, [1000])


# --- 3. the ROUTER_HANDOVER hijack --------------------------------------------------------------------
@pytest.fixture
def curve(tmp_path: Path):
    from fl.coordinator import Coordinator
    from fl.runner import round_robin_planner

    make_lab_keys(tmp_path / "keys", nodes=4)
    cfg = load_config(None, BASE + [f"fl.transport.keys_dir={tmp_path / 'keys'}"])
    coord = Coordinator(cfg, tmp_path / "run", round_robin_planner(cfg))
    coord.bind()
    yield coord, KeyLayout(tmp_path / "keys")
    coord.close(say_bye=False)


def _curve_dealer(coord: Any, keys: KeyLayout, name: str, identity: bytes) -> zmq.Socket:
    sock = coord.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.LINGER, 0)
    zmq_security.secure_client(sock, keys.secret(name), keys.public("coordinator"))
    sock.connect(coord.endpoint)
    return sock


def test_a_routing_id_in_use_cannot_be_taken_over_with_another_nodes_key(curve: Any) -> None:
    coord, keys = curve
    victim = _curve_dealer(coord, keys, "node-0", P.node_identity(0))
    victim.send_multipart(P.encode(Message(MsgType.HELLO, 0, 0, {"capabilities": {}})))
    _pump_until(coord, lambda: 0 in coord.nodes)
    hijacker = _curve_dealer(coord, keys, "node-3", P.node_identity(0))  # node 3's key, node 0's id
    try:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            hijacker.send_multipart(P.encode(Message(MsgType.HEARTBEAT, 0, 0)), zmq.NOBLOCK)
            victim.send_multipart(P.encode(Message(MsgType.HEARTBEAT, 0, 0)))
            coord.peers.pump(0.05)
        adapter = {"adapter": {"a": np.ones(3, np.float32)}}
        coord.peers.send(0, Message(MsgType.RESULT, 1, COORDINATOR, {"metrics": {}, "version": 1}, adapter))
        got = [m.type for m in _replies(victim)]
        assert MsgType.RESULT in got  # the victim still gets its own messages
        assert not hijacker.poll(200)  # and the hijacker gets nothing of node 0's
    finally:
        hijacker.close()
        victim.close()


def test_an_id_claimed_first_with_another_nodes_key_is_refused_and_audited(curve: Any) -> None:
    coord, keys = curve
    squatter = _curve_dealer(coord, keys, "node-3", P.node_identity(0))
    try:
        for _ in range(3):
            squatter.send_multipart(P.encode(Message(MsgType.HEARTBEAT, 0, 0)))
        _pump_until(coord, lambda: coord.loop.audit.totals["identity_key_mismatch"] >= 3)
        # Its heartbeats do not make node 0 "seen".
        assert not coord.loop.seen_within(P.node_identity(0), 10.0)
        coord.peers._audit(force=True)
        events = [json.loads(x) for x in (coord.run_dir / "events.jsonl").read_text().splitlines()]
        hit = [e for e in events if e["event"] == "refused" and e["code"] == "identity_key_mismatch"]
        node3 = zmq_security.load_public_key(keys.public("node-3")).decode()
        assert hit and hit[0]["identity"] == "node-0" and hit[0]["key"] == node3
    finally:
        squatter.close()


def test_unauthenticated_handshakes_are_audited(curve: Any, tmp_path: Path) -> None:
    coord, keys = curve
    zmq_security.make_keypair(tmp_path / "stranger", "stranger")
    sock = coord.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    zmq_security.secure_client(
        sock, tmp_path / "stranger" / "stranger.key_secret", keys.public("coordinator")
    )
    sock.connect(coord.endpoint)
    try:
        _pump_until(coord, lambda: coord.peers.auth.denied_count >= 1)
        coord.peers._audit(force=True)
        events = [json.loads(x) for x in (coord.run_dir / "events.jsonl").read_text().splitlines()]
        denied = [e for e in events if e["event"] == "refused" and e["code"] == "unauthenticated"]
        stranger = zmq_security.load_public_key(tmp_path / "stranger" / "stranger.key").decode()
        assert denied and denied[0]["key"] == stranger and denied[0]["address"].startswith("127.0.0.1")
    finally:
        sock.close()


# --- 4. floods, memory and disk -----------------------------------------------------------------------
def test_a_flood_from_one_peer_costs_that_peer_not_the_others() -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        loop = SocketLoop(
            router, True, 10.0, COORDINATOR, rate_hz=20.0, burst=10, inbox_size=64, inbox_per_peer=8
        ).start()
    except BaseException:
        router.close(linger=0)
        ctx.term()
        raise
    flood, honest = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    for sock, name in ((flood, b"flood"), (honest, b"honest")):
        sock.setsockopt(zmq.IDENTITY, name)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
    try:
        bye = P.encode(Message(MsgType.BYE, 0, 1))
        for i in range(3000):
            flood.send_multipart(bye)
            if i % 600 == 0:
                honest.send_multipart(P.encode(Message(MsgType.BYE, i, 2)))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and loop.audit.totals["rate_limited"] < 2900:
            time.sleep(0.05)
        got: list[bytes] = []
        while not loop.inbox.empty():
            got.append(loop.inbox.get_nowait()[0])
        assert got.count(b"honest") == 5  # every honest message got through
        assert got.count(b"flood") <= 10  # the flooder: its burst, then nothing
        assert loop.audit.totals["rate_limited"] >= 2900 and loop.error is None
    finally:
        for sock in (flood, honest):
            sock.close()
        loop.close(linger_s=0.0)
        ctx.term()


def test_the_inbox_keeps_a_share_for_every_peer() -> None:
    from fl.admission import BoundedInbox

    inbox = BoundedInbox(maxsize=10, per_peer=3)
    assert [inbox.put((b"a", i)) for i in range(5)] == [True, True, True, False, False]
    assert inbox.put((b"b", 0)) and inbox.qsize() == 4
    assert inbox.get_nowait() == (b"a", 0) and inbox.put((b"a", 9))


def test_a_message_is_capped_in_total_and_in_frames_before_it_is_parsed() -> None:
    from fl.messages import MAX_FRAMES, message_size_problem

    assert "frames" in message_size_problem([10] * (MAX_FRAMES + 2), None, None)
    assert "over the cap of 1000" in message_size_problem([10, 600, 600], 800, 1000)
    assert message_size_problem([10, 600], 800, 1000) is None


def test_the_coordinator_caps_frames_at_what_its_messages_need(live: Any) -> None:
    coord, _ = live
    cap = coord.loop.socket.getsockopt(zmq.MAXMSGSIZE)
    adapter_bytes = sum(a.nbytes for a in coord.global_adapter.values())
    # The tiny model's adapter is far under 256 MB: a 200 MB frame is cut off as it arrives.
    assert adapter_bytes < cap <= adapter_bytes + 2 * 1024 * 1024
    assert coord.loop.max_total_bytes < 12 * 200 * 1024 * 1024


def test_checkpoint_state_does_not_grow_with_the_rounds_and_resume_reads_the_records(tmp_path: Path) -> None:
    from fl.checkpoint import append_record, load_checkpoint, save_checkpoint

    adapter = {"a": np.ones(4, np.float32)}
    sizes = []
    for r in range(1, 31):
        record = {"round": r, "val_loss": 1.0 / r, "nodes": {"0": {"pad": "x" * 1000}}}
        path = save_checkpoint(tmp_path, r, adapter, "ffa", {"round": r, "version": r, "record": record})
        append_record(tmp_path, record)
        sizes.append((path / "state.json").stat().st_size)
    assert max(sizes) - min(sizes) < 64  # the state holds this round only
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == list(range(1, 31))
    # A crash after round 31's checkpoint, before its record: resume completes it from the state.
    save_checkpoint(tmp_path, 31, adapter, "ffa", {"round": 31, "version": 31, "record": {"round": 31}})
    found = load_checkpoint(tmp_path, {"a"})
    assert [m["round"] for m in found.metrics] == list(range(1, 32))
    # A record past the checkpoint (a crash in between) is cut off.
    append_record(tmp_path, {"round": 32})
    (tmp_path / "checkpoints" / "LATEST").write_text("round-0031")
    assert [m["round"] for m in load_checkpoint(tmp_path, {"a"}).metrics] == list(range(1, 32))
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["round"] == 31


# --- 5. stalls and loose ends ---------------------------------------------------------------------------
def test_a_heartbeating_node_that_never_delivers_is_dropped_after_its_misses(live: Any) -> None:
    coord, _ = live
    d1 = _join(coord, 1)
    try:
        for r in (1, 2):
            coord.peers.new_round(r)
            coord.peers.selected = {1}
            assert coord.nodes[1].alive
            coord.peers.end_round([])  # selected, heartbeating, delivered nothing
        assert not coord.nodes[1].alive  # fl.transport.max_missed_rounds=2
        events = [json.loads(x) for x in (coord.run_dir / "events.jsonl").read_text().splitlines()]
        assert any(
            e["event"] == "node_lost" and e["node"] == 1 and "delivered nothing" in e["why"] for e in events
        )
    finally:
        d1.close()


def test_a_node_restarted_mid_round_is_not_waited_for(live: Any) -> None:
    coord, _ = live
    d2 = _join(coord, 2, incarnation="first")
    coord.peers.new_round(3)
    coord.peers.selected = {2}
    d2.close()  # the process dies mid-round; a new one starts
    d2b = _join(coord, 2, incarnation="second")
    try:
        assert "restarted mid-round" in coord.peers.dropped[2]
        assert coord.peers.collect(MsgType.DIGITAL, [2], time.monotonic() + 30) == []
    finally:
        d2b.close()


def test_uploads_for_a_round_the_node_was_not_selected_for_and_duplicates_are_refused(live: Any) -> None:
    coord, _ = live
    _still_joined(coord, 0)
    coord.peers.new_round(1)
    coord.peers.selected = set()
    _deliver(coord, _digital(coord, 0.01))
    assert coord.rejected[-1]["code"] == "not_selected" and not coord.peers.uploads
    coord.peers.selected = {0}
    first, second = _digital(coord, 0.01), _digital(coord, 0.02)
    _deliver(coord, first)
    _deliver(coord, second)
    assert coord.rejected[-1]["code"] == "duplicate"
    assert coord.peers.uploads[(MsgType.DIGITAL, 0)] is first  # the first counts
