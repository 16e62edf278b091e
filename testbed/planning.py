"""From a TestbedConfig to an allocation Problem, and the parameter-sweep runner.

``build_problem`` maps the config (``allocation``, ``lab.array``, ``lab.clients``, ``lab.medium``,
the stages' speeds) onto ``allocation.Problem``, with the sim's field-response channel when no
channel is given. ``run_sweep`` solves a grid of parameter values over several channel draws in
parallel: local processes by default (concurrent.futures), or Ray / Dask when
``allocation.sweep_engine`` names one and it is importable.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from drivers.errors import ConfigError
from testbed.config import StageSection, TestbedConfig, validate
from testbed.world import draw_channel, noise_power_w

# Sweepable parameters: short name -> (description, how to set it on the config dict).
SWEEP_KEYS: dict[str, str] = {
    "N": "receive antennas (number of stages)",
    "K": "allocation.clients_per_round",
    "U": "lab.clients.count",
    "A": "lab.array.region_wavelengths (A / lambda)",
    "D": "lab.array.min_spacing_wavelengths",
    "latency": "allocation.latency_budget_s",
    "energy": "allocation.energy_budget_j",
    "L": "lab.medium.paths",
}
SWEEP_BASELINES = ("fpa", "random_placement", "non_ma", "max_clock")


def default_channel(config: TestbedConfig) -> Any:
    """What positions are planned on: the measured map of ``allocation.channel_map`` (a
    campaign's run directory or table) when given, else the sim's field-response world of this
    config (the same draw ``testbed run`` uses)."""
    if config.allocation.channel_map:
        from testbed.channel_map import load_channel_map

        return load_channel_map(config.allocation.channel_map)
    return draw_channel(config)


def build_problem(config: TestbedConfig, channel: Any | None = None, initial_positions_m: Any = None) -> Any:
    """An ``allocation.Problem`` for this config; ``channel`` defaults to ``default_channel``."""
    from allocation import AllocationError, BoundConstants, Problem

    lab, alloc = config.lab, config.allocation
    channel = default_channel(config) if channel is None else channel
    speed = min(s.max_speed_m_s for s in lab.stages.values())
    # A constant that differs from its default is recorded as "config", the rest as "default"
    # (by value, not by which keys were written: a resumed run reads a fully resolved config.yaml).
    defaults = type(alloc.bound).model_fields
    given = {name for name in defaults if getattr(alloc.bound, name) != defaults[name].default}
    bound = BoundConstants(**alloc.bound.model_dump(), sources=dict.fromkeys(given, "config"))
    try:
        return Problem(
            channel=channel,
            num_antennas=lab.num_antennas,
            wavelength_m=lab.array.wavelength_m,
            region_m=lab.array.region_m,
            min_spacing_m=lab.array.min_spacing_m,
            noise_power_w=noise_power_w(config),
            power_w=lab.clients.tx_power_w,
            clients_per_round=alloc.clients_per_round,
            latency_budget_s=alloc.latency_budget_s,
            energy_budget_j=alloc.energy_budget_j,
            max_rounds=alloc.max_rounds,
            local_steps=alloc.local_steps,
            batch_max=alloc.batch_max,
            clock_max_hz=alloc.clock_max_hz,
            switched_capacitance=alloc.switched_capacitance,
            cycles_per_sample=alloc.cycles_per_sample,
            bandwidth_hz=alloc.bandwidth_hz,
            payload_reals=alloc.payload_reals,
            air_overhead_s=alloc.air_overhead_s,
            stage_speed_m_s=speed,
            initial_positions_m=initial_positions_m,
            selection=alloc.selection,
            fairness_floor=alloc.fairness_floor,
            bound=bound,
            position_starts=alloc.position_starts,
            max_outer_iterations=alloc.max_outer_iterations,
            tolerance=alloc.tolerance,
            beamformer_solver=alloc.beamformer_solver,
            seed=config.run.seed,
        )
    except AllocationError as exc:  # bad or infeasible numbers in the config
        raise ConfigError(f"allocation: {exc}") from None


# --- sweeps -------------------------------------------------------------------------------------
def parse_sweep(spec: str) -> dict[str, list[float]]:
    """'N=4,8;K=2,4;A=2,4' -> {'N': [4, 8], 'K': [2, 4], 'A': [2, 4]} (';' or spaces between)."""
    out: dict[str, list[float]] = {}
    for part in [p for chunk in spec.split(";") for p in chunk.split()]:
        if "=" not in part:
            raise ConfigError(f"--sweep {spec!r}: expected NAME=v1,v2,... (got {part!r})")
        name, values = part.split("=", 1)
        name = name.strip()
        if name not in SWEEP_KEYS:
            raise ConfigError(f"--sweep: unknown parameter {name!r}; allowed: {', '.join(SWEEP_KEYS)}")
        try:
            vals = [float(v) for v in values.split(",") if v.strip()]
        except ValueError as exc:
            raise ConfigError(f"--sweep {name}: values must be numbers (got {values!r})") from exc
        if not vals:
            raise ConfigError(f"--sweep {name}: no values given")
        out[name] = vals
    if not out:
        raise ConfigError(f"--sweep {spec!r}: nothing to sweep")
    return out


def apply_point(data: dict[str, Any], params: dict[str, float], seed: int) -> dict[str, Any]:
    """A config dict with one sweep point and one channel-draw seed applied."""
    data = json.loads(json.dumps(data))
    data["run"]["seed"] = int(seed)
    for name, value in params.items():
        if name == "N":
            data["lab"]["stages"] = {
                f"ma{i}": StageSection().model_dump(mode="json") for i in range(int(value))
            }
        elif name == "K":
            data["allocation"]["clients_per_round"] = int(value)
        elif name == "U":
            data["lab"]["clients"]["count"] = int(value)
        elif name == "A":
            data["lab"]["array"]["region_wavelengths"] = float(value)
        elif name == "D":
            data["lab"]["array"]["min_spacing_wavelengths"] = float(value)
        elif name == "latency":
            data["allocation"]["latency_budget_s"] = float(value)
        elif name == "energy":
            data["allocation"]["energy_budget_j"] = float(value)
        elif name == "L":
            data["lab"]["medium"]["paths"] = int(value)
    return data


def sweep_task(
    config_data: dict[str, Any], params: dict[str, float], seed: int, baselines: tuple[str, ...]
) -> dict:
    """One sweep point on one channel draw: ours and the baselines, as a flat row (picklable)."""
    from allocation import AllocationError, solve, solve_baseline

    row: dict[str, Any] = {**params, "seed": seed}
    try:
        config = validate(apply_point(config_data, params, seed), "<sweep>")
        problem = build_problem(config)
        shared: dict = {}
        plans = {"ours": solve(problem, shared)}
        for name in baselines:
            plans[name] = solve_baseline(problem, name, shared=shared)
    except (AllocationError, ConfigError) as exc:
        row["error"] = str(exc)
        return row
    for name, plan in plans.items():
        row[f"{name}.feasible"] = plan.feasible
        row[f"{name}.rounds"] = plan.rounds
        row[f"{name}.energy_j"] = plan.energy_j if plan.feasible else None
        row[f"{name}.latency_s"] = plan.latency_s if plan.feasible else None
        row[f"{name}.mse_db"] = (
            10 * math.log10(plan.mean_mse) if plan.feasible and plan.mean_mse > 0 else None
        )
        row[f"{name}.bound"] = plan.bound.get("total")
        row[f"{name}.solve_s"] = plan.solve_s
    return row


def _engine_map(engine: str, workers: int) -> Callable[[list[tuple]], list[dict]]:
    if engine == "local":

        def run_local(tasks: list[tuple]) -> list[dict]:
            if workers <= 1:
                return [sweep_task(*t) for t in tasks]
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=workers) as pool:
                return list(pool.map(sweep_task, *zip(*tasks, strict=True)))

        return run_local
    if engine == "ray":
        try:
            import ray
        except ImportError as exc:
            raise ConfigError(
                "allocation.sweep_engine='ray' but ray is not installed: pip install ray, or set sweep_engine=local"
            ) from exc

        def run_ray(tasks: list[tuple]) -> list[dict]:
            if not ray.is_initialized():
                ray.init(address="auto" if _ray_cluster_configured() else None, ignore_reinit_error=True)
            remote = ray.remote(sweep_task)
            return ray.get([remote.remote(*t) for t in tasks])

        return run_ray
    if engine == "dask":
        try:
            from dask.distributed import Client
        except ImportError as exc:
            raise ConfigError(
                "allocation.sweep_engine='dask' but dask.distributed is not installed: "
                "pip install 'dask[distributed]', or set sweep_engine=local"
            ) from exc

        def run_dask(tasks: list[tuple]) -> list[dict]:
            import os

            address = os.environ.get("DASK_SCHEDULER_ADDRESS")
            with Client(address) if address else Client(n_workers=workers) as client:
                futures = [client.submit(sweep_task, *t, pure=False) for t in tasks]
                return client.gather(futures)

        return run_dask
    raise ConfigError(f"allocation.sweep_engine must be local, ray or dask (got {engine!r})")


def _ray_cluster_configured() -> bool:
    import os

    return bool(os.environ.get("RAY_ADDRESS"))


def run_sweep(
    config: TestbedConfig,
    grid: dict[str, list[float]],
    draws: int = 3,
    baselines: tuple[str, ...] = SWEEP_BASELINES,
    engine: str | None = None,
    workers: int | None = None,
) -> list[dict[str, Any]]:
    """Every point of the grid (the product of the values) on ``draws`` channel draws."""
    if draws < 1:
        raise ConfigError(f"--draws must be >= 1 (got {draws})")
    engine = engine or config.allocation.sweep_engine
    workers = workers or config.allocation.sweep_workers
    data = config.model_dump(mode="json")
    names = list(grid)
    tasks = []
    for values in itertools.product(*(grid[n] for n in names)):
        params = dict(zip(names, values, strict=True))
        for d in range(draws):
            tasks.append((data, params, config.run.seed * 1000 + d, tuple(baselines)))
    return _engine_map(engine, workers)(tasks)


def plot_sweep(rows: list[dict[str, Any]], grid: dict[str, list[float]], out_dir: Path) -> list[Path]:
    """One PNG per swept parameter: median MSE, energy and rounds of ours vs the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    methods = sorted({k.split(".")[0] for r in rows for k in r if "." in k})
    paths = []
    for name in grid:
        xs = sorted(grid[name])
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        for metric, ax in zip(("mse_db", "energy_j", "rounds"), axes, strict=True):
            for method in methods:
                ys = []
                for x in xs:
                    vals = [r.get(f"{method}.{metric}") for r in rows if r.get(name) == x]
                    vals = [v for v in vals if v is not None and np.isfinite(v)]
                    ys.append(float(np.median(vals)) if vals else np.nan)
                ax.plot(xs, ys, marker="o", label=method)
            ax.set_xlabel(f"{name}: {SWEEP_KEYS[name]}")
            ax.set_ylabel(
                {"mse_db": "mean OTA MSE (dB)", "energy_j": "energy (J)", "rounds": "rounds R"}[metric]
            )
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"sweep_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
