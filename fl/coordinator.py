"""The FL coordinator (parameter server): a ROUTER socket, rounds, OTA slots, checkpoints.

One round, as messages::

    coordinator                                   node k (selected)
      PLAN (adapter, steps, batch, lr, clock, b_k, slot) ->
                                                  train locally
      <- STATS (per-group mean/var, metrics)          [ota]   | <- DIGITAL (update) [digital]
      SHARED_STATS (mu, v, b_k, slot, symbols) ->
      <- DIGITAL (reference copy, if asked)
      <- OTA (the burst, or "sent on my own radio")
      feed the AirTransmitter at the slot, collect through the combiner, de-normalise
      RESULT (val loss, who was dropped) -> every node

A node that misses heartbeats or the deadline is dropped from the round and the aggregate is
re-weighted over the nodes that delivered; it may say HELLO again and rejoin from the next
round. After every round the global adapter (safetensors), the round state, the RNG state
and the metrics so far are checkpointed; ``resume=True`` continues after the last complete one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import zmq

from drivers import zmq_security
from drivers.errors import FLError
from fl import ota
from fl.aggregation import DigitalFedAvg, OverTheAir, apply_update, default_combiner, payload_names
from fl.keys import KeyLayout
from fl.protocol import (
    COORDINATOR,
    Message,
    MsgType,
    SocketLoop,
    build_frame,
    node_identity,
    pairs_to_complex,
)

log = logging.getLogger(__name__)


@dataclass
class RoundPlan:
    """What the planner decides for one round (the allocation plan, as the FL layer needs it)."""

    round: int
    selected: list[int]
    local_steps: int
    lr: float
    batch: dict[int, int]
    clock_hz: dict[int, float]
    weights: dict[int, float]  # phi_k, the aggregation weight of each selected client
    combiner: np.ndarray | None = None  # m (N,); None: the normalised sum of the channels
    power_w: dict[int, float] | None = None  # P_k; None: lab.clients.tx_power_w
    b_k: dict[int, complex] | None = None  # the planner's precoding; recomputed if anyone drops
    extra: dict[str, Any] = field(default_factory=dict)  # predictions etc., recorded as they are


# planner(round, channels (U x N, or None without an air), available node ids) -> RoundPlan
Planner = Callable[[int, "np.ndarray | None", list[int]], RoundPlan]


@dataclass
class NodeInfo:
    node: int
    identity: bytes
    capabilities: dict[str, Any]
    alive: bool = True
    clock_offset_s: float | None = None
    participation: int = 0
    key: str | None = None  # the CURVE public key (z85) this node proved it holds


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# The slices of a round's wall time, in critical-path order (seconds each; "other_s" is the rest).
TIMING_SLICES = (
    "plan_s",
    "move_s",
    "settle_s",
    "estimate_s",
    "dispatch_s",
    "train_s",
    "upload_s",
    "ota_slot_s",
    "aggregate_s",
    "evaluate_s",
    "checkpoint_s",
)


class RoundClock:
    """Adds wall time into named slices of one round; ``breakdown`` also gives the unexplained rest."""

    def __init__(self) -> None:
        self.slices: dict[str, float] = dict.fromkeys(TIMING_SLICES, 0.0)

    @contextlib.contextmanager
    def slice(self, name: str) -> Iterator[None]:
        t = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - t)

    def add(self, name: str, seconds: float) -> None:
        self.slices[name] = self.slices.get(name, 0.0) + max(float(seconds), 0.0)

    def move(self, source: str, target: str, seconds: float) -> None:
        """Re-label up to ``seconds`` of ``source`` as ``target`` (never more than ``source`` holds)."""
        amount = min(max(float(seconds), 0.0), self.slices.get(source, 0.0))
        self.slices[source] -= amount
        self.add(target, amount)

    def rename(self, source: str, target: str) -> None:
        self.move(source, target, self.slices.get(source, 0.0))
        self.slices.pop(source, None)

    def total(self) -> float:
        return float(sum(self.slices.values()))

    def breakdown(self, round_s: float) -> dict[str, float]:
        out = dict(self.slices)
        out["other_s"] = max(round_s - self.total(), 0.0)
        return out


def _node_timing(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The node's own slices (load, train, update), as plain floats; {} if it sent none."""
    timing = metrics.get("timing")
    if not isinstance(timing, Mapping):
        return {}
    return {str(k): float(v) for k, v in timing.items() if isinstance(v, int | float) and math.isfinite(v)}


