"""The calibrated bound against measurement: does it order the schemes as real FL runs do?

For each grid point (a noise level, say) the schemes' runs give:
- measured: the rounds each scheme needs to reach a target validation loss (digital FedAvg's loss
  half-way through the run), None if it never does;
- predicted: the rounds at which the bound (``allocation.bound.convergence_bound``) with that
  scheme's measured per-round NMSE falls to the bound digital has when it reaches the target.
  The constants are calibrated on the same point: the contraction per round and Delta0 fitted
  to digital's loss curve (``fit_pilot``), L and eta_eff from them and digital's first update
  under the fit's quadratic model (source "pilot"), G^2 the mean squared norm of digital's
  aggregated updates (read from its checkpoints) in gradient units, i.e. over eta^2 (source
  "estimated"), zeta^2 = 0 (an IID split).

Two orderings agree on a pair of schemes when both say the same one is faster, or both call
them even (within ``TIE_ROUNDS``: a round is the measurement's resolution). A grid point agrees
when every pair does.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np

TIE_ROUNDS = 1


def aggregate_sq_norms(run_dir: str | Path, lora_mode: str = "ffa") -> np.ndarray:
    """||w_t - w_{t-1}||^2 of the global adapter's aggregated tensors, from the FL checkpoints."""
    import safetensors.numpy

    from fl.aggregation import payload_names

    rounds = sorted((Path(run_dir) / "fl" / "checkpoints").glob("round-*/adapter.safetensors"))
    states = [safetensors.numpy.load_file(str(p)) for p in rounds]
    if len(states) < 2:
        return np.zeros(0)
    names = payload_names(list(states[0]), lora_mode)
    return np.array(
        [
            sum(float(np.sum((b[n].astype(float) - a[n]) ** 2)) for n in names)
            for a, b in itertools.pairwise(states)
        ]
    )


def first_round_at(values: np.ndarray, target: float) -> int | None:
    hit = np.nonzero(np.asarray(values) <= target + 1e-12)[0]
    return int(hit[0]) + 1 if hit.size else None


def _rank(a: int | None, b: int | None) -> int:
    """-1: a faster, 1: b faster, 0: even (within TIE_ROUNDS; both never: even)."""
    x = math.inf if a is None else a
    y = math.inf if b is None else b
    if x == y or (math.isfinite(x) and math.isfinite(y) and abs(x - y) <= TIE_ROUNDS):
        return 0
    return -1 if x < y else 1


def pair_agreement(predicted: dict[str, int | None], measured: dict[str, int | None]) -> list[bool]:
    schemes = sorted(set(predicted) & set(measured))
    return [
        _rank(predicted[a], predicted[b]) == _rank(measured[a], measured[b])
        for a, b in itertools.combinations(schemes, 2)
    ]


def predict_point(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One grid point: ``runs[scheme]`` has ``val_loss`` and ``nmse_db`` per round, and ``g2``
    (digital's only is used). Returns the constants, target and both orderings."""
    from allocation.bound import BoundConstants, convergence_bound, fit_pilot

    digital = runs["digital"]
    losses = np.asarray(digital["val_loss"], dtype=float)
    rounds = losses.size
    target_loss = float(losses[max(0, math.ceil(rounds / 2) - 1)])
    # The pilot fit's contraction per round c = eta L (fit_pilot at L = 1 returns c itself).
    c, gap = fit_pilot(losses, smoothness=1.0)
    g2_updates = np.asarray(digital["g2"], dtype=float)
    if not g2_updates.size or not g2_updates[0] > 0:
        raise ValueError("digital's checkpoints give no update norm to calibrate G^2 with")
    # The quadratic model the fit assumes, F - F* = L/2 ||w - w*||^2 with the distance shrinking by
    # (1 - c) a round, ties the scales together: the first update is c ||w_0 - w*||, so
    # L = 2 c^2 Delta0 / ||Delta_1||^2 (||Delta_1||^2 from round 2's, over (1 - c)^2), eta = c / L.
    first_sq = float(g2_updates[0]) / (1.0 - c) ** 2
    smoothness = 2.0 * c * c * gap / first_sq
    eta = c / smoothness
    # G^2 enters the bound in gradient units: the updates' mean squared norm over eta^2.
    g2 = float(np.mean(g2_updates)) / eta**2
    constants = BoundConstants(smoothness=smoothness, sources={"smoothness": "pilot"}).with_estimates(
        "pilot", sgd_step=min(eta, 1.0 / smoothness), initial_gap=gap
    )
    constants = constants.with_estimates("estimated", update_sq_norm=g2, heterogeneity=0.0)

    def bound_at(nmse_db: np.ndarray, r: int) -> float:
        eps = np.where(np.isneginf(nmse_db[:r]), 0.0, 10.0 ** (nmse_db[:r] / 10.0))
        return convergence_bound(constants, np.ones(r), eps, np.zeros(r))["total"]

    measured = {s: first_round_at(np.asarray(run["val_loss"]), target_loss) for s, run in runs.items()}
    r_digital = measured["digital"] or rounds
    target_bound = bound_at(np.full(rounds, -np.inf), r_digital)
    predicted: dict[str, int | None] = {}
    for scheme, run in runs.items():
        nmse = np.asarray(run["nmse_db"], dtype=float)
        predicted[scheme] = next(
            (r for r in range(1, nmse.size + 1) if bound_at(nmse, r) <= target_bound * (1 + 1e-12)), None
        )
    pairs = pair_agreement(predicted, measured)
    return {
        "constants": constants.to_record(),
        "target_loss": target_loss,
        "target_bound": target_bound,
        "measured_rounds": measured,
        "predicted_rounds": predicted,
        "pairs_agree": pairs,
        "agree": all(pairs),
    }


def bound_vs_measurement(points: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Every grid point (``points[label][scheme]`` as in ``predict_point``) and the agreement."""
    per_point = {label: predict_point(runs) for label, runs in points.items() if "digital" in runs}
    pairs = [ok for p in per_point.values() for ok in p["pairs_agree"]]
    return {
        "points": per_point,
        "point_agreement": float(np.mean([p["agree"] for p in per_point.values()])) if per_point else None,
        "pair_agreement": float(np.mean(pairs)) if pairs else None,
    }


def points_from_cells(cells: list[dict[str, Any]], key: str, seed: int | None = None) -> dict[str, Any]:
    """Group finished compare cells (``testbed.compare.load_cells``) by their value of ``key``."""
    points: dict[str, dict[str, Any]] = {}
    for c in cells:
        cell = c["cell"]
        if seed is not None and cell["seed"] != seed:
            continue
        label = f"{key}={cell['grid'].get(key)} seed={cell['seed']}"
        s = c["series"]
        run = {"val_loss": s["val_loss"], "nmse_db": s["nmse_db"], "g2": np.zeros(0)}
        if cell["scheme"] == "digital":
            run["g2"] = aggregate_sq_norms(c["run_dir"])
        points.setdefault(label, {})[cell["scheme"]] = run
    return points
