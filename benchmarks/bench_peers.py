"""A hostile peer against a real federation (issue 19): a flood, a huge message, and the disk.

Each scenario is a fresh process running a 4-node federation (the coordinator, and the nodes
forked from the launcher's zygote) on configs/dryrun.yaml's FL settings, OTA through the
symbol air, CURVE on. The attacker is one more process holding node 3's allow-listed key under
its own routing id:

- baseline: no attacker (run twice, before and after the attacks; their mean is the baseline);
- flood: 10,000 messages a second for 20 s from round 1 on (TIME_REPORTs the coordinator must
  refuse, which is what reached its main thread before);
- big: one message of 12 frames of 200 MB, sent at round 1.

Figures, each beside the baseline from the same run of this script: the mean round time with
the flood over the baseline's, the coordinator process's peak RSS with the big message over the
baseline's, and the run folder's growth per round (first half of the rounds against the second:
linear when the two agree). The last line is JSON with ``flood_round_time_ratio``,
``big_message_rss_ratio`` and ``disk_mb_per_round``.

    python benchmarks/bench_peers.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FLOOD_RATE_HZ = 10_000
FLOOD_S = 20.0
BIG_FRAMES, BIG_FRAME_BYTES = 12, 200 * 1024 * 1024


def _attacker(endpoint: str, keys_dir: str, mode: str, go: Any, report: Any) -> None:
    """Node 3's key, its own routing id; waits for round 1, then attacks."""
    import zmq

    from drivers import zmq_security
    from fl import protocol as P
    from fl.keys import KeyLayout

    keys = KeyLayout(Path(keys_dir))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, b"mallory")
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    zmq_security.secure_client(sock, keys.secret("node-3"), keys.public("coordinator"))
    sock.connect(endpoint)
    go.wait(timeout=300)
    sent = 0
    if mode == "flood":
        body = {"pps_edge_unix_s": 1.0, "radio_time_s": 1.0, "source": "mallory"}
        frames = P.encode(P.Message(P.MsgType.TIME_REPORT, 0, 3, body))
        t0 = time.monotonic()
        while (now := time.monotonic()) - t0 < FLOOD_S:
            due = int((now - t0) * FLOOD_RATE_HZ)
            while sent < due:
                try:
                    sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    break
                sent += 1
            time.sleep(0.001)
    else:
        chunk = memoryview(bytearray(BIG_FRAME_BYTES))  # one buffer sent 12 times, no copies
        try:
            sock.send_multipart([chunk] * BIG_FRAMES, copy=False)
            sent = 1
        except zmq.ZMQError:
            pass
        time.sleep(3.0)
    report.put(sent)
    sock.close()
    ctx.term()


def _scenario(mode: str, rounds: int, out: Any) -> None:
    """One federation run in this (fresh) process; its figures go to ``out``."""
    from fl.runner import LocalFederation
    from testbed.config import load_config

    cfg = load_config(
        str(ROOT / "configs" / "dryrun.yaml"),
        [
            f"fl.rounds={rounds}",
            "allocation.max_rounds=" + str(rounds),
            "fl.transport.round_deadline_s=60",
        ],
    )
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-peers-{mode}-"))
    ctx = mp.get_context("spawn")
    go, report = ctx.Event(), ctx.Queue()
    sizes: list[int] = []

    def folder_bytes() -> int:
        return sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())

    def on_event(record: dict[str, Any]) -> None:
        if record["event"] == "plan_sent" and record["round"] == 1:
            go.set()

    def on_round(record: dict[str, Any]) -> None:
        sizes.append(folder_bytes())

    fed = LocalFederation(cfg, run_dir, on_round=on_round, on_event=on_event)
    fed.coordinator.bind()
    attacker = None
    if mode != "baseline":
        keys_dir = str(fed.config.fl.transport.keys_dir)
        attacker = ctx.Process(target=_attacker, args=(fed.coordinator.endpoint, keys_dir, mode, go, report))
        attacker.start()
    metrics = fed.run()
    sent = report.get(timeout=120) if attacker is not None else 0
    if attacker is not None:
        attacker.join(timeout=30)
    out.put(
        {
            "round_s": [m["round_time_s"] for m in metrics],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "folder_bytes": sizes,
            "sent": sent,
            "refused": sum(
                json.loads(line).get("count", 1)
                for line in (run_dir / "events.jsonl").read_text().splitlines()
                if '"refused"' in line
            ),
        }
    )


def run_scenario(mode: str, rounds: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_scenario, args=(mode, rounds, out))
    proc.start()
    result = out.get(timeout=1800)
    proc.join(timeout=60)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = {}
    for mode in ("baseline", "flood", "big", "baseline2"):
        t0 = time.monotonic()
        results[mode] = run_scenario(mode.rstrip("2"), args.rounds)
        r = results[mode]
        print(
            f"{mode:9s}: {len(r['round_s'])} rounds, mean round {sum(r['round_s']) / len(r['round_s']):.2f} s, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB, attacker sent {r['sent']}, refusals counted {r['refused']} "
            f"({time.monotonic() - t0:.0f} s)",
            flush=True,
        )

    def mean_round(mode: str) -> float:
        return sum(results[mode]["round_s"]) / len(results[mode]["round_s"])

    base_round = (mean_round("baseline") + mean_round("baseline2")) / 2
    base_rss = (results["baseline"]["peak_rss_mb"] + results["baseline2"]["peak_rss_mb"]) / 2
    flood_ratio = mean_round("flood") / base_round
    rss_ratio = results["big"]["peak_rss_mb"] / base_rss
    sizes = results["baseline"]["folder_bytes"]
    half = len(sizes) // 2
    first = (sizes[half - 1] - sizes[0]) / max(half - 1, 1) / 1e6
    second = (sizes[-1] - sizes[half - 1]) / max(len(sizes) - half, 1) / 1e6
    per_round = (sizes[-1] - sizes[0]) / max(len(sizes) - 1, 1) / 1e6
    print(
        f"flood: mean round {mean_round('flood'):.2f} s vs baseline {base_round:.2f} s: ratio {flood_ratio:.2f} (target <= 1.2)"
    )
    print(
        f"big message: peak RSS {results['big']['peak_rss_mb']:.0f} MB vs baseline {base_rss:.0f} MB: ratio {rss_ratio:.2f} (target <= 1.5)"
    )
    print(
        f"disk: {per_round:.3f} MB per round; first half {first:.3f} MB/round vs second half {second:.3f} MB/round "
        f"(ratio {second / first if first else float('nan'):.2f}; linear when about 1)"
    )
    print(
        json.dumps(
            {
                "flood_round_time_ratio": round(flood_ratio, 3),
                "big_message_rss_ratio": round(rss_ratio, 3),
                "disk_mb_per_round": round(per_round, 4),
                "disk_growth_second_half_over_first": round(second / first, 3) if first else None,
            }
        )
    )


if __name__ == "__main__":
    main()
