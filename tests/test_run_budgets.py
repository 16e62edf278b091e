"""`testbed run` within its budgets: every round charged what it ran, never past the budget, and
a budget that cannot pay the next round ends the run cleanly, saying what is left and needed.

Real dry runs (four node processes training the tiny Llama), two rounds each, with the cost of a
sample fixed (allocation.cycles_per_sample) so the energies are known: 1e-28 x 2 local steps x
2e9 cycles x (2e9 Hz)^2 = 1.6 J a sample at f_max, two clients a round.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from dryrun_kit import DRYRUN, FAST

from testbed.config import load_config
from testbed.experiment import run_experiment
from testbed.records import read_events

SAMPLE_J = 1.6  # one sample at f_max, one client


def dry_config(tmp_path: Path, energy_budget_j: float) -> object:
    return load_config(
        DRYRUN,
        [
            *FAST,
            "fl.rounds=2",
            "allocation.cycles_per_sample=2.0e9",
            f"allocation.energy_budget_j={energy_budget_j}",
            f"run.output_dir={tmp_path}",
        ],
    )


def test_non_ma_run_stays_within_a_tight_energy_budget(tmp_path: Path) -> None:
    """non_ma used to run flat out at batch 8 whatever its share: 25.6 J a round against a 20 J
    share, 51.2 J charged to a 40 J budget. Now it takes the largest batch its share pays."""
    budget = 40.0
    config = dry_config(tmp_path, budget)
    run_dir, summary = run_experiment(config, scheme="non_ma", whole_run_plan=False, report=False)
    docs = read_events(run_dir / "events.jsonl")
    assert docs[-1]["doc"] == "stop" and docs[-1]["status"] == "success" and "budget_end" not in summary
    rounds = [d["data"] for d in docs if d.get("kind") == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    # The run precodes on its own channel estimates: its b_k may spend up to the power cap where
    # the plan's did not, at most 2 clients x 0.1 W x 1024 symbols / 1 MHz over the plan.
    air_cap_j = 2 * 0.1 * math.ceil(config.allocation.payload_reals / 2) / config.allocation.bandwidth_hz
    spent = 0.0
    for r in rounds:
        share = (budget - spent) / (3 - r["round"])
        assert r["clocks_hz"] == [pytest.approx(2e9)] * 2  # max clock: non_ma's rule holds
        assert r["energy_planned_j"] <= share * (1 + 1e-9)
        assert r["energy_model_j"] <= r["energy_planned_j"] + air_cap_j
        assert r["energy_model_j"] <= share * (1 + 1e-9)
        # floor((20 J - the reserved air) / (2 x 1.6 J)) = 6 samples each: 19.2 J, and the air.
        assert r["energy_model_j"] == pytest.approx(2 * 6 * SAMPLE_J, abs=air_cap_j)
        spent += r["energy_model_j"]
    assert summary["energy_model_j"] == pytest.approx(spent) and spent <= budget


@pytest.mark.parametrize(
    ("cycles", "why"),
    [
        # 3x: round 2 needs batch 1 at f_max, 2 x 4.8 J, of the 6.8 J left.
        (6.0e9, "allocation.energy_budget_j has 6.8 J left for 1 round(s) (6.8 J a round); round 2 needs at "
         "least 9.6 J (2 client(s) at batch 1 at f_max"),
        # 100x: not even the whole budget would pay a round at that cost (the planner's problem refuses it).
        (2.0e11, "priced at the nodes' measured 2e+11 cycles/sample, allocation.energy_budget_j=10 cannot pay for "
         "even one round of batch 1"),
    ],
)  # fmt: skip
def test_a_budget_that_cannot_pay_the_next_round_ends_the_run_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cycles: float, why: str
) -> None:
    """The nodes turn out slower than the config said: calibrated after round 1, round 2 costs
    more than the 6.8 J left. The run ends after round 1 (it used to raise mid-run): a success
    whose stop document and summary name the budget, what is left and what the round needs."""
    from fl.cost import WorkloadCost

    def slower(self: WorkloadCost, nodes: object, clock_hz: float) -> WorkloadCost:
        return dataclasses.replace(self, cycles_override=cycles, source="calibrated")

    monkeypatch.setattr(WorkloadCost, "calibrated", slower)
    config = dry_config(tmp_path, 10.0)  # 5 J a round: batch 1 (3.2 J) for round 1
    run_dir, summary = run_experiment(config, scheme="non_ma", whole_run_plan=False, report=False)
    docs = read_events(run_dir / "events.jsonl")
    (r1,) = [d["data"] for d in docs if d.get("kind") == "round"]
    assert r1["round"] == 1 and r1["energy_model_j"] == pytest.approx(2 * SAMPLE_J, rel=1e-3)
    stop = docs[-1]
    assert stop["doc"] == "stop" and stop["status"] == "success"
    assert stop["reason"].startswith("the budgets cannot pay round 2: " + why)
    assert summary["budget_end"] == stop["reason"] and summary["rounds"] == 1 and "stopped" not in summary


def test_each_round_is_planned_once_though_its_budgets_are_checked_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budgets' check is the round's own plan (round 1's made before anything moves), not a
    second optimizer solve of the same plan."""
    import allocation

    calls: list[int] = []
    real = allocation.plan_round

    def counted(problem, r, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(r)
        return real(problem, r, *args, **kw)

    monkeypatch.setattr(allocation, "plan_round", counted)
    config = load_config(DRYRUN, [*FAST, "fl.rounds=3", f"run.output_dir={tmp_path}"])
    run_dir, _ = run_experiment(config, scheme="ours", whole_run_plan=False, report=False)
    rounds = [d["data"]["round"] for d in read_events(run_dir / "events.jsonl") if d.get("kind") == "round"]
    assert rounds == [1, 2, 3] and calls == [1, 2, 3]
