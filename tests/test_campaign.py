"""Channel measurement campaigns: the formation plan, the measured map, kill -9 and resume, SigMF."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from process_kit import hears_ctrl_c

from drivers.errors import ConfigError
from sim.channel import FieldResponseChannel
from testbed.air.phy import PilotConfig
from testbed.campaign import (
    CampaignError,
    RadioSounder,
    SymbolSounder,
    check_config,
    estimate_chain_gains,
    find_table,
    grid_lines,
    plan_campaign,
    read_table,
    run_campaign,
    sim_medium,
    write_sigmf,
    write_table,
)
from testbed.channel_map import ChannelMapError, ChannelMapRangeError, MeasuredChannelMap
from testbed.cli import main
from testbed.config import load_config
from testbed.records import RunRecorder, read_events

ROOT = Path(__file__).resolve().parent.parent
CAMPAIGN = ROOT / "configs" / "campaign.yaml"
LAMBDA_M = 299_792_458.0 / 2.4e9


# --- the plan -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("region_wl", "step_wl", "num_antennas", "order"),
    [(4.0, 0.25, 4, "snake"), (4.0, 0.5, 4, "raster"), (4.0, 0.25, 8, "snake"), (2.0, 0.5, 1, "snake")],
)
def test_formation_covers_the_grid_and_keeps_clearance(
    region_wl: float, step_wl: float, num_antennas: int, order: str
) -> None:
    spacing_m = 0.5 * LAMBDA_M
    plan = plan_campaign(region_wl * LAMBDA_M, step_wl * LAMBDA_M, num_antennas, spacing_m, order)
    nx = plan.x_m.size
    assert nx == int(round(region_wl / step_wl)) + 1
    assert np.allclose(plan.x_m, -plan.x_m[::-1])  # centred
    visited = {tuple(c) for c in plan.cells.reshape(-1, 2)}
    assert visited == {(ix, iy) for ix in range(nx) for iy in range(nx)}  # every cell, none missed
    pos = plan.positions_m
    for step in range(plan.num_steps):  # rigid formation: pairwise distances are the same each step
        d = np.linalg.norm(pos[step, :, None, :] - pos[step, None, :, :], axis=-1)
        d[np.diag_indices(num_antennas)] = np.inf
        assert d.min() >= spacing_m - 1e-12
        assert np.allclose(pos[step] - pos[step, :1], pos[0] - pos[0, :1])
    if order == "snake":  # each move is one grid step in x or y
        assert np.all(np.abs(np.diff(plan.cells[:, 0], axis=0)).sum(axis=1) == 1)
        assert all(
            plan.step_distance_m(s) == pytest.approx(step_wl * LAMBDA_M) for s in range(1, plan.num_steps)
        )


def test_formation_refuses_too_many_antennas_for_the_clearance() -> None:
    with pytest.raises(ConfigError, match=r"min_spacing_wavelengths"):
        plan_campaign(4 * LAMBDA_M, 0.25 * LAMBDA_M, 8, 1.0 * LAMBDA_M)
    with pytest.raises(ConfigError, match=r"campaign.step_wavelengths.*only 3 columns for 4 antennas"):
        plan_campaign(4 * LAMBDA_M, 2 * LAMBDA_M, 4, 0.5 * LAMBDA_M)
    assert grid_lines(1.0, 0.3).tolist() == pytest.approx([-0.5, -0.25, 0.0, 0.25, 0.5])  # edge to edge
    # Paths of a move along the strip offset come closer than the antennas stand: 1 - step lambda.
    for step_wl, gap_wl in [(0.25, 0.75), (0.5, 0.5), (1.0, 0.0)]:
        plan = plan_campaign(4 * LAMBDA_M, step_wl * LAMBDA_M, 4, 0.5 * LAMBDA_M)
        assert plan.min_separation_m == pytest.approx(LAMBDA_M)
        assert plan.min_move_gap_m == pytest.approx(gap_wl * LAMBDA_M, abs=1e-12)


def test_a_strip_outside_its_stage_travel_is_refused_naming_the_stage() -> None:
    config = load_config(CAMPAIGN, ["lab.stages.ma0.origin_m=[0.0, -0.25]"])
    with pytest.raises(ConfigError, match=r"lab.stages.ma0: its campaign strip .* outside its travel"):
        check_config(config)


# --- the measured map ---------------------------------------------------------------------------
def _sim_channel(seed: int = 3, clients: int = 3) -> FieldResponseChannel:
    return FieldResponseChannel.draw(np.random.default_rng(seed), clients, 6, LAMBDA_M, 1.0)


def _grid_map(channel: FieldResponseChannel, step_wl: float = 0.125) -> MeasuredChannelMap:
    x = grid_lines(4 * LAMBDA_M, step_wl * LAMBDA_M)
    xx, yy = np.meshgrid(x, x)  # (ny, nx)
    h = channel.response(np.stack([xx.ravel(), yy.ravel()], axis=1)).reshape(-1, x.size, x.size)
    return MeasuredChannelMap(x, x, h)


def test_measured_map_reproduces_the_channel_and_its_gradient() -> None:
    from allocation.channel import ChannelModel

    channel = _sim_channel()
    cmap = _grid_map(channel)
    assert isinstance(cmap, ChannelModel)
    x = cmap.x_m
    grid_pts = np.array([[x[0], x[3]], [x[5], x[-1]], [x[16], x[16]]])
    assert np.allclose(cmap.response(grid_pts), channel.response(grid_pts), atol=1e-12, rtol=1e-9)
    rng = np.random.default_rng(0)
    inside = rng.uniform(x[1], x[-2], (5, 2))
    h_true = channel.response(inside)
    err = np.linalg.norm(cmap.response(inside) - h_true) / np.linalg.norm(h_true)
    assert err < 0.02  # bicubic between lambda/8 samples
    # The gradient is the interpolant's own derivative: check it against central differences.
    grad = cmap.gradient(inside)
    assert grad.shape == (3, 5, 2)
    eps = 1e-7
    for axis in (0, 1):
        step = np.zeros(2)
        step[axis] = eps
        fd = (cmap.response(inside + step) - cmap.response(inside - step)) / (2 * eps)
        assert np.allclose(grad[..., axis], fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())
    # ... and it tracks the true field-response gradient.
    g_true = channel.gradient(inside)
    assert np.linalg.norm(grad - g_true) / np.linalg.norm(g_true) < 0.1


def test_measured_map_refuses_positions_outside_and_holes() -> None:
    cmap = _grid_map(_sim_channel(), step_wl=0.5)
    edge = cmap.x_m[-1]
    cmap.response(np.array([[edge, -edge]]))  # the edge itself is measured
    with pytest.raises(ChannelMapRangeError, match=r"antenna 1 at .* outside the measured region"):
        cmap.response(np.array([[0.0, 0.0], [edge + 1e-3, 0.0]]))
    with pytest.raises(ChannelMapRangeError):
        cmap.gradient(np.array([[0.0, np.nan]]))
    h = cmap.h_grid.copy()
    h[1, 2, 3] = np.nan
    with pytest.raises(ChannelMapError, match=r"1 unmeasured cells .* client 1"):
        MeasuredChannelMap(cmap.x_m, cmap.y_m, h)


# --- whole campaigns ----------------------------------------------------------------------------
KEYS = ("point", "antenna", "client", "ix", "iy", "x_m", "y_m", "x_read_m", "y_read_m")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "testbed.cli", "measure", *args]


def _sorted_table(run_dir: Path) -> dict[str, np.ndarray]:
    table = read_table(find_table(run_dir))
    order = np.lexsort((table["client"], table["antenna"], table["point"]))
    return {k: v[order] for k, v in table.items()}


def _kill_after_points(
    proc: subprocess.Popen, out_dir: Path, points: int, sig: int = signal.SIGKILL, timeout_s: float = 60.0
) -> Path:
    """Signal the campaign once ``points`` steps are in its index; return its run directory."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the campaign ended before it was killed: {proc.communicate()}"
        runs = list(out_dir.glob("*/events.jsonl"))
        if runs and sum(d.get("kind") == "point" for d in read_events(runs[0])) >= points:
            os.kill(proc.pid, sig)
            proc.wait(timeout=30)
            return runs[0].parent
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no {points} points measured within {timeout_s} s")


