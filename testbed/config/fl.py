"""The ``fl`` section: the aggregation scheme, the model and its LoRA adapters, the data, local
training and the coordinator-node transport.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from testbed.config.base import NonNegFloat, PositiveFloat, Probability, Section


class ModelSection(Section):
    source: Literal["tiny", "pretrained"] = Field(
        "tiny", description="tiny: a random small LlamaConfig; pretrained: load `path`"
    )
    path: str = Field("", description="local path (or hub id, if already cached) of the base model")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="the base model's weights"
    )
    # "auto": on only when the estimated training memory does not fit the node's free GPU memory.
    load_in_4bit: bool | Literal["auto"] = Field(
        False,
        description="4-bit base weights (bitsandbytes, GPU); auto: only when the model would not fit otherwise",
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        False, description="trade compute for memory; auto: only when the model would not fit otherwise"
    )
    tiny_hidden: int = Field(64, ge=8, description="tiny model: hidden size")
    tiny_layers: int = Field(2, ge=1, description="tiny model: layers")
    tiny_heads: int = Field(4, ge=1, description="tiny model: attention heads")
    tiny_vocab: int = Field(512, ge=64, description="tiny model: vocabulary size")


class LoraSection(Section):
    r: int = Field(8, ge=1, le=256, description="LoRA rank")
    alpha: PositiveFloat = Field(16.0, description="LoRA alpha (the update is scaled by alpha / r)")
    dropout: Probability = Field(0.05, description="LoRA dropout")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"], description="the projections LoRA adapts"
    )
    mode: Literal["standard", "ffa"] = Field("ffa", description="ffa: A frozen and shared, only B sent")


class DataSection(Section):
    source: Literal["generated", "alpaca", "dolly"] = Field(
        "generated",
        description="generated: a built-in instruction set; alpaca or dolly: the local file at `path`",
    )
    path: str = Field("", description="alpaca/dolly: local JSON or JSONL file")
    partition: Literal["iid", "category", "dirichlet"] = Field(
        "iid",
        description="how the samples split across clients: iid, by Dolly category, or Dirichlet(dirichlet_alpha)",
    )
    dirichlet_alpha: PositiveFloat = Field(0.5, description="dirichlet: smaller is more uneven")
    num_samples: int = Field(400, ge=8, description="samples in all, before the validation split")
    validation_fraction: Probability = Field(0.1, description="the share held out for validation")
    seq_len: int = Field(64, ge=8, le=8192, description="tokens per sample, at most")


class TrainingSection(Section):
    lr: PositiveFloat = Field(
        5e-4, description="the local optimizer's learning rate at round 1, cosine-decayed across the rounds"
    )
    lr_min: PositiveFloat = Field(1e-6, description="the learning rate at the last round")
    local_steps: int = Field(4, ge=1, description="tau, local steps per round")
    batch_size: int = Field(8, ge=1, description="local batch size")
    weight_decay: NonNegFloat = Field(0.0, description="the local optimizer's weight decay")


class TransportSection(Section):
    bind: str = "tcp://127.0.0.1:5570"
    insecure: bool = Field(False, description="turn CURVE off; allowed on loopback only")
    keys_dir: Path = Field(Path("keys"), description="where the CurveZMQ keys are (`testbed keys`)")
    heartbeat_s: PositiveFloat = Field(
        1.0, description="heartbeat period between the coordinator and the nodes"
    )
    heartbeat_misses: int = Field(5, ge=1, description="heartbeats missed before a peer counts as gone")
    round_deadline_s: PositiveFloat = Field(
        120.0, description="the longest a round waits for the selected nodes' updates"
    )
    max_message_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="the largest message accepted")
    max_clock_skew_s: PositiveFloat = Field(1e-6, description="refuse to start if radio times disagree more")
    connect: str = Field("", description="the address nodes dial; '' = the bind address")
    join_timeout_s: PositiveFloat = Field(120.0, description="how long the coordinator waits for every node")
    ota_guard_s: NonNegFloat = Field(0.05, description="OTA slot time = radio time now + this guard")
    # Against a hostile peer holding a valid key (fl.admission, fl.peers).
    peer_rate_hz: PositiveFloat = Field(
        50.0, description="messages a second one peer may send (heartbeats too)"
    )
    peer_burst: int = Field(200, ge=1, description="messages one peer may send at once, above the rate")
    inbox_size: int = Field(4096, ge=16, description="messages waiting for the coordinator, at most")
    inbox_per_peer: int = Field(256, ge=4, description="of which from any one peer, at most")
    max_missed_rounds: int = Field(
        2, ge=1, description="rounds a selected, heartbeating node may deliver nothing before it is dropped"
    )
    clip_norm: PositiveFloat | None = Field(
        None, description="scale each digital update down to this L2 norm before averaging (robust FedAvg)"
    )


class FLSection(Section):
    rounds: int = Field(5, ge=1, le=10_000, description="R, the federated rounds of a run")
    aggregation: Literal["ota", "digital"] = Field(
        "ota", description="ota: the updates summed over the air; digital: error-free FedAvg"
    )
    airlink: Literal["symbol", "radio"] = "symbol"
    normalization: Literal["max", "mean"] = Field(
        "max",
        description="the shared variance the clients normalize by: the largest of theirs, or the weighted mean",
    )
    digital_reference: bool = Field(True, description="nodes also upload digitally: NMSE reference, fallback")
    model: ModelSection = ModelSection()
    lora: LoraSection = LoraSection()
    data: DataSection = DataSection()
    training: TrainingSection = TrainingSection()
    transport: TransportSection = TransportSection()
