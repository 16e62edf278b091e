"""Model, tokenizer, LoRA and local steps (docs/explanation/system-model.md section 8).

Two model sources (``fl.model.source``):
- ``pretrained``: openlm-research/open_llama_3b_v2 from a local path (or a hub id already in
  the cache), in bf16/fp16/fp32, or 4-bit NF4 through bitsandbytes on a CUDA GPU.
- ``tiny``: a random small ``LlamaConfig`` model with a BPE tokenizer fitted on the training
  texts by the ``tokenizers`` library, so nothing is downloaded (tests, dry runs).
peft LoRA goes on ``fl.lora.target_modules`` (q_proj, v_proj). In FFA-LoRA mode the A matrices
are frozen (and shared through the global adapter), so only B is trained and aggregated.

The adapter travels as ``{parameter name: float32 numpy array}``, keyed by the peft parameter
names, which are identical in every process that builds the same model.
"""

from __future__ import annotations

import contextlib
import math
import resource
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from drivers.errors import ConfigError
from fl.data import Example

TensorDict = dict[str, np.ndarray]
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]

# One process may host several nodes (threads in tests): training seeds torch's global RNG,
# so one node trains at a time per process. Separate node processes never contend for it.
TRAIN_LOCK = threading.RLock()

# openlm-research/open_llama_3b_v2's config.json (the real dimensions, for random-weight benches).
OPEN_LLAMA_3B_SHAPE: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 3200,
    "intermediate_size": 8640,
    "num_hidden_layers": 26,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def fit_tokenizer(texts: Sequence[str], vocab_size: int):  # noqa: ANN201 - PreTrainedTokenizerFast
    """A byte-level BPE tokenizer fitted on ``texts`` (deterministic for the same texts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def load_tokenizer(model_cfg: Any, texts: Sequence[str]):  # noqa: ANN201
    if model_cfg.source == "tiny":
        return fit_tokenizer(texts, model_cfg.tiny_vocab)
    from transformers import AutoTokenizer

    if not model_cfg.path:
        raise ConfigError("fl.model.path: source 'pretrained' needs a local path or cached hub id")
    tokenizer = AutoTokenizer.from_pretrained(model_cfg.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.unk_token is None else tokenizer.unk_token
    return tokenizer


def _torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def tiny_llama_config(model_cfg: Any, vocab_size: int, seq_len: int, tokenizer: Any = None):  # noqa: ANN201
    from transformers import LlamaConfig

    if model_cfg.tiny_hidden % model_cfg.tiny_heads:
        raise ConfigError(
            f"fl.model.tiny_hidden={model_cfg.tiny_hidden} must be a multiple of tiny_heads={model_cfg.tiny_heads}"
        )
    ids = {}
    if tokenizer is not None:
        ids = {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=model_cfg.tiny_hidden,
        intermediate_size=2 * model_cfg.tiny_hidden,
        num_hidden_layers=model_cfg.tiny_layers,
        num_attention_heads=model_cfg.tiny_heads,
        num_key_value_heads=model_cfg.tiny_heads,
        max_position_embeddings=max(seq_len, 16),
        tie_word_embeddings=False,
        **ids,
    )


def load_base_model(model_cfg: Any, tokenizer: Any, seed: int, seq_len: int, device: str = "cpu"):  # noqa: ANN201
    """The base model (frozen later by peft): tiny random Llama, or the pretrained weights."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    dtype = _torch_dtype(model_cfg.dtype)
    if model_cfg.source == "tiny":
        with TRAIN_LOCK:
            torch.manual_seed(seed)  # same seed -> identical base weights in every process
            model = LlamaForCausalLM(tiny_llama_config(model_cfg, len(tokenizer), seq_len, tokenizer))
        return model.to(device=device, dtype=dtype)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if model_cfg.load_in_4bit:
        if not torch.cuda.is_available():
            raise ConfigError("fl.model.load_in_4bit: 4-bit (bitsandbytes) needs a CUDA GPU; none found")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(model_cfg.path, **kwargs)
    if not model_cfg.load_in_4bit:
        model = model.to(device)
    return model


