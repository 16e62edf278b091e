"""How a round's uploads become the global update: one class per scheme, one seam.

The coordinator asks its ``RoundStrategy`` two things and never which scheme it is:
``first_upload`` (what a selected node sends once it has trained: its update, or only the
statistics that OTA normalisation needs) and ``aggregate`` (the round's update from the nodes
that delivered). ``FedAvgRound`` averages the DIGITAL updates (``fl.aggregation.DigitalFedAvg``).
``OtaRound`` runs the OTA slot: shared statistics out, the bursts in, through the AirLink at the
slot time, de-normalised (``fl.aggregation.OverTheAir.receive``); when the air fails and every
node also sent its digital copy, it falls back to their FedAvg, and with the copies it measures
the aggregate's NMSE. Each enters its own phases on the round's ``PhaseClock``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from drivers.errors import FLError
from fl import ota
from fl.aggregation import DigitalFedAvg, OverTheAir, TensorDict, default_combiner
from fl.peers import Peers
from fl.phases import PhaseClock
from fl.protocol import COORDINATOR, Message, MsgType, pairs_to_complex
from fl.round_plan import RoundPlan


@dataclass
class RoundAggregate:
    """The round's update, the nodes whose contribution is in it, and what the air measured."""

    update: TensorDict
    delivered: list[int]
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class RoundContext:
    """What a strategy works with: the intake, the round's clock, the air and the transport."""

    peers: Peers
    phases: PhaseClock
    fl: Any  # the config's fl section
    shapes: Mapping[str, tuple[int, ...]]  # the payload's tensors
    air: Any = None  # fl.airlink.AirLink; OTA only
    tx_power_w: float = 1.0  # P_k where the plan gives none
    radio_clock: Callable[[], float] = time.time  # slot times are radio times


class RoundStrategy(Protocol):
    name: str
    first_upload: MsgType

    def aggregate(
        self, r: int, plan: RoundPlan, delivered: list[int], channels: np.ndarray | None
    ) -> RoundAggregate: ...

    def skip(self, r: int, why: str) -> RoundAggregate: ...


def _fedavg(updates: Mapping[int, TensorDict], plan: RoundPlan, clip_norm: float | None = None) -> TensorDict:
    """The plan-weighted mean (the weights are the plan's, never what a node says), each update
    first scaled down to ``clip_norm`` when it is longer (robust FedAvg)."""
    if clip_norm is not None:
        updates = {k: clip(u, clip_norm) for k, u in updates.items()}
    return DigitalFedAvg().aggregate(updates, {k: plan.weights[k] for k in updates}).update


def clip(update: TensorDict, max_norm: float) -> TensorDict:
    """``update`` scaled to L2 norm ``max_norm`` if it is longer; as it is otherwise."""
    norm = math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in update.values()))
    if norm <= max_norm:
        return update
    return {n: (np.asarray(a, np.float64) * (max_norm / norm)).astype(np.float32) for n, a in update.items()}


def _skip(shapes: Mapping[str, tuple[int, ...]], why: str) -> RoundAggregate:
    """A round with no contribution: the global adapter stays as it is, and the run goes on."""
    zeros = {n: np.zeros(shape, np.float32) for n, shape in shapes.items()}
    return RoundAggregate(zeros, [], {"skipped": why})


def burst_problem(
    iq: np.ndarray, own: ota.GroupStats, shared: ota.GroupStats, sizes: list[int]
) -> str | None:
    """Is a burst what the node's own statistics allow? Normalised by the shared statistics,
    its update has mean power sum_g n_g (v_kg + (mu_kg - mu_g)^2) / v_g per real; a burst far
    above that carries something other than the update its statistics describe."""
    expected = sum(
        n * (own.var[g] + (own.mean[g] - shared.mean[g]) ** 2) / shared.var[g] for g, n in enumerate(sizes)
    ) / max(sum(sizes), 1)
    measured = float(np.mean(np.square(iq, dtype=np.float64))) * iq.size / max(sum(sizes), 1)
    if measured > BURST_POWER_SLACK * expected + 1e-6:
        return f"burst power {measured:.3g} per real; its own statistics allow {expected:.3g}"
    return None


# A burst may exceed the power its statistics predict by this factor (float32 rounding, padding).
BURST_POWER_SLACK = 1.5


class FedAvgRound:
    """Error-free digital aggregation: the weighted mean of the updates the nodes sent."""

    name = "digital"
    first_upload = MsgType.DIGITAL

    def __init__(self, ctx: RoundContext) -> None:
        self.ctx = ctx

    def aggregate(
        self, r: int, plan: RoundPlan, delivered: list[int], channels: np.ndarray | None
    ) -> RoundAggregate:
        self.ctx.phases.enter("aggregate")
        uploads = self.ctx.peers.uploads
        updates = {k: uploads[(MsgType.DIGITAL, k)].frames["update"] for k in delivered}
        return RoundAggregate(_fedavg(updates, plan, self.ctx.fl.transport.clip_norm), delivered)

    def skip(self, r: int, why: str) -> RoundAggregate:
        return _skip(self.ctx.shapes, why)