class RadioTimeSkew(FLError):
    """The nodes' radio times at a PPS edge disagree beyond fl.transport.max_clock_skew_s."""


class Coordinator:
    """Runs the rounds. ``config`` is a ``TestbedConfig`` (read by attribute only)."""

    def __init__(
        self,
        config: Any,
        run_dir: str | Path,
        planner: Planner,
        air: Any = None,
        rng: np.random.Generator | None = None,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        resume: bool = False,
        radio_clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.fl = config.fl
        self.num_clients = int(config.lab.clients.count)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.planner = planner
        self.air = air
        self.rng = rng if rng is not None else np.random.default_rng([config.run.seed, 3])
        self.on_round = on_round
        self.on_event = on_event
        # Slot times are radio times: the air's own clock when it has one (radios), else the host's.
        self.radio_clock = radio_clock or getattr(air, "time_now", None) or time.time
        self.run_id = f"{config.run.name}-{int(time.time())}"
        self.nodes: dict[int, NodeInfo] = {}
        self.metrics: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self.start_round = 1
        self._round = 0
        self._msgs: dict[tuple[MsgType, int], Message] = {}
        self._clock_reference_s: float | None = None
        self._resume_participation: dict[int, int] = {}
        self._edge0_s: float | None = None
        self.initial_val_loss = float("nan")
        # Called while waiting for the nodes; raises FLError when a (local) node died starting up.
        self.startup_check: Callable[[], None] | None = None
        self.ctx = zmq.Context()
        self._auth = None
        self.loop: SocketLoop | None = None
        self.endpoint = ""

        from fl.training import adapter_state, build_workload

        self.work = build_workload(self.fl, config.run.seed, self.num_clients, None)
        self.global_adapter = build_frame(adapter_state(self.work.model))  # encoded once per round
        self.version = 0
        self.payload = payload_names(list(self.global_adapter), self.fl.lora.mode)
        if resume:
            self._load_checkpoint()

    # --- lifecycle ------------------------------------------------------------------------------
    def bind(self) -> str:
        t = self.fl.transport
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A node that reconnects (restarted, or cut off for an oversized message) before the old
        # connection is torn down takes its identity over; else ZeroMQ ignores the new connection.
        # Messages still have to carry that node's CURVE key (the ZAP User-Id check).
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.LINGER, 500)
        zmq_security.cap_inbound_size(sock, t.max_message_bytes)
        if t.insecure:
            zmq_security.require_loopback_for_insecure(t.bind)
        else:
            keys = KeyLayout(Path(t.keys_dir))
            self._auth = zmq_security.start_authenticator(self.ctx, keys.coordinator_allow)
            zmq_security.secure_server(sock, keys.secret("coordinator"))
        sock.bind(t.bind)
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.loop = SocketLoop(sock, True, t.heartbeat_s, COORDINATOR, t.max_message_bytes).start()
        self._event("bound", endpoint=self.endpoint, curve=not t.insecure)
        return self.endpoint

    def close(self, say_bye: bool = True) -> None:
        if self.loop is not None:
            for info in self.nodes.values():
                if info.alive and say_bye:
                    self._send(info, Message(MsgType.BYE, self._round, COORDINATOR, {}))
            self.loop.close()
            self.loop = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self.ctx.term()

    def run(self) -> list[dict[str, Any]]:
        """Wait for the nodes, check their radio clocks, run the rounds; the per-round metrics."""
        if self.loop is None:
            self.bind()
        try:
            self._wait_for_nodes()
            self._check_radio_times()
            if not self.metrics:
                from fl.training import evaluate

                self.initial_val_loss = evaluate(
                    self.work.model, self.work.validation, device=self.work.device
                )
                self._event("initial_eval", val_loss=self.initial_val_loss)
            for r in range(self.start_round, self.fl.rounds + 1):
                self._run_round(r)
            self._event("finished", rounds=self.fl.rounds)
        except FLError:
            self.close(say_bye=True)  # a refusal: tell the nodes to go home
            raise
        except BaseException:
            self.close(say_bye=False)  # a crash: the nodes wait and rejoin a resumed coordinator
            raise
        self.close(say_bye=True)
        return self.metrics

    # --- messages -------------------------------------------------------------------------------
    def _event(self, event: str, **data: Any) -> None:
        record = {"t": time.time(), "event": event, "round": self._round, **data}
        with (self.run_dir / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")
        log.info("%s %s", event, {k: v for k, v in data.items() if k != "metrics"})
        if self.on_event is not None:
            self.on_event(record)

    def _send(self, info: NodeInfo, msg: Message) -> None:
        assert self.loop is not None
        self.loop.send(msg, info.identity)

    def _reject(self, identity: bytes, code: str, reason: str) -> None:
        self.rejected.append({"identity": identity.decode(errors="replace"), "code": code, "reason": reason})
        self._event("rejected", identity=identity.decode(errors="replace"), code=code, reason=reason)
        assert self.loop is not None
        self.loop.send(
            Message(MsgType.ERROR, self._round, COORDINATOR, {"code": code, "reason": reason}), identity
        )

    def _pump(self, timeout_s: float) -> None:
        """Handle one inbound message (or none within ``timeout_s``) and check liveness."""
        assert self.loop is not None
        if self.loop.error is not None:
            raise FLError(f"the coordinator's socket thread died: {self.loop.error}")
        try:
            identity, msg = self.loop.inbox.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            identity, msg = None, None
        if identity is not None:
            try:
                self._handle(identity, msg)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                # The last line of defence: whatever a peer sends, it cannot end the run.
                log.exception("handling a %s from %r failed", getattr(msg, "type", None), identity)
                self._reject(identity, "bad_message", f"{type(exc).__name__}: {exc}")
        window = self.fl.transport.heartbeat_s * self.fl.transport.heartbeat_misses
        for info in self.nodes.values():
            if info.alive and not self.loop.seen_within(info.identity, window):
                self._lose(info, f"no heartbeat for {window:.2f} s")

    def _lose(self, info: NodeInfo, why: str) -> None:
        info.alive = False
        assert self.loop is not None
        self.loop.peers.discard(info.identity)
        self._event("node_lost", node=info.node, why=why)

    def _handle(self, identity: bytes, msg: Message | None) -> None:
        node = next((i for i in self.nodes.values() if i.identity == identity), None)
        if msg is None:  # ROUTER_MANDATORY: the peer is gone
            if node is not None and node.alive:
                self._lose(node, "unreachable")
            return
        if msg.type is MsgType.HELLO:
            self._hello(identity, msg)
            return
        if node is None or not node.alive:
            self._reject(
                identity, "unknown_node", f"{msg.type} from a node that has not said HELLO; say HELLO"
            )
            return
        if msg.node != node.node:
            self._reject(
                identity, "bad_node", f"message claims node {msg.node}, the sender is node {node.node}"
            )
            return
        if node.key is not None and msg.peer_key != node.key:
            self._reject(identity, "bad_key", f"node {node.node}'s messages must come with its own CURVE key")
            return
        if msg.type is MsgType.TIME_REPORT:
            self._time_report(node, msg)
        elif msg.type is MsgType.BYE:
            self._lose(node, "said BYE")
        elif msg.type in (MsgType.STATS, MsgType.OTA, MsgType.DIGITAL):
            if msg.round != self._round:
                self._event("stale", node=node.node, type=str(msg.type), msg_round=msg.round)
                return
            problem = self._payload_problem(msg)
            if problem is not None:
                self._reject(identity, "bad_payload", f"{msg.type} for round {msg.round}: {problem}")
                return
            key = (msg.type, node.node)
            if msg.type is MsgType.DIGITAL and msg.body.get("purpose") == "reference":
                key = (MsgType.DIGITAL, -1 - node.node)  # references are kept apart from updates
            self._msgs[key] = msg
        else:
            self._reject(identity, "wrong_type", f"a node may not send {msg.type}")

    def _payload_problem(self, msg: Message) -> str | None:
        """What is wrong with an upload for this round (names, shapes, sizes, values), or None.

        Checked on arrival, so nothing malformed reaches aggregation, where it would end the run.
        """
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
                want = self.global_adapter[name].shape
                if arr.shape != want or arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
                    return f"tensor {name!r} is {arr.dtype}{list(arr.shape)}; expected finite floats of shape {list(want)}"
            return None
        # OTA: "sent on my own radio", or the burst itself, sized for this run's payload.
        if len(body["b_k"]) != 2 or not all(_finite(v) for v in body["b_k"]):
            return f"b_k must be [re, im] (got {body['b_k']!r:.100})"
        if body["sent_locally"]:
            return None if not msg.frames else "a burst sent locally carries no symbol frame"
        if set(msg.frames) != {"symbols"} or set(msg.frames["symbols"]) != {"iq"}:
            return f"frames {sorted(msg.frames)}; expected exactly symbols/iq"
        iq = msg.frames["symbols"]["iq"]
        n = ota.num_symbols(int(sum(self.global_adapter[name].size for name in self.payload)))
        if iq.shape != (n, 2) or iq.dtype.kind != "f" or not np.all(np.isfinite(iq)):
            return f"symbols are {iq.dtype}{list(iq.shape)}; the slot holds finite floats of shape [{n}, 2]"
        return None

    def _hello(self, identity: bytes, msg: Message) -> None:
        k = msg.node
        if not 0 <= k < self.num_clients or identity != node_identity(k):
            self._reject(
                identity,
                "bad_node",
                f"node id {k} with identity {identity!r} is not a node of this lab "
                f"(0..{self.num_clients - 1}, identity node-<id>)",
            )
            return
        key = None
        if not self.fl.transport.insecure:  # node k must hold node k's key, not another node's
            allowed = (
                KeyLayout(Path(self.fl.transport.keys_dir)).coordinator_allow
                / f"{node_identity(k).decode()}.key"
            )
            # z85 text, as ZAP reports it; a missing allow-list file means "not allowed", not a crash.
            key = zmq_security.load_public_key(allowed).decode() if allowed.is_file() else None
            if key is None or msg.peer_key != key:
                self._reject(
                    identity, "bad_key", f"HELLO as node {k} without node {k}'s CURVE key ({allowed})"
                )
                return
        old = self.nodes.get(k)
        same = old is not None and old.capabilities.get("incarnation") == msg.body["capabilities"].get(
            "incarnation"
        )
        if old is not None and old.alive and not same:  # a restarted process: the old one is gone
            self._lose(old, "restarted")
        if old is not None and old.alive and same:  # a repeated HELLO
            self._send(
                old,
                Message(
                    MsgType.WELCOME,
                    self._round,
                    COORDINATOR,
                    {"run_id": self.run_id, "next_round": self._round + 1},
                ),
            )
            return
        rejoin = old is not None
        info = NodeInfo(
            k,
            identity,
            dict(msg.body["capabilities"]),
            participation=old.participation if old else self._resume_participation.get(k, 0),
            key=key,
        )
        self.nodes[k] = info
        assert self.loop is not None
        self.loop.peers.add(identity)
        self.loop.last_seen[identity] = time.monotonic()
        self._send(
            info,
            Message(
                MsgType.WELCOME,
                self._round,
                COORDINATOR,
                {"run_id": self.run_id, "next_round": self._round + 1},
            ),
        )
        self._event("rejoined" if rejoin else "joined", node=k, capabilities=info.capabilities)

    def _time_report(self, info: NodeInfo, msg: Message) -> None:
        edge = float(msg.body["pps_edge_unix_s"])
        if self._edge0_s is None:
            self._edge0_s = edge
        # Radio time minus whole seconds since the first reported edge: the same for every node
        # whose radio is PPS-locked (subtracting edges first keeps float precision).
        info.clock_offset_s = float(msg.body["radio_time_s"]) - (edge - self._edge0_s)
        self._event("time_report", node=info.node, offset_s=info.clock_offset_s, source=msg.body["source"])
        if self._clock_reference_s is not None:  # a rejoining node must agree with the rest
            skew = abs(info.clock_offset_s - self._clock_reference_s)
            if skew > self.fl.transport.max_clock_skew_s:
                self._reject(info.identity, "clock_skew", f"radio time off by {skew:.3g} s")
                self._lose(info, "radio clock skew")

    # --- start-up -------------------------------------------------------------------------------
    def _wait_for_nodes(self) -> None:
        t = self.fl.transport
        deadline = time.monotonic() + t.join_timeout_s
        while time.monotonic() < deadline:
            ready = [i for i in self.nodes.values() if i.alive and i.clock_offset_s is not None]
            if len(ready) == self.num_clients:
                return
            if self.startup_check is not None:
                self.startup_check()
            self._pump(0.05)
        have = sorted(i.node for i in self.nodes.values() if i.alive)
        raise FLError(
            f"only nodes {have} of {self.num_clients} joined within fl.transport.join_timeout_s="
            f"{t.join_timeout_s} s; start the missing nodes or lower lab.clients.count"
        )

    def _check_radio_times(self) -> None:
        offsets = {i.node: i.clock_offset_s for i in self.nodes.values() if i.alive}
        values = [v for v in offsets.values() if v is not None]
        spread = max(values) - min(values)
        self._event("radio_times", offsets=offsets, spread_s=spread)
        if spread > self.fl.transport.max_clock_skew_s:
            raise RadioTimeSkew(
                f"the nodes' radio times at a PPS edge disagree by {spread:.3g} s (offsets {offsets}), over "
                f"fl.transport.max_clock_skew_s={self.fl.transport.max_clock_skew_s}; check the PPS and 10 MHz "
                "cabling and re-sync the radios' time"
            )
        self._clock_reference_s = float(np.median(values))

    # --- one round ------------------------------------------------------------------------------
    def _alive(self) -> list[int]:
        return sorted(i.node for i in self.nodes.values() if i.alive)

    def _collect(self, kind: MsgType, nodes: Sequence[int], deadline: float, ref: bool = False) -> list[int]:
        """Wait until every node in ``nodes`` delivered ``kind`` (or died, or the deadline passed)."""

        def key(k: int) -> tuple[MsgType, int]:
            return (kind, -1 - k) if ref else (kind, k)

        while True:
            pending = [k for k in nodes if key(k) not in self._msgs and self.nodes[k].alive]
            if not pending or time.monotonic() >= deadline:
                break
            self._pump(min(0.05, max(deadline - time.monotonic(), 0.0)))
        return [k for k in nodes if key(k) in self._msgs]

    def _run_round(self, r: int) -> None:
        t0, cpu0 = time.monotonic(), time.thread_time()
        self._round, self._msgs = r, {}
        alive = self._alive()
        if not alive:
            raise FLError(f"round {r}: no node is alive")
        clock = RoundClock()
        with clock.slice("estimate_s"):
            channels = (
                self.air.estimate_channels(list(range(self.num_clients))) if self.air is not None else None
            )
        with clock.slice("plan_s"):
            plan = self.planner(r, channels, alive)
        # The planner may say where its time went (move, settle, its own estimates): those are
        # not planning, so they move to their own slices.
        for name, value in (plan.extra.get("timing") or {}).items():
            clock.move("plan_s", name, float(value))
        if self.air is not None:  # the planner may have moved the antennas: precode on what the air is now
            with clock.slice("estimate_s"):
                channels = self.air.estimate_channels(list(range(self.num_clients)))
        bad = [k for k in plan.selected if k not in alive]
        missing = [
            f"{name}[{k}]"
            for name, table in (("batch", plan.batch), ("clock_hz", plan.clock_hz), ("weights", plan.weights))
            for k in plan.selected
            if k not in table or not table[k] > 0
        ]
        if missing:
            raise FLError(f"round {r}: the plan lacks positive values for {missing}")
        if not plan.selected or bad:
            raise FLError(
                f"round {r}: the planner selected {plan.selected}; nodes {bad} are not available {alive}"
            )
        ota_mode = self.fl.aggregation == "ota"
        if ota_mode and self.air is None:
            raise FLError("fl.aggregation=ota needs an AirLink; none was given to the coordinator")
        deadline_s = self.fl.transport.round_deadline_s
        deadline = time.monotonic() + deadline_s
        # Provisional: the slot can only be fixed once the stats are in (SHARED_STATS carries it).
        provisional_slot_s = float(self.radio_clock()) + deadline_s + self.fl.transport.ota_guard_s
        for k in plan.selected:
            body = {
                "version": self.version,
                "local_steps": plan.local_steps,
                "batch": int(plan.batch[k]),
                "lr": float(plan.lr),
                "clock_hz": float(plan.clock_hz[k]),
                "selected": list(plan.selected),
                "aggregation": self.fl.aggregation,
                "lora_mode": self.fl.lora.mode,
                "slot_s": provisional_slot_s,
                "b_k": ota.complex_list(np.array([plan.b_k[k]]))[0] if plan.b_k else [0.0, 0.0],
                "deadline_s": deadline_s,
                "weight": float(plan.weights[k]),
                "reference": bool(self.fl.digital_reference),
            }
            self._send(
                self.nodes[k], Message(MsgType.PLAN, r, COORDINATOR, body, {"adapter": self.global_adapter})
            )
            self.nodes[k].participation += 1
        self._event("plan_sent", selected=plan.selected, lr=plan.lr, extra=plan.extra)
        t_plan = time.monotonic()

        shapes = {n: self.global_adapter[n].shape for n in self.payload}
        num_reals = int(sum(self.global_adapter[n].size for n in self.payload))
        air_metrics: dict[str, Any] = {}
        clock.add("dispatch_s", t_plan - t0 - clock.total())
        first = MsgType.STATS if ota_mode else MsgType.DIGITAL
        with clock.slice("collect_s"):  # split below into the nodes' compute and the upload
            delivered = self._collect(first, plan.selected, deadline)
        if not delivered:
            what = "statistics" if ota_mode else "update"
            raise FLError(f"round {r}: no selected node delivered its {what} by the deadline")
        node_metrics = {str(k): self._msgs[(first, k)].body["metrics"] for k in delivered}
        node_timing = {k: _node_timing(m) for k, m in node_metrics.items()}
        # The critical path waits for the slowest node: its compute is "train", the rest "upload".
        clock.move("collect_s", "train_s", max((sum(t.values()) for t in node_timing.values()), default=0.0))
        clock.rename("collect_s", "upload_s")
        if ota_mode:
            with clock.slice("ota_slot_s"):
                estimate, delivered, air_metrics = self._ota_slot(
                    r, plan, delivered, channels, shapes, num_reals, deadline
                )
            t_agg = time.monotonic()
        else:
            t_agg = time.monotonic()
            with clock.slice("aggregate_s"):
                updates = {k: self._msgs[(MsgType.DIGITAL, k)].frames["update"] for k in delivered}
                estimate = DigitalFedAvg().aggregate(updates, {k: plan.weights[k] for k in delivered}).update
        from fl.training import evaluate, load_adapter_state, update_sq_norm

        with clock.slice("aggregate_s"):
            self.global_adapter = build_frame(apply_update(self.global_adapter, estimate))
            self.version = r
            load_adapter_state(self.work.model, self.global_adapter)
        with clock.slice("evaluate_s"):
            val_loss = evaluate(self.work.model, self.work.validation, device=self.work.device)
        dropped = [k for k in plan.selected if k not in delivered]
        node_metrics = {str(k): node_metrics[str(k)] for k in delivered}
        counts = np.array(
            [self.nodes[k].participation if k in self.nodes else 0 for k in range(self.num_clients)]
        )
        record = {
            "round": r,
            "selected": plan.selected,
            "delivered": delivered,
            "dropped": dropped,
            "weights": {str(k): float(plan.weights[k]) for k in delivered},
            "aggregation": self.fl.aggregation,
            "lora_mode": self.fl.lora.mode,
            "lr": plan.lr,
            "val_loss": val_loss,
            "val_perplexity": math.exp(min(val_loss, 50.0)),
            "val_loss_before": self.metrics[-1]["val_loss"] if self.metrics else self.initial_val_loss,
            "train_loss": float(np.mean([nm.get("loss", np.nan) for nm in node_metrics.values()])),
            "nodes": node_metrics,
            **air_metrics,
            "participation": counts.tolist(),
            "jain_fairness": float(counts.sum() ** 2 / (len(counts) * np.sum(counts**2)))
            if counts.any()
            else 0.0,
            "round_time_s": time.monotonic() - t0,
            "wait_time_s": t_agg - t_plan,
            "coordinator_time_s": (t_plan - t0) + (time.monotonic() - t_agg),
            "coordinator_cpu_s": time.thread_time() - cpu0,  # this thread's own work, waits excluded
            "plan": {k: v for k, v in plan.extra.items() if isinstance(v, (int, float, str, list, bool))},
            # ||Delta_k||^2 as each node reported it, and that of the update actually applied.
            "update_sq_norms": {
                k: float(m["update_sq_norm"])
                for k, m in node_metrics.items()
                if isinstance(m.get("update_sq_norm"), int | float)
                and not isinstance(m["update_sq_norm"], bool)
            },
            "aggregate_sq_norm": update_sq_norm(estimate),
            "node_timing_s": {k: node_timing[k] for k in node_metrics},
        }
        self.metrics.append(record)
        with clock.slice("checkpoint_s"):
            record["timing_s"] = clock.breakdown(time.monotonic() - t0)  # so far: the checkpoint keeps it
            self._checkpoint(r)
        # The round ends with its checkpoint: the wall and CPU times and the slices all include it.
        record["round_time_s"] = time.monotonic() - t0
        record["coordinator_time_s"] += clock.slices["checkpoint_s"]
        record["coordinator_cpu_s"] = time.thread_time() - cpu0
        record["timing_s"] = clock.breakdown(record["round_time_s"])
        self._event("round_done", dropped=dropped, val_loss=val_loss, metrics=record)
        result = {"val_loss": val_loss, "dropped": dropped, "delivered": delivered}
        for k in self._alive():
            self._send(
                self.nodes[k],
                Message(MsgType.RESULT, r, COORDINATOR, {"metrics": result, "version": self.version}),
            )
        if self.on_round is not None:
            self.on_round(record)

    def _ota_slot(
        self,
        r: int,
        plan: RoundPlan,
        delivered: list[int],
        channels: np.ndarray | None,
        shapes: Mapping[str, tuple[int, ...]],
        num_reals: int,
        deadline: float,
    ) -> tuple[dict[str, np.ndarray], list[int], dict[str, Any]]:
        """Shared stats -> precoding -> bursts through the air -> de-normalised mean update."""
        assert channels is not None
        stats = [self._stats_of(k) for k in delivered]
        weights = [float(plan.weights[k]) for k in delivered]
        shared = ota.shared_stats(stats, weights, self.fl.normalization)
        h = channels[delivered]
        m = np.asarray(plan.combiner) if plan.combiner is not None else default_combiner(h)
        p_default = float(self.config.lab.clients.tx_power_w)
        power = [float((plan.power_w or {}).get(k, p_default)) for k in delivered]
        pre = ota.precode(m, h, delivered, weights, power, self.air.noise_power_w)
        b_k = dict(zip(delivered, pre.b_k, strict=True))
        if plan.b_k and set(plan.b_k) == set(delivered):
            b_k = {k: complex(plan.b_k[k]) for k in delivered}  # everyone delivered: the plan's own b_k
        slot_s = float(self.radio_clock()) + self.fl.transport.ota_guard_s
        n_sym = ota.num_symbols(num_reals)
        for k in delivered:
            body = {
                "mean": shared.mean.tolist(),
                "var": shared.var.tolist(),
                "groups": list(shared.names),
                "b_k": ota.complex_list(np.array([b_k[k]]))[0],
                "slot_s": slot_s,
                "num_symbols": n_sym,
            }
            self._send(self.nodes[k], Message(MsgType.SHARED_STATS, r, COORDINATOR, body))
        self._event("shared_stats_sent", delivered=delivered, slot_s=slot_s, eta=pre.eta)
        # The slot phase gets its own deadline: waiting out a late node must not eat into it.
        deadline = time.monotonic() + self.fl.transport.round_deadline_s
        sent = self._collect(MsgType.OTA, delivered, deadline)
        if self.fl.digital_reference:
            self._collect(MsgType.DIGITAL, sent, min(deadline, time.monotonic() + 1.0), ref=True)
        refs = {
            k: self._msgs[(MsgType.DIGITAL, -1 - k)].frames["update"]
            for k in sent
            if (MsgType.DIGITAL, -1 - k) in self._msgs
        }
        metrics: dict[str, Any] = {
            "eta": pre.eta,
            "predicted_mse": pre.mse,
            "num_symbols": n_sym,
            "slot_s": slot_s,
            "fallback": False,
        }
        if not sent:
            raise FLError(f"round {r}: no node sent its OTA burst by the deadline")
        total = float(sum(plan.weights[k] for k in sent))
        try:
            for k in sent:
                msg = self._msgs[(MsgType.OTA, k)]
                if not msg.body["sent_locally"]:
                    symbols = pairs_to_complex(msg.frames["symbols"]["iq"])
                    if symbols.size != n_sym:
                        raise FLError(f"node {k} sent {symbols.size} symbols, the slot holds {n_sym}")
                    scale = ota.from_complex_list([msg.body["b_k"]])[0]
                    self.air.send(k, symbols, scale, slot_s)
            estimate = OverTheAir.receive(self.air, pre, num_reals, slot_s, m, total, shared, shapes)
        except Exception as exc:  # noqa: BLE001 - the air failed: fall back to the digital copies
            if set(refs) != set(sent):
                raise
            self._event("ota_fallback", why=str(exc))
            metrics["fallback"] = True
            estimate = DigitalFedAvg().aggregate(refs, {k: plan.weights[k] for k in sent}).update
        if set(refs) == set(sent) and not metrics["fallback"]:
            reference = DigitalFedAvg().aggregate(refs, {k: plan.weights[k] for k in sent}).update
            metrics["nmse"] = ota.nmse(estimate, reference)
            signal = np.mean(
                np.concatenate([(reference[n].astype(np.float64) ** 2).ravel() for n in reference])
            )
            err = np.mean(
                np.concatenate(
                    [((estimate[n] - reference[n]).astype(np.float64) ** 2).ravel() for n in reference]
                )
            )
            metrics["effective_snr_db"] = float(10 * np.log10(signal / err)) if err > 0 else float("inf")
        return estimate, sent, metrics

    def _stats_of(self, k: int) -> ota.GroupStats:
        body = self._msgs[(MsgType.STATS, k)].body
        if list(body["groups"]) != self.payload:
            raise FLError(f"node {k} reported statistics for groups that are not this run's payload")
        return ota.GroupStats(
            tuple(body["groups"]), np.asarray(body["mean"], float), np.asarray(body["var"], float)
        )

    # --- checkpoints ----------------------------------------------------------------------------
    def _checkpoint(self, r: int) -> None:
        """Write round ``r`` to a temporary folder, then rename: a crash leaves no half checkpoint."""
        ckpt = self.run_dir / "checkpoints"
        final, tmp = ckpt / f"round-{r:04d}", ckpt / f".round-{r:04d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        safetensors.numpy.save_file(
            self.global_adapter,
            str(tmp / "adapter.safetensors"),
            metadata={"round": str(r), "lora_mode": self.fl.lora.mode},
        )
        state = {
            "round": r,
            "version": self.version,
            "rng_state": self.rng.bit_generator.state,
            "participation": {str(k): i.participation for k, i in self.nodes.items()},
            "clock_reference_s": self._clock_reference_s,
            "metrics": self.metrics,
        }
        (tmp / "state.json").write_text(json.dumps(state, default=float), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        (ckpt / "LATEST.tmp").write_text(final.name, encoding="utf-8")
        os.replace(ckpt / "LATEST.tmp", ckpt / "LATEST")
        with (self.run_dir / "metrics.jsonl").open("w", encoding="utf-8") as f:
            for rec in self.metrics:
                f.write(json.dumps(rec, default=float) + "\n")

    def _load_checkpoint(self) -> None:
        ckpt = self.run_dir / "checkpoints"
        latest = ckpt / "LATEST"
        if not latest.is_file():
            self._event("resume", from_round=0, note="no checkpoint yet; starting at round 1")
            return
        folder = ckpt / latest.read_text(encoding="utf-8").strip()
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        adapter = safetensors.numpy.load_file(str(folder / "adapter.safetensors"))
        if set(adapter) != set(self.global_adapter):
            raise FLError(f"{folder}: the checkpoint's adapter does not match this model's LoRA config")
        self.global_adapter = build_frame(adapter)
        self.version = int(state["version"])
        self.rng.bit_generator.state = state["rng_state"]
        self.metrics = list(state["metrics"])
        self._resume_participation = {int(k): int(v) for k, v in state["participation"].items()}
        self.start_round = int(state["round"]) + 1
        self._round = int(state["round"])
        self._event("resume", from_round=self.start_round, checkpoint=str(folder))
