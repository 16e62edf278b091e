"""Rounds R, clocks f and batches b under the latency and energy budgets (docs/explanation/system-model.md section 4; optimizer.md section 7a).

For a given R the latency budget leaves every round the same compute deadline
T_c = (T_max - sum_t (T_air + T_mov,t)) / R (equal deadlines are optimal: energy is convex in
1/T). At that deadline the energy-optimal clock is the one that just meets it,
f_k = tau c_k b_k / T_c, so E_k = kappa (tau c_k b_k)^3 / T_c^2. The batches then maximise
B_t = sum_k b_k (the variance term of the bound falls as 1/B_t) under each round's share of the
energy budget: the KKT point is b_k = (3 nu a_k)^(-1/2), clipped to [1, cap_k], with nu found by
bisection. Integer batches come from rounding down (always feasible) and a greedy repair that
spends what is left, cheapest increment first. R itself is chosen by the outer search in
``allocation.solve`` (enumeration: the bound is not monotone in R once every term counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from allocation.problem import (
    Problem,
    airtime_s,
    compute_energy_j,
    compute_time_s,
    deadline_clock_hz,
)


@dataclass
class ResourcePlan:
    rounds: int
    feasible: bool
    reason: str = ""
    deadline_s: float = 0.0  # compute deadline per round
    batches: list[np.ndarray] = field(default_factory=list)  # per round, over the selected
    clocks_hz: list[np.ndarray] = field(default_factory=list)
    latency_s: float = 0.0
    compute_energy_j: float = 0.0
    air_energy_j: float = 0.0

    @property
    def energy_j(self) -> float:
        return self.compute_energy_j + self.air_energy_j


def continuous_batches(a: np.ndarray, cap: np.ndarray, energy_j: float) -> np.ndarray:
    """max sum b s.t. sum a b^3 <= E, 1 <= b <= cap (a > 0). Assumes sum a <= E (b = 1 fits)."""
    if np.sum(a * cap**3) <= energy_j:
        return cap.astype(float)

    def batches(log_nu: float) -> np.ndarray:
        return np.clip(1.0 / np.sqrt(3.0 * np.exp(log_nu) * a), 1.0, cap)

    lo, hi = -200.0, 200.0  # energy(b(nu)) falls as nu grows
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if np.sum(a * batches(mid) ** 3) > energy_j:
            lo = mid
        else:
            hi = mid
    return batches(hi)


def integer_batches(a: np.ndarray, cap: np.ndarray, energy_j: float) -> np.ndarray:
    """Round the continuous optimum down, then add samples greedily while the energy allows."""
    b = np.maximum(np.floor(continuous_batches(a, cap, energy_j) + 1e-9), 1.0)
    spent = float(np.sum(a * b**3))
    while True:
        inc = a * ((b + 1) ** 3 - b**3)
        inc[b >= cap] = np.inf
        j = int(np.argmin(inc))
        if not np.isfinite(inc[j]) or spent + inc[j] > energy_j:
            break
        b[j] += 1
        spent += float(inc[j])
    return b


def allocate(
    problem: Problem,
    selections: list[np.ndarray],
    move_s: np.ndarray,
    air_energy_rounds: list[np.ndarray],
    rounds: int,
    fixed_batch: int | None = None,
    max_clock: bool = False,
    airtimes_s: np.ndarray | None = None,
) -> ResourcePlan:
    """Deadline, clocks and integer batches for the first ``rounds`` planned rounds.

    ``air_energy_rounds[t]`` is the transmit energy of round t's selected clients (J).

    ``max_clock`` gives the "max clock, fixed batch" baseline: every client runs at f_max with one
    common batch, ``fixed_batch`` or else the largest (<= b_max) that lets ``rounds`` rounds fit.
    """
    sel = selections[:rounds]
    ota_air = airtime_s(problem.payload_reals, problem.bandwidth_hz, problem.air_overhead_s)
    # Per-round airtime: constant for OTA (everyone at once); the digital baseline passes its own.
    airs = np.full(rounds, ota_air) if airtimes_s is None else np.asarray(airtimes_s[:rounds], float)
    air = float(np.mean(airs))
    moves = float(np.sum(move_s[:rounds]))
    air_e = float(sum(np.sum(e) for e in air_energy_rounds[:rounds]))
    tau, kappa = problem.local_steps, problem.switched_capacitance
    cyc, fmax = problem.cycles, problem.clock_max
    plan = ResourcePlan(rounds=rounds, feasible=False, air_energy_j=air_e)
    if max_clock:
        if fixed_batch is None:
            # The largest common batch that lets ``rounds`` rounds fit at f_max (at most b_max).
            per_round = (problem.latency_budget_s - float(np.sum(airs)) - moves) / rounds
            b0 = int(min(problem.batch_max, np.floor(np.min(fmax * per_round / (tau * cyc)) + 1e-9)))
            if b0 < 1:
                plan.reason = f"at {rounds} rounds even batch 1 at max clock misses the latency budget"
                return plan
        else:
            b0 = int(fixed_batch)
        lat, comp_e = 0.0, 0.0
        for t, s in enumerate(sel):
            f = fmax[s]
            b = np.full(len(s), float(b0))
            lat += float(np.max(compute_time_s(tau, cyc[s], b, f))) + airs[t]
            comp_e += float(np.sum(compute_energy_j(kappa, tau, cyc[s], b, f)))
            plan.batches.append(b)
            plan.clocks_hz.append(f.copy())
        plan.latency_s, plan.compute_energy_j = lat + moves, comp_e
        plan.deadline_s = float(np.max(tau * cyc * b0 / fmax))
        if plan.latency_s > problem.latency_budget_s * (1 + 1e-12):
            plan.reason = f"latency {plan.latency_s:.4g} s > budget {problem.latency_budget_s:.4g} s"
        elif plan.energy_j > problem.energy_budget_j * (1 + 1e-12):
            plan.reason = f"energy {plan.energy_j:.4g} J > budget {problem.energy_budget_j:.4g} J"
        else:
            plan.feasible = True
        return plan
    deadline = (problem.latency_budget_s - rounds * air - moves) / rounds
    plan.deadline_s = deadline
    if deadline <= 0:
        plan.reason = f"{rounds} rounds of airtime and movement exceed the latency budget"
        return plan
    budget = problem.energy_budget_j - air_e
    if budget <= 0:
        plan.reason = f"air energy {air_e:.4g} J alone exceeds the energy budget"
        return plan
    carry = 0.0
    total_e = 0.0
    for t, s in enumerate(sel):
        cap = np.minimum(problem.batch_max, np.floor(fmax[s] * deadline / (tau * cyc[s]) + 1e-9))
        if np.any(cap < 1):
            plan.reason = f"at {rounds} rounds the deadline {deadline:.4g} s is too short for batch 1"
            return plan
        a = kappa * (tau * cyc[s]) ** 3 / deadline**2
        share = budget / rounds + carry
        if np.sum(a) > share * (1 + 1e-12):
            plan.reason = f"at {rounds} rounds the energy share {share:.4g} J cannot pay batch 1 (round {t})"
            return plan
        b = integer_batches(a, cap, share) if fixed_batch is None else np.minimum(cap, fixed_batch)
        e = float(np.sum(a * b**3))
        carry = share - e
        total_e += e
        f = deadline_clock_hz(tau, cyc[s], b, deadline)
        plan.batches.append(b)
        plan.clocks_hz.append(f)
    plan.compute_energy_j = total_e
    plan.latency_s = rounds * (deadline + air) + moves
    plan.feasible = True
    return plan
