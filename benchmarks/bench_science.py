"""Does the movable antenna help learning? Real FL runs of the tiny Llama at configs/edge.yaml.

Runs two comparisons (``testbed.compare``; each cell a full FL run, 2 local workers), at K = 1,
ours, fpa, non_ma and digital, SEEDS seeds (run.seed, run.seed + 1, ...) each:
1. the sweep: ``lab.medium.noise_power_dbm`` in NOISE_LEVELS_DBM, where the air's error costs
   learning (the fixed array's mean NMSE from about -8 to +16 dB);
2. the quiet levels QUIET_LEVELS_DBM (NMSE -14 to -30 dB), where every scheme's final loss can
   come within 1% of digital's, so the iso-learning budget is found on every seed.
From them:
- ppl_change_vs_nonma_k1: final perplexity of ours against non_ma at edge.yaml's own noise
  (-90 dBm), K = 1, in % (mean and spread over the seeds; negative: ours is better);
- rounds_ratio_vs_nonma: rounds ours needs to reach non_ma's final validation loss over the
  rounds non_ma needs (measured; mean over seeds; null if ours never reaches it);
- energy_ratio_vs_fpa: the least energy each needs to reach the same bound (fpa's best), both
  under the same search (``allocation.min_energy_to_target``): ours over fpa;
- bound_rank_agreement: the fraction of sweep points where the calibrated bound orders the
  schemes by rounds to digital's half-way loss as the runs do (``testbed.compare.bound_check``:
  the seeds pooled; each point's noise curvature probed on the other points' runs, leave one
  out). Beside it: the same per single seed (their mean), with the slowest scheme's final
  loss as the target (``_all_reach``), and over the sweep and the quiet levels together
  (``_with_quiet``): the bound's two known limits (``bound_check``'s docstring) show there;
- bound_rank_agreement_heldout: the same rule on held-out points the calibration never saw:
  HELDOUT_POINTS noise levels drawn uniformly in HELDOUT_RANGE_DBM and a run.seed per point (its
  3 seeds: s, s+1, s+2), all from np.random.default_rng(HELDOUT_SEED); the noise curvature probed
  on the sweep's runs only. Beside it its 95% Wilson interval (points) and a bootstrap interval
  over points (pairs). The rule (bound_check's pair rule, interpolation, target and probe) was
  fixed before any held-out cell ran; ``rule_sha256`` fingerprints its source;
- ours_not_beaten: the fraction of the 20 seeded allocation problems where no feasible baseline
  has a lower bound than ours;
- iso_loss_power_saving_db: how much more noise (= less TX power per client) ours tolerates
  than fpa while keeping its final loss within 1% of digital's, over both comparisons' levels
  (interpolated in dB; ``_grid``: at the grid's resolution).
Baselines are measured in the same run (non_ma, fpa, digital). Timings on a shared machine are
noisy. Run: .venv/bin/python benchmarks/bench_science.py [--workers 2]. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testbed.compare import build_spec, load_cells, open_compare_dir, run_compare  # noqa: E402
from testbed.compare.bound_check import bound_vs_measurement, held_out, points_from_cells  # noqa: E402
from testbed.compare.report import NOISE_KEY, iso_learning  # noqa: E402

EDGE = ROOT / "configs" / "edge.yaml"
NOISE_LEVELS_DBM = (-106, -98, -90, -82)  # 8 dB steps; -90 is edge.yaml's own
QUIET_LEVELS_DBM = (-122, -114)
# The held-out set, fixed before it was run: 8 points, each its own noise level and seeds, across
# the range where the air's error costs learning at edge.yaml (from every scheme reaching
# digital's half-way loss, -106 dBm, to only ours reaching it, about -94 dBm in the sweep).
HELDOUT_SEED = 20
HELDOUT_POINTS = 8
HELDOUT_RANGE_DBM = (-110.0, -92.0)
BASE_NOISE_DBM = -90
SEEDS = 3


def _run(schemes: str, grid: list[str], seeds: int, out: Path, workers: int) -> list[dict]:
    spec = build_spec(EDGE, [], schemes, grid, seeds)
    # An --out that already holds this compare is resumed: only its unfinished cells run.
    resume = out if (out / "compare.json").is_file() else None
    run_compare(spec, open_compare_dir(spec, None if resume else out, resume), workers=workers)
    return load_cells(out, spec)


def heldout_points() -> list[tuple[float, int]]:
    """(noise level in dBm, first run.seed) of each held-out point, from the seeded generator.
    Levels to 0.1 dB; seeds from 100 up, clear of edge.yaml's 3-5 the sweep uses."""
    rng = np.random.default_rng(HELDOUT_SEED)
    levels = np.round(rng.uniform(*HELDOUT_RANGE_DBM, HELDOUT_POINTS), 1)
    seeds = rng.choice(np.arange(100, 10_000, SEEDS), HELDOUT_POINTS, replace=False)
    return [(float(v), int(s)) for v, s in zip(levels, seeds, strict=True)]


