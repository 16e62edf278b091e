"""The coordinator's intake: who is in the federation, and what each node sent this round.

``Peers`` owns the node table (HELLO, heartbeats, BYE, radio times), checks every upload on
arrival (names, shapes, sizes, values) so nothing malformed reaches aggregation, keeps this
round's uploads and digital reference copies apart, and answers a refusal with an ERROR that
says why. The coordinator pumps it while it waits (``collect``).
"""

from __future__ import annotations

import logging
import math
import queue
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drivers import zmq_security
from drivers.errors import FLError
from fl import ota
from fl.keys import KeyLayout
from fl.messages import MAX_UPDATE_VALUE
from fl.protocol import COORDINATOR, Message, MsgType, SocketLoop, node_identity

log = logging.getLogger(__name__)

# How often the node table goes into the record stream (the console's ``nodes`` documents).
NODES_EVENT_PERIOD_S = 1.0
# How often the socket thread's refusals are written out (counted per peer and reason between).
AUDIT_PERIOD_S = 1.0
PUMP_BATCH = 256


@dataclass
class NodeInfo:
    node: int
    identity: bytes
    capabilities: dict[str, Any]
    alive: bool = True
    clock_offset_s: float | None = None
    participation: int = 0
    key: str | None = None  # the CURVE public key (z85) this node proved it holds
    last_metrics: dict[str, Any] = field(default_factory=dict)  # from its latest upload


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class RadioTimeSkew(FLError):
    """The nodes' radio times at a PPS edge disagree beyond fl.transport.max_clock_skew_s."""


# event(name, **data): one line of the coordinator's events.jsonl
EventSink = Callable[..., None]


