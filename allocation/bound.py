"""The calibrated convergence bound (docs/explanation/bound.md section 5) and where its constants come from.

In words: after R fine-tuning rounds, the average squared gradient norm is bounded by five terms.
- optimization: what is left of the initial gap Delta0 = F(w_0) - F*, shrinking as 1 / (eta R);
- variance: stochastic gradients, L eta sigma_g^2 times the mean of 1 / B_t (bigger batches help);
- distribution shift: the pre-training rounds M against the R fine-tuning rounds,
  c1 L_xi^2 W^2 M / (M + R); M appears here only, never in the other terms' denominators;
- ota: the aggregation error, L eta G^2 times the mean normalised error NMSE_t. G^2 is the real
  energy of the aggregated update, estimated from the norms the nodes report, so the term says in
  the update's own units how much the air hurts (about 0 when the link is not noise-limited);
- selection bias: zeta^2 times the mean of 4 (sum_{k not in S_t} K_k)^2 / (sum_k K_k)^2, where the
  heterogeneity zeta^2 is about 0 for an IID split, so leaving clients out costs nothing then.

eta is the SGD-equivalent step with eta L <= 1 (default 1 / L), or fitted from a pilot loss
curve; it is never the Adam learning rate of the LoRA recipe. L must be the curvature the
aggregation noise meets: a loss-curve fit sees only the (flatter) training path, so measure L with
a noisy pilot (``noise_curvature``) or the OTA term comes out too weak. Every constant carries its source
("config", "default", "estimated" or "pilot") so a plan and a run record say what they rest on.

This module is pure arithmetic: it imports nothing from the rest of the project.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from allocation.errors import AllocationError

SOURCES = ("config", "default", "estimated", "pilot")
# The names of BoundConstants' values (everything but ``sources``).
CONSTANT_NAMES = (
    "smoothness",
    "sgd_step",
    "initial_gap",
    "gradient_variance",
    "update_sq_norm",
    "heterogeneity",
    "pretrain_rounds",
    "wasserstein",
    "lipschitz_data",
    "c1",
)
# Old names that must not be used any more, and what replaces them.
RENAMED = {
    "learning_rate": "sgd_step (the SGD-equivalent step with sgd_step * smoothness <= 1; "
    "leave it unset for 1 / smoothness; never Adam's lr)",
    "pretrain_batch": "nothing: the pre-training rounds M enter only the shift term "
    "(pretrain_rounds), so their batch no longer appears",
}


@dataclass(frozen=True)
class BoundConstants:
    """The bound's constants, each with its source (docs/explanation/bound.md section 5; the config's ``allocation.bound``).

    Defaults are on the scale of a loss in nats: an achievable drop Delta0 of 1, unit curvature
    and gradient noise, an update energy G^2 of 0.1 (so an NMSE of 0 dB costs about a fifth of a
    five-round optimisation term and -40 dB costs nothing), and a mild heterogeneity.
    """

    smoothness: float = 1.0  # L
    sgd_step: float | None = None  # eta_eff; None: 1 / L
    initial_gap: float = 1.0  # Delta0 = F_Q(w_0) - F*
    gradient_variance: float = 1.0  # sigma_g^2 per sample
    update_sq_norm: float = 0.1  # G^2, mean squared norm of the aggregated update
    heterogeneity: float = 0.05  # zeta^2 (about 0 for IID)
    pretrain_rounds: int = 100  # M (shift term only)
    wasserstein: float = 0.1  # W_1(P, Q)
    lipschitz_data: float = 1.0  # L_xi
    c1: float = 1.0
    sources: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        self._check()
        filled = {name: self.sources.get(name, "default") for name in CONSTANT_NAMES}
        object.__setattr__(self, "sources", filled)

    def _check(self) -> None:
        for name in ("smoothness", "initial_gap", "gradient_variance"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise AllocationError(f"bound.{name} must be finite and > 0 (got {value!r})")
        for name in ("update_sq_norm", "heterogeneity", "wasserstein", "lipschitz_data", "c1"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise AllocationError(f"bound.{name} must be finite and >= 0 (got {value!r})")
        if int(self.pretrain_rounds) != self.pretrain_rounds or self.pretrain_rounds < 0:
            raise AllocationError(
                f"bound.pretrain_rounds must be an integer >= 0 (got {self.pretrain_rounds!r})"
            )
        if self.sgd_step is not None:
            step = self.sgd_step
            if not (isinstance(step, int | float) and math.isfinite(step) and step > 0):
                raise AllocationError(
                    f"bound.sgd_step must be finite and > 0, or unset for 1/L (got {step!r})"
                )
            if step * self.smoothness > 1.0 + 1e-9:
                raise AllocationError(
                    f"bound.sgd_step={step:g} breaks sgd_step * smoothness <= 1 (smoothness "
                    f"{self.smoothness:g}): use at most {1.0 / self.smoothness:g}, or leave it unset for 1/L"
                )
        bad = {k: v for k, v in self.sources.items() if k not in CONSTANT_NAMES or v not in SOURCES}
        if bad:
            raise AllocationError(
                f"bound.sources {bad}: names must be among {CONSTANT_NAMES} and sources among {SOURCES}"
            )

    @property
    def eta(self) -> float:
        """The SGD-equivalent step eta_eff (1 / L when not given)."""
        return float(self.sgd_step) if self.sgd_step is not None else 1.0 / self.smoothness

    @property
    def ota_coefficient(self) -> float:
        """L eta G^2: what one round's NMSE costs in the bound (before the 1 / R average)."""
        return self.smoothness * self.eta * self.update_sq_norm

    def with_estimates(self, source: str, **values: float | None) -> BoundConstants:
        """A copy with ``values`` replaced and their source recorded as ``source``."""
        if source not in SOURCES:
            raise AllocationError(f"source must be one of {SOURCES} (got {source!r})")
        unknown = [k for k in values if k not in CONSTANT_NAMES]
        if unknown:
            hint = "; ".join(f"{k}: use {RENAMED[k]}" for k in unknown if k in RENAMED)
            raise AllocationError(
                f"unknown bound constants {unknown}; known: {CONSTANT_NAMES}" + (f" ({hint})" if hint else "")
            )
        sources = {**self.sources, **dict.fromkeys(values, source)}
        return replace(self, **values, sources=sources)  # type: ignore[arg-type]

    def to_record(self) -> dict[str, Any]:
        """Every constant with its value and source, plus the effective step actually used."""
        record: dict[str, Any] = {
            name: {"value": getattr(self, name), "source": self.sources[name]} for name in CONSTANT_NAMES
        }
        record["eta_effective"] = {
            "value": self.eta,
            "source": self.sources["sgd_step"] if self.sgd_step is not None else "1/smoothness",
        }
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> BoundConstants:
        """The inverse of ``to_record`` (the derived ``eta_effective`` is ignored)."""
        values = {k: v["value"] for k, v in record.items() if k in CONSTANT_NAMES}
        sources = {k: v["source"] for k, v in record.items() if k in CONSTANT_NAMES}
        return cls(**values, sources=sources)