def run_heldout(out: Path, workers: int) -> dict[str, dict]:
    """Each held-out point as its own compare (its own seeds): {label: its cells}."""
    cells = {}
    for i, (level, seed) in enumerate(heldout_points()):
        spec = build_spec(
            EDGE, [f"run.seed={seed}", f"{NOISE_KEY}={level}"], "ours,fpa,non_ma,digital", [], SEEDS
        )
        where = out / f"p{i}"
        resume = where if (where / "compare.json").is_file() else None
        run_compare(spec, open_compare_dir(spec, None if resume else where, resume), workers=workers)
        cells[f"{NOISE_KEY}={level} (seeds {seed}-{seed + SEEDS - 1})"] = load_cells(where, spec)
    return cells


def strict_pairs(result: dict) -> tuple[int, int, int]:
    """A diagnostic beside the rule, not the rule: pairs (and points) whose predicted order is the
    measured one exactly, without the rule's one-round tolerance ("never" as infinitely many).
    Returns (points agreeing on every pair, pairs agreeing, pairs)."""
    import itertools

    def rounds(v: float | None) -> float:
        return math.inf if v is None else float(v)

    points = good = total = 0
    for p in result["points"].values():
        m, q = p["measured_rounds"], p["predicted_rounds"]
        ok = [
            np.sign(rounds(m[a]) - rounds(m[b])) == np.sign(rounds(q[a]) - rounds(q[b]))
            if math.isfinite(rounds(m[a]) - rounds(m[b])) or math.isfinite(rounds(q[a]) - rounds(q[b]))
            else True
            for a, b in itertools.combinations(sorted(m), 2)
        ]
        points += all(ok)
        good += sum(ok)
        total += len(ok)
    return points, good, total


def rule_fingerprint() -> str:
    """sha256 of the rule's source: the pair rule, the interpolation, the prediction, the probe."""
    import hashlib
    import inspect

    from testbed.compare import bound_check as bc

    parts = [bc.pair_agreement, bc.first_round_at, bc.predict_point, bc.pick_probe, bc.noise_probe]
    source = "".join(inspect.getsource(f) for f in parts) + repr((bc.RESOLUTION_ROUNDS, bc.LOSS_RESOLUTION))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _final(cells: list[dict], scheme: str, seed: int, key: str = "val_ppl") -> np.ndarray | None:
    for c in cells:
        if c["cell"]["scheme"] == scheme and c["cell"]["seed"] == seed:
            return c["series"][key]
    return None


def _rounds(by_scheme: dict) -> dict:
    """Rounds to target per scheme, to 0.01 of a round (None: never)."""
    return {k: None if v is None else round(v, 2) for k, v in by_scheme.items()}


