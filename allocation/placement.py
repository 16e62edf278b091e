"""Antenna positions for a chosen set of clients, the baselines' ways: the best of N random
feasible placements, and a coordinate search on the lambda/2 lattice. (The full method's MA
position optimisation is ``allocation.positions.ma_positions``.)
"""

from __future__ import annotations

import math

import numpy as np

from allocation.beamformer import optimize_beamformer
from allocation.positions import is_feasible, random_feasible_positions
from allocation.problem import Problem, lambda_half_grid


def best_random_placement(
    problem: Problem, demand: np.ndarray, rng: np.random.Generator, count: int
) -> tuple[np.ndarray, float]:
    """Best of ``count`` random feasible placements, each with its optimised beamformer."""
    best_pos, best_obj = None, math.inf
    for _ in range(count):
        pos = random_feasible_positions(
            rng, problem.num_antennas, problem.half_region_m, problem.min_spacing_m
        )
        obj = optimize_beamformer(
            problem.effective_channels(pos), demand, solver=problem.beamformer_solver
        ).objective
        if obj < best_obj:
            best_pos, best_obj = pos, obj
    assert best_pos is not None
    return best_pos, best_obj


def grid_coordinate_search(problem: Problem, demand: np.ndarray, sweeps: int = 2) -> tuple[np.ndarray, float]:
    """Antennas on the lambda/2 lattice; move one antenna at a time to its best free point."""
    half, d, step = (
        problem.half_region_m,
        problem.min_spacing_m,
        max(problem.wavelength_m / 2, problem.min_spacing_m),
    )
    axis = np.arange(-half, half + 1e-12, step)
    axis = axis - (axis[0] + axis[-1]) / 2.0  # centre the lattice in the region
    lattice = np.array([(x, y) for x in axis for y in axis])
    start = lambda_half_grid(problem.num_antennas, problem.wavelength_m, problem.region_m, d)
    pos = np.array([lattice[np.argmin(np.linalg.norm(lattice - p, axis=1))] for p in start])
    if not is_feasible(pos, half, d, 1e-9):
        pos = start

    warm: list[np.ndarray | None] = [None]  # the best point's combiner warm-starts every candidate

    def value(p: np.ndarray) -> float:
        res = optimize_beamformer(
            problem.effective_channels(p),
            demand,
            start=warm[0],
            solver=problem.beamformer_solver,
            max_steps=10,
        )
        value.last = res.combiner  # type: ignore[attr-defined]
        return res.objective

    best = value(pos)
    warm[0] = value.last  # type: ignore[attr-defined]
    for _ in range(sweeps):
        improved = False
        for n in range(problem.num_antennas):
            others = np.delete(pos, n, axis=0)
            for q in lattice:
                if others.size and np.min(np.linalg.norm(others - q, axis=1)) < d * (1 - 1e-9):
                    continue
                cand = pos.copy()
                cand[n] = q
                v = value(cand)
                if v < best * (1 - 1e-9):
                    pos, best, improved = cand, v, True
                    warm[0] = value.last  # type: ignore[attr-defined]
        if not improved:
            break
    return pos, best