def test_campaign_killed_and_resumed_gives_the_uninterrupted_table(tmp_path: Path) -> None:
    """Ctrl-C, then kill -9 mid-way, then --resume: the table is bit for bit the one an unbroken
    campaign writes (the symbol sounder draws each step's noise from (seed, step))."""
    sets = ["--set", "campaign.sounder=symbol"]
    out = tmp_path / "a"
    popen = {"cwd": ROOT, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "preexec_fn": hears_ctrl_c}
    interrupted = subprocess.Popen(
        _cli(str(CAMPAIGN), "--set", f"run.output_dir={out}", *sets, "-q"), **popen
    )
    run_dir = _kill_after_points(interrupted, out, points=3, sig=signal.SIGINT)
    assert interrupted.returncode == 130  # Ctrl-C: a clean stop, records closed
    stops = [d for d in read_events(run_dir / "events.jsonl") if d["doc"] == "stop"]
    assert [d["status"] for d in stops] == ["interrupted"]

    killed = subprocess.Popen(_cli("--resume", str(run_dir), "-q"), **popen)
    _kill_after_points(killed, out, points=9)
    assert killed.returncode == -signal.SIGKILL
    before = read_events(run_dir / "events.jsonl")
    assert before[-1]["doc"] != "stop"  # no clean shutdown this time: a real crash
    done_before = {d["data"]["point"] for d in before if d.get("kind") == "point"}

    resumed = subprocess.run(
        _cli("--resume", str(run_dir), "--json", "-q"), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["complete"] and summary["steps_skipped"] == len(done_before) >= 9
    assert summary["steps_measured"] == summary["steps_total"] - len(done_before)
    _assert_each_point_once(run_dir, summary["steps_total"])

    # The unbroken campaign writes CSV: the two formats must agree too.
    config = load_config(
        CAMPAIGN, [f"run.output_dir={tmp_path / 'b'}", "campaign.sounder=symbol", "campaign.table_format=csv"]
    )
    whole = run_campaign(config)
    assert whole.table_path is not None and whole.table_path.suffix == ".csv"
    a, b = _sorted_table(run_dir), _sorted_table(whole.run_dir)
    assert set(a) == set(b) and a["point"].size == b["point"].size == 27 * 4 * 4
    for key in (*KEYS, "h_re", "h_im", "snr_db"):
        assert np.array_equal(a[key], b[key]), key


def _assert_each_point_once(run_dir: Path, steps: int) -> None:
    points = [d["data"]["point"] for d in read_events(run_dir / "events.jsonl") if d.get("kind") == "point"]
    assert sorted(points) == list(range(steps))  # nothing lost, nothing measured twice


@pytest.fixture(scope="module")
def radio_campaign(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One unbroken campaign over the sim radios (pilots, IQ, SigMF), shared by the tests below."""
    out = tmp_path_factory.mktemp("radio")
    config = load_config(CAMPAIGN, [f"run.output_dir={out}"])
    return config, run_campaign(config)


def test_radio_campaign_cut_short_and_resumed(tmp_path: Path, radio_campaign: Any) -> None:
    config, whole = radio_campaign
    config = config.model_copy(deep=True)
    config.run.output_dir = tmp_path
    first = run_campaign(config, stop_after=10)
    assert first.steps_measured == 10 and first.table_path is None
    stop = [d for d in read_events(first.run_dir / "events.jsonl") if d["doc"] == "stop"]
    assert stop[-1]["status"] == "partial"
    second = run_campaign(resume_dir=first.run_dir)
    assert (second.steps_skipped, second.steps_measured) == (10, 17)
    _assert_each_point_once(first.run_dir, 27)
    a, b = _sorted_table(first.run_dir), _sorted_table(whole.run_dir)
    for key in KEYS:
        assert np.array_equal(a[key], b[key]), key
    # The sim receiver's noise is one stream per process, so the estimates agree within the noise.
    h_a, h_b = a["h_re"] + 1j * a["h_im"], b["h_re"] + 1j * b["h_im"]
    for k in range(4):
        sel = a["client"] == k
        err = np.sum(np.abs(h_a[sel] - h_b[sel]) ** 2) / np.sum(np.abs(h_b[sel]) ** 2)
        assert 0 < err < 10 ** (-25 / 10)
    assert np.median(np.abs(a["snr_db"] - b["snr_db"])) < 1.5
    _check_sigmf(first.run_dir, a)


def _check_sigmf(run_dir: Path, table: dict[str, np.ndarray]) -> None:
    """The collection lists one recording per step and client; each carries the positions."""
    import sigmf

    captures = run_dir / "captures"
    collection = sigmf.fromfile(captures / "campaign.sigmf-collection")  # checks every stream's hash
    names = collection.get_stream_names()
    assert sorted(names) == sorted(f"p{p:05d}_c{k:02d}" for p in range(27) for k in range(4))
    raw = json.loads((captures / "campaign.sigmf-collection").read_text())
    assert {e["name"] for e in raw["collection"]["core:extensions"]} == {"spatial", "ma_ota"}
    for i, name in enumerate(names):
        meta = json.loads((captures / f"{name}.sigmf-meta").read_text())
        g = meta["global"]
        point, client = g["ma_ota:point"], g["ma_ota:client"]
        assert g["core:datatype"] == "cf32_le" and g["spatial:num_elements"] == 4 == g["core:num_channels"]
        geometry = np.array([e["point"] for e in meta["captures"][0]["spatial:element_geometry"]])
        rows = (table["point"] == point) & (table["client"] == client)
        read = np.stack([table["x_read_m"][rows], table["y_read_m"][rows]], axis=1)
        assert np.allclose(geometry[:, :2], read) and np.all(geometry[:, 2] == 0)
        h = np.array(g["ma_ota:h_re"]) + 1j * np.array(g["ma_ota:h_im"])
        assert np.allclose(h, table["h_re"][rows] + 1j * table["h_im"][rows])
        if i % 40 == 0:  # sigmf's own validator (slow: it re-checks the schema every call)
            recording = sigmf.fromfile(captures / f"{name}.sigmf-meta")
            recording.validate()
            iq = recording.read_samples()
            assert iq.shape[1] == 4 and np.iscomplexobj(iq) and np.abs(iq).max() > 0


def test_measured_campaign_map_matches_the_sim_channel(radio_campaign: Any) -> None:
    config, result = radio_campaign
    assert result.table_path is not None and result.table_path.suffix == ".parquet"
    cmap = MeasuredChannelMap.from_run(result.run_dir)
    channel = sim_medium(config).links.channel
    xx, yy = np.meshgrid(cmap.x_m, cmap.y_m)
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
    measured, true = cmap.response(grid), channel.response(grid)
    for k in range(config.lab.clients.count):
        # Up to one complex number per client (its LO phase and the pilot's gain): the same field.
        c = np.vdot(true[k], measured[k]) / np.vdot(true[k], true[k])
        err = np.sum(np.abs(measured[k] - c * true[k]) ** 2) / np.sum(np.abs(measured[k]) ** 2)
        assert err < 10 ** (-30 / 10) and 0.9 < abs(c) < 1.1
    gain = np.load(result.run_dir / "channel_map.npz")
    assert gain["gain_db"].shape == (cmap.y_m.size, cmap.x_m.size)
    assert np.allclose(gain["gain_db"], 10 * np.log10(np.sum(np.abs(cmap.h_grid) ** 2, axis=0)))
    mat = __import__("scipy.io", fromlist=["loadmat"]).loadmat(result.run_dir / "campaign.mat")
    assert mat["H"].shape == cmap.h_grid.shape and np.allclose(mat["H"], cmap.h_grid)
    # The campaign's own report: the gain map, no FL plots.
    assert (result.run_dir / "report" / "gain_map.png").is_file()
    assert (result.run_dir / "report" / "report.md").read_text().startswith("# Campaign report")
    stop = [d for d in read_events(result.run_dir / "events.jsonl") if d["doc"] == "stop"]
    assert stop and stop[-1]["status"] == "completed"


def test_a_bad_config_stops_before_any_device_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import testbed.stages

    def no_devices(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a device was opened for a bad config")

    monkeypatch.setattr(testbed.stages, "open_stages", no_devices)
    out = tmp_path / "runs"
    bad = [
        ["lab.array.min_spacing_wavelengths=1.5"],  # the formation cannot keep this clearance
        ["lab.stages.ma3.origin_m=[-0.25, 0.1]"],  # a strip outside its stage's travel
        ["campaign.sounder=symbol", "lab.receiver.backend=usrp"],  # symbol sounding needs sim radios
    ]
    for overrides in bad:
        with pytest.raises(ConfigError):
            run_campaign(load_config(CAMPAIGN, [f"run.output_dir={out}", *overrides]))
    assert not out.exists()  # not even a run directory
    code = main(["measure", str(CAMPAIGN), "--set", f"run.output_dir={out}", "--set", bad[0][0], "--json"])
    assert code == 2
    err = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert err["error"] == "ConfigError" and "min_spacing_wavelengths" in err["message"]
    assert not out.exists()
    with pytest.raises(CampaignError, match="not a run directory"):
        run_campaign(resume_dir=tmp_path)
    other = RunRecorder.create(tmp_path, "experiment", (ROOT / "configs" / "campaign.yaml").read_text())
    other.start(kind="experiment")
    other.close()
    with pytest.raises(CampaignError, match="not a campaign run"):
        run_campaign(resume_dir=other.run_dir)
    with pytest.raises(CampaignError, match="differs from the run's config.yaml"):
        run_campaign(load_config(CAMPAIGN, ["run.seed=99"]), resume_dir=other.run_dir)


def test_receive_chains_are_put_on_one_reference(tmp_path: Path, radio_campaign: Any) -> None:
    """Real chains differ in gain and phase; the strips' shared columns reveal by how much."""
    _, result = radio_campaign
    table = read_table(result.table_path)
    assert np.allclose(estimate_chain_gains(table), 1.0, atol=0.03)  # the sim receiver has one LO
    g = np.array([1.0, 0.5 * np.exp(1.1j), 2.0 * np.exp(-2.5j), 0.8 * np.exp(0.4j)]) * np.exp(0.3j)
    skewed = dict(table)
    h = (table["h_re"] + 1j * table["h_im"]) * g[table["antenna"].astype(int)]
    skewed["h_re"], skewed["h_im"] = h.real, h.imag
    path = write_table(tmp_path, skewed, "csv")
    assert np.allclose(estimate_chain_gains(read_table(path)), g / g[0], rtol=0.03)
    truth = MeasuredChannelMap.from_run(result.run_dir).h_grid
    fixed = MeasuredChannelMap.from_table(path).h_grid / g[0]  # on antenna 0's reference
    raw = MeasuredChannelMap.from_table(path, calibrate_chains=False).h_grid / g[0]
    assert np.linalg.norm(fixed - truth) / np.linalg.norm(truth) < 0.05
    assert np.linalg.norm(raw - truth) / np.linalg.norm(truth) > 0.5


class _StandingAntennas:
    """Antennas that stay where they are: the position source the sim medium reads."""

    def __init__(self, positions_m: np.ndarray) -> None:
        self.positions_m = positions_m

    def positions(self) -> np.ndarray:
        return self.positions_m


@pytest.mark.parametrize("mode", ["sequential", "simultaneous"])
def test_pilots_in_turn_or_at_once_estimate_every_client(tmp_path: Path, mode: str) -> None:
    """Simultaneous ZC roots leak 1/sqrt(L) into each other; with a ~14 dB near-far gap between the
    clients here, only the interference cancellation keeps the weak ones usable."""
    # Seed 4 draws clients ~15 dB apart: the near-far case the cancellation is for.
    config = load_config(CAMPAIGN, [f"campaign.pilots={mode}", "campaign.captures_per_point=2", "run.seed=4"])
    pos = np.array([[-0.2, 0.0], [-0.08, 0.05], [0.05, -0.1], [0.17, 0.2]])
    sounder = RadioSounder.open(config, _StandingAntennas(pos))
    try:
        sounding = sounder.sound(pos, np.random.default_rng(0))
        air_s = sounder.capture_time_s()
    finally:
        sounder.close()
    slots = 4 if mode == "sequential" else 1  # one slot per client, or one for all
    assert air_s == pytest.approx(2 * PilotConfig(zc_length=127).capture_samples(slots) / 1e6)
    true = sim_medium(config).links.channel.response(pos)
    assert np.ptp(20 * np.log10(np.abs(true).mean(axis=1))) > 10  # a real near-far spread
    for k in range(4):
        c = np.vdot(true[k], sounding.h[k]) / np.vdot(true[k], true[k])  # LO phase, pilot gain
        err = np.sum(np.abs(sounding.h[k] - c * true[k]) ** 2) / np.sum(np.abs(c * true[k]) ** 2)
        assert err < 10 ** (-35 / 10) and 0.9 < abs(c) < 1.1, (k, err, c)
    expected_snr_db = 10 * np.log10(0.1 * np.abs(true) ** 2 / 1e-12)  # P |h|^2 / sigma^2
    assert np.all(np.abs(sounding.snr_db - expected_snr_db) < 3.0)
    assert [start for start, _ in sounding.segments] == [0, sounding.iq[0].shape[1] // 2]
    meta_path = write_sigmf(
        tmp_path, 7, 2, sounding.iq[2], pos, 1e6, 2.4e9, {"pilots": mode}, sounding.segments
    )
    import sigmf

    recording = sigmf.fromfile(meta_path)
    recording.validate()
    assert len(recording.get_captures()) == 2
    assert recording.get_global_field("ma_ota:pilots") == mode
    assert np.allclose(recording.read_samples().T, sounding.iq[2])


def test_measured_map_plugs_into_the_allocation(radio_campaign: Any) -> None:
    """The map stands in for the sim channel behind ``allocation.solve`` (what `testbed plan` runs)."""
    import allocation
    from testbed.planning import build_problem

    config, result = radio_campaign
    config = config.model_copy(deep=True)
    config.allocation.max_rounds, config.allocation.position_starts = 2, 1
    config.allocation.max_outer_iterations = 5
    cmap = MeasuredChannelMap.from_run(result.run_dir)
    plan = allocation.solve(build_problem(config, channel=cmap))
    assert plan.feasible and plan.round_plans
    half, spacing = config.lab.array.region_m / 2, config.lab.array.min_spacing_m
    for rnd in plan.round_plans:
        pos = np.asarray(rnd.positions_m)
        assert np.all(np.abs(pos) <= half + 1e-9)
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(len(pos))
        assert d.min() >= spacing - 1e-6
        assert np.isfinite(rnd.mse) and rnd.mse > 0


def test_a_step_that_does_not_divide_the_region_still_spans_it() -> None:
    plan = plan_campaign(1.0, 0.3, 2, 0.2)
    assert plan.x_m[0] == -0.5 and plan.x_m[-1] == 0.5  # edge to edge at step 0.25
    pos = plan.positions_m
    assert np.min(np.linalg.norm(pos[:, 0] - pos[:, 1], axis=-1)) == pytest.approx(plan.min_separation_m)
    assert plan.min_separation_m == pytest.approx(0.5) and plan.min_move_gap_m == pytest.approx(0.25)


def test_symbol_sounder_error_is_the_pilots_least_squares_error() -> None:
    channel = _sim_channel(clients=2)
    pos = np.array([[0.0, 0.0], [0.1, 0.05]])
    sounder = SymbolSounder(channel, 1e-3, 0.1, 127, 1e6, 2.4e9, captures_per_point=2)
    errors = np.array(
        [sounder.sound(pos, np.random.default_rng(i)).h for i in range(400)]
    ) - channel.response(pos)
    expected_w = 1e-3 / (0.1 * 2 * PilotConfig(zc_length=127).burst_samples)
    assert np.mean(np.abs(errors) ** 2) == pytest.approx(expected_w, rel=0.15)
    again = sounder.sound(pos, np.random.default_rng(7)).h  # a step's noise comes from its own stream
    assert np.array_equal(again, errors[7] + channel.response(pos))


def test_an_error_mid_campaign_stops_the_stages_and_closes_the_radios(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver goes away at the fourth point: the campaign stops the stages, closes every
    radio, records why, and the points before it stay resumable."""
    import testbed.campaign as campaign
    import testbed.campaign.run as campaign_run
    from drivers.errors import RadioError

    calls: list[str] = []
    real_open_formation, real_sound = campaign_run.open_formation, campaign.RadioSounder.sound

    def open_formation(config: Any) -> Any:
        formation = real_open_formation(config)
        stop_all, close = formation.array.stop_all, formation.array.close
        formation.array.stop_all = lambda: (calls.append("stages stopped"), stop_all())[1]
        formation.array.close = lambda: (calls.append("stages closed"), close())[1]
        return formation

    def sound(self: Any, positions_m: np.ndarray, rng: np.random.Generator) -> Any:
        if len(calls) == 3:
            self.receiver.close()  # the device disappears: its next capture raises RadioError
        calls.append("point")
        return real_sound(self, positions_m, rng)

    def close(self: Any) -> None:
        real_close(self)
        closed = []
        for radio in self._radios:
            try:
                radio.time_now()
            except RadioError:
                closed.append(radio.name)
        calls.append(f"radios closed: {sorted(closed)}")

    real_close = campaign.RadioSounder.close
    monkeypatch.setattr(campaign_run, "open_formation", open_formation)
    monkeypatch.setattr(campaign.RadioSounder, "sound", sound)
    monkeypatch.setattr(campaign.RadioSounder, "close", close)
    with pytest.raises(RadioError, match="closed"):
        run_campaign(load_config(CAMPAIGN, [f"run.output_dir={tmp_path}"]))
    radios = sorted(["receiver", "client0", "client1", "client2", "client3"])
    assert calls == ["point"] * 4 + ["stages stopped", "stages closed", f"radios closed: {radios}"]
    (run_dir,) = tmp_path.iterdir()
    docs = read_events(run_dir / "events.jsonl")
    assert [d["data"]["point"] for d in docs if d.get("kind") == "point"] == [0, 1, 2]
    assert docs[-1]["doc"] == "stop" and docs[-1]["status"] == "error" and "RadioError" in docs[-1]["reason"]


def test_plan_command_optimizes_on_a_measured_map(
    radio_campaign: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """`testbed plan --set allocation.channel_map=RUN_DIR` plans on the campaign's map, not the sim."""
    from testbed.cli import main
    from testbed.planning import default_channel

    config, result = radio_campaign
    overrides = [f"allocation.channel_map={result.run_dir}", "allocation.max_rounds=2",
                 "allocation.position_starts=1", "allocation.max_outer_iterations=5"]  # fmt: skip
    assert isinstance(default_channel(load_config(CAMPAIGN, overrides)), MeasuredChannelMap)
    args = [arg for o in overrides for arg in ("--set", o)]
    assert main(["plan", str(CAMPAIGN), *args, "--baselines", "fpa", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {row["method"]: row for row in out["comparison"]}
    assert rows["ours"]["feasible"] and rows["ours"]["mean_mse_db"] < rows["fpa"]["mean_mse_db"]


def _assert_well_formed(docs: list[dict[str, Any]]) -> None:
    """Every event sits between a start and its stop: nothing after a stop without a new start."""
    open_ = False
    for d in docs:
        if d["doc"] == "start":  # after a stop, or after a crash that left none
            open_ = True
        else:
            assert open_, f"{d['doc']} {d.get('kind', '')!r} (seq {d['seq']}) outside a start..stop"
            open_ = d["doc"] != "stop"


def test_a_resumed_campaign_starts_a_new_segment_of_its_record(tmp_path: Path) -> None:
    """Cut short, then resumed twice: each resume opens with a ``start`` record marked
    ``resumed: true`` (steps already done, same plan) before any new event."""
    config = load_config(CAMPAIGN, [f"run.output_dir={tmp_path}", "campaign.sounder=symbol"])
    first = run_campaign(config, stop_after=2)
    run_campaign(resume_dir=first.run_dir, stop_after=2)
    run_campaign(resume_dir=first.run_dir, stop_after=1)
    docs = read_events(first.run_dir / "events.jsonl")
    _assert_well_formed(docs)
    starts = [d for d in docs if d["doc"] == "start"]
    assert [d.get("resumed", False) for d in starts] == [False, True, True]
    assert [d.get("steps_done", 0) for d in starts] == [0, 2, 4]
    assert all(d["kind"] == "campaign" and d["steps"] == starts[0]["steps"] for d in starts)
    assert [d["status"] for d in docs if d["doc"] == "stop"] == ["partial"] * 3


def test_sigmf_captures_carry_their_hardware_and_time(radio_campaign: Any) -> None:
    """``core:hw`` names the receiver ("simulated" for sim radios), and every capture segment has
    its own ``core:datetime`` (UTC, ISO 8601), inside the campaign's wall time and in order."""
    from sigmf.utils import parse_iso8601_datetime

    _, result = radio_campaign
    docs = read_events(result.run_dir / "events.jsonl")
    t_start, t_stop = docs[0]["time"], docs[-1]["time"]
    metas = sorted((result.run_dir / "captures").glob("*.sigmf-meta"))
    assert len(metas) == 27 * 4
    last = 0.0
    for path in metas:
        meta = json.loads(path.read_text())
        assert meta["global"]["core:hw"] == "simulated"
        assert meta["captures"], path.name
        for capture in meta["captures"]:
            when = parse_iso8601_datetime(capture["core:datetime"]).timestamp()
            assert t_start - 1.0 <= when <= t_stop + 1.0, (path.name, capture["core:datetime"])
        if path.name.endswith("_c00.sigmf-meta"):  # steps in order: their captures too
            assert when >= last
            last = when


def test_radio_hw_names_model_and_serial() -> None:
    """A real radio's ``core:hw`` comes from the sensors its driver reports."""
    from testbed.campaign.sounding import radio_hw

    class Fake:
        def __init__(self, sensors: dict[str, Any]) -> None:
            self._sensors = sensors

        def sensors(self) -> dict[str, Any]:
            return self._sensors

    assert radio_hw(Fake({"backend": "sim"})) == "simulated"
    assert radio_hw(Fake({"hw.model": "B210", "hw.serial": "31A7F0B"})) == "USRP B210 serial 31A7F0B"
    assert radio_hw(Fake({"args": "type=b200"})) == "USRP (model and serial unknown; args 'type=b200')"