def learning_figures(sweep: list[dict]) -> dict:
    pool = [c for c in sweep if c["cell"]["grid"].get(NOISE_KEY) == BASE_NOISE_DBM]
    changes, ratios = [], []
    for seed in sorted({c["cell"]["seed"] for c in pool}):
        ours, nonma = _final(pool, "ours", seed), _final(pool, "non_ma", seed)
        ours_loss, nonma_loss = (
            _final(pool, "ours", seed, "val_loss"),
            _final(pool, "non_ma", seed, "val_loss"),
        )
        if ours is None or nonma is None:
            continue
        changes.append(100.0 * (ours[-1] - nonma[-1]) / nonma[-1])
        target = nonma_loss[-1]
        r_ours = np.nonzero(ours_loss <= target + 1e-12)[0]
        r_nonma = np.nonzero(nonma_loss <= target + 1e-12)[0]
        ratios.append((r_ours[0] + 1) / (r_nonma[0] + 1) if r_ours.size else math.nan)
    return {
        "ppl_change_vs_nonma_k1": {
            "mean_pct": float(np.mean(changes)),
            "spread_pct": float(np.std(changes)),
            "per_seed_pct": [round(float(v), 2) for v in changes],
        },
        "rounds_ratio_vs_nonma": None if any(math.isnan(r) for r in ratios) else float(np.mean(ratios)),
        "rounds_ratio_per_seed": [None if math.isnan(r) else round(float(r), 3) for r in ratios],
    }


def energy_ratio_vs_fpa() -> tuple[float | None, dict]:
    """Least energy to reach fpa's best bound: ours over fpa, the same bisection for both."""
    from allocation import BASELINES, Strategy, min_energy_to_target, solve_with
    from testbed.config import load_config
    from testbed.planning import build_problem
    from testbed.world import draw_channel

    config = load_config(EDGE)
    problem = build_problem(config, draw_channel(config))
    shared: dict = {}
    fpa_plan = solve_with(problem, BASELINES["fpa"], shared=shared)
    if not fpa_plan.feasible:
        return None, {"note": "fpa has no feasible plan at edge.yaml"}
    target = fpa_plan.bound["total"]
    ours = min_energy_to_target(problem, Strategy(), target, shared)
    fpa = min_energy_to_target(problem, BASELINES["fpa"], target, shared)
    if ours is None or fpa is None:
        return None, {"note": "a method cannot reach fpa's bound", "target": target}
    return ours[0] / fpa[0], {"target_bound": target, "ours_j": ours[0], "fpa_j": fpa[0]}


