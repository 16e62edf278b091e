"""The whole-run plan beside every baseline, for a run's report (``plan`` event).

Ours is solved at the start; the baselines run in a separate process beside the rounds, never
before the first one, and the event is written when they are done. A plain process and a pipe:
a failed run can kill it, and one that dies (OOM, say) reads as EOF on the pipe instead of a
result that never comes.
"""

from __future__ import annotations

import logging
from multiprocessing import get_context
from typing import Any

import numpy as np

from testbed.air.comparison import db
from testbed.records import RunRecorder

log = logging.getLogger(__name__)


def _solve_into(solve: Any, problem: Any, send: Any) -> None:
    """In the baselines' process: ``solve(problem)`` sent down ``send`` as ("ok", result), or
    ("error", message) when it raises."""
    try:
        send.send(("ok", solve(problem)))
    except Exception as exc:  # noqa: BLE001 - the parent records it; the run goes on
        send.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        send.close()


def _row(plan: Any) -> dict[str, Any]:
    return {
        "feasible": plan.feasible,
        "rounds": plan.rounds,
        "energy_j": plan.energy_j,
        "latency_s": plan.latency_s,
        "mse_db": db(float(np.mean([rp.mse for rp in plan.round_plans]))) if plan.round_plans else None,
        "bound": plan.bound,
        "violations": plan.violations,
    }


class WholeRunPlan:
    """``start`` solves ours and starts the baselines; ``finish`` waits and records the event;
    ``abandon`` kills the baselines (a run that failed or was interrupted does not wait)."""

    def __init__(self, recorder: RunRecorder, ours: Any, process: Any, receive: Any) -> None:
        self.recorder = recorder
        self.ours = ours
        self.process = process
        self.receive = receive

    @classmethod
    def start(cls, problem: Any, recorder: RunRecorder) -> WholeRunPlan | None:
        """None when ours has no plan (the event says why, and the run goes on)."""
        from allocation import AllocationError, solve, solve_baselines

        try:
            ours = solve(problem)
        except AllocationError as exc:
            recorder.event("plan", error=str(exc))
            log.warning("whole-run plan: %s", exc)
            return None
        context = get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        process = context.Process(
            target=_solve_into, args=(solve_baselines, problem, send), name="whole-run baselines"
        )
        process.start()
        send.close()  # the child holds the only sending end: its death closes the pipe
        return cls(recorder, ours, process, receive)

    def finish(self) -> None:
        try:
            status, result = self.receive.recv()
        except EOFError:
            status, result = "error", f"the baselines' process died (exit code {self.process.exitcode})"
        finally:
            self.process.join()
            self.receive.close()
        ours = _row(self.ours)
        if status != "ok":  # a failed comparison must not sink the run
            self.recorder.event("plan", optimized=ours, constants=self.ours.constants, baselines_error=result)
            return
        rows = {k: _row(v) for k, v in result.items()}
        self.recorder.event("plan", optimized=ours, constants=self.ours.constants, baselines=rows)

    def abandon(self) -> None:
        self.process.terminate()
        self.process.join()
        self.receive.close()
