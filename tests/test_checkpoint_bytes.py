"""Checkpoints are byte-stable (issue 18, point 21): the same adapter after the same round gives
the same file, whatever process wrote it and in whatever order it holds its tensors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from fl.checkpoint import adapter_file_bytes, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def adapter() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        f"layer{i}.lora_{ab}": rng.standard_normal((4, 3)).astype(np.float32) for i in range(3) for ab in "AB"
    }


def test_the_file_does_not_depend_on_the_tensors_order_and_reads_back(tmp_path: Path) -> None:
    a = adapter()
    reversed_order = {n: a[n] for n in reversed(list(a))}
    assert adapter_file_bytes(a, 3, "ffa") == adapter_file_bytes(reversed_order, 3, "ffa")
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(adapter_file_bytes(a, 3, "ffa"))
    back = safetensors.numpy.load_file(str(path))
    assert set(back) == set(a) and all(np.array_equal(back[n], a[n]) for n in a)
    with safetensors.safe_open(str(path), "np") as f:
        assert f.metadata() == {"round": "3", "lora_mode": "ffa"}


_WRITER = """
import hashlib, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_checkpoint_bytes import adapter
from fl.checkpoint import save_checkpoint
out = Path(sys.argv[1])
save_checkpoint(out, 3, adapter(), "standard", {"round": 3})
print(hashlib.sha256((out / "checkpoints" / "round-0003" / "adapter.safetensors").read_bytes()).hexdigest())
"""


def test_every_process_writes_the_same_bytes(tmp_path: Path) -> None:
    """Each writer is a new process (a new hash seed: the reference writer's metadata order
    followed it, so 4 of 6 resumed runs' checkpoints differed from an uninterrupted run's)."""
    digests = set()
    for i in range(4):
        out = subprocess.run(
            [sys.executable, "-c", _WRITER, str(tmp_path / f"w{i}"), str(ROOT / "tests")],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        digests.add(out.stdout.strip())
    save_checkpoint(tmp_path / "here", 3, adapter(), "standard", {"round": 3})
    here = (tmp_path / "here" / "checkpoints" / "round-0003" / "adapter.safetensors").read_bytes()
    assert digests == {hashlib.sha256(here).hexdigest()}
