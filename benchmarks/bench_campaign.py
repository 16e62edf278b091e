"""Campaign timing: time per grid point on the scaled-clock emulators against the model, and the
wall time of the demo run.

1. ``configs/campaign.yaml`` (GRBL emulators at sim_time_scale, sim radios, SigMF on): the mean
   wall time per grid point, beside its baseline measured in the same run: the modeled move
   (trapezoid at the stages' feed and acceleration, on the emulators' scaled clock) plus the
   settle time plus the pilots' air time. ``point_ratio`` = measured / modeled; above 1 is the
   controller's overhead (serial round trips, status polling, estimation, SigMF and fsync).
   The first step (from the homed corner) has no model and is left out.
2. ``testbed run configs/dryrun.yaml`` as a subprocess: its wall time (null, with a note, if it
   fails or runs past the time limit).

Last line: ``{"point_ratio": ..., "demo_wall_s": ...}``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEMO_TIMEOUT_S = 170.0


def bench_points(out_dir: Path) -> dict[str, float]:
    from testbed.campaign import run_campaign
    from testbed.config import load_config

    config = load_config(ROOT / "configs" / "campaign.yaml", [f"run.output_dir={out_dir}"])
    t0 = time.monotonic()
    result = run_campaign(config)
    total_s = time.monotonic() - t0
    wall, model = result.point_timing()
    scale = min(s.sim_time_scale for s in config.lab.stages.values())
    print(
        f"campaign: {result.steps_total} grid points ({config.lab.num_antennas} antennas x "
        f"{config.lab.clients.count} clients each), {total_s:.2f} s end to end "
        f"(open, home, measure, table, SigMF collection, report)"
    )
    print(f"  per point, measured wall      : {wall * 1e3:8.2f} ms")
    print(
        f"  per point, modeled (baseline)  : {model * 1e3:8.2f} ms  "
        f"(move + settle on the x{scale:g} emulator clock, + pilot air time)"
    )
    print(f"  ratio measured / modeled       : {wall / model:8.2f}")
    return {"point_ratio": wall / model, "point_wall_s": wall, "point_model_s": model}


def bench_demo(out_dir: Path) -> tuple[float | None, str]:
    cmd = [
        sys.executable,
        "-m",
        "testbed.cli",
        "run",
        str(ROOT / "configs" / "dryrun.yaml"),
        "--set",
        f"run.output_dir={out_dir}",
        "-q",
    ]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"testbed run configs/dryrun.yaml did not finish within {DEMO_TIMEOUT_S:.0f} s"
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return None, f"testbed run configs/dryrun.yaml exited {proc.returncode}: {tail[0][:200]}"
    return wall, ""


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench_campaign_") as tmp:
        points = bench_points(Path(tmp) / "campaign")
        demo_wall_s, note = bench_demo(Path(tmp) / "demo")
    if demo_wall_s is None:
        print(f"demo: null ({note})")
    else:
        print(
            f"demo: testbed run configs/dryrun.yaml took {demo_wall_s:.1f} s wall (budget 180 s: "
            f"ratio {demo_wall_s / 180.0:.2f})"
        )
    print(
        json.dumps(
            {
                "point_ratio": round(points["point_ratio"], 3),
                "demo_wall_s": None if demo_wall_s is None else round(demo_wall_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
