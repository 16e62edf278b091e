"""The calibrated bound orders the schemes by rounds-to-target as real FL runs do.

Real runs of the tiny Llama (edge.yaml, K = 1, 6 rounds) for fpa and digital at three noise
levels: -100 dBm is the noisy pilot (its first round measures the curvature the noise meets, and it
is left out of the agreement); at a quiet air (-130 dBm) the aggregation noise costs nothing and
both orderings call the schemes even; at a noise-limited one (-80 dBm) the bound (calibrated on
digital's loss curve and update norms and the pilot's noise response) and the runs both say
digital is faster.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from allocation.bound import noise_curvature
from allocation.errors import AllocationError
from testbed.compare import build_spec, load_cells, open_compare_dir, run_compare
from testbed.compare.bound_check import (
    LOSS_RESOLUTION,
    aggregate_sq_norms,
    bound_vs_measurement,
    clean_update_energies,
    noise_probe,
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


def test_bound_ordering_agrees_with_real_runs(tmp_path: Path) -> None:
    overrides = [
        "fl.rounds=6",
        "allocation.max_rounds=6",
        "fl.data.num_samples=200",
        f"run.output_dir={tmp_path}",
        "allocation.latency_budget_s=6000",  # digital's TDMA airtime grows as the SNR falls
    ]
    spec = build_spec(EDGE, overrides, "fpa,digital", [f"{NOISE}=-130,-100,-80"], 1)
    out = open_compare_dir(spec, tmp_path / "cmp", None)
    run_compare(spec, out, workers=2)
    cells = load_cells(out, spec)
    digital = next(c for c in cells if c["cell"]["scheme"] == "digital")
    g2 = aggregate_sq_norms(digital["run_dir"])
    assert g2.size == 5 and (g2 > 0).all()  # rounds 2..6 against the round before
    pilot = f"{NOISE}=-100 seed=3"
    check = bound_vs_measurement(points_from_cells(cells, NOISE), pilot=pilot)
    assert sorted(check["points"]) == [f"{NOISE}=-130 seed=3", f"{NOISE}=-80 seed=3"]  # the pilot is out
    loud = check["points"][f"{NOISE}=-80 seed=3"]
    assert loud["probe"]["point"] == pilot
    # The noise meets a steeper loss than the training path does: the calibration's missing factor.
    assert loud["noise_curvature"] > 3 * loud["path_curvature"]
    assert loud["measured_rounds"]["digital"] is not None
    assert (
        loud["predicted_rounds"]["fpa"] is None
        or loud["predicted_rounds"]["fpa"] > loud["predicted_rounds"]["digital"] + 1
    )
    assert check["point_agreement"] == 1.0, check
    record = loud["constants"]
    assert record["sgd_step"]["source"] == "pilot" and record["update_sq_norm"]["source"] == "estimated"
    assert record["smoothness"]["source"] == "pilot"
    assert record["smoothness"]["value"] == pytest.approx(loud["noise_curvature"])
