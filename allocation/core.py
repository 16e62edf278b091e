"""The allocation loop: per-round designs (selection, positions, beamformer), then R, f and b.

A ``Strategy`` names how each part is decided, so the full method and every baseline run
through the same code under the same budgets:
  selection  pdd | hybrid | random | greedy | round_robin   (None: the problem's)
  positions  ma (optimised) | fixed (lambda/2 array) | random_best (best of N) | grid_search
  resources  best (the better of the two below at each R) | optimized (deadline clocks, batches
             by KKT + repair) | max_clock (f_max, fixed b)
  aggregation ota | digital (error-free, TDMA airtime: the learning upper bound)

``solve`` plans ``max_rounds`` rounds one after another (participation counts feed the
fairness floor, and each round starts from the previous positions), then searches R: for every
prefix it allocates clocks and batches and evaluates the bound, keeping the best feasible R.
The participation floor (selection "hybrid") is a constraint of the problem: every method keeps
it, and a prefix that breaks it is infeasible. The full method (``portfolio``) also weighs
plans it could have picked: its selections with the antennas held still (moving costs latency,
hence batches), and any round designs another strategy already made for the same problem
(``shared``), so it never reports a worse bound than a feasible baseline.
``plan_round`` re-plans a single round from the current channels and what is left of the budgets.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from allocation import aircomp
from allocation.beamformer import optimize_beamformer
from allocation.plan import Plan, RoundPlan, complex_to_pairs
from allocation.positions import (
    is_feasible,
    ma_positions,
    random_feasible_positions,
)
from allocation.problem import (
    AllocationError,
    Problem,
    air_energy_j,
    airtime_s,
    compute_energy_j,
    convergence_bound,
    lambda_half_grid,
    movement_time_s,
    selection_bias,
)
from allocation.resources import allocate, integer_batches
from allocation.selection import (
    enumerate_select,
    floor_violations,
    forced_by_floor,
    greedy_select,
    pdd_select,
    random_select,
    round_robin_select,
)


@dataclass(frozen=True)
class Strategy:
    name: str = "ma-ota"
    selection: str | None = None
    positions: str = "ma"
    resources: str = "best"
    aggregation: str = "ota"
    random_placements: int = 50
    fixed_batch: int | None = None
    # The full method: also weigh held antennas and other strategies' designs (see solve_with).
    portfolio: bool = False


@dataclass
class RoundDesign:
    selected: np.ndarray
    positions_m: np.ndarray
    combiner: np.ndarray  # unit norm
    mse: float
    tx_scalars: np.ndarray
    airtime_s: float
    air_energy_j: np.ndarray
    traces: dict[str, list[float]] = field(default_factory=dict)


# --- positions for a chosen set -----------------------------------------------------------------
def best_random_placement(
    problem: Problem, demand: np.ndarray, rng: np.random.Generator, count: int
) -> tuple[np.ndarray, float]:
    """Best of ``count`` random feasible placements, each with its optimised beamformer."""
    best_pos, best_obj = None, math.inf
    for _ in range(count):
        pos = random_feasible_positions(
            rng, problem.num_antennas, problem.half_region_m, problem.min_spacing_m
        )
        obj = optimize_beamformer(
            problem.effective_channels(pos), demand, solver=problem.beamformer_solver
        ).objective
        if obj < best_obj:
            best_pos, best_obj = pos, obj
    assert best_pos is not None
    return best_pos, best_obj


def grid_coordinate_search(problem: Problem, demand: np.ndarray, sweeps: int = 2) -> tuple[np.ndarray, float]:
    """Antennas on the lambda/2 lattice; move one antenna at a time to its best free point."""
    half, d, step = (
        problem.half_region_m,
        problem.min_spacing_m,
        max(problem.wavelength_m / 2, problem.min_spacing_m),
    )
    axis = np.arange(-half, half + 1e-12, step)
    axis = axis - (axis[0] + axis[-1]) / 2.0  # centre the lattice in the region
    lattice = np.array([(x, y) for x in axis for y in axis])
    start = lambda_half_grid(problem.num_antennas, problem.wavelength_m, problem.region_m, d)
    pos = np.array([lattice[np.argmin(np.linalg.norm(lattice - p, axis=1))] for p in start])
    if not is_feasible(pos, half, d, 1e-9):
        pos = start

    warm: list[np.ndarray | None] = [None]  # the best point's combiner warm-starts every candidate

    def value(p: np.ndarray) -> float:
        res = optimize_beamformer(
            problem.effective_channels(p),
            demand,
            start=warm[0],
            solver=problem.beamformer_solver,
            max_steps=10,
        )
        value.last = res.combiner  # type: ignore[attr-defined]
        return res.objective

    best = value(pos)
    warm[0] = value.last  # type: ignore[attr-defined]
    for _ in range(sweeps):
        improved = False
        for n in range(problem.num_antennas):
            others = np.delete(pos, n, axis=0)
            for q in lattice:
                if others.size and np.min(np.linalg.norm(others - q, axis=1)) < d * (1 - 1e-9):
                    continue
                cand = pos.copy()
                cand[n] = q
                v = value(cand)
                if v < best * (1 - 1e-9):
                    pos, best, improved = cand, v, True
                    warm[0] = value.last  # type: ignore[attr-defined]
        if not improved:
            break
    return pos, best


# --- one round ----------------------------------------------------------------------------------
def _digital_airtime(
    problem: Problem, selected: np.ndarray, positions_m: np.ndarray
) -> tuple[float, np.ndarray]:
    """TDMA: each client sends q * bits at B log2(1 + SNR_k) with MRC; energy P_k * its time."""
    h = np.asarray(problem.channel.response(positions_m))[selected]
    snr = problem.power[selected] * np.sum(np.abs(h) ** 2, axis=1) / problem.noise_power_w
    times = (
        problem.payload_reals * problem.digital_bits_per_real / (problem.bandwidth_hz * np.log2(1.0 + snr))
    )
    return float(np.sum(times)) + problem.air_overhead_s, problem.power[selected] * times


def design_round(
    problem: Problem,
    strategy: Strategy,
    round_index: int,
    counts: np.ndarray,
    previous_m: np.ndarray | None,
    rng: np.random.Generator,
    cache: dict | None = None,
    position_starts: int | None = None,
) -> RoundDesign:
    """Selection, positions and beamformer for one round (channels: ``problem.channel``)."""
    cache = {} if cache is None else cache
    u, k = problem.num_clients, problem.clients_per_round
    half, d = problem.half_region_m, problem.min_spacing_m
    method = strategy.selection or problem.selection
    grid = lambda_half_grid(problem.num_antennas, problem.wavelength_m, problem.region_m, d)
    movable = strategy.positions == "ma"
    start = (
        previous_m
        if (previous_m is not None and movable and is_feasible(previous_m, half, d, 1e-7))
        else grid
    )
    traces: dict[str, list[float]] = {}
    # The floor is a constraint of the problem (selection "hybrid"), so every method keeps it.
    forced = (
        forced_by_floor(counts, round_index, problem.effective_floor, k)
        if problem.has_floor
        else np.zeros(0, dtype=int)
    )
    pdd_positions = None
    if method in ("pdd", "hybrid"):
        key = ("pdd", tuple(forced), strategy.positions, None if previous_m is None else previous_m.tobytes())
        if key not in cache:
            # Few enough candidate sets: the exact answer (every set judged by the round's true
            # objective) is cheaper than PDD's relaxation; PDD takes the large problems.
            exact = enumerate_select(problem, k, start, forced)
            cache[key] = (
                exact
                if exact is not None
                else pdd_select(problem, k, start, rng, forced=forced, movable=movable)
            )
        res = cache[key]
        if isinstance(res, np.ndarray):
            selected = res
            traces = {"selection_enumerated": [1.0]}
        else:
            selected = res.selected
            pdd_positions = res.positions_m
            traces = {"pdd_objective": list(res.objective_trace), "pdd_violation": list(res.violation_trace)}
    elif method == "greedy":
        selected = greedy_select(problem, k, start, forced)
    elif method == "random":
        selected = random_select(rng, u, k, forced)
    elif method == "round_robin":
        selected = round_robin_select(u, k, round_index, forced)
    else:
        raise AllocationError(f"unknown selection {method!r}")
    demand = np.zeros(u)
    demand[selected] = 1.0

    pkey = ("pos", strategy.positions, tuple(selected), None if previous_m is None else previous_m.tobytes())
    if pkey not in cache:
        if strategy.positions == "ma":
            starts = [start] + ([pdd_positions] if pdd_positions is not None else [])
            n_starts = problem.position_starts if position_starts is None else position_starts
            if not any(np.array_equal(s, grid) for s in starts):
                starts.append(grid)
            while len(starts) < n_starts:
                starts.append(random_feasible_positions(rng, problem.num_antennas, half, d))
            # Re-planning on the round's critical path polishes only the best MM run.
            polished = 1 if position_starts is not None else 2
            best = ma_positions(problem, starts[: max(n_starts, 1)], demand, polished=polished)
            pos = best.positions_m
            traces["position_objective"] = list(best.trace)
        elif strategy.positions == "fixed":
            pos = grid
        elif strategy.positions == "random_best":
            pos, _ = best_random_placement(problem, demand, rng, strategy.random_placements)
        elif strategy.positions == "grid_search":
            pos, _ = grid_coordinate_search(problem, demand)
        else:
            raise AllocationError(f"unknown positions strategy {strategy.positions!r}")
        h_eff = problem.effective_channels(pos)
        bf = optimize_beamformer(h_eff, demand, solver=problem.beamformer_solver, starts=3, rng=rng)
        cache[pkey] = (pos, bf.combiner / np.linalg.norm(bf.combiner))
    pos, m = cache[pkey]
    return _finish_design(problem, strategy, selected, pos, m, traces)


def _finish_design(
    problem: Problem,
    strategy: Strategy,
    selected: np.ndarray,
    pos: np.ndarray,
    m: np.ndarray,
    traces: dict[str, list[float]],
) -> RoundDesign:
    """The round's transmit scalars, MSE, airtime and air energy for set, positions and combiner."""
    h_raw = np.asarray(problem.channel.response(pos))[selected]
    power, phi = problem.power[selected], problem.phi[selected]
    if strategy.aggregation == "digital":
        air, air_e = _digital_airtime(problem, selected, pos)
        return RoundDesign(selected, pos, m, 0.0, np.zeros(len(selected), complex), air, air_e, traces)
    eta = aircomp.power_scale(m, h_raw, power, phi)
    scalars = aircomp.zero_forcing_scalars(m, h_raw, phi, eta)
    mse = aircomp.aggregation_mse(m, h_raw, power, phi, problem.noise_power_w)
    air = airtime_s(problem.payload_reals, problem.bandwidth_hz, problem.air_overhead_s)
    air_e = air_energy_j(problem.payload_reals, problem.bandwidth_hz, np.abs(scalars) ** 2)
    return RoundDesign(selected, pos, m, mse, scalars, air, air_e, traces)


