"""GPU check of the paper's 4-bit path: 2 FL rounds with ``fl.model.load_in_4bit=true`` on a
random-weight OpenLLaMA-3B-v2-shaped model folder that this script writes itself.

Why: on a GPU node every node process died inside ``from_pretrained`` with "Cannot re-initialize
CUDA in forked subprocess" (transformers' caching_allocator_warmup calls torch.cuda.mem_get_info
in a child forked from a parent with CUDA state). Nodes that use CUDA now start as fresh
interpreters, and the zygote reports that it never initialised CUDA. This script is the check:
run it whenever a GPU machine is lent (needs bitsandbytes installed):

    .venv/bin/python benchmarks/gpu_4bit_check.py [--keep DIR]

Without CUDA it prints "no CUDA" and exits 0. Otherwise the last line is a JSON summary and the
exit code is 0 only if both rounds completed with every node process leaving cleanly.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_random_3b(folder: Path) -> None:
    """A hub-style folder (config, safetensors shards, tokenizer) with OpenLLaMA-3B v2's shape."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fl import training
    from fl.data import load_examples

    texts = [e.text() for e in load_examples("generated", "", 200, 0)]
    tokenizer = training.fit_tokenizer(texts, 512)
    shape = {
        **training.OPEN_LLAMA_3B_SHAPE,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):  # random init on the GPU: seconds, not minutes on the CPU
            model = LlamaForCausalLM(LlamaConfig(**shape))
    finally:
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder, max_shard_size="2GB")
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="write the model folder and run directory here")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA: the 4-bit check needs a CUDA GPU (skipped)")
        return 0
    from fl.launcher import shared_zygote
    from fl.runner import LocalFederation, node_start_method
    from testbed.config import load_config

    work = args.keep or Path(tempfile.mkdtemp(prefix="gpu4bit-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    folder = work / "open_llama_3b_v2_random"
    if not (folder / "config.json").is_file():
        write_random_3b(folder)
    write_s = time.monotonic() - t0
    cfg = load_config(
        None,
        [
            "lab.clients.count=2",
            "allocation.clients_per_round=2",
            "fl.rounds=2",
            "fl.model.source=pretrained",
            f"fl.model.path={folder}",
            "fl.model.load_in_4bit=true",
            "fl.model.dtype=bfloat16",
            "fl.data.num_samples=40",
            "fl.data.seq_len=64",
            "fl.training.local_steps=2",
            "fl.training.batch_size=2",
            "fl.transport.round_deadline_s=300",
            "fl.transport.join_timeout_s=600",
        ],
    )
    start = node_start_method(cfg)
    fed = LocalFederation(cfg, work / "run")
    t1 = time.monotonic()
    ok, error = False, None
    try:
        metrics = fed.run()
        ok = [m["round"] for m in metrics] == [1, 2] and all(
            p.returncode == 0 for p in fed.processes.values()
        )
    except Exception as exc:  # noqa: BLE001 - reported in the summary line
        metrics, error = [], f"{type(exc).__name__}: {exc}"
    summary = {
        "ok": ok,
        "error": error,
        "gpu": torch.cuda.get_device_name(0),
        "node_start": start,
        "zygote_cuda_initialized": shared_zygote().cuda_initialized,
        "rounds": [m["round"] for m in metrics],
        "val_loss": [m["val_loss"] for m in metrics],
        "node_rc": {k: p.returncode for k, p in fed.processes.items()},
        "write_model_s": write_s,
        "run_s": time.monotonic() - t1,
        "dir": str(work),
    }
    print(json.dumps(summary))
    return 0 if ok and summary["zygote_cuda_initialized"] is False else 1


if __name__ == "__main__":
    sys.exit(main())