class OtaRound:
    """Over-the-air aggregation: statistics -> precoding -> bursts through the air -> mean update."""

    name = "ota"
    first_upload = MsgType.STATS

    def __init__(self, ctx: RoundContext) -> None:
        self.ctx = ctx
        self.num_reals = int(sum(math.prod(shape) for shape in ctx.shapes.values()))

    def skip(self, r: int, why: str) -> RoundAggregate:
        return _skip(self.ctx.shapes, why)

    def _stats_of(self, k: int) -> ota.GroupStats:
        body = self.ctx.peers.uploads[(MsgType.STATS, k)].body
        return ota.GroupStats(
            tuple(body["groups"]), np.asarray(body["mean"], float), np.asarray(body["var"], float)
        )

    def aggregate(
        self, r: int, plan: RoundPlan, delivered: list[int], channels: np.ndarray | None
    ) -> RoundAggregate:
        ctx, peers = self.ctx, self.ctx.peers
        if ctx.air is None or channels is None:
            raise FLError("fl.aggregation=ota needs an AirLink; none was given to the coordinator")
        ctx.phases.enter("upload")
        weights = [float(plan.weights[k]) for k in delivered]
        shared = ota.shared_stats([self._stats_of(k) for k in delivered], weights, ctx.fl.normalization)
        h = channels[delivered]
        m = np.asarray(plan.combiner) if plan.combiner is not None else default_combiner(h)
        power = [float((plan.power_w or {}).get(k, ctx.tx_power_w)) for k in delivered]
        pre = ota.precode(m, h, delivered, weights, power, ctx.air.noise_power_w)
        b_k = dict(zip(delivered, pre.b_k, strict=True))
        if plan.b_k and set(plan.b_k) == set(delivered):
            b_k = {k: complex(plan.b_k[k]) for k in delivered}  # everyone delivered: the plan's own b_k
        slot_s = float(ctx.radio_clock()) + ctx.fl.transport.ota_guard_s
        n_sym = ota.num_symbols(self.num_reals)
        for k in delivered:
            body = {
                "mean": shared.mean.tolist(),
                "var": shared.var.tolist(),
                "groups": list(shared.names),
                "b_k": ota.complex_list(np.array([b_k[k]]))[0],
                "slot_s": slot_s,
                "num_symbols": n_sym,
            }
            peers.send(k, Message(MsgType.SHARED_STATS, r, COORDINATOR, body))
        peers.event("shared_stats_sent", delivered=delivered, slot_s=slot_s, eta=pre.eta)
        # The slot phase gets its own deadline: waiting out a late node must not eat into it.
        deadline = time.monotonic() + ctx.fl.transport.round_deadline_s
        sent = peers.collect(MsgType.OTA, delivered, deadline)
        if ctx.fl.digital_reference:
            peers.collect(MsgType.DIGITAL, sent, min(deadline, time.monotonic() + 1.0), reference=True)
        own = {k: self._stats_of(k) for k in sent}
        sizes = [math.prod(ctx.shapes[n]) for n in shared.names]
        for k in sent:
            msg = peers.uploads[(MsgType.OTA, k)]
            problem = (
                None
                if msg.body["sent_locally"]
                else burst_problem(msg.frames["symbols"]["iq"], own[k], shared, sizes)
            )
            if problem is not None:
                peers.drop(k, f"OTA burst: {problem}")
        sent = [k for k in sent if k not in peers.dropped]
        refs = {k: peers.references[k].frames["update"] for k in sent if k in peers.references}
        if not sent:
            return _skip(ctx.shapes, "no node sent a usable OTA burst by the deadline")
        metrics: dict[str, Any] = {
            "eta": pre.eta,
            "predicted_mse": pre.mse,
            "num_symbols": n_sym,
            "slot_s": slot_s,
            "fallback": False,
        }
        ctx.phases.enter("ota")
        total = float(sum(plan.weights[k] for k in sent))
        try:
            for k in sent:
                msg = peers.uploads[(MsgType.OTA, k)]
                if not msg.body["sent_locally"]:
                    symbols = pairs_to_complex(msg.frames["symbols"]["iq"])
                    if symbols.size != n_sym:
                        raise FLError(f"node {k} sent {symbols.size} symbols, the slot holds {n_sym}")
                    # The b_k this coordinator assigned, never the one the node reports.
                    ctx.air.send(k, symbols, b_k[k], slot_s)
            estimate = OverTheAir.receive(ctx.air, pre, self.num_reals, slot_s, m, total, shared, ctx.shapes)
        except Exception as exc:  # noqa: BLE001 - the air failed: fall back to the digital copies
            if set(refs) != set(sent):
                raise
            peers.event("ota_fallback", why=str(exc))
            metrics["fallback"] = True
            estimate = _fedavg(refs, plan, ctx.fl.transport.clip_norm)
        ctx.phases.enter("aggregate")
        if set(refs) == set(sent) and not metrics["fallback"]:
            metrics.update(_error_against(estimate, _fedavg(refs, plan)))
        return RoundAggregate(estimate, sent, metrics)


def _error_against(estimate: TensorDict, reference: TensorDict) -> dict[str, float]:
    """The aggregate's NMSE and effective SNR against the error-free FedAvg of the same updates."""
    signal = np.mean(np.concatenate([(reference[n].astype(np.float64) ** 2).ravel() for n in reference]))
    err = np.mean(
        np.concatenate([((estimate[n] - reference[n]).astype(np.float64) ** 2).ravel() for n in reference])
    )
    return {
        "nmse": ota.nmse(estimate, reference),
        "effective_snr_db": float(10 * np.log10(signal / err)) if err > 0 else float("inf"),
    }


# fl.aggregation -> the strategy that runs it
ROUND_STRATEGIES: dict[str, Callable[[RoundContext], RoundStrategy]] = {
    "digital": FedAvgRound,
    "ota": OtaRound,
}


def round_strategy(aggregation: str, ctx: RoundContext) -> RoundStrategy:
    try:
        make = ROUND_STRATEGIES[aggregation]
    except KeyError:
        raise FLError(f"fl.aggregation: {aggregation!r}; allowed {', '.join(ROUND_STRATEGIES)}") from None
    return make(ctx)
