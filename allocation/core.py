"""The allocation loop: plan every round, then search R, clocks and batches.

Each round's design (selection, positions, beamformer) comes from ``allocation.design``, where a
``Strategy`` names how each part is decided, so the full method and every baseline run through
the same code under the same budgets.

``solve`` plans ``max_rounds`` rounds one after another (participation counts feed the
fairness floor, and each round starts from the previous positions), then searches R: for every
prefix it allocates clocks and batches and evaluates the bound, keeping the best feasible R.
The participation floor (selection "hybrid") is a constraint of the problem: every method keeps
it, and a prefix that breaks it is infeasible. The full method (``portfolio``) also weighs
plans it could have picked: its selections with the antennas held still (moving costs latency,
hence batches), and any round designs another strategy already made for the same problem
(``shared``), so it never reports a worse bound than a feasible baseline.
``plan_round`` (``allocation.replan``) re-plans a single round from the current channels and
what is left of the budgets.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from allocation.design import (
    RESOURCE_MODES,
    RoundDesign,
    Strategy,
    design_round,
    hold_positions,
    to_round_plan,
)
from allocation.plan import Plan
from allocation.positions import is_feasible
from allocation.problem import (
    AllocationError,
    Problem,
    convergence_bound,
    lambda_half_grid,
    movement_time_s,
    selection_bias,
)
from allocation.resources import allocate
from allocation.selection import floor_violations


def plan_schedule(problem: Problem, strategy: Strategy, rng: np.random.Generator) -> list[RoundDesign]:
    """Design ``max_rounds`` rounds in order (counts feed the floor; positions carry over)."""
    counts = np.zeros(problem.num_clients, dtype=int)
    prev = None if problem.initial_positions_m is None else np.asarray(problem.initial_positions_m, float)
    cache: dict = {}
    designs = []
    for t in range(problem.max_rounds):
        des = design_round(problem, strategy, t, counts, prev, rng, cache)
        designs.append(des)
        counts[des.selected] += 1
        prev = des.positions_m
    return designs


def evaluate(problem: Problem, strategy: Strategy, designs: list[RoundDesign], t0: float) -> Plan:
    """Outer search over R: allocate f and b for each prefix and keep the best bound."""
    k = problem.clients_per_round
    prev = None if problem.initial_positions_m is None else np.asarray(problem.initial_positions_m, float)
    moves = []
    for des in designs:
        moves.append(movement_time_s(prev, des.positions_m, problem.stage_speed_m_s))
        prev = des.positions_m
    moves_arr = np.array(moves)
    selections = [des.selected for des in designs]
    air_e = [des.air_energy_j for des in designs]
    airtimes = np.array([des.airtime_s for des in designs])
    eps = np.array([des.mse / k**2 for des in designs])
    bias = np.array([selection_bias(problem.phi, des.selected) for des in designs])
    # "best": the optimised allocation and the max-clock one are both feasible choices of f and b,
    # so the full method keeps whichever gives the lower bound at each R.
    modes = RESOURCE_MODES[strategy.resources]
    fixed = strategy.fixed_batch
    floor_broken = _floor_breaks(problem, selections)
    bounds, energies, plans, best = [], [], [], None
    for r in range(1, len(designs) + 1):
        chosen = None
        for max_clock in modes:
            rp = allocate(
                problem,
                selections,
                moves_arr,
                air_e,
                r,
                fixed_batch=fixed,
                max_clock=max_clock,
                airtimes_s=airtimes,
            )
            if r >= floor_broken[0]:
                rp.feasible, rp.reason = False, floor_broken[1]
            if not rp.feasible:
                chosen = chosen or (rp, None)
                continue
            agg = np.array([np.sum(b) for b in rp.batches])
            terms = convergence_bound(problem.bound, agg, eps[:r], bias[:r])
            if chosen is None or chosen[1] is None or terms["total"] < chosen[1]["total"]:
                chosen = (rp, terms)
        assert chosen is not None
        rp, terms = chosen
        plans.append(rp)
        if terms is None:
            bounds.append(math.inf)
            energies.append(math.inf)
            continue
        bounds.append(terms["total"])
        energies.append(rp.energy_j)
        if best is None or terms["total"] < best[1]["total"]:
            best = (r, terms)
    plan = Plan(
        method=strategy.name,
        feasible=best is not None,
        rounds=0,
        bound_by_rounds=bounds,
        energy_by_rounds=energies,
    )
    traces: dict[str, list[float]] = {}
    for des in designs:
        for key, values in des.traces.items():
            traces.setdefault(key, []).extend(values)
    plan.traces = traces
    plan.constants = problem.bound.to_record()
    if best is None:
        reason = plans[0].reason if plans else ""
        plan.violations.append(reason)
        plan.notes.append("no R fits the budgets and constraints: " + reason)
        plan.solve_s = time.perf_counter() - t0
        return plan
    r, terms = best
    rp = plans[r - 1]
    tau, cyc = problem.local_steps, problem.cycles
    for t in range(r):
        des = designs[t]
        b, f = rp.batches[t], rp.clocks_hz[t]
        comp_s = float(np.max(tau * cyc[des.selected] * b / f))
        plan.round_plans.append(
            to_round_plan(problem, t, des, b, f, float(moves_arr[t]), comp_s, float(airtimes[t]))
        )
    plan.rounds = r
    plan.latency_s = float(sum(p.compute_s + p.air_s + p.move_s for p in plan.round_plans))
    plan.compute_energy_j = rp.compute_energy_j
    plan.air_energy_j = rp.air_energy_j
    plan.energy_j = rp.energy_j
    plan.mean_mse = float(np.mean(eps[:r] * k**2))
    plan.bound = terms
    if (
        problem.fairness_floor > problem.effective_floor
        and (strategy.selection or problem.selection) == "hybrid"
    ):
        plan.notes.append(
            f"fairness_floor {problem.fairness_floor:g} > K/U = {problem.effective_floor:g}: enforced K/U"
        )
    plan.solve_s = time.perf_counter() - t0
    return plan


def _floor_breaks(problem: Problem, selections: list[np.ndarray]) -> tuple[float, str]:
    """(the first R whose prefix breaks the participation floor, why); (inf, "") if none does."""
    if not problem.has_floor:
        return math.inf, ""
    for r in range(1, len(selections) + 1):
        broken = floor_violations(selections[:r], problem.num_clients, problem.effective_floor)
        if broken:
            return float(r), broken[0]
    return math.inf, ""


def _design_key(problem: Problem, strategy: Strategy) -> tuple:
    """Strategies that differ only in resources share their round designs."""
    return (
        id(problem.channel),
        strategy.selection or problem.selection,
        strategy.positions,
        strategy.aggregation,
        strategy.random_placements,
    )


def solve_with(
    problem: Problem,
    strategy: Strategy,
    rng: np.random.Generator | None = None,
    shared: dict | None = None,
) -> Plan:
    """Plan with ``strategy``; ``shared`` (a dict) lets strategies with equal designs reuse them."""
    t0 = time.perf_counter()
    key = _design_key(problem, strategy)
    if shared is not None and key in shared:
        designs = shared[key]
    else:
        rng = np.random.default_rng(problem.seed) if rng is None else rng
        designs = plan_schedule(problem, strategy, rng)
        if shared is not None:
            shared[key] = designs
    plan = evaluate(problem, strategy, designs, t0)
    if not strategy.portfolio or strategy.positions != "ma" or strategy.aggregation != "ota":
        return plan
    # Moving costs latency (hence batches) that a quiet link may not pay back: the same selections
    # with the antennas held where round 0 put them, or never moved from the start, are plans the
    # method could have chosen, so it keeps the best of the three.
    start = _start_positions(problem)
    for label, held in (("held after round 0", designs[0].positions_m), ("held at the start", start)):
        alt = evaluate(problem, strategy, hold_positions(problem, strategy, designs, held), t0)
        if alt.feasible and (not plan.feasible or alt.bound["total"] < plan.bound["total"] * (1 - 1e-12)):
            alt.notes.append(f"antennas {label}: moving every round gained less than its latency cost")
            alt.traces = plan.traces
            plan = alt
    # Round designs other strategies already made for this problem (``shared``) are plans this
    # method could have picked too (same constraints, any positions are allowed): keep the best.
    for other, other_designs in list((shared or {}).items()):
        if not _is_design_key(other) or other == key or other[0] != key[0] or other[3] != "ota":
            continue
        alt = evaluate(problem, strategy, other_designs, t0)
        if alt.feasible and (not plan.feasible or alt.bound["total"] < plan.bound["total"] * (1 - 1e-12)):
            alt.notes.append(f"round designs seeded by the {other[1]} selection with {other[2]} positions")
            alt.traces = plan.traces
            plan = alt
    plan.solve_s = time.perf_counter() - t0
    return plan


def _is_design_key(key: object) -> bool:
    return isinstance(key, tuple) and len(key) == 5 and key[3] in ("ota", "digital")


def _start_positions(problem: Problem) -> np.ndarray:
    """Where the antennas are before round 0: the given initial positions, else the fixed array."""
    grid = lambda_half_grid(
        problem.num_antennas, problem.wavelength_m, problem.region_m, problem.min_spacing_m
    )
    init = problem.initial_positions_m
    if init is not None and is_feasible(
        np.asarray(init, float), problem.half_region_m, problem.min_spacing_m, 1e-7
    ):
        return np.asarray(init, dtype=float)
    return grid


def min_energy_to_target(
    problem: Problem, strategy: Strategy, target: float, shared: dict, iterations: int = 30
) -> tuple[float, Plan] | None:
    """The least energy budget whose plan still reaches bound <= ``target`` (bisection).

    The optimiser spends whatever energy budget it is given on larger batches; this asks the
    other question, "what does reaching this accuracy cost?", re-using the round designs.
    """

    def plan_at(energy_j: float) -> Plan | None:
        try:
            p = replace(problem, energy_budget_j=energy_j)
        except AllocationError:
            return None
        p.channel = problem.channel  # same object: the shared designs apply
        return solve_with(p, strategy, shared=shared)

    hi_plan = plan_at(problem.energy_budget_j)
    if hi_plan is None or hi_plan.rounds_to(target) is None:
        return None
    lo, hi = 0.0, problem.energy_budget_j
    best = (hi_plan.energy_to(target) or hi, hi_plan)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        plan = plan_at(mid)
        if plan is not None and plan.rounds_to(target) is not None:
            hi = mid
            e = plan.energy_to(target)
            if e is not None and e < best[0]:
                best = (e, plan)
        else:
            lo = mid
        if hi - lo < 1e-3 * hi:
            break
    return best
