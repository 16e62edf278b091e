"""The calibrated bound against measurement: does it order the schemes as real FL runs do?

For each grid point (a noise level, say) the schemes' runs give:
- measured: the rounds each scheme needs to reach a target validation loss (digital FedAvg's loss
  half-way through the run), None if it never does;
- predicted: the rounds at which the bound (``allocation.bound.convergence_bound``) with that
  scheme's measured per-round NMSE falls to the bound digital has when it reaches the target.
  The constants are calibrated from pilots (every one's source recorded):
  - the contraction per round c and Delta0 fitted to digital's loss curve (``fit_pilot``); with
    digital's first update this gives the curvature along the training path L_path and the step
    eta = c / L_path (source "pilot");
  - L, the smoothness, is the larger of L_path and the curvature the aggregation noise meets,
    measured by a noisy pilot: its round-1 loss excess over digital's, from the same start and
    update, over the noise energy NMSE_1 ||Delta_1||^2 (``noise_probe``; source "pilot"). The
    noise probe always comes from other runs than those predicted (a pilot point, or leave one
    out). eta is capped at 1 / L;
  - G^2 the mean squared norm of digital's aggregated updates (read from its checkpoints) in
    gradient units, i.e. over eta^2; round t of a scheme weighs its NMSE_t by that run's own
    error-free update energy over the mean (``clean_update_energies``), since the error a round
    injects is NMSE_t ||Delta_t||^2 and the early updates are the large ones; zeta^2 = 0 (an IID split); M = 0 (the runs start from the
    same untrained adapter; source "estimated").

Why the noise probe: the loss curve sees only the flat directions training moves along, while the
air's error is spread over every coordinate of the adapter. At configs/edge.yaml the probes read
8e-5 to 1.1e-4 at round-1 NMSEs from -19 to +5 dB (a property of the task, not of the noise level;
louder probes saturate), which is about 3x L_path on 12-round runs and 25-45x on the test's 6-round
runs (whose short curve gives a flatter path). A calibration on the loss curve alone makes the OTA
term that much too weak and predicts that even +20 dB of NMSE barely slows learning.

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
# A loss excess below this is not a measurement: the validation loss is a float32 mean (its rounding
# is about 1e-6 nats), and a tiny excess over a tiny noise energy would read as a huge curvature.
LOSS_RESOLUTION = 1e-4


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


def first_round(run_dir: str | Path) -> dict[str, Any] | None:
    """Round 1's selected clients, their reported ||Delta_k||^2 and the applied update's norm."""
    from testbed.records import read_events

    for doc in read_events(Path(run_dir) / "events.jsonl"):
        data = doc.get("data") or {}
        if doc.get("kind") == "round" and data.get("round") == 1:
            return {key: data.get(key) for key in ("selected", "update_sq_norms", "aggregate_sq_norm")}
    return None


def clean_update_energies(run_dir: str | Path) -> np.ndarray:
    """||Delta_t||^2 of each round's error-free aggregate: the applied update's norm over 1 + NMSE_t.

    The coordinator records the norm of the update it applied, which for an OTA round holds the
    air's error too; the error is independent of the update, so in expectation
    ||Delta_t + n_t||^2 = ||Delta_t||^2 (1 + NMSE_t). Digital rounds (no NMSE) are exact.
    """
    from testbed.records import read_events

    rows = {
        d["data"]["round"]: d["data"]
        for d in read_events(Path(run_dir) / "events.jsonl")
        if d.get("kind") == "round"
        and isinstance((d.get("data") or {}).get("aggregate_sq_norm"), int | float)
    }

    def error_ratio(row: dict[str, Any]) -> float:
        db = row.get("nmse_db")
        return 0.0 if db is None or not math.isfinite(float(db)) else 10.0 ** (float(db) / 10.0)

    return np.array(
        [float(rows[r]["aggregate_sq_norm"]) / (1.0 + error_ratio(rows[r])) for r in sorted(rows)]
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


def noise_probe(digital: dict[str, Any], noisy: dict[str, Any]) -> dict[str, Any]:
    """The curvature the aggregation noise meets, from round 1 of a noisy run against digital's.

    Both runs start from the same adapter and, when the same clients send the same update in round
    1, differ only by the air's error n, so the loss excess after round 1 is the noise's own cost:
    L_noise = 2 e / (NMSE_1 ||Delta_1||^2) (``allocation.bound.noise_curvature``). Returns the
    probe's figures, with ``curvature`` None and a ``reason`` when the round is not a clean probe.
    """
    from allocation.bound import noise_curvature

    out: dict[str, Any] = {"curvature": None}
    d1, n1 = digital.get("first_round"), noisy.get("first_round")
    nmse_db = float(np.asarray(noisy["nmse_db"], dtype=float)[0])
    out["nmse_db"] = nmse_db
    if not d1 or not n1:
        return {**out, "reason": "no round-1 record"}
    same = d1["selected"] == n1["selected"] and all(
        math.isclose(d1["update_sq_norms"].get(k, math.nan), v, rel_tol=1e-6)
        for k, v in n1["update_sq_norms"].items()
    )
    if not same:
        return {**out, "reason": "round 1 sent other clients or updates than digital's"}
    excess = float(noisy["val_loss"][0] - digital["val_loss"][0])
    noise_sq = 10.0 ** (nmse_db / 10.0) * float(d1["aggregate_sq_norm"])
    out.update(loss_excess=excess, noise_sq_norm=noise_sq)
    if not (math.isfinite(noise_sq) and noise_sq > 0 and excess >= LOSS_RESOLUTION):
        return {
            **out,
            "reason": f"the noise raised the loss by less than {LOSS_RESOLUTION:g}: nothing to measure",
        }
    return {**out, "curvature": noise_curvature(excess, noise_sq)}


def pick_probe(runs_by_point: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """The clean noise probe with the highest curvature among these points, None if there is none.

    L is a supremum, and a loud probe under-reads it (the loss response to noise saturates: at
    edge.yaml an NMSE of +13 dB raises the loss no more than +3 dB does), so the largest reading wins.
    """
    probes = []
    for label, runs in runs_by_point.items():
        for scheme, run in runs.items():
            if scheme != "digital" and "digital" in runs:
                probe = noise_probe(runs["digital"], run)
                if probe["curvature"] is not None:
                    probes.append({**probe, "point": label, "scheme": scheme})
    return max(probes, key=lambda p: p["curvature"], default=None)


def predict_point(runs: dict[str, dict[str, Any]], noise_curv: float | None = None) -> dict[str, Any]:
    """One grid point: ``runs[scheme]`` has ``val_loss`` and ``nmse_db`` per round, and ``g2``
    (digital's only is used). ``noise_curv`` is the curvature a noisy pilot measured (``noise_probe``),
    None to use the loss curve's alone. Returns the constants, target and both orderings."""
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
    # L_path = 2 c^2 Delta0 / ||Delta_1||^2 (||Delta_1||^2 from round 2's, over (1 - c)^2), eta = c / L_path.
    first_sq = float(g2_updates[0]) / (1.0 - c) ** 2
    path_curv = 2.0 * c * c * gap / first_sq
    eta = c / path_curv
    # L_path is the curvature along the training path only. The noise spreads over every direction
    # of the adapter, where the measured curvature (a noisy pilot) is higher; the bound's L is the
    # larger of the two, and eta stays the step that gives the fitted contraction (eta L <= 1).
    smoothness = max(path_curv, noise_curv or 0.0)
    # G^2 enters the bound in gradient units: the updates' mean squared norm over eta^2.
    g2 = float(np.mean(g2_updates)) / eta**2
    constants = BoundConstants(smoothness=smoothness, sources={"smoothness": "pilot"}).with_estimates(
        "pilot", sgd_step=min(eta, 1.0 / smoothness), initial_gap=gap
    )
    # The compared runs start from the same untrained adapter: no pre-training rounds, so no shift
    # term (it would only fade with R the same for every scheme). zeta^2 = 0: an IID split.
    constants = constants.with_estimates("estimated", update_sq_norm=g2, heterogeneity=0.0, pretrain_rounds=0)

    mean_sq = float(np.mean(g2_updates))

    def bound_at(nmse_db: np.ndarray, r: int, energies: np.ndarray | None = None) -> float:
        eps = np.where(np.isneginf(nmse_db[:r]), 0.0, 10.0 ** (nmse_db[:r] / 10.0))
        # Round t's error energy is NMSE_t ||Delta_t||^2: with the run's own update energies the
        # term is L eta G_t^2 NMSE_t (early rounds' larger updates carry more noise), else G^2's mean.
        if energies is not None and energies.size >= r:
            eps = eps * energies[:r] / mean_sq
        return convergence_bound(constants, np.ones(r), eps, np.zeros(r))["total"]

    measured = {s: first_round_at(np.asarray(run["val_loss"]), target_loss) for s, run in runs.items()}
    r_digital = measured["digital"] or rounds
    target_bound = bound_at(np.full(rounds, -np.inf), r_digital)
    predicted: dict[str, int | None] = {}
    for scheme, run in runs.items():
        nmse = np.asarray(run["nmse_db"], dtype=float)
        predicted[scheme] = next(
            (
                r
                for r in range(1, nmse.size + 1)
                if bound_at(nmse, r, run.get("update_sq")) <= target_bound * (1 + 1e-12)
            ),
            None,
        )
    pairs = pair_agreement(predicted, measured)
    return {
        "constants": constants.to_record(),
        "path_curvature": path_curv,
        "noise_curvature": noise_curv,
        "target_loss": target_loss,
        "target_bound": target_bound,
        "measured_rounds": measured,
        "predicted_rounds": predicted,
        "pairs_agree": pairs,
        "agree": all(pairs),
    }


def bound_vs_measurement(
    points: dict[str, dict[str, dict[str, Any]]], pilot: str | None = None
) -> dict[str, Any]:
    """Every grid point (``points[label][scheme]`` as in ``predict_point``) and the agreement.

    The noise curvature always comes from runs other than those it predicts: from the point
    ``pilot`` (left out of the agreement figures), or, when None, for each point from the other
    points' probes (leave one out). A point with no probe elsewhere falls back to the loss curve's
    curvature alone (its ``probe`` is None).
    """
    if pilot is not None and pilot not in points:
        raise ValueError(f"pilot point {pilot!r} is not among the points {sorted(points)}")
    per_point: dict[str, Any] = {}
    for label, runs in points.items():
        if "digital" not in runs or label == pilot:
            continue
        others = (
            {pilot: points[pilot]} if pilot is not None else {k: v for k, v in points.items() if k != label}
        )
        probe = pick_probe(others)
        per_point[label] = {**predict_point(runs, probe["curvature"] if probe else None), "probe": probe}
    pairs = [ok for p in per_point.values() for ok in p["pairs_agree"]]
    return {
        "points": per_point,
        "pilot": pilot,
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
        run = {
            "val_loss": s["val_loss"],
            "nmse_db": s["nmse_db"],
            "g2": np.zeros(0),
            "first_round": first_round(c["run_dir"]),
            "update_sq": clean_update_energies(c["run_dir"]),
        }
        if cell["scheme"] == "digital":
            run["g2"] = aggregate_sq_norms(c["run_dir"])
        points.setdefault(label, {})[cell["scheme"]] = run
    return points
