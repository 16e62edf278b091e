"""The FL coordinator (parameter server): binds the ROUTER socket and runs the rounds as phases.

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

and as phases (``fl.phases``), each a method here or in the round's strategy:
estimate -> plan -> dispatch -> train -> [upload -> ota] -> aggregate -> evaluate -> checkpoint.
``fl.peers`` keeps the node table and checks every upload; ``fl.strategies`` turns the uploads
into the update (FedAvg, or the OTA slot); ``fl.checkpoint`` writes and reads checkpoints.

A node that misses heartbeats or the deadline is dropped from the round and the aggregate is
re-weighted over the nodes that delivered; it may say HELLO again and rejoin from the next
round. After every round the global adapter (safetensors), the round state, the RNG state
and the metrics so far are checkpointed; ``resume=True`` continues after the last complete one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from drivers import zmq_security
from drivers.errors import FLError
from fl import ota
from fl.aggregation import apply_update, payload_names
from fl.checkpoint import append_record, load_checkpoint, save_checkpoint
from fl.keys import KeyLayout
from fl.messages import MAX_HEADER_BYTES, inbound_frame_cap
from fl.peers import NodeInfo, Peers, RadioTimeSkew
from fl.phases import TIMING_SLICES, PhaseClock
from fl.protocol import (
    COORDINATOR,
    Message,
    MsgType,
    SocketLoop,
    build_frame,
)
from fl.round_plan import Planner, RoundPlan, RunEnds
from fl.strategies import RoundAggregate, RoundContext, round_strategy

log = logging.getLogger(__name__)

__all__ = ["TIMING_SLICES", "Coordinator", "NodeInfo", "Planner", "RadioTimeSkew", "RoundPlan"]

# Documents too frequent for the log at INFO (they still go to events.jsonl).
_QUIET_EVENTS = frozenset({"phase", "nodes"})


def _node_timing(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The node's own slices (load, train, update), as plain floats; {} if it sent none."""
    timing = metrics.get("timing")
    if not isinstance(timing, Mapping):
        return {}
    return {str(k): float(v) for k, v in timing.items() if isinstance(v, int | float) and math.isfinite(v)}


