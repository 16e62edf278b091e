"""Benchmark of the allocation optimizer (issue 5), on seeded field-response channel draws.

Each figure is printed beside a baseline measured in the same run, as a ratio:
1. the SCA beamformer's gap to the SDR lower bound (N = 8, 16; K = 20) and its time per step;
2. the max-min MSE gain of optimised antenna positions over the fixed lambda/2 array and over
   the best of 50 random placements (N = 4, K = 8, L = 10, A = 4 lambda, D = lambda/2; 10 draws);
3. energy and rounds-to-target of the full plan against the non-MA and max-clock baselines under
   the same budgets (target = the non-MA baseline's best bound);
4. solve time against U and N.
The last line is one JSON object with the keys the issue names.

5. planning speed (issue 12): plan_round at U = 10 and 100, the whole-run plan of
   configs/paper.yaml and the SCA step, each beside the same work with a reference solver.
6. the method the runs take (issue 20): ``allocation.design.design_round`` with its defaults on
   20 seeded instances (N=4, K=8 and N=8, K=16; L=10; every client selected) against an
   independent alternating-optimisation reference with 4 starts (``ao_reference``, written apart
   from allocation.positions): wins, the mean MSE gain in dB and the time ratio; and whether more
   position starts ever gave a worse design (1, 2 and 4 starts on the same instances).

Run: .venv/bin/python benchmarks/bench_allocation.py  (``--speed`` runs section 5 only)
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from allocation import Problem, Strategy, min_energy_to_target, plan_round, solve, solve_baselines  # noqa: E402
from allocation.baselines import BASELINES  # noqa: E402
from allocation.beamformer import optimize_beamformer, sdr_lower_bound  # noqa: E402
from allocation.positions import optimize_positions_multistart  # noqa: E402
from allocation.problem import lambda_half_grid  # noqa: E402
from sim.channel import FieldResponseChannel, path_loss_linear  # noqa: E402

LAMBDA_M = 299_792_458.0 / 2.4e9
NOISE_W = 1e-12  # -90 dBm
POWER_W = 0.1


def db(x: float) -> float:
    return 10.0 * math.log10(x)


def make_problem(
    rng: np.random.Generator, u: int, n: int, k: int, paths: int = 10, area: float = 4.0, **kw
) -> Problem:
    beta = path_loss_linear(rng.uniform(20.0, 80.0, u))
    ch = FieldResponseChannel.draw(rng, u, paths, LAMBDA_M, path_gain=beta)
    return Problem(
        channel=ch,
        num_antennas=n,
        wavelength_m=LAMBDA_M,
        region_m=area * LAMBDA_M,
        min_spacing_m=LAMBDA_M / 2,
        noise_power_w=NOISE_W,
        power_w=POWER_W,
        clients_per_round=k,
        **kw,
    )


def bench_sdr() -> dict[str, float]:
    print("== 1. SCA beamformer vs the SDR lower bound (K = 20) ==")
    out = {}
    step_ms = []
    for n in (8, 16):
        gaps, t_sca, t_sdr = [], [], []
        for seed in range(3):
            rng = np.random.default_rng(100 + seed)
            ch = FieldResponseChannel.draw(rng, 20, 10, LAMBDA_M, path_gain=1e-9)
            pos = lambda_half_grid(n, LAMBDA_M, 4 * LAMBDA_M)
            h = ch.response(pos) * math.sqrt(POWER_W)
            t0 = time.perf_counter()
            res = optimize_beamformer(h, max_steps=100, starts=8, rng=rng)
            t_sca.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sdr = sdr_lower_bound(h)
            t_sdr.append(time.perf_counter() - t0)
            gaps.append(db(res.objective / sdr))
            # time per step of the chosen solver, warm (a fresh single-start run)
            step_ms.append(optimize_beamformer(h, max_steps=20).step_s * 1e3)
        gap = float(np.median(gaps))
        out[f"sdr_gap_db_n{n}"] = gap
        print(
            f"N={n:2d}: SCA (8 starts) {gap:.3f} dB above the SDR bound (median of 3; target <= 0.5 dB); "
            f"SCA time / SDR time = {np.median(t_sca) / np.median(t_sdr):.3f}"
        )
    print(f"SCA step (N = 8, 16; K = 20): median {float(np.median(step_ms)):.3f} ms")
    return out


def bench_positions() -> dict[str, float]:
    from allocation.design import design_round

    print(
        "== 2. optimised positions vs the fixed array and best-of-50 random (N=4, K=8, L=10, A=4 lambda) =="
    )
    vs_fpa, vs_rp, mm_vs_fpa = [], [], []
    for seed in range(10):
        rng = np.random.default_rng(200 + seed)
        p = make_problem(rng, 8, 4, 8, position_starts=4, latency_budget_s=1e5, fairness_floor=0.0)
        demand = np.ones(8)
        # design_round: the path the runs take (its own starts, polish and beamformer).
        ours, fpa, rp = (
            design_round(p, strategy, 0, np.zeros(8, dtype=int), None, np.random.default_rng(seed)).mse
            for strategy in (Strategy(), BASELINES["fpa"], BASELINES["random_placement"])
        )
        vs_fpa.append(db(fpa / ours))
        vs_rp.append(db(rp / ours))
        # The second figure: MM from 4 starts with a beamformer polish only (no lattice moves).
        mm = optimize_positions_multistart(p, rng, demand, iterations=20)
        j_mm = optimize_beamformer(
            p.effective_channels(mm.positions_m), demand, start=mm.beamformer.combiner, starts=3, rng=rng
        ).objective
        grid = lambda_half_grid(4, LAMBDA_M, p.region_m, p.min_spacing_m)
        j_fpa = optimize_beamformer(p.effective_channels(grid), demand, starts=3, rng=rng).objective
        mm_vs_fpa.append(db(j_fpa / min(j_mm, mm.objective)))
    out = {
        "ma_vs_fpa_db": float(np.median(vs_fpa)),
        "ma_vs_rp50_db": float(np.median(vs_rp)),
        "mm_multistart_vs_fpa_db": float(np.median(mm_vs_fpa)),
    }
    print(
        f"design_round's MSE gain over the fixed array: median {out['ma_vs_fpa_db']:.2f} dB (target >= 3 dB); "
        f"per draw {np.round(vs_fpa, 2).tolist()}"
    )
    print(
        f"over best-of-50 random: median {out['ma_vs_rp50_db']:.2f} dB (must be > 0); per draw "
        f"{np.round(vs_rp, 2).tolist()}"
    )
    print(
        f"(MM multistart without the lattice polish, over the fixed array: median "
        f"{out['mm_multistart_vs_fpa_db']:.2f} dB; per draw {np.round(mm_vs_fpa, 2).tolist()})"
    )
    return out


def bench_plan() -> dict[str, float]:
    print("== 3. full plan vs non-MA and max-clock under equal budgets (U=10, K=2, N=4) ==")
    rng = np.random.default_rng(300)
    p = make_problem(
        rng, 10, 4, 2, latency_budget_s=3.0e4, energy_budget_j=5.0e4, max_rounds=30, position_starts=3
    )
    shared: dict = {}
    ours = solve(p, shared)
    base = solve_baselines(p, ["non_ma", "max_clock", "fpa", "digital"], shared)
    out = {}
    for ref_name in ("non_ma", "max_clock"):
        ref = base[ref_name]
        if not ref.feasible:
            print(f"{ref_name}: infeasible under these budgets ({ref.notes})")
            continue
        target = min(v for v in ref.bound_by_rounds if math.isfinite(v))
        r_ref = ref.rounds_to(target)
        r_ours = ours.rounds_to(target)
        # Like for like: both at their own least energy that still reaches the target (same search).
        best = min_energy_to_target(p, Strategy(portfolio=True), target, shared)
        e_ours = best[0] if best else float("nan")
        ref_best = min_energy_to_target(p, BASELINES[ref_name], target, shared)
        e_ref = ref_best[0] if ref_best else float("nan")
        rounds_ratio = (r_ours / r_ref) if r_ours else float("inf")
        energy_ratio = e_ours / e_ref
        print(
            f"vs {ref_name}: target bound {target:.6g}; rounds to target ours {r_ours} / {ref_name} {r_ref} = "
            f"{rounds_ratio:.3f}; energy to target ours {e_ours:.4g} J / {ref_name} {e_ref:.4g} J = {energy_ratio:.3f}"
        )
        if ref_name == "non_ma":
            out["energy_vs_nonma"], out["rounds_vs_nonma"] = energy_ratio, rounds_ratio
    for ref_name in ("non_ma", "max_clock"):
        ref = base[ref_name]
        if ref.feasible:
            print(
                f"whole budgets, each at its best R: energy ours {ours.energy_j:.4g} J / {ref_name} {ref.energy_j:.4g} J"
                f" = {ours.energy_j / ref.energy_j:.3f}; rounds ours {ours.rounds} / {ref_name} {ref.rounds}"
                f" = {ours.rounds / ref.rounds:.3f} (ours spends spare energy on larger batches)"
            )
    print(
        f"plans at their best R: ours R={ours.rounds} E={ours.energy_j:.4g} J MSE={db(ours.mean_mse):.2f} dB; "
        + "; ".join(
            f"{k} R={v.rounds} E={v.energy_j:.4g} J MSE={db(v.mean_mse) if v.mean_mse > 0 else float('-inf'):.2f} dB"
            for k, v in base.items()
        )
    )
    print(f"bound terms (ours): {json.dumps({k: round(v, 6) for k, v in ours.bound.items()})}")
    return out


def ao_reference(
    p: Problem, demand: np.ndarray, rng: np.random.Generator, starts: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Alternating optimisation, independent of allocation.positions: the SCA beamformer at fixed
    positions, then each antenna in turn moved by a compass search (8 directions, steps lambda/4
    down to lambda/64) that keeps the box and the spacing, judged by the true max-min objective
    J = ||m||^2 / min_k |h~_k^H m|^2 with m held; repeat until nothing moves. From the lambda/2
    grid and ``starts - 1`` random feasible placements; the best (positions, unit combiner)."""
    from allocation.positions import is_feasible, random_feasible_positions

    half, d, sel = p.half_region_m, p.min_spacing_m, demand > 0

    def j(pos: np.ndarray, m: np.ndarray) -> float:
        g = np.abs(p.effective_channels(pos)[sel] @ m.conj()) ** 2
        return float(np.sum(np.abs(m) ** 2) / np.min(g))

    dirs = [
        np.array(v) / np.linalg.norm(v)
        for v in [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)]
    ]
    grid = lambda_half_grid(p.num_antennas, p.wavelength_m, p.region_m, d)
    best = None
    for s in range(starts):
        pos = grid.copy() if s == 0 else random_feasible_positions(rng, p.num_antennas, half, d)
        m = optimize_beamformer(p.effective_channels(pos), demand, starts=3, rng=rng).combiner
        for _ in range(30):
            moved = False
            for step in p.wavelength_m / np.array([4, 8, 16, 32, 64]):
                for n in range(p.num_antennas):
                    for v in dirs:
                        trial = pos.copy()
                        trial[n] += step * v
                        if is_feasible(trial, half, d) and j(trial, m) < j(pos, m) * (1 - 1e-9):
                            pos, moved = trial, True
            m = optimize_beamformer(p.effective_channels(pos), demand, start=m, starts=3, rng=rng).combiner
            if not moved:
                break
        if best is None or j(pos, m) < best[0]:
            best = (j(pos, m), pos, m / np.linalg.norm(m))
    assert best is not None
    return best[1], best[2]


