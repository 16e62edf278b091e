"""Useful tokens: nodes compute on real tokens only, with the padded computation's loss (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl import training
from testbed.config import load_config


def _model_and_data(seed: int = 0) -> tuple[torch.nn.Module, training.Encoded]:
    from transformers import LlamaForCausalLM

    cfg = load_config(None, ["fl.lora.dropout=0.0", "fl.lora.mode=standard"])
    torch.manual_seed(seed)
    base = LlamaForCausalLM(training.tiny_llama_config(cfg.fl.model, 200, 48))
    model = training.add_lora(base, cfg.fl.model, cfg.fl.lora, seed)
    with torch.no_grad():  # B starts at zero: make the adapters matter to the gradient check
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 48, 12)
    ids = np.zeros((12, 48), np.int64)
    labels = np.full((12, 48), -100, np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = labels[i, :n] = rng.integers(3, 200, n)
    return model, training.Encoded(torch.from_numpy(ids), torch.from_numpy(labels))


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("overhead", [0, 32, 10_000])  # many groups, a few, one
def test_grouped_loss_and_gradient_equal_the_padded_computation(overhead: int) -> None:
    model, data = _model_and_data()
    model.train()
    idx = torch.tensor([3, 0, 7, 11, 5, 2, 9])
    padded = model(input_ids=data.input_ids[idx], labels=data.labels[idx]).loss
    padded.backward()
    reference = _grads(model)
    model.zero_grad(set_to_none=True)
    loss, computed = training.grouped_loss_backward(model, data, idx, "cpu", overhead)
    assert float(loss) == pytest.approx(float(padded.detach()), rel=1e-5)
    grads = _grads(model)
    assert set(grads) == set(reference) and grads
    for n, g in reference.items():
        torch.testing.assert_close(grads[n], g, rtol=1e-4, atol=1e-6)
    real = int(data.lengths[idx].sum())
    assert real <= computed < len(idx) * 48  # fewer positions than the padded batch
    if overhead == 0:
        assert computed == real  # every row in its own group: not one padding position


def test_length_groups_split_where_padding_costs_more_than_a_call() -> None:
    lengths = [100, 5, 6, 98, 7, 101]
    groups = training.length_groups(lengths, overhead_tokens=20)
    assert sorted(sorted(g) for g in groups) == [[0, 3, 5], [1, 2, 4]]
    assert training.length_groups(lengths, overhead_tokens=10**6) == [[1, 2, 4, 3, 0, 5]]
    assert [len(g) for g in training.length_groups(lengths, 0)] == [1] * 6


def test_local_train_counts_real_tokens_and_computes_only_those() -> None:
    model, data = _model_and_data(1)
    out = training.local_train(model, data, 3, 6, 1e-3, np.random.default_rng(0), torch_seed=0)
    padded = training.local_train(
        model, data, 3, 6, 1e-3, np.random.default_rng(0), torch_seed=0, useful_only=False
    )
    assert out["tokens"] == padded["tokens"]  # the same examples, counted in real tokens
    assert padded["computed_tokens"] == 3 * 6 * 48 and padded["useful_fraction"] < 0.7
    assert out["computed_tokens"] < padded["computed_tokens"]
    assert out["useful_fraction"] > padded["useful_fraction"] + 0.2


def test_evaluate_on_real_tokens_equals_the_padded_mean_loss() -> None:
    model, data = _model_and_data(2)
    model.eval()
    with torch.no_grad():
        padded = model(input_ids=data.input_ids, labels=data.labels).loss  # mean over every real target
    assert training.evaluate(model, data, batch=5) == pytest.approx(float(padded), rel=1e-5)