class Coordinator:
    """Runs the rounds.

    Parameters
    ----------
    config
        A ``TestbedConfig`` (read by attribute only): ``run``, ``lab.clients`` and all of ``fl``.
    run_dir
        Where ``events.jsonl``, ``metrics.jsonl`` and ``checkpoints/`` go.
    planner
        ``planner(round, channels, available) -> RoundPlan`` (``fl.round_plan``).
    air
        The ``fl.airlink.AirLink`` the OTA slot goes through; None for digital aggregation.
    rng
        The coordinator's generator (checkpointed); default from ``run.seed``.
    on_round
        Called with each finished round's record, after its checkpoint.
    on_event
        Called with every event record (phases and the node table included).
    resume
        Continue ``run_dir`` after its last complete checkpoint.
    radio_clock
        The radios' device time, in which slot times are given; default the air's, else the host's.
    """

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
        self.radio_clock = radio_clock or getattr(air, "time_now", None) or time.time
        self.run_id = f"{config.run.name}-{int(time.time())}"
        self.metrics: list[dict[str, Any]] = []
        self.start_round = 1
        self._round = 0
        self.initial_val_loss = float("nan")
        # Called while waiting for the nodes; raises FLError when a (local) node died starting up.
        self.startup_check: Callable[[], None] | None = None
        # Asked after every round; a reason ends the run there, checkpointed (``testbed stop``).
        self.should_stop: Callable[[], str | None] | None = None
        self.stopped: str | None = None
        self.ctx = zmq.Context()
        self._auth = None
        self.loop: SocketLoop | None = None
        self.endpoint = ""

        from fl.training import adapter_state, build_workload

        self.work = build_workload(self.fl, config.run.seed, self.num_clients, None)
        self.global_adapter = build_frame(adapter_state(self.work.model))  # encoded once per round
        self.version = 0
        self.payload = payload_names(list(self.global_adapter), self.fl.lora.mode)
        shapes = {n: tuple(self.global_adapter[n].shape) for n in self.payload}
        # The round's clock: planners that move the antennas enter their phases on it too.
        self.phases = PhaseClock(on_phase=self._on_phase)
        self.peers = Peers(self.fl, self.num_clients, shapes, self.run_id, self._event)
        self.strategy = round_strategy(
            self.fl.aggregation,
            RoundContext(
                self.peers,
                self.phases,
                self.fl,
                shapes,
                air,
                float(config.lab.clients.tx_power_w),
                self.radio_clock,
            ),
        )
        if resume:
            self._load_checkpoint()

    @property
    def nodes(self) -> dict[int, NodeInfo]:
        return self.peers.nodes

    @property
    def rejected(self) -> list[dict[str, Any]]:
        return self.peers.rejected

    # --- lifecycle ------------------------------------------------------------------------------
    def bind(self) -> str:
        t = self.fl.transport
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # No handover: a routing id in use cannot be taken over by another connection (a node's
        # key holder could otherwise receive another node's messages); dead connections are
        # closed by ZMTP heartbeats instead, so a restarted node gets its id back.
        zmq_security.harden_router(sock, t.heartbeat_s, t.heartbeat_misses)
        sock.setsockopt(zmq.LINGER, 500)
        # No frame of this run's messages is bigger than the adapter plus a header: a frame
        # announcing more is refused by ZeroMQ before it is stored.
        frame_cap = inbound_frame_cap(
            {n: a.shape for n, a in self.global_adapter.items()}, t.max_message_bytes
        )
        zmq_security.cap_inbound_size(sock, frame_cap)
        if t.insecure:
            zmq_security.require_loopback_for_insecure(t.bind)
        else:
            keys = KeyLayout(Path(t.keys_dir))
            self._auth = zmq_security.start_authenticator(self.ctx, keys.coordinator_allow)
            zmq_security.secure_server(sock, keys.secret("coordinator"))
            self.peers.auth = self._auth
        sock.bind(t.bind)
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.loop = SocketLoop(
            sock,
            True,
            t.heartbeat_s,
            COORDINATOR,
            frame_cap,
            max_total_bytes=frame_cap + MAX_HEADER_BYTES,
            rate_hz=t.peer_rate_hz,
            burst=t.peer_burst,
            inbox_size=t.inbox_size,
            inbox_per_peer=t.inbox_per_peer,
            bound_key=self.peers.bound_key,
        ).start()
        self.peers.loop = self.loop
        self._event("bound", endpoint=self.endpoint, curve=not t.insecure)
        return self.endpoint

    def close(self, say_bye: bool = True) -> None:
        if self.loop is not None:
            if say_bye:
                self.peers.broadcast(lambda k: Message(MsgType.BYE, self._round, COORDINATOR, {}))
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
            self.peers.wait_for_all(self.fl.transport.join_timeout_s, self.startup_check)
            self.peers.check_radio_times()
            if not self.metrics:
                from fl.training import evaluate

                self.initial_val_loss = evaluate(
                    self.work.model, self.work.validation, device=self.work.device
                )
                self._event("initial_eval", val_loss=self.initial_val_loss)
            for r in range(self.start_round, self.fl.rounds + 1):
                try:
                    self._run_round(r)
                except RunEnds as end:  # the planner's word: round r does not run
                    self.stopped = str(end)
                    self._event("stopped", before_round=r, why=self.stopped)
                    break
                reason = self.should_stop() if self.should_stop is not None and r < self.fl.rounds else None
                if reason is not None:
                    self.stopped = reason
                    self._event("stopped", after_round=r, why=reason)
                    break
            else:
                self._event("finished", rounds=self.fl.rounds)
        except FLError:
            self.close(say_bye=True)  # a refusal: tell the nodes to go home
            raise
        except BaseException:
            self.close(say_bye=False)  # a crash: the nodes wait and rejoin a resumed coordinator
            raise
        self.close(say_bye=True)
        return self.metrics

    # --- records --------------------------------------------------------------------------------
    def _event(self, event: str, **data: Any) -> None:
        record = {"t": time.time(), "event": event, "round": self._round, **data}
        with (self.run_dir / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")
        level = logging.DEBUG if event in _QUIET_EVENTS else logging.INFO
        log.log(
            level, "round %d: %s %s", self._round, event, {k: v for k, v in data.items() if k != "metrics"}
        )
        if self.on_event is not None:
            self.on_event(record)

    def _on_phase(self, r: int, phase: str, t_start: float) -> None:
        self._event("phase", phase=phase, t_start=t_start)

    # --- one round, phase by phase ----------------------------------------------------------------
    def _run_round(self, r: int) -> None:
        cpu0 = time.thread_time()
        alive = self._open_round(r)
        channels = self._estimate()
        plan = self._plan(r, channels, alive)
        # The planner may have moved the antennas: precode on what the air is now.
        channels = self._estimate() if self.air is not None else channels
        deadline = self._dispatch(r, plan)
        delivered = self._train(r, plan, deadline)
        if delivered:
            aggregate = self.strategy.aggregate(r, plan, delivered, channels)
        else:
            aggregate = self.strategy.skip(r, "no selected node delivered by the deadline")
        if not all(np.all(np.isfinite(a)) for a in aggregate.update.values()):
            # Cannot happen with checked uploads; if it does, the global model must not take it.
            aggregate = self.strategy.skip(r, f"the aggregate of nodes {aggregate.delivered} is not finite")
        self.peers.end_round(aggregate.delivered)
        val_loss = self._apply_and_evaluate(r, aggregate)
        record = self._round_record(r, plan, aggregate, val_loss)
        self._finish_round(r, record, cpu0)

    def _open_round(self, r: int) -> list[int]:
        self._round = r
        self.phases.start_round(r)
        self.peers.new_round(r)
        alive = self.peers.alive()
        if not alive:
            raise FLError(f"round {r}: no node is alive")
        return alive

    def _estimate(self) -> np.ndarray | None:
        """Every client's channel at the antennas' current positions (None without an air)."""
        if self.air is None:
            return None
        self.phases.enter("estimate")
        return self.air.estimate_channels(list(range(self.num_clients)))

    def _plan(self, r: int, channels: np.ndarray | None, alive: list[int]) -> RoundPlan:
        self.phases.enter("plan")
        plan = self.planner(r, channels, alive)
        problem = plan.problem(alive)
        if problem is not None:
            raise FLError(f"round {r}: {problem}")
        return plan

    def _dispatch(self, r: int, plan: RoundPlan) -> float:
        """Send every selected node its PLAN with the global adapter; the round's deadline."""
        self.phases.enter("dispatch")
        self.peers.selected = set(plan.selected)
        deadline_s = self.fl.transport.round_deadline_s
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
            self.peers.send(k, Message(MsgType.PLAN, r, COORDINATOR, body, {"adapter": self.global_adapter}))
            self.nodes[k].participation += 1
        self._event("plan_sent", selected=plan.selected, lr=plan.lr, extra=plan.extra)
        return time.monotonic() + deadline_s

    def _train(self, r: int, plan: RoundPlan, deadline: float) -> list[int]:
        """Wait for the selected nodes' first upload (their compute, then that message); the nodes
        that delivered (none: the round is skipped, the run goes on)."""
        self.phases.enter("train")
        return self.peers.collect(self.strategy.first_upload, plan.selected, deadline)

    def _apply_and_evaluate(self, r: int, aggregate: RoundAggregate) -> float:
        from fl.training import evaluate, load_adapter_state

        self.phases.enter("aggregate")
        self.global_adapter = build_frame(apply_update(self.global_adapter, aggregate.update))
        self.version = r
        load_adapter_state(self.work.model, self.global_adapter)
        self.phases.enter("evaluate")
        return evaluate(self.work.model, self.work.validation, device=self.work.device)

    def _round_record(
        self, r: int, plan: RoundPlan, aggregate: RoundAggregate, val_loss: float
    ) -> dict[str, Any]:
        from fl.training import update_sq_norm

        delivered = aggregate.delivered
        first = self.strategy.first_upload
        node_metrics = {str(k): self.peers.uploads[(first, k)].body["metrics"] for k in delivered}
        counts = self.peers.participation()
        return {
            "round": r,
            "selected": plan.selected,
            "delivered": delivered,
            "dropped": [k for k in plan.selected if k not in delivered],
            "weights": {str(k): float(plan.weights[k]) for k in delivered},
            "aggregation": self.fl.aggregation,
            "lora_mode": self.fl.lora.mode,
            "lr": plan.lr,
            "val_loss": val_loss,
            "val_perplexity": math.exp(min(val_loss, 50.0)),
            "val_loss_before": self.metrics[-1]["val_loss"] if self.metrics else self.initial_val_loss,
            "train_loss": float(np.mean([nm.get("loss", np.nan) for nm in node_metrics.values()]))
            if node_metrics
            else float("nan"),
            "dropped_why": dict(sorted((str(k), why) for k, why in self.peers.dropped.items())),
            "nodes": node_metrics,
            **aggregate.metrics,
            "participation": counts.tolist(),
            "jain_fairness": float(counts.sum() ** 2 / (len(counts) * np.sum(counts**2)))
            if counts.any()
            else 0.0,
            "plan": {k: v for k, v in plan.extra.items() if isinstance(v, (int, float, str, list, bool))},
            # ||Delta_k||^2 as each node reported it, and that of the update actually applied.
            "update_sq_norms": {
                k: float(m["update_sq_norm"])
                for k, m in node_metrics.items()
                if isinstance(m.get("update_sq_norm"), int | float)
                and not isinstance(m["update_sq_norm"], bool)
            },
            "aggregate_sq_norm": update_sq_norm(aggregate.update),
            "node_timing_s": {k: _node_timing(m) for k, m in node_metrics.items()},
        }

    def _finish_round(self, r: int, record: dict[str, Any], cpu0: float) -> None:
        """Checkpoint, close the round's clock, record it, and tell every node the outcome."""
        self.phases.enter("checkpoint")
        record["timing_s"] = self.phases.breakdown()  # so far: the checkpoint keeps it
        self.metrics.append(record)
        self._checkpoint(r)
        # The round ends with its checkpoint: the wall and CPU times and the slices all include it.
        timing, round_s = self.phases.finish()
        waited_s = timing["train_s"] + timing["upload_s"]
        record.update(
            timing_s=timing,
            round_time_s=round_s,
            wait_time_s=waited_s,
            coordinator_time_s=round_s - waited_s,
            coordinator_cpu_s=time.thread_time() - cpu0,  # this thread's own work, waits excluded
        )
        append_record(self.run_dir, record)
        self._event("round_done", dropped=record["dropped"], val_loss=record["val_loss"], metrics=record)
        result = {
            # JSON has no NaN: a round that could not be evaluated says null.
            "val_loss": record["val_loss"] if math.isfinite(record["val_loss"]) else None,
            "dropped": record["dropped"],
            "delivered": record["delivered"],
        }
        self.peers.broadcast(
            lambda k: Message(MsgType.RESULT, r, COORDINATOR, {"metrics": result, "version": self.version})
        )
        if self.on_round is not None:
            self.on_round(record)

    # --- checkpoints ----------------------------------------------------------------------------
    def _checkpoint(self, r: int) -> None:
        state = {
            "round": r,
            "version": self.version,
            "rng_state": self.rng.bit_generator.state,
            "participation": {str(k): i.participation for k, i in self.nodes.items()},
            "clock_reference_s": self.peers.clock_reference_s,
        }
        state["metrics_rounds"] = len(self.metrics)
        state["record"] = self.metrics[-1]
        save_checkpoint(self.run_dir, r, self.global_adapter, self.fl.lora.mode, state)

    def _load_checkpoint(self) -> None:
        found = load_checkpoint(self.run_dir, set(self.global_adapter))
        if found is None:
            self._event("resume", from_round=0, note="no checkpoint yet; starting at round 1")
            return
        state = found.state
        self.global_adapter = build_frame(found.adapter)
        self.version = int(state["version"])
        self.rng.bit_generator.state = state["rng_state"]
        self.metrics = list(found.metrics)
        self.peers.resumed_participation = {int(k): int(v) for k, v in state["participation"].items()}
        self.start_round = int(state["round"]) + 1
        self._round = int(state["round"])
        self._event("resume", from_round=self.start_round, checkpoint=str(found.folder))
