"""One round's design: which clients send, where the antennas stand, and the receive beamformer.

A ``Strategy`` names how each part is decided, so the full method and every baseline run
through the same code under the same budgets:
  selection  pdd | hybrid | random | greedy | round_robin   (None: the problem's)
  positions  ma (optimised) | fixed (lambda/2 array) | random_best (best of N) | grid_search
  resources  best (the better of the two below at each R) | optimized (deadline clocks, batches
             by KKT + repair) | max_clock (f_max, fixed b)
  aggregation ota | digital (error-free, TDMA airtime: the learning upper bound)

Each selection and positions variant is one function in a registry (``SELECTIONS``,
``PLACEMENTS``), and the resource variants are the clock modes each tries (``RESOURCE_MODES``):
a new variant is one entry, and a ``Strategy`` naming no entry is refused when it is made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from allocation import aircomp
from allocation.beamformer import optimize_beamformer
from allocation.placement import best_random_placement, grid_coordinate_search
from allocation.plan import RoundPlan, complex_to_pairs
from allocation.positions import is_feasible, ma_positions, random_feasible_positions
from allocation.problem import (
    AllocationError,
    Problem,
    air_energy_j,
    airtime_s,
    lambda_half_grid,
    round_energy_j,
)
from allocation.selection import (
    enumerate_select,
    forced_by_floor,
    greedy_select,
    pdd_select,
    random_select,
    round_robin_select,
)


@dataclass(frozen=True)
class Strategy:
    """How a plan decides each part of a round (see the module docstring for the names)."""

    name: str = "ma-ota"
    selection: str | None = None
    positions: str = "ma"
    resources: str = "best"
    aggregation: str = "ota"
    random_placements: int = 50
    fixed_batch: int | None = None
    # The full method: also weigh held antennas and other strategies' designs (see solve_with).
    portfolio: bool = False

    def __post_init__(self) -> None:
        for part, allowed in (
            ("selection", SELECTIONS),
            ("positions", PLACEMENTS),
            ("resources", RESOURCE_MODES),
            ("aggregation", AGGREGATIONS),
        ):
            value = getattr(self, part)
            if value not in allowed and not (part == "selection" and value is None):
                raise AllocationError(
                    f"Strategy {self.name!r}: {part}={value!r} is unknown; allowed: {sorted(allowed)}"
                )


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


@dataclass
class RoundContext:
    """What every selection and positions variant may read about the round being designed."""

    problem: Problem
    strategy: Strategy
    round_index: int
    # Clients the participation floor forces into this round.
    forced: np.ndarray
    # Where the position search starts: the previous round's positions if feasible, else the grid.
    start: np.ndarray
    # The fixed lambda/2 array.
    grid: np.ndarray
    previous_m: np.ndarray | None
    rng: np.random.Generator
    # Results shared by the rounds of one schedule (keyed by what they depend on).
    cache: dict
    # None: the problem's number of position starts (a whole plan); a number: re-planning.
    position_starts: int | None

    @property
    def previous_key(self) -> bytes | None:
        return None if self.previous_m is None else self.previous_m.tobytes()


@dataclass
class Selection:
    """A selection variant's answer: the chosen clients, and what it learnt on the way."""

    selected: np.ndarray
    # Where PDD's relaxation put the antennas: one more start for the position search.
    positions_hint: np.ndarray | None = None
    traces: dict[str, list[float]] = field(default_factory=dict)


# --- selection variants -------------------------------------------------------------------------
def _select_pdd(ctx: RoundContext) -> Selection:
    problem, k = ctx.problem, ctx.problem.clients_per_round
    key = ("pdd", tuple(ctx.forced), ctx.strategy.positions, ctx.previous_key)
    if key not in ctx.cache:
        # Few enough candidate sets: the exact answer (every set judged by the round's true
        # objective) is cheaper than PDD's relaxation; PDD takes the large problems.
        exact = enumerate_select(problem, k, ctx.start, ctx.forced)
        movable = ctx.strategy.positions == "ma"
        ctx.cache[key] = (
            exact
            if exact is not None
            else pdd_select(problem, k, ctx.start, ctx.rng, forced=ctx.forced, movable=movable)
        )
    res = ctx.cache[key]
    if isinstance(res, np.ndarray):
        return Selection(res, traces={"selection_enumerated": [1.0]})
    traces = {"pdd_objective": list(res.objective_trace), "pdd_violation": list(res.violation_trace)}
    return Selection(res.selected, res.positions_m, traces)


def _select_greedy(ctx: RoundContext) -> Selection:
    return Selection(greedy_select(ctx.problem, ctx.problem.clients_per_round, ctx.start, ctx.forced))


def _select_random(ctx: RoundContext) -> Selection:
    problem = ctx.problem
    return Selection(random_select(ctx.rng, problem.num_clients, problem.clients_per_round, ctx.forced))


def _select_round_robin(ctx: RoundContext) -> Selection:
    problem = ctx.problem
    u, k = problem.num_clients, problem.clients_per_round
    return Selection(round_robin_select(u, k, ctx.round_index, ctx.forced))


SELECTIONS: dict[str, Callable[[RoundContext], Selection]] = {
    "pdd": _select_pdd,
    "hybrid": _select_pdd,
    "greedy": _select_greedy,
    "random": _select_random,
    "round_robin": _select_round_robin,
}


# --- positions variants -------------------------------------------------------------------------
# The positions, the search's traces, and its combiner (None: the round optimises one for them).
Placed = tuple[np.ndarray, dict[str, list[float]], np.ndarray | None]