def add_lora(model: Any, model_cfg: Any, lora_cfg: Any, seed: int):  # noqa: ANN201
    """peft LoRA on the target modules; FFA-LoRA freezes A. Gradient checkpointing if asked."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if model_cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=model_cfg.gradient_checkpointing
        )
    elif model_cfg.gradient_checkpointing:
        # transformers 5 renamed it (and its argument); 4.x only has the old name.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with TRAIN_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft on transformers 5
        torch.manual_seed(seed + 1)
        model = get_peft_model(model, config)
    if lora_cfg.mode == "ffa":
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.requires_grad_(False)
    names = [n for n, _ in model.named_parameters() if "lora_" in n]
    if not names:
        raise ConfigError(f"fl.lora.target_modules: {lora_cfg.target_modules} matched no module of the model")
    return model


def adapter_state(model: Any) -> TensorDict:
    """Every LoRA tensor (A and B) as float32 numpy, by parameter name."""
    return {
        n: p.detach().to(device="cpu", dtype=torch.float32).numpy().copy()
        for n, p in model.named_parameters()
        if "lora_" in n
    }


def load_adapter_state(model: Any, tensors: dict[str, np.ndarray]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, arr in tensors.items():
            if name not in params:
                raise ConfigError(
                    f"adapter tensor {name!r} does not exist in this model (LoRA config differs?)"
                )
            p = params[name]
            if tuple(p.shape) != tuple(arr.shape):
                raise ConfigError(
                    f"adapter tensor {name!r} has shape {arr.shape}, model wants {tuple(p.shape)}"
                )
            p.copy_(torch.from_numpy(np.array(arr, dtype=np.float32)).to(p.dtype))


def update_sq_norm(update: dict[str, np.ndarray]) -> float:
    """||Delta||^2 over every tensor of an update, accumulated in float64 (float32 sums drift)."""
    total = 0.0
    for v in update.values():
        flat = np.asarray(v, dtype=np.float64).ravel()
        total += float(np.dot(flat, flat))
    return total


def trainable_names(model: Any) -> list[str]:
    return [n for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]


def cosine_lr(round_index: int, rounds: int, lr: float, lr_min: float) -> float:
    """Cosine decay across rounds (1-based ``round_index``): lr at round 1, lr_min at the last."""
    if rounds <= 1:
        return lr
    progress = (round_index - 1) / (rounds - 1)
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * progress))


@dataclass
class Encoded:
    input_ids: torch.Tensor  # (n, L) int64, right-padded
    labels: torch.Tensor  # (n, L) int64, -100 on padding
    lengths: torch.Tensor | None = None  # (n,) real tokens per row; derived from labels if not given

    def __post_init__(self) -> None:
        if self.lengths is None:
            self.lengths = (self.labels != -100).sum(dim=1)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


# What one extra forward/backward call costs, in padded tokens it could have computed instead:
# a group is split off only when it saves more padding than this (kernel launches, small matmuls).
GROUP_OVERHEAD_TOKENS = {"cpu": 32, "cuda": 2048}


def length_groups(lengths: Sequence[int], overhead_tokens: int) -> list[list[int]]:
    """Split a batch into groups of similar length, each padded only to its own longest row.

    Positions into ``lengths``, grouped so that sum(rows x longest) + overhead x groups is least:
    sorted by length, the best contiguous split by dynamic programming (batches are small).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [max(int(lengths[i]), 1) for i in order]
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[j]: least cost of the first j rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # rows i..j-1 form the last group, padded to sizes[j-1]
            cost = best[i] + (j - i) * sizes[j - 1] + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def grouped_loss_backward(
    model: Any, data: Encoded, idx: torch.Tensor, device: str, overhead_tokens: int
) -> tuple[torch.Tensor, int]:
    """The batch's mean token loss, computed on real tokens only; its gradient is accumulated.

    Each length group is cut to its longest row: padding is on the right and attention causal, so
    a real token never sees padding and its logits are those of the padded batch. The loss sums
    token losses over the groups and divides by the batch's predicted-token count, so loss and
    gradient equal the padded computation's (``model(input_ids, labels=labels).loss``). Returns
    (the loss, detached; the token positions computed).
    """
    lengths = data.lengths[idx].tolist()
    n_items = max(sum(max(n - 1, 0) for n in lengths), 1)  # the first token of a row is never predicted
    total = torch.zeros((), device=device)
    computed = 0
    for group in length_groups(lengths, overhead_tokens):
        rows = idx[group]
        width = max(max(lengths[g] for g in group), 2)
        input_ids = data.input_ids[rows, :width].to(device)
        labels = data.labels[rows, :width].to(device)
        logits = model(input_ids=input_ids).logits
        loss = (
            torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            / n_items
        )
        loss.backward()
        total += loss.detach()
        computed += len(group) * width
    return total, computed