class Peers:
    """The node table and this round's uploads, fed by the socket thread's inbox."""

    def __init__(
        self,
        fl: Any,
        num_clients: int,
        payload_shapes: Mapping[str, tuple[int, ...]],
        run_id: str,
        event: EventSink,
    ) -> None:
        """``fl``: the config's ``fl`` section; ``payload_shapes``: the tensors an update
        carries (this run's LoRA payload); ``event``: where refusals, joins and losses go."""
        self.fl = fl
        self.transport = fl.transport
        self.num_clients = num_clients
        self.payload = list(payload_shapes)
        self.shapes = dict(payload_shapes)
        self.run_id = run_id
        self.event = event
        self.loop: SocketLoop | None = None
        self.nodes: dict[int, NodeInfo] = {}
        self.rejected: list[dict[str, Any]] = []
        self.round = 0
        self.selected: set[int] = set()  # this round's selection (set by the dispatch)
        self.dropped: dict[int, str] = {}  # selected nodes out of this round, and why
        self.misses: dict[int, int] = {}  # selected rounds in a row a node delivered nothing
        self.auth: Any = None  # drivers.zmq_security.AuditedAuthenticator, when CURVE is on
        self._audit_t = 0.0
        self._bound_keys: dict[bytes, str | None] = {}
        self.uploads: dict[tuple[MsgType, int], Message] = {}
        self.references: dict[int, Message] = {}  # digital copies sent beside an OTA burst
        self.clock_reference_s: float | None = None
        self.resumed_participation: dict[int, int] = {}
        self._edge0_s: float | None = None
        self._nodes_event_t = 0.0

    # --- the node table ----------------------------------------------------------------------
    def alive(self) -> list[int]:
        return sorted(i.node for i in self.nodes.values() if i.alive)

    def participation(self) -> np.ndarray:
        return np.array(
            [self.nodes[k].participation if k in self.nodes else 0 for k in range(self.num_clients)]
        )

    def new_round(self, r: int) -> None:
        self.round = r
        self.uploads, self.references = {}, {}
        self.selected, self.dropped = set(), {}

    def drop(self, k: int, why: str) -> None:
        """Node ``k`` is out of this round (its contribution is not used); the reason is recorded."""
        if k in self.dropped:
            return
        self.dropped[k] = why
        self.uploads = {key: m for key, m in self.uploads.items() if key[1] != k}
        self.references.pop(k, None)
        self.event("dropped", node=k, why=why)

    def end_round(self, delivered: Sequence[int]) -> None:
        """Count the misses of the selected nodes that delivered nothing though alive: a node that
        heartbeats but never delivers is dropped after fl.transport.max_missed_rounds of them."""
        limit = self.transport.max_missed_rounds
        for k in self.selected:
            info = self.nodes.get(k)
            if k in delivered or info is None:
                self.misses.pop(k, None)
                continue
            self.misses[k] = self.misses.get(k, 0) + 1
            if info.alive and self.misses[k] >= limit:
                self.lose(info, f"selected {self.misses[k]} rounds in a row and delivered nothing")
                self.misses.pop(k, None)

    def bound_key(self, identity: bytes) -> str | None:
        """The CURVE key (z85) a routing id must come with: node k's id, node k's allow-listed
        key; None for other ids, or without CURVE (the HELLO check refuses those)."""
        if self.transport.insecure:
            return None
        if identity not in self._bound_keys:
            text = identity.decode(errors="replace")
            allowed = KeyLayout(Path(self.transport.keys_dir)).coordinator_allow / f"{text}.key"
            node_like = text.startswith("node-") and text[5:].isdigit() and len(self._bound_keys) < 4096
            key = zmq_security.load_public_key(allowed).decode() if node_like and allowed.is_file() else None
            if not node_like:
                return None
            self._bound_keys[identity] = key
        return self._bound_keys[identity]

    def send(self, k: int, msg: Message) -> None:
        assert self.loop is not None
        self.loop.send(msg, self.nodes[k].identity)

    def broadcast(self, make: Callable[[int], Message]) -> None:
        for k in self.alive():
            self.send(k, make(k))

    def lose(self, info: NodeInfo, why: str) -> None:
        info.alive = False
        assert self.loop is not None
        self.loop.peers.discard(info.identity)
        self.event("node_lost", node=info.node, why=why)

    def reject(self, identity: bytes, code: str, reason: str) -> None:
        who = identity.decode(errors="replace")
        self.rejected.append({"identity": who, "code": code, "reason": reason})
        self.event("rejected", identity=who, code=code, reason=reason)
        assert self.loop is not None
        self.loop.send(
            Message(MsgType.ERROR, self.round, COORDINATOR, {"code": code, "reason": reason}), identity
        )

    # --- waiting -----------------------------------------------------------------------------
    def pump(self, timeout_s: float) -> None:
        """Handle one inbound message (or none within ``timeout_s``) and check liveness."""
        assert self.loop is not None
        if self.loop.error is not None:
            who = self.loop.error_peer
            raise FLError(
                f"the coordinator's socket thread died: {type(self.loop.error).__name__}: {self.loop.error}"
                + (f" (handling a message from {who!r})" if who is not None else "")
            )
        # What is waiting, up to a bound: one message per pump could not keep up with a busy
        # inbox (the timeout applies to the first only).
        for i in range(PUMP_BATCH):
            try:
                identity, msg = self.loop.inbox.get(timeout=max(timeout_s, 0.0) if i == 0 else 0.0)
            except queue.Empty:
                break
            try:
                self._handle(identity, msg)
            except Exception as exc:  # noqa: BLE001 - whatever a peer sends, it cannot end the run
                log.exception("handling a %s from %r failed", getattr(msg, "type", None), identity)
                self.reject(identity, "bad_message", f"{type(exc).__name__}: {str(exc)[:300]}")
        self._audit()
        window = self.transport.heartbeat_s * self.transport.heartbeat_misses
        for info in self.nodes.values():
            if info.alive and not self.loop.seen_within(info.identity, window):
                self.lose(info, f"no heartbeat for {window:.2f} s")
        self._nodes_event()

    def collect(
        self, kind: MsgType, nodes: Sequence[int], deadline: float, reference: bool = False
    ) -> list[int]:
        """Wait until every node in ``nodes`` delivered ``kind`` (or died, or the deadline passed);
        ``reference``: the digital copies beside an OTA burst. The nodes that delivered."""

        def has(k: int) -> bool:
            return k in self.references if reference else (kind, k) in self.uploads

        while True:
            pending = [k for k in nodes if not has(k) and self.nodes[k].alive and k not in self.dropped]
            if not pending or time.monotonic() >= deadline:
                break
            self.pump(min(0.05, max(deadline - time.monotonic(), 0.0)))
        return [k for k in nodes if has(k) and k not in self.dropped]

    def wait_for_all(self, join_timeout_s: float, startup_check: Callable[[], None] | None) -> None:
        """Until every node said HELLO and reported its radio time; FLError naming who is missing."""
        deadline = time.monotonic() + join_timeout_s
        while time.monotonic() < deadline:
            ready = [i for i in self.nodes.values() if i.alive and i.clock_offset_s is not None]
            if len(ready) == self.num_clients:
                return
            if startup_check is not None:
                startup_check()
            self.pump(0.05)
        raise FLError(
            f"only nodes {self.alive()} of {self.num_clients} joined within fl.transport.join_timeout_s="
            f"{join_timeout_s} s; start the missing nodes or lower lab.clients.count"
        )

    def check_radio_times(self) -> None:
        offsets = {i.node: i.clock_offset_s for i in self.nodes.values() if i.alive}
        values = [v for v in offsets.values() if v is not None]
        spread = max(values) - min(values)
        self.event("radio_times", offsets=offsets, spread_s=spread)
        if spread > self.transport.max_clock_skew_s:
            raise RadioTimeSkew(
                f"the nodes' radio times at a PPS edge disagree by {spread:.3g} s (offsets {offsets}), over "
                f"fl.transport.max_clock_skew_s={self.transport.max_clock_skew_s}; check the PPS and 10 MHz "
                "cabling and re-sync the radios' time"
            )
        self.clock_reference_s = float(np.median(values))

    def _audit(self, force: bool = False) -> None:
        """The socket thread's and the authenticator's refusals, as ``refused`` events: one per
        peer and reason per AUDIT_PERIOD_S, with a count, so a flood is a line, not a million."""
        now = time.monotonic()
        if self.loop is None or (not force and now - self._audit_t < AUDIT_PERIOD_S):
            return
        self._audit_t = now
        for entry in self.loop.audit.drain():
            self.event("refused", **entry)
        if self.auth is not None:
            for entry in self.auth.denied():
                self.event("refused", identity=None, code="unauthenticated", count=1, **entry)

    def _nodes_event(self) -> None:
        """The node table, at most once per NODES_EVENT_PERIOD_S (the console's heartbeat view)."""
        now = time.monotonic()
        if now - self._nodes_event_t < NODES_EVENT_PERIOD_S or not self.nodes or self.loop is None:
            return
        self._nodes_event_t = now
        rows = []
        for k, info in sorted(self.nodes.items()):
            seen = self.loop.last_seen.get(info.identity)
            metrics = info.last_metrics
            rows.append(
                {
                    "node": k,
                    "alive": info.alive,
                    "heartbeat_age_s": None if seen is None else round(now - seen, 3),
                    "participation": info.participation,
                    "tokens_per_s": metrics.get("tokens_per_s")
                    if _finite(metrics.get("tokens_per_s"))
                    else None,
                    "gpu_mem_bytes": metrics.get("peak_memory_bytes")
                    if _finite(metrics.get("peak_memory_bytes"))
                    else None,
                }
            )
        self.event("nodes", nodes=rows)

    # --- one inbound message -----------------------------------------------------------------
    def _handle(self, identity: bytes, msg: Message | None) -> None:
        node = next((i for i in self.nodes.values() if i.identity == identity), None)
        if msg is None:  # ROUTER_MANDATORY: the peer is gone
            if node is not None and node.alive:
                self.lose(node, "unreachable")
            return
        if msg.type is MsgType.HELLO:
            self._hello(identity, msg)
            return
        if node is None or not node.alive:
            self.reject(
                identity, "unknown_node", f"{msg.type} from a node that has not said HELLO; say HELLO"
            )
            return
        if msg.node != node.node:
            self.reject(
                identity, "bad_node", f"message claims node {msg.node}, the sender is node {node.node}"
            )
            return
        if node.key is not None and msg.peer_key != node.key:
            self.reject(identity, "bad_key", f"node {node.node}'s messages must come with its own CURVE key")
            return
        if msg.type is MsgType.TIME_REPORT:
            self._time_report(node, msg)
        elif msg.type is MsgType.BYE:
            self.lose(node, "said BYE")
        elif msg.type in (MsgType.STATS, MsgType.OTA, MsgType.DIGITAL):
            self._upload(identity, node, msg)
        else:
            self.reject(identity, "wrong_type", f"a node may not send {msg.type}")

    def _upload(self, identity: bytes, node: NodeInfo, msg: Message) -> None:
        k = node.node
        if msg.round != self.round:
            self.event("stale", node=k, type=str(msg.type), msg_round=msg.round)
            return
        if k not in self.selected:
            self.reject(
                identity, "not_selected", f"{msg.type} for round {msg.round}: node {k} is not selected"
            )
            return
        if k in self.dropped:
            self.reject(identity, "dropped", f"{msg.type} for round {msg.round}: {self.dropped[k]}")
            return
        reference = msg.type is MsgType.DIGITAL and msg.body.get("purpose") == "reference"
        if (k in self.references) if reference else ((msg.type, k) in self.uploads):
            # The first one counts: a second could replace what aggregation already used.
            self.reject(identity, "duplicate", f"a second {msg.type} for round {msg.round}; the first counts")
            return
        problem = self.payload_problem(msg)
        if problem is not None:
            self.reject(identity, "bad_payload", f"{msg.type} for round {msg.round}: {problem}")
            self.drop(k, f"bad {msg.type}: {problem}")
            return
        if isinstance(msg.body.get("metrics"), dict) and msg.body["metrics"]:
            node.last_metrics = msg.body["metrics"]  # a reference copy carries none: keep the last
        if reference:
            self.references[k] = msg
        else:
            self.uploads[(msg.type, k)] = msg

    def payload_problem(self, msg: Message) -> str | None:
        """What is wrong with an upload for this round (names, shapes, sizes, values), or None."""
        body = msg.body
        weight = body.get("weight")
        if weight is not None and not (math.isfinite(weight) and weight > 0):
            return f"weight must be a finite number > 0 (got {weight!r})"
        if msg.type is MsgType.STATS:
            if msg.frames:
                return f"statistics carry no tensor frames (got {sorted(msg.frames)[:8]})"
            if list(body["groups"]) != self.payload:
                return f"statistics for groups {body['groups']!r:.200}; this run's payload is {self.payload}"
            for key in ("mean", "var"):
                values = body[key]
                if len(values) != len(self.payload) or not all(_finite(v) for v in values):
                    return f"{key} must be {len(self.payload)} finite numbers (got {values!r:.200})"
            if any(v < 0 for v in body["var"]):
                return "a variance is negative"
            return None
        if msg.type is MsgType.DIGITAL:
            if body["purpose"] not in ("update", "reference"):
                return f"purpose {body['purpose']!r}; allowed 'update', 'reference'"
            if set(msg.frames) != {"update"}:
                return f"frames {sorted(msg.frames)}; expected exactly ['update']"
            update = msg.frames["update"]
            if set(update) != set(self.payload):
                return f"update tensors {sorted(update)[:8]}; expected this run's payload {self.payload[:8]}"
            for name, arr in update.items():
                want = self.shapes[name]
                if arr.shape != want or arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
                    return f"tensor {name!r} is {arr.dtype}{list(arr.shape)}; expected finite floats of shape {list(want)}"
                # Physics: no update element comes near this, and sums of them stay finite.
                peak = float(np.max(np.abs(arr))) if arr.size else 0.0
                if peak > MAX_UPDATE_VALUE:
                    return (
                        f"tensor {name!r} holds {peak:.3g}; an update element is at most {MAX_UPDATE_VALUE:g}"
                    )
            return None
        # OTA: "sent on my own radio", or the burst itself, sized for this run's payload.
        if len(body["b_k"]) != 2 or not all(_finite(v) for v in body["b_k"]):
            return f"b_k must be [re, im] (got {body['b_k']!r:.100})"
        if body["sent_locally"]:
            return None if not msg.frames else "a burst sent locally carries no symbol frame"
        if set(msg.frames) != {"symbols"} or set(msg.frames["symbols"]) != {"iq"}:
            return f"frames {sorted(msg.frames)}; expected exactly symbols/iq"
        iq = msg.frames["symbols"]["iq"]
        n = ota.num_symbols(int(sum(math.prod(shape) for shape in self.shapes.values())))
        if iq.shape != (n, 2) or iq.dtype.kind != "f" or not np.all(np.isfinite(iq)):
            return f"symbols are {iq.dtype}{list(iq.shape)}; the slot holds finite floats of shape [{n}, 2]"
        return None

    def _delivered(self, k: int) -> bool:
        return any(key[1] == k for key in self.uploads)

    def _welcome(self, info: NodeInfo) -> None:
        body = {"run_id": self.run_id, "next_round": self.round + 1}
        self.send(info.node, Message(MsgType.WELCOME, self.round, COORDINATOR, body))

    def _hello(self, identity: bytes, msg: Message) -> None:
        k = msg.node
        if not 0 <= k < self.num_clients or identity != node_identity(k):
            self.reject(
                identity,
                "bad_node",
                f"node id {k} with identity {identity!r} is not a node of this lab "
                f"(0..{self.num_clients - 1}, identity node-<id>)",
            )
            return
        key = None
        if not self.transport.insecure:  # node k must hold node k's key, not another node's
            allowed = (
                KeyLayout(Path(self.transport.keys_dir)).coordinator_allow
                / f"{node_identity(k).decode()}.key"
            )
            # z85 text, as ZAP reports it; a missing allow-list file means "not allowed", not a crash.
            key = zmq_security.load_public_key(allowed).decode() if allowed.is_file() else None
            if key is None or msg.peer_key != key:
                self.reject(
                    identity, "bad_key", f"HELLO as node {k} without node {k}'s CURVE key ({allowed})"
                )
                return
        old = self.nodes.get(k)
        same = old is not None and old.capabilities.get("incarnation") == msg.body["capabilities"].get(
            "incarnation"
        )
        if old is not None and old.alive and not same:  # a restarted process: the old one is gone
            self.lose(old, "restarted")
        if old is not None and not same and k in self.selected and not self._delivered(k):
            # It lost this round's PLAN with its old process: waiting for it is waiting for nothing.
            self.drop(k, "restarted mid-round; it never got this round's plan")
        if old is not None and old.alive and same:  # a repeated HELLO
            self._welcome(old)
            return
        info = NodeInfo(
            k,
            identity,
            dict(msg.body["capabilities"]),
            participation=old.participation if old else self.resumed_participation.get(k, 0),
            key=key,
        )
        self.nodes[k] = info
        assert self.loop is not None
        self.loop.peers.add(identity)
        self.loop.last_seen[identity] = time.monotonic()
        self._welcome(info)
        self.event("rejoined" if old is not None else "joined", node=k, capabilities=info.capabilities)

    def _time_report(self, info: NodeInfo, msg: Message) -> None:
        edge = float(msg.body["pps_edge_unix_s"])
        if self._edge0_s is None:
            self._edge0_s = edge
        # Radio time minus whole seconds since the first reported edge: the same for every node
        # whose radio is PPS-locked (subtracting edges first keeps float precision).
        info.clock_offset_s = float(msg.body["radio_time_s"]) - (edge - self._edge0_s)
        self.event("time_report", node=info.node, offset_s=info.clock_offset_s, source=msg.body["source"])
        if self.clock_reference_s is not None:  # a rejoining node must agree with the rest
            skew = abs(info.clock_offset_s - self.clock_reference_s)
            if skew > self.transport.max_clock_skew_s:
                self.reject(info.identity, "clock_skew", f"radio time off by {skew:.3g} s")
                self.lose(info, "radio clock skew")
