"""`testbed plan CONFIG`: solve the allocation problem and print it beside every baseline.

``--sweep 'N=4,8;K=2,4'`` instead solves a parameter grid over channel draws in parallel
(``allocation.sweep_engine``: local processes, Ray or Dask) and saves PNG plots to ``--out``.
``--json`` prints machine-readable output.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from testbed.commands import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--sweep", metavar="SPEC", help="grid to sweep, e.g. 'N=4,8;K=2,4;A=2,4;latency=3e4,6e4'"
    )
    parser.add_argument("--draws", type=int, default=3, help="channel draws per sweep point (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="directory for plan.json / sweep plots")
    parser.add_argument(
        "--baselines",
        default=None,
        metavar="A,B",
        help="comma-separated baselines (default: all for a plan; fpa,random_placement,non_ma,max_clock for a sweep)",
    )


def _db(x: float) -> str:
    return f"{10 * math.log10(x):.2f}" if x > 0 and math.isfinite(x) else "-"


# Not ranked against ours: error-free digital FedAvg is the learning upper bound (no OTA error at
# all), a reference for what the air costs rather than a competitor on the OTA problem.
REFERENCES = ("digital",)


def plan_rows(ours: Any, baselines: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method; ratios are against the non-MA baseline when it is feasible.

    ``infeasible`` marks a plan that breaks a budget or a constraint (the participation floor
    included): it is shown, never ranked. ``beats_ours`` marks a feasible, ranked baseline whose
    bound is below ours (the optimiser should never let that happen on its own objective).
    """
    target = None
    for name in ("non_ma", "fpa", "max_clock"):  # the first feasible reference sets the target
        ref = baselines.get(name)
        if ref is not None and ref.feasible:
            target = ref.bound.get("total")
            break
    ours_total = ours.bound.get("total") if ours.feasible else None
    rows = []
    for name, plan in [("ours", ours), *baselines.items()]:
        total = plan.bound.get("total") if plan.feasible else None
        ota = plan.bound.get("ota") if plan.feasible else None
        rows.append(
            {
                "method": name,
                "feasible": plan.feasible,
                "infeasible": not plan.feasible,
                "violations": plan.violations,
                "ranked": plan.feasible and name not in REFERENCES,
                "rounds": plan.rounds,
                "latency_s": plan.latency_s,
                "energy_j": plan.energy_j,
                "mean_mse_db": 10 * math.log10(plan.mean_mse) if plan.mean_mse > 0 else None,
                "bound": total,
                "bound_terms": plan.bound,
                "ota_share": ota / total if ota is not None and total else None,
                "beats_ours": bool(
                    name != "ours"
                    and name not in REFERENCES
                    and total is not None
                    and ours_total is not None
                    and total < ours_total * (1 - 1e-12)
                ),
                "rounds_to_target": plan.rounds_to(target) if target is not None else None,
                "energy_to_target_j": plan.energy_to(target) if target is not None else None,
                "solve_s": plan.solve_s,
                "notes": plan.notes,
            }
        )
    return rows


def _print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in (
        "method",
        "ok",
        "R",
        "latency s",
        "energy J",
        "MSE dB",
        "bound",
        "OTA share",
        "R to target",
        "E to target J",
        "solve s",
    ):
        table.add_column(col, justify="left" if col == "method" else "right")

    def num(v: Any, fmt: str = "{:.4g}") -> str:
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)

    for r in rows:
        ok = (
            "infeasible"
            if r["infeasible"]
            else ("ref" if not r["ranked"] and r["method"] != "ours" else "yes")
        )
        table.add_row(
            r["method"] + (" (beats ours)" if r["beats_ours"] else ""),
            ok,
            str(r["rounds"]),
            num(r["latency_s"]),
            num(r["energy_j"]),
            num(r["mean_mse_db"], "{:.2f}"),
            num(r["bound"], "{:.7g}"),
            num(None if r["ota_share"] is None else 100 * r["ota_share"], "{:.3g}%"),
            num(r["rounds_to_target"], "{}"),
            num(r["energy_to_target_j"]),
            num(r["solve_s"], "{:.2f}"),
        )
    Console(width=max(Console().width, 150)).print(table)
    for r in rows:
        for note in r["notes"]:
            print(f"note ({r['method']}): {note}")
    beaten = [r["method"] for r in rows if r["beats_ours"]]
    print(
        f"ours is beaten on its own bound by: {', '.join(beaten)}"
        if beaten
        else "ours is not beaten on its own bound by any feasible baseline "
        "(infeasible plans and the error-free digital reference are not ranked)"
    )