def encode_examples(tokenizer: Any, examples: Sequence[Example], seq_len: int) -> Encoded:
    """BOS + prompt + response + EOS, truncated/padded to ``seq_len``; padding is not trained on."""
    pad = tokenizer.pad_token_id
    ids = np.full((len(examples), seq_len), pad, dtype=np.int64)
    labels = np.full((len(examples), seq_len), -100, dtype=np.int64)
    for i, ex in enumerate(examples):
        toks = tokenizer(ex.text(), add_special_tokens=False)["input_ids"]
        row = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + toks
        row = (row + [tokenizer.eos_token_id])[:seq_len]
        ids[i, : len(row)] = row
        labels[i, : len(row)] = row
    return Encoded(torch.from_numpy(ids), torch.from_numpy(labels))


class EnergyMeter:
    """NVML energy counter on a GPU node; otherwise None (the caller models and labels it)."""

    def __init__(self) -> None:
        self._handle = None
        if not torch.cuda.is_available():
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except Exception:  # noqa: BLE001 - any NVML failure means "not measurable here"
            self._handle = None

    def read_j(self) -> float | None:
        if self._handle is None:
            return None
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0  # mJ -> J


def local_train(
    model: Any,
    data: Encoded,
    steps: int,
    batch: int,
    lr: float,
    rng: np.random.Generator,
    torch_seed: int,
    weight_decay: float = 0.0,
    device: str = "cpu",
    useful_only: bool = True,
) -> dict[str, Any]:
    """``steps`` AdamW steps of ``batch`` examples drawn by ``rng``; returns the node's metrics.

    ``useful_only``: compute on real tokens only (length groups, ``grouped_loss_backward``); False
    is the padded path (every row at the full ``seq_len``), kept as the benchmark's baseline.
    """
    params = [p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    meter = EnergyMeter()
    e0 = meter.read_j()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    losses, tokens, computed = [], 0, 0
    overhead = GROUP_OVERHEAD_TOKENS["cuda" if device.startswith("cuda") else "cpu"]
    with TRAIN_LOCK:
        torch.manual_seed(torch_seed)  # dropout masks: the same every run with the same seed
        model.train()
        t0 = time.perf_counter()
        for _ in range(steps):
            idx = torch.from_numpy(rng.choice(len(data), size=batch, replace=len(data) < batch))
            tokens += int(data.lengths[idx].sum())  # real tokens, counted on the host: no device sync
            optimizer.zero_grad(set_to_none=True)
            if useful_only:
                loss, width = grouped_loss_backward(model, data, idx, device, overhead)
                computed += width
            else:
                # Padding is on the right, so causal attention never lets a real token see it: no
                # mask needed, which keeps the fused causal attention path (and matches plain loops).
                labels = data.labels[idx].to(device)
                loss = model(input_ids=data.input_ids[idx].to(device), labels=labels).loss
                loss.backward()
                loss = loss.detach()
                computed += int(labels.numel())
            optimizer.step()
            losses.append(loss)  # no per-step device sync
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    loss_values = [float(x) for x in torch.stack(losses).float().cpu()]
    if device.startswith("cuda"):
        peak, peak_kind = int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    else:
        peak, peak_kind = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_rss_peak"
    e1 = meter.read_j()
    return {
        "loss": float(np.mean(loss_values)),
        "loss_last": loss_values[-1],
        "steps": steps,
        "tokens": tokens,  # real tokens trained on (the round's data accounting)
        "computed_tokens": computed,  # token positions the model computed (real + group padding)
        "useful_fraction": tokens / computed if computed else 0.0,
        "train_time_s": elapsed,
        "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,  # useful tokens per second
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "energy_j": None if e0 is None or e1 is None else e1 - e0,
        "energy_source": "nvml" if e0 is not None and e1 is not None else "modeled",
    }


# Below this many parameters a CPU forward is too small to split across threads: OpenMP's
# spin-waiting costs more than it saves, and on a shared host (a dry run's node processes, other
# jobs) it burns the cores the nodes need. Measured on the dry run's tiny Llama under load:
# evaluate 2.5-6 s wall with 2 threads, 0.4-0.8 s with one.
SMALL_MODEL_PARAMS = 20_000_000


@contextlib.contextmanager
def _cpu_threads_for(model: Any, device: str) -> Iterator[None]:
    """One torch thread while evaluating a small model on the CPU; as configured otherwise."""
    small = not device.startswith("cuda") and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
    before = torch.get_num_threads()
    if small and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@torch.no_grad()
def evaluate(model: Any, data: Encoded, batch: int = 16, device: str = "cpu") -> float:
    """Mean token-level cross-entropy (nats) over ``data``; perplexity is exp of it."""
    model.eval()
    total, count = 0.0, 0
    # Rows sorted by length, each batch cut to its longest row: no compute on padding (right
    # padding and causal attention leave the real tokens' logits unchanged; see local_train).
    order = torch.argsort(data.lengths, stable=True)
    with TRAIN_LOCK, _cpu_threads_for(model, device):
        for start in range(0, len(data), batch):
            rows = order[start : start + batch]
            width = max(int(data.lengths[rows].max()), 2)
            ids = data.input_ids[rows, :width].to(device)
            labels = data.labels[rows, :width].to(device)
            logits = model(input_ids=ids).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]),
                shift_labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total += float(loss)
            count += int((shift_labels != -100).sum())
    return total / max(count, 1)