def bench_design_round() -> dict[str, float]:
    from allocation.design import design_round, finish_design

    print("== 6. design_round (defaults) vs an independent AO reference with 4 starts (20 instances) ==")
    gains, t_ours, t_ref, worse = [], [], [], 0
    for seed in range(20):
        n, k = ((4, 8), (8, 16))[seed % 2]
        rng = np.random.default_rng(700 + seed)
        p = make_problem(rng, k, n, k, latency_budget_s=1e5, selection="pdd", fairness_floor=0.0)
        demand, counts = np.ones(k), np.zeros(k, dtype=int)
        t0 = time.perf_counter()
        des = design_round(p, Strategy(), 0, counts, None, np.random.default_rng(seed))
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pos, m = ao_reference(p, demand, np.random.default_rng(seed))
        t_ref.append(time.perf_counter() - t0)
        ref_mse = finish_design(p, Strategy(), np.arange(k), pos, m, {}).mse
        gains.append(db(ref_mse / des.mse))
        # More starts must never give a worse design: 1, 2 and 4 (the default) on this instance.
        by_starts = []
        for starts in (1, 2, 4):
            q = make_problem(np.random.default_rng(700 + seed), k, n, k, latency_budget_s=1e5, selection="pdd",
                             fairness_floor=0.0, position_starts=starts)  # fmt: skip
            by_starts.append(design_round(q, Strategy(), 0, counts, None, np.random.default_rng(seed)).mse)
        worse += sum(b > a * (1 + 1e-9) for a, b in zip(by_starts, by_starts[1:], strict=False))
    gains_arr = np.array(gains)
    out = {
        "design_vs_ao_wins": float(np.sum(gains_arr > 0.01)),
        "design_vs_ao_db": float(np.mean(gains_arr)),
        "design_vs_ao_time_ratio": float(np.sum(t_ours) / np.sum(t_ref)),
        "more_starts_worse": float(worse),
    }
    print(
        f"design_round wins {out['design_vs_ao_wins']:.0f} of 20 (by > 0.01 dB), mean gain {out['design_vs_ao_db']:+.2f} dB "
        f"(per instance {np.round(gains_arr, 2).tolist()}); time {np.sum(t_ours):.1f} s vs the reference's "
        f"{np.sum(t_ref):.1f} s = {out['design_vs_ao_time_ratio']:.2f}x"
    )
    print(f"more position starts gave a worse design {worse} times (1 -> 2 and 2 -> 4 starts, 20 instances)")
    return out