def channel_source(config: Any) -> str:
    """Which channel the plan was solved on, in words: the measured map or the simulated world."""
    if config.allocation.channel_map:
        return (
            f"channel: the measured map of campaign {config.allocation.channel_map} "
            "(allocation.channel_map), interpolated between its grid points"
        )
    medium = config.lab.medium
    return (
        f"channel: the simulated world (field-response model, {medium.paths} paths per client, "
        f"seed {config.run.seed}); --set allocation.channel_map=RUN_DIR plans on a campaign's map"
    )


def run(args: argparse.Namespace) -> int:
    from allocation import BASELINES, AllocationError, solve_with_baselines
    from drivers.errors import ConfigError
    from fl.cost import costed_config, workload_cost
    from testbed.config import load_config
    from testbed.planning import SWEEP_BASELINES, build_problem, parse_sweep, plot_sweep, run_sweep

    # Priced as `testbed run` prices its first plan: this workload's cycles/sample (fl.cost; the
    # config's value when it sets one) and tau = fl.training.local_steps.
    config = load_config(args.config, args.overrides)
    cost = workload_cost(config)
    config = costed_config(config, cost)
    names = None
    if args.baselines:
        names = [n.strip() for n in args.baselines.split(",") if n.strip()]
        unknown = [n for n in names if n not in BASELINES]
        if unknown:
            raise ConfigError(f"--baselines: unknown {unknown}; known: {sorted(BASELINES)}")
    if args.sweep:
        grid = parse_sweep(args.sweep)
        rows = run_sweep(config, grid, draws=args.draws, baselines=tuple(names or SWEEP_BASELINES))
        out = args.out or Path(config.run.output_dir) / f"{config.run.name}-sweep"
        out.mkdir(parents=True, exist_ok=True)
        (out / "sweep.json").write_text(json.dumps(rows, indent=1, default=float))
        plots = plot_sweep(rows, grid, out)
        errors = [r for r in rows if "error" in r]
        if args.json:
            print(json.dumps({"rows": rows, "plots": [str(p) for p in plots]}, default=float))
        else:
            print(f"sweep: {len(rows)} solves ({len(errors)} infeasible/bad points) -> {out}")
            for p in plots:
                print(f"  plot: {p}")
            for r in errors[:5]:
                print(f"  error at { ({k: v for k, v in r.items() if k != 'error'}) }: {r['error']}")
        return 0
    try:
        problem = build_problem(config)
        # Ours, the baselines, then ours over their designs too (plans it could have picked).
        ours, baselines = solve_with_baselines(problem, names, sdr_diagnostic=True)
    except AllocationError as exc:
        raise ConfigError(f"{args.config}: allocation: {exc}") from exc
    rows = plan_rows(ours, baselines)
    channel = channel_source(config)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "plan.json").write_text(ours.to_json(indent=1))
        (args.out / "baselines.json").write_text(json.dumps({k: v.to_dict() for k, v in baselines.items()}))
    if args.json:
        print(
            json.dumps(
                {
                    "plan": ours.to_dict(),
                    "comparison": rows,
                    "cost_model": cost.to_record(),
                    "channel": channel,
                }
            )
        )
    else:
        print(channel)
        _print_table(
            rows,
            f"allocation plan: {config.run.name} (U={problem.num_clients}, "
            f"K={problem.clients_per_round}, N={problem.num_antennas})",
        )
        print(
            "target = the best bound of non_ma (else fpa, max_clock); 'R/E to target' = rounds/energy to reach it; "
            "OTA share = the air's part of the bound"
        )
        print(
            "bound constants: "
            + ", ".join(f"{k}={v['value']} ({v['source']})" for k, v in ours.constants.items())
        )
        print(
            f"compute priced at {cost.cycles_per_sample:.3g} cycles/sample ({cost.source}), "
            f"tau = {config.allocation.local_steps} local steps"
        )
    return 0 if ours.feasible else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
