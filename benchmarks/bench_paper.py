"""The paper's figure in simulation: configs/paper-sim.yaml, 5 schemes x K in {1, 2, 4, 8} x 3 seeds.

Runs the 60-cell sweep the guide shows (``testbed compare``, 2 local workers; each cell a full
30-round FL run of 10 clients) and reports:
- wall_s and where a cell's time goes (start-up, planning, training, evaluation, the rest; from
  every round's time breakdown), against the issue's 20-minute target;
- the final perplexity change of ours against non_ma per K (mean, spread over the seeds), beside
  the paper's -17.4% / -54.4% (K=1) and -14.2% / -13.7% (K=2);
- Jain's index of ours and of non_ma per K (the clients' selection counts), as the paper reports;
- ours_not_beaten_share: the share of (K, seed) points where ours' final perplexity is below, or
  within the seed spread of, every other over-the-air scheme's (fpa, random_placement, non_ma);
- the fixed array's NMSE per client at K=1 (the link budget's check) and where MA helped.
Baselines in the same run: non_ma and the other schemes are cells of the sweep; the speed cut is
shown beside one cell run with the settings before it (lora dropout 0.05, sim_time_scale 50).

``--docs DIR`` (``make paper``: docs/paper) writes the figure, a markdown table and the JSON
there, for the guide to include. Timings on a shared machine are noisy.
Run: .venv/bin/python benchmarks/bench_paper.py [--workers 2] [--out DIR] [--docs docs/paper].
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testbed.compare import build_spec, load_cells, open_compare_dir, run_compare  # noqa: E402
from testbed.compare.paper import PAPER_PPL_CHANGE  # noqa: E402
from testbed.compare.report import analyse  # noqa: E402

CONFIG = ROOT / "configs" / "paper-sim.yaml"
SCHEMES = "ours,fpa,random_placement,non_ma,digital"
KS = (1, 2, 4, 8)
SEEDS = 3
TARGET_S = 20 * 60
K_KEY = "allocation.clients_per_round"
# The settings the speed cut changed (configs/paper-sim.yaml explains each).
BEFORE_CUT = [
    "fl.lora.dropout=0.05",
    *(f"lab.stages.ma{i}.sim_time_scale=50" for i in range(4)),
]


def run_sweep(
    out: Path, workers: int, overrides: list[str], seeds: int, ks: tuple[int, ...]
) -> tuple[list[dict], list[str]]:
    """The sweep's finished cells, and those run now (an --out holding the sweep is resumed)."""
    spec = build_spec(CONFIG, overrides, SCHEMES, [f"{K_KEY}={','.join(map(str, ks))}"], seeds)
    resume = out if (out / "compare.json").is_file() else None
    _, ran = run_compare(spec, open_compare_dir(spec, None if resume else out, resume), workers=workers)
    return load_cells(out, spec), ran


def time_split(cells: list[dict]) -> dict[str, float]:
    """Where the cells' time went, summed over cells: start-up (a cell's wall outside its rounds)
    and each phase of the rounds' time breakdown (the coordinator's clock)."""
    from testbed.records import read_events

    total: dict[str, float] = defaultdict(float)
    for c in cells:
        rounds = [
            d["data"] for d in read_events(Path(c["run_dir"]) / "events.jsonl") if d.get("kind") == "round"
        ]
        in_rounds = 0.0
        for r in rounds:
            for k, v in (r.get("time_breakdown_s") or {}).items():
                total[k.removesuffix("_s")] += float(v)
                in_rounds += float(v)
        total["start-up and close"] += max(0.0, float(c["summary"].get("wall_s") or 0.0) - in_rounds)
    return dict(total)


def speed_baseline(out: Path, k: int) -> dict[str, float]:
    """One cell (ours, K=k, seed 0) with the settings before the cut and with the sweep's, timed
    one after the other in this process (each the same full 30-round run)."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import peft  # noqa: F401
    import torch

    import fl.training  # noqa: F401 - the imports are paid before the clock starts
    from testbed.config import apply_overrides, read_yaml, validate
    from testbed.experiment import run_experiment

    torch.set_num_threads(1)
    times, ppl = {}, {}
    for label, extra in (("before", BEFORE_CUT), ("after", [])):
        data = apply_overrides(read_yaml(CONFIG), [f"{K_KEY}={k}", f"run.output_dir={out / label}", *extra])
        t0 = time.monotonic()
        _, summary = run_experiment(
            validate(data, label), scheme="ours", node_mode="thread", whole_run_plan=False, report=False
        )
        times[label], ppl[label] = time.monotonic() - t0, summary["final_val_ppl"]
    return {"before_s": times["before"], "after_s": times["after"], "ppl_before": ppl["before"],
            "ppl_after": ppl["after"]}  # fmt: skip


def fixed_nmse_per_client(cells: list[dict]) -> dict[int, float]:
    """The fixed array's NMSE per client at K=1, the mean over every round that client sent alone."""
    from testbed.records import read_events

    per: dict[int, list[float]] = defaultdict(list)
    for c in cells:
        if c["clients_per_round"] != 1 or c["cell"]["scheme"] == "digital":
            continue
        for d in read_events(Path(c["run_dir"]) / "events.jsonl"):
            r = d.get("data") or {}
            if d.get("kind") == "round" and r.get("nmse_fpa_db") is not None and len(r["selected"]) == 1:
                per[int(r["selected"][0])].append(float(r["nmse_fpa_db"]))
    return {k: float(np.mean(v)) for k, v in sorted(per.items())}


