"""The paper's figure's numbers, per grid point: what MA changed, how fairly, at what cost.

From the finished cells of a compare (``testbed.compare.load_cells``), per grid point (a K, say):
- ``jain``: participation fairness per scheme, Jain's index over the clients' selection counts at
  the end of the run, (sum n_k)^2 / (U sum n_k^2) over all U clients (1: everyone equally often,
  1/U: one client always), as the paper reports it; the mean and spread over the seeds;
- ``to_target``: per scheme, the rounds, energy and latency each seed needed to reach non_ma's
  final perplexity (same point and seed), and how many seeds never got there;
- ``not_beaten``: per (point, seed), whether ours' final perplexity is below, or within the seed
  spread of, every other over-the-air scheme's (digital is error-free: the upper bound, not ranked);
- ``verdicts``: where MA helped and where not, with the cause the data shows (NMSE, seed spread).

"Helped" is one rule for every point: ours' mean perplexity change against non_ma is negative and
larger than its seed spread (the std over seeds). A change inside the spread is no finding.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

# The paper's relative perplexity change of MA-OTA against non-MA (arXiv:2506.00011), by K.
PAPER_PPL_CHANGE = {1: {"Alpaca": -17.4, "Dolly": -54.4}, 2: {"Alpaca": -14.2, "Dolly": -13.7}}
# The schemes that aggregate over the air (digital is the error-free reference).
OTA_SCHEMES = ("ours", "fpa", "random_placement", "non_ma")
# Below this NMSE the air's error barely moves this task's loss (measured at configs/edge.yaml:
# the final loss's response to NMSE is flat below about -5 dB and saturates above 0 dB).
QUIET_NMSE_DB = -5.0


def jain_index(counts: np.ndarray) -> float:
    """Jain's fairness index of non-negative counts: 1 when all equal, 1/n when one has all."""
    x = np.asarray(counts, dtype=float)
    total = float(np.sum(x * x))
    return float(np.sum(x) ** 2 / (x.size * total)) if x.size and total > 0 else float("nan")


def selection_counts(series: dict[str, Any]) -> np.ndarray:
    """How often each of the U clients was selected over the run (``cell_series``'s records)."""
    counts = np.zeros(int(series["num_clients"]), dtype=int)
    for chosen in series["selected"]:
        for k in chosen:
            counts[int(k)] += 1
    return counts


def _stats(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": float(np.mean(finite)) if finite else None,
        "std": float(np.std(finite)) if finite else None,
        "n": len(finite),
        "per_seed": [None if v is None else round(float(v), 4) for v in values],
    }


