"""A run's ``summary.json``: the figures at its end, from its round records."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from testbed.config import TestbedConfig


def median_breakdown(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """The median of each time slice over the rounds that recorded a breakdown ({} if none did)."""
    tables = [r["time_breakdown_s"] for r in rounds if isinstance(r.get("time_breakdown_s"), dict)]
    names = sorted({k for t in tables for k in t})
    return {k: float(np.median([float(t.get(k, 0.0)) for t in tables])) for k in names}


def summarize_run(
    config: TestbedConfig, scheme: str, rounds: list[dict[str, Any]], wall_s: float
) -> dict[str, Any]:
    """The summary of a run whose ``round`` records are ``rounds`` (a resumed round counts once)."""
    rounds = list({r["round"]: r for r in rounds}.values())

    def mean_of(key: str) -> float | None:
        vals = [r[key] for r in rounds if r.get(key) is not None and math.isfinite(r[key])]
        return float(np.mean(vals)) if vals else None

    last = max(rounds, key=lambda r: r["round"]) if rounds else {}
    live, fixed = mean_of("nmse_live_symbols_db"), mean_of("nmse_fpa_db")
    digital = config.fl.aggregation == "digital"
    return {
        "scheme": scheme,
        "rounds": len(rounds),
        "final_val_loss": last.get("val_loss"),
        "final_val_ppl": last.get("val_ppl"),
        "first_val_loss": min(rounds, key=lambda r: r["round"]).get("val_loss") if rounds else None,
        "mean_nmse_db": float("-inf") if digital else mean_of("nmse_db"),
        "mean_nmse_ma_db": live,
        "mean_nmse_fpa_db": fixed,
        "ma_gain_over_fpa_db": (fixed - live) if live is not None and fixed is not None else None,
        "latency_model_s": float(sum(r.get("latency_model_s") or 0 for r in rounds)),
        "energy_model_j": float(sum(r.get("energy_model_j") or 0 for r in rounds)),
        "wall_s": wall_s,
        "median_time_breakdown_s": median_breakdown(rounds),
        "num_clients": config.lab.clients.count,
        "region_m": config.lab.array.region_m,
        "lora_mode": config.fl.lora.mode,
    }