# --- the whole plan -----------------------------------------------------------------------------
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
    modes = {"optimized": [False], "max_clock": [True], "best": [False, True]}[strategy.resources]
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
            _round_plan(problem, t, des, b, f, float(moves_arr[t]), comp_s, float(airtimes[t]))
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


def hold_positions(
    problem: Problem, strategy: Strategy, designs: list[RoundDesign], positions_m: np.ndarray
) -> list[RoundDesign]:
    """The same selections with the antennas held at ``positions_m`` (beamformers re-optimised)."""
    out = []
    for des in designs:
        demand = np.zeros(problem.num_clients)
        demand[des.selected] = 1.0
        bf = optimize_beamformer(
            problem.effective_channels(positions_m),
            demand,
            start=des.combiner,
            solver=problem.beamformer_solver,
        )
        m = bf.combiner / np.linalg.norm(bf.combiner)
        out.append(_finish_design(problem, strategy, des.selected, np.asarray(positions_m, float), m, {}))
    return out


# --- per-round re-planning ----------------------------------------------------------------------
def plan_round(
    problem: Problem,
    round_index: int,
    counts: np.ndarray,
    previous_positions_m: np.ndarray | None,
    remaining_latency_s: float,
    remaining_energy_j: float,
    remaining_rounds: int,
    rng: np.random.Generator,
    strategy: Strategy | None = None,
) -> RoundPlan:
    """Plan one round from the current channels (``problem.channel``) and what is left.

    The round gets an equal share of the remaining latency and energy; the movement from
    ``previous_positions_m`` counts against its latency. Fast: one position start besides the
    previous positions, and the PDD warm-started from them.
    """
    strategy = strategy or Strategy()
    if remaining_rounds < 1:
        raise AllocationError(f"remaining_rounds must be >= 1 (got {remaining_rounds})")
    prev = None if previous_positions_m is None else np.asarray(previous_positions_m, dtype=float)
    des = design_round(problem, strategy, round_index, np.asarray(counts), prev, rng, position_starts=2)
    move = movement_time_s(prev, des.positions_m, problem.stage_speed_m_s)
    share_t = remaining_latency_s / remaining_rounds
    deadline = share_t - des.airtime_s - move
    s = des.selected
    tau, cyc, fmax = problem.local_steps, problem.cycles[s], problem.clock_max[s]
    if deadline <= 0:
        raise AllocationError(
            f"round {round_index}: {share_t:.4g} s left per round cannot cover air {des.airtime_s:.4g} s "
            f"and movement {move:.4g} s"
        )
    cap = np.minimum(problem.batch_max, np.floor(fmax * deadline / (tau * cyc) + 1e-9))
    a = problem.switched_capacitance * (tau * cyc) ** 3 / deadline**2
    energy = remaining_energy_j / remaining_rounds - float(np.sum(des.air_energy_j))
    if np.any(cap < 1) or np.sum(a) > energy:
        raise AllocationError(
            f"round {round_index}: the remaining budgets ({remaining_latency_s:.4g} s, "
            f"{remaining_energy_j:.4g} J over {remaining_rounds} rounds) cannot pay batch 1"
        )
    if strategy.resources == "max_clock":
        # Flat out at f_max with one batch for all: the largest that still meets the deadline.
        b = np.full(len(s), np.min(cap))
        f = np.asarray(fmax, dtype=float)
    else:
        b = integer_batches(a, cap, energy)
        f = tau * cyc * b / deadline
    return _round_plan(problem, round_index, des, b, f, move, deadline, des.airtime_s)


