"""`testbed compare`: a grid of full FL runs per scheme, and their report.

    compare_dir/
        compare.json     the spec (base config, schemes, grid, seeds) and its fingerprint
        cells/<id>/      one cell: its run directory (<name>-<time>/) and done.json when finished
        compare.md       the report, with its PNG plots and compare_summary.json

``run_compare`` runs the cells that are not finished (all of them, the first time) and writes
the report. Resuming a directory made from another config, or other schemes, grid or seeds, is
refused with the part that differs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drivers.errors import ConfigError, TestbedError
from testbed.compare.cells import Cell, CompareSpec, build_spec, cell_config
from testbed.compare.engine import is_done, read_done, run_jobs
from testbed.compare.report import cell_series, write_compare_report
from testbed.config import to_yaml
from testbed.console.control import RunningMarker, stop_requested

log = logging.getLogger(__name__)

SPEC_FILE = "compare.json"


class CompareError(TestbedError):
    """Some cells of a compare failed (the others finished, and the report covers them)."""


__all__ = ["CompareSpec", "build_spec", "load_cells", "open_compare_dir", "run_compare"]


def open_compare_dir(spec: CompareSpec, out: Path | None, resume: Path | None) -> Path:
    """A new compare directory (writes compare.json), or ``resume`` checked against ``spec``."""
    if resume is not None:
        path = Path(resume)
        saved_file = path / SPEC_FILE
        if not saved_file.is_file():
            raise ConfigError(f"--resume {path}: not a compare directory (no {SPEC_FILE})")
        saved = json.loads(saved_file.read_text(encoding="utf-8"))
        mine, theirs = spec.fingerprint(), saved.get("fingerprint", {})
        differ = [part for part in ("config", "schemes", "grid", "seeds") if mine[part] != theirs.get(part)]
        if differ:
            what = {
                "config": "it was made from another config (the resolved YAML, --set included, differs)",
                "schemes": f"it compares schemes {saved.get('schemes')} (got {spec.schemes})",
                "grid": f"its grid is {saved.get('grid')} (got {[[a.key, list(a.values)] for a in spec.grid]})",
                "seeds": f"it runs {saved.get('seeds')} seeds (got {spec.seeds})",
            }
            raise ConfigError(
                f"--resume {path}: refusing to resume: " + "; ".join(what[p] for p in differ)
                + ". Give the same CONFIG and options, or start a new compare with --out."
            )  # fmt: skip
        return path
    if out is None:
        name = spec.config().run.name
        out = spec.config().run.output_dir / f"compare-{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    path = Path(out)
    if (path / SPEC_FILE).exists():
        raise ConfigError(f"--out {path}: already holds a compare; continue it with --resume {path}")
    path.mkdir(parents=True, exist_ok=True)
    (path / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=1), encoding="utf-8")
    return path


def load_cells(compare_dir: Path, spec: CompareSpec) -> list[dict[str, Any]]:
    """Every finished cell: its Cell (as a dict), its curves and its K."""
    cells_dir = compare_dir / "cells"
    out = []
    for cell in spec.cells():
        if not is_done(cells_dir, cell.cell_id):
            continue
        done = read_done(cells_dir, cell.cell_id)
        config = cell_config(spec, cell, cells_dir)
        out.append(
            {
                "cell": cell.to_dict(),
                "series": cell_series(done["run_dir"]),
                "summary": done["summary"],
                "run_dir": done["run_dir"],
                "cpu_s": done.get("cpu_s"),
                "clients_per_round": config.allocation.clients_per_round,
            }
        )
    return out


def run_compare(
    spec: CompareSpec,
    compare_dir: Path,
    engine: str = "local",
    workers: int = 2,
    scheduler: str | Any | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, list[str]]:
    """Run the unfinished cells, then write the report; return compare.md and the cells run now."""
    cells_dir = compare_dir / "cells"
    cells = spec.cells()
    todo: list[Cell] = [c for c in cells if not is_done(cells_dir, c.cell_id)]
    ran: list[str] = []
    finished = len(cells) - len(todo)
    log.info("compare %s: %d cells, %d finished, %d to run", compare_dir, len(cells), finished, len(todo))
    if progress is not None:
        progress(finished, len(cells))
    configs = {c.cell_id: cell_config(spec, c, cells_dir) for c in todo}
    # Longest first: a cell's training grows with K x rounds, and a long cell started last would
    # leave the other workers idle at the end (at K = 1..8 that tail is a K=8 cell's minute).
    todo.sort(key=lambda c: -configs[c.cell_id].allocation.clients_per_round * configs[c.cell_id].fl.rounds)
    jobs = [
        {
            "cell_id": c.cell_id,
            "scheme": c.scheme,
            "cell_dir": str(cells_dir / c.cell_id),
            "config_yaml": to_yaml(configs[c.cell_id]),
        }
        for c in todo
    ]

    failed: dict[str, str] = {}

    def on_done(result: dict[str, Any]) -> None:
        nonlocal finished
        if "error" in result:
            failed[result["cell_id"]] = result["error"]
            log.error("cell %s failed: %s", result["cell_id"], result["error"])
            return
        if "stopped" in result:
            log.warning("cell %s stopped (%s); --resume continues it", result["cell_id"], result["stopped"])
            return
        finished += 1
        ran.append(result["cell_id"])
        log.info("cell %s done (%d/%d)", result["cell_id"], finished, len(cells))
        if progress is not None:
            progress(finished, len(cells))

    stop_reason: list[str] = []

    def should_stop() -> bool:
        request = stop_requested(compare_dir)
        if request is not None and not stop_reason:
            stop_reason.append(f"testbed stop ({request.get('by', 'unknown')})")
            log.warning("compare %s: %s: no new cells; the running ones finish", compare_dir, stop_reason[0])
        return bool(stop_reason)

    with RunningMarker(compare_dir, "compare"):
        run_jobs(jobs, engine, workers, scheduler, on_done, should_stop)
    report = write_compare_report(compare_dir, spec.to_dict(), load_cells(compare_dir, spec))
    if stop_reason:
        log.warning("compare %s stopped: %d of %d cells finished; --resume %s runs the rest",
                    compare_dir, finished, len(cells), compare_dir)  # fmt: skip
    if failed:
        raise CompareError(
            f"{len(failed)} of {len(cells)} cells failed: "
            + "; ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
            + f". {report} covers the {finished} finished; `--resume {compare_dir}` runs the rest again"
        )
    return report, ran
