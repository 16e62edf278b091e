"""The compute cost model of the model that actually trains (docs/explanation/system-model.md section 4, issue 12 point 8).

The allocation prices a round with T_k = tau c b_k / f_k and E_k = kappa tau c b_k f_k^2, where c
is cycles per sample. Here c comes from the workload the nodes really run:

    c = FLOPs per sample / FLOPs per cycle,  FLOPs per sample = FLOPs per token x tokens per sample

- FLOPs per token: ~4 N for LoRA (forward 2N, activation gradients 2N; the frozen base gets no
  weight gradients, and the adapters are tiny), N the parameters that take part in a matmul (every
  linear layer and the LM head; the input embedding is a lookup). Full fine-tuning would be 6N.
- Tokens per sample: the mean number of real tokens of the training examples (BOS + text + EOS,
  cut at ``fl.data.seq_len``), since nodes train on real tokens only (length-grouped batches).
- FLOPs per cycle: a prior by device kind until the nodes have trained; then calibrated online from
  what they measure (tokens/s at the clock they ran), so the planner prices what the hardware does.

``check_rounds`` tells, before any device opens, whether ``fl.rounds`` rounds can be paid for at
all (batch 1, no antenna movement: a necessary condition), and which budget to raise by how much.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from drivers.errors import ConfigError
from fl.sizing import model_dims

# Priors for the sustained FLOPs per clock cycle before any node has measured (then calibrated):
# a CPU node (fp32 FMA vectors, far from peak on small matmuls) and a GPU node (an H100-class part
# at ~40 % of its dense bf16 peak: 0.4 x 989e12 FLOP/s / 1.98e9 Hz).
FLOPS_PER_CYCLE_PRIOR = {"cpu": 4.0, "gpu": 2.0e5}
# FLOPs per matmul parameter per token: LoRA (base frozen) and full fine-tuning.
FLOPS_PER_PARAM = {"lora": 4.0, "full": 6.0}
_TOKEN_SAMPLE = 2000  # examples tokenized to estimate the mean length (deterministic choice)


@dataclass(frozen=True)
class WorkloadCost:
    """FLOPs per token x tokens per sample / FLOPs per cycle = cycles per sample."""

    flops_per_token: float
    tokens_per_sample: float
    flops_per_cycle: float
    source: str  # "model" (prior FLOPs per cycle), "calibrated" (from the nodes) or "config"
    observations: int = 0  # node-rounds the calibration has seen
    cycles_override: float | None = None  # allocation.cycles_per_sample set explicitly in the config

    @property
    def flops_per_sample(self) -> float:
        return self.flops_per_token * self.tokens_per_sample

    @property
    def cycles_per_sample(self) -> float:
        if self.cycles_override is not None:
            return self.cycles_override
        return self.flops_per_sample / self.flops_per_cycle

    def to_record(self) -> dict[str, Any]:
        return {
            "flops_per_token": self.flops_per_token,
            "tokens_per_sample": self.tokens_per_sample,
            "flops_per_sample": self.flops_per_sample,
            "flops_per_cycle": self.flops_per_cycle,
            "cycles_per_sample": self.cycles_per_sample,
            "source": self.source,
            "observations": self.observations,
        }

    def calibrated(self, node_metrics: Iterable[Mapping[str, Any]], clock_hz: float) -> WorkloadCost:
        """Fold in what nodes measured this round: the FLOPs per cycle they achieved.

        A node that ran ``tokens_per_s`` at clock ``f`` did ``tokens_per_s x FLOPs/token / f`` FLOPs
        per cycle. The clock is the one the node applied (NVML, cpufreq), else ``clock_hz`` (the
        hardware ran at its own full speed, taken as the planner's maximum clock). The estimate is the
        mean over every node-round seen so far, so one slow round moves it little.
        """
        if self.cycles_override is not None:
            return self  # the config's number is the user's word
        seen: list[float] = []
        for m in node_metrics:
            rate = m.get("tokens_per_s")
            if not isinstance(rate, int | float) or not rate > 0 or not math.isfinite(rate):
                continue
            clock = m.get("clock") if isinstance(m.get("clock"), Mapping) else {}
            applied = clock.get("applied_hz") if clock.get("method") != "modeled" else None
            f = float(applied) if isinstance(applied, int | float) and applied > 0 else float(clock_hz)
            seen.append(float(rate) * self.flops_per_token / f)
        if not seen:
            return self
        n = self.observations
        prior = self.flops_per_cycle if n else 0.0  # the device prior is replaced, not averaged in
        mean = (prior * n + float(np.sum(seen))) / (n + len(seen))
        return replace(self, flops_per_cycle=mean, source="calibrated", observations=n + len(seen))


def costed_config(config: Any, cost: WorkloadCost) -> Any:
    """``config`` as the planner should see it: this workload's cycles/sample, and tau of
    ``fl.training.local_steps`` (the steps nodes really take), in ``allocation``."""
    alloc = config.allocation.model_copy(
        update={"cycles_per_sample": cost.cycles_per_sample, "local_steps": config.fl.training.local_steps}
    )
    return config.model_copy(update={"allocation": alloc})


def resumed_cost(cost: WorkloadCost, rounds: Sequence[Mapping[str, Any]]) -> WorkloadCost:
    """``cost`` with the calibration the last recorded round carried (a resumed run keeps it)."""
    costed = sorted(
        (r for r in rounds if isinstance(r.get("cost_model"), Mapping)), key=lambda r: r.get("round", 0)
    )
    if not costed or cost.cycles_override is not None:
        return cost
    last = costed[-1]["cost_model"]
    if last.get("source") != "calibrated":
        return cost
    return replace(
        cost,
        flops_per_cycle=float(last["flops_per_cycle"]),
        source="calibrated",
        observations=int(last.get("observations", 0)),
    )


def mean_tokens_per_sample(tokenizer: Any, texts: Sequence[str], seq_len: int) -> float:
    """Mean real tokens per example (BOS + text + EOS, cut at ``seq_len``), as the nodes encode them."""
    if not texts:
        raise ConfigError("fl.data: no training examples to price")
    extra = 1 + (tokenizer.bos_token_id is not None)
    lengths = [
        min(len(ids) + extra, seq_len)
        for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    ]
    return float(np.mean(lengths))


def workload_cost(config: Any) -> WorkloadCost:
    """The cost model of ``config``'s workload, before any node runs (FLOPs per cycle: the prior)."""
    from fl.data import load_examples, split_validation
    from fl.training import load_tokenizer

    fl = config.fl
    d = fl.data
    examples = load_examples(d.source, d.path, d.num_samples, config.run.seed)
    train, _ = split_validation(examples, d.validation_fraction, np.random.default_rng([config.run.seed, 7]))
    tokenizer = load_tokenizer(fl.model, [e.text() for e in train])  # the tiny model fits it on these
    pick = np.random.default_rng(0).permutation(len(train))[:_TOKEN_SAMPLE]
    tokens = mean_tokens_per_sample(tokenizer, [train[i].text() for i in sorted(pick)], d.seq_len)
    dims = model_dims(fl.model, len(tokenizer) if fl.model.source == "tiny" else None)
    kind = "gpu" if fl.model.source == "pretrained" else "cpu"
    # A cost other than the default is the user's word (by value: a resumed run reads a fully
    # resolved config.yaml, in which every field is written out).
    default = type(config.allocation).model_fields["cycles_per_sample"].default
    explicit = config.allocation.cycles_per_sample != default
    return WorkloadCost(
        flops_per_token=FLOPS_PER_PARAM["lora"] * dims.matmul_params,
        tokens_per_sample=tokens,
        flops_per_cycle=FLOPS_PER_CYCLE_PRIOR[kind],
        source="config" if explicit else "model",
        cycles_override=float(config.allocation.cycles_per_sample) if explicit else None,
    )


def check_rounds(config: Any, cost: WorkloadCost) -> dict[str, float]:
    """Refuse ``fl.rounds`` the budgets cannot pay even at batch 1 with no antenna movement.

    Each round needs at least tau c / f_max of compute plus the airtime; at the slowest clock that
    fits its share of the latency budget, K clients spend K kappa (tau c)^3 / deadline^2 J. The
    error names the budget to raise and by how much (or the most rounds the budgets allow).
    Returns the minimum latency and energy of the run (for the record).
    """
    from allocation.problem import airtime_s

    alloc, rounds = config.allocation, int(config.fl.rounds)
    tau, c = int(config.fl.training.local_steps), cost.cycles_per_sample
    air = airtime_s(alloc.payload_reals, alloc.bandwidth_hz, alloc.air_overhead_s)
    compute_s = tau * c / alloc.clock_max_hz

    def needs(r: int) -> tuple[float, float]:
        deadline = alloc.latency_budget_s / r - air
        latency = r * (compute_s + air)
        energy = (
            math.inf
            if deadline <= 0
            else r * alloc.clients_per_round * alloc.switched_capacitance * (tau * c) ** 3 / deadline**2
        )
        return latency, energy

    latency_j, energy_j = needs(rounds)
    where = (
        f"(cost model: {cost.cycles_per_sample:.3g} cycles/sample = {cost.flops_per_sample:.3g} FLOPs/sample "
        f"/ {cost.flops_per_cycle:.3g} FLOPs/cycle, {cost.source}; tau={tau} from fl.training.local_steps)"
    )
    fits = [r for r in range(rounds, 0, -1) if _fits(needs(r), alloc)]
    most = f"; or lower fl.rounds to {fits[0]}" if fits else ""
    if latency_j > alloc.latency_budget_s:
        raise ConfigError(
            f"fl.rounds={rounds}: allocation.latency_budget_s={alloc.latency_budget_s:g} cannot pay {rounds} "
            f"rounds of batch 1 ({compute_s:.4g} s compute at allocation.clock_max_hz + {air:.4g} s air each); "
            f"raise allocation.latency_budget_s to at least {latency_j:.4g} (by {latency_j - alloc.latency_budget_s:.4g})"
            f"{most} {where}"
        )
    if energy_j > alloc.energy_budget_j:
        raise ConfigError(
            f"fl.rounds={rounds}: allocation.energy_budget_j={alloc.energy_budget_j:g} cannot pay {rounds} "
            f"rounds of batch 1 within the latency budget; raise allocation.energy_budget_j to at least "
            f"{energy_j:.4g} (by {energy_j - alloc.energy_budget_j:.4g}){most} {where}"
        )
    return {"min_latency_s": latency_j, "min_energy_j": energy_j}


def _fits(need: tuple[float, float], alloc: Any) -> bool:
    return need[0] <= alloc.latency_budget_s and need[1] <= alloc.energy_budget_j