@dataclass
class Workload:
    """Everything a process needs to train or evaluate: model, tokenizer, its data."""

    model: Any
    tokenizer: Any
    train: Encoded
    validation: Encoded
    device: str
    memory_plan: dict[str, Any] | None = None  # what fl.sizing.plan_memory chose, for the run record


def build_workload(fl_cfg: Any, seed: int, num_clients: int, client: int | None) -> Workload:
    """The model with LoRA and the data of ``client`` (or, for the coordinator, None: all train).

    Every process derives the same data split, partition, tokenizer and base model from
    ``seed``, so nodes and coordinator agree without shipping any of it.
    """
    from fl.data import load_examples, partition, split_validation

    d = fl_cfg.data
    examples = load_examples(d.source, d.path, d.num_samples, seed)
    rng = np.random.default_rng([seed, 7])
    train, val = split_validation(examples, d.validation_fraction, rng)
    tokenizer = load_tokenizer(fl_cfg.model, [e.text() for e in train])
    device = "cuda" if torch.cuda.is_available() and fl_cfg.model.source == "pretrained" else "cpu"
    model_cfg, memory = resolve_memory(fl_cfg, len(tokenizer), device)
    base = load_base_model(model_cfg, tokenizer, seed, d.seq_len, device)
    model = add_lora(base, model_cfg, fl_cfg.lora, seed)
    if client is not None:
        parts = partition(
            train, num_clients, d.partition, np.random.default_rng([seed, 11]), d.dirichlet_alpha
        )
        train = [train[i] for i in parts[client]]
    return Workload(
        model,
        tokenizer,
        encode_examples(tokenizer, train, d.seq_len),
        encode_examples(tokenizer, val, d.seq_len)
        if val
        else encode_examples(tokenizer, train[:1], d.seq_len),
        device,
        memory.to_record(),
    )


def resolve_memory(fl_cfg: Any, vocab_size: int, device: str) -> tuple[Any, Any]:
    """``fl.model`` with ``auto`` gradient checkpointing / 4-bit resolved against the free GPU memory
    (``fl.sizing.plan_memory``), and the plan that says what was chosen and why."""
    from fl.sizing import model_dims, plan_memory

    m = fl_cfg.model
    free = int(torch.cuda.mem_get_info()[0]) if device.startswith("cuda") else None
    dims = model_dims(m, vocab_size if m.source == "tiny" else None)
    plan = plan_memory(
        dims,
        fl_cfg.training.batch_size,
        fl_cfg.data.seq_len,
        _torch_dtype(m.dtype).itemsize,
        m.gradient_checkpointing,
        m.load_in_4bit,
        free,
    )
    update = {"gradient_checkpointing": plan.gradient_checkpointing, "load_in_4bit": plan.load_in_4bit}
    return m.model_copy(update=update), plan
