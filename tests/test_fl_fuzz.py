"""Fuzzing the FL message handlers (hypothesis): whatever a peer sends cannot end the run.

- The decoder: arbitrary and mutated headers, wrong versions, unknown types, truncated and
  oversized frames either decode or raise ``ProtocolError``, never anything else.
- The coordinator: uploads with one defect each (wrong tensor names or shapes, wrong dtype,
  non-finite values, missing or extra frames, bad weights, another round, a type a node may not
  send) are refused and logged; well-formed ones are kept, and aggregation works on them. The
  node stays in the run and the socket thread stays up.
- The node: plans and shared statistics with one defect each, stale rounds, messages claiming
  another sender or a type only nodes send are refused and logged, never acted on.
- Every message type (issue 19) with finite extremes, huge integers, deep nesting, wrong types
  and odd safetensors headers: decoded or refused, and what decodes neither the coordinator nor
  a node fails on; and a whole federation's run finishes while a peer sends such garbage.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.errors import ProtocolError
from fl import ota
from fl import protocol as P
from fl.aggregation import DigitalFedAvg, apply_update
from fl.protocol import COORDINATOR, Message, MsgType
from testbed.config import load_config

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
OVERRIDES = [
    "lab.clients.count=2",
    "fl.data.num_samples=40",
    "fl.transport.insecure=true",
    "fl.transport.bind=tcp://127.0.0.1:*",
    "fl.transport.heartbeat_s=0.1",
    "fl.transport.join_timeout_s=0.2",
    "fl.training.local_steps=1",
    "fl.transport.max_message_bytes=100000",
]

# --- the decoder ---------------------------------------------------------------------------------
_VALID = P.encode(
    Message(
        MsgType.DIGITAL,
        1,
        0,
        {"weight": 8.0, "purpose": "update", "metrics": {}},
        {"update": {"a": np.ones((2, 3), np.float32)}},
    )
)
_HEADER = json.loads(bytes(_VALID[0]))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_messages(draw: st.DrawFn) -> list[bytes]:
    header = copy.deepcopy(_HEADER)
    frames = [bytes(f) for f in _VALID[1:]]
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["set", "drop", "body", "truncate", "extra_frame", "garbage", "nan"]))
        if how == "set":
            header[draw(st.sampled_from(sorted(header)))] = draw(json_values)
        elif how == "drop":
            header.pop(draw(st.sampled_from(sorted(header))), None)
        elif how == "body" and isinstance(header.get("body"), dict) and header["body"]:
            header["body"][draw(st.sampled_from(sorted(header["body"])))] = draw(json_values)
        elif how == "truncate" and frames and frames[0]:
            frames[0] = frames[0][: draw(st.integers(0, len(frames[0]) - 1))]
        elif how == "extra_frame":
            frames.append(draw(st.binary(max_size=64)))
        elif how == "garbage":
            return [draw(st.binary(max_size=200)), *frames]
        elif how == "nan":
            raw = json.dumps(header).replace('"round": 1', '"round": NaN', 1).replace("8.0", "Infinity")
            return [raw.encode(), *frames]
    return [json.dumps(header).encode(), *frames]


@FUZZ
@given(frames=mutated_messages())
def test_the_decoder_answers_a_message_or_a_protocol_error(frames: list[bytes]) -> None:
    try:
        msg = P.decode(frames, max_frame_bytes=4096)
    except ProtocolError:
        return
    assert isinstance(msg, Message) and msg.round >= 0 and msg.node >= COORDINATOR


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([b'{"proto":"ma-ota-fl","v":1,"type":"bye","round":NaN,"node":0,"body":{},"manifest":[]}'], "NaN"),
        (
            [b'{"proto":"ma-ota-fl","v":1,"type":"bye","round":true,"node":0,"body":{},"manifest":[]}'],
            "round",
        ),
        ([b"[" * 100_000], "not UTF-8 JSON"),
        ([_VALID[0], bytes(_VALID[1])[:-3]], "bytes, manifest says"),
        ([_VALID[0], bytes(300_000)], "over the cap"),
    ],
)
def test_specific_malformed_frames_are_protocol_errors(frames: list[bytes], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        P.decode(frames, max_frame_bytes=200_000)


# --- the coordinator -------------------------------------------------------------------------------
DEFECTS = [
    "none",
    "wrong_round",
    "wrong_name",
    "wrong_shape",
    "wrong_dtype",
    "non_finite",
    "missing_frame",
    "extra_frame",
    "bad_weight",
    "wrong_type",
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    """A bound coordinator in round 1 with node 0 joined over a real DEALER socket."""
    from fl.coordinator import Coordinator
    from fl.runner import round_robin_planner

    cfg = load_config(None, OVERRIDES)
    coord = Coordinator(cfg, tmp_path_factory.mktemp("fuzz") / "run", round_robin_planner(cfg))
    coord.bind()
    dealer = coord.ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, P.node_identity(0))
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(coord.endpoint)
    dealer.send_multipart(P.encode(Message(MsgType.HELLO, 0, 0, {"capabilities": {}})))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and 0 not in coord.nodes:
        coord.peers.pump(0.02)
    assert 0 in coord.nodes
    coord.peers.new_round(1)
    coord.peers.selected = {0}
    yield coord, dealer
    dealer.close()
    coord.close(say_bye=False)


def _upload(coord: Any, kind: MsgType, defect: str, scale: float) -> Message:
    names = coord.payload
    shapes = {n: coord.global_adapter[n].shape for n in names}
    update = {n: np.full(shapes[n], scale, np.float32) for n in names}
    n_sym = ota.num_symbols(int(sum(np.prod(s) for s in shapes.values())))
    if kind is MsgType.DIGITAL:
        body: dict[str, Any] = {"weight": 4.0, "purpose": "update", "metrics": {}}
        frames: dict[str, Any] = {"update": update}
    elif kind is MsgType.STATS:
        stats = ota.group_stats(update, names)
        body = {"weight": 4.0, "groups": names, "mean": stats.mean.tolist(), "var": stats.var.tolist(),
                "metrics": {}}  # fmt: skip
        frames = {}
    else:
        body = {"slot_s": 1.0, "b_k": [1.0, 0.0], "sent_locally": False}
        frames = {"symbols": {"iq": np.full((n_sym, 2), scale, np.float32)}}
    tensors = frames.get("update") or frames.get("symbols")
    first = sorted(tensors)[0] if tensors else None
    if defect == "wrong_name":
        if tensors:
            tensors["not_a_lora_tensor"] = tensors.pop(first)
        else:
            body["groups"] = [*names[:-1], "not_a_group"]
    elif defect == "wrong_shape":
        if tensors:
            tensors[first] = np.zeros((3, 5), np.float32)
        else:
            body["mean"] = body["mean"][:-1]
    elif defect == "wrong_dtype":
        if tensors:
            tensors[first] = tensors[first].astype(np.int32)
        else:
            body["var"] = [-1.0] * len(names)
    elif defect == "non_finite":
        if tensors:
            bad = np.array(tensors[first])
            bad.flat[0] = np.inf
            tensors[first] = bad
        else:
            body["mean"] = [1e308 * 10] * len(names)  # inf: JSON cannot carry it, but a body can
    elif defect == "missing_frame":
        frames = {}
        if kind is MsgType.STATS:
            body["groups"] = []
    elif defect == "extra_frame":
        frames["extra"] = {"x": np.zeros(2, np.float32)}
    elif defect == "bad_weight":
        body["weight"] = -1.0
        if kind is MsgType.OTA:
            body["b_k"] = [1.0]
    return Message(kind, 2 if defect == "wrong_round" else 1, 0, body, frames)


@FUZZ
@given(
    kind=st.sampled_from([MsgType.DIGITAL, MsgType.STATS, MsgType.OTA]),
    defect=st.sampled_from(DEFECTS),
    scale=st.floats(-1.0, 1.0, allow_nan=False, width=32),
)
def test_the_coordinator_refuses_each_bad_upload_and_keeps_the_good_ones(
    live: Any, kind: MsgType, defect: str, scale: float
) -> None:
    coord, dealer = live
    identity = P.node_identity(0)
    coord.peers.new_round(1)
    coord.peers.selected = {0}
    rejected, stale = len(coord.rejected), _stale_events(coord)
    coord.loop.last_seen[identity] = time.monotonic()
    msg = _upload(coord, kind, defect, scale)
    if defect == "wrong_type":
        msg = Message(MsgType.SHARED_STATS, 1, 0, {"mean": [], "var": [], "b_k": [0, 0], "slot_s": 0,
                                                  "num_symbols": 1})  # fmt: skip
    # Through the same path as a message off the socket (encode/decode, then the handler).
    try:
        decoded = P.decode(P.encode(msg)) if defect != "non_finite" or kind is not MsgType.STATS else msg
    except ProtocolError:
        # Refused by the wire's validation layer (a weight or b_k out of range): the socket
        # thread drops it and answers ERROR before the coordinator sees it.
        assert defect not in ("none", "wrong_round", "wrong_type")
        return
    coord.loop.inbox.put((identity, decoded))
    coord.peers.pump(0.0)
    while dealer.poll(0):
        dealer.recv_multipart()  # the coordinator's answers: refusals and heartbeats
    assert coord.nodes[0].alive and coord.loop.error is None  # the run goes on
    if defect == "none":
        assert len(coord.rejected) == rejected and len(coord.peers.uploads) == 1
        (kept,) = coord.peers.uploads.values()
        if kind is MsgType.DIGITAL:  # what the round does with it works
            mean = DigitalFedAvg().aggregate({0: kept.frames["update"]}, {0: 4.0}).update
            apply_update(coord.global_adapter, mean)
        elif kind is MsgType.STATS:
            stats = ota.GroupStats(
                tuple(kept.body["groups"]), np.asarray(kept.body["mean"]), np.asarray(kept.body["var"])
            )
            ota.shared_stats([stats], [1.0])
        else:
            assert P.pairs_to_complex(kept.frames["symbols"]["iq"]).size > 0
    elif defect == "wrong_round":
        assert _stale_events(coord) == stale + 1 and not coord.peers.uploads
    else:
        assert not coord.peers.uploads
        assert len(coord.rejected) == rejected + 1
        assert coord.rejected[-1]["code"] in ("bad_payload", "wrong_type")


def _stale_events(coord: Any) -> int:
    text = (coord.run_dir / "events.jsonl").read_text(encoding="utf-8")
    return text.count('"event": "stale"')


# --- the node -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def node(live: Any):
    """Node 0 with its own workload, its socket pointing nowhere (no coordinator to hear it)."""
    from fl.node import Node

    coord, _ = live
    cfg = load_config(None, OVERRIDES)
    n = Node(cfg, 0, "tcp://127.0.0.1:9", workload=coord.work)
    n._open()
    yield n
    n.loop.close(linger_s=0.0)
    n.ctx.term()


def _plan(coord: Any, defect: str) -> Message:
    body = {"version": 0, "local_steps": 1, "batch": 2, "lr": 1e-3, "clock_hz": 1e9, "selected": [0],
            "aggregation": "digital", "lora_mode": "ffa", "slot_s": 0.0, "b_k": [1.0, 0.0],
            "deadline_s": 0.2, "weight": 2.0}  # fmt: skip
    adapter = {n: np.array(v) for n, v in coord.global_adapter.items()}
    first = sorted(adapter)[0]
    sender, kind, r = COORDINATOR, MsgType.PLAN, 5
    if defect == "wrong_round":
        r = 1  # older than the round the node is in
    elif defect == "wrong_name":
        adapter["base_model.not_lora"] = adapter.pop(first)
    elif defect == "wrong_shape":
        adapter[first] = np.zeros((1, 1), np.float32)
    elif defect == "wrong_dtype":
        adapter[first] = adapter[first].astype(np.int16)
    elif defect == "non_finite":
        body["lr"] = 1e308 * 10
    elif defect == "missing_frame":
        adapter = {}
    elif defect == "extra_frame":
        body["aggregation"] = "carrier_pigeon"
    elif defect == "bad_weight":
        body["local_steps"] = 0
    elif defect == "wrong_type":
        sender, kind = 1, MsgType.STATS  # another node's message type, claiming another sender
    frames = {"adapter": adapter} if adapter else {}
    if kind is MsgType.STATS:
        body = {"weight": 1.0, "groups": [], "mean": [], "var": [], "metrics": {}}
        frames = {}
    return Message(kind, r, sender, body, frames)


@FUZZ
@given(defect=st.sampled_from([d for d in DEFECTS if d != "none"]))
def test_the_node_refuses_each_bad_plan_without_acting_on_it(node: Any, live: Any, defect: str) -> None:
    coord, _ = live
    node.round = 3
    before = {n: v.detach().clone() for n, v in node.work.model.named_parameters() if "lora_" in n}
    count = len(node.rejected)
    msg = _plan(coord, defect)
    if defect != "non_finite":
        try:
            msg = P.decode(P.encode(msg))
        except ProtocolError:
            # Refused by the wire's validation layer (e.g. an unknown aggregation, local_steps 0).
            assert defect in ("extra_frame", "bad_weight")
            return
    assert node.handle(msg) is None
    assert len(node.rejected) == count + 1, f"{defect} was not refused"
    assert node.round == 3  # nothing trained, nothing sent
    for n, v in node.work.model.named_parameters():
        if n in before:
            assert v.detach().equal(before[n])


def test_the_node_acts_on_a_good_plan_and_refuses_bad_shared_stats(node: Any, live: Any) -> None:
    coord, _ = live
    node.round = 3
    count = len(node.rejected)
    assert node.handle(P.decode(P.encode(_plan(coord, "none")))) is None
    assert len(node.rejected) == count and node.round == 5  # trained round 5 (and sent its update)
    names = coord.payload
    good = {"mean": [0.0] * len(names), "var": [1.0] * len(names), "groups": names, "b_k": [1.0, 0.0],
            "slot_s": 1.0, "num_symbols": ota.num_symbols(sum(coord.global_adapter[n].size for n in names))}  # fmt: skip
    assert node.message_problem(Message(MsgType.SHARED_STATS, 5, COORDINATOR, good)) is None
    for change in ({"groups": names[:-1]}, {"num_symbols": 3}, {"var": [0.0] * len(names)}, {"b_k": [1.0]}):
        bad = Message(MsgType.SHARED_STATS, 5, COORDINATOR, {**good, **change})
        assert node.message_problem(bad) is not None, change
    assert node.handle(Message(MsgType.RESULT, 99, COORDINATOR, {"metrics": {}, "version": 1})) is None
    assert node.handle(Message(MsgType.BYE, 5, COORDINATOR, {})) == 0


def test_garbage_on_the_live_socket_is_dropped_and_the_coordinator_carries_on(live: Any) -> None:
    coord, dealer = live
    before = len(coord.loop.rejected)
    junk = [[b"\xff\xfe"], [b"{}"], [bytes(_VALID[0])], [bytes(_VALID[0]), b"12345678"], [b"[" * 50_000]]
    for frames in junk:
        dealer.send_multipart(frames)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(coord.loop.rejected) < before + len(junk):
        coord.loop.last_seen[P.node_identity(0)] = time.monotonic()
        coord.peers.pump(0.02)
    assert len(coord.loop.rejected) == before + len(junk)
    assert coord.loop.error is None and coord.nodes[0].alive


def test_fuzz_module_leaves_the_run_dir_readable(live: Any) -> None:
    coord, _ = live
    for line in (Path(coord.run_dir) / "events.jsonl").read_text().splitlines():
        json.loads(line)


def test_while_waiting_for_shared_stats_the_node_refuses_other_rounds_and_bad_plans(
    node: Any, live: Any
) -> None:
    coord, _ = live
    node.round, node._plan_body = 5, {"lora_mode": "ffa"}
    names = coord.payload
    shared = {"mean": [0.0] * len(names), "var": [1.0] * len(names), "groups": names, "b_k": [1.0, 0.0],
              "slot_s": 1.0, "num_symbols": ota.num_symbols(sum(coord.global_adapter[n].size for n in names))}  # fmt: skip
    count = len(node.rejected)
    for msg in (
        Message(MsgType.SHARED_STATS, 4, COORDINATOR, shared),  # another round
        _plan(coord, "wrong_shape"),  # a plan that must not be trained on
        Message(MsgType.SHARED_STATS, 5, COORDINATOR, shared),
    ):
        node.loop.inbox.put((b"", P.decode(P.encode(msg))))
    got = node._await(MsgType.SHARED_STATS, 5, 5.0)
    assert got is not None and got.round == 5
    assert [r["type"] for r in node.rejected[count:]] == ["shared_stats", "plan"]


# --- every message type, with finite extremes, huge integers, deep nesting, wrong types -----------
_SAMPLES: dict[str, dict[str, Any]] = {
    "hello": {"capabilities": {"incarnation": "x", "samples": 4}},
    "welcome": {"run_id": "r", "next_round": 1},
    "heartbeat": {},
    "time_report": {"pps_edge_unix_s": 1.0, "radio_time_s": 0.5, "source": "HostClock"},
    "plan": {
        "version": 0,
        "local_steps": 1,
        "batch": 2,
        "lr": 1e-3,
        "clock_hz": 1e9,
        "selected": [0],
        "aggregation": "digital",
        "lora_mode": "ffa",
        "slot_s": 0.0,
        "b_k": [1.0, 0.0],
        "deadline_s": 1.0,
        "weight": 2.0,
    },  # fmt: skip
    "stats": {
        "weight": 4.0,
        "groups": ["a"],
        "mean": [0.0],
        "var": [1.0],
        "metrics": {"loss": 1.0, "timing": {"train_s": 0.1}},
    },  # fmt: skip
    "shared_stats": {"mean": [0.0], "var": [1.0], "b_k": [1.0, 0.0], "slot_s": 1.0, "num_symbols": 1},
    "ota": {"slot_s": 1.0, "b_k": [1.0, 0.0], "sent_locally": True},
    "digital": {"weight": 4.0, "purpose": "update", "metrics": {"update_sq_norm": 1.0}},
    "result": {"metrics": {"val_loss": 1.0}, "version": 1},
    "bye": {},
    "error": {"code": "x", "reason": "y"},
}
# Placeholders the encoder swaps for text json.dumps cannot (or Python will not) produce.
_RAW = {
    '"@BIG@"': "9" * 4301,
    '"@NEG_BIG@"': "-" + "9" * 400,
    '"@INF_LITERAL@"': "1e999",
    '"@NAN@"': "NaN",
    '"@DEEP@"': '{"x":' * 500 + "0" + "}" * 500,
}
evil_values = st.one_of(
    st.sampled_from(sorted(_RAW)).map(lambda s: s.strip('"')),
    st.sampled_from([1e308, -1e308, 3.4e38, -3.4e38, 5e-324, 0.0, -0.0, 2**63, -(2**63), 2**64, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=20),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=5),
    json_values,
)
odd_tensor_entries = st.fixed_dictionaries(
    {
        "dtype": st.one_of(st.sampled_from(["F32", "F64", "U8", "BOOL", "X9"]), st.lists(st.text(max_size=3), max_size=2), st.integers()),
        "shape": st.one_of(
            st.lists(st.integers(-2, 2**33), max_size=4),
            st.sampled_from([[2**32, 2**32], [2**16] * 4, [True], [1.5]]),
            st.text(max_size=3),
        ),
        "data_offsets": st.one_of(st.lists(st.integers(-5, 2**40), min_size=0, max_size=3), st.sampled_from([[0, 0], [0, 16]])),
    }
)  # fmt: skip


@st.composite
def any_message(draw: st.DrawFn) -> list[bytes]:
    kind = draw(st.sampled_from(sorted(_SAMPLES)))
    body = copy.deepcopy(_SAMPLES[kind])
    for _ in range(draw(st.integers(0, 3))):
        keys = sorted(body) + ["extra"]
        body[draw(st.sampled_from(keys))] = draw(evil_values)
    if isinstance(body.get("metrics"), dict) and draw(st.booleans()):
        body["metrics"][draw(st.sampled_from(["loss", "update_sq_norm", "timing", "pad"]))] = draw(
            evil_values
        )
    header = {"proto": "ma-ota-fl", "v": 1, "type": kind, "round": draw(st.sampled_from([0, 1, 2, "@BIG@"])),
              "node": draw(st.sampled_from([0, 1, -1, 7])), "body": body, "manifest": []}  # fmt: skip
    frames: list[bytes] = []
    if draw(st.booleans()):
        text = json.dumps({"t": draw(odd_tensor_entries)}).encode()
        frame = len(text).to_bytes(8, "little") + text + bytes(draw(st.sampled_from([0, 8, 16])))
        header["manifest"] = [
            {"name": draw(st.sampled_from(["update", "symbols", "adapter"])), "bytes": len(frame)}
        ]
        frames.append(frame)
    raw = json.dumps(header)
    for marker, text in _RAW.items():
        raw = raw.replace(marker, text)
    return [raw.encode(), *frames]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=any_message())
def test_no_message_of_any_type_ends_the_coordinator_or_the_node(
    live: Any, node: Any, frames: list[bytes]
) -> None:
    coord, dealer = live
    try:
        msg = P.decode(frames, max_frame_bytes=200_000)
    except ProtocolError:
        return
    # What decodes has every field typed and in range: the coordinator handles it...
    identity = P.node_identity(0)
    coord.peers.new_round(1)
    coord.peers.selected = {0}
    coord.nodes[0].alive = True  # an earlier example may have said BYE for it
    coord.loop.last_seen[identity] = time.monotonic()
    coord.loop.inbox.put((identity, msg))
    coord.peers.pump(0.0)  # raises if anything escapes
    assert coord.loop.error is None
    for value in (msg.body, coord.rejected[-1:] or None):
        json.dumps(value, allow_nan=False)  # and whatever it records stays plain JSON
    # ...and so does a node (a PLAN here has no valid adapter, so nothing trains).
    node.round = 3
    assert node.handle(msg) in (None, 0, 2)


_EVIL = ["@BIG@", "@NEG_BIG@", "@INF_LITERAL@", "@NAN@", "@DEEP@", 1e308, -1e308, 3.4e38, 2**64, -1, 0, "", None,
         True, [1e308] * 3, {"x": {"y": [None]}}]  # fmt: skip


def _garbage(rng: random.Random) -> list[bytes]:
    """A message of any type with up to three fields set to extremes (the fuzz's, seeded)."""
    kind = rng.choice(sorted(_SAMPLES))
    body = copy.deepcopy(_SAMPLES[kind])
    for _ in range(rng.randint(0, 3)):
        body[rng.choice([*sorted(body), "extra"])] = rng.choice(_EVIL)
    header = {"proto": "ma-ota-fl", "v": 1, "type": kind, "round": rng.choice([0, 1, 2]), "node": rng.choice([0, 1]),
              "body": body, "manifest": []}  # fmt: skip
    raw = json.dumps(header)
    for marker, text in _RAW.items():
        raw = raw.replace(marker, text)
    return [raw.encode()]


@pytest.mark.timeout(240)
def test_the_honest_nodes_run_finishes_while_a_peer_sends_garbage(tmp_path: Path) -> None:
    from fl.runner import LocalFederation

    cfg = load_config(
        None,
        [*OVERRIDES, "fl.rounds=2", "fl.aggregation=digital", "fl.transport.join_timeout_s=60",
         "fl.transport.round_deadline_s=60", "fl.transport.max_message_bytes=10000000"],
    )  # fmt: skip
    fed = LocalFederation(cfg, tmp_path / "run", node_mode="thread")
    fed.coordinator.bind()
    stop = threading.Event()

    def attack() -> None:
        ctx = zmq.Context()  # its own: the coordinator's context ends with the run
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, b"mallory")
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(fed.coordinator.endpoint)
        rng = random.Random(0)
        while not stop.is_set():
            for _ in range(20):
                with contextlib.suppress(zmq.Again):
                    sock.send_multipart(_garbage(rng), zmq.NOBLOCK)
            time.sleep(0.01)
        sock.close()
        ctx.term()

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    try:
        metrics = fed.run()
    finally:
        stop.set()
        attacker.join(timeout=5)
    assert [m["round"] for m in metrics] == [1, 2]
    assert all(m["delivered"] == m["selected"] and not m["dropped"] for m in metrics)
    events = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    refused = [e for e in events if e["event"] in ("refused", "rejected") and e.get("identity") == "mallory"]
    assert refused  # the garbage was seen, refused and recorded