def figures(cells: list[dict]) -> tuple[dict, dict]:
    """The issue's JSON figures per K, and the report's numbers (``analyse``)."""
    numbers = analyse(cells)
    k_of = {c["cell"]["point"]: c["clients_per_round"] for c in cells}
    change, jain_ours, jain_nonma = {}, {}, {}
    for p, d in sorted(numbers["ppl_change_vs_nonma"].items()):
        if "ours" in d:
            change[k_of[p]] = {"mean": round(d["ours"]["mean"], 2), "spread": round(d["ours"]["std"], 2)}
    for p, d in sorted(numbers["jain"].items()):
        jain_ours[k_of[p]] = None if "ours" not in d else round(d["ours"]["mean"], 4)
        jain_nonma[k_of[p]] = None if "non_ma" not in d else round(d["non_ma"]["mean"], 4)
    return {
        "ppl_change_vs_nonma": change,
        "jain_ours": jain_ours,
        "jain_nonma": jain_nonma,
        "ours_not_beaten_share": numbers["not_beaten"]["share"],
    }, numbers


def markdown(result: dict, numbers: dict, cells: list[dict], nmse: dict[int, float]) -> str:
    """The guide's table: per K, every scheme's final perplexity and change, fairness, verdicts."""
    from testbed.compare.paper import verdicts

    k_of = {c["cell"]["point"]: c["clients_per_round"] for c in cells}
    finals: dict[tuple[int, str], list[float]] = defaultdict(list)
    for r in numbers["rows"]:
        finals[(r["grid"][K_KEY], r["scheme"])].append(r["final_ppl"])
    schemes = SCHEMES.split(",")
    lines = [
        f"<!-- written by benchmarks/bench_paper.py ({result['cells']} cells, {result['wall_s']:.0f} s); "
        "regenerate with `make paper`, do not edit -->",
        "",
        "![Validation perplexity against round, one panel per K: the mean over the seeds, the band their "
        "min-max](ppl_vs_round.png)",
        "",
        "Final validation perplexity (mean +- std over the seeds), per K:",
        "",
        "| K | " + " | ".join(schemes) + " |",
        "|---|" + "---|" * len(schemes),
    ]
    for k in sorted({k for k, _ in finals}):
        cols = []
        for s in schemes:
            v = finals.get((k, s))
            cols.append(f"{np.mean(v):.1f} +- {np.std(v):.1f}" if v else "-")
        lines.append(f"| {k} | " + " | ".join(cols) + " |")
    lines += ["", "Ours against non_ma, and participation fairness (Jain's index over the selection counts):", "",
              "| K | ours vs non_ma [%] | fpa vs non_ma [%] | paper (Alpaca / Dolly) [%] | Jain ours | Jain non_ma |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for p, d in sorted(numbers["ppl_change_vs_nonma"].items()):
        k = k_of[p]
        paper = PAPER_PPL_CHANGE.get(k)
        ref = f"{paper['Alpaca']:+.1f} / {paper['Dolly']:+.1f}" if paper else "not reported"
        fpa = f"{d['fpa']['mean']:+.1f} +- {d['fpa']['std']:.1f}" if "fpa" in d else "-"
        jo, jn = result["jain_ours"].get(k), result["jain_nonma"].get(k)
        lines.append(
            f"| {k} | {d['ours']['mean']:+.1f} +- {d['ours']['std']:.1f} | {fpa} | {ref} | "
            f"{_fmt(jo)} | {_fmt(jn)} |"
        )
    lines += ["", f"Ours is not beaten (below, or within the seed spread of, every other over-the-air "
              f"scheme) at {result['ours_not_beaten_share']:.0%} of the (K, seed) points.", ""]  # fmt: skip
    if nmse:
        lines += [
            "The fixed lambda/2 array's NMSE per client at K=1 (mean over the rounds each client sent alone): "
            + ", ".join(f"client {k} {v:+.1f} dB" for k, v in nmse.items())
            + ".",
            "",
        ]
    labels = {p: f"K={k}" for p, k in k_of.items()}
    lines += [f"- {v}" for v in verdicts(numbers["ppl_change_vs_nonma"], numbers["rows"], labels)]
    return "\n".join(lines) + "\n"


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=None, help="keep the compare here (an existing one is resumed)"
    )
    parser.add_argument("--docs", type=Path, default=None, help="write the figure, table and JSON here")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--ks", default=",".join(map(str, KS)), help="the K grid (default 1,2,4,8)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override (a quick try)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the speed baseline's two cells")
    parser.add_argument(
        "--timing-from",
        type=Path,
        default=None,
        help="a resumed sweep that ran no cell: take wall_s, cells_cpu_s and the speed cut from this earlier "
        "paper.json (the run that measured them) instead of re-timing",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_paper-"))
    ks = tuple(int(k) for k in args.ks.split(","))
    t0 = time.monotonic()
    cells, ran = run_sweep(out / "sweep", args.workers, args.overrides, args.seeds, ks)
    wall = time.monotonic() - t0
    earlier = None
    if args.timing_from is not None:
        if ran:
            parser.error(f"--timing-from: this sweep ran {len(ran)} cells; its own timing stands")
        earlier = json.loads(args.timing_from.read_text(encoding="utf-8"))
        wall = float(earlier["wall_s"])
    result, numbers = figures(cells)
    split = time_split(cells)
    busy = sum(split.values())
    nmse = fixed_nmse_per_client(cells)

    print(f"sweep: {len(cells)} cells ({SCHEMES}; K {ks}; {args.seeds} seeds) on {args.workers} workers: "
          f"{wall:.0f} s = {wall / TARGET_S:.2f}x the 20-minute target")  # fmt: skip
    cpu = [c.get("cpu_s") for c in cells]
    cpu_total = sum(cpu) if cpu and all(v is not None for v in cpu) else None
    if earlier is not None:
        cpu_total = earlier.get("cells_cpu_s")
    if cpu_total is not None:
        # On a shared host the wall time counts the other jobs too; the cells' own CPU time over
        # the workers is what the sweep costs when the machine is its own.
        print(
            f"cells' own CPU time {cpu_total:.0f} s; over {args.workers} workers {cpu_total / args.workers:.0f} s = "
            f"{cpu_total / args.workers / TARGET_S:.2f}x the target (the wall on an idle machine, less its imports)"
        )
    print(
        f"where the cells' time went ({busy:.0f} cell-seconds): "
        + ", ".join(
            f"{k} {v / busy:.1%}"
            for k, v in sorted(split.items(), key=lambda kv: -kv[1])
            if v / busy >= 0.001
        )
    )
    for k, v in result["ppl_change_vs_nonma"].items():
        paper = PAPER_PPL_CHANGE.get(k)
        ref = (
            f"paper {paper['Alpaca']:+.1f}% (Alpaca) / {paper['Dolly']:+.1f}% (Dolly)"
            if paper
            else "paper: -"
        )
        jo, jn = result["jain_ours"].get(k), result["jain_nonma"].get(k)
        ratio = f"{jo / jn:.3f}" if jo and jn else "-"
        print(f"K={k}: ours vs non_ma {v['mean']:+.1f}% +- {v['spread']:.1f}; {ref}; Jain ours {_fmt(jo)} / non_ma "
              f"{_fmt(jn)} = {ratio}")  # fmt: skip
    print(f"ours not beaten at {result['ours_not_beaten_share']:.0%} of (K, seed) points; beaten: "
          + "; ".join(f"{k} by {', '.join(v)}" for k, v in numbers["not_beaten"]["beaten_by"].items() if v))  # fmt: skip
    print("fixed array NMSE per client at K=1: " + ", ".join(f"{k}: {v:+.1f} dB" for k, v in nmse.items()))
    from testbed.compare.paper import verdicts

    k_of = {c["cell"]["point"]: c["clients_per_round"] for c in cells}
    for line in verdicts(
        numbers["ppl_change_vs_nonma"], numbers["rows"], {p: f"K={k}" for p, k in k_of.items()}
    ):
        print(line)
    speed = None
    if not args.no_baseline and earlier is None:
        speed = speed_baseline(out / "speed", 2)
        print(
            f"speed cut, one cell (ours, K=2, seed 0, 30 rounds): {speed['after_s']:.1f} s against "
            f"{speed['before_s']:.1f} s before (lora dropout 0.05, sim_time_scale 50) = "
            f"{speed['after_s'] / speed['before_s']:.2f}x; final ppl {speed['ppl_after']:.2f} vs {speed['ppl_before']:.2f}"
        )
    result = {
        "wall_s": round(wall, 1),
        "cells": len(cells),
        "cells_cpu_s": None if cpu_total is None else round(cpu_total, 1),
        **result,
        "time_split": {k: round(v / busy, 4) for k, v in split.items()} if busy else {},
        "fixed_nmse_db_per_client_k1": {k: round(v, 2) for k, v in nmse.items()},
        "speed_cut_ratio": (earlier or {}).get("speed_cut_ratio")
        if speed is None
        else round(speed["after_s"] / speed["before_s"], 3),
    }
    if args.docs is not None:
        args.docs.mkdir(parents=True, exist_ok=True)
        for name in ("ppl_vs_round.png", "ppl_vs_energy.png"):
            shutil.copyfile(out / "sweep" / name, args.docs / name)
        (args.docs / "paper.md").write_text(markdown(result, numbers, cells, nmse), encoding="utf-8")
        (args.docs / "paper.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.docs}/ppl_vs_round.png, ppl_vs_energy.png, paper.md, paper.json")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