def constant_names() -> tuple[str, ...]:
    """The dataclass's value fields (a check that CONSTANT_NAMES stays in step with it)."""
    return tuple(f.name for f in fields(BoundConstants) if f.name != "sources")


# --- the bound ------------------------------------------------------------------------------------
def selection_bias(weights: np.ndarray, selected: np.ndarray) -> float:
    """(4 / (sum_k K_k)^2) (sum_{k not in S} K_k)^2 for one round (before the zeta^2 scale)."""
    w = np.asarray(weights, dtype=float)
    mask = np.zeros(w.shape[0], dtype=bool)
    mask[np.asarray(selected, dtype=int)] = True
    return float(4.0 * np.sum(w[~mask]) ** 2 / np.sum(w) ** 2)


def convergence_bound(
    constants: BoundConstants,
    aggregate_batches: np.ndarray,
    ota_errors: np.ndarray,
    biases: np.ndarray,
    payload_reals: int | None = None,
) -> dict[str, float]:
    """Every term of the bound for R = len(aggregate_batches) fine-tuning rounds, and the total.

    ``aggregate_batches[t]`` is B_t = sum_{k in S_t} b_k, ``ota_errors[t]`` the normalised OTA
    error NMSE_t (0 for error-free digital rounds) and ``biases[t]`` round t's unscaled selection
    bias. ``payload_reals`` is accepted for old callers and unused: the OTA term scales with the
    update's measured energy G^2, not with its length.
    """
    del payload_reals
    c = constants
    b_t = np.asarray(aggregate_batches, dtype=float)
    rounds = b_t.shape[0]
    if rounds < 1:
        raise AllocationError("the bound needs at least one round")
    eta = c.eta
    m = c.pretrain_rounds
    terms = {
        "optimization": 2.0 * c.initial_gap / (eta * rounds),
        "variance": c.smoothness * eta * c.gradient_variance * float(np.mean(1.0 / b_t)),
        "distribution_shift": c.c1 * c.lipschitz_data**2 * c.wasserstein**2 * m / (m + rounds),
        "ota": c.ota_coefficient * float(np.mean(np.asarray(ota_errors, dtype=float))),
        "selection_bias": c.heterogeneity * float(np.mean(np.asarray(biases, dtype=float))),
    }
    terms["total"] = float(sum(terms.values()))
    return terms


