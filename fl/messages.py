"""The wire's validation layer: a type and a range for every field of every message.

A peer's header is parsed by ``load_json`` (integers at most 19 digits, finite floats only,
nesting at most ``MAX_DEPTH`` deep), and its body is then checked against the pydantic model of
its message type (``BODIES``) before any code reads it. Whatever passes can be summed, logged,
checkpointed and encoded again without an overflow, a ``RecursionError`` or a non-JSON float.
Everything here raises ``ProtocolError`` naming the field, the value and what is allowed.

The ranges are physics, not taste: no LoRA update element comes near ``MAX_UPDATE_VALUE``
(and float32 sums of a few thousand of them stay finite), no round is longer than a day, no
clock runs past 1 THz. The coordinator checks what depends on the round (the plan's b_k, the
payload's names and shapes) itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drivers.errors import ProtocolError

MAX_INT = 2**63 - 1
MAX_HEADER_BYTES = 1024 * 1024
# Every message the protocol defines carries at most one tensor frame; a few spare.
MAX_FRAMES = 4
# Deep enough for every message the project sends (header > body > metrics > timing), far from
# the interpreter's recursion limit (a 985-deep object ended the run in json.dumps).
MAX_DEPTH = 12
MAX_LIST = 4096  # groups, means, variances, selected nodes
MAX_FREE_JSON_BYTES = 64 * 1024  # capabilities, metrics: recorded in every event and round record
MAX_TEXT = 4096
MAX_UPDATE_VALUE = 1e4  # |an update element|, |a group mean|; sqrt of a group variance
MAX_B_K = 1e9  # |b_k|: a precoding scalar (amplitude), far above any link budget
MAX_TIME_S = 1e11  # unix seconds until the year 5138; radio times are smaller
MAX_DURATION_S = 86_400.0
MAX_WEIGHT = 1e12


def _bounded_int(text: str) -> int:
    # Python refuses ints of more than 4,300 digits with a ValueError; refuse far earlier.
    if len(text.lstrip("-")) > 19:
        raise ValueError(f"integer {text[:24]}... has {len(text)} digits; at most {MAX_INT}")
    value = int(text)
    if abs(value) > MAX_INT:
        raise ValueError(f"integer {value} is outside +-{MAX_INT}")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:24]} overflows a float")
    return value


def _no_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which are not JSON and poison any sum they enter.
    raise ValueError(f"{name} is not a JSON number")


def depth(value: Any) -> int:
    """How deep ``value`` nests (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            return d
        stack.extend((c, d + 1) for c in children)
    return deepest


def load_json(raw: bytes | memoryview, where: str) -> Any:
    """Strict JSON from a peer: UTF-8, bounded integers, finite floats, bounded nesting."""
    try:
        value = json.loads(
            bytes(raw).decode("utf-8"),
            parse_int=_bounded_int,
            parse_float=_finite_float,
            parse_constant=_no_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(
            f"{where} is not UTF-8 JSON within limits ({type(exc).__name__}: {exc})"
        ) from None
    if depth(value) > MAX_DEPTH:
        raise ProtocolError(f"{where} nests more than {MAX_DEPTH} levels deep")
    return value


def inbound_frame_cap(shapes: Mapping[str, tuple[int, ...]], configured: int) -> int:
    """The largest frame a peer of this run needs to send: the adapter (tensor ``shapes``) as
    one float32 safetensors frame (the biggest tensor frame of any message) plus room for its
    header, or the header cap; never above the configured ``fl.transport.max_message_bytes``."""
    reals = sum(math.prod(shape) for shape in shapes.values())
    need = max(4 * reals + 64 * 1024 + 256 * len(shapes), MAX_HEADER_BYTES)
    return int(min(configured, need))


def message_size_problem(
    sizes: list[int], max_frame_bytes: int | None, max_total_bytes: int | None
) -> str | None:
    """Frame count and sizes, checked before a byte of the message is parsed."""
    if not sizes:
        return "empty message"
    if len(sizes) > MAX_FRAMES + 1:
        return f"{len(sizes)} frames; at most {MAX_FRAMES} tensor frames are allowed"
    if sizes[0] > MAX_HEADER_BYTES:
        return f"header frame is {sizes[0]} bytes, over {MAX_HEADER_BYTES}"
    if max_frame_bytes is not None:
        for i, n in enumerate(sizes):
            if n > max_frame_bytes:
                return f"frame {i} is {n} bytes, over the cap of {max_frame_bytes}"
    if max_total_bytes is not None and sum(sizes) > max_total_bytes:
        return f"the message is {sum(sizes)} bytes, over the cap of {max_total_bytes}"
    return None


# --- field types ----------------------------------------------------------------------------------
Finite = Annotated[float, Field(allow_inf_nan=False)]
Int = Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)]
Count = Annotated[int, Field(ge=0, le=MAX_INT)]
Round = Annotated[int, Field(ge=0, le=10_000_000)]
TimeS = Annotated[float, Field(ge=-MAX_TIME_S, le=MAX_TIME_S, allow_inf_nan=False)]
DurationS = Annotated[float, Field(ge=0, le=MAX_DURATION_S, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Weight = Annotated[float, Field(gt=0, le=MAX_WEIGHT, allow_inf_nan=False)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Name = Annotated[str, Field(max_length=256)]
# One complex scalar as [re, im].
BK = Annotated[
    list[Annotated[float, Field(ge=-MAX_B_K, le=MAX_B_K, allow_inf_nan=False)]],
    Field(min_length=2, max_length=2),
]
Means = Annotated[
    list[Annotated[float, Field(ge=-MAX_UPDATE_VALUE, le=MAX_UPDATE_VALUE, allow_inf_nan=False)]],
    Field(max_length=MAX_LIST),
]
Variances = Annotated[
    list[Annotated[float, Field(ge=0, le=MAX_UPDATE_VALUE**2, allow_inf_nan=False)]],
    Field(max_length=MAX_LIST),
]
Groups = Annotated[list[Name], Field(max_length=MAX_LIST)]


def _small_json(value: Any, field: str) -> Any:
    size = len(json.dumps(value, separators=(",", ":")))
    if size > MAX_FREE_JSON_BYTES:
        raise ValueError(f"{field} is {size} bytes of JSON; at most {MAX_FREE_JSON_BYTES}")
    return value


class Body(BaseModel):
    """A message body: strict types (no coercion, no bools for numbers), unknown keys refused."""

    model_config = ConfigDict(strict=True, extra="forbid")


class FreeForm(Body):
    """A record a peer describes itself with: known keys typed, other keys kept, size bounded."""

    model_config = ConfigDict(strict=True, extra="allow")


class Timing(FreeForm):
    load_s: DurationS | None = None
    train_s: DurationS | None = None
    update_s: DurationS | None = None

    def model_post_init(self, _: Any) -> None:
        # Any other slice a node reports is a duration too.
        for key, value in (self.__pydantic_extra__ or {}).items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"timing.{key} must be a number of seconds (got {value!r:.40})")
            if not 0 <= value <= MAX_DURATION_S:
                raise ValueError(f"timing.{key}={value!r:.40}; allowed 0..{MAX_DURATION_S} s")


class NodeMetrics(FreeForm):
    """What a node reports about its local training (``fl.training.local_train`` and more)."""

    loss: Finite | None = None
    loss_last: Finite | None = None
    update_sq_norm: Annotated[float, Field(ge=0, le=1e30, allow_inf_nan=False)] | None = None
    steps: Count | None = None
    tokens: Count | None = None
    computed_tokens: Count | None = None
    train_time_s: DurationS | None = None
    energy_j: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    timing: Timing | None = None

    def model_post_init(self, _: Any) -> None:
        _small_json(self.model_dump(mode="json", exclude_none=True), "metrics")


class Capabilities(FreeForm):
    gpu: Name | None = None
    memory_bytes: Count | None = None
    samples: Count | None = None
    radio: Name | None = None
    pid: Count | None = None
    incarnation: Annotated[str, Field(max_length=64)] | None = None

    def model_post_init(self, _: Any) -> None:
        _small_json(self.model_dump(mode="json", exclude_none=True), "capabilities")


class Hello(Body):
    capabilities: Capabilities


class Welcome(Body):
    run_id: Name
    next_round: Round


class Empty(Body):
    pass


class TimeReport(Body):
    pps_edge_unix_s: Annotated[float, Field(ge=0, le=MAX_TIME_S, allow_inf_nan=False)]
    radio_time_s: TimeS
    source: Name


class Plan(Body):
    version: Round
    local_steps: Annotated[int, Field(ge=1, le=1_000_000)]
    batch: Annotated[int, Field(ge=1, le=1_000_000)]
    lr: Annotated[float, Field(gt=0, le=1e3, allow_inf_nan=False)]
    clock_hz: Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False)]
    selected: Annotated[list[Annotated[int, Field(ge=0, le=1_000_000)]], Field(max_length=MAX_LIST)]
    aggregation: Literal["digital", "ota"]
    lora_mode: Literal["standard", "ffa"]
    slot_s: TimeS
    b_k: BK
    deadline_s: Annotated[float, Field(gt=0, le=MAX_DURATION_S, allow_inf_nan=False)]
    weight: Weight | None = None
    reference: bool = False


