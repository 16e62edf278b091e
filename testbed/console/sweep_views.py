"""The views of the sweeps: a measurement campaign (points) and a compare (cells, each a run)."""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import Any

from drivers.errors import TestbedError
from testbed.compare.engine import DONE
from testbed.console.base import ETA_WINDOW, WARNINGS_KEPT, View, jsonable, load_dir_config, num
from testbed.console.control import is_running
from testbed.console.folders import COMPARE_SPEC, CONFIG, ConsoleError, Status
from testbed.console.run_view import RunView


class CampaignView(View):
    """A measurement campaign: points done of total, the ETA, each point's gains for the map."""

    kind = "campaign"
    unit = "point"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        config = load_dir_config(self.path)
        if config is not None:
            self.name = config.run.name
        self.steps_total: int | None = None
        self.num_antennas: int | None = None
        self.num_clients: int | None = None
        self.region_m: float | None = None
        self.grid_x_m: list[float] = []
        self.grid_y_m: list[float] = []
        self.points: dict[int, dict[str, Any]] = {}
        self.latest: dict[str, Any] | None = None
        self._point_times: deque[float] = deque(maxlen=ETA_WINDOW + 1)

    def _start(self, doc: dict[str, Any], t: float | None) -> None:
        super()._start(doc, t)
        self.scheme = "campaign"
        if isinstance(doc.get("steps"), int):
            self.steps_total = doc["steps"]
        for key in ("num_antennas", "num_clients"):
            if isinstance(doc.get(key), int):
                setattr(self, key, doc[key])
        self.region_m = num(doc.get("region_m")) or self.region_m
        self.grid_x_m = list(doc.get("grid_x_m") or self.grid_x_m)
        self.grid_y_m = list(doc.get("grid_y_m") or self.grid_y_m)
        self._point_times.clear()
        if t is not None:
            self._point_times.append(t)

    def _event_point(self, data: dict[str, Any], t: float | None) -> None:
        import numpy as np

        step = int(data["point"])
        h = np.asarray(data["h_re"], dtype=float) + 1j * np.asarray(data["h_im"], dtype=float)
        h = np.atleast_2d(h)  # clients x antennas
        with np.errstate(divide="ignore"):
            per_link_db = 20 * np.log10(np.abs(h))
            # Each antenna's gain summed over the clients: the map the report draws.
            antenna_db = 10 * np.log10(np.sum(np.abs(h) ** 2, axis=0))
        read = data.get("read_m", data.get("positions_m"))
        # The index keeps the first record of a step (completed_steps): so does the view.
        self.points.setdefault(
            step,
            {"point": step, "time": t, "positions_m": read, "gain_db": antenna_db.round(2).tolist()},
        )
        self.latest = {
            "point": step,
            "positions_m": read,
            "gain_db": per_link_db.round(2).tolist(),
            "snr_db": np.round(np.asarray(data.get("snr_db", []), dtype=float), 2).tolist(),
        }
        self.phase = None
        if t is not None:
            self._point_times.append(t)

    @property
    def points_done(self) -> int:
        return len(self.points)

    def eta_s(self, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        return self._eta(self._point_times, (self.steps_total or 0) - self.points_done, now)

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return jsonable(
            {
                **self._common(now),
                "points_total": self.steps_total,
                "points_done": self.points_done,
                "eta_s": self.eta_s(now),
                "latest": self.latest,
                "points": [self.points[k] for k in sorted(self.points)],
                "grid_x_m": self.grid_x_m,
                "grid_y_m": self.grid_y_m,
                "region_m": self.region_m,
                "num_antennas": self.num_antennas,
                "num_clients": self.num_clients,
            }
        )

    def summary_row(self) -> dict[str, Any]:
        return jsonable(
            {
                "kind": self.kind,
                "path": str(self.path),
                "name": self.name,
                "scheme": None,
                "status": self.status,
                "done": self.points_done,
                "total": self.steps_total,
                "unit": "points",
                "final_ppl": None,
                "started": self.started,
            }
        )


# What a finished cell's summary brings to the compare page (done.json holds the whole summary).
CELL_SUMMARY_KEYS = (
    "rounds",
    "final_val_loss",
    "final_val_ppl",
    "mean_nmse_ma_db",
    "mean_nmse_fpa_db",
    "ma_gain_over_fpa_db",
    "energy_model_j",
    "latency_model_s",
    "wall_s",
)


class CompareView:
    """A compare directory: its cells (pending, running, done, failed, interrupted), the running
    ones through a ``RunView`` of their run directory, the finished ones by their ``done.json``."""

    kind = "compare"

    def __init__(self, path: str | Path) -> None:
        from testbed.compare.cells import CompareSpec

        self.path = Path(path)
        spec_path = self.path / COMPARE_SPEC
        try:
            spec = CompareSpec.from_dict(json.loads(spec_path.read_text(encoding="utf-8")))
            cells = spec.cells()
            self.name = spec.config().run.name
        except (OSError, ValueError, KeyError, TypeError, TestbedError) as exc:
            raise ConsoleError(f"{spec_path}: not a compare's spec that this version reads ({exc})") from None
        self.schemes = list(spec.schemes)
        self.grid = [{"key": a.key, "values": list(a.values)} for a in spec.grid]
        self.seeds = spec.seeds
        self.scheme = ",".join(self.schemes)
        self.started: float | None = spec_path.stat().st_mtime
        self.cells: dict[str, dict[str, Any]] = {
            c.cell_id: {
                "cell": c.cell_id,
                "scheme": c.scheme,
                "point": c.point,
                "seed": c.seed,
                "grid": dict(c.grid),
                "state": "pending",
                "run_dir": None,
                "rounds_done": 0,
                "rounds_total": None,
                "current_round": None,
                "phase": None,
                "final_ppl": None,
                "summary": None,
            }
            for c in cells
        }
        self._runs: dict[str, RunView] = {}
        self.version = 0

    def feed(self, docs: list[dict[str, Any]]) -> bool:
        """A compare writes no documents of its own: its cells' runs do (``refresh`` reads them)."""
        return False

    def refresh(self) -> bool:
        """Look at every unfinished cell: its done marker, else its run directory's new events."""
        changed = False
        compare_running = is_running(self.path)
        for cell_id, cell in self.cells.items():
            if cell["state"] == "done":
                continue
            before = dict(cell)
            cell_dir = self.path / "cells" / cell_id
            if (cell_dir / DONE).is_file():
                self._finish(cell, cell_dir)
                self._runs.pop(cell_id, None)
            else:
                run = self._run_of(cell_id, cell_dir)
                if run is None:
                    cell["state"] = "pending"
                else:
                    changed = run.refresh() or changed
                    self._follow(cell, run, compare_running)
            changed = changed or cell != before
        if changed:
            self.version += 1
        return changed

    def _finish(self, cell: dict[str, Any], cell_dir: Path) -> None:
        try:
            done = json.loads((cell_dir / DONE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # written atomically; a reader that races its replacement looks again next time
        summary = done.get("summary") or {}
        cell.update(
            state="done",
            run_dir=done.get("run_dir"),
            rounds_done=summary.get("rounds"),
            current_round=None,
            phase=None,
            final_ppl=num(summary.get("final_val_ppl")),
            summary={k: summary.get(k) for k in CELL_SUMMARY_KEYS},
        )

    def _run_of(self, cell_id: str, cell_dir: Path) -> RunView | None:
        """The cell's run directory (a cell started again replaces it: follow the new one)."""
        run = self._runs.get(cell_id)
        if run is not None and run.path.is_dir():
            return run
        try:
            runs = sorted(p for p in cell_dir.iterdir() if (p / CONFIG).is_file())
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not runs:
            return None
        self._runs[cell_id] = run = RunView(runs[-1])
        run.within = self.path
        return run

    @staticmethod
    def _follow(cell: dict[str, Any], run: RunView, compare_running: bool) -> None:
        status = run.status
        if status == "failed":
            state = "failed"
        elif status == "running" or (compare_running and status == "done"):
            # A cell whose run has ended but whose done.json is not yet written is still running.
            state = "running"
        else:
            state = "interrupted"
        phase = run.phase_now()
        cell.update(
            state=state,
            run_dir=str(run.path),
            rounds_done=run.rounds_done,
            rounds_total=run.rounds_total,
            current_round=run.current_round if state == "running" else None,
            phase=phase["phase"] if phase else None,
            final_ppl=run.rounds[-1]["val_ppl"] if run.rounds else None,
        )

    # --- what it shows -----------------------------------------------------------------------------
    @property
    def status(self) -> Status:
        states = [c["state"] for c in self.cells.values()]
        if is_running(self.path) or "running" in states:
            return "running"
        if all(s == "done" for s in states):
            return "done"
        return "failed" if "failed" in states else "interrupted"

    @property
    def cells_done(self) -> int:
        return sum(c["state"] == "done" for c in self.cells.values())

    def running_cells(self) -> list[dict[str, Any]]:
        return [c for c in self.cells.values() if c["state"] == "running"]

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        warnings = [{**w, "cell": cell_id} for cell_id, run in self._runs.items() for w in run.warnings]
        warnings.sort(key=lambda w: w.get("time") or 0.0)
        report = self.path / "compare.md"
        return jsonable(
            {
                "kind": self.kind,
                "path": str(self.path),
                "name": self.name,
                "scheme": self.scheme,
                "status": self.status,
                "started": self.started,
                "version": self.version,
                "schemes": self.schemes,
                "grid": self.grid,
                "seeds": self.seeds,
                "cells_total": len(self.cells),
                "cells_done": self.cells_done,
                "cells": list(self.cells.values()),
                "running": self.running_cells(),
                "report": report.name if report.is_file() else None,
                "warnings": warnings[-WARNINGS_KEPT:],
            }
        )

    def summary_row(self) -> dict[str, Any]:
        return jsonable(
            {
                "kind": self.kind,
                "path": str(self.path),
                "name": self.name,
                "scheme": self.scheme,
                "status": self.status,
                "done": self.cells_done,
                "total": len(self.cells),
                "unit": "cells",
                "final_ppl": None,
                "started": self.started,
            }
        )
