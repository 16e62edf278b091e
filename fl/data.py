"""Instruction data: Alpaca and Dolly-15k from local files, a prompt template, partitions.

Native layouts:
- Alpaca: a JSON list (or JSONL) of ``{"instruction", "input", "output"}``.
- Dolly-15k: JSONL of ``{"instruction", "context", "response", "category"}``.
Both become ``Example(instruction, context, response, category)``. ``generate_alpaca`` writes a
small instruction dataset in Alpaca layout (plus a ``category`` key), deterministic from a seed,
so tests and the dry run need no download.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drivers.errors import ConfigError

# The Alpaca template (the one FlowerTune uses for this model).
_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
)
_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass(frozen=True)
class Example:
    instruction: str
    context: str
    response: str
    category: str = ""

    def prompt(self) -> str:
        if self.context:
            return _WITH_INPUT.format(instruction=self.instruction, context=self.context)
        return _NO_INPUT.format(instruction=self.instruction)

    def text(self) -> str:
        return self.prompt() + self.response


def _read_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConfigError(f"fl.data.path: {path}: no such file")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"fl.data.path: {path}: not JSON or JSONL ({exc})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ConfigError(f"fl.data.path: {path}: expected a list of objects")
    return records


def _field(record: dict, key: str, path: Path, i: int, required: bool = True) -> str:
    value = record.get(key, "")
    if required and key not in record:
        raise ConfigError(f"fl.data.path: {path}: record {i} lacks {key!r} (has {sorted(record)})")
    if not isinstance(value, str):
        raise ConfigError(f"fl.data.path: {path}: record {i} field {key!r} must be a string")
    return value


def load_alpaca(path: str | Path) -> list[Example]:
    path = Path(path)
    return [
        Example(
            _field(r, "instruction", path, i),
            _field(r, "input", path, i, required=False),
            _field(r, "output", path, i),
            _field(r, "category", path, i, required=False),
        )
        for i, r in enumerate(_read_records(path))
    ]


def load_dolly(path: str | Path) -> list[Example]:
    path = Path(path)
    return [
        Example(
            _field(r, "instruction", path, i),
            _field(r, "context", path, i, required=False),
            _field(r, "response", path, i),
            _field(r, "category", path, i),
        )
        for i, r in enumerate(_read_records(path))
    ]


# --- the generated dataset ----------------------------------------------------------------------
_COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
_THINGS = ["apple", "leaf", "sky", "banana", "coal", "snow", "carrot", "grape", "cherry", "frog"]
_THING_COLOUR = dict(
    zip(
        _THINGS,
        ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "red", "green"],
        strict=True,
    )
)
_WORDS = ["cat", "dog", "sun", "moon", "tree", "river", "stone", "bird", "fish", "road", "hill", "star"]


def generate_alpaca(num_samples: int, seed: int) -> list[dict]:
    """A small, learnable instruction set in Alpaca layout (+ ``category``), deterministic."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(num_samples):
        kind = int(rng.integers(4))
        if kind == 0:
            a, b = (int(v) for v in rng.integers(0, 10, 2))
            rec = {
                "instruction": "Add the two numbers.",
                "input": f"{a} and {b}",
                "output": f"{a + b}",
                "category": "arithmetic",
            }
        elif kind == 1:
            thing = _THINGS[int(rng.integers(len(_THINGS)))]
            rec = {
                "instruction": f"What colour is the {thing}?",
                "input": "",
                "output": f"The {thing} is {_THING_COLOUR[thing]}.",
                "category": "open_qa",
            }
        elif kind == 2:
            words = [_WORDS[int(i)] for i in rng.choice(len(_WORDS), 3, replace=False)]
            rec = {
                "instruction": "Reverse the order of the words.",
                "input": " ".join(words),
                "output": " ".join(reversed(words)),
                "category": "rewriting",
            }
        else:
            word = _WORDS[int(rng.integers(len(_WORDS)))]
            n = int(rng.integers(1, 4))
            rec = {
                "instruction": f"Repeat the word {n} times.",
                "input": word,
                "output": " ".join([word] * n),
                "category": "generation",
            }
        records.append(rec)
    return records


def write_generated(path: str | Path, num_samples: int, seed: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(generate_alpaca(num_samples, seed), indent=1), encoding="utf-8")
    return path


def load_examples(source: str, path: str, num_samples: int, seed: int) -> list[Example]:
    """By ``fl.data.source``: generated, alpaca or dolly (the latter two need ``fl.data.path``)."""
    if source == "generated":
        return [
            Example(r["instruction"], r["input"], r["output"], r["category"])
            for r in generate_alpaca(num_samples, seed)
        ]
    if not path:
        raise ConfigError(f"fl.data.path: source {source!r} needs a local JSON/JSONL file path")
    if source == "alpaca":
        return load_alpaca(path)
    if source == "dolly":
        return load_dolly(path)
    raise ConfigError(f"fl.data.source: {source!r}; allowed generated, alpaca, dolly")


# --- splits and partitions ----------------------------------------------------------------------
def split_validation(
    examples: Sequence[Example], fraction: float, rng: np.random.Generator
) -> tuple[list[Example], list[Example]]:
    order = rng.permutation(len(examples))
    n_val = max(1, int(round(fraction * len(examples)))) if fraction > 0 else 0
    val = [examples[i] for i in order[:n_val]]
    train = [examples[i] for i in order[n_val:]]
    return train, val


def partition(
    examples: Sequence[Example], num_clients: int, scheme: str, rng: np.random.Generator, alpha: float = 0.5
) -> list[list[int]]:
    """Indices of each client's examples: ``iid``, ``category`` (round-robin categories), ``dirichlet``."""
    n = len(examples)
    if num_clients < 1 or n < num_clients:
        raise ConfigError(f"fl.data: cannot split {n} examples over {num_clients} clients")
    if scheme == "iid":
        order = rng.permutation(n)
        return [sorted(order[k::num_clients].tolist()) for k in range(num_clients)]
    categories = sorted({e.category for e in examples})
    by_cat = {c: [i for i, e in enumerate(examples) if e.category == c] for c in categories}
    if scheme == "category":
        if len(categories) < 2:
            raise ConfigError("fl.data.partition=category needs a dataset with categories (Dolly)")
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for j, c in enumerate(categories):
            parts[j % num_clients].extend(by_cat[c])
        # A client left without a category gets a share of the largest part.
        for k in range(num_clients):
            if not parts[k]:
                donor = max(range(num_clients), key=lambda i: len(parts[i]))
                half = len(parts[donor]) // 2
                parts[k], parts[donor] = parts[donor][half:], parts[donor][:half]
        return [sorted(p) for p in parts]
    if scheme == "dirichlet":
        parts = [[] for _ in range(num_clients)]
        for c in categories:
            idx = rng.permutation(by_cat[c])
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        for k in range(num_clients):  # every client needs at least one example
            if not parts[k]:
                donor = max(range(num_clients), key=lambda i: len(parts[i]))
                parts[k].append(parts[donor].pop())
        return [sorted(p) for p in parts]
    raise ConfigError(f"fl.data.partition: {scheme!r}; allowed iid, category, dirichlet")
