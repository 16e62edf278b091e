"""Where a round's time goes in the demo, and how long the report takes (issue 12, points 1 and 6).

1. ``testbed run configs/dryrun.yaml`` (the demo, in this process): the median of each slice of
   the per-round time breakdown (plan, move, settle, estimate, dispatch, train, upload, OTA slot,
   aggregate, evaluate, checkpoint, other) beside its baseline from the same run, the median
   round wall time the slices add up to.
2. ``report_s``: ``testbed.report.write_report`` on a 30-round run (the demo's rounds repeated to
   30, so every plot has real data), drawn fresh in a new process (matplotlib's import included,
   as in ``testbed report``), median of 3, beside its own CPU time (the box's load set aside) and
   a rewrite with nothing changed (the plot cache). Target <= 5 s.

Last line: ``{"median_round_breakdown_s": {...}, "round_wall_s": ..., "report_s": ..., ...}``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_TIME_REPORT = """
import sys, time
from pathlib import Path
t, c = time.perf_counter(), time.process_time()
from testbed.report import write_report
write_report(Path(sys.argv[1]))
print(time.perf_counter() - t, time.process_time() - c)
"""


def demo_breakdown(out_dir: Path) -> tuple[dict[str, float], float, Path]:
    from testbed.config import load_config
    from testbed.experiment import run_experiment

    config = load_config(
        ROOT / "configs" / "dryrun.yaml", [f"run.output_dir={out_dir}", "run.log_level=WARNING"]
    )
    run_dir, summary = run_experiment(config)
    from testbed.records import read_events

    rounds = [d["data"] for d in read_events(run_dir / "events.jsonl") if d.get("kind") == "round"]
    wall = statistics.median(float(sum(r["time_breakdown_s"].values())) for r in rounds)
    return summary["median_time_breakdown_s"], wall, run_dir


def thirty_round_run(demo_dir: Path, out_dir: Path) -> Path:
    """A run directory with the demo's records, its rounds repeated to 30."""
    from testbed.records import RunRecorder, read_events

    docs = read_events(demo_dir / "events.jsonl")
    rounds = [d["data"] for d in docs if d.get("kind") == "round"]
    rec = RunRecorder.create(out_dir, "report30", "", fsync=False)
    start = next(d for d in docs if d.get("doc") == "start")
    rec.start(**{k: v for k, v in start.items() if k not in ("doc", "seq", "time")})
    for d in docs:
        if d.get("kind") == "plan":
            rec.event("plan", **d["data"])
    for t in range(1, 31):
        rec.event("round", **{**rounds[(t - 1) % len(rounds)], "round": t})
    rec.stop("success")
    summary = json.loads((demo_dir / "summary.json").read_text())
    rec.write_summary({**summary, "rounds": 30})
    rec.close()
    return rec.run_dir


def time_report(run_dir: Path, fresh: bool) -> tuple[float, float]:
    if fresh:
        for png in (run_dir / "report").glob("*"):
            png.unlink()
    out = subprocess.run(
        [sys.executable, "-c", _TIME_REPORT, str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"},
    )
    wall, cpu = (float(x) for x in out.stdout.split()[-2:])
    return wall, cpu


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        median, wall, demo_dir = demo_breakdown(Path(tmp))
        print(f"demo (configs/dryrun.yaml) median round wall time {wall:.2f} s; median slices:")
        for name, value in sorted(median.items(), key=lambda kv: -kv[1]):
            print(f"  {name.removesuffix('_s'):<11} {value:8.3f} s  ({value / wall:5.1%})")
        run30 = thirty_round_run(demo_dir, Path(tmp))
        fresh = [time_report(run30, fresh=True) for _ in range(3)]
        cached = time_report(run30, fresh=False)
    report_s = statistics.median(w for w, _ in fresh)
    report_cpu_s = statistics.median(c for _, c in fresh)
    print(
        f"report of a 30-round run, fresh process: {report_s:.2f} s wall, {report_cpu_s:.2f} s CPU "
        f"(median of 3; target <= 5 s; wall above CPU is the box's load); rewritten with nothing "
        f"changed: {cached[0]:.2f} s"
    )
    print(
        json.dumps(
            {
                "median_round_breakdown_s": {k: round(v, 4) for k, v in median.items()},
                "round_wall_s": round(wall, 3),
                "report_s": round(report_s, 2),
                "report_cpu_s": round(report_cpu_s, 2),
                "report_cached_s": round(cached[0], 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
