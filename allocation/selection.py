"""Client selection for one round: PDD with copy variables (docs/explanation/optimizer.md section 7), and simple rules.

The binary x in {0,1}^U with sum x = K is relaxed to the box and tied to a copy x~ that
carries the binary constraint (x~ (1 - x~) = 0, sum x~ = K) through the equality h = x - x~ = 0.
PDD (Shi and Hong) minimises f + 1/(2 rho) ||h + rho lambda||^2 by BCD over the blocks
  m (SCA beamformer), r (dual-weighted position step), x (a small convex QP),
  x~ (closed form: the K-hot vector nearest x + rho lambda, i.e. its K largest entries),
then updates lambda when the violation dropped enough, else shrinks rho. (The bilinear form
x (1 - x~) = 0 has a fractional fixed point, mass spread evenly, so the copy holds the binaries.)

f is the selection-dependent part of the convergence bound: the OTA term
L eta G^2 sigma^2 J(x) / K^2, with J(x) = max_k x_k ||m||^2 / |h~_k^H m|^2, plus the selection-bias
term zeta^2 4 (sum_{k not in S} K_k)^2 / (sum_k K_k)^2 (both averaged over the same R rounds).

"hybrid": a participation floor. Any client a whole round behind its floor share is forced in
(most behind first); PDD chooses the rest by channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from allocation.beamformer import BeamformerResult, optimize_beamformer
from allocation.positions import position_step
from allocation.problem import Problem


@dataclass
class SelectionResult:
    selected: np.ndarray  # sorted client indices
    positions_m: np.ndarray
    beamformer: BeamformerResult | None
    objective_trace: list[float] = field(default_factory=list)
    violation_trace: list[float] = field(default_factory=list)
    forced: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))


def forced_by_floor(counts: np.ndarray, round_index: int, floor: float, k: int) -> np.ndarray:
    """Clients that must take part now so that every prefix keeps the floor (at most K, sorted).

    The floor is the constraint count_k(R) >= floor(floor * R) after every R rounds. Client k's
    next participation is due before round R_k - 1 with R_k = ceil((count_k + 1) / floor), so it
    has slack s_k = R_k - 1 - t rounds after this one. Earliest-deadline reasoning: if more than
    K h clients have slack <= h, the next h rounds cannot serve them all, so the excess (the most
    urgent, most behind first) goes now.
    """
    c = np.asarray(counts, dtype=float)
    if floor <= 0:
        return np.zeros(0, dtype=int)
    due = np.ceil((c + 1.0) / floor - 1e-9)  # the first prefix R that needs one more participation
    slack = due - 1.0 - round_index
    deficit = floor * (round_index + 1) - c
    order = np.lexsort((-deficit, slack))  # most urgent first, then most behind
    sorted_slack = slack[order]
    need = 0
    for i, s_i in enumerate(sorted_slack):
        # clients order[: i + 1] all need a turn within max(s_i, 0) rounds after this one
        need = max(need, i + 1 - k * int(max(s_i, 0)))
    return np.sort(order[: min(need, k)])


def floor_violations(selections: list[np.ndarray], num_clients: int, floor: float) -> list[str]:
    """Where a schedule breaks count_k(R) >= floor(floor * R) for some client and prefix R (empty: kept)."""
    counts = np.zeros(num_clients, dtype=int)
    out: list[str] = []
    for r, sel in enumerate(selections, start=1):
        counts[np.asarray(sel, dtype=int)] += 1
        need = int(np.floor(floor * r + 1e-9))
        short = np.flatnonzero(counts < need)
        if short.size:
            out.append(
                f"fairness floor {floor:g}: after {r} rounds clients {short.tolist()} took part "
                f"{counts[short].tolist()} times (< {need})"
            )
            break
    return out


class _XBlock:
    """min a t + c (1 - w.x)^2 + AL terms  s.t. x_k d_k <= t, lb <= x <= ub, sum x = K (DPP)."""

    def __init__(self, u: int, weights: np.ndarray) -> None:
        import cvxpy as cp

        self.x = cp.Variable(u)
        self.t = cp.Variable()
        self.d = cp.Parameter(u, nonneg=True)
        self.a = cp.Parameter(nonneg=True)
        self.c = cp.Parameter(nonneg=True)
        self.s = cp.Parameter(nonneg=True)  # 1 / sqrt(2 rho)
        self.p1 = cp.Parameter(u)
        self.lb = cp.Parameter(u)
        self.ub = cp.Parameter(u)
        self.k = cp.Parameter()
        wn = np.asarray(weights, dtype=float) / np.sum(weights)
        obj = (
            self.a * self.t
            + self.c * cp.square(1.0 - wn @ self.x)
            + cp.sum_squares(self.s * self.x - self.p1)
        )
        cons = [
            cp.multiply(self.d, self.x) <= self.t,
            self.x >= self.lb,
            self.x <= self.ub,
            cp.sum(self.x) == self.k,
        ]
        self.prob = cp.Problem(cp.Minimize(obj), cons)

    def solve(self, d, a, c, rho, x_tilde, lam, lb, ub, k) -> np.ndarray | None:  # noqa: ANN001
        s = 1.0 / np.sqrt(2.0 * rho)
        self.d.value, self.a.value, self.c.value, self.s.value = d, a, c, s
        # 1/(2 rho) ||x - x~ + rho lam||^2 = ||s x - s (x~ - rho lam)||^2
        self.p1.value = s * (x_tilde - rho * lam)
        self.lb.value, self.ub.value, self.k.value = lb, ub, float(k)
        try:
            self.prob.solve(solver="CLARABEL")
        except Exception:  # noqa: BLE001 - a failed inner solve keeps the previous x
            return None
        return None if self.x.value is None else np.clip(np.asarray(self.x.value), 0.0, 1.0)


_RHO_AFTER_WARMUP = 100.0  # weak penalty first, so f steers x before the copy pins it
_XBLOCKS: dict[tuple[int, bytes], _XBlock] = {}


def _xblock(weights: np.ndarray) -> _XBlock:
    key = (weights.shape[0], np.asarray(weights, dtype=float).tobytes())
    if key not in _XBLOCKS:
        _XBLOCKS[key] = _XBlock(weights.shape[0], weights)
    return _XBLOCKS[key]


def x_tilde_update(x: np.ndarray, lam: np.ndarray, rho: float, k: int, forced: np.ndarray) -> np.ndarray:
    """argmin over K-hot x~ (forced entries = 1) of ||x - x~ + rho lam||^2: the K largest of x + rho lam."""
    score = x + rho * lam
    score = score.copy()
    score[forced] = np.inf
    out = np.zeros_like(x)
    out[np.argsort(-score, kind="stable")[:k]] = 1.0
    return out


def pdd_select(
    problem: Problem,
    k: int,
    positions_m: np.ndarray,
    rng: np.random.Generator,
    forced: np.ndarray | None = None,
    movable: bool = True,
    max_outer: int | None = None,
    tol: float | None = None,
    ota_weight: float | None = None,
) -> SelectionResult:
    """PDD over (m, r, x, x~) for one round; returns the K selected clients and the traces."""
    u = problem.num_clients
    forced = np.zeros(0, dtype=int) if forced is None else np.asarray(forced, dtype=int)
    max_outer = problem.max_outer_iterations if max_outer is None else max_outer
    tol = problem.tolerance if tol is None else tol
    lb = np.zeros(u)
    lb[forced] = 1.0
    ub = np.ones(u)
    weights = problem.phi
    if len(forced) >= k or k >= u:
        sel = np.sort(forced[:k]) if k < u else np.arange(u)
        return SelectionResult(sel, np.asarray(positions_m, float), None, [], [0.0], forced)
    c = problem.bound
    # f(x) = alpha J(x) + zeta^2 bias(x), the round's share of the bound (the common 1/R dropped):
    # NMSE = sigma^2 J / K^2, so alpha = L eta G^2 sigma^2 / K^2.
    alpha = c.ota_coefficient * problem.noise_power_w / k**2 if ota_weight is None else ota_weight
    bias_weight = c.heterogeneity
    x = np.full(u, (k - len(forced)) / max(u - len(forced), 1))
    x[forced] = 1.0
    # Start from the channel-greedy corner, a little: it speeds PDD up without fixing the answer.
    r = np.asarray(positions_m, dtype=float).copy()
    h = problem.effective_channels(r)
    bf = optimize_beamformer(h, x, solver=problem.beamformer_solver, max_steps=5)
    wn = weights / np.sum(weights)

    def f_val(xv: np.ndarray, d: np.ndarray) -> float:
        return float(alpha * np.max(xv * d) + bias_weight * 4.0 * (1.0 - wn @ xv) ** 2)

    d = np.sum(np.abs(bf.combiner) ** 2) / np.maximum(np.abs(np.conj(h) @ bf.combiner) ** 2, 1e-300)
    f_scale = max(f_val(x, d), 1e-300)
    x_t = x.copy()  # fractional during the warm-up: PDD proper starts from the relaxation
    lam = np.zeros(u)
    rho, eta = 1e3, 1.0
    warmup = 3  # BCD passes on the (nearly) unpenalised relaxation, then the copy goes binary
    block = _xblock(weights)
    obj_trace: list[float] = []
    viol_trace: list[float] = []
    for it in range(max_outer + warmup):
        # (b) m: SCA warm-started, on the current fractional demands.
        # The m and r blocks see the 2K leading candidates only: with U >> K the others' tiny
        # fractional demands cost a large dual (one constraint each) and move nothing.
        xb = _leading(x, 2 * k, forced)
        bf = optimize_beamformer(h, xb, start=bf.combiner, solver=problem.beamformer_solver, max_steps=5)
        # (c) r: dual-weighted position step (feasible, never worse).
        # Positions move in the first passes only: once x settles, the position search after
        # selection (lattice moves included) does better than more MM steps here, at less cost.
        if movable and it < warmup + 5:
            r_new, bf, _ = position_step(problem, r, bf, xb, max_backtracks=4, sca_steps=3)
            if r_new is not r:
                r = r_new
                h = problem.effective_channels(r)
        # (a-ish) x: the convex QP; d_k = ||m||^2 / |h~_k^H m|^2 so J(x) = max_k x_k d_k.
        g = np.abs(np.conj(h) @ bf.combiner) ** 2
        d = np.sum(np.abs(bf.combiner) ** 2) / np.maximum(g, 1e-300 * np.max(g))
        d_scale = float(np.max(d))
        x_new = block.solve(
            d / d_scale, alpha * d_scale / f_scale, bias_weight * 4.0 / f_scale, rho, x_t, lam, lb, ub, k
        )
        if x_new is not None:
            x = x_new
        if it < warmup:
            x_t = x.copy()
            if it == warmup - 1:
                rho = _RHO_AFTER_WARMUP
            continue
        # (d) x~: closed form.
        x_t = x_tilde_update(x, lam, rho, k, forced)
        hv = x - x_t
        viol = float(np.max(np.abs(hv)))
        obj_trace.append(f_val(x, d) / f_scale)
        viol_trace.append(viol)
        if viol < tol:
            break
        if viol <= eta:
            lam += hv / rho
        else:
            rho *= 0.7
        eta = 0.7 * viol
    sel = swap_polish(problem, np.flatnonzero(x_t > 0.5), h, forced, x, rng)
    return SelectionResult(sel, r, bf, obj_trace, viol_trace, forced)


def _leading(x: np.ndarray, count: int, forced: np.ndarray) -> np.ndarray:
    """``x`` with all but its ``count`` largest entries (and the forced ones) set to 0."""
    if x.shape[0] <= count:
        return x
    keep = np.zeros(x.shape[0], dtype=bool)
    keep[np.argsort(-x, kind="stable")[:count]] = True
    keep[np.asarray(forced, dtype=int)] = True
    return np.where(keep, x, 0.0)


ENUMERATION_LIMIT = 64  # candidate sets up to which selection is exact enumeration


def enumerate_select(
    problem: Problem, k: int, positions_m: np.ndarray, forced: np.ndarray, limit: int = ENUMERATION_LIMIT
) -> np.ndarray | None:
    """The best K-set (forced clients in) by the round's true objective at ``positions_m``, by
    trying every set; None when there are more than ``limit`` sets (PDD's job then)."""
    import itertools
    import math

    free = np.setdiff1d(np.arange(problem.num_clients), forced)
    need = k - len(forced)
    if math.comb(len(free), need) > limit:
        return None
    h = problem.effective_channels(np.asarray(positions_m, dtype=float))
    best, best_v = None, np.inf
    for extra in itertools.combinations(free.tolist(), need):
        sel = np.sort(np.concatenate([forced, np.array(extra, dtype=int)]).astype(int))
        v = round_objective(problem, h, sel, max_steps=10)
        if v < best_v:
            best, best_v = sel, v
    return best


def round_objective(problem: Problem, h: np.ndarray, sel: np.ndarray, max_steps: int = 6) -> float:
    """The round's share of the bound for set ``sel`` at channels ``h`` (common 1 / R dropped):
    L eta G^2 NMSE + zeta^2 bias, with NMSE = sigma^2 J / K^2 and J the beamformer's ||m||^2."""
    from allocation.bound import selection_bias

    c, k = problem.bound, len(sel)
    x = np.zeros(h.shape[0])
    x[sel] = 1.0
    j = optimize_beamformer(h, x, solver=problem.beamformer_solver, max_steps=max_steps).objective
    ota = c.ota_coefficient * problem.noise_power_w * j / k**2
    return float(ota + c.heterogeneity * selection_bias(problem.phi, sel))


def swap_polish(
    problem: Problem,
    sel: np.ndarray,
    h: np.ndarray,
    forced: np.ndarray,
    score: np.ndarray,
    rng: np.random.Generator,
    passes: int = 2,
) -> np.ndarray:
    """Rounding repair on the round's true objective (OTA error plus weighted selection bias):
    try the channel-greedy and the heaviest-data sets, then single swaps while it improves.

    Candidates to swap in are the 2K unselected clients with the largest relaxed x (bounded cost
    at large U).
    """
    del rng
    k = len(sel)
    best, best_v = np.sort(sel), round_objective(problem, h, sel)
    is_forced = np.isin(np.arange(h.shape[0]), forced)
    norms = np.linalg.norm(h, axis=1)
    for key in (norms, problem.phi):
        cand = np.sort(np.argsort(-np.where(is_forced, np.inf, key), kind="stable")[:k])
        v = round_objective(problem, h, cand)
        if v < best_v:
            best, best_v = cand, v
    for _ in range(passes):
        improved = False
        out_pool = [i for i in best if i not in set(forced.tolist())]
        rest = np.setdiff1d(np.arange(h.shape[0]), best)
        in_pool = rest[
            np.argsort(-(score[rest] + 1e-3 * norms[rest] / np.max(norms)), kind="stable")[: 2 * k]
        ]
        for i in out_pool:
            for j in in_pool:
                cand = np.sort(np.append(best[best != i], j))
                v = round_objective(problem, h, cand)
                if v < best_v * (1 - 1e-6):
                    best, best_v, improved = cand, v, True
                    break
            if improved:
                break
        if not improved:
            break
    return best


def greedy_select(
    problem: Problem, k: int, positions_m: np.ndarray, forced: np.ndarray | None = None
) -> np.ndarray:
    """Channel-greedy: forced clients, then the strongest ||h~_k|| at the current positions."""
    h = problem.effective_channels(positions_m)
    score = np.linalg.norm(h, axis=1)
    if forced is not None and len(forced):
        score[np.asarray(forced, dtype=int)] = np.inf
    return np.sort(np.argsort(-score, kind="stable")[:k])


def random_select(rng: np.random.Generator, u: int, k: int, forced: np.ndarray | None = None) -> np.ndarray:
    """Forced clients, then a uniform draw of the rest."""
    forced = np.zeros(0, dtype=int) if forced is None else np.asarray(forced, dtype=int)
    rest = np.setdiff1d(np.arange(u), forced)
    return np.sort(np.concatenate([forced, rng.choice(rest, size=k - len(forced), replace=False)]))


def round_robin_select(u: int, k: int, round_index: int, forced: np.ndarray | None = None) -> np.ndarray:
    """Forced clients, then the next in turn."""
    forced = np.zeros(0, dtype=int) if forced is None else np.asarray(forced, dtype=int)
    turn = [int(v) for v in (round_index * k + np.arange(u)) % u if v not in set(forced.tolist())]
    return np.sort(np.concatenate([forced, np.array(turn[: k - len(forced)], dtype=int)]))
