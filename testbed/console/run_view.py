"""``RunView``: a run of ``testbed run`` as the console shows it (rounds, phase, nodes, stages,
budgets, antennas), folded from its documents."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

from testbed.console.base import ETA_WINDOW, View, jsonable, load_dir_config, num


def _known(positions: Any) -> bool:
    """Positions with every coordinate a finite number (a homing stage reports NaN)."""
    if not isinstance(positions, list) or not positions:
        return False
    flat = positions if not isinstance(positions[0], list) else [v for p in positions for v in p]
    return all(num(v) is not None for v in flat)


class RunView(View):
    """A run of ``testbed run``: its rounds, phase, nodes, stages, budgets and antennas."""

    kind = "run"
    unit = "round"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        config = load_dir_config(self.path)
        self.rounds_total: int | None = None
        self.energy_budget_j: float | None = None
        self.latency_budget_s: float | None = None
        self.region_m: float | None = None
        self.clearance_m: float | None = None
        self.num_antennas: int | None = None
        self.num_clients: int | None = None
        if config is not None:
            self.name = config.run.name
            self.rounds_total = config.fl.rounds
            self.energy_budget_j = config.allocation.energy_budget_j
            self.latency_budget_s = config.allocation.latency_budget_s
            self.region_m = config.lab.array.region_m
            self.clearance_m = config.lab.array.min_spacing_m
            self.num_antennas = config.lab.num_antennas
            self.num_clients = config.lab.clients.count
        self.rounds: list[dict[str, Any]] = []
        self._round_times: deque[float] = deque(maxlen=ETA_WINDOW + 1)
        self.nodes: dict[str, dict[str, Any]] = {}
        self.stages: dict[str, dict[str, Any]] = {}
        self.budget: dict[str, Any] | None = None
        self.homed_positions_m: list[list[float]] | None = None

    def _start(self, doc: dict[str, Any], t: float | None) -> None:
        super()._start(doc, t)
        for key in ("num_antennas", "num_clients"):
            if isinstance(doc.get(key), int):
                setattr(self, key, doc[key])
        if num(doc.get("region_m")) is not None:
            self.region_m = float(doc["region_m"])
        # The ETA measures this segment only (a resumed run's gap is not a round).
        self._round_times.clear()
        if t is not None:
            self._round_times.append(t)

    # --- events ------------------------------------------------------------------------------------
    def _event_round(self, data: dict[str, Any], t: float | None) -> None:
        r = int(data["round"])
        timing = data.get("node_timing_s") or {}
        row = {
            "round": r,
            "time": t,
            "val_loss": num(data.get("val_loss")),
            "val_ppl": num(data.get("val_ppl")),
            "train_loss": num(data.get("train_loss")),
            "nmse_db": num(data.get("nmse_db")),
            # The aggregation error through the movable array and through the fixed array, on the
            # same symbols (nmse_db is the aggregate's; a digital run has none: -inf, shown as None).
            "nmse_ma_db": num(data.get("nmse_live_symbols_db", data.get("nmse_db"))),
            "nmse_fpa_db": num(data.get("nmse_fpa_db")),
            "round_energy_j": num(data.get("energy_model_j")) or 0.0,
            "round_latency_s": num(data.get("latency_model_s")) or 0.0,
            "wall_s": num(data.get("latency_wall_s")),
            "time_breakdown_s": {
                str(k): v for k, v in (data.get("time_breakdown_s") or {}).items() if num(v) is not None
            },
            "positions_m": data.get("positions_m"),
            "selected": list(data.get("selected") or []),
            "dropped": list(data.get("dropped") or []),
            "train_s": {str(k): num(v.get("train_s")) for k, v in timing.items() if isinstance(v, dict)},
        }
        self._add_round(row)
        self.phase = None
        if t is not None:
            self._round_times.append(t)
        ppl = row["val_ppl"]
        self._log(t, "round", f"round {r} done" + (f": val ppl {ppl:.4g}" if ppl is not None else ""))

    def _add_round(self, row: dict[str, Any]) -> None:
        """Keep the rows in round order with running totals (a round recorded twice: last wins)."""
        r = row["round"]
        if self.rounds and self.rounds[-1]["round"] >= r:
            self.rounds = [x for x in self.rounds if x["round"] != r]
            self.rounds.append(row)
            self.rounds.sort(key=lambda x: x["round"])
            start = 0
        else:
            self.rounds.append(row)
            start = len(self.rounds) - 1
        energy = self.rounds[start - 1]["energy_j"] if start else 0.0
        latency = self.rounds[start - 1]["latency_s"] if start else 0.0
        for x in self.rounds[start:]:
            energy += x["round_energy_j"]
            latency += x["round_latency_s"]
            x["energy_j"], x["latency_s"] = energy, latency

    def _event_nodes(self, data: dict[str, Any], t: float | None) -> None:
        for n in data["nodes"]:
            node = str(n["node"])
            self.nodes[node] = {
                "node": node,
                "alive": bool(n.get("alive")),
                "heartbeat_age_s": num(n.get("heartbeat_age_s")),
                "participation": n.get("participation"),
                "tokens_per_s": num(n.get("tokens_per_s")),
                "gpu_mem_bytes": num(n.get("gpu_mem_bytes")),
                "seen": t,
            }

    def _event_stage(self, data: dict[str, Any], t: float | None) -> None:
        name = str(data["stage"])
        before = self.stages.get(name, {})
        row = {
            "stage": name,
            "state": str(data.get("state", "")),
            "position_m": data.get("position_m"),
            "target_m": data.get("target_m"),
            "alarm": data.get("alarm"),
            "time": t,
        }
        self.stages[name] = row
        if row["state"] == "alarm" and before.get("state") != "alarm":
            self._log(t, "alarm", f"stage {name}: alarm {row['alarm']}")

    def _event_budget(self, data: dict[str, Any], t: float | None) -> None:
        self.budget = {
            key: num(data.get(key))
            for key in ("energy_j", "energy_budget_j", "latency_s", "latency_budget_s")
        }
        if self.budget["energy_budget_j"] is not None:
            self.energy_budget_j = self.budget["energy_budget_j"]
        if self.budget["latency_budget_s"] is not None:
            self.latency_budget_s = self.budget["latency_budget_s"]

    def _event_homed(self, data: dict[str, Any], t: float | None) -> None:
        self.homed_positions_m = data.get("positions_m")

    # --- what it shows -----------------------------------------------------------------------------
    @property
    def rounds_done(self) -> int:
        return len(self.rounds)

    @property
    def current_round(self) -> int | None:
        """The round in progress: the one the last phase names, else the one after the last done."""
        if self.status != "running":
            return None
        if self.phase is not None and self.phase.get("round") is not None:
            return int(self.phase["round"])
        after = self.rounds[-1]["round"] + 1 if self.rounds else 1
        return after if self.rounds_total is None or after <= self.rounds_total else None

    def eta_s(self, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        remaining = (self.rounds_total or 0) - self.rounds_done
        return self._eta(self._round_times, remaining, now)

    def budgets(self) -> dict[str, float | None]:
        """Spent against budget: the last ``budget`` document, else the round records' sums."""
        last = self.rounds[-1] if self.rounds else {"energy_j": 0.0, "latency_s": 0.0}
        spent = self.budget or {}
        return {
            "energy_j": spent.get("energy_j", last["energy_j"]),
            "energy_budget_j": self.energy_budget_j,
            "latency_s": spent.get("latency_s", last["latency_s"]),
            "latency_budget_s": self.latency_budget_s,
        }

    def node_table(self, now: float | None = None) -> list[dict[str, Any]]:
        """One row per node: alive, heartbeat age (now), last round's train time and tokens/s."""
        now = time.time() if now is None else now
        last = self.rounds[-1] if self.rounds else {}
        train = last.get("train_s", {})
        # Every client has a row, heard from or not (a node that never reported is news too).
        names = set(self.nodes) | set(train) | {str(k) for k in range(self.num_clients or 0)}
        rows = []
        for node in sorted(names, key=lambda n: (len(n), n)):
            row = dict(self.nodes.get(node) or {"node": node, "alive": None, "heartbeat_age_s": None})
            age, seen = row.get("heartbeat_age_s"), row.pop("seen", None)
            if age is not None and seen is not None and self.status == "running":
                # The record is as old as it is: the heartbeat is that much older now.
                row["heartbeat_age_s"] = age + max(0.0, now - seen)
            row["train_s"] = train.get(node)
            row["selected"] = int(node) in last.get("selected", []) if node.isdigit() else None
            rows.append(row)
        return rows

    def positions_m(self) -> list[list[float]] | None:
        """Where the antennas are: the stages' last reports, else the last round's, else homed."""
        stages = self.stages.values()
        if len(self.stages) == self.num_antennas and all(_known(s.get("position_m")) for s in stages):
            return [self.stages[k]["position_m"] for k in sorted(self.stages)]
        for row in reversed(self.rounds):
            if _known(row.get("positions_m")):
                return row["positions_m"]
        return self.homed_positions_m

    def rounds_since(self, r: int) -> list[dict[str, Any]]:
        """The rows of the rounds after ``r`` (a page asks only for what it has not drawn)."""
        return jsonable([x for x in self.rounds if x["round"] > r])

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return jsonable(
            {
                **self._common(now),
                "rounds_total": self.rounds_total,
                "rounds_done": self.rounds_done,
                "current_round": self.current_round,
                "eta_s": self.eta_s(now),
                "rounds": self.rounds,
                "nodes": self.node_table(now),
                "stages": [self.stages[k] for k in sorted(self.stages)],
                "budgets": self.budgets(),
                "antennas": {
                    "region_m": self.region_m,
                    "num_antennas": self.num_antennas,
                    "clearance_m": self.clearance_m,
                    "positions_m": self.positions_m(),
                    "homed_m": self.homed_positions_m,
                },
                "num_clients": self.num_clients,
            }
        )

    def summary_row(self) -> dict[str, Any]:
        last = self.rounds[-1] if self.rounds else {}
        return jsonable(
            {
                "kind": self.kind,
                "path": str(self.path),
                "name": self.name,
                "scheme": self.scheme,
                "status": self.status,
                "done": self.rounds_done,
                "total": self.rounds_total,
                "unit": "rounds",
                "final_ppl": last.get("val_ppl"),
                "started": self.started,
            }
        )
