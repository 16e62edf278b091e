"""Stage benchmarks on the GRBL emulator (``grblsim://``), same machine, same run.

(a) Command round trip: ``GrblStage.command("G90")`` (write a line, the reader thread hands the
    ``ok`` back) against a bare pyserial ``write`` then ``read_until(b"ok\\r\\n")`` on the same
    emulator. Ratio = driver median / bare median (target <= 1.5).
(b) A 16 x 16 snake raster (0.1 m square) through ``GrblStage.move_to(...).wait()`` on the scaled
    clock, against the modelled motion time of the same moves (trapezoids at the stage's speed and
    acceleration) converted to wall seconds at the emulator's scale. Their ratio is the driver's
    per-move overhead (the ``ok`` round trips and the ``G4`` completion handshake).

The last line is one JSON object: ``{"roundtrip_ratio", "raster_wall_s", "raster_model_s"}``.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import serial  # noqa: E402

from drivers.grbl import GrblStage  # noqa: E402
from drivers.positioner import StageLimits  # noqa: E402
from sim.grbl_device import GrblDevice  # noqa: E402
from sim.motion import move_time_s  # noqa: E402
from sim.serial_url import register, unregister  # noqa: E402

ROUND_TRIPS = 400
SCALE = 20.0  # the config's default sim_time_scale
GRID = 16
SIDE_M = 0.1
LIMITS = StageLimits(travel_m=(0.5, 0.5), max_speed_m_s=0.05, accel_m_s2=0.5)


def bare_roundtrips(url: str, n: int) -> list[float]:
    port = serial.serial_for_url(url, timeout=1.0)
    try:
        port.read_until(b"unlock]\r\n")  # banner + alarm message after the open-time reset
        port.write(b"$X\n")  # leave the power-up alarm, so G-code is served
        port.read_until(b"ok\r\n")
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            port.write(b"G90\n")
            reply = port.read_until(b"ok\r\n")
            times.append(time.perf_counter() - t0)
            if not reply.endswith(b"ok\r\n"):
                raise RuntimeError(f"bare round trip got {reply!r}")
        return times
    finally:
        port.close()


def driver_roundtrips(stage: GrblStage, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        stage.command("G90")
        times.append(time.perf_counter() - t0)
    return times


def raster_points() -> list[tuple[float, float]]:
    step = SIDE_M / (GRID - 1)
    points = []
    for j in range(GRID):
        cols = range(GRID) if j % 2 == 0 else range(GRID - 1, -1, -1)
        points += [(0.05 + i * step, 0.05 + j * step) for i in cols]
    return points


def main() -> int:
    device = GrblDevice(time_scale=SCALE, name="bench")
    register("grblsim", "bench", device)
    url = "grblsim://bench"
    try:
        for _ in range(2):  # warm both paths, then measure each twice, interleaved
            bare = bare_roundtrips(url, 50)
        bare, driver = [], []
        for _ in range(2):
            bare += bare_roundtrips(url, ROUND_TRIPS // 2)
            stage = GrblStage(url, LIMITS, name="bench")
            try:
                stage.unlock()
                driver += driver_roundtrips(stage, ROUND_TRIPS // 2)
            finally:
                stage.close()
        bare_med, drv_med = statistics.median(bare), statistics.median(driver)
        ratio = drv_med / bare_med
        print(f"round trip 'G90' -> ok: bare pyserial {bare_med * 1e6:.0f} us, driver {drv_med * 1e6:.0f} us "
              f"(median of {len(bare)}); ratio {ratio:.2f} (target <= 1.5)")  # fmt: skip

        stage = GrblStage(url, LIMITS, name="bench")
        try:
            stage.home().wait(60.0)
            points = raster_points()
            stage.move_to(points[0]).wait(60.0)
            model_s = 0.0
            t0 = time.perf_counter()
            for a, b in zip(points, points[1:], strict=False):
                stage.move_to(b).wait(60.0)
                model_s += move_time_s(math.dist(a, b), LIMITS.max_speed_m_s, LIMITS.accel_m_s2)
            wall_s = time.perf_counter() - t0
        finally:
            stage.close()
        model_wall_s = model_s / SCALE
        print(f"raster {GRID}x{GRID} ({len(points) - 1} moves, {SIDE_M} m square, clock x{SCALE:g}): "
              f"wall {wall_s:.3f} s vs modelled motion {model_wall_s:.3f} s ({model_s:.2f} s on the model "
              f"clock); ratio {wall_s / model_wall_s:.3f}, overhead {(wall_s - model_wall_s) / (len(points) - 1) * 1e3:.2f} "
              "ms per move")  # fmt: skip
    finally:
        unregister("grblsim", "bench")
    print(json.dumps({"roundtrip_ratio": round(ratio, 3), "raster_wall_s": round(wall_s, 3),
                      "raster_model_s": round(model_wall_s, 3)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
