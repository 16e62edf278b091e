"""The calibrated bound against measurement: does it order the schemes as real FL runs do?

A grid point (a noise level, say) pools its seeds: within a seed every scheme shares the data
split, initial weights and channel draws, and the point's curves are the means over its seeds
(one seed's rounds-to-target swing by a round or two). Rounds are interpolated between the
rounds the loss is measured at (``first_round_at``), on both sides. At each point:
- measured: the rounds each scheme's mean validation loss needs to reach the target, None if it
  never does within the run. The target is digital FedAvg's loss half-way through the run
  (``TARGETS["digital_half"]``), or the slowest scheme's final loss (``"all_reach"``: every
  scheme gets there, so the bound must also say how slow the noisy ones are);
- predicted: the rounds at which the bound (``allocation.bound.convergence_bound``), with each
  seed's measured per-round NMSE and averaged over the seeds, falls to the bound digital has when
  it reaches the target. The constants are calibrated from pilots (every one's source recorded):
  - the contraction per round c and Delta0 fitted to digital's mean loss curve (``fit_pilot``);
    with digital's first update this gives the curvature along the training path L_path and the
    step eta = c / L_path (source "pilot");
  - L, the smoothness, is the larger of L_path and the curvature the aggregation noise meets,
    measured by a noisy pilot: its round-1 loss excess over digital's, from the same start and
    update, over the noise energy NMSE_1 ||Delta_1||^2 (``noise_probe``; source "pilot"). The
    noise probe always comes from other runs than those predicted (a pilot point, or leave one
    out). eta is capped at 1 / L;
  - G^2 the mean squared norm of digital's aggregated updates, from the round records (the
    coordinator's ``aggregate_sq_norm``), in gradient units, i.e. over eta^2; round t of a run
    weighs its NMSE_t by that run's own error-free update energy over the mean
    (``clean_update_energies``), since the error a round injects is NMSE_t ||Delta_t||^2 and the
    early updates are the large ones; zeta^2 = 0 (an IID split); M = 0 (the runs start from the
    same untrained adapter; source "estimated").

Why the noise probe: the loss curve sees only the flat directions training moves along, while the
air's error is spread over every coordinate of the adapter. At configs/edge.yaml the probes read
8e-5 to 1.1e-4 at round-1 NMSEs from -19 to +5 dB (a property of the task, not of the noise level;
louder probes saturate), which is 6-9x L_path on 12-round runs (three seeds pooled; L_path from
digital's first update) and more on shorter runs, whose short curve gives a flatter path. A
calibration on the loss curve alone makes the OTA
term that much too weak and predicts that even +20 dB of NMSE barely slows learning.

Two orderings agree on a pair of schemes when they put it the same way round (a faster, b
faster, or even), or when their gaps (rounds of a minus rounds of b) differ by at most
``RESOLUTION_ROUNDS``: a round is the measurement's resolution, so a measured gap of 2 against a
predicted one of 1 is the same ordering, and 0.3 against -0.4 is no contradiction. "Never" counts
as an infinite number of rounds. A grid point agrees when every pair does. So the rule has no
tolerance at the run's end: at configs/edge.yaml's -90 dBm ours' mean loss reaches the target at
round 11.15 of 12 and the bound, run on past round 12 with the same error, would at about 12.06;
that pair disagrees (tests/test_compare_bound.py, test_minus_90_dbm_sits_on_the_run_horizon).

What the bound cannot do (measured at edge.yaml, bench_science):
- where the air is loud it is too pessimistic. The loss's response to the air's error saturates
  above about 0 dB NMSE (+13 dB hurts no more than +3 dB does) while the bound's OTA term grows
  linearly in NMSE, so with the ``all_reach`` target it predicts that the fixed arrays (mean NMSE
  about 0 dB and up, at -98 dBm noise and louder) never get to the slowest scheme's final loss,
  which they do by round 10-12;
- where the air is quiet it cannot say that noise helps. At -122 and -114 dBm (NMSE -14 to -30
  dB) the OTA runs reached digital's half-way loss sooner than digital in 17 of 18 scheme-seed
  pairs (fpa by 1.2 rounds on average, with the same clients as digital): a little noise sends
  the local Adam training down a better path on this task. The bound's OTA term cannot be
  negative, so it calls them even with digital, and those points disagree.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np

RESOLUTION_ROUNDS = 1.0
# The loss each target asks for, from the point's mean curves (digital's, or every scheme's).
TARGETS = ("digital_half", "all_reach")
# A loss excess below this is not a measurement: the validation loss is a float32 mean (its rounding
# is about 1e-6 nats), and a tiny excess over a tiny noise energy would read as a huge curvature.
LOSS_RESOLUTION = 1e-4


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


def first_round_at(values: np.ndarray, target: float) -> float | None:
    """When a per-round series (round 1 first) first falls to ``target``, in rounds, interpolated
    linearly between the last round above it and the first at or below it (round 1 if the first
    already is); None if it never does. Interpolated, not rounded up: a curve just above the target
    at round 6 and well below at 7 gets there at about 6, not 7, so a tiny excess is not a round."""
    y = np.asarray(values, dtype=float)
    hit = np.nonzero(y <= target + 1e-12)[0]
    if not hit.size:
        return None
    i = int(hit[0])
    if i == 0:
        return 1.0
    return float(i + (y[i - 1] - target) / (y[i - 1] - y[i]))


def pair_agreement(predicted: dict[str, float | None], measured: dict[str, float | None]) -> list[bool]:
    """For every pair of schemes (sorted by name): do the two orderings agree (module docstring)?"""

    def rounds(value: float | None) -> float:
        return math.inf if value is None else float(value)

    def agree(a: str, b: str) -> bool:
        pa, pb, ma, mb = (rounds(v) for v in (predicted[a], predicted[b], measured[a], measured[b]))
        if (pa > pb) - (pa < pb) == (ma > mb) - (ma < mb):
            return True
        gaps = (pa - pb, ma - mb)
        if not all(math.isfinite(g) for g in gaps):  # one says never, the other a number of rounds
            return False
        return abs(gaps[0] - gaps[1]) <= RESOLUTION_ROUNDS

    schemes = sorted(set(predicted) & set(measured))
    return [agree(a, b) for a, b in itertools.combinations(schemes, 2)]


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


Runs = dict[str, list[dict[str, Any]]]  # scheme -> its runs at one grid point, one per seed


def pick_probe(points: dict[str, Runs]) -> dict[str, Any] | None:
    """The clean noise probe with the highest curvature among these points, None if there is none.

    Each noisy run is probed against digital's run of the same seed. L is a supremum, and a loud
    probe under-reads it (the loss response to noise saturates: at edge.yaml an NMSE of +13 dB
    raises the loss no more than +3 dB does), so the largest reading wins.
    """
    probes = []
    for label, runs in points.items():
        digital = {run["seed"]: run for run in runs.get("digital", [])}
        for scheme, scheme_runs in runs.items():
            for run in scheme_runs:
                if scheme == "digital" or run["seed"] not in digital:
                    continue
                probe = noise_probe(digital[run["seed"]], run)
                if probe["curvature"] is not None:
                    probes.append({**probe, "point": label, "scheme": scheme, "seed": run["seed"]})
    return max(probes, key=lambda p: p["curvature"], default=None)


def _mean_curve(runs: list[dict[str, Any]], key: str) -> np.ndarray:
    """The seeds' mean of a per-round series, over the rounds every seed has."""
    series = [np.asarray(run[key], dtype=float) for run in runs]
    rounds = min(x.size for x in series)
    return np.mean([x[:rounds] for x in series], axis=0)


