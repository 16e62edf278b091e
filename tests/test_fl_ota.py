"""OTA aggregation: zero noise equals digital FedAvg; noise matches the aircomp prediction;
normalisation, packing and the LoRA payload modes."""

from __future__ import annotations

import numpy as np
import pytest

from allocation.aircomp import aggregation_mse
from fl import ota
from fl.aggregation import DigitalFedAvg, OverTheAir, apply_update, make_strategy, payload_names
from sim.channel import FieldResponseChannel, path_loss_linear
from sim.symbol_air import SymbolAir


def _updates(rng: np.random.Generator, clients: list[int]) -> dict[int, dict[str, np.ndarray]]:
    out = {}
    for k in clients:
        out[k] = {
            "l0.lora_B": (rng.standard_normal((16, 4)) * 0.01 + 0.002 * k).astype(np.float32),
            "l1.lora_B": (rng.standard_normal((8, 4)) * 0.05).astype(np.float32),
            "odd.lora_B": rng.standard_normal(7).astype(np.float32),  # odd count: one pad real
        }
    return out


def _air(rng: np.random.Generator, noise_w: float, clients: int = 4, antennas: int = 4) -> SymbolAir:
    wl = 0.125
    beta = path_loss_linear(rng.uniform(20, 80, clients))
    channel = FieldResponseChannel.draw(rng, clients, 8, wl, beta)
    pos = np.stack([np.arange(antennas) * wl, np.zeros(antennas)], axis=1)
    return SymbolAir(channel, pos, noise_w, rng)


def test_ota_with_zero_noise_equals_digital_fedavg() -> None:
    rng = np.random.default_rng(1)
    clients = [0, 1, 3]
    updates = _updates(rng, clients)
    weights = {0: 8.0, 1: 4.0, 3: 12.0}
    digital = DigitalFedAvg().aggregate(updates, weights)
    air = _air(np.random.default_rng(2), noise_w=0.0)
    over = OverTheAir(air, power_w=0.1).aggregate(updates, weights)
    for name, ref in digital.update.items():
        np.testing.assert_allclose(over.update[name], ref, rtol=1e-5, atol=1e-7)
    assert over.metrics["nmse"] < 1e-10
    # And it is not trivially so: the weights matter.
    plain = DigitalFedAvg().aggregate(updates, dict.fromkeys(clients, 1.0)).update
    assert not np.allclose(plain["l0.lora_B"], digital.update["l0.lora_B"], rtol=1e-3)


def test_ota_noise_matches_the_aircomp_mse() -> None:
    rng = np.random.default_rng(4)
    clients = [0, 1, 2, 3]
    updates = {k: {"w.lora_B": rng.standard_normal(20_000).astype(np.float32)} for k in clients}
    weights = dict.fromkeys(clients, 1.0)
    air = _air(np.random.default_rng(5), noise_w=1e-11)
    strategy = OverTheAir(air, power_w=0.1, normalization="max")
    result = strategy.aggregate(updates, weights)
    h = air.estimate_channels(clients)
    from fl.aggregation import default_combiner

    m = default_combiner(h)
    mse_sym = aggregation_mse(m, h, np.full(4, 0.1), np.ones(4), 1e-11)  # per complex symbol of sum phi s
    stats = [ota.group_stats(updates[k], ["w.lora_B"]) for k in clients]
    v = ota.shared_stats(stats, [1.0] * 4, "max").var[0]
    # Each real carries half the complex noise power; de-normalising scales by sqrt(v) / sum(phi).
    predicted = mse_sym / 2 * v / 4.0**2
    ref = DigitalFedAvg().aggregate(updates, weights).update["w.lora_B"]
    measured = float(np.mean((result.update["w.lora_B"].astype(np.float64) - ref) ** 2))
    assert measured == pytest.approx(predicted, rel=0.1)
    assert result.metrics["predicted_mse"] == pytest.approx(mse_sym)


def test_pack_unpack_and_normalisation_round_trip() -> None:
    rng = np.random.default_rng(0)
    reals = rng.standard_normal(11)
    sym = ota.pack(reals)
    assert sym.size == ota.num_symbols(11) == 6
    np.testing.assert_array_equal(ota.unpack(sym, 11), reals)
    upd = {"a": rng.standard_normal((3, 5)), "b": rng.standard_normal(4) + 3}
    shared = ota.shared_stats([ota.group_stats(upd, ["a", "b"])], [1.0])
    s = ota.normalize(upd, shared)
    assert abs(s[:15].mean()) < 1e-12 and s[:15].var() == pytest.approx(1.0)
    back = ota.denormalize(s * 2.0, 2.0, shared, {"a": (3, 5), "b": (4,)})
    np.testing.assert_allclose(back["a"], upd["a"], rtol=1e-5)
    np.testing.assert_allclose(back["b"], upd["b"], rtol=1e-5)


def test_shared_stats_rules_and_zero_variance() -> None:
    s1 = ota.GroupStats(("g",), np.array([1.0]), np.array([2.0]))
    s2 = ota.GroupStats(("g",), np.array([3.0]), np.array([4.0]))
    mx = ota.shared_stats([s1, s2], [1.0, 3.0], "max")
    assert mx.mean[0] == pytest.approx(2.5) and mx.var[0] == 4.0
    assert ota.shared_stats([s1, s2], [1.0, 3.0], "mean").var[0] == pytest.approx(3.5)
    zero = ota.shared_stats([ota.GroupStats(("g",), np.zeros(1), np.zeros(1))], [1.0])
    assert zero.var[0] == 1.0  # B at zero must not divide by zero
    with pytest.raises(ValueError, match="normalization"):
        ota.shared_stats([s1], [1.0], "median")
    with pytest.raises(ValueError, match="different tensor groups"):
        ota.shared_stats([s1, ota.GroupStats(("h",), np.zeros(1), np.ones(1))], [1.0, 1.0])


def test_lora_modes_choose_the_payload() -> None:
    names = ["x.lora_A.default.weight", "x.lora_B.default.weight", "y.lora_B.default.weight"]
    assert payload_names(names, "ffa") == ["x.lora_B.default.weight", "y.lora_B.default.weight"]
    assert payload_names(names, "standard") == sorted(names)
    with pytest.raises(ValueError, match="allowed standard, ffa"):
        payload_names(names, "half")


def test_apply_update_and_strategy_factory() -> None:
    g = {"a": np.ones(3, np.float32), "b": np.zeros(2, np.float32)}
    out = apply_update(g, {"b": np.array([1.0, 2.0])})
    np.testing.assert_array_equal(out["b"], [1.0, 2.0])
    np.testing.assert_array_equal(out["a"], g["a"])
    assert make_strategy("digital").name == "digital"
    with pytest.raises(ValueError, match="needs an AirLink"):
        make_strategy("ota")
    with pytest.raises(ValueError, match="no client delivered"):
        DigitalFedAvg().aggregate({}, {})
