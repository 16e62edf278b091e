"""`testbed run`: plan, move the antennas, estimate the channels, run the FL round; repeat.

One run, as data flows (DESIGN.md):
1. the resolved config goes to ``runs/<name>-<time>/config.yaml``;
2. the lab is built (stages homed, the air ready) and the whole-run allocation is solved once,
   beside every baseline (a ``plan`` event, for the report's comparison);
3. the coordinator and the node processes start; each round the planner below re-plans from the
   current channels, moves the antennas (waits for Idle plus the settle time), re-estimates the
   channels at the positions the stages actually reached, and hands the FL layer the selection,
   clocks, batches, combiner and precoding;
4. every slot also goes through a fixed half-wavelength array (same channel model, same symbols,
   its own optimal combiner), so each round measures both arrays' NMSE on the same updates;
5. each round is one ``round`` event; at the end, ``summary.json`` and the report.

``--resume RUN_DIR`` continues a run after a crash or Ctrl-C: the federation resumes from its
last checkpoint, and the planner's state (participation, positions, budgets spent) is rebuilt
from the round events already on disk. The antennas go back to the last round's positions, and
each round's random draws (planner starts, both airs' noise) come from (seed, round), so the
resumed run records exactly what an uninterrupted one would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from drivers.errors import PlanError, StageAlarm, StageLimitError
from fl.phases import PhaseClock
from testbed.air.comparison import FixedArrayComparison, db, optimal_precoding
from testbed.budgets import PlannerState, round_charge_j
from testbed.config import TestbedConfig
from testbed.console.control import RunningMarker, stop_requested
from testbed.lab import Lab, build_lab
from testbed.live import LiveFeed
from testbed.records import RunRecorder
from testbed.run_summary import summarize_run
from testbed.schemes import UpdateNorms, resumed_scheme, scheme_config, scheme_strategy
from testbed.whole_run_plan import WholeRunPlan

log = logging.getLogger(__name__)


class Experiment:
    """The per-round loop of ``testbed run`` around ``fl.runner.LocalFederation``.

    Parameters
    ----------
    config
        The run's ``TestbedConfig`` (``scheme`` may adjust it, e.g. digital aggregation).
    recorder
        The run directory's ``RunRecorder``: events, metrics and the resume state.
    resume
        Continue the run in ``recorder``'s directory after its last complete round.
    remote_nodes
        The nodes run ``testbed node`` on other hosts and dial in; none is started here.
    progress
        Called with (rounds done, rounds in all) after each round.
    scheme
        Whose plan drives every round (``SCHEMES``).
    node_mode
        How local nodes run (``fl.runner.LocalFederation``).
    whole_run_plan
        Also solve the whole-run plan beside every baseline for the report (a compare cell skips
        it: its report compares runs).
    """

    def __init__(
        self,
        config: TestbedConfig,
        recorder: RunRecorder,
        resume: bool = False,
        remote_nodes: bool = False,
        progress: Callable[[int, int], None] | None = None,
        scheme: str = "ours",
        node_mode: str = "fork",
        whole_run_plan: bool = True,
    ) -> None:
        self.scheme = scheme
        self.strategy = scheme_strategy(scheme)
        config = scheme_config(config, scheme)
        self.node_mode = node_mode
        self.whole_run_plan = whole_run_plan
        self.config = config
        self.recorder = recorder
        self.resume = resume
        self.remote_nodes = remote_nodes  # nodes run `testbed node` on other hosts and dial in
        self.progress = progress  # progress(rounds done, rounds in all)
        self.rng = np.random.default_rng([config.run.seed, 11])
        self.lab: Lab | None = None
        self.comparison: FixedArrayComparison | None = None
        rounds = [d["data"] for d in recorder.events("round")] if resume else []
        self.state = PlannerState.from_rounds(config.lab.clients.count, rounds)
        self.norms = UpdateNorms()
        for r in sorted(rounds, key=lambda r: r["round"]):  # resume: the estimates so far
            self.norms.observe(r)
        self.federation: Any = None
        self.live = LiveFeed(recorder)
        self._idle_phases = PhaseClock()  # the planner's clock before a federation exists
        self.stopped: str | None = None  # why the run stopped early (``testbed stop``), if it did
        self.budget_end: str | None = None  # why the budgets left could not pay the next round
        self.unpayable: str | None = None  # why no budget pays a round at the calibrated cost
        # The first round, planned by the budgets' check before anything moved, until it runs.
        self._first_plan: tuple[int, Any] | None = None
        self.whole_run: WholeRunPlan | None = None  # the whole-run plan and its baselines, solving
        self.done_rounds = {r["round"] for r in rounds}

    # --- the per-round planner the coordinator calls ------------------------------------------
    def _plan_round(self, r: int) -> Any:
        """Round ``r`` planned on what is left of the budgets, from its own planner stream
        (seed, 11, r); ``RunEnds`` says why when they cannot pay it."""
        from allocation import AllocationError, BudgetError, plan_round
        from fl.round_plan import RunEnds

        if self.unpayable is not None:
            raise RunEnds(f"the budgets cannot pay round {r}: {self.unpayable}")
        alloc = self.config.allocation
        # Each re-plan sees the bound's constants with G^2 and zeta^2 as estimated so far.
        self.problem.bound = self.norms.constants(self.base_constants)
        try:
            return plan_round(
                self.problem,
                r,
                self.state.counts,
                self.state.positions_m,
                alloc.latency_budget_s - self.state.latency_spent_s,
                alloc.energy_budget_j - self.state.energy_spent_j,
                max(1, self.config.fl.rounds - r + 1),
                np.random.default_rng([self.config.run.seed, 11, r]),
                strategy=self.strategy,
            )
        except BudgetError as exc:
            raise RunEnds(f"the budgets cannot pay round {r}: allocation.{exc}") from exc
        except AllocationError as exc:
            raise PlanError(f"round {r}: no feasible plan: {exc}") from exc

    def _refuse_unpayable(self) -> None:
        """Before anything moves or trains: what is left of the budgets must pay the first round
        (its plan is kept for it)."""
        from fl.round_plan import RunEnds

        first = min(set(range(1, self.config.fl.rounds + 1)) - self.done_rounds, default=None)
        if first is None:
            return
        try:
            self._first_plan = (first, self._plan_round(first))
        except RunEnds as end:
            raise PlanError(str(end)) from None

    def plan(self, r: int, _channels: np.ndarray | None, available: list[int]) -> Any:
        from fl.coordinator import RoundPlan
        from fl.round_plan import RunEnds
        from fl.training import cosine_lr

        assert self.lab is not None and self.comparison is not None
        cfg = self.config
        t0 = time.monotonic()
        self._reseed_round(r)
        kept, self._first_plan = self._first_plan, None
        try:
            rp = kept[1] if kept is not None and kept[0] == r else self._plan_round(r)
        except RunEnds as end:  # the run ends after the round before, within its budgets
            self.budget_end = str(end)
            raise
        plan_s = time.monotonic() - t0
        phases = self.phases
        selected = [k for k in rp.selected if k in available]
        if len(selected) < len(rp.selected):  # a planned node is down: take the strongest live ones
            with phases.during("estimate"):
                gains = np.linalg.norm(self.lab.air.estimate_channels(available), axis=1)
            spare = [k for _, k in sorted(zip(-gains, available, strict=True)) if k not in selected]
            selected += spare[: len(rp.selected) - len(selected)]
            log.warning(
                "round %d: planned %s, nodes %s are down; sending %s",
                r,
                rp.selected,
                sorted(set(rp.selected) - set(available)),
                sorted(selected),
            )
        selected = sorted(selected)
        with phases.during("move"):
            reached = self._move_or_stay(r, np.asarray(rp.positions_m))
        with phases.during("settle"):
            self.lab.settle()
        move_wall_s = phases.slices["move_s"] + phases.slices["settle_s"]
        batch_of = dict(zip(rp.selected, rp.batches, strict=True))
        clock_of = dict(zip(rp.selected, rp.clocks_hz, strict=True))
        # A spare takes the slot (batch, clock) of the planned node it stands in for, so the round
        # costs what its plan reserved of the budgets.
        downs, spares = sorted(set(rp.selected) - set(selected)), sorted(set(selected) - set(rp.selected))
        for down, spare in zip(downs, spares, strict=False):  # fewer spares than downs: slots stay empty
            batch_of[spare], clock_of[spare] = batch_of[down], clock_of[down]
        batch = {k: int(min(batch_of[k], cfg.fl.training.batch_size)) for k in selected}
        weights = {k: float(batch[k]) for k in selected}
        power = np.full(len(selected), cfg.lab.clients.tx_power_w)
        with phases.during("estimate"):
            h = self.lab.air.estimate_channels(selected)  # at the positions the stages reached
        m, b, eta = optimal_precoding(h, power, np.array([weights[k] for k in selected]))
        self.comparison.weights = weights
        clocks = [float(clock_of[k]) for k in selected]
        self.state.pending[r] = {
            "positions_m": reached.tolist(),
            "planned_positions_m": rp.positions_m,
            "latency_model_s": rp.move_s + rp.compute_s + rp.air_s,
            # The budget is charged what the round runs (batches, clocks, the b_k sent), priced
            # as the plan was; the plan reserved the transmit energy at the power cap.
            "energy_model_j": round_charge_j(
                self.problem, rp, selected, [batch[k] for k in selected], clocks, b, cfg.fl.aggregation
            ),
            "energy_planned_j": rp.energy_j,
            "move_model_s": rp.move_s,
            # The latency's parts: the compare report prices each round's work at the top clock.
            "air_model_s": rp.air_s,
            "compute_model_s": rp.compute_s,
            "move_wall_s": move_wall_s,
            "plan_wall_s": time.monotonic() - t0,
            "mse_predicted": rp.mse,
            "cycles_per_sample": float(np.mean(self.problem.cycles)),  # what this round was priced at
            "bound_constants": self.problem.bound.to_record(),
            "eta": eta,
            "clocks_hz": clocks,
        }
        return RoundPlan(
            round=r,
            selected=selected,
            local_steps=cfg.fl.training.local_steps,
            lr=cosine_lr(r, cfg.fl.rounds, cfg.fl.training.lr, cfg.fl.training.lr_min),
            batch=batch,
            clock_hz=dict(zip(selected, clocks, strict=True)),
            weights=weights,
            combiner=m,
            b_k=dict(zip(selected, b, strict=True)),
            extra={
                "mse_predicted": rp.mse,
                "move_model_s": rp.move_s,
                "plan_solve_s": plan_s,
            },
        )

    def _reseed_round(self, r: int) -> None:
        """Every random draw of round ``r`` (both airs' noise here, the planner's starts in
        ``_plan_round``) comes from generators derived from (seed, stream, r), not from streams
        carried across rounds: a run resumed at round r then draws exactly what an uninterrupted
        run draws."""
        assert self.lab is not None
        seed = self.config.run.seed
        for stream, air in ((21, self.lab.air), (22, self.lab.fixed_air)):
            # the IQ medium's clock: each round starts at its own epoch, resumed or not
            start_round = getattr(air, "start_round", None)
            if start_round is not None:
                start_round(r)
            reseed = getattr(air, "reseed", None)
            if reseed is not None:
                reseed(np.random.default_rng([seed, stream, r]))

    def _move_or_stay(self, r: int, positions_m: np.ndarray) -> np.ndarray:
        """Move the antennas to the plan's positions; where the stages find no collision-free
        route (refused before anything moves), the round runs where the antennas are, and the
        record shows it (positions_m against planned_positions_m)."""
        assert self.lab is not None
        names = self.lab.stages.names
        self.live.stages(names, "moving", self.lab.antenna_positions(), targets_m=positions_m)
        try:
            reached = self.lab.move_antennas(positions_m, settle=False)
        except StageLimitError as exc:
            log.warning("round %d: the antennas stay where they are: %s", r, exc)
            reached = self.lab.antenna_positions()
            self.lab.air.set_positions(reached)
        self.live.stages(names, "idle", reached)
        return reached

    @property
    def phases(self) -> PhaseClock:
        """The coordinator's round clock (the planner's move, settle and estimate are its phases)."""
        federation = self.federation
        return federation.coordinator.phases if federation is not None else self._idle_phases

    def _should_stop(self) -> str | None:
        """Asked after every round but the last: a ``testbed stop`` request, recorded once, as the
        reason (the budgets' end is the planner's word, ``RunEnds``)."""
        request = stop_requested(self.recorder.run_dir)
        if request is None:
            return None
        self.recorder.event("stop_request", now=bool(request.get("now")), by=str(request.get("by", "")))
        return f"testbed stop ({request.get('by', 'unknown')}): stopped after a checkpointed round"

    # --- after each round ----------------------------------------------------------------------
    def on_round(self, fl_record: dict[str, Any]) -> None:
        assert self.comparison is not None
        r = int(fl_record["round"])
        extra = self.state.pending.pop(r, {})
        for k in fl_record.get("selected", []):
            self.state.counts[k] += 1
        if extra.get("positions_m") is not None:
            self.state.positions_m = np.asarray(extra["positions_m"])
        self.state.latency_spent_s += extra.get("latency_model_s", 0.0)
        self.state.energy_spent_j += extra.get("energy_model_j", 0.0)
        norms = self.norms.observe(fl_record)
        air = self.comparison.last
        signal = air.get("signal_per_symbol")
        nodes = fl_record.get("nodes", {})
        measured = [n.get("energy_j") for n in nodes.values() if n.get("energy_source") == "nvml"]
        record = {
            "round": r,
            "scheme": self.scheme,
            "time_breakdown_s": fl_record.get("timing_s"),
            "node_timing_s": fl_record.get("node_timing_s"),
            "memory_plans": {k: n.get("memory_plan") for k, n in fl_record.get("nodes", {}).items()},
            "selected": fl_record.get("selected"),
            "dropped": fl_record.get("dropped", []),
            "train_loss": fl_record.get("train_loss"),
            "val_loss": fl_record.get("val_loss"),
            "val_ppl": fl_record.get("val_perplexity"),
            "nmse_db": self._nmse_db(fl_record),
            "nmse_live_symbols_db": air.get("nmse_symbols_db"),
            "nmse_fpa_db": air.get("nmse_fpa_db"),
            "nmse_theory_db": db(air["mse_theory_live"] / signal) if signal else None,
            "nmse_fpa_theory_db": db(air["mse_theory_fpa"] / signal) if signal else None,
            "effective_snr_db": fl_record.get("effective_snr_db"),
            # The coordinator's round time already holds the planner call, and so the move in it.
            "latency_wall_s": float(fl_record.get("round_time_s", 0.0)),
            "energy_measured_j": float(sum(measured)) if measured else None,
            "jain_fairness": fl_record.get("jain_fairness"),
            "num_clients": self.config.lab.clients.count,
            **norms,
            **extra,
        }
        record["cost_model"] = self._calibrate(nodes)  # after this round: what the next plan uses
        self.recorder.event("round", **record)
        alloc = self.config.allocation
        self.recorder.live(
            "budget",
            round=r,
            energy_j=self.state.energy_spent_j,
            energy_budget_j=alloc.energy_budget_j,
            latency_s=self.state.latency_spent_s,
            latency_budget_s=alloc.latency_budget_s,
        )
        self.done_rounds.add(r)
        if self.progress is not None:
            self.progress(len(self.done_rounds), self.config.fl.rounds)
        self.comparison.last = {}

    def _nmse_db(self, fl_record: dict[str, Any]) -> float | None:
        """The aggregate's NMSE; error-free digital FedAvg has none: -inf dB."""
        if self.config.fl.aggregation == "digital":
            return float("-inf")
        return db(fl_record["nmse"]) if fl_record.get("nmse") else None

    # --- the whole run --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """The whole run, marked as running in its directory (``testbed watch``/``stop`` read it)."""
        with RunningMarker(self.recorder.run_dir, "run"):
            self.live.capture_warnings()
            try:
                return self._run()
            finally:
                self.live.close()

    def _run(self) -> dict[str, Any]:
        from fl.cost import costed_config
        from testbed.planning import build_problem

        cfg = self.config
        t0 = time.monotonic()
        self._price_workload()  # before any device opens: can fl.rounds be paid for at all?
        self.lab = build_lab(cfg, self.rng)
        try:
            # The planner prices this workload: cycles/sample of the model, tau of fl.training.
            self.problem = build_problem(costed_config(self.config, self.cost), self.lab.channel)
            self.base_constants = self.problem.bound
            if not self.resume:
                self.recorder.start(
                    name=cfg.run.name,
                    scheme=self.scheme,
                    bound_constants=self.problem.bound.to_record(),
                    num_clients=cfg.lab.clients.count,
                    num_antennas=cfg.lab.num_antennas,
                    region_m=cfg.lab.array.region_m,
                    wavelength_m=cfg.lab.array.wavelength_m,
                    min_spacing_m=cfg.lab.array.min_spacing_m,
                    rounds=cfg.fl.rounds,
                    stages=self.lab.stages.names,
                    backends=self.lab.describe(),
                )
                self.recorder.event("cost_model", **self.cost.to_record(), **self.cost_floor)
                self._refuse_unpayable()
                self._home()
                self.recorder.event("homed", positions_m=self.lab.antenna_positions().tolist())
                if self.whole_run_plan:
                    self.whole_run = WholeRunPlan.start(self.problem, self.recorder)
            else:
                # A new start document, as a resumed campaign writes: every event sits between a
                # start and its stop, and the old run's stop (interrupted, failed) stays as it was.
                self.recorder.start(
                    name=cfg.run.name,
                    scheme=self.scheme,
                    resumed=True,
                    completed_rounds=sorted(self.done_rounds),
                    num_antennas=cfg.lab.num_antennas,
                    region_m=cfg.lab.array.region_m,
                    min_spacing_m=cfg.lab.array.min_spacing_m,
                    rounds=cfg.fl.rounds,
                    stages=self.lab.stages.names,
                    backends=self.lab.describe(),
                )
                self._refuse_unpayable()
                self._home()
                if self.state.positions_m is not None:
                    # The antennas go back where the last completed round left them, as if never stopped.
                    self.lab.move_antennas(self.state.positions_m)
            self.comparison = FixedArrayComparison(
                self.lab.air, self.lab.fixed_air, cfg.lab.clients.tx_power_w
            )
            self._federate()
        except KeyboardInterrupt:
            self._whole_run_abandon()
            self.live.flush()
            self.recorder.stop(
                "interrupted", reason="Ctrl-C: stages stopped, radios closed; --resume continues"
            )
            raise
        except Exception as exc:
            self._whole_run_abandon()
            if isinstance(exc, StageAlarm) and self.lab is not None:
                self.live.stages(
                    self.lab.stages.names, "alarm", self._last_positions(), alarm=exc.code, force=True
                )
            self.live.flush()
            self.recorder.stop("failed", reason=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.lab.close()
        summary = self.summarize(time.monotonic() - t0)
        if self.stopped is not None:
            # A clean stop between rounds: the last round is checkpointed; --resume continues.
            self._whole_run_abandon()
            summary["stopped"] = self.stopped
            self.live.flush()
            self.recorder.stop("stopped", reason=f"{self.stopped}; --resume continues")
        else:
            self._whole_run_finish()
            self.live.flush()
            if self.budget_end is not None:
                summary["budget_end"] = self.budget_end
            self.recorder.stop("success", reason=self.budget_end or "")
        self.recorder.write_summary(summary)
        return summary

    def _whole_run_finish(self) -> None:
        if self.whole_run is not None:
            self.whole_run.finish()
            self.whole_run = None

    def _whole_run_abandon(self) -> None:
        if self.whole_run is not None:
            self.whole_run.abandon()
            self.whole_run = None

    def _home(self) -> None:
        assert self.lab is not None
        names = self.lab.stages.names
        self.live.stages(names, "homing", self._last_positions(), force=True)
        self.lab.home()
        self.live.stages(names, "idle", self.lab.antenna_positions(), force=True)

    def _last_positions(self) -> list[list[float]]:
        """Where the antennas were last seen (the stages may not answer now: homing, alarm)."""
        if self.state.positions_m is not None:
            return np.asarray(self.state.positions_m).tolist()
        return [[float("nan"), float("nan")]] * self.config.lab.num_antennas

    def _federate(self) -> None:
        """The coordinator and its nodes run the rounds; the planner and on_round are ours."""
        from fl.runner import LocalFederation

        cfg = self.config
        federation = LocalFederation(
            cfg,
            self.recorder.run_dir / "fl",
            air=self.comparison,
            planner=self.plan,
            on_round=self.on_round,
            on_event=self.live.forward,
            resume=self.resume,
            node_mode=self.node_mode,
            bind=cfg.fl.transport.bind if self.remote_nodes else "tcp://127.0.0.1:*",
            radio_clock=getattr(self.lab.air, "time_now", None),  # the radios' time, on the radio path
        )
        self.federation = federation
        federation.coordinator.should_stop = self._should_stop
        try:
            if self.remote_nodes:
                log.info("waiting for %d nodes on %s", cfg.lab.clients.count, cfg.fl.transport.bind)
                federation.coordinator.run()
            else:
                federation.run()
        finally:
            # A dry run's nodes are our own processes: none may outlive the run, whatever ended it.
            for process in federation.processes.values():
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=10)
        # The budgets' end is a finished run, not a stop that --resume continues.
        self.stopped = None if self.budget_end is not None else federation.coordinator.stopped

    # --- the cost model of the model that trains (fl.cost) -------------------------------------
    def _price_workload(self) -> None:
        """Derive cycles/sample from the model and data; refuse fl.rounds the budgets cannot pay."""
        from fl.cost import check_rounds, resumed_cost, workload_cost

        try:
            self.cost = workload_cost(self.config)
            if self.resume:  # continue the calibration where the run left it
                self.cost = resumed_cost(self.cost, [d["data"] for d in self.recorder.events("round")])
            floor = check_rounds(self.config, self.cost)
        except Exception as exc:
            self.live.flush()
            self.recorder.stop("failed", reason=f"{type(exc).__name__}: {exc}")
            raise
        self.cost_floor = floor  # recorded once the run's start document is written

    def _calibrate(self, nodes: dict[str, Any]) -> dict[str, Any]:
        """Fold the nodes' measured tokens/s into the cost model; the next plan prices with it."""
        import dataclasses

        from allocation import AllocationError

        self.cost = self.cost.calibrated(nodes.values(), self.config.allocation.clock_max_hz)
        c = self.cost.cycles_per_sample
        if c != self.problem.cycles_per_sample:
            try:
                self.problem = dataclasses.replace(self.problem, cycles_per_sample=c)
            except AllocationError as exc:
                # The whole budget cannot pay a round at the measured cost, so what is left cannot.
                self.unpayable = f"priced at the nodes' measured {c:.4g} cycles/sample, allocation.{exc}"
        return self.cost.to_record()

    def summarize(self, wall_s: float) -> dict[str, Any]:
        return summarize_run(
            self.config, self.scheme, [d["data"] for d in self.recorder.events("round")], wall_s
        )


