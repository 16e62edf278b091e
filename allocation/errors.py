"""The allocation package's one error type (kept apart so every module can raise it)."""

from __future__ import annotations


class AllocationError(ValueError):
    """The problem data cannot give a valid plan (bad value, infeasible budget, NaN channel)."""
