"""The coordinator's checkpoints: the global adapter and the round's state; the metrics, appended.

    checkpoints/round-NNNN/adapter.safetensors   the global adapter after round NNNN
    checkpoints/round-NNNN/state.json            round, version, RNG state, participation, ...
    checkpoints/LATEST                           the name of the newest complete folder
    metrics.jsonl                                one record per finished round, appended

A checkpoint is written to a temporary folder and renamed, so a crash never leaves half of one.
The round's state carries that round's record only; its final version is appended to
metrics.jsonl once the round is over. On resume the records come from metrics.jsonl, cut back to
the checkpoint's round (and completed from its state if the crash came before the append).
Disk grows linearly with the rounds: no file repeats earlier rounds.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from drivers.errors import FLError
from fl.protocol import build_frame, tensors_to_frame


@dataclass
class Checkpoint:
    folder: Path
    adapter: dict[str, np.ndarray]
    state: dict[str, Any]
    metrics: list[dict[str, Any]]


def adapter_file_bytes(adapter: dict[str, np.ndarray], r: int, lora_mode: str) -> bytes:
    """The adapter as a safetensors file in one canonical byte layout: tensors and metadata in
    sorted order (the reference writer's metadata order follows a hash map's, which changes from
    process to process), so a resumed run's checkpoint can be checked by its checksum."""
    frame = build_frame({n: adapter[n] for n in sorted(adapter)}, {"lora_mode": lora_mode, "round": str(r)})
    return bytes(tensors_to_frame(frame))


def save_checkpoint(
    run_dir: Path,
    r: int,
    adapter: dict[str, np.ndarray],
    lora_mode: str,
    state: dict[str, Any],
) -> Path:
    """Write round ``r``'s checkpoint; the folder. ``state["record"]`` is the round's record as
    far as it is known now (metrics.jsonl gets the final one from ``append_record``)."""
    ckpt = run_dir / "checkpoints"
    final, tmp = ckpt / f"round-{r:04d}", ckpt / f".round-{r:04d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "adapter.safetensors").write_bytes(adapter_file_bytes(adapter, r, lora_mode))
    (tmp / "state.json").write_text(json.dumps(state, default=float), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (ckpt / "LATEST.tmp").write_text(final.name, encoding="utf-8")
    os.replace(ckpt / "LATEST.tmp", ckpt / "LATEST")
    return final


def append_record(run_dir: Path, record: dict[str, Any]) -> None:
    """One finished round's record at the end of metrics.jsonl (synced: the next round's
    checkpoint relies on it)."""
    with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _records_through(run_dir: Path, r: int) -> list[dict[str, Any]]:
    """The metrics of rounds 1..r from metrics.jsonl (the last record of a round counts); the
    file is cut back to them, so a record written past the checkpoint is not kept twice."""
    path = run_dir / "metrics.jsonl"
    by_round: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the crash
            if isinstance(rec, dict) and isinstance(rec.get("round"), int) and rec["round"] <= r:
                by_round[rec["round"]] = rec
    records = [by_round[k] for k in sorted(by_round)]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(rec, default=float) + "\n" for rec in records), encoding="utf-8")
    os.replace(tmp, path)
    return records


def load_checkpoint(run_dir: Path, adapter_names: set[str]) -> Checkpoint | None:
    """The newest complete checkpoint (None if there is none yet); FLError if it does not fit.

    Its ``metrics`` are the records of its rounds, from metrics.jsonl (or, for a checkpoint from
    before the records were appended, from its state.json)."""
    ckpt = run_dir / "checkpoints"
    latest = ckpt / "LATEST"
    if not latest.is_file():
        return None
    folder = ckpt / latest.read_text(encoding="utf-8").strip()
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    adapter = safetensors.numpy.load_file(str(folder / "adapter.safetensors"))
    if set(adapter) != adapter_names:
        raise FLError(f"{folder}: the checkpoint's adapter does not match this model's LoRA config")
    metrics = state.pop("metrics", None)
    if metrics is None:
        metrics = _records_through(run_dir, int(state["round"]))
        last = state.get("record")
        if last is not None and (not metrics or metrics[-1].get("round") != last["round"]):
            # The crash came between the checkpoint and the record's append.
            metrics.append(last)
            append_record(run_dir, last)
    if [m.get("round") for m in metrics] != list(range(1, int(state["round"]) + 1)):
        raise FLError(
            f"{run_dir / 'metrics.jsonl'}: holds rounds {[m.get('round') for m in metrics][:20]}, the "
            f"checkpoint {folder.name} needs 1..{state['round']}; the run folder is damaged"
        )
    return Checkpoint(folder, adapter, state, metrics)
