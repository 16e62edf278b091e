"""The calibrated bound orders the schemes by rounds-to-target as real FL runs do.

Real runs of the tiny Llama (edge.yaml, K = 1, 6 rounds) for fpa and digital at two noise
levels: a quiet air, where the aggregation noise costs nothing and both orderings call the schemes
even, and a noise-limited one (-80 dBm), where the bound (calibrated on digital's loss curve and update
norms) and the runs both say digital is faster.
"""

from __future__ import annotations

from pathlib import Path

from testbed.compare import build_spec, load_cells, open_compare_dir, run_compare
from testbed.compare.bound_check import (
    aggregate_sq_norms,
    bound_vs_measurement,
    pair_agreement,
    points_from_cells,
)

ROOT = Path(__file__).resolve().parent.parent
EDGE = ROOT / "configs" / "edge.yaml"
NOISE = "lab.medium.noise_power_dbm"


def test_pair_agreement_counts_a_one_round_gap_as_even() -> None:
    assert pair_agreement({"a": 3, "b": 4, "c": None}, {"a": 4, "b": 4, "c": None}) == [True, True, True]
    assert pair_agreement({"a": 3, "b": 6}, {"a": 6, "b": 3}) == [False]
    assert pair_agreement({"a": 3, "b": None}, {"a": 3, "b": 9}) == [True]
    assert pair_agreement({"a": 3, "b": None}, {"a": 3, "b": 4}) == [False]


def test_bound_ordering_agrees_with_real_runs(tmp_path: Path) -> None:
    overrides = [
        "fl.rounds=6",
        "allocation.max_rounds=6",
        "fl.data.num_samples=200",
        f"run.output_dir={tmp_path}",
        "allocation.latency_budget_s=6000",  # digital's TDMA airtime grows as the SNR falls
    ]
    spec = build_spec(EDGE, overrides, "fpa,digital", [f"{NOISE}=-130,-80"], 1)
    out = open_compare_dir(spec, tmp_path / "cmp", None)
    run_compare(spec, out, workers=2)
    cells = load_cells(out, spec)
    digital = next(c for c in cells if c["cell"]["scheme"] == "digital")
    g2 = aggregate_sq_norms(digital["run_dir"])
    assert g2.size == 5 and (g2 > 0).all()  # rounds 2..6 against the round before
    check = bound_vs_measurement(points_from_cells(cells, NOISE))
    loud = check["points"][f"{NOISE}=-80 seed=3"]
    assert loud["measured_rounds"]["digital"] is not None
    assert (
        loud["predicted_rounds"]["fpa"] is None
        or loud["predicted_rounds"]["fpa"] > loud["predicted_rounds"]["digital"] + 1
    )
    assert check["point_agreement"] == 1.0, check
    record = loud["constants"]
    assert record["sgd_step"]["source"] == "pilot" and record["update_sq_norm"]["source"] == "estimated"
