"""The raster plan: the grid, the formation's strips, and every check that needs no device."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from drivers.errors import ConfigError
from testbed.campaign.common import _GRID_TOL, _all_sim_radios, _client_sections
from testbed.config import TestbedConfig


@dataclass(frozen=True)
class CampaignPlan:
    """The grid and who stands where at every step.

    ``x_m`` (nx,) and ``y_m`` (ny,) are the grid lines in region coordinates. ``cells`` is
    (steps, N, 2) integer (ix, iy) per antenna per step; ``positions_m`` the same in metres.
    """

    x_m: np.ndarray
    y_m: np.ndarray
    cells: np.ndarray
    strip_starts: tuple[int, ...]
    strip_width: int
    min_separation_m: float
    min_move_gap_m: float = math.inf  # closest two antennas' paths come during one formation move

    @property
    def num_steps(self) -> int:
        return int(self.cells.shape[0])

    @property
    def num_antennas(self) -> int:
        return int(self.cells.shape[1])

    @property
    def positions_m(self) -> np.ndarray:
        return np.stack([self.x_m[self.cells[..., 0]], self.y_m[self.cells[..., 1]]], axis=-1)

    def step_positions_m(self, step: int) -> np.ndarray:
        ix, iy = self.cells[step, :, 0], self.cells[step, :, 1]
        return np.stack([self.x_m[ix], self.y_m[iy]], axis=1)

    def step_distance_m(self, step: int) -> float:
        """How far the formation moves to reach ``step`` from the one before (0 for step 0)."""
        if step == 0:
            return 0.0
        d = self.step_positions_m(step) - self.step_positions_m(step - 1)
        return float(np.max(np.hypot(d[:, 0], d[:, 1])))


def grid_lines(region_m: float, step_m: float) -> np.ndarray:
    """Grid coordinates along one axis, edge to edge of the region (so a measured map covers
    every position the allocation may pick), at the largest step not above ``step_m``."""
    count = int(math.ceil(region_m / step_m - 1e-9)) + 1
    return np.linspace(-region_m / 2.0, region_m / 2.0, count)


def plan_campaign(
    region_m: float,
    step_m: float,
    num_antennas: int,
    min_spacing_m: float,
    order: str = "snake",
) -> CampaignPlan:
    """The formation raster of ``num_antennas`` antennas over the square region; see the module doc.

    Raises ``ConfigError`` naming the field to change when the grid cannot be covered with the
    antennas at least ``min_spacing_m`` apart.
    """
    if not (step_m > 0 and math.isfinite(step_m)):
        raise ConfigError(f"campaign.step_wavelengths: the raster step must be > 0 (got {step_m} m)")
    if order not in ("snake", "raster"):
        raise ConfigError(f"campaign.order: must be 'snake' or 'raster' (got {order!r})")
    if num_antennas < 1:
        raise ConfigError(f"lab.stages: need at least one antenna (got {num_antennas})")
    x = grid_lines(region_m, step_m)
    y = x.copy()
    nx, ny = x.size, y.size
    if nx < num_antennas:
        raise ConfigError(
            f"campaign.step_wavelengths: the grid has only {nx} columns for {num_antennas} antennas "
            f"(step {step_m:.4g} m over a {region_m:.4g} m region); use a smaller step or fewer stages"
        )
    width = math.ceil(nx / num_antennas)
    if num_antennas == 1:
        starts = [0]
    else:  # spread the strips evenly; where N does not divide nx, neighbours share a column
        starts = [round(n * (nx - width) / (num_antennas - 1)) for n in range(num_antennas)]
    gaps = np.diff(starts) if num_antennas > 1 else np.array([nx])
    grid_step_m = float(x[1] - x[0]) if nx > 1 else step_m  # edge to edge: may be under step_m
    separation = float(np.min(gaps) * grid_step_m) if num_antennas > 1 else math.inf
    if num_antennas > 1 and separation < min_spacing_m - _GRID_TOL:
        raise ConfigError(
            f"campaign: {num_antennas} antennas in strips of {width} columns stand only "
            f"{separation:.4g} m apart, below lab.array.min_spacing_wavelengths "
            f"({min_spacing_m:.4g} m); use fewer stages, a larger region or a smaller step"
        )
    cells = []
    for col in range(width):
        rows = range(ny)
        if order == "snake" and col % 2 == 1:
            rows = range(ny - 1, -1, -1)
        for row in rows:
            cells.append([(s + col, row) for s in starts])
    cells_arr = np.asarray(cells, dtype=int)
    return CampaignPlan(
        x_m=x,
        y_m=y,
        cells=cells_arr,
        strip_starts=tuple(int(s) for s in starts),
        strip_width=int(width),
        min_separation_m=separation,
        min_move_gap_m=_min_move_gap(cells_arr, starts, grid_step_m),
    )


def _min_move_gap(cells: np.ndarray, starts: list[int], step_m: float) -> float:
    """How close two antennas' straight paths come during a formation move (the conservative
    any-point-of-both-segments test the ``StageArray`` applies). The formation is rigid, so with
    offset o between two antennas and move d, that is the distance from o to the segment [-d, d]."""
    from drivers.stage_array import point_segment_distance

    if len(starts) < 2:
        return math.inf
    moves = {tuple(m) for m in np.diff(cells[:, 0, :], axis=0) * step_m}
    offsets = [((b - a) * step_m, 0.0) for i, a in enumerate(starts) for b in starts[i + 1 :]]
    return min(
        point_segment_distance(o, (-dx, -dy), (dx, dy)) for o in offsets for dx, dy in moves or {(0.0, 0.0)}
    )


def plan_from_config(config: TestbedConfig) -> CampaignPlan:
    """The campaign plan of a config, with every check that needs no device."""
    array = config.lab.array
    plan = plan_campaign(
        array.region_m,
        config.campaign.step_wavelengths * array.wavelength_m,
        config.lab.num_antennas,
        array.min_spacing_m,
        config.campaign.order,
    )
    check_stage_reach(config, plan)
    return plan


def check_stage_reach(config: TestbedConfig, plan: CampaignPlan) -> None:
    """Every antenna's strip must lie inside its stage's travel (origin .. origin + travel)."""
    positions = plan.positions_m  # (steps, N, 2)
    for n, (name, stage) in enumerate(config.lab.stages.items()):
        lo = np.asarray(stage.origin_m, dtype=float)
        hi = lo + stage.travel_m
        p = positions[:, n, :]
        low, high = p.min(axis=0), p.max(axis=0)
        if np.any(low < lo - _GRID_TOL) or np.any(high > hi + _GRID_TOL):
            raise ConfigError(
                f"lab.stages.{name}: its campaign strip spans x {low[0]:.4g}..{high[0]:.4g} m, "
                f"y {low[1]:.4g}..{high[1]:.4g} m, outside its travel "
                f"x {lo[0]:.4g}..{hi[0]:.4g} m, y {lo[1]:.4g}..{hi[1]:.4g} m "
                "(origin_m + travel_m); move the stage's origin_m or enlarge travel_m"
            )


def check_config(config: TestbedConfig) -> CampaignPlan:
    """Everything that can be checked before a device is opened; returns the plan."""
    plan = plan_from_config(config)
    if config.campaign.sounder == "symbol" and not _all_sim_radios(config):
        raise ConfigError(
            "campaign.sounder: 'symbol' needs simulated radios (lab.receiver.backend and "
            "lab.clients.radio.backend = sim); use 'radio' with real radios"
        )
    if config.campaign.sounder == "radio":
        receiver, clients = config.lab.receiver, config.lab.clients.radio
        if (receiver.backend == "sim") != (clients.backend == "sim"):
            raise ConfigError(
                f"lab.receiver.backend={receiver.backend!r} with lab.clients.radio.backend="
                f"{clients.backend!r}: a simulated receiver cannot hear real clients (or the other way "
                "round); make both sim or both usrp"
            )
        if receiver.backend == "sim" and (receiver.server or clients.server):
            raise ConfigError(
                "lab.receiver.server / lab.clients.radio.server: a campaign needs the sim medium in "
                "this process (it reads the stage positions); leave the sim radios' server empty"
            )
        if receiver.backend != "sim":
            _client_sections(config)
    return plan