def paper_numbers(cells: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Jain's index, the cost to reach non_ma, ours-not-beaten and the verdicts, per point.

    ``rows`` are ``report.analyse``'s per-cell rows (final ppl, rounds/energy/latency to non_ma).
    """
    by_point: dict[int, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for c in sorted(cells, key=lambda c: c["cell"]["seed"]):
        by_point[c["cell"]["point"]][c["cell"]["scheme"]].append(c)
    row_of = {r["cell"]: r for r in rows}
    jain: dict[int, dict[str, Any]] = {}
    to_target: dict[int, dict[str, Any]] = {}
    for p, schemes in sorted(by_point.items()):
        jain[p] = {
            s: _stats([jain_index(selection_counts(c["series"])) for c in runs])
            for s, runs in sorted(schemes.items())
            if all("selected" in c["series"] for c in runs)
        }
        to_target[p] = {}
        for s, runs in sorted(schemes.items()):
            mine = [row_of[c["cell"]["cell_id"]] for c in runs if c["cell"]["cell_id"] in row_of]
            reached = [r for r in mine if r["rounds_to_nonma"] is not None]
            to_target[p][s] = {
                "seeds": len(mine),
                "never": len(mine) - len(reached),
                "rounds": _stats([r["rounds_to_nonma"] for r in reached]),
                "energy_j": _stats([r["energy_to_nonma_j"] for r in reached]),
                "latency_s": _stats([r["latency_to_nonma_s"] for r in reached]),
            }
    return {
        "jain": jain,
        "to_target": to_target,
        "not_beaten": not_beaten(rows),
    }


def not_beaten(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (point, seed): is ours' final perplexity <= every other OTA scheme's + the seed spread?

    The spread at a point is the larger of the two schemes' std of final perplexity over the seeds
    (one seed: no spread, a plain comparison).
    """
    finals: dict[tuple, dict[str, float]] = defaultdict(dict)  # (point label, seed) -> scheme -> ppl
    for r in rows:
        if r["final_ppl"] is not None:
            finals[(_label(r["grid"]), r["seed"])][r["scheme"]] = r["final_ppl"]
    spread: dict[tuple[str, str], float] = {}
    by_scheme: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (label, _seed), d in finals.items():
        for s, v in d.items():
            by_scheme[(label, s)].append(v)
    for key, values in by_scheme.items():
        spread[key] = float(np.std(values)) if len(values) > 1 else 0.0
    points = {}
    for (label, seed), d in sorted(finals.items()):
        others = [s for s in OTA_SCHEMES if s in d and s != "ours"]
        if "ours" not in d or not others:
            continue
        beaten_by = [
            s
            for s in others
            if d["ours"] > d[s] + max(spread[(label, "ours")], spread[(label, s)]) * (1 + 1e-12)
        ]
        points[f"{label}, seed {seed}"] = beaten_by
    share = float(np.mean([not v for v in points.values()])) if points else None
    return {"share": share, "beaten_by": points}


def _label(grid: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in grid.items()) or "base"


def verdicts(rel: dict[int, dict[str, Any]], rows: list[dict[str, Any]], labels: dict[int, str]) -> list[str]:
    """One plain sentence per grid point: did MA (ours) beat non_ma and fpa there, and why (not)."""
    nmse: dict[tuple[int, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["mean_nmse_db"] is not None and math.isfinite(r["mean_nmse_db"]):
            nmse[(r["point"], r["scheme"])].append(r["mean_nmse_db"])
    out = []
    for p in sorted(rel):
        d, label = rel[p], labels[p]
        if "ours" not in d:
            continue
        ours = d["ours"]
        mean, std = ours["mean"], ours["std"]
        helped = mean < 0 and (ours["n"] < 2 or -mean > std)
        n_ours, n_non, n_fpa = (
            float(np.mean(nmse[(p, s)])) if nmse[(p, s)] else math.nan for s in ("ours", "non_ma", "fpa")
        )
        air = (
            f"mean NMSE ours {n_ours:+.1f} dB, fpa {n_fpa:+.1f} dB, non_ma {n_non:+.1f} dB"
            if math.isfinite(n_ours)
            else "no NMSE recorded"
        )
        change = f"{mean:+.1f}% +- {std:.1f} (n={ours['n']})"
        # The fixed array's own change beside it: what the position optimisation adds.
        fpa_text = f"; fpa {d['fpa']['mean']:+.1f}%" if "fpa" in d else ""
        if helped:
            why = f"MA lowered the aggregation error ({air})"
            out.append(f"At {label} MA helped: perplexity {change} against non_ma{fpa_text}. {why}.")
            continue
        reasons = []
        if math.isfinite(n_non) and n_non < QUIET_NMSE_DB:
            reasons.append(
                f"the air is already quiet without MA (non_ma {n_non:+.1f} dB, below "
                f"{QUIET_NMSE_DB:+.0f} dB, where this task's loss barely responds to the error)"
            )
        if math.isfinite(n_ours) and math.isfinite(n_non) and n_non - n_ours < 1.0:
            reasons.append(f"MA gained only {n_non - n_ours:.1f} dB of NMSE over non_ma")
        if ours["n"] > 1 and std >= abs(mean):
            reasons.append(f"the seeds spread by {std:.1f}%, more than the change")
        if not reasons:
            reasons.append(f"the lower error ({air}) did not show in the loss")
        out.append(
            f"At {label} MA did not help: perplexity {change} against non_ma{fpa_text} ({air}); "
            + "; ".join(reasons)
            + "."
        )
    return out


def paper_sentences(
    rel: dict[int, dict[str, Any]], ks: dict[int, int | None], labels: dict[int, str]
) -> list[str]:
    """Ours against the paper's figure at the points whose K the paper reports, each point named by
    its own grid values (a noise grid at K=1 has several such points)."""
    notes = []
    for p, d in sorted(rel.items()):
        k = ks.get(p)
        if "ours" not in d or k not in PAPER_PPL_CHANGE:
            continue
        ours, paper = d["ours"], PAPER_PPL_CHANGE[k]
        spread_text = f"seed spread {ours['std']:.1f}" if ours["n"] > 1 else "one seed: no spread measured"
        beyond = ours["mean"] < 0 and (ours["n"] < 2 or abs(ours["mean"]) > ours["std"])
        lo, hi = sorted((paper["Alpaca"], paper["Dolly"]))
        where = (
            "between the paper's two figures"
            if lo <= ours["mean"] <= hi
            else "a larger reduction than either of the paper's"
            if ours["mean"] < lo
            else "a smaller reduction than either of the paper's"
        )
        at = (
            labels[p]
            if "clients_per_round=" in labels[p]
            else f"K={k}"
            if labels[p] == "base"
            else f"{labels[p]} (K={k})"
        )
        notes.append(
            f"At {at} ours changes perplexity by {ours['mean']:+.1f}% ({spread_text}), against the "
            f"paper's {paper['Alpaca']:+.1f}% (Alpaca) and {paper['Dolly']:+.1f}% (Dolly) at K={k}: "
            + (f"a reduction, {where}." if beyond else "no reduction beyond the seed spread.")
        )
    return notes
