"""Benchmarks of the air: symbol-level AirLink, IQ-level medium, radio-path NMSE vs theory.

    .venv/bin/python benchmarks/bench_air.py [--quick]

(a) ``sim.symbol_air.SymbolAir`` throughput for K = 10 clients, N = 8 antennas and q = 2.66 M
    reals (the OpenLLaMA-3B LoRA r=8 payload, 1.33 M complex symbols): K sends and one collect,
    as a ratio to a bare numpy complex matmul H^T X of the same size (K x N x q/2, complex128),
    timed in the same run. Target >= 0.5.
(b) ``sim.medium.Medium`` speed at 1 MS/s with 4 single-antenna transmitters and a 4-antenna
    receiver, every impairment of the default config on (CFO, drift, LO phase, timing offset,
    clipping, AWGN), in 100 ms bursts: seconds of air per second of wall time (target >= 5x on
    2 cores), beside the CPU-time figure and the bare numpy floor (noise + 4x4 mixing alone).
(c) Aggregation NMSE over the radio path (``testbed.air.radio_airlink``: pilots, estimation, RRC
    symbols, timed bursts through the medium) against docs/explanation/system-model.md section 3's analytic MSE over an
    SNR sweep, a few channel draws per point; the plot goes to benchmarks/out/bench_air_nmse.png.

The last line is one JSON object: {"airlink_vs_matmul", "iq_realtime_factor", "nmse_gap_db"}
(nmse_gap_db: the largest |measured - theory| over the sweep, in dB).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.radio import RadioSettings  # noqa: E402
from sim.channel import FieldResponseChannel, wavelength_m  # noqa: E402
from sim.impairments import Impairments  # noqa: E402
from sim.links import FieldResponseLinks  # noqa: E402
from sim.medium import Medium  # noqa: E402
from sim.radio import SimRadio  # noqa: E402
from sim.symbol_air import SymbolAir  # noqa: E402
from testbed.air.phy import GainCalibration, PilotConfig, PulseShape  # noqa: E402
from testbed.air.radio_airlink import (  # noqa: E402
    RadioAirLink,
    RadioAirReceiver,
    RadioAirTransmitter,
    measure_aggregation,
)
from testbed.config import ImpairmentsSection  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
WL = wavelength_m(2.4e9)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# --- (a) ------------------------------------------------------------------------------------------
def bench_symbol_air(repeats: int) -> float:
    k, n_ant, q = 10, 8, 2_662_400
    n = (q + 1) // 2
    rng = np.random.default_rng(0)
    channel = FieldResponseChannel.draw(rng, k, 10, WL, path_gain=1e-8)
    positions = rng.uniform(-2 * WL, 2 * WL, (n_ant, 2))
    symbols = rng.standard_normal((k, n)) + 1j * rng.standard_normal((k, n))
    h = channel.response(positions)
    air = SymbolAir(channel, positions, 1e-12, rng)
    m = np.ones(n_ant) / np.sqrt(n_ant)
    scales = 0.1 * np.exp(1j * rng.uniform(0, 2 * np.pi, k))
    slot = iter(range(1, 10_000))

    def airlink() -> None:
        at = float(next(slot))
        for c in range(k):
            air.send(c, symbols[c], scales[c], at)
        air.collect(n, at, m)

    t_mm = best_of(lambda: h.T @ symbols, repeats)
    t_air = best_of(airlink, repeats)
    ratio = t_mm / t_air
    print(
        f"(a) symbol AirLink K={k} N={n_ant} q={q}: {t_air * 1e3:.1f} ms per slot "
        f"({n / t_air / 1e6:.1f} M symbols/s); bare complex matmul {t_mm * 1e3:.1f} ms; "
        f"airlink/matmul throughput ratio {ratio:.2f} (target >= 0.5)"
    )
    return ratio


# --- (b) ------------------------------------------------------------------------------------------
def bench_medium(seconds: float, repeats: int) -> float:
    rate, chunk, k, n_ant = 1e6, 100_000, 4, 4
    rng = np.random.default_rng(1)
    channel = FieldResponseChannel.draw(rng, k, 10, WL, path_gain=1e-8)
    medium = Medium(
        FieldResponseLinks(channel), rng, rate, 1e-12, Impairments.from_config(ImpairmentsSection())
    )
    settings = RadioSettings(tx_gain_db=60.0, rx_gain_db=30.0)
    tx = [SimRadio.client(medium, c, settings) for c in range(k)]
    rx = SimRadio.receiver(medium, n_ant, rng.uniform(-2 * WL, 2 * WL, (n_ant, 2)), settings)
    bursts = [
        (0.3 * (rng.standard_normal(chunk) + 1j * rng.standard_normal(chunk))).astype(np.complex64)
        for _ in tx
    ]
    steps = max(1, int(seconds * rate / chunk))

    def run() -> tuple[float, float]:
        at = rx.time_now() + 1e-3
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            for radio, burst in zip(tx, bursts, strict=True):
                radio.transmit(burst, at)
            rx.receive(chunk, at)
            at += chunk / rate
        return time.perf_counter() - w0, time.process_time() - c0

    run()  # warm-up (drift tables, caches)
    runs = [run() for _ in range(repeats)]  # best of: the machine is shared
    wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
    air_s = steps * chunk / rate
    # The floor: only the noise and the 4x4 mixing, in bare numpy, for the same air time.
    g = (rng.standard_normal((n_ant, k)) + 0j).astype(np.complex64)
    x = np.stack(bursts)

    def floor() -> None:
        for _ in range(steps):
            y = g[:, :1] * x[0]
            for r in range(1, k):
                y += g[:, r : r + 1] * x[r]
            y.view(np.float32)[...] += rng.standard_normal((n_ant, 2 * chunk), dtype=np.float32)

    t_floor = best_of(floor, repeats)
    factor = air_s / wall
    print(
        f"(b) IQ medium 1 MS/s, {k} TX x {n_ant} RX antennas, all impairments: {air_s:.1f} s of air in "
        f"{wall:.2f} s wall ({cpu:.2f} s CPU): {factor:.1f}x real time wall, {air_s / cpu:.1f}x by CPU time; "
        f"bare-numpy floor (noise + mixing) {air_s / t_floor:.1f}x; medium/floor {t_floor / wall:.2f} "
        "(target >= 5x on 2 cores)"
    )
    return factor


# --- (c) ------------------------------------------------------------------------------------------
def radio_trial(seed: int, noise_w: float, num_symbols: int) -> tuple[float, float]:
    k, n_ant, power_w = 4, 4, 0.1
    rng = np.random.default_rng(seed)
    channel = FieldResponseChannel.draw(rng, k, 10, WL, path_gain=1e-8)
    positions = np.stack([np.arange(n_ant) * 0.6 * WL, np.zeros(n_ant)], axis=1)
    # Radios locked to one 10 MHz reference: LO phases, drift, timing offsets, clipping, AWGN.
    impairments = Impairments.from_config(ImpairmentsSection(cfo_hz_max=0.0))
    medium = Medium(FieldResponseLinks(channel), rng, 1e6, noise_w, impairments, 60.0, 0.0)
    settings = RadioSettings(tx_gain_db=60.0, rx_gain_db=30.0, max_tx_gain_db=75.0)
    radios = {c: SimRadio.client(medium, c, settings) for c in range(k)}
    rx = SimRadio.receiver(medium, n_ant, positions, settings)
    cal, pilots, pulse = GainCalibration(60.0, 0.0), PilotConfig(estimate_cfo=False), PulseShape()
    link = RadioAirLink(
        RadioAirTransmitter(radios, power_w, cal, pilots, pulse=pulse),
        RadioAirReceiver(rx, cal, noise_w, pilots, pulse=pulse),
        lead_s=2e-4,
    )
    symbols = rng.standard_normal((k, num_symbols)) + 1j * rng.standard_normal((k, num_symbols))
    trial = measure_aggregation(
        link,
        list(range(k)),
        symbols,
        np.arange(1.0, k + 1.0),
        np.full(k, power_w),
        lambda: link.time_now() + 2e-4,
        channel.response(positions),
    )
    return trial.nmse, trial.theory_nmse


def bench_nmse(seeds: int, num_symbols: int) -> float:
    noise = np.logspace(-9, -12, 7)
    measured, theory = [], []
    for noise_w in noise:
        pairs = [radio_trial(s, float(noise_w), num_symbols) for s in range(seeds)]
        measured.append(np.mean([p[0] for p in pairs]))
        theory.append(np.mean([p[1] for p in pairs]))
    meas_db, theory_db = 10 * np.log10(measured), 10 * np.log10(theory)
    gap = float(np.max(np.abs(meas_db - theory_db)))
    for nw, a, b in zip(noise, meas_db, theory_db, strict=True):
        print(
            f"    noise {10 * np.log10(nw) + 30:6.1f} dBm: measured {a:7.2f} dB, theory {b:7.2f} dB, gap {a - b:+.2f}"
        )
    print(
        f"(c) radio-path NMSE vs docs/explanation/system-model.md section 3, {seeds} draws per point: largest gap {gap:.2f} dB"
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        OUT.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        noise_dbm = 10 * np.log10(noise) + 30
        ax.plot(noise_dbm, theory_db, "k-", label="theory sigma^2||m||^2/eta")
        ax.plot(noise_dbm, meas_db, "o", label="radio path (measured)")
        ax.invert_xaxis()  # higher SNR to the right
        ax.set_xlabel("noise power per sample (dBm)")
        ax.set_ylabel("aggregation NMSE (dB)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(OUT / "bench_air_nmse.png", dpi=120)
        plt.close(fig)
        print(f"    plot: {OUT / 'bench_air_nmse.png'}")
    except Exception as exc:  # the figure is a by-product; the numbers above stand
        print(f"    (no plot: {exc})")
    return gap


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, shorter air, fewer draws")
    args = parser.parse_args()
    ratio = bench_symbol_air(3 if args.quick else 5)
    factor = bench_medium(1.0 if args.quick else 2.0, 1 if args.quick else 3)
    gap = bench_nmse(2 if args.quick else 4, 2000 if args.quick else 4000)
    print(
        json.dumps(
            {
                "airlink_vs_matmul": round(ratio, 3),
                "iq_realtime_factor": round(factor, 2),
                "nmse_gap_db": round(gap, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
