"""The allocation package's error types (kept apart so every module can raise them)."""

from __future__ import annotations


class AllocationError(ValueError):
    """The problem data cannot give a valid plan (bad value, infeasible budget, NaN channel)."""


class BudgetError(AllocationError):
    """What is left of a budget cannot pay for the next round (``allocation.plan_round``).

    Not a fault: a run that meets it has spent what it was given. ``budget`` names the
    ``Problem`` field (``energy_budget_j`` or ``latency_budget_s``), ``left`` what remains of it
    for ``rounds`` rounds, ``need`` the least one round costs under the round's own strategy.
    """

    def __init__(
        self, round_index: int, budget: str, left: float, rounds: int, need: float, what: str
    ) -> None:
        self.round_index = round_index
        self.budget = budget
        self.left = left
        self.rounds = rounds
        self.need = need
        unit = "J" if budget.endswith("_j") else "s"
        super().__init__(
            f"{budget} has {left:.4g} {unit} left for {rounds} round(s) ({left / rounds:.4g} {unit} a "
            f"round); round {round_index} needs at least {need:.4g} {unit} ({what})"
        )
