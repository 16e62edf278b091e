"""A measured channel map: a campaign's grid of estimates behind the allocation channel seam.

``MeasuredChannelMap`` answers ``response(positions)`` (K x N complex) and
``gradient(positions)`` (K x N x 2 complex), like ``sim.channel.FieldResponseChannel``, so
``allocation`` can optimise antenna positions on measured data. Between grid points it
interpolates each client's real and imaginary parts with bicubic splines
(``scipy.interpolate.RectBivariateSpline``; lower degree on small grids), and the gradient is
the spline's own derivative, so the two agree exactly. Outside the measured rectangle there is
nothing to interpolate: asking there raises ``ChannelMapRangeError`` naming the antenna, its
position and the measured extent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drivers.errors import TestbedError

_EDGE_TOL_M = 1e-9


class ChannelMapError(TestbedError, ValueError):
    """A channel map cannot be built from the given data (missing cells, bad shapes)."""


class ChannelMapRangeError(ChannelMapError):
    """A position lies outside the measured region of the map."""


class MeasuredChannelMap:
    """H(x, y) per client from a grid of measurements; see the module doc.

    ``h_grid`` is (K, ny, nx) complex on the grid lines ``x_m`` (nx,) and ``y_m`` (ny,), both
    strictly increasing.
    """

    def __init__(self, x_m: np.ndarray, y_m: np.ndarray, h_grid: np.ndarray, degree: int = 3) -> None:
        from scipy.interpolate import RectBivariateSpline

        self.x_m = np.asarray(x_m, dtype=float).ravel()
        self.y_m = np.asarray(y_m, dtype=float).ravel()
        h = np.asarray(h_grid, dtype=complex)
        if h.ndim == 2:
            h = h[None]
        if h.ndim != 3 or h.shape[1:] != (self.y_m.size, self.x_m.size):
            raise ChannelMapError(
                f"h_grid must be (clients, ny={self.y_m.size}, nx={self.x_m.size}) (got shape {h.shape})"
            )
        for name, axis in (("x_m", self.x_m), ("y_m", self.y_m)):
            if axis.size < 2 or not np.all(np.diff(axis) > 0):
                raise ChannelMapError(
                    f"{name} must hold at least 2 strictly increasing grid lines (got {axis})"
                )
        missing = ~np.isfinite(h)
        if missing.any():
            k, iy, ix = np.argwhere(missing)[0]
            raise ChannelMapError(
                f"the map has {int(missing.sum())} unmeasured cells (first: client {k} at "
                f"x={self.x_m[ix]:.4g} m, y={self.y_m[iy]:.4g} m); finish or resume the campaign"
            )
        self.h_grid = h
        kx = min(degree, self.x_m.size - 1)
        ky = min(degree, self.y_m.size - 1)
        # RectBivariateSpline wants z[ix, iy]: transpose our (ny, nx) layout.
        self._splines = [
            (
                RectBivariateSpline(self.x_m, self.y_m, hk.real.T, kx=kx, ky=ky, s=0),
                RectBivariateSpline(self.x_m, self.y_m, hk.imag.T, kx=kx, ky=ky, s=0),
            )
            for hk in h
        ]

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_table(
        cls, path: str | Path, degree: int = 3, calibrate_chains: bool = True
    ) -> MeasuredChannelMap:
        """From a campaign's ``channels.parquet`` / ``channels.csv``: cells averaged over the
        antennas that measured them, after putting every receive chain on antenna 0's reference
        (``testbed.campaign.estimate_chain_gains``) unless ``calibrate_chains`` is False."""
        from testbed.campaign.table import estimate_chain_gains, grid_channels, read_table

        columns = read_table(path)
        needed = {"client", "ix", "iy", "x_m", "y_m", "h_re", "h_im"}
        absent = sorted(needed - set(columns))
        if absent:
            raise ChannelMapError(f"{path}: not a campaign table (missing columns {absent})")
        ix, iy = columns["ix"].astype(int), columns["iy"].astype(int)
        nx, ny = int(ix.max()) + 1, int(iy.max()) + 1
        x = np.full(nx, np.nan)
        y = np.full(ny, np.nan)
        x[ix] = columns["x_m"]
        y[iy] = columns["y_m"]
        if np.isnan(x).any() or np.isnan(y).any():
            raise ChannelMapError(
                f"{path}: some grid lines were never measured; finish or resume the campaign"
            )
        num_clients = int(columns["client"].max()) + 1
        gains = estimate_chain_gains(columns) if calibrate_chains else None
        return cls(x, y, grid_channels(columns, nx, ny, num_clients, gains), degree)

    @classmethod
    def from_run(
        cls, run_dir: str | Path, degree: int = 3, calibrate_chains: bool = True
    ) -> MeasuredChannelMap:
        from testbed.campaign.table import find_table

        return cls.from_table(find_table(run_dir), degree, calibrate_chains)

    # --- the seam -----------------------------------------------------------------------------
    @property
    def num_clients(self) -> int:
        return self.h_grid.shape[0]

    @property
    def extent_m(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) of the measured rectangle."""
        return float(self.x_m[0]), float(self.x_m[-1]), float(self.y_m[0]), float(self.y_m[-1])

    def _checked(self, positions_m: np.ndarray) -> np.ndarray:
        pos = np.asarray(positions_m, dtype=float).reshape(-1, 2)
        x0, x1, y0, y1 = self.extent_m
        outside = (
            ~np.isfinite(pos).all(axis=1)
            | (pos[:, 0] < x0 - _EDGE_TOL_M)
            | (pos[:, 0] > x1 + _EDGE_TOL_M)
            | (pos[:, 1] < y0 - _EDGE_TOL_M)
            | (pos[:, 1] > y1 + _EDGE_TOL_M)
        )
        if outside.any():
            n = int(np.argmax(outside))
            raise ChannelMapRangeError(
                f"antenna {n} at ({pos[n, 0]:.4g}, {pos[n, 1]:.4g}) m is outside the measured region "
                f"x {x0:.4g}..{x1:.4g} m, y {y0:.4g}..{y1:.4g} m; keep positions inside it or measure "
                "a larger region"
            )
        # Within the tolerance, snap onto the edge so the spline never extrapolates.
        return np.stack([np.clip(pos[:, 0], x0, x1), np.clip(pos[:, 1], y0, y1)], axis=1)

    def _eval(self, pos: np.ndarray, dx: int, dy: int) -> np.ndarray:
        out = np.empty((self.num_clients, pos.shape[0]), dtype=complex)
        for k, (re, im) in enumerate(self._splines):
            out[k] = re.ev(pos[:, 0], pos[:, 1], dx=dx, dy=dy) + 1j * im.ev(
                pos[:, 0], pos[:, 1], dx=dx, dy=dy
            )
        return out

    def response(self, positions_m: np.ndarray) -> np.ndarray:
        """H (K x N) with the antennas at ``positions_m`` (N x 2 metres)."""
        return self._eval(self._checked(positions_m), 0, 0)

    def gradient(self, positions_m: np.ndarray) -> np.ndarray:
        """dH[k, n] / d(x_n, y_n): (K x N x 2) complex."""
        pos = self._checked(positions_m)
        return np.stack([self._eval(pos, 1, 0), self._eval(pos, 0, 1)], axis=-1)

    def subset(self, clients: np.ndarray | list[int]) -> MeasuredChannelMap:
        idx = np.asarray(clients, dtype=int)
        return MeasuredChannelMap(self.x_m, self.y_m, self.h_grid[idx])


def load_channel_map(path: str | Path) -> MeasuredChannelMap:
    """A run directory or a table file -> its measured map."""
    path = Path(path)
    return MeasuredChannelMap.from_run(path) if path.is_dir() else MeasuredChannelMap.from_table(path)


__all__ = ["ChannelMapError", "ChannelMapRangeError", "MeasuredChannelMap", "load_channel_map"]
