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
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # "auto": on only when the estimated training memory does not fit the node's free GPU memory.
    load_in_4bit: bool | Literal["auto"] = False
    gradient_checkpointing: bool | Literal["auto"] = False
    tiny_hidden: int = Field(64, ge=8)
    tiny_layers: int = Field(2, ge=1)
    tiny_heads: int = Field(4, ge=1)
    tiny_vocab: int = Field(512, ge=64)


class LoraSection(Section):
    r: int = Field(8, ge=1, le=256)
    alpha: PositiveFloat = 16.0
    dropout: Probability = 0.05
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    mode: Literal["standard", "ffa"] = Field("ffa", description="ffa: A frozen and shared, only B sent")


class DataSection(Section):
    source: Literal["generated", "alpaca", "dolly"] = "generated"
    path: str = Field("", description="alpaca/dolly: local JSON or JSONL file")
    partition: Literal["iid", "category", "dirichlet"] = "iid"
    dirichlet_alpha: PositiveFloat = 0.5
    num_samples: int = Field(400, ge=8)
    validation_fraction: Probability = 0.1
    seq_len: int = Field(64, ge=8, le=8192)


class TrainingSection(Section):
    lr: PositiveFloat = 5e-4
    lr_min: PositiveFloat = 1e-6
    local_steps: int = Field(4, ge=1)
    batch_size: int = Field(8, ge=1)
    weight_decay: NonNegFloat = 0.0


class TransportSection(Section):
    bind: str = "tcp://127.0.0.1:5570"
    insecure: bool = Field(False, description="turn CURVE off; allowed on loopback only")
    keys_dir: Path = Path("keys")
    heartbeat_s: PositiveFloat = 1.0
    heartbeat_misses: int = Field(5, ge=1)
    round_deadline_s: PositiveFloat = 120.0
    max_message_bytes: int = Field(256 * 1024 * 1024, ge=1024)
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
    rounds: int = Field(5, ge=1, le=10_000)
    aggregation: Literal["ota", "digital"] = "ota"
    airlink: Literal["symbol", "radio"] = "symbol"
    normalization: Literal["max", "mean"] = "max"
    digital_reference: bool = Field(True, description="nodes also upload digitally: NMSE reference, fallback")
    model: ModelSection = ModelSection()
    lora: LoraSection = LoraSection()
    data: DataSection = DataSection()
    training: TrainingSection = TrainingSection()
    transport: TransportSection = TransportSection()
