"""The cost model is the model that trains (issue 12, point 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.errors import ConfigError
from fl.cost import WorkloadCost, check_rounds, resumed_cost, workload_cost
from fl.sizing import model_dims
from testbed.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DRYRUN = str(ROOT / "configs" / "dryrun.yaml")


def test_matmul_params_count_the_real_models_linear_weights() -> None:
    import torch
    from transformers import LlamaForCausalLM

    from fl.training import tiny_llama_config

    cfg = load_config(DRYRUN, ["fl.model.tiny_hidden=48", "fl.model.tiny_heads=4", "fl.model.tiny_layers=3"])
    model = LlamaForCausalLM(tiny_llama_config(cfg.fl.model, 300, 64))
    counted = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model_dims(cfg.fl.model, 300).matmul_params == counted


def test_the_dry_runs_cost_is_its_tiny_llamas_and_fl_rounds_6_fits() -> None:
    cfg = load_config(DRYRUN, ["fl.rounds=6"])
    cost = workload_cost(cfg)
    dims = model_dims(cfg.fl.model)
    assert cost.source == "model" and cost.flops_per_token <= 4 * dims.matmul_params
    assert 10 < cost.tokens_per_sample <= cfg.fl.data.seq_len  # real tokens, not the padded length
    assert cost.cycles_per_sample < 1e-3 * cfg.allocation.cycles_per_sample  # far below the 3B default
    floor = check_rounds(cfg, cost)  # the old default could not pay 6 rounds; this one can
    assert floor["min_latency_s"] < cfg.allocation.latency_budget_s


def test_rounds_the_budgets_cannot_pay_fail_early_naming_the_budget_and_the_amount() -> None:
    cost = WorkloadCost(flops_per_token=1e9, tokens_per_sample=100, flops_per_cycle=1.0, source="model")
    # 1e11 cycles/sample, tau = 8, 2 GHz: 400 s of compute per round at batch 1.
    cfg = load_config(DRYRUN, ["fl.rounds=6"])
    with pytest.raises(ConfigError) as exc:
        check_rounds(cfg, cost)
    text = str(exc.value)
    assert "raise allocation.latency_budget_s to at least 2400" in text and "(by 1800)" in text
    assert "or lower fl.rounds to 1" in text
    cfg = load_config(
        DRYRUN, ["fl.rounds=6", "allocation.latency_budget_s=3000", "allocation.energy_budget_j=1"]
    )
    with pytest.raises(ConfigError, match=r"raise allocation.energy_budget_j to at least [0-9.e+]+ \(by"):
        check_rounds(cfg, cost)


def test_calibration_takes_the_nodes_measured_speed_and_survives_a_resume() -> None:
    cost = WorkloadCost(flops_per_token=1e6, tokens_per_sample=50, flops_per_cycle=4.0, source="model")
    nodes = [
        {"tokens_per_s": 4000.0, "clock": {"method": "modeled", "applied_hz": None}},
        {"tokens_per_s": 2000.0, "clock": {"method": "cpufreq", "applied_hz": 1e9}},
        {"tokens_per_s": float("nan")},  # ignored
    ]
    out = cost.calibrated(nodes, clock_hz=2e9)
    # 4000 * 1e6 / 2e9 = 2 and 2000 * 1e6 / 1e9 = 2 FLOPs per cycle: the prior (4) is replaced.
    assert out.source == "calibrated" and out.observations == 2 and out.flops_per_cycle == pytest.approx(2.0)
    assert out.cycles_per_sample == pytest.approx(50 * 1e6 / 2.0)
    again = out.calibrated([{"tokens_per_s": 16000.0, "clock": {"method": "modeled"}}], clock_hz=2e9)
    assert again.flops_per_cycle == pytest.approx((2.0 * 2 + 8.0) / 3)
    rounds = [{"round": 2, "cost_model": again.to_record()}, {"round": 1, "cost_model": out.to_record()}]
    assert resumed_cost(cost, rounds).flops_per_cycle == pytest.approx(again.flops_per_cycle)
    fixed = WorkloadCost(1e6, 50, 4.0, "config", cycles_override=3e9)
    assert fixed.calibrated(nodes, 2e9).cycles_per_sample == 3e9  # the config's number is kept


def test_memory_savers_are_chosen_by_need_and_recorded() -> None:
    from transformers import LlamaConfig

    from fl.sizing import ModelDims, plan_memory, training_memory_bytes
    from fl.training import OPEN_LLAMA_3B_SHAPE

    dims = ModelDims.from_hf_config(LlamaConfig(**OPEN_LLAMA_3B_SHAPE))
    gib = 2**30
    # Measured on an H200 (issue 12): 15.5 GiB at 4x512, 36.6 without / 11.3 with checkpointing at 16x512.
    for batch, gc, measured in ((4, False, 15.5), (16, False, 36.6), (16, True, 11.3)):
        estimate = training_memory_bytes(dims, batch, 512, 2, gc, False) / gib
        assert measured * 0.9 <= estimate <= measured * 1.2
    roomy = plan_memory(dims, 16, 512, 2, "auto", "auto", 120 * gib)
    assert (roomy.gradient_checkpointing, roomy.load_in_4bit) == (False, False)
    tight = plan_memory(dims, 16, 512, 2, "auto", "auto", 20 * gib)
    assert (tight.gradient_checkpointing, tight.load_in_4bit) == (True, False)
    tiny = plan_memory(dims, 16, 512, 2, "auto", "auto", 8 * gib)
    assert (tiny.gradient_checkpointing, tiny.load_in_4bit) == (True, True)
    assert "fits" in tiny.reason and tiny.to_record()["estimated_gib"] < 8
    hopeless = plan_memory(dims, 16, 512, 2, "auto", False, 2 * gib)
    assert hopeless.gradient_checkpointing and "lower fl.training.batch_size" in hopeless.reason
    fixed = plan_memory(dims, 16, 512, 2, True, False, 120 * gib)  # an explicit setting is kept
    assert fixed.gradient_checkpointing and not fixed.load_in_4bit
    cpu = plan_memory(dims, 16, 512, 2, "auto", "auto", None)
    assert not cpu.gradient_checkpointing and not cpu.load_in_4bit and "no GPU" in cpu.reason
    cfg = load_config(DRYRUN, ["fl.model.gradient_checkpointing=auto", "fl.model.load_in_4bit=auto"])
    assert cfg.fl.model.gradient_checkpointing == "auto"
    with pytest.raises(ConfigError):
        load_config(DRYRUN, ["fl.model.gradient_checkpointing=sometimes"])


def test_the_planner_sees_the_workloads_cost_and_the_steps_nodes_take() -> None:
    from fl.cost import costed_config

    cfg = load_config(DRYRUN, [])
    cost = WorkloadCost(flops_per_token=1e6, tokens_per_sample=50, flops_per_cycle=5.0, source="model")
    seen = costed_config(cfg, cost)
    assert seen.allocation.cycles_per_sample == pytest.approx(1e7)
    assert seen.allocation.local_steps == cfg.fl.training.local_steps == 8
    assert cfg.allocation.cycles_per_sample == 2e10  # the config itself is left as it was
