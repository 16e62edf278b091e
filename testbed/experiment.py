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
from the round events already on disk.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from allocation.aircomp import effective_channels, power_scale, zero_forcing_scalars
from allocation.beamformer import optimize_beamformer
from drivers.errors import ConfigError, PlanError, StageLimitError
from testbed.config import TestbedConfig
from testbed.lab import Lab, build_lab
from testbed.records import RunRecorder, read_events

log = logging.getLogger(__name__)


def db(x: float) -> float:
    return 10.0 * math.log10(x) if x > 0 else float("-inf")


def optimal_precoding(
    channels: np.ndarray, power_w: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """The min-MSE unit-norm combiner for these channels, with its zero-forcing b_k and eta."""
    m = optimize_beamformer(effective_channels(channels, power_w, weights)).combiner
    m = m / np.linalg.norm(m)
    eta = power_scale(m, channels, power_w, weights)
    return m, zero_forcing_scalars(m, channels, weights, eta), eta


class FixedArrayComparison:
    """An AirLink that forwards to the live air and replays every slot through a fixed array.

    The coordinator sees the live air only. Each burst's symbols are kept, and at ``collect`` the
    same symbols go through ``fixed_air`` (the same channel model with the antennas on the
    lambda/2 grid) with that array's own optimal combiner and precoding. Both estimates of
    sum_k phi_k s_k are scored against the true sum, so ``last`` holds the two NMSEs of one round
    on identical updates.
    """

    def __init__(self, air: Any, fixed_air: Any | None, power_w: float) -> None:
        self.air = air
        self.fixed_air = fixed_air  # None: no fixed array to compare with (real radios)
        self.power_w = float(power_w)
        self.weights: dict[int, float] = {}
        self.last: dict[str, float] = {}
        self._symbols: dict[int, np.ndarray] = {}
        self._estimates: dict[int, np.ndarray] = {}  # the channels the coordinator precoded on

    @property
    def num_antennas(self) -> int:
        return self.air.num_antennas

    @property
    def noise_power_w(self) -> float:
        return self.air.noise_power_w

    def estimate_channels(self, clients: list[int]) -> np.ndarray:
        h = self.air.estimate_channels(clients)
        self._estimates.update({int(k): row for k, row in zip(clients, h, strict=True)})
        return h

    def send(self, client: int, symbols: np.ndarray, scale: complex, at_s: float) -> None:
        self._symbols[int(client)] = np.asarray(symbols)
        self.air.send(client, symbols, scale, at_s)

    def collect(self, num_symbols: int, at_s: float, combiner: np.ndarray) -> np.ndarray:
        y = self.air.collect(num_symbols, at_s, combiner)
        clients = sorted(self._symbols)
        symbols, self._symbols = self._symbols, {}
        if not clients or self.fixed_air is None:
            return y
        phi = np.array([self.weights.get(k, 1.0) for k in clients])
        power = np.full(len(clients), self.power_w)
        truth = sum(phi[i] * symbols[k][:num_symbols] for i, k in enumerate(clients))
        signal = float(np.sum(np.abs(truth) ** 2))
        # The live array, as the coordinator precoded it (zero forcing on these channels).
        eta = power_scale(combiner, np.array([self._estimates[k] for k in clients]), power, phi)
        live_err = float(np.sum(np.abs(y / np.sqrt(eta) - truth) ** 2))
        # The fixed array, with its own best combiner, on the very same symbols.
        h_fixed = self.fixed_air.estimate_channels(clients)
        m_fixed, b_fixed, eta_fixed = optimal_precoding(h_fixed, power, phi)
        for i, k in enumerate(clients):
            self.fixed_air.send(k, symbols[k], b_fixed[i], at_s)
        y_fixed = self.fixed_air.collect(num_symbols, at_s, m_fixed)
        fixed_err = float(np.sum(np.abs(y_fixed / np.sqrt(eta_fixed) - truth) ** 2))
        noise = self.noise_power_w
        self.last = {
            "nmse_symbols_db": db(live_err / signal),
            "nmse_fpa_db": db(fixed_err / signal),
            "mse_theory_live": noise * float(np.sum(np.abs(combiner) ** 2)) / eta,
            "mse_theory_fpa": self.fixed_air.noise_power_w / eta_fixed,  # the fixed air has its own noise
            "signal_per_symbol": signal / num_symbols,
        }
        return y


@dataclass
class PlannerState:
    """What the per-round planner carries between rounds (rebuilt from events on resume)."""

    counts: np.ndarray
    positions_m: np.ndarray | None = None
    latency_spent_s: float = 0.0
    energy_spent_j: float = 0.0
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_rounds(cls, num_clients: int, rounds: list[dict[str, Any]]) -> PlannerState:
        state = cls(counts=np.zeros(num_clients, dtype=int))
        for r in sorted(rounds, key=lambda r: r["round"]):
            for k in r.get("selected", []):
                state.counts[k] += 1
            if r.get("positions_m") is not None:
                state.positions_m = np.asarray(r["positions_m"], dtype=float)
            state.latency_spent_s += float(r.get("latency_model_s") or 0.0)
            state.energy_spent_j += float(r.get("energy_model_j") or 0.0)
        return state


# --- schemes: which plan drives the whole run ------------------------------------------------
SCHEMES = ("ours", "fpa", "random_placement", "non_ma", "digital")


def scheme_strategy(scheme: str) -> Any:
    """The allocation Strategy a scheme re-plans with each round (ours: the full method)."""
    from allocation import BASELINES, Strategy

    if scheme not in SCHEMES:
        raise ConfigError(f"--scheme: {scheme!r} is not a scheme; allowed: {', '.join(SCHEMES)}")
    return Strategy() if scheme == "ours" else BASELINES[scheme]


def scheme_config(config: TestbedConfig, scheme: str) -> TestbedConfig:
    """The config a scheme's run uses: digital aggregates error-free (FedAvg), the rest over the air."""
    scheme_strategy(scheme)  # validates the name
    if scheme != "digital" or config.fl.aggregation == "digital":
        return config
    config = config.model_copy(deep=True)
    config.fl.aggregation = "digital"
    return config


def at_max_clock(problem: Any, rp: Any) -> Any:
    """``rp`` with every client at f_max and the largest batch (the non-MA baseline's resources).

    ``plan_round`` sizes clocks and batches to the round's deadline; a max-clock strategy instead
    runs flat out, so its compute time and energy follow from f_max (MODEL.md 3).
    """
    from dataclasses import replace

    from allocation.problem import compute_energy_j

    s = np.asarray(rp.selected, dtype=int)
    f = problem.clock_max[s]
    b = np.full(len(s), int(problem.batch_max))
    air_e = rp.energy_j - float(
        np.sum(compute_energy_j(problem.switched_capacitance, problem.local_steps, problem.cycles[s],
                                np.asarray(rp.batches), np.asarray(rp.clocks_hz)))
    )  # fmt: skip
    comp_e = float(
        np.sum(compute_energy_j(problem.switched_capacitance, problem.local_steps, problem.cycles[s], b, f))
    )
    comp_s = float(np.max(problem.local_steps * problem.cycles[s] * b / f))
    return replace(
        rp,
        clocks_hz=[float(v) for v in f],
        batches=[int(v) for v in b],
        compute_s=comp_s,
        energy_j=comp_e + air_e,
    )


class UpdateNorms:
    """Feeds the bound's UpdateNormTracker each round and gives the current bound constants.

    The nodes' own reports (``update_sq_norms`` {node: ||Delta_k||^2} and ``aggregate_sq_norm``
    in the coordinator's round record) are used when present; otherwise the aggregate's squared
    norm is measured here from the change of the global adapter's aggregated tensors.
    """

    def __init__(self, lora_mode: str) -> None:
        from allocation import UpdateNormTracker

        self.tracker = UpdateNormTracker()
        self.lora_mode = lora_mode
        self._previous: dict[str, np.ndarray] | None = None

    def snapshot(self, adapter: Any) -> None:
        from fl.aggregation import payload_names

        names = payload_names(list(adapter), self.lora_mode)
        self._previous = {n: np.array(adapter[n], dtype=np.float64) for n in names}

    def observe(self, fl_record: dict[str, Any], adapter: Any | None) -> dict[str, Any]:
        """Fold in one round; return what was observed (for the round record)."""
        clients = {int(k): float(v) for k, v in (fl_record.get("update_sq_norms") or {}).items()}
        aggregate = fl_record.get("aggregate_sq_norm")
        if aggregate is None and adapter is not None and self._previous is not None:
            aggregate = float(
                sum(np.sum((np.asarray(adapter[n], np.float64) - v) ** 2) for n, v in self._previous.items())
            )
        if adapter is not None:
            self.snapshot(adapter)
        if aggregate is None or not math.isfinite(float(aggregate)):
            return {}
        self.tracker.observe(clients, float(aggregate))
        return {"update_sq_norms": clients or None, "aggregate_sq_norm": float(aggregate)}

    def constants(self, base: Any) -> Any:
        """``base`` (the config's constants) with G^2 and zeta^2 as estimated so far."""
        estimates = self.tracker.estimates()
        return base.with_estimates("estimated", **estimates) if estimates else base


class Experiment:
    """The per-round loop of ``testbed run`` around ``fl.runner.LocalFederation``."""

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
        """``scheme``: whose plan drives every round (``SCHEMES``); ``node_mode``: how local nodes
        run (``fl.runner.LocalFederation``); ``whole_run_plan``: also solve the whole-run plan
        beside every baseline for the report (a compare cell skips it: its report compares runs)."""
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
        self.norms = UpdateNorms(config.fl.lora.mode)
        for r in sorted(rounds, key=lambda r: r["round"]):  # resume: the estimates so far
            if r.get("aggregate_sq_norm") is not None:
                self.norms.tracker.observe(
                    {int(k): v for k, v in (r.get("update_sq_norms") or {}).items()}, r["aggregate_sq_norm"]
                )
        self.federation: Any = None
        self.done_rounds = {r["round"] for r in rounds}

    # --- the per-round planner the coordinator calls ------------------------------------------
    def plan(self, r: int, _channels: np.ndarray | None, available: list[int]) -> Any:
        from allocation import AllocationError, plan_round
        from fl.coordinator import RoundPlan
        from fl.training import cosine_lr

        assert self.lab is not None and self.comparison is not None
        cfg, alloc = self.config, self.config.allocation
        t0 = time.monotonic()
        remaining = max(1, cfg.fl.rounds - r + 1)
        # Each re-plan sees the bound's constants with G^2 and zeta^2 as estimated so far.
        self.problem.bound = self.norms.constants(self.base_constants)
        try:
            rp = plan_round(
                self.problem,
                r,
                self.state.counts,
                self.state.positions_m,
                alloc.latency_budget_s - self.state.latency_spent_s,
                alloc.energy_budget_j - self.state.energy_spent_j,
                remaining,
                self.rng,
                strategy=self.strategy,
            )
            if self.strategy.resources == "max_clock":
                rp = at_max_clock(self.problem, rp)
        except AllocationError as exc:  # e.g. the budgets are spent: stop cleanly, say why
            raise PlanError(f"round {r}: no feasible plan: {exc}") from exc
        selected = [k for k in rp.selected if k in available]
        if len(selected) < len(rp.selected):  # a planned node is down: take the strongest live ones
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
        t_move = time.monotonic()
        reached = self._move_or_stay(r, np.asarray(rp.positions_m))
        move_wall_s = time.monotonic() - t_move
        batch_of = dict(zip(rp.selected, rp.batches, strict=True))
        clock_of = dict(zip(rp.selected, rp.clocks_hz, strict=True))
        batch = {
            k: int(min(batch_of.get(k, cfg.fl.training.batch_size), cfg.fl.training.batch_size))
            for k in selected
        }
        weights = {k: float(batch[k]) for k in selected}
        power = np.full(len(selected), cfg.lab.clients.tx_power_w)
        h = self.lab.air.estimate_channels(selected)  # at the positions the stages reached
        m, b, eta = optimal_precoding(h, power, np.array([weights[k] for k in selected]))
        self.comparison.weights = weights
        self.state.pending[r] = {
            "positions_m": reached.tolist(),
            "planned_positions_m": rp.positions_m,
            "latency_model_s": rp.move_s + rp.compute_s + rp.air_s,
            "energy_model_j": rp.energy_j,
            "move_model_s": rp.move_s,
            "move_wall_s": move_wall_s,
            "plan_wall_s": time.monotonic() - t0,
            "mse_predicted": rp.mse,
            "bound_constants": self.problem.bound.to_record(),
            "eta": eta,
            "clocks_hz": [clock_of.get(k, alloc.clock_max_hz) for k in selected],
        }
        return RoundPlan(
            round=r,
            selected=selected,
            local_steps=cfg.fl.training.local_steps,
            lr=cosine_lr(r, cfg.fl.rounds, cfg.fl.training.lr, cfg.fl.training.lr_min),
            batch=batch,
            clock_hz={k: float(clock_of.get(k, alloc.clock_max_hz)) for k in selected},
            weights=weights,
            combiner=m,
            b_k=dict(zip(selected, b, strict=True)),
            extra={"mse_predicted": rp.mse, "move_model_s": rp.move_s},
        )

    def _move_or_stay(self, r: int, positions_m: np.ndarray) -> np.ndarray:
        """Move the antennas to the plan's positions; where the stages find no collision-free
        route (refused before anything moves), the round runs where the antennas are, and the
        record shows it (positions_m against planned_positions_m)."""
        assert self.lab is not None
        try:
            return self.lab.move_antennas(positions_m)
        except StageLimitError as exc:
            log.warning("round %d: the antennas stay where they are: %s", r, exc)
            reached = self.lab.antenna_positions()
            self.lab.air.set_positions(reached)
            return reached

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
        coordinator = getattr(self.federation, "coordinator", None)
        norms = self.norms.observe(fl_record, getattr(coordinator, "global_adapter", None))
        air = self.comparison.last
        signal = air.get("signal_per_symbol")
        nodes = fl_record.get("nodes", {})
        measured = [n.get("energy_j") for n in nodes.values() if n.get("energy_source") == "nvml"]
        record = {
            "round": r,
            "scheme": self.scheme,
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
            "latency_wall_s": float(fl_record.get("round_time_s", 0.0)) + extra.get("move_wall_s", 0.0),
            "energy_measured_j": float(sum(measured)) if measured else None,
            "jain_fairness": fl_record.get("jain_fairness"),
            "num_clients": self.config.lab.clients.count,
            **norms,
            **extra,
        }
        self.recorder.event("round", **record)
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
        from fl.runner import LocalFederation
        from testbed.planning import build_problem

        cfg = self.config
        t0 = time.monotonic()
        self.lab = build_lab(cfg, self.rng)
        try:
            self.problem = build_problem(cfg, self.lab.channel)
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
                    backends=self.lab.describe(),
                )
                self.lab.home()
                self.recorder.event("homed", positions_m=self.lab.antenna_positions().tolist())
                if self.whole_run_plan:
                    self._record_whole_run_plan()
            else:
                self.lab.home()
                self.recorder.event("resumed", completed_rounds=sorted(self.done_rounds))
            self.comparison = FixedArrayComparison(
                self.lab.air, self.lab.fixed_air, cfg.lab.clients.tx_power_w
            )
            federation = LocalFederation(
                cfg,
                self.recorder.run_dir / "fl",
                air=self.comparison,
                planner=self.plan,
                on_round=self.on_round,
                resume=self.resume,
                node_mode=self.node_mode,
                bind=cfg.fl.transport.bind if self.remote_nodes else "tcp://127.0.0.1:*",
                radio_clock=getattr(self.lab.air, "time_now", None),  # the radios' time, on the radio path
            )
            self.federation = federation
            self.norms.snapshot(federation.coordinator.global_adapter)
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
        except KeyboardInterrupt:
            self.recorder.stop(
                "interrupted", reason="Ctrl-C: stages stopped, radios closed; --resume continues"
            )
            raise
        except Exception as exc:
            self.recorder.stop("failed", reason=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.lab.close()
        self._finish_whole_run_plan()
        summary = self.summarize(time.monotonic() - t0)
        self.recorder.stop("success")
        self.recorder.write_summary(summary)
        return summary

    def _record_whole_run_plan(self) -> None:
        """Solve the whole-run allocation once, beside every baseline, for the report."""
        from allocation import AllocationError, solve, solve_baselines

        def row(plan: Any) -> dict[str, Any]:
            return {
                "feasible": plan.feasible,
                "rounds": plan.rounds,
                "energy_j": plan.energy_j,
                "latency_s": plan.latency_s,
                "mse_db": db(float(np.mean([rp.mse for rp in plan.round_plans])))
                if plan.round_plans
                else None,
                "bound": plan.bound,
                "violations": plan.violations,
            }

        try:
            ours = solve(self.problem)
        except AllocationError as exc:
            self.recorder.event("plan", error=str(exc))
            log.warning("whole-run plan: %s", exc)
            return
        # The baselines are only for the report: they run in a separate process beside the rounds,
        # never before the first one; the event is written when they are done (see run()).
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))
        future = pool.submit(solve_baselines, self.problem)
        pool.shutdown(wait=False)

        def record(done: Any) -> None:
            try:
                baselines = done.result()
            except Exception as exc:  # noqa: BLE001 - a failed comparison must not sink the run
                error = f"{type(exc).__name__}: {exc}"
                self.recorder.event(
                    "plan", optimized=row(ours), constants=ours.constants, baselines_error=error
                )
                return
            rows = {k: row(v) for k, v in baselines.items()}
            self.recorder.event("plan", optimized=row(ours), constants=ours.constants, baselines=rows)

        self._whole_run_baselines = (future, record)

    def _finish_whole_run_plan(self) -> None:
        """Wait for the baselines started by ``_record_whole_run_plan`` and record the plan event."""
        pending = getattr(self, "_whole_run_baselines", None)
        if pending is not None:
            self._whole_run_baselines = None
            future, record = pending
            record(future)

    def summarize(self, wall_s: float) -> dict[str, Any]:
        rounds = [d["data"] for d in self.recorder.events("round")]
        rounds = list({r["round"]: r for r in rounds}.values())

        def mean_of(key: str) -> float | None:
            vals = [r[key] for r in rounds if r.get(key) is not None and math.isfinite(r[key])]
            return float(np.mean(vals)) if vals else None

        last = max(rounds, key=lambda r: r["round"]) if rounds else {}
        live, fixed = mean_of("nmse_live_symbols_db"), mean_of("nmse_fpa_db")
        digital = self.config.fl.aggregation == "digital"
        return {
            "scheme": self.scheme,
            "rounds": len(rounds),
            "final_val_loss": last.get("val_loss"),
            "final_val_ppl": last.get("val_ppl"),
            "first_val_loss": min(rounds, key=lambda r: r["round"]).get("val_loss") if rounds else None,
            "mean_nmse_db": float("-inf") if digital else mean_of("nmse_db"),
            "mean_nmse_ma_db": live,
            "mean_nmse_fpa_db": fixed,
            "ma_gain_over_fpa_db": (fixed - live) if live is not None and fixed is not None else None,
            "latency_model_s": float(sum(r.get("latency_model_s") or 0 for r in rounds)),
            "energy_model_j": float(sum(r.get("energy_model_j") or 0 for r in rounds)),
            "wall_s": wall_s,
            "num_clients": self.config.lab.clients.count,
            "region_m": self.config.lab.array.region_m,
            "lora_mode": self.config.fl.lora.mode,
        }


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


def resumed_scheme(recorder: RunRecorder, requested: str | None) -> str:
    """The scheme a run started with (its start document); another one requested is an error."""
    starts = [d for d in read_events(recorder.events_path) if d.get("doc") == "start"]
    started = str(starts[0].get("scheme", "ours")) if starts else (requested or "ours")
    if requested is not None and requested != started:
        raise ConfigError(
            f"--scheme: {recorder.run_dir} ran scheme {started!r}; it resumes with that one (got {requested!r})"
        )
    return started
