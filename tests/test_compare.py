"""`testbed compare`: the cells, bad input, kill-and-resume, the Dask engine and the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from testbed.cli import main
from testbed.compare import build_spec, open_compare_dir, run_compare
from testbed.compare.report import analyse, iso_learning, rounds_to

ROOT = Path(__file__).resolve().parent.parent
EDGE = str(ROOT / "configs" / "edge.yaml")
# One short round per cell: the machinery is under test here, not the learning.
TINY = [
    "fl.rounds=1",
    "allocation.max_rounds=1",
    "fl.data.num_samples=60",
    "fl.training.local_steps=1",
    "allocation.position_starts=1",
]


def sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


# --- the cells ----------------------------------------------------------------------------------
def test_schemes_share_seed_and_config_within_a_grid_point_and_seed() -> None:
    spec = build_spec(EDGE, [], "ours,fpa,non_ma,digital", ["allocation.clients_per_round=1,2"], 2)
    cells = spec.cells()
    assert len(cells) == 16 and len({c.cell_id for c in cells}) == 16
    groups: dict[tuple, list] = {}
    for c in cells:
        groups.setdefault((c.point, c.seed), []).append(c)
    assert len(groups) == 4
    for (point, _seed), members in groups.items():
        assert sorted(m.scheme for m in members) == ["digital", "fpa", "non_ma", "ours"]
        # Everything but the run's name is the same override set: same split, weights, channel, noise.
        strip = {tuple(o for o in m.overrides if not o.startswith("run.name=")) for m in members}
        assert len(strip) == 1
        assert members[0].grid == {"allocation.clients_per_round": [1, 2][point]}
    assert {c.seed for c in cells} == {3, 4}  # run.seed and run.seed + 1


# --- bad input: exit 2 before anything runs --------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--schemes", "ours,magic"], ["--schemes", "'magic'", "allowed", "non_ma"]),
        (
            ["--grid", "allocation.clients_per_rnd=1,2"],
            ["--grid allocation.clients_per_rnd", "clients_per_round"],
        ),
        (["--grid", "lab.medium.noise_power_dbm=-90,5"], ["noise_power_dbm", "must be <= 0", "5"]),
        (
            ["--grid", "allocation.clients_per_round=1,9"],
            ["clients_per_round=9", "cells g1-s0-ours ... g1-s0-digital", "exceeds lab.clients.count=4"],
        ),
        (["--seeds", "0"], ["--seeds", ">= 1"]),
        # A combination of values: K=4 is fine with 4 clients, not with 2; the cells are named.
        (
            ["--grid", "allocation.clients_per_round=1,4", "--grid", "lab.clients.count=2,4", "--seeds", "2"],
            [
                "grid point 2, cells g2-s0-ours ... g2-s1-digital",
                "clients_per_round=4 exceeds lab.clients.count=2",
            ],
        ),
        # Budgets that pay fl.rounds at K=1 but not at K=2 (each run's first check, made up front).
        (
            ["--grid", "allocation.clients_per_round=1,2", *sets("allocation.energy_budget_j=0.08")],
            ["grid point 1, cells g1-s0-ours ... g1-s0-digital", "allocation.energy_budget_j=0.08"],
        ),
    ],
)
def test_bad_input_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needles: list[str]
) -> None:
    out = tmp_path / "cmp"
    code = main(["compare", EDGE, *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()  # nothing was written, nothing ran


def test_a_compare_dir_from_another_config_refuses_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    open_compare_dir(build_spec(EDGE, ["fl.rounds=3"], "ours,fpa", [], 1), out, None)
    code = main(["compare", EDGE, "--schemes", "ours,fpa", "--set", "fl.rounds=4", "--resume", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "refusing to resume" in err and "another config" in err
    code = main(["compare", EDGE, "--schemes", "ours", "--set", "fl.rounds=3", "--resume", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "compares schemes ['ours', 'fpa']" in err
    assert not (out / "cells").exists()


# --- kill, then resume only the unfinished cells ----------------------------------------------------
def _done(out: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime for p in (out / "cells").glob("*/done.json")}


def test_a_killed_compare_resumes_only_its_unfinished_cells(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [EDGE, "--schemes", "ours,digital", "--workers", "1", *sets(*TINY, f"run.output_dir={tmp_path}")]
    cmd = [sys.executable, "-m", "testbed.cli", "compare", *args, "--out", str(out), "-q"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not _done(out) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert _done(out), (
            f"no cell finished: {proc.stderr.read().decode() if proc.poll() is not None else ''}"
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the compare and its cell processes, mid-run
        proc.wait()
    before = _done(out)
    assert len(before) == 1, before  # one cell finished, the other was cut short
    spec = build_spec(EDGE, [*TINY, f"run.output_dir={tmp_path}"], "ours,digital", [], 1)
    report, ran = run_compare(spec, open_compare_dir(spec, None, out), workers=1)
    missing = {"g0-s0-ours", "g0-s0-digital"} - set(before)
    assert set(ran) == missing  # only the unfinished cell ran again
    after = _done(out)
    assert set(after) == {"g0-s0-ours", "g0-s0-digital"}
    for cell, mtime in before.items():
        assert after[cell] == mtime  # the finished cell was left alone
    # Each cell holds exactly one run directory: the partial one was resumed, not started anew.
    for cell in after:
        assert len([p for p in (out / "cells" / cell).iterdir() if p.is_dir()]) == 1
    assert "g0-s0-ours" in report.read_text() and (out / "ppl_vs_round.png").is_file()


# --- the Dask engine ---------------------------------------------------------------------------
def test_cells_run_on_a_dask_local_cluster(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    spec = build_spec(EDGE, [*TINY, f"run.output_dir={tmp_path}"], "fpa,digital", [], 1)
    out = open_compare_dir(spec, tmp_path / "cmp", None)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        report, ran = run_compare(spec, out, engine="dask", scheduler=client)
        workers = client.run(os.getpid)
    assert sorted(ran) == ["g0-s0-digital", "g0-s0-fpa"] and len(workers) == 2
    summary = json.loads((out / "compare_summary.json").read_text())
    rows = {r["cell"]: r for r in summary["numbers"]["rows"]}
    assert rows["g0-s0-digital"]["mean_nmse_db"] == -np.inf and rows["g0-s0-fpa"]["mean_nmse_db"] > -100
    assert "| g0-s0-fpa | fpa |" in report.read_text()


# --- the report's numbers ------------------------------------------------------------------------
def _series(ppl: list[float], energy: list[float]) -> dict:
    ppl_arr = np.array(ppl)
    return {
        "round": np.arange(1, len(ppl) + 1),
        "val_ppl": ppl_arr,
        "val_loss": np.log(ppl_arr),
        "energy_j": np.cumsum(energy),
        "latency_s": np.cumsum(np.ones(len(ppl))),
        "nmse_db": np.zeros(len(ppl)),
        "mean_nmse_db": 0.0,
    }


def _cell(scheme: str, seed: int, series: dict, grid: dict | None = None, point: int = 0) -> dict:
    cell = {"cell_id": f"g{point}-s{seed}-{scheme}", "scheme": scheme, "point": point, "grid": grid or {},
            "seed": seed, "overrides": []}  # fmt: skip
    return {"cell": cell, "series": series, "clients_per_round": 1}


def test_rounds_and_energy_to_non_ma_and_relative_change() -> None:
    cells = [
        _cell("non_ma", 0, _series([400, 300, 250], [1, 1, 1])),
        _cell("ours", 0, _series([350, 240, 200], [2, 2, 2])),
        _cell("non_ma", 1, _series([400, 320, 260], [1, 1, 1])),
        _cell("ours", 1, _series([390, 300, 270], [2, 2, 2])),
    ]
    numbers = analyse(cells)
    rows = {r["cell"]: r for r in numbers["rows"]}
    assert rows["g0-s0-ours"]["rounds_to_nonma"] == 2 and rows["g0-s0-ours"]["energy_to_nonma_j"] == 4
    assert rows["g0-s1-ours"]["rounds_to_nonma"] is None  # never reached 260
    assert rows["g0-s0-non_ma"]["rounds_to_nonma"] == 3
    change = numbers["ppl_change_vs_nonma"][0]["ours"]
    expected = [100 * (200 - 250) / 250, 100 * (270 - 260) / 260]
    assert change["mean"] == pytest.approx(np.mean(expected)) and change["std"] == pytest.approx(
        np.std(expected)
    )
    assert rounds_to(_series([5, 4, 3], [1, 1, 1]), 4.0) == (2, 2.0)


def test_iso_learning_power_saving_in_db() -> None:
    key = "lab.clients.tx_power_w"
    cells = []
    # digital: loss 5.0 everywhere; ours meets it (<= 5.05) down to 0.001 W, fpa only at 0.01 W and up.
    losses = {"digital": [5.0, 5.0, 5.0], "ours": [5.04, 5.01, 5.0], "fpa": [5.5, 5.03, 5.0]}
    for p, power in enumerate([0.001, 0.01, 0.1]):
        for scheme, ls in losses.items():
            s = _series([float(np.exp(ls[p]))], [1.0])
            cells.append(_cell(scheme, 0, s, {key: power}, p))
    iso = iso_learning(cells, [{"key": key, "values": [0.001, 0.01, 0.1]}])
    assert iso is not None
    assert iso["needed"]["-"]["ours"] == {0: 0.001} and iso["needed"]["-"]["fpa"] == {0: 0.01}
    assert iso["saving_db_vs_fpa"]["-"] == pytest.approx(10.0)
    # Interpolated: fpa's margin goes from -0.02 (0.01 W) to +0.45 (0.001 W): it crosses the target
    # 0.02 / 0.47 of the way down the 10 dB step.
    assert iso["needed_interp"]["-"]["fpa"][0] == pytest.approx(10 ** (-2 - 0.02 / 0.47), rel=1e-6)
    assert iso["saving_db_vs_fpa_interp"]["-"] == pytest.approx(10.0 * (1 - 0.02 / 0.47), rel=1e-6)
