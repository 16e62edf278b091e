"""The run directory: everything a run leaves behind, written so that nothing is lost.

    runs/<name>-<UTC time>/
        config.yaml      the resolved config (every default written out)
        events.jsonl     start, event and stop documents; one JSON object a line, flushed per record
        run.log          the run's log lines
        fl/              an experiment's FL records: checkpoints/round-NNNN/ (safetensors + JSON
                         state) and LATEST, the coordinator's events.jsonl, metrics.jsonl, logs/
        checkpoints/     made for every run; an experiment's checkpoints are in fl/checkpoints/
        captures/        SigMF recordings (a campaign's)
        report/          plots and report.md
        summary.json     the figures at the end

A crash can tear the last line of ``events.jsonl``; ``read_events`` skips it, and reopening the run
for appending (``--resume``) cuts it off first so the file stays valid JSON lines.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from drivers.errors import TestbedError

log = logging.getLogger(__name__)

SUBDIRS = ("checkpoints", "captures", "report")


class RecordError(TestbedError):
    """A run directory or its events file is missing or damaged beyond its last line."""


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays, paths and complex numbers as plain JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, complex):
        return {"re": value.real, "im": value.imag}
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(value: Any) -> str:
    return json.dumps(value, default=_json_default, allow_nan=True)


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line with no newline (a write torn by a crash)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        log.warning("%s: cut a torn last record (%d bytes)", path, len(data) - keep)


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """All documents of an events file. A torn last line is skipped; damage elsewhere raises."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: no events file")
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    docs: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            docs.append(json.loads(line))
        except json.JSONDecodeError as exc:
            is_last = all(not rest.strip() for rest in lines[number:])
            if is_last:
                log.warning("%s: skipping a torn last record at line %d", path, number)
                break
            raise RecordError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
    return docs


class RunRecorder:
    """Appends documents to a run directory's ``events.jsonl`` and manages its files."""

    def __init__(self, run_dir: str | Path, fsync: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self._fsync = fsync
        self._log_handler: logging.Handler | None = None
        for sub in SUBDIRS:
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        _cut_torn_tail(self.events_path)
        self._seq = sum(1 for _ in self._existing_lines())
        # Documents come from the run's thread and from log handlers on other threads.
        self._lock = threading.Lock()
        self._open_segment = False  # between a start and its stop
        self._file = self.events_path.open("a", encoding="utf-8")

    # --- creation ---------------------------------------------------------------------------
    @classmethod
    def create(cls, output_dir: str | Path, name: str, config_yaml: str, fsync: bool = True) -> RunRecorder:
        """Make ``output_dir/<name>-<UTC time>/`` (a new folder, never an old one) and its config."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        base = Path(output_dir) / f"{name}-{stamp}"
        run_dir, n = base, 1
        while run_dir.exists():
            n += 1
            run_dir = base.with_name(f"{base.name}-{n}")
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(config_yaml, encoding="utf-8")
        return cls(run_dir, fsync=fsync)

    @classmethod
    def reopen(cls, run_dir: str | Path, fsync: bool = True) -> RunRecorder:
        """Open an existing run for appending (resume after a crash)."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise RecordError(f"{run_dir}: not a run directory (no config.yaml)")
        return cls(run_dir, fsync=fsync)

    # --- paths ------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.yaml"

    @property
    def events_path(self) -> Path:
        return self.run_dir / "events.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.run_dir / "summary.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def captures_dir(self) -> Path:
        return self.run_dir / "captures"

    @property
    def report_dir(self) -> Path:
        return self.run_dir / "report"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "run.log"

    # --- documents --------------------------------------------------------------------------
    def _existing_lines(self) -> Iterator[str]:
        if self.events_path.exists():
            with self.events_path.open(encoding="utf-8", errors="replace") as f:
                yield from (line for line in f if line.strip())

    def _append(self, doc: str, durable: bool = True, **fields: Any) -> dict[str, Any]:
        with self._lock:
            record = {"doc": doc, "seq": self._seq, "time": time.time(), **fields}
            self._file.write(to_json(record) + "\n")
            self._file.flush()
            if self._fsync and durable:
                os.fsync(self._file.fileno())
            self._seq += 1
        return record

    def start(self, **meta: Any) -> dict[str, Any]:
        self._open_segment = True
        return self._append("start", **meta)

    def event(self, kind: str, **data: Any) -> dict[str, Any]:
        return self._append("event", kind=kind, data=data)

    def live(self, kind: str, **data: Any) -> dict[str, Any] | None:
        """An event for the live console (``testbed.console``): flushed, not fsynced. Dropped
        outside a start/stop pair (a log line while the devices close after the stop)."""
        if not self._open_segment:
            return None
        return self._append("event", durable=False, kind=kind, data=data)

    def stop(self, status: str, reason: str = "", **data: Any) -> dict[str, Any]:
        self._open_segment = False
        return self._append("stop", status=status, reason=reason, data=data)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        docs = read_events(self.events_path)
        return [d for d in docs if kind is None or d.get("kind") == kind]

    def write_summary(self, summary: dict[str, Any]) -> Path:
        tmp = self.summary_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, default=_json_default, indent=2), encoding="utf-8")
        tmp.replace(self.summary_path)  # atomic: a crash never leaves half a summary
        return self.summary_path

    # --- logging ----------------------------------------------------------------------------
    def attach_log(self, level: int | str = logging.INFO) -> None:
        """Also write the process's log lines at ``level`` and above to ``run.log``."""
        if self._log_handler is None:
            handler = logging.FileHandler(self.log_path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            handler.setLevel(level)
            root = logging.getLogger()
            if root.level > handler.level:  # the file may want more detail than the console shows
                root.setLevel(handler.level)
            root.addHandler(handler)
            self._log_handler = handler

    def close(self) -> None:
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