def bench_scaling() -> dict[str, float]:
    print("== 4. solve time vs U and N (solve() with max_rounds = 3; plan_round for one round) ==")
    times: dict[tuple[int, int], tuple[float, float]] = {}
    for u, n in [(10, 4), (20, 4), (50, 4), (100, 4), (10, 8), (10, 16), (10, 32), (100, 32)]:
        rng = np.random.default_rng(400)
        area = max(4.0, math.ceil(math.sqrt(n)) * 1.0)
        p = make_problem(
            rng, u, n, max(2, u // 10), area=area, latency_budget_s=3.0e4, max_rounds=3, position_starts=2
        )
        t0 = time.perf_counter()
        plan_round(p, 0, np.zeros(u, dtype=int), None, 3.0e4, 5.0e4, 30, rng)
        t_round = time.perf_counter() - t0
        t0 = time.perf_counter()
        solve(p)
        t_solve = time.perf_counter() - t0
        times[(u, n)] = (t_solve, t_round)
    base = times[(10, 4)][0]
    for (u, n), (ts, tr) in times.items():
        print(f"U={u:3d} N={n:2d}: solve {ts:7.2f} s ({ts / base:6.2f}x U=10,N=4); plan_round {tr:6.3f} s")
    return {"solve_s_u100_n32": times[(100, 32)][0]}


def bench_speed() -> dict[str, float]:
    """Issue 12 point 4: plan_round at U = 10 and 100, the whole-run plan of paper.yaml, the SCA step.

    Each beside a baseline from the same run: plan_round and the SCA step against the same work
    with the cvxpy (Clarabel) SCA step, the whole-run plan against the fixed-array baseline's plan
    of the same problem (no position search). One warm-up call pays the imports first.
    """
    from dataclasses import replace

    from testbed.config import load_config
    from testbed.planning import build_problem

    print("== 5. planning speed (issue 12) ==")
    out: dict[str, float] = {}
    for u, k in ((10, 2), (100, 10)):
        rng = np.random.default_rng(500)
        # PDD selection, no participation floor: with the default floor at K/U every set would be
        # forced and the selection free, which flatters the timing.
        p = make_problem(
            rng, u, 4, k, latency_budget_s=3.0e4, max_rounds=30, position_starts=2, selection="pdd"
        )

        def replan(problem: Problem, rounds: int = 3) -> float:
            r_rng = np.random.default_rng(1)
            counts, prev, times = np.zeros(problem.num_clients, dtype=int), None, []
            for t in range(rounds):  # warm start: each round from the previous round's positions
                t0 = time.perf_counter()
                rp = plan_round(problem, t, counts, prev, 3.0e4 - 900 * t, 5.0e4, 30 - t, r_rng)
                times.append(time.perf_counter() - t0)
                counts[rp.selected] += 1
                prev = np.asarray(rp.positions_m)
            return float(np.median(times))

        replan(p, 1)  # warm-up: imports, compiled QPs
        t_ours = replan(p)
        ref = replace(p, beamformer_solver="cvxpy")
        ref.channel = p.channel
        replan(ref, 1)
        t_ref = replan(ref)
        out[f"plan_round_s_u{u}"] = t_ours
        out[f"plan_round_vs_cvxpy_u{u}"] = t_ours / t_ref
        print(
            f"plan_round U={u} N=4 K={k}: {t_ours:.3f} s (target <= {0.3 if u == 10 else 1.0} s); "
            f"with the cvxpy SCA step {t_ref:.3f} s; ratio {t_ours / t_ref:.3f}"
        )
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "paper.yaml", [])
    problem = build_problem(cfg)
    t0 = time.perf_counter()
    plan = solve(problem)
    t_paper = time.perf_counter() - t0
    t0 = time.perf_counter()
    solve_baselines(problem, ["fpa"])
    t_fpa = time.perf_counter() - t0
    out["whole_run_plan_s_paper"] = t_paper
    out["whole_run_plan_vs_fpa"] = t_paper / t_fpa
    print(
        f"whole-run plan of configs/paper.yaml (U=10, K=1, 30 rounds): {t_paper:.2f} s (target <= 10 s), "
        f"R={plan.rounds}; the fixed-array plan {t_fpa:.2f} s; ratio {t_paper / t_fpa:.2f}"
    )
    rng = np.random.default_rng(600)
    ch = FieldResponseChannel.draw(rng, 20, 10, LAMBDA_M, path_gain=1e-9)
    h = ch.response(lambda_half_grid(8, LAMBDA_M, 4 * LAMBDA_M)) * math.sqrt(POWER_W)
    steps = {}
    for solver in ("numpy", "cvxpy"):
        optimize_beamformer(h, max_steps=3, solver=solver)  # warm-up (compiles the cvxpy problem)
        steps[solver] = float(
            np.median([optimize_beamformer(h, max_steps=20, solver=solver).step_s for _ in range(5)])
        )
    out["sca_step_ms"] = steps["numpy"] * 1e3
    out["sca_step_vs_cvxpy"] = steps["numpy"] / steps["cvxpy"]
    print(
        f"SCA step K=20 N=8: numpy dual {steps['numpy'] * 1e3:.3f} ms (target <= 2 ms); cvxpy/Clarabel "
        f"{steps['cvxpy'] * 1e3:.3f} ms; ratio {out['sca_step_vs_cvxpy']:.3f}"
    )
    return out


