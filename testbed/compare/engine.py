"""Where the cells run: local processes (default) or a Dask ``distributed`` cluster.

A cell is finished when its ``cells/<id>/done.json`` exists: it is written atomically after the
run's summary, so a compare killed at any moment leaves each cell either finished (kept) or not.
A cell not finished resumes its run from the last checkpointed round, as ``testbed run --resume``
does (a cell with no run record yet starts again from nothing). Each cell runs in
a worker process (local or Dask) with one torch thread, its FL nodes as
threads of that process: a cell costs one CPU core.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from drivers.errors import ConfigError

log = logging.getLogger(__name__)

DONE = "done.json"
STOP_POLL_S = 0.5  # how often a local compare looks for a ``testbed stop`` request


def is_done(cells_dir: Path, cell_id: str) -> bool:
    return (cells_dir / cell_id / DONE).is_file()


def read_done(cells_dir: Path, cell_id: str) -> dict[str, Any]:
    return json.loads((cells_dir / cell_id / DONE).read_text(encoding="utf-8"))


def resumable_run(cell_dir: Path) -> Path | None:
    """The cell's run directory if its record has begun (a ``--resume`` can continue it), else None."""
    runs = [p for p in cell_dir.glob("*/events.jsonl") if p.stat().st_size > 0] if cell_dir.is_dir() else []
    return runs[0].parent if len(runs) == 1 and (runs[0].parent / "config.yaml").is_file() else None


def run_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Run one cell (in a worker process): ``job`` holds the config YAML, scheme and paths."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    import yaml

    from testbed.config import validate
    from testbed.experiment import run_experiment

    torch.set_num_threads(1)
    cell_dir = Path(job["cell_dir"])
    resume_dir = resumable_run(cell_dir)
    if resume_dir is None and cell_dir.exists():  # killed before its run's record began
        shutil.rmtree(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    # A resumed cell runs on the config its run recorded (the scheme's own settings applied).
    config_yaml = job["config_yaml"] if resume_dir is None else (resume_dir / "config.yaml").read_text()
    config = validate(yaml.safe_load(config_yaml), f"cell {job['cell_id']}")
    # The cell's own CPU time (every thread of this worker: the coordinator and its nodes): on a
    # shared machine the wall time says how busy the host was, this what the cell cost.
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    # Ctrl-C (or `testbed stop --now`) interrupts the cell's run, never the worker between cells
    # (a Dask worker runs cells on its threads, and leaves signals to its own main thread).
    own_signals = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGINT, signal.default_int_handler) if own_signals else None
    try:
        run_dir, summary = run_experiment(
            config, resume_dir=resume_dir, scheme=job["scheme"], node_mode="thread", whole_run_plan=False,
            report=False,
        )  # fmt: skip
    except KeyboardInterrupt:
        # The run recorded "interrupted" and kept its checkpoints: a resume continues it.
        return {"cell_id": job["cell_id"], "stopped": "interrupted"}
    except Exception as exc:  # noqa: BLE001 - one failed cell must not stop the others
        # The failure comes back as data (no done.json: a resume runs the cell again).
        return {"cell_id": job["cell_id"], "error": f"{type(exc).__name__}: {exc}"}
    finally:
        if own_signals:
            signal.signal(signal.SIGINT, before)
    if "stopped" in summary:  # `testbed stop` on the cell's own run: checkpointed, not finished
        return {"cell_id": job["cell_id"], "stopped": summary["stopped"]}
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    done = {"cell_id": job["cell_id"], "run_dir": str(run_dir), "summary": summary, "cpu_s": cpu_s}
    tmp = cell_dir / (DONE + ".tmp")
    tmp.write_text(json.dumps(done, default=str), encoding="utf-8")
    tmp.replace(cell_dir / DONE)  # atomic: the marker is all or nothing
    return done


def run_local(
    jobs: list[dict[str, Any]],
    workers: int,
    on_done: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """The cells on ``workers`` spawned processes, one cell at a time each.

    A worker runs cell after cell: importing torch, transformers and peft costs tens of CPU
    seconds, more than a short cell's training, so it is paid once per worker, not per cell.
    Each cell still gets a fresh Experiment, lab, federation and seeds. Once ``should_stop()``
    says so, no new cell starts and the running ones finish.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")  # no forked torch/zmq state from this process
    queue = list(jobs)
    # A worker hears Ctrl-C only while it runs a cell (run_cell): idle, it would die of it.
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_ignore_ctrl_c) as pool:
        # At most one cell per worker is handed over at a time: a cell the pool has taken cannot
        # be called back, and a stop must leave the cells not yet started alone.
        running = {pool.submit(run_cell, queue.pop(0)) for _ in range(min(workers, len(queue)))}
        while running:
            finished, running = wait(running, timeout=STOP_POLL_S, return_when=FIRST_COMPLETED)
            for future in finished:
                on_done(future.result())
            if queue and should_stop():
                queue.clear()
            while queue and len(running) < workers:
                running.add(pool.submit(run_cell, queue.pop(0)))


def _ignore_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_dask(
    jobs: list[dict[str, Any]],
    scheduler: str | Any,
    on_done: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Each cell as a task on a Dask ``distributed`` cluster (``scheduler``: address or Client).
    Once ``should_stop()`` says so (asked as each cell finishes), the cells not finished are
    cancelled: a Dask worker cannot be told to finish one task and take no other."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ConfigError(
            "--engine dask: the 'distributed' package is not installed; pip install '.[dask]' "
            "(or use --engine local)"
        ) from None
    own = not hasattr(scheduler, "submit")
    client = Client(scheduler) if own else scheduler
    try:
        futures = [client.submit(run_cell, job, key=f"cell-{job['cell_id']}", pure=False) for job in jobs]
        for future in as_completed(futures):
            on_done(future.result())
            if should_stop():
                client.cancel([f for f in futures if not f.done()])
                break
    finally:
        if own:
            client.close()


def run_jobs(
    jobs: Iterable[dict[str, Any]],
    engine: str,
    workers: int,
    scheduler: str | Any | None,
    on_done: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    jobs = list(jobs)
    if not jobs:
        return
    if engine == "local":
        run_local(jobs, workers, on_done, should_stop)
    elif engine == "dask":
        if scheduler is None:
            raise ConfigError("--engine dask: give --scheduler ADDRESS (e.g. tcp://10.0.0.5:8786)")
        run_dask(jobs, scheduler, on_done, should_stop)
    else:
        raise ConfigError(f"--engine: {engine!r}; allowed local, dask")