# --- estimating the constants -------------------------------------------------------------------
class UpdateNormTracker:
    """Running estimates of G^2 and zeta^2 from what the nodes report each round.

    Each round the nodes report the squared norms ||Delta_k||^2 of their updates and the
    coordinator the squared norm ||Delta||^2 of the error-free aggregate (the clients' mean).
    G^2 is an exponential moving average of ||Delta||^2 (updates shrink as training goes on, so
    recent rounds count more). zeta^2 comes from the spread of the clients' updates around their
    mean: mean_k ||Delta_k||^2 - ||mean_k Delta_k||^2 = mean_k ||Delta_k - Delta||^2 (exact for
    equal weights). That spread also holds the clients' sampling noise, so it over-estimates the
    heterogeneity a little; rounds with one client say nothing about it and leave it unchanged.
    """

    def __init__(self, decay: float = 0.5) -> None:
        if not 0.0 < decay <= 1.0:
            raise AllocationError(f"decay must be in (0, 1] (got {decay!r})")
        self.decay = decay  # weight of the newest round
        self._g2: float | None = None
        self._zeta2: float | None = None
        self.rounds_seen = 0

    def observe(self, client_sq_norms: Mapping[int, float], aggregate_sq_norm: float) -> None:
        """Fold in one round: every selected node's ||Delta_k||^2 and the aggregate's ||Delta||^2."""
        values = [float(v) for v in client_sq_norms.values()]
        for name, v in [
            *((f"client_sq_norms[{k}]", x) for k, x in client_sq_norms.items()),
            ("aggregate_sq_norm", aggregate_sq_norm),
        ]:
            if not (math.isfinite(float(v)) and float(v) >= 0):
                raise AllocationError(f"{name} must be finite and >= 0 (got {v!r})")
        g2 = float(aggregate_sq_norm)
        self._g2 = g2 if self._g2 is None else (1 - self.decay) * self._g2 + self.decay * g2
        if len(values) >= 2:
            spread = max(0.0, float(np.mean(values)) - g2)
            z = spread if self._zeta2 is None else (1 - self.decay) * self._zeta2 + self.decay * spread
            self._zeta2 = z
        self.rounds_seen += 1

    @property
    def update_sq_norm(self) -> float | None:
        """G^2 (None before the first report)."""
        return self._g2

    @property
    def heterogeneity(self) -> float | None:
        """zeta^2 (None until a round with two or more clients)."""
        return self._zeta2

    def estimates(self) -> dict[str, float]:
        """The constants known so far, ready for ``BoundConstants.with_estimates("estimated", ...)``."""
        out: dict[str, float] = {}
        if self._g2 is not None:
            out["update_sq_norm"] = self._g2
        if self._zeta2 is not None:
            out["heterogeneity"] = self._zeta2
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "update_sq_norm": self._g2,
            "heterogeneity": self._zeta2,
            "rounds_seen": self.rounds_seen,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpdateNormTracker:
        tracker = cls(decay=float(data.get("decay", 0.5)))
        tracker._g2 = None if data.get("update_sq_norm") is None else float(data["update_sq_norm"])
        tracker._zeta2 = None if data.get("heterogeneity") is None else float(data["heterogeneity"])
        tracker.rounds_seen = int(data.get("rounds_seen", 0))
        return tracker


