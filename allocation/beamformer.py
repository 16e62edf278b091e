"""The receive beamformer m (docs/explanation/system-model.md section 3; optimizer.md section 7b): minimise ||m||^2 s.t. |h~_k^H m|^2 >= x_k.

With x_k = 1 for the selected clients this is the convex restatement of max-min |m^H h~_k|^2
over ||m|| = 1; the optimal value times sigma^2 is the aggregation MSE. Fractional x_k (the PDD
relaxation of the selection) weight each client's requirement.

SCA: at m^(l), |h~^H m|^2 >= 2 Re{c^* h~^H m} - |c|^2 with c = h~^H m^(l) (a linear minorant),
so each step is a small SOCP whose optimum is feasible for the true constraints and never worse.
Two exact solvers of that step:
- ``cvxpy``: built once with Parameters (DPP), solved with Clarabel;
- ``numpy``: the K-dimensional dual, a non-negative QP solved by an active set.
``auto`` is the numpy dual: importing and compiling cvxpy costs seconds, more than a whole
round's planning; ``cvxpy`` stays as the reference (tests check that both agree).
``sdr_lower_bound`` (SCS) is a diagnostic lower bound, never the answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

_ACTIVE = 1e-9  # x_k below this drops client k's constraint


@dataclass
class BeamformerResult:
    combiner: np.ndarray  # m (N,), scaled so min_k |h~_k^H m|^2 / x_k = 1
    objective: float  # ||m||^2 (MSE / sigma^2)
    duals: np.ndarray  # (U,) multipliers of the constraints at the last step
    trace: list[float] = field(default_factory=list)
    solver: str = "numpy"
    step_s: float = 0.0  # mean wall time of one SCA step


def _scale(channels: np.ndarray) -> float:
    s = float(np.sqrt(np.mean(np.abs(channels) ** 2)))
    return s if s > 0 else 1.0


def feasible_start(channels: np.ndarray, demand: np.ndarray, guess: np.ndarray | None = None) -> np.ndarray:
    """A feasible m: ``guess`` (or the dominant eigenvector of sum x_k h h^H) scaled up to fit."""
    active = demand > _ACTIVE
    h = channels[active]
    if guess is None or not np.all(np.isfinite(guess)) or np.linalg.norm(guess) == 0:
        cov = (h.T * demand[active]) @ h.conj()  # sum_k x_k h_k^* h_k^T ... eigvec gives m
        _, vecs = np.linalg.eigh(cov)
        guess = vecs[:, -1]
        # Make sure nobody is (nearly) orthogonal to the start: blend in the strongest channels.
        g = np.abs(h @ guess.conj()) ** 2
        if np.min(g) < 1e-6 * np.max(g):
            guess = guess + 0.1 * np.linalg.norm(guess) * np.sum(h / np.linalg.norm(h, axis=1)[:, None], 0)
    g = np.abs(h @ np.conj(guess)) ** 2
    ratio = np.min(g / demand[active])
    if ratio <= 0:
        guess = guess + 1e-3 * np.linalg.norm(guess) * h[np.argmin(g)]
        g = np.abs(h @ np.conj(guess)) ** 2
        ratio = np.min(g / demand[active])
    return guess / np.sqrt(ratio)


def nnqp(q: np.ndarray, t: np.ndarray, tol: float = 1e-12, support: np.ndarray | None = None) -> np.ndarray:
    """min 1/2 mu^T Q mu - t^T mu over mu >= 0 (active set).

    ``support`` (a boolean mask, e.g. the previous SCA step's active constraints) warm-starts the
    active set; successive SCA steps rarely change it, so one or two small solves suffice.
    """
    k = t.shape[0]
    ridge = 1e-12 * max(float(np.trace(q)) / max(k, 1), 1e-300)
    if support is not None and np.any(support) and not np.all(support):
        warm = _active_set_from_full(q, t, ridge, free=np.asarray(support, dtype=bool).copy())
        if warm is not None:
            return warm
    # Fast path: every constraint active (common when K <= 2N) is one linear solve.
    try:
        full = np.linalg.solve(q + ridge * np.eye(k), t)
        if np.all(full > 0):
            return full
    except np.linalg.LinAlgError:
        pass
    fast = _active_set_from_full(q, t, ridge)
    if fast is not None:
        return fast
    mu = np.zeros(k)
    free = np.zeros(k, dtype=bool)
    w = t - q @ mu
    scale = max(float(np.max(np.abs(t))), 1e-300)
    for _ in range(4 * k + 10):
        cand = (~free) & (w > tol * scale)
        if not np.any(cand):
            break
        free[np.argmax(np.where(cand, w, -np.inf))] = True
        for _ in range(4 * k + 10):
            s = np.zeros(k)
            idx = np.flatnonzero(free)
            s[idx] = np.linalg.solve(q[np.ix_(idx, idx)] + ridge * np.eye(idx.size), t[idx])
            if np.all(s[idx] > 0):
                mu = s
                break
            bad = free & (s <= 0)
            alpha = np.min(mu[bad] / (mu[bad] - s[bad]))
            mu = mu + alpha * (s - mu)
            free &= mu > 1e-14 * scale
            mu[~free] = 0.0
        w = t - q @ mu
    return mu


def _active_set_from_full(
    q: np.ndarray, t: np.ndarray, ridge: float, tol: float = 1e-12, free: np.ndarray | None = None
) -> np.ndarray | None:
    """Primal active set from "every constraint active": drop the negative multipliers, add back
    any dropped one whose gradient says it should be active, re-solve. A handful of small solves
    where Lawson-Hanson from zero takes one per constraint; None if it cycles (use the latter)."""
    k = t.shape[0]
    free = np.ones(k, dtype=bool) if free is None else free
    scale = max(float(np.max(np.abs(t))), 1e-300)
    for _ in range(2 * k + 2):
        idx = np.flatnonzero(free)
        mu = np.zeros(k)
        if idx.size:
            mu[idx] = np.linalg.solve(q[np.ix_(idx, idx)] + ridge * np.eye(idx.size), t[idx])
        if np.any(mu[idx] < 0):
            free[idx[mu[idx] < 0]] = False
            continue
        w = t - q @ mu  # KKT: w <= 0 wherever mu = 0
        w[free] = -np.inf
        j = int(np.argmax(w))
        if w[j] <= tol * scale:
            return mu
        free[j] = True
    return None


def _numpy_step(
    channels: np.ndarray, demand: np.ndarray, m: np.ndarray, support: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One SCA step via the dual: min ||m||^2 s.t. Re(a_k^H m) >= t_k, a_k = c_k h_k.

    Stationarity gives m = A mu / 2; the dual is max t^T mu - mu^T Re(A^H A) mu / 4, mu >= 0.
    """
    c = np.conj(channels) @ m  # c_k = h_k^H m
    a = channels * c[:, None]  # rows a_k = c_k h_k  (so a_k^H m = c_k^* h_k^H m)
    t = (demand + np.abs(c) ** 2) / 2.0
    gram = np.real(np.conj(a) @ a.T)  # Re(a_i^H a_j)
    mu = nnqp(gram / 2.0, t, support=support)
    m_new = (a.T @ mu) / 2.0
    return m_new, mu


class _CvxpyStep:
    """The SCA step as a DPP problem, built once for a (K, N) size and re-solved with new data."""

    def __init__(self, k: int, n: int) -> None:
        import cvxpy as cp

        self.cp = cp
        self.m_re = cp.Variable(n)
        self.m_im = cp.Variable(n)
        self.a_re = cp.Parameter((k, n))
        self.a_im = cp.Parameter((k, n))
        self.t = cp.Parameter(k)
        # Re(a^H m) = a_re . m_re + a_im . m_im
        self.cons = [self.a_re @ self.m_re + self.a_im @ self.m_im >= self.t]
        obj = cp.Minimize(cp.sum_squares(self.m_re) + cp.sum_squares(self.m_im))
        self.prob = cp.Problem(obj, self.cons)

    def __call__(
        self, channels: np.ndarray, demand: np.ndarray, m: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        c = np.conj(channels) @ m
        a = channels * c[:, None]
        self.a_re.value = np.real(a)
        self.a_im.value = np.imag(a)
        self.t.value = (demand + np.abs(c) ** 2) / 2.0
        self.prob.solve(solver="CLARABEL")
        if self.m_re.value is None:
            raise RuntimeError(f"cvxpy SCA step failed: {self.prob.status}")
        mu = np.maximum(np.asarray(self.cons[0].dual_value, dtype=float), 0.0)
        return self.m_re.value + 1j * self.m_im.value, mu


_CVXPY_CACHE: dict[tuple[int, int], _CvxpyStep] = {}


def _cvxpy_step(k: int, n: int) -> _CvxpyStep:
    key = (k, n)
    if key not in _CVXPY_CACHE:
        _CVXPY_CACHE[key] = _CvxpyStep(k, n)
    return _CVXPY_CACHE[key]


def optimize_beamformer(
    channels: np.ndarray,
    demand: np.ndarray | None = None,
    start: np.ndarray | None = None,
    solver: str = "auto",
    max_steps: int = 30,
    tol: float = 1e-5,
    starts: int = 1,
    rng: np.random.Generator | None = None,
) -> BeamformerResult:
    """SCA from ``start`` (or the dominant eigenvector) plus ``starts - 1`` random starts; the best.

    The problem is nonconvex when K > 1, so a few starts close most of the gap to the SDR bound.
    """
    best = _sca(channels, demand, start, solver, max_steps, tol)
    if starts > 1:
        rng = rng if rng is not None else np.random.default_rng(0)
        n = np.asarray(channels).shape[1]
        for _ in range(starts - 1):
            guess = rng.standard_normal(n) + 1j * rng.standard_normal(n)
            res = _sca(channels, demand, guess, solver, max_steps, tol)
            if res.objective < best.objective:
                best = res
    return best


def _sca(
    channels: np.ndarray,
    demand: np.ndarray | None,
    start: np.ndarray | None,
    solver: str,
    max_steps: int,
    tol: float,
) -> BeamformerResult:
    """SCA for min ||m||^2 s.t. |h~_k^H m|^2 >= demand_k (rows of ``channels`` are h~_k).

    ``demand`` defaults to ones (every row selected). Clients with demand ~ 0 drop out. The
    channels are normalised internally so the solvers see O(1) numbers.
    """
    h_all = np.asarray(channels, dtype=complex)
    x = np.ones(h_all.shape[0]) if demand is None else np.asarray(demand, dtype=float)
    active = np.flatnonzero(x > _ACTIVE)
    if active.size == 0:
        raise ValueError("no client has a positive demand: nothing to beamform for")
    if active.size == 1:
        return _single_client(h_all, x, int(active[0]))
    s = _scale(h_all[active])
    h = h_all[active] / s
    xa = x[active]
    m = feasible_start(h, xa, None if start is None else np.asarray(start) * s)
    k, n = h.shape
    if solver == "auto":  # the dual in numpy: importing and compiling cvxpy alone costs seconds
        solver = "numpy"
    step = _numpy_step if solver == "numpy" else _cvxpy_step(k, n)
    trace = [float(np.sum(np.abs(m) ** 2))]
    mu = np.zeros(k)
    t0 = time.perf_counter()
    steps = 0
    for _ in range(max_steps):
        m_new, mu = step(h, xa, m, mu > 0) if solver == "numpy" else step(h, xa, m)
        steps += 1
        # The minorant makes m_new feasible; rescale to the tight point (ratio >= 1 up to round-off).
        ratio = np.min(np.abs(np.conj(h) @ m_new) ** 2 / xa)
        m_new = m_new / np.sqrt(ratio)
        obj = float(np.sum(np.abs(m_new) ** 2))
        if obj <= trace[-1] * (1 + 1e-12):
            m = m_new
            trace.append(obj)
        else:
            trace.append(trace[-1])
        if abs(trace[-2] - trace[-1]) <= tol * trace[-1]:
            break
    elapsed = (time.perf_counter() - t0) / max(steps, 1)
    duals = np.zeros(h_all.shape[0])
    # Undo the normalisation: m = m' / s, ||m||^2 = ||m'||^2 / s^2; duals in the same units.
    duals[active] = mu / s**2
    return BeamformerResult(
        combiner=m / s,
        objective=trace[-1] / s**2,
        duals=duals,
        trace=[v / s**2 for v in trace],
        solver=solver,
        step_s=elapsed,
    )


def _single_client(h_all: np.ndarray, x: np.ndarray, k: int) -> BeamformerResult:
    """One client: matched filtering is optimal, m = sqrt(x_k) h~_k / ||h~_k||^2, ||m||^2 = x_k / ||h~_k||^2."""
    h = h_all[k]
    g = float(np.real(np.vdot(h, h)))
    if g <= 0:
        raise ValueError(f"client {k} has a zero channel: no combiner reaches it")
    m = np.sqrt(x[k]) * h / g
    obj = float(x[k] / g)
    duals = np.zeros(h_all.shape[0])
    duals[k] = obj / x[k]  # d objective / d x_k
    return BeamformerResult(
        combiner=m, objective=obj, duals=duals, trace=[obj], solver="closed form", step_s=0.0
    )


def sdr_lower_bound(channels: np.ndarray, demand: np.ndarray | None = None) -> float:
    """min tr(M) s.t. Re tr(h~_k h~_k^H M) >= x_k, M PSD (SCS): a lower bound on ||m||^2."""
    import cvxpy as cp

    h_all = np.asarray(channels, dtype=complex)
    x = np.ones(h_all.shape[0]) if demand is None else np.asarray(demand, dtype=float)
    active = x > _ACTIVE
    s = _scale(h_all[active])
    h = h_all[active] / s
    n = h.shape[1]
    mat = cp.Variable((n, n), hermitian=True)
    # h^H M h = tr(h h^H M); real for Hermitian M.
    cons = [mat >> 0] + [
        cp.real(cp.quad_form(hk, mat)) >= xk for hk, xk in zip(h.conj(), x[active], strict=True)
    ]
    prob = cp.Problem(cp.Minimize(cp.real(cp.trace(mat))), cons)
    prob.solve(solver="SCS", eps=1e-7, max_iters=200_000)
    if prob.value is None or not np.isfinite(prob.value):
        raise RuntimeError(f"SDR failed: {prob.status}")
    return float(prob.value) / s**2


def mse(combiner: np.ndarray, channels: np.ndarray, noise_power_w: float) -> float:
    """sigma^2 ||m||^2 / min_k |h~_k^H m|^2 (scale-free in m)."""
    g = np.abs(np.conj(channels) @ combiner) ** 2
    return float(noise_power_w * np.sum(np.abs(combiner) ** 2) / np.min(g))
