"""The radio server's cost: a call's round trip and a capture's IQ through ZeroMQ.

Each figure sits beside its baseline measured in the same run: the same SimRadio called in
process. Radios: tx0 and a 4-antenna receiver rx on one ideal medium, served by
``python -m drivers.usrp_server --backend sim`` in a subprocess (loopback, plain text and CURVE).

- rpc_roundtrip_ms: one ``time_now`` through RemoteRadio (plain text), in milliseconds.
- remote_vs_inprocess_capture: the wall time of a timed 4 x 262144-sample capture through the
  server over the same capture in process (1.0 = no overhead).
- capture_realtime_factor: how many times faster than the air the server path delivers a
  4-antenna capture at 1 MS/s (>= 1 keeps up with real time).
- curve_vs_plain: the same capture through CURVE over plain text (the cost of encryption).

    .venv/bin/python benchmarks/bench_radio_server.py
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.radio import Radio  # noqa: E402
from drivers.remote_radio import RemoteRadio  # noqa: E402
from drivers.usrp_server import spawn_server, stop_server  # noqa: E402
from drivers.zmq_security import make_keypair  # noqa: E402
from sim.radio import build_sim_radios, ideal_medium  # noqa: E402

N_SAMPLES = 262_144
ANTENNAS = 4
RATE_SPS = 1e6
SERVER_ARGS = ["--backend", "sim", "--radios", f"tx0,rx:{ANTENNAS}", "--bind", "tcp://127.0.0.1:*"]


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def round_trip_s(radio: Radio, calls: int = 200) -> float:
    radio.time_now()
    start = time.perf_counter()
    for _ in range(calls):
        radio.time_now()
    return (time.perf_counter() - start) / calls


def capture(tx: Radio, rx: Radio, burst: np.ndarray) -> Callable[[], object]:
    def run() -> object:
        t = rx.time_now() + 0.01
        tx.transmit(burst, t)
        got = rx.receive(N_SAMPLES, t, timeout_s=N_SAMPLES / RATE_SPS + 1.0)
        assert got.samples.shape == (ANTENNAS, N_SAMPLES)
        return got

    return run


def main() -> None:
    rng = np.random.default_rng(0)
    burst = ((rng.standard_normal(N_SAMPLES) + 1j * rng.standard_normal(N_SAMPLES)) * 0.1).astype(
        np.complex64
    )
    tx0, rx = build_sim_radios([("tx0", 1), ("rx", ANTENNAS)], medium=ideal_medium(1, RATE_SPS))
    local_call_s = round_trip_s(rx, 2000)
    local_capture_s = best_of(capture(tx0, rx, burst), 5)

    keys = Path(tempfile.mkdtemp(prefix="bench-radio-keys-"))
    try:
        _, server_secret = make_keypair(keys / "server", "radio")
        client_public, client_secret = make_keypair(keys / "client", "bench")
        (keys / "allow").mkdir()
        shutil.copy(client_public, keys / "allow" / client_public.name)
        results = {}
        for mode, extra in (
            ("plain", ["--insecure"]),
            ("curve", ["--secret-key", str(server_secret), "--allow", str(keys / "allow")]),
        ):
            proc, endpoint = spawn_server([*SERVER_ARGS, *extra], python=sys.executable)
            client = (
                {}
                if mode == "plain"
                else {
                    "secret_key_file": client_secret,
                    "server_public_key_file": keys / "server" / "radio.key",
                }
            )
            try:
                rtx = RemoteRadio(endpoint, radio="tx0", **client)
                rrx = RemoteRadio(endpoint, radio="rx", **client)
                results[mode] = {
                    "call_s": round_trip_s(rrx),
                    "capture_s": best_of(capture(rtx, rrx, burst), 5),
                }
                rtx.close()
                rrx.close()
            finally:
                stop_server(proc)
    finally:
        shutil.rmtree(keys, ignore_errors=True)

    plain, curve = results["plain"], results["curve"]
    air_s = N_SAMPLES / RATE_SPS
    print(f"in-process time_now: {local_call_s * 1e6:8.1f} us   (baseline)")
    print(
        f"remote time_now:     {plain['call_s'] * 1e6:8.1f} us   "
        f"({plain['call_s'] / local_call_s:.0f}x the in-process call)"
    )
    print(f"in-process capture of {ANTENNAS} x {N_SAMPLES}: {local_capture_s * 1e3:7.1f} ms (baseline)")
    print(
        f"remote capture (plain):        {plain['capture_s'] * 1e3:7.1f} ms "
        f"({plain['capture_s'] / local_capture_s:.2f}x in-process)"
    )
    print(
        f"remote capture (CURVE):        {curve['capture_s'] * 1e3:7.1f} ms "
        f"({curve['capture_s'] / plain['capture_s']:.2f}x plain)"
    )
    print(
        f"air time of the capture: {air_s * 1e3:.1f} ms -> remote path runs "
        f"{air_s / plain['capture_s']:.1f}x real time at {RATE_SPS / 1e6:.0f} MS/s x {ANTENNAS} antennas"
    )
    print(
        json.dumps(
            {
                "rpc_roundtrip_ms": round(plain["call_s"] * 1e3, 4),
                "remote_vs_inprocess_capture": round(plain["capture_s"] / local_capture_s, 3),
                "capture_realtime_factor": round(air_s / plain["capture_s"], 2),
                "curve_vs_plain": round(curve["capture_s"] / plain["capture_s"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