def fit_pilot(losses: Sequence[float], smoothness: float) -> tuple[float, float]:
    """(eta_eff, Delta0) from a pilot loss curve (one loss per round, at least 3).

    Fits l_t = l_inf + Delta0 exp(-t / tau) by least squares (a grid over l_inf below the last
    loss, the rest in closed form). Delta0 = l_0 - l_inf is the reachable gap. Under the local
    quadratic (Polyak-Lojasiewicz) model with curvature L, gradient steps contract the gap by
    1 - eta L per round, so the fitted contraction exp(-1 / tau) gives eta_eff = (1 - e^(-1/tau)) / L,
    which always satisfies eta_eff L <= 1. A curve that does not fall gives an error.
    """
    if not (math.isfinite(smoothness) and smoothness > 0):
        raise AllocationError(f"smoothness must be finite and > 0 (got {smoothness!r})")
    y = np.asarray(losses, dtype=float)
    if y.ndim != 1 or y.size < 3 or not np.all(np.isfinite(y)):
        raise AllocationError(f"a pilot needs at least 3 finite losses (got {list(losses)!r})")
    if y[-1] >= y[0]:
        raise AllocationError(
            f"the pilot loss does not fall ({y[0]:.4g} -> {y[-1]:.4g}): raise the pilot's rounds or lr"
        )
    t = np.arange(y.size, dtype=float)
    drop = float(y[0] - np.min(y))
    best: tuple[float, float, float] | None = None  # (sse, l_inf, rate)
    for l_inf in np.min(y) - drop * np.geomspace(1e-3, 20.0, 120):
        gap = y - l_inf
        # log gap = log D - t / tau: linear least squares in (log D, 1 / tau).
        slope, intercept = np.polyfit(t, np.log(gap), 1)
        rate = -float(slope)
        if rate <= 0:
            continue
        sse = float(np.sum((l_inf + np.exp(intercept - rate * t) - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, float(l_inf), rate)
    if best is None:
        raise AllocationError("the pilot loss curve does not fit a decaying exponential")
    _, l_inf, rate = best
    eta = (1.0 - math.exp(-rate)) / smoothness
    return float(eta), float(y[0] - l_inf)


def heterogeneity_from_partition(label_counts: np.ndarray, update_sq_norm: float = 1.0) -> float:
    """zeta^2 from a data partition: U x C label counts (one row per client).

    The weighted mean of the squared total-variation distance between each client's label mix and
    the pooled one, in [0, 1): 0 for an IID split, near 1 when clients hold disjoint labels. It is
    scaled by ``update_sq_norm`` (G^2) so it lands in the bound's units when G^2 is known.
    """
    counts = np.asarray(label_counts, dtype=float)
    if counts.ndim != 2 or counts.shape[0] < 1 or counts.shape[1] < 1:
        raise AllocationError(f"label_counts must be clients x labels (got shape {counts.shape})")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise AllocationError("label_counts must be finite and >= 0")
    sizes = counts.sum(axis=1)
    if np.any(sizes <= 0):
        raise AllocationError(f"every client needs at least one sample (sizes {sizes.tolist()})")
    mix = counts / sizes[:, None]
    pooled = counts.sum(axis=0) / sizes.sum()
    tv = 0.5 * np.abs(mix - pooled).sum(axis=1)
    return float(np.sum(sizes * tv**2) / np.sum(sizes) * update_sq_norm)


def noise_curvature(loss_excess: float, noise_sq_norm: float) -> float:
    """The curvature the aggregation noise meets, 2 e / ||n||^2, from one noisy pilot round.

    ``loss_excess`` e is how much higher the loss is after a round whose update carried the
    error n (``noise_sq_norm`` = NMSE ||Delta||^2) than after the same round without it (same
    start, same update). Under the bound's L-smooth model the noise raises the loss by at most
    L/2 ||n||^2 (its first-order part averages out), so 2 e / ||n||^2 is a measured lower bound on L
    in the directions the noise takes. A fit to the loss curve alone (``fit_pilot``) sees only the
    curvature along the training path, which can be much lower: it then under-weights the noise.
    """
    for name, value in (("loss_excess", loss_excess), ("noise_sq_norm", noise_sq_norm)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise AllocationError(f"{name} must be finite and > 0 (got {value!r})")
    return 2.0 * float(loss_excess) / float(noise_sq_norm)