class Stats(Body):
    weight: Weight
    groups: Groups
    mean: Means
    var: Variances
    metrics: NodeMetrics


class SharedStats(Body):
    mean: Means
    var: Variances
    b_k: BK
    slot_s: TimeS
    num_symbols: Annotated[int, Field(ge=0, le=2**40)]
    groups: Groups | None = None


class Ota(Body):
    slot_s: TimeS
    b_k: BK
    sent_locally: bool
    encode_s: DurationS | None = None


class Digital(Body):
    weight: Weight
    purpose: Literal["update", "reference"]
    metrics: NodeMetrics


class RoundOutcome(FreeForm):
    val_loss: Finite | None = None
    dropped: list[Count] | None = None
    delivered: list[Count] | None = None


class Result(Body):
    metrics: RoundOutcome
    version: Round


class Error(Body):
    code: Name
    reason: Text


# Keyed by MsgType's value (fl.protocol imports this module, not the other way round).
BODIES: dict[str, type[Body]] = {
    "hello": Hello,
    "welcome": Welcome,
    "heartbeat": Empty,
    "time_report": TimeReport,
    "plan": Plan,
    "stats": Stats,
    "shared_stats": SharedStats,
    "ota": Ota,
    "digital": Digital,
    "result": Result,
    "bye": Empty,
    "error": Error,
}


def check_body(kind: str, body: Any) -> None:
    """Raise ``ProtocolError`` naming the first bad field of a ``kind`` message's body."""
    if not isinstance(body, dict):
        raise ProtocolError(f"{kind}: body must be an object (got {type(body).__name__})")
    try:
        BODIES[kind].model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        more = f" ({exc.error_count()} problems)" if exc.error_count() > 1 else ""
        if err["type"] == "missing":
            raise ProtocolError(f"{kind}: body lacks the required key {where!r}{more}") from None
        if err["type"] == "extra_forbidden":
            raise ProtocolError(f"{kind}: body.{where} is not a field of {kind}{more}") from None
        value = repr(err.get("input"))
        value = value if len(value) <= 80 else value[:80] + "..."
        raise ProtocolError(f"{kind}: body.{where}={value}: {err['msg']}{more}") from None
    except ValueError as exc:  # a model_post_init check
        raise ProtocolError(f"{kind}: {exc}") from None
