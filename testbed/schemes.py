"""Schemes: which plan drives a whole run (``testbed run --scheme``), and the bound's estimates.

A scheme names an allocation ``Strategy`` that re-plans every round: ours (the full method) or
one of the baselines (fpa, random_placement, non_ma) under the same budgets, or digital (error-free
FedAvg, the learning upper bound). ``UpdateNorms`` feeds the calibrated bound the update norms the
nodes report, so each re-plan sees G^2 and zeta^2 as estimated so far.
"""

from __future__ import annotations

import math
from typing import Any

from drivers.errors import ConfigError
from testbed.config import TestbedConfig
from testbed.records import RunRecorder, read_events

SCHEMES = ("ours", "fpa", "random_placement", "non_ma", "digital")


def scheme_strategy(scheme: str) -> Any:
    """The allocation Strategy a scheme re-plans with each round (ours: the full method)."""
    from allocation import BASELINES, Strategy

    if scheme not in SCHEMES:
        raise ConfigError(f"--scheme: {scheme!r} is not a scheme; allowed: {', '.join(SCHEMES)}")
    return Strategy() if scheme == "ours" else BASELINES[scheme]


def scheme_config(config: TestbedConfig, scheme: str) -> TestbedConfig:
    """The config a scheme's run uses: digital aggregates error-free (FedAvg), the rest over the air."""
    scheme_strategy(scheme)  # validates the name
    if scheme != "digital" or config.fl.aggregation == "digital":
        return config
    config = config.model_copy(deep=True)
    config.fl.aggregation = "digital"
    return config


class UpdateNorms:
    """Feeds the bound's UpdateNormTracker each round and gives the current bound constants.

    It reads what the nodes report, as the coordinator's round record carries it:
    ``update_sq_norms`` {node: ||Delta_k||^2} and ``aggregate_sq_norm`` (the update applied).
    """

    def __init__(self) -> None:
        from allocation import UpdateNormTracker

        self.tracker = UpdateNormTracker()

    def observe(self, record: dict[str, Any]) -> dict[str, Any]:
        """Fold in one round's reports; return them as observed (for the round record)."""
        clients = {int(k): float(v) for k, v in (record.get("update_sq_norms") or {}).items()}
        aggregate = record.get("aggregate_sq_norm")
        if aggregate is None or not math.isfinite(float(aggregate)):
            return {}
        self.tracker.observe(clients, float(aggregate))
        return {"update_sq_norms": clients or None, "aggregate_sq_norm": float(aggregate)}

    def constants(self, base: Any) -> Any:
        """``base`` (the config's constants) with G^2 and zeta^2 as estimated so far."""
        estimates = self.tracker.estimates()
        return base.with_estimates("estimated", **estimates) if estimates else base


def resumed_scheme(recorder: RunRecorder, requested: str | None) -> str:
    """The scheme a run started with (its start document); another one requested is an error."""
    starts = [d for d in read_events(recorder.events_path) if d.get("doc") == "start"]
    started = str(starts[0].get("scheme", "ours")) if starts else (requested or "ours")
    if requested is not None and requested != started:
        raise ConfigError(
            f"--scheme: {recorder.run_dir} ran scheme {started!r}; it resumes with that one (got {requested!r})"
        )
    return started