def ours_not_beaten() -> tuple[float | None, str]:
    """The 20 seeded problems (the bound engineer's check when it exists, else computed here)."""
    try:
        from allocation.bound import ours_not_beaten as check  # type: ignore[attr-defined]

        return float(check()), "allocation.bound.ours_not_beaten"
    except ImportError:
        pass
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from allocation_kit import SEEDED_PROBLEMS, seeded_problem  # type: ignore[import-not-found]
    except ImportError:
        return None, "no seeded problem suite (tests/allocation_kit.seeded_problem) in this tree"
    from allocation import solve_with_baselines
    from testbed.commands.plan import REFERENCES

    # As tests/test_allocation_wins.py judges it: feasible baselines only, references (digital,
    # error-free) not ranked.
    fine = 0
    for seed in range(SEEDED_PROBLEMS):
        ours, others = solve_with_baselines(seeded_problem(seed))
        ranked = [p.bound["total"] for n, p in others.items() if p.feasible and n not in REFERENCES]
        fine += bool(ours.feasible and ours.bound["total"] <= min(ranked, default=math.inf) * (1 + 1e-9))
    return (
        fine / SEEDED_PROBLEMS,
        "tests/allocation_kit.seeded_problem, judged as tests/test_allocation_wins.py",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="keep the compare directories here (an existing one is resumed)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.monotonic()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_science-"))
    levels = ",".join(str(v) for v in NOISE_LEVELS_DBM)
    sweep = _run("ours,fpa,non_ma,digital", [f"{NOISE_KEY}={levels}"], SEEDS, out / "sweep", args.workers)
    quiet_levels = ",".join(str(v) for v in QUIET_LEVELS_DBM)
    quiet = _run(
        "ours,fpa,non_ma,digital", [f"{NOISE_KEY}={quiet_levels}"], SEEDS, out / "quiet", args.workers
    )
    heldout_cells = run_heldout(out / "heldout", args.workers)
    t_runs = time.monotonic() - t0

    learning = learning_figures(sweep)
    iso = iso_learning(sweep + quiet, [{"key": NOISE_KEY, "values": [*QUIET_LEVELS_DBM, *NOISE_LEVELS_DBM]}])
    saving = (iso or {}).get("saving_db_vs_fpa_interp", {}).get("-")
    saving_grid = (iso or {}).get("saving_db_vs_fpa", {}).get("-")
    # Each cell's round records are read once: the sweep's points serve both targets.
    points = points_from_cells(sweep, NOISE_KEY)
    check = bound_vs_measurement(points)
    all_reach = bound_vs_measurement(points, target="all_reach")
    with_quiet = bound_vs_measurement({**points, **points_from_cells(quiet, NOISE_KEY)})
    per_seed = [
        bound_vs_measurement(points_from_cells([c for c in sweep if c["cell"]["seed"] == seed], NOISE_KEY))
        for seed in sorted({c["cell"]["seed"] for c in sweep})
    ]
    held = {}
    for label, cells in heldout_cells.items():
        # One point per compare: its runs under the compare's label (level and seeds).
        (runs,) = points_from_cells(cells, NOISE_KEY).values()
        held[label] = runs
    heldout = held_out(points, held)
    heldout_all_reach = held_out(points, held, target="all_reach")
    energy, energy_detail = energy_ratio_vs_fpa()
    not_beaten, source = ours_not_beaten()
    wall = time.monotonic() - t0

    n_held = sum(len(c) for c in heldout_cells.values())
    print(
        f"cells: {len(sweep)} (noise sweep) + {len(quiet)} (quiet levels) + {n_held} (held out), {SEEDS} seeds "
        f"each; runs {t_runs:.0f} s"
    )
    print(f"per point (noise dBm): final ppl / mean NMSE dB, means over the {SEEDS} seeds")
    for level in (*QUIET_LEVELS_DBM, *NOISE_LEVELS_DBM):
        row = []
        for scheme in sorted({c["cell"]["scheme"] for c in sweep}):
            mine = [
                c["series"]
                for c in sweep + quiet
                if c["cell"]["grid"][NOISE_KEY] == level and c["cell"]["scheme"] == scheme
            ]
            ppl = np.mean([s["val_ppl"][-1] for s in mine])
            row.append(f"{scheme} {ppl:.1f}/{np.mean([s['mean_nmse_db'] for s in mine]):.1f}")
        print(f"  {level}: " + "; ".join(row))
    pc = learning["ppl_change_vs_nonma_k1"]
    print(
        f"ppl change vs non_ma (K=1, edge.yaml): {pc['mean_pct']:+.1f}% +- {pc['spread_pct']:.1f} "
        f"(per seed {pc['per_seed_pct']}); paper: -17.4% Alpaca, -54.4% Dolly"
    )
    print(
        f"iso-loss: tolerable noise per scheme, grid {iso['needed'] if iso else None}, interpolated "
        f"{iso['needed_interp'] if iso else None}; saving {saving} dB interpolated, {saving_grid} dB at 8 dB steps"
    )
    print(
        "bound vs measurement: "
        + "; ".join(
            f"{k}: measured {_rounds(v['measured_rounds'])} predicted {_rounds(v['predicted_rounds'])} "
            f"(L_noise/L_path {(v['noise_curvature'] or v['path_curvature']) / v['path_curvature']:.1f}, "
            f"probe {(v['probe'] or {}).get('point')} {(v['probe'] or {}).get('scheme')})"
            for k, v in check["points"].items()
        )
    )
    print(
        f"agreement: seeds pooled {check['point_agreement']}; per seed {[c['point_agreement'] for c in per_seed]}; "
        f"target every scheme reaches {all_reach['point_agreement']} ("
        + "; ".join(
            f"{k}: measured {_rounds(v['measured_rounds'])} predicted {_rounds(v['predicted_rounds'])}"
            for k, v in all_reach["points"].items()
        )
        + ")"
    )
    print(
        f"with the quiet levels: agreement {with_quiet['point_agreement']} ("
        + "; ".join(
            f"{k}: measured {_rounds(v['measured_rounds'])} predicted {_rounds(v['predicted_rounds'])}"
            for k, v in with_quiet["points"].items()
            if any(str(q) in k for q in QUIET_LEVELS_DBM)
        )
        + ")"
    )

    def ci(interval: tuple | None) -> str:
        return "-" if interval is None else f"[{interval[0]:.2f}, {interval[1]:.2f}]"

    informative = sum(
        sum(r is not None for s, r in v["measured_rounds"].items() if s != "digital") >= 2
        for v in heldout["points"].values()
    )
    print(
        f"held out (rule {rule_fingerprint()} fixed before these ran; probe from the sweep: "
        f"{heldout['probe']['point']} {heldout['probe']['scheme']}): "
        + "; ".join(
            f"{k}: measured {_rounds(v['measured_rounds'])} predicted {_rounds(v['predicted_rounds'])} "
            f"{'agree' if v['agree'] else 'DISAGREE'}"
            for k, v in heldout["points"].items()
        )
    )
    print(
        f"agreement in-sample {check['point_agreement']} (pairs {check['pair_agreement']:.2f}) vs held out "
        f"{heldout['point_agreement']:.2f} 95% {ci(heldout['point_interval'])} over {len(heldout['points'])} points "
        f"({informative} with two or more OTA schemes reaching the target), pairs {heldout['pair_agreement']:.2f} "
        f"{ci(heldout['pair_interval'])}; all-reach target: {heldout_all_reach['point_agreement']:.2f} "
        f"{ci(heldout_all_reach['point_interval'])}"
    )
    strict_in, strict_held = strict_pairs(check), strict_pairs(heldout)
    print(
        f"without the one-round tolerance (exact order, a diagnostic): in-sample {strict_in[0]}/{len(check['points'])} "
        f"points, {strict_in[1]}/{strict_in[2]} pairs; held out {strict_held[0]}/{len(heldout['points'])} points, "
        f"{strict_held[1]}/{strict_held[2]} pairs"
    )
    print(
        f"energy to fpa's bound, same search: {energy_detail}; ours_not_beaten from {source}; wall {wall:.0f} s"
    )
    print(
        json.dumps(
            {
                "ppl_change_vs_nonma_k1": pc,
                "rounds_ratio_vs_nonma": learning["rounds_ratio_vs_nonma"],
                "rounds_ratio_per_seed": learning["rounds_ratio_per_seed"],
                "energy_ratio_vs_fpa": None if energy is None else round(energy, 4),
                "bound_rank_agreement": check["point_agreement"],
                "bound_pair_agreement": check["pair_agreement"],
                "bound_rank_agreement_per_seed": float(np.mean([c["point_agreement"] for c in per_seed])),
                "bound_rank_agreement_all_reach": all_reach["point_agreement"],
                "bound_rank_agreement_with_quiet": with_quiet["point_agreement"],
                "bound_rank_agreement_heldout": heldout["point_agreement"],
                "bound_rank_agreement_heldout_ci95": heldout["point_interval"],
                "bound_pair_agreement_heldout": heldout["pair_agreement"],
                "bound_pair_agreement_heldout_ci95": heldout["pair_interval"],
                "bound_rank_agreement_heldout_all_reach": heldout_all_reach["point_agreement"],
                "heldout_points": len(heldout["points"]),
                "bound_pair_agreement_heldout_exact_order": strict_held[1] / strict_held[2]
                if strict_held[2]
                else None,
                "bound_rank_agreement_heldout_exact_order": strict_held[0] / len(heldout["points"]),
                "bound_pair_agreement_exact_order": strict_in[1] / strict_in[2] if strict_in[2] else None,
                "heldout_informative_points": informative,
                "rule_sha256": rule_fingerprint(),
                "ours_not_beaten": not_beaten,
                "iso_loss_power_saving_db": saving,
                "iso_loss_power_saving_db_grid": saving_grid,
                "wall_s": round(wall, 1),
            },
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