def run_experiment(
    config: TestbedConfig,
    resume_dir: str | Path | None = None,
    remote_nodes: bool = False,
    progress: Callable[[int, int], None] | None = None,
    scheme: str | None = None,
    node_mode: str = "fork",
    whole_run_plan: bool = True,
    report: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Run (or resume) an experiment; return its run directory and summary.

    ``scheme`` (``SCHEMES``; default ours) is whose plan every round uses; a resumed run keeps the
    scheme it started with, and naming another one is an error.

    ``remote_nodes``: start no local node processes; wait on ``fl.transport.bind`` for nodes
    started with ``testbed node`` on other hosts (keys from ``testbed keys``).
    """
    from testbed.config import to_yaml
    from testbed.preflight import check_run_config

    check_run_config(config)  # what `testbed check` checks, before a run directory exists
    if resume_dir is not None:
        recorder = RunRecorder.reopen(resume_dir)
        scheme = resumed_scheme(recorder, scheme)
    else:
        scheme = scheme or "ours"
        config = scheme_config(config, scheme)  # a bad name fails before the run directory exists
        recorder = RunRecorder.create(config.run.output_dir, config.run.name, to_yaml(config))
    recorder.attach_log(config.run.log_level)
    log.info("run directory: %s", recorder.run_dir)
    try:
        summary = Experiment(
            config,
            recorder,
            resume=resume_dir is not None,
            remote_nodes=remote_nodes,
            progress=progress,
            scheme=scheme,
            node_mode=node_mode,
            whole_run_plan=whole_run_plan,
        ).run()
        if report:
            from testbed.report import write_report

            write_report(recorder.run_dir)
        return recorder.run_dir, summary
    finally:
        recorder.close()