def predict_point(
    runs: Runs, noise_curv: float | None = None, target: str = "digital_half"
) -> dict[str, Any]:
    """One grid point: ``runs[scheme]`` lists its seeds' runs, each with ``val_loss``, ``nmse_db`` and
    ``update_sq`` per round (``clean_update_energies``). ``noise_curv`` is the curvature a noisy
    pilot measured (``noise_probe``), None to use the loss curve's alone; ``target`` one of
    ``TARGETS``. Returns the constants, the target and both orderings."""
    from allocation.bound import BoundConstants, convergence_bound, fit_pilot

    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS} (got {target!r})")
    losses = _mean_curve(runs["digital"], "val_loss")
    rounds = losses.size
    # The pilot fit's contraction per round c = eta L (fit_pilot at L = 1 returns c itself).
    c, gap = fit_pilot(losses, smoothness=1.0)
    updates = _mean_curve(runs["digital"], "update_sq")  # digital's updates carry no air error
    if not updates.size or not updates[0] > 0:
        raise ValueError("digital's round records give no update norm to calibrate G^2 with")
    # The quadratic model the fit assumes, F - F* = L/2 ||w - w*||^2 with the distance shrinking by
    # (1 - c) a round, ties the scales together: the first update is c ||w_0 - w*||, so
    # L_path = 2 c^2 Delta0 / ||Delta_1||^2 and eta = c / L_path.
    path_curv = 2.0 * c * c * gap / float(updates[0])
    eta = c / path_curv
    # L_path is the curvature along the training path only. The noise spreads over every direction
    # of the adapter, where the measured curvature (a noisy pilot) is higher; the bound's L is the
    # larger of the two, and eta stays the step that gives the fitted contraction (eta L <= 1).
    smoothness = max(path_curv, noise_curv or 0.0)
    mean_sq = float(np.mean(updates))
    constants = BoundConstants(smoothness=smoothness, sources={"smoothness": "pilot"}).with_estimates(
        "pilot", sgd_step=min(eta, 1.0 / smoothness), initial_gap=gap
    )
    # G^2 in gradient units: the updates' mean squared norm over eta^2. The compared runs start from
    # the same untrained adapter: no pre-training rounds, so no shift term (it would only fade with
    # R the same for every scheme). zeta^2 = 0: an IID split.
    constants = constants.with_estimates(
        "estimated", update_sq_norm=mean_sq / eta**2, heterogeneity=0.0, pretrain_rounds=0
    )

    def bound_curve(run: dict[str, Any]) -> np.ndarray:
        nmse_db = np.asarray(run["nmse_db"], dtype=float)[:rounds]
        # Round t's error energy is NMSE_t ||Delta_t||^2: with the run's own update energies the
        # term is L eta G_t^2 NMSE_t (early rounds' larger updates carry more noise).
        eps = np.where(np.isneginf(nmse_db), 0.0, 10.0 ** (nmse_db / 10.0))
        eps = eps * np.asarray(run["update_sq"], dtype=float)[: eps.size] / mean_sq
        return np.array(
            [
                convergence_bound(constants, np.ones(r), eps[:r], np.zeros(r))["total"]
                for r in range(1, eps.size + 1)
            ]
        )

    mean_losses = {s: _mean_curve(scheme_runs, "val_loss") for s, scheme_runs in runs.items()}
    bounds = {
        s: np.mean([bound_curve(run) for run in scheme_runs], axis=0) for s, scheme_runs in runs.items()
    }
    target_loss = (
        float(losses[max(0, math.ceil(rounds / 2) - 1)])
        if target == "digital_half"
        else max(float(curve[-1]) for curve in mean_losses.values())
    )
    measured = {s: first_round_at(curve, target_loss) for s, curve in mean_losses.items()}
    # Digital's bound where its loss meets the target (between rounds: interpolated as the rounds are).
    reached = measured["digital"] or float(rounds)
    target_bound = float(np.interp(reached, np.arange(1, rounds + 1), bounds["digital"]))
    predicted = {s: first_round_at(curve, target_bound * (1 + 1e-12)) for s, curve in bounds.items()}
    pairs = pair_agreement(predicted, measured)
    return {
        "constants": constants.to_record(),
        "path_curvature": path_curv,
        "noise_curvature": noise_curv,
        "seeds": len(runs["digital"]),
        "target": target,
        "target_loss": target_loss,
        "target_bound": target_bound,
        "measured_rounds": measured,
        "predicted_rounds": predicted,
        "pairs_agree": pairs,
        "agree": all(pairs),
    }