def _round_plan(
    problem: Problem,
    round_index: int,
    des: RoundDesign,
    batches: np.ndarray,
    clocks_hz: np.ndarray,
    move_s: float,
    compute_s: float,
    air_s: float,
) -> RoundPlan:
    """The plan of round design ``des`` run with these batches and clocks; energy is compute plus air."""
    cyc = problem.cycles[des.selected]
    comp_e = float(
        np.sum(compute_energy_j(problem.switched_capacitance, problem.local_steps, cyc, batches, clocks_hz))
    )
    return RoundPlan(
        round_index=round_index,
        selected=[int(v) for v in des.selected],
        positions_m=des.positions_m.tolist(),
        combiner=complex_to_pairs(des.combiner),
        tx_scalars=complex_to_pairs(des.tx_scalars),
        clocks_hz=[float(v) for v in clocks_hz],
        batches=[int(v) for v in batches],
        mse=float(des.mse),
        ota_error=float(des.mse / problem.clients_per_round**2),
        move_s=move_s,
        compute_s=compute_s,
        air_s=air_s,
        energy_j=comp_e + float(np.sum(des.air_energy_j)),
    )


def min_energy_to_target(
    problem: Problem, strategy: Strategy, target: float, shared: dict, iterations: int = 30
) -> tuple[float, Plan] | None:
    """The least energy budget whose plan still reaches bound <= ``target`` (bisection).

    The optimiser spends whatever energy budget it is given on larger batches; this asks the
    other question, "what does reaching this accuracy cost?", re-using the round designs.
    """
    from dataclasses import replace

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