def main() -> None:
    t0 = time.perf_counter()
    result: dict[str, float] = {}
    if "--design" in sys.argv:
        result.update(bench_positions())
        result.update(bench_design_round())
        print(json.dumps({k: round(float(v), 4) for k, v in result.items()}))
        return
    if "--speed" in sys.argv:
        result.update(bench_speed())
        print(json.dumps({k: round(float(v), 4) for k, v in result.items()}))
        return
    result.update(bench_sdr())
    result.update(bench_positions())
    result.update(bench_design_round())
    result.update(bench_plan())
    result.update(bench_scaling())
    result.update(bench_speed())
    print(f"(baselines known: {sorted(BASELINES)}; total {time.perf_counter() - t0:.1f} s)")
    keys = [
        "sdr_gap_db_n8",
        "sdr_gap_db_n16",
        "sca_step_ms",
        "ma_vs_fpa_db",
        "ma_vs_rp50_db",
        "mm_multistart_vs_fpa_db",
        "design_vs_ao_wins",
        "design_vs_ao_db",
        "design_vs_ao_time_ratio",
        "more_starts_worse",
        "energy_vs_nonma",
        "rounds_vs_nonma",
        "solve_s_u100_n32",
        "plan_round_s_u10",
        "plan_round_vs_cvxpy_u10",
        "plan_round_s_u100",
        "plan_round_vs_cvxpy_u100",
        "whole_run_plan_s_paper",
        "whole_run_plan_vs_fpa",
        "sca_step_vs_cvxpy",
    ]
    print(json.dumps({k: round(float(result.get(k, float("nan"))), 4) for k in keys}))


if __name__ == "__main__":
    main()