def bound_vs_measurement(
    points: dict[str, Runs], pilot: str | None = None, target: str = "digital_half"
) -> dict[str, Any]:
    """Every grid point (``points[label][scheme]``: its seeds' runs, as in ``predict_point``) and
    the agreement.

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
        per_point[label] = {
            **predict_point(runs, probe["curvature"] if probe else None, target),
            "probe": probe,
        }
    pairs = [ok for p in per_point.values() for ok in p["pairs_agree"]]
    return {
        "points": per_point,
        "pilot": pilot,
        "target": target,
        "point_agreement": float(np.mean([p["agree"] for p in per_point.values()])) if per_point else None,
        "pair_agreement": float(np.mean(pairs)) if pairs else None,
    }


def held_out(
    calibration: dict[str, Runs], held: dict[str, Runs], target: str = "digital_half"
) -> dict[str, Any]:
    """The same rule on points the calibration never saw: the noise curvature is the one probe
    picked from the ``calibration`` points' runs (``pick_probe``), and each ``held`` point is
    predicted with it (its own digital run fits c and Delta0, as at every point). Returns the
    per-point results, the agreement and a 95% interval for each (``wilson_interval`` on the
    points; on the pairs a bootstrap over points, since a point's pairs share its runs)."""
    probe = pick_probe(calibration)
    if probe is None:
        raise ValueError("the calibration points hold no clean noise probe")
    per_point = {
        label: {**predict_point(runs, probe["curvature"], target), "probe": probe}
        for label, runs in held.items()
        if "digital" in runs
    }
    agree = [p["agree"] for p in per_point.values()]
    pairs = [p["pairs_agree"] for p in per_point.values()]
    return {
        "points": per_point,
        "target": target,
        "probe": probe,
        "point_agreement": float(np.mean(agree)) if agree else None,
        "point_interval": wilson_interval(sum(agree), len(agree)),
        "pair_agreement": float(np.mean([ok for ps in pairs for ok in ps])) if pairs else None,
        "pair_interval": bootstrap_pairs(pairs),
    }


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial proportion (95% at z = 1.96); None for n = 0.
    Unlike the normal approximation it stays inside [0, 1] and is honest at 0 of n or n of n."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_pairs(pairs: list[list[bool]], draws: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """A 95% percentile interval of the pair agreement, resampling whole points (seeded)."""
    if not pairs or not any(pairs):
        return None
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(draws):
        pick = rng.integers(0, len(pairs), len(pairs))
        flat = [ok for i in pick for ok in pairs[i]]
        stats.append(float(np.mean(flat)) if flat else math.nan)
    lo, hi = np.nanpercentile(stats, [2.5, 97.5])
    return (float(lo), float(hi))


def points_from_cells(cells: list[dict[str, Any]], key: str) -> dict[str, Runs]:
    """Group finished compare cells (``testbed.compare.load_cells``) by their value of ``key``,
    every seed's run of a scheme under its point's label."""
    points: dict[str, Runs] = {}
    for c in sorted(cells, key=lambda c: c["cell"]["seed"]):
        cell = c["cell"]
        run = {
            "seed": cell["seed"],
            "val_loss": c["series"]["val_loss"],
            "nmse_db": c["series"]["nmse_db"],
            "first_round": first_round(c["run_dir"]),
            "update_sq": clean_update_energies(c["run_dir"]),
        }
        points.setdefault(f"{key}={cell['grid'].get(key)}", {}).setdefault(cell["scheme"], []).append(run)
    return points
