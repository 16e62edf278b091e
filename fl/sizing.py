"""The size of the model that trains: its dimensions (for FLOPs) and its training memory.

Shared by ``fl.cost`` (cycles per sample) and ``fl.training`` (memory savers chosen by need), so
neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.errors import ConfigError


@dataclass(frozen=True)
class ModelDims:
    """The shape of a Llama-family decoder, enough to count its matmul FLOPs."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int

    @property
    def matmul_params(self) -> int:
        """N: weights of every linear layer (q, k, v, o, gate, up, down) plus the LM head."""
        h, kv_dim = self.hidden_size, self.hidden_size * self.num_kv_heads // self.num_heads
        attention = 2 * h * h + 2 * h * kv_dim
        mlp = 3 * h * self.intermediate_size
        return self.num_layers * (attention + mlp) + self.vocab_size * h

    @classmethod
    def from_hf_config(cls, cfg: Any) -> ModelDims:
        heads = int(cfg.num_attention_heads)
        return cls(
            vocab_size=int(cfg.vocab_size),
            hidden_size=int(cfg.hidden_size),
            intermediate_size=int(cfg.intermediate_size),
            num_layers=int(cfg.num_hidden_layers),
            num_heads=heads,
            num_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
        )


def model_dims(model_cfg: Any, vocab_size: int | None = None) -> ModelDims:
    """The dimensions of ``fl.model``: the tiny Llama's from the config, else the model's config.json."""
    if model_cfg.source == "tiny":
        return ModelDims(
            vocab_size=int(vocab_size or model_cfg.tiny_vocab),
            hidden_size=model_cfg.tiny_hidden,
            intermediate_size=2 * model_cfg.tiny_hidden,  # as fl.training.tiny_llama_config builds it
            num_layers=model_cfg.tiny_layers,
            num_heads=model_cfg.tiny_heads,
            num_kv_heads=model_cfg.tiny_heads,
        )
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(model_cfg.path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure: the path does not hold a model config
        raise ConfigError(
            f"fl.model.path: {model_cfg.path!r} has no readable model config.json ({type(exc).__name__}); "
            "the cost model needs the model's dimensions"
        ) from None
    return ModelDims.from_hf_config(cfg)


# --- memory: gradient checkpointing and 4-bit weights by need ---------------------------------------
# Activation bytes kept per token per decoder layer for the backward pass, in units of
# hidden_size x bytes per element (16-bit): fitted to OpenLLaMA-3B on an H200 with SDPA attention
# (16x512 bf16: 36.6 GiB without checkpointing, 11.3 GiB with; issue 12), close to the 34 h of
# Korthikanti et al. for a GPT layer with a wider (SwiGLU) MLP.
ACTIVATION_H_PER_TOKEN_LAYER = 21.0
_SLACK = 1.10  # allocator fragmentation and workspaces


@dataclass(frozen=True)
class MemoryPlan:
    """What a node turns on to fit its GPU, and why (recorded in the run record)."""

    gradient_checkpointing: bool
    load_in_4bit: bool
    estimated_bytes: int
    free_bytes: int | None
    reason: str

    def to_record(self) -> dict[str, Any]:
        return {
            "gradient_checkpointing": self.gradient_checkpointing,
            "load_in_4bit": self.load_in_4bit,
            "estimated_gib": self.estimated_bytes / 2**30,
            "free_gib": None if self.free_bytes is None else self.free_bytes / 2**30,
            "reason": self.reason,
        }


def training_memory_bytes(
    dims: ModelDims, batch: int, seq_len: int, bytes_per_param: float, checkpointing: bool, four_bit: bool
) -> int:
    """Peak bytes of LoRA training: weights + activations kept for backward + fp32 logits and their
    gradient (+ the softmax's copy). Checkpointing keeps each layer's input and one layer's full set."""
    tokens = batch * seq_len
    weight_bytes = (dims.matmul_params + dims.vocab_size * dims.hidden_size) * (
        0.55 if four_bit else bytes_per_param
    )
    per_layer = ACTIVATION_H_PER_TOKEN_LAYER * dims.hidden_size * bytes_per_param * tokens
    if checkpointing:
        activations = dims.num_layers * tokens * dims.hidden_size * bytes_per_param + per_layer
    else:
        activations = dims.num_layers * per_layer
    logits = 3 * tokens * dims.vocab_size * 4
    return int(_SLACK * (weight_bytes + activations + logits))


def plan_memory(
    dims: ModelDims,
    batch: int,
    seq_len: int,
    bytes_per_param: float,
    gradient_checkpointing: bool | str,
    load_in_4bit: bool | str,
    free_bytes: int | None,
) -> MemoryPlan:
    """Resolve ``auto`` settings: the cheapest set of memory savers whose estimate fits ``free_bytes``.

    Order: nothing, then checkpointing (costs ~1/3 more compute), then 4-bit weights as well (slower
    matmuls, CUDA only). A setting given as True/False is kept. ``free_bytes`` None (no GPU): auto
    means off, since a CPU node's memory is not the limit this model is for.
    """
    choices = [
        (gc, q)
        for q in ([False, True] if load_in_4bit == "auto" else [bool(load_in_4bit)])
        for gc in ([False, True] if gradient_checkpointing == "auto" else [bool(gradient_checkpointing)])
    ]
    if free_bytes is None:
        gc, q = choices[0]
        need = training_memory_bytes(dims, batch, seq_len, bytes_per_param, gc, q)
        return MemoryPlan(gc, q, need, None, "no GPU: auto resolves to off")
    for gc, q in choices:
        need = training_memory_bytes(dims, batch, seq_len, bytes_per_param, gc, q)
        if need <= free_bytes:
            return MemoryPlan(
                gc, q, need, free_bytes, f"fits: {need / 2**30:.1f} of {free_bytes / 2**30:.1f} GiB free"
            )
    gc, q = choices[-1]
    need = training_memory_bytes(dims, batch, seq_len, bytes_per_param, gc, q)
    return MemoryPlan(
        gc, q, need, free_bytes,
        f"does not fit even so: {need / 2**30:.1f} GiB estimated, {free_bytes / 2**30:.1f} GiB free; "
        "lower fl.training.batch_size or fl.data.seq_len",
    )  # fmt: skip
