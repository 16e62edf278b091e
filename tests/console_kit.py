"""Synthetic run, campaign and compare folders for the console's server and browser tests, written
with ``RunRecorder`` as a run writes them (fast: no FL), and ``testbed serve`` as a child process."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from testbed.config import load_config, to_yaml
from testbed.records import RunRecorder

ROOT = Path(__file__).resolve().parent.parent
DRYRUN = ROOT / "configs" / "dryrun.yaml"
# A config name that would run script if the page put it into HTML.
EVIL_NAME = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
HOMED_M = [[-0.25, -0.3], [-0.32, -0.3], [-0.39, -0.3], [-0.46, -0.3]]


def config_yaml(name: str = "dryrun", rounds: int = 5) -> str:
    """The dry run's resolved config named ``name``; a name the config refuses (run.name is
    [A-Za-z0-9_.-]) is written in anyway, as a hand-edited file could hold it."""
    text = to_yaml(load_config(DRYRUN, overrides=["run.name=placeholder", f"fl.rounds={rounds}"]))
    return text.replace("name: placeholder", f"name: {json.dumps(name)}", 1)


def positions(r: int) -> list[list[float]]:
    """Four antennas inside the 0.5 m region, moving a little each round, D apart."""
    return [
        [-0.2 + 0.01 * (r % 5), -0.2],
        [0.2, -0.2 + 0.01 * (r % 7)],
        [0.2, 0.2],
        [-0.2, 0.2 - 0.01 * (r % 3)],
    ]


def round_data(r: int) -> dict:
    """A round record with the fields ``Experiment.on_round`` writes that the console shows."""
    return {
        "round": r,
        "scheme": "ours",
        "val_loss": 3.0 - 1.0 * (1 - math.exp(-r / 20)),
        "val_ppl": math.exp(3.0 - 1.0 * (1 - math.exp(-r / 20))),
        "train_loss": 3.1 - 1.0 * (1 - math.exp(-r / 20)),
        "nmse_db": -20.0 - (r % 4),
        "nmse_live_symbols_db": -21.0 - (r % 4),
        "nmse_fpa_db": -14.0 - (r % 3),
        "energy_model_j": 10.0 + (r % 3),
        "latency_model_s": 3.0,
        "latency_wall_s": 4.0,
        "time_breakdown_s": {"plan_s": 0.2, "move_s": 0.8 + 0.1 * (r % 3), "train_s": 2.0, "ota_s": 0.3},
        "positions_m": positions(r),
        "selected": [0, 2] if r % 2 else [1, 3],
        "dropped": [],
        "node_timing_s": {
            "0": {"train_s": 1.5},
            "1": {"train_s": 1.7},
            "2": {"train_s": 2.5},
            "3": {"train_s": 1.9},
        },
    }


def write_run(
    parent: Path, name: str, rounds: int, finished: bool, total: int | None = None, fsync: bool = False
) -> RunRecorder:
    """A run of ``rounds`` rounds (of ``total``) with its live documents; stopped ("success") if
    ``finished``, else in the next round's move with nodes, stages and a warning."""
    yaml = config_yaml(name, total or rounds + (0 if finished else 5))
    rec = RunRecorder.create(parent, re.sub(r"[^\w-]", "_", name)[:24], yaml, fsync=fsync)
    rec.start(name=name, scheme="ours", num_clients=4, num_antennas=4, region_m=0.5)
    rec.event("homed", positions_m=HOMED_M)
    for r in range(1, rounds + 1):
        rec.event("phase", round=r, phase="train", t_start=time.time())
        rec.event("round", **round_data(r))
    if finished:
        rec.stop("success")
    else:
        rec.event("phase", round=rounds + 1, phase="move", t_start=time.time())
        rec.event(
            "nodes",
            round=rounds + 1,
            nodes=[
                {"node": k, "alive": k != 3, "heartbeat_age_s": 0.4, "participation": 1, "tokens_per_s": 900.0 + k, "gpu_mem_bytes": None}
                for k in range(4)
            ],
        )  # fmt: skip
        rec.event(
            "stage",
            stage="ma0",
            state="moving",
            position_m=positions(rounds)[0],
            target_m=[0.0, -0.2],
            alarm=None,
        )
        for k in (1, 2, 3):
            rec.event(
                "stage",
                stage=f"ma{k}",
                state="idle",
                position_m=positions(rounds)[k],
                target_m=None,
                alarm=None,
            )
        rec.event("warning", logger="testbed.experiment", message=f"node 3 missed two heartbeats ({name})")
    return rec


def write_campaign(parent: Path, points: int = 30) -> RunRecorder:
    """A campaign over a 10 x 10 grid, two antennas per point, ``points`` points measured."""
    rec = RunRecorder.create(parent, "survey", config_yaml("survey"), fsync=False)
    grid = [round(-0.225 + 0.05 * i, 3) for i in range(10)]
    rec.start(
        kind="campaign", num_clients=2, num_antennas=2, region_m=0.5, steps=50, grid_x_m=grid, grid_y_m=grid
    )
    for step in range(points):
        cells = [(step % 5, step // 5), (step % 5 + 5, step // 5)]
        pos = [[grid[i], grid[j]] for i, j in cells]
        h = [[0.05 + 0.04 * math.cos(7 * x) * math.sin(5 * y) for x, y in pos] for _ in range(2)]
        rec.event("point", point=step, cells=cells, positions_m=pos, read_m=pos, h_re=h, h_im=[[0.0, 0.0]] * 2, snr_db=[[25.0, 26.0], [20.0, 21.0]])  # fmt: skip
    return rec


def write_compare(parent: Path) -> Path:
    """A compare of three schemes: one cell done, one running (a run folder, no done.json)."""
    from testbed.compare.cells import build_spec

    spec = build_spec(DRYRUN, [], "ours,fpa,digital", [], 1)
    root = parent / "compare-dryrun"
    root.mkdir()
    (root / "compare.json").write_text(json.dumps(spec.to_dict()), encoding="utf-8")
    done = root / "cells" / "g0-s0-ours"
    done.mkdir(parents=True)
    summary = {"rounds": 5, "final_val_ppl": 12.5, "mean_nmse_ma_db": -25.0, "wall_s": 60.0}
    (done / "done.json").write_text(json.dumps({"cell_id": "g0-s0-ours", "run_dir": "x", "summary": summary}))
    write_run(root / "cells" / "g0-s0-fpa", "g0-s0-fpa", 2, finished=False).close()
    (root / "compare.md").write_text(
        "# compare\n\n| scheme | ppl |\n|---|---|\n| ours | 12.5 |\n<b>not bold</b>\n"
    )
    return root


def tiny_png() -> bytes:
    """A valid 1 x 1 PNG (a report figure stand-in)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\x1f\x77\xb4"))
        + chunk(b"IEND", b"")
    )


@dataclass
class Served:
    process: subprocess.Popen[str]
    url: str
    port: int

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """GET on loopback only (whatever address the server was bound to)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers or {})
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=30) as reply:
                return reply.status, dict(reply.headers), reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def stop(self) -> str:
        self.process.terminate()
        try:
            _, err = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def serve(directory: Path, *args: str) -> Served:
    """``testbed serve DIRECTORY --port 0 ARGS`` in a child process; its printed URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "testbed.cli", "serve", str(directory), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"(http://\S+)", line)
    if match is None:
        process.kill()
        raise AssertionError(f"testbed serve printed no URL: {line!r} {process.communicate()[1]}")
    url = match.group(1)
    port = int(re.search(r":(\d+)/", url).group(1))  # type: ignore[union-attr]
    return Served(process, url, port)
