"""An FL edge node: a DEALER with a stable identity that trains LoRA locally each round.

The socket lives on its own thread (``SocketLoop``), which heartbeats the coordinator while
training runs in the main thread. In the OTA slot the node hands its precoded, normalised
symbols to a transmitter: by default ``CoordinatorRelay`` (a dry run: the symbols travel in an
OTA message and the coordinator feeds its symbol-level air), or any local
``fl.airlink.AirTransmitter`` (the node's own radio, e.g. ``testbed.air.radio_airlink``), in which
case the OTA message only says "sent".

Before round 1 the node reports its radio time at a PPS edge, from a ``RadioTimeSource``.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zmq

from drivers import zmq_security
from drivers.errors import FLError
from fl import ota
from fl.aggregation import payload_names
from fl.airlink import AirTransmitter
from fl.clocks import apply_clock, modeled_energy_j
from fl.keys import KeyLayout, node_name
from fl.messages import MAX_HEADER_BYTES, inbound_frame_cap
from fl.protocol import (
    COORDINATOR,
    Message,
    MsgType,
    SocketLoop,
    complex_to_pairs,
    empty_frame,
    node_identity,
)

log = logging.getLogger(__name__)


# What a coordinator sends a node (anything else from it is refused).
_FROM_COORDINATOR = frozenset(
    {MsgType.WELCOME, MsgType.PLAN, MsgType.SHARED_STATS, MsgType.RESULT, MsgType.BYE, MsgType.ERROR}
)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class RadioTimeSource(Protocol):
    def time_at_pps(self) -> tuple[float, float]:
        """(host unix time of the last PPS edge, the radio's device time at that edge)."""
        ...


@dataclass
class HostClock:
    """Sim: the radio clock is the host's seconds of the day plus ``offset_s`` (a fault to inject).

    Seconds of the day, like a USRP's time set to a small value at a PPS edge, so the offset keeps
    its float precision.
    """

    offset_s: float = 0.0

    def time_at_pps(self) -> tuple[float, float]:
        edge = math.floor(time.time())
        return float(edge), float(edge % 86400) + self.offset_s


class RadioClock:
    """A real radio (``drivers.radio.Radio``): device time at the last whole second (PPS-locked)."""

    def __init__(self, radio: Any) -> None:
        self.radio = radio

    def time_at_pps(self) -> tuple[float, float]:
        t_radio, t_host = self.radio.time_now(), time.time()
        frac = t_radio - math.floor(t_radio)
        return float(round(t_host - frac)), float(math.floor(t_radio))


class CoordinatorRelay:
    """An ``AirTransmitter`` that ships the burst to the coordinator, whose air sends it."""

    def __init__(self, node: Node, encode_s: float = 0.0) -> None:
        self.node = node
        self.encode_s = encode_s  # the node's time to normalise and pack the burst, reported with it

    def send(self, client: int, symbols: np.ndarray, scale: complex, at_s: float) -> None:
        body = {
            "slot_s": at_s,
            "b_k": ota.complex_list(np.array([scale]))[0],
            "sent_locally": False,
            "encode_s": self.encode_s,
        }
        frames = {"symbols": {"iq": complex_to_pairs(symbols)}}
        self.node.send(Message(MsgType.OTA, self.node.round, client, body, frames))


class Node:
    """One node. ``config`` is a ``TestbedConfig``; ``run()`` returns when told BYE (0) or on failure."""

    def __init__(
        self,
        config: Any,
        node: int,
        connect: str,
        transmitter: AirTransmitter | None = None,
        time_source: RadioTimeSource | None = None,
        apply_clocks: bool = False,
        workload: Any = None,
        rejoin_timeout_s: float | None = None,
    ) -> None:
        """
        Parameters
        ----------
        config
            A ``TestbedConfig`` (read by attribute): ``lab.clients`` and all of ``fl``.
        node
            This node's id, 0..lab.clients.count-1 (its routing id is ``node-<id>``).
        connect
            The coordinator's ZeroMQ endpoint, e.g. ``tcp://10.0.0.2:5555``.
        transmitter
            The node's own radio (an ``AirTransmitter``) for its OTA bursts; None sends them to
            the coordinator to put on the air (``CoordinatorRelay``, a dry run).
        time_source
            Where the radio time at a PPS edge comes from (``TIME_REPORT``); default the host clock.
        apply_clocks
            Set the CPU/GPU clocks the plan assigns (a lab node with the rights to); else only
            record them.
        workload
            A built ``fl.training`` workload to share (tests, thread nodes); None builds its own.
        rejoin_timeout_s
            How long to keep saying HELLO after the coordinator has been silent for heartbeat_s x
            heartbeat_misses (0: exit at once, as a node of a local federation must, whose
            coordinator cannot come back; None: fl.transport.join_timeout_s, for a remote node
            that waits for a resumed coordinator).
        """
        if rejoin_timeout_s is not None and not (rejoin_timeout_s >= 0 and math.isfinite(rejoin_timeout_s)):
            raise FLError(f"rejoin_timeout_s={rejoin_timeout_s!r}; allowed a finite number of seconds >= 0")
        self.config = config
        self.fl = config.fl
        self.node = int(node)
        if not 0 <= self.node < config.lab.clients.count:
            raise FLError(f"node id {node} is outside 0..{config.lab.clients.count - 1} (lab.clients.count)")
        self.connect = connect
        self.transmitter = transmitter
        self.time_source = time_source or HostClock()
        self.apply_clocks = apply_clocks
        self.work = workload
        self.rejoin_timeout_s = (
            float(config.fl.transport.join_timeout_s) if rejoin_timeout_s is None else float(rejoin_timeout_s)
        )
        self.round = 0
        self.incarnation = uuid.uuid4().hex
        self.ctx = zmq.Context()
        self.loop: SocketLoop | None = None
        self.joined = False
        self.stop = threading.Event()
        self.history: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []  # messages refused as malformed or stale
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._plan_body: dict[str, Any] | None = None

    # --- socket ---------------------------------------------------------------------------------
    def _open(self) -> None:
        t = self.fl.transport
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, node_identity(self.node))
        sock.setsockopt(zmq.LINGER, 1000)
        # No frame from the coordinator is bigger than the adapter plus a header.
        frame_cap = (
            t.max_message_bytes
            if self.work is None
            else inbound_frame_cap(self._adapter_shapes(), t.max_message_bytes)
        )
        zmq_security.cap_inbound_size(sock, frame_cap)
        if t.insecure:
            zmq_security.require_loopback_for_insecure(self.connect)
        else:
            keys = KeyLayout(Path(t.keys_dir))
            zmq_security.secure_client(sock, keys.secret(node_name(self.node)), keys.public("coordinator"))
        sock.connect(self.connect)
        self.loop = SocketLoop(
            sock, False, t.heartbeat_s, self.node, frame_cap, max_total_bytes=frame_cap + MAX_HEADER_BYTES
        ).start()

    def send(self, msg: Message) -> None:
        assert self.loop is not None
        self.loop.send(msg)

    def _recv(self, timeout_s: float) -> Message | None:
        assert self.loop is not None
        if self.loop.error is not None:
            raise FLError(f"node {self.node}: socket thread died: {self.loop.error}")
        try:
            _, msg = self.loop.inbox.get(timeout=timeout_s)
        except queue.Empty:
            return None
        return msg

    def _coordinator_alive(self) -> bool:
        assert self.loop is not None
        t = self.fl.transport
        return self.loop.seen_within(b"", t.heartbeat_s * t.heartbeat_misses)

    # --- joining --------------------------------------------------------------------------------
    def capabilities(self) -> dict[str, Any]:
        import torch

        gpu = torch.cuda.is_available()
        return {
            "gpu": torch.cuda.get_device_name(0) if gpu else None,
            "memory_bytes": int(torch.cuda.get_device_properties(0).total_memory)
            if gpu
            else int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")),
            "samples": len(self.work.train),
            "radio": "local" if self.transmitter is not None else "via_coordinator",
            "pid": os.getpid(),
            "incarnation": self.incarnation,  # tells a restarted process from a repeated HELLO
        }

    def _join(self, deadline: float) -> bool:
        """HELLO until WELCOME (resent every heartbeat), then report the radio time at a PPS edge."""
        hello = Message(MsgType.HELLO, 0, self.node, {"capabilities": self.capabilities()})
        next_hello = 0.0
        while time.monotonic() < deadline and not self.stop.is_set():
            if time.monotonic() >= next_hello:
                self.send(hello)
                next_hello = time.monotonic() + self.fl.transport.heartbeat_s
            msg = self._recv(0.05)
            if msg is None:
                continue
            if msg.type is MsgType.WELCOME:
                edge, radio_time = self.time_source.time_at_pps()
                self.send(
                    Message(
                        MsgType.TIME_REPORT,
                        0,
                        self.node,
                        {
                            "pps_edge_unix_s": edge,
                            "radio_time_s": radio_time,
                            "source": type(self.time_source).__name__,
                        },
                    )
                )
                self.joined = True
                log.info("node %d joined run %s", self.node, msg.body["run_id"])
                return True
            if msg.type is MsgType.BYE:
                return False
        return False

    # --- the loop -------------------------------------------------------------------------------
    def run(self) -> int:
        if self.work is None:
            from fl.training import build_workload

            self.work = build_workload(
                self.fl, self.config.run.seed, self.config.lab.clients.count, self.node
            )
        self._open()
        try:
            join_deadline = time.monotonic() + self.fl.transport.join_timeout_s
            if not self._join(join_deadline):
                log.warning("node %d: no coordinator at %s", self.node, self.connect)
                return 1
            while not self.stop.is_set():
                msg = self._recv(0.05)
                if msg is None:
                    if not self._coordinator_alive() and not self._rejoin():  # coordinator gone
                        return 1
                    continue
                rc = self.handle(msg)
                if rc is not None:
                    return rc
            return 0
        finally:
            assert self.loop is not None
            self.loop.close()
            self.ctx.term()

    def handle(self, msg: Message) -> int | None:
        """Act on one message from the coordinator; an exit code when the node must stop.

        A malformed or stale message is refused (logged, kept in ``rejected``), never acted on.
        """
        problem = self.message_problem(msg)
        if problem is not None:
            self.refuse(msg, problem)
            return None
        if msg.type is MsgType.PLAN:
            self._round(msg)
        elif msg.type is MsgType.BYE:
            return 0
        elif msg.type is MsgType.ERROR:
            log.warning("node %d: refused: %s", self.node, msg.body)
            if msg.body["code"] == "unknown_node":
                self._join(time.monotonic() + self.fl.transport.join_timeout_s)
            elif msg.body["code"] == "clock_skew":
                return 2
        elif msg.type is MsgType.RESULT:
            self.history.append({"round": msg.round, **msg.body["metrics"]})
        return None

    def refuse(self, msg: Message, why: str) -> None:
        self.rejected.append({"type": str(msg.type), "round": msg.round, "why": why})
        log.warning("node %d: ignored a %s for round %d: %s", self.node, msg.type, msg.round, why)

    def message_problem(self, msg: Message) -> str | None:
        """What is wrong with a message from the coordinator (sender, type, round, payload), or None."""
        if msg.node != COORDINATOR:
            return f"claims to come from node {msg.node}, not the coordinator"
        if msg.type not in _FROM_COORDINATOR:
            return f"the coordinator does not send {msg.type}"
        if msg.type is MsgType.PLAN:
            return self._plan_problem(msg)
        if msg.type is MsgType.SHARED_STATS:
            return self._shared_problem(msg)
        return None

    def _adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        if self._shapes is None:
            from fl.training import adapter_state

            self._shapes = {n: tuple(v.shape) for n, v in adapter_state(self.work.model).items()}
        return self._shapes

    def _plan_problem(self, msg: Message) -> str | None:
        body = msg.body
        if msg.round < max(1, self.round):  # the same round again is fine: a resumed coordinator
            return f"round {msg.round} is older than this node's round {self.round}"
        for key in ("local_steps", "batch"):
            if body[key] < 1:
                return f"{key} must be >= 1 (got {body[key]})"
        for key in ("lr", "clock_hz", "deadline_s"):
            if not (math.isfinite(body[key]) and body[key] > 0):
                return f"{key} must be a finite number > 0 (got {body[key]!r})"
        if body["aggregation"] not in ("digital", "ota"):
            return f"aggregation {body['aggregation']!r}; allowed 'digital', 'ota'"
        if body["lora_mode"] not in ("standard", "ffa"):
            return f"lora_mode {body['lora_mode']!r}; allowed 'standard', 'ffa'"
        if len(body["b_k"]) != 2 or not all(_finite(v) for v in body["b_k"]):
            return f"b_k must be [re, im] (got {body['b_k']!r:.100})"
        if "weight" in body and not (_finite(body["weight"]) and body["weight"] > 0):
            return f"weight must be a finite number > 0 (got {body['weight']!r})"
        if set(msg.frames) != {"adapter"}:
            return f"frames {sorted(msg.frames)}; expected exactly ['adapter']"
        adapter, shapes = msg.frames["adapter"], self._adapter_shapes()
        if set(adapter) != set(shapes):
            return f"adapter tensors {sorted(adapter)[:8]} are not this model's LoRA tensors {sorted(shapes)[:8]}"
        for name, arr in adapter.items():
            if arr.shape != shapes[name] or arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
                return f"tensor {name!r} is {arr.dtype}{list(arr.shape)}; expected finite floats of shape {list(shapes[name])}"
        return None

    def _shared_problem(self, msg: Message) -> str | None:
        body, plan = msg.body, self._plan_body or {}
        names = payload_names(list(self._adapter_shapes()), plan.get("lora_mode", self.fl.lora.mode))
        if list(body.get("groups", [])) != names:
            return f"groups {body.get('groups')!r:.200}; this round's payload is {names}"
        for key in ("mean", "var"):
            if len(body[key]) != len(names) or not all(_finite(v) for v in body[key]):
                return f"{key} must be {len(names)} finite numbers (got {body[key]!r:.200})"
        if any(v <= 0 for v in body["var"]):
            return "a shared variance is not positive"
        reals = sum(int(np.prod(self._adapter_shapes()[n])) for n in names)
        if body["num_symbols"] != ota.num_symbols(reals):
            return f"num_symbols {body['num_symbols']}; this payload needs {ota.num_symbols(reals)}"
        if len(body["b_k"]) != 2 or not all(_finite(v) for v in body["b_k"]) or not _finite(body["slot_s"]):
            return "b_k must be [re, im] and slot_s a finite time"
        return None

    def _rejoin(self) -> bool:
        """The coordinator missed heartbeat_s x heartbeat_misses: rejoin within rejoin_timeout_s,
        or give up (at once when it is 0). False: the node must exit."""
        t = self.fl.transport
        silent_s = t.heartbeat_s * t.heartbeat_misses
        if self.rejoin_timeout_s <= 0:
            log.error("node %d: no heartbeat from the coordinator for %.2f s; exiting", self.node, silent_s)
            return False
        log.warning(
            "node %d: coordinator silent for %.2f s; saying HELLO again for up to %.1f s",
            self.node,
            silent_s,
            self.rejoin_timeout_s,
        )
        if self._join(time.monotonic() + self.rejoin_timeout_s):
            return True
        log.error(
            "node %d: the coordinator did not come back within %.1f s; exiting",
            self.node,
            self.rejoin_timeout_s,
        )
        return False

    def _round(self, plan: Message) -> None:
        from fl.training import adapter_state, load_adapter_state, local_train, update_sq_norm

        self.round = r = plan.round
        body = self._plan_body = plan.body
        t_start = time.perf_counter()
        load_adapter_state(self.work.model, plan.frames["adapter"])
        before = {n: np.array(v, dtype=np.float32) for n, v in plan.frames["adapter"].items()}
        clock = apply_clock(body["clock_hz"], allowed=self.apply_clocks)
        t_train = time.perf_counter()
        seed = self.config.run.seed
        rng = np.random.default_rng([seed, self.node, r])
        metrics = local_train(
            self.work.model,
            self.work.train,
            body["local_steps"],
            body["batch"],
            body["lr"],
            rng,
            torch_seed=(seed * 1_000_003 + r * 1009 + self.node) % (2**62),
            weight_decay=self.fl.training.weight_decay,
            device=self.work.device,
        )
        t_trained = time.perf_counter()
        metrics["clock"] = clock.as_dict()
        metrics["memory_plan"] = self.work.memory_plan  # checkpointing / 4-bit, as chosen at start
        if metrics["energy_source"] == "modeled":
            a = self.config.allocation
            metrics["energy_j"] = modeled_energy_j(
                body["local_steps"],
                body["batch"],
                body["clock_hz"],
                a.cycles_per_sample,
                a.switched_capacitance,
            )
        after = adapter_state(self.work.model)
        names = payload_names(list(after), body["lora_mode"])
        # Computed straight into a safetensors frame: uploading it needs no further copy.
        update = empty_frame({n: after[n].shape for n in names})
        for n in names:
            np.subtract(after[n], before[n], out=update[n])
        metrics["update_sq_norm"] = update_sq_norm(update)  # ||Delta_k||^2, for the bound's G^2
        weight = float(body.get("weight", body["batch"]))
        # The node's own slices of the round (wall seconds), as it measured them.
        metrics["timing"] = {
            "load_s": t_train - t_start,
            "train_s": t_trained - t_train,
            "update_s": time.perf_counter() - t_trained,
        }
        if body["aggregation"] == "digital":
            self.send(
                Message(
                    MsgType.DIGITAL,
                    r,
                    self.node,
                    {"weight": weight, "purpose": "update", "metrics": metrics},
                    {"update": update},
                )
            )
            return
        stats = ota.group_stats(update, names)
        self.send(
            Message(
                MsgType.STATS,
                r,
                self.node,
                {
                    "weight": weight,
                    "groups": names,
                    "mean": stats.mean.tolist(),
                    "var": stats.var.tolist(),
                    "metrics": metrics,
                },
            )
        )
        shared_msg = self._await(MsgType.SHARED_STATS, r, body["deadline_s"])
        if shared_msg is None:
            return
        sb = shared_msg.body
        t_encode = time.perf_counter()
        shared = ota.GroupStats(
            tuple(sb["groups"]), np.asarray(sb["mean"], float), np.asarray(sb["var"], float)
        )
        symbols = ota.pack(ota.normalize(update, shared))
        encode_s = time.perf_counter() - t_encode
        scale = ota.from_complex_list([sb["b_k"]])[0]
        if body.get("reference", False):  # the digital copy first: NMSE reference and fallback
            self.send(
                Message(
                    MsgType.DIGITAL,
                    r,
                    self.node,
                    {"weight": weight, "purpose": "reference", "metrics": {}},
                    {"update": update},
                )
            )
        if self.transmitter is None:
            CoordinatorRelay(self, encode_s).send(self.node, symbols, scale, sb["slot_s"])
        else:
            self.transmitter.send(self.node, symbols, scale, sb["slot_s"])
            self.send(
                Message(
                    MsgType.OTA,
                    r,
                    self.node,
                    {"slot_s": sb["slot_s"], "b_k": sb["b_k"], "sent_locally": True, "encode_s": encode_s},
                )
            )

    def _await(self, kind: MsgType, r: int, timeout_s: float) -> Message | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stop.is_set():
            msg = self._recv(0.05)
            if msg is None:
                if not self._coordinator_alive():  # no use waiting out the deadline: the main loop decides
                    return None
                continue
            problem = self.message_problem(msg)
            if problem is None and msg.type is kind and msg.round != r:
                problem = f"for round {msg.round}; this node is in round {r}"
            if problem is not None:
                self.refuse(msg, problem)
                continue
            if msg.type is kind:
                return msg
            if msg.type is MsgType.BYE:
                self.stop.set()
            elif msg.type is MsgType.PLAN:  # a newer round began: this one is over for us
                self._round(msg)
                return None
            elif msg.type is MsgType.ERROR:
                log.warning("node %d: refused: %s", self.node, msg.body)
            elif msg.type is MsgType.RESULT:
                self.history.append({"round": msg.round, **msg.body["metrics"]})
        return None
