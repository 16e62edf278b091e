"""The coordinator's checkpoints: the global adapter, the round's state and the metrics so far.

    checkpoints/round-NNNN/adapter.safetensors   the global adapter after round NNNN
    checkpoints/round-NNNN/state.json            round, version, RNG state, participation, ...
    checkpoints/LATEST                           the name of the newest complete folder
    metrics.jsonl                                one record per finished round

A checkpoint is written to a temporary folder and renamed, so a crash never leaves half of one.
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
    metrics: list[dict[str, Any]],
) -> Path:
    """Write round ``r``'s checkpoint and the metrics file; the checkpoint's folder."""
    ckpt = run_dir / "checkpoints"
    final, tmp = ckpt / f"round-{r:04d}", ckpt / f".round-{r:04d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "adapter.safetensors").write_bytes(adapter_file_bytes(adapter, r, lora_mode))
    (tmp / "state.json").write_text(
        json.dumps({**state, "metrics": metrics}, default=float), encoding="utf-8"
    )
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (ckpt / "LATEST.tmp").write_text(final.name, encoding="utf-8")
    os.replace(ckpt / "LATEST.tmp", ckpt / "LATEST")
    with (run_dir / "metrics.jsonl").open("w", encoding="utf-8") as f:
        for rec in metrics:
            f.write(json.dumps(rec, default=float) + "\n")
    return final


def load_checkpoint(run_dir: Path, adapter_names: set[str]) -> Checkpoint | None:
    """The newest complete checkpoint (None if there is none yet); FLError if it does not fit."""
    ckpt = run_dir / "checkpoints"
    latest = ckpt / "LATEST"
    if not latest.is_file():
        return None
    folder = ckpt / latest.read_text(encoding="utf-8").strip()
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    adapter = safetensors.numpy.load_file(str(folder / "adapter.safetensors"))
    if set(adapter) != adapter_names:
        raise FLError(f"{folder}: the checkpoint's adapter does not match this model's LoRA config")
    return Checkpoint(folder, adapter, state)