def _place_ma(ctx: RoundContext, demand: np.ndarray, hint: np.ndarray | None) -> Placed:
    problem = ctx.problem
    starts = [ctx.start] + ([hint] if hint is not None else [])
    n_starts = problem.position_starts if ctx.position_starts is None else ctx.position_starts
    # Drawn before the random starts, so every start's beamformer restarts are the same however
    # many starts follow (more starts never give a worse answer).
    seed = int(ctx.rng.integers(2**32))
    if not any(np.array_equal(s, ctx.grid) for s in starts):
        starts.append(ctx.grid)
    while len(starts) < n_starts:
        starts.append(
            random_feasible_positions(
                ctx.rng, problem.num_antennas, problem.half_region_m, problem.min_spacing_m
            )
        )
    best = ma_positions(problem, starts[: max(n_starts, 1)], demand, beamformer_starts=3, seed=seed)
    return best.positions_m, {"position_objective": list(best.trace)}, best.beamformer.combiner


def _place_fixed(ctx: RoundContext, demand: np.ndarray, hint: np.ndarray | None) -> Placed:
    return ctx.grid, {}, None


def _place_random_best(ctx: RoundContext, demand: np.ndarray, hint: np.ndarray | None) -> Placed:
    pos, _ = best_random_placement(ctx.problem, demand, ctx.rng, ctx.strategy.random_placements)
    return pos, {}, None


def _place_grid_search(ctx: RoundContext, demand: np.ndarray, hint: np.ndarray | None) -> Placed:
    pos, _ = grid_coordinate_search(ctx.problem, demand)
    return pos, {}, None


PLACEMENTS: dict[str, Callable[[RoundContext, np.ndarray, np.ndarray | None], Placed]] = {
    "ma": _place_ma,
    "fixed": _place_fixed,
    "random_best": _place_random_best,
    "grid_search": _place_grid_search,
}
# Per resources variant, the max_clock settings tried at each R ("best": both, keep the better).
RESOURCE_MODES: dict[str, tuple[bool, ...]] = {
    "optimized": (False,),
    "max_clock": (True,),
    "best": (False, True),
}
AGGREGATIONS = ("ota", "digital")


# --- one round ----------------------------------------------------------------------------------
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
    half, d = problem.half_region_m, problem.min_spacing_m
    grid = lambda_half_grid(problem.num_antennas, problem.wavelength_m, problem.region_m, d)
    movable = strategy.positions == "ma"
    feasible_previous = previous_m is not None and movable and is_feasible(previous_m, half, d, 1e-7)
    # The floor is a constraint of the problem (selection "hybrid"), so every method keeps it.
    forced = (
        forced_by_floor(counts, round_index, problem.effective_floor, problem.clients_per_round)
        if problem.has_floor
        else np.zeros(0, dtype=int)
    )
    ctx = RoundContext(
        problem=problem,
        strategy=strategy,
        round_index=round_index,
        forced=forced,
        start=previous_m if feasible_previous else grid,
        grid=grid,
        previous_m=previous_m,
        rng=rng,
        cache={} if cache is None else cache,
        position_starts=position_starts,
    )
    method = strategy.selection or problem.selection
    if method not in SELECTIONS:
        raise AllocationError(f"unknown selection {method!r}; allowed: {sorted(SELECTIONS)}")
    choice = SELECTIONS[method](ctx)
    selected, traces = choice.selected, dict(choice.traces)
    demand = np.zeros(problem.num_clients)
    demand[selected] = 1.0
    pkey = ("pos", strategy.positions, tuple(selected), ctx.previous_key)
    if pkey not in ctx.cache:
        pos, more, combiner = PLACEMENTS[strategy.positions](ctx, demand, choice.positions_hint)
        traces.update(more)
        if combiner is None:
            h_eff = problem.effective_channels(pos)
            combiner = optimize_beamformer(
                h_eff, demand, solver=problem.beamformer_solver, starts=3, rng=rng
            ).combiner
        ctx.cache[pkey] = (pos, combiner / np.linalg.norm(combiner))
    pos, m = ctx.cache[pkey]
    return finish_design(problem, strategy, selected, pos, m, traces)


def finish_design(
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
    # Two aggregations, fixed by the model (docs/explanation/optimizer.md section 7): an if reads better than a registry here.
    if strategy.aggregation == "digital":
        air, air_e = _digital_airtime(problem, selected, pos)
        return RoundDesign(selected, pos, m, 0.0, np.zeros(len(selected), complex), air, air_e, traces)
    eta = aircomp.power_scale(m, h_raw, power, phi)
    scalars = aircomp.zero_forcing_scalars(m, h_raw, phi, eta)
    mse = aircomp.aggregation_mse(m, h_raw, power, phi, problem.noise_power_w)
    air = airtime_s(problem.payload_reals, problem.bandwidth_hz, problem.air_overhead_s)
    air_e = air_energy_j(problem.payload_reals, problem.bandwidth_hz, np.abs(scalars) ** 2)
    return RoundDesign(selected, pos, m, mse, scalars, air, air_e, traces)


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
        out.append(finish_design(problem, strategy, des.selected, np.asarray(positions_m, float), m, {}))
    return out


def to_round_plan(
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
        energy_j=round_energy_j(problem, des.selected, batches, clocks_hz, des.air_energy_j),
        air_energy_j=float(np.sum(des.air_energy_j)),
    )
