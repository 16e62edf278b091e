"""`testbed watch` through the real CLI in a subprocess, on synthetic run, campaign and compare
directories (tests/test_console_view.py writes them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from test_console_view import round_data, write_campaign, write_compare, write_run

from testbed.console.control import RunningMarker
from testbed.console.watch import duration, si, sparkline

ROOT = Path(__file__).resolve().parent.parent


def watch(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "testbed.cli", "watch", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def test_once_on_a_running_run_shows_round_phase_nodes_stages_curves_budgets(tmp_path: Path) -> None:
    rec = write_run(tmp_path, rounds=3)
    with RunningMarker(rec.run_dir, "run"):
        out = watch(rec.run_dir, "--once")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "run dryrun (ours)  running" in text
    assert "round 4 of 5" in text and "ETA" in text
    assert "phase: move for" in text
    # The node table: node 3 is down, node 0 trained 4.5 s in the last round at 100 tokens/s.
    assert "NO" in text and "4.5 s" in text and "400" in text
    assert "ma1" in text and "alarm" in text and "(200.0, 100.0) mm" in text
    # Sparklines of the three rounds; the fixed array's NMSE is flat, the movable one falls.
    assert "val perplexity" in text and "NMSE movable" in text and "NMSE fixed" in text
    assert "█▄▁" in text and "-24 dB" in text and "-15 dB" in text
    assert "30 J of 50 kJ (0.1 %)" in text and "9 s of 600 s (1.5 %)" in text
    assert "4 antennas" in text and "clearance D 62.5 mm" in text
    assert "round 4: nodes [3] are down" in text


def test_once_on_a_finished_run_shows_how_it_ended(tmp_path: Path) -> None:
    rec = write_run(tmp_path, rounds=5)
    rec.stop("success")
    out = watch(rec.run_dir, "--once")
    assert out.returncode == 0, out.stderr
    assert "5 of 5 rounds done" in out.stdout and "ended: done" in out.stdout
    assert "phase:" not in out.stdout


def test_follows_a_running_run_until_it_stops(tmp_path: Path) -> None:
    rec = write_run(tmp_path, rounds=2)
    marker = RunningMarker(rec.run_dir, "run").__enter__()
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed.cli", "watch", str(rec.run_dir), "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        time.sleep(1.0)
        assert proc.poll() is None  # still following: the run is running
        rec.event("round", **round_data(3))
        rec.stop("interrupted", reason="Ctrl-C: --resume continues")
        marker.__exit__(None, None, None)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    # The frame left on screen is the run as it ended, with the round recorded while following.
    assert "3 of 5 rounds done" in out
    assert "ended: interrupted (Ctrl-C: --resume continues)" in out


def test_json_once_is_the_views_snapshot(tmp_path: Path) -> None:
    rec = write_run(tmp_path, rounds=2)
    rec.stop("success")
    out = watch(rec.run_dir, "--once", "--json")
    assert out.returncode == 0, out.stderr
    [line] = out.stdout.strip().splitlines()
    snap = json.loads(line)
    assert (snap["kind"], snap["status"], snap["rounds_done"], snap["rounds_total"]) == ("run", "done", 2, 5)
    assert [r["round"] for r in snap["rounds"]] == [1, 2]


def test_a_torn_last_line_is_no_error(tmp_path: Path) -> None:
    rec = write_run(tmp_path, rounds=2)
    rec.close()
    with rec.events_path.open("a") as f:
        f.write('{"doc": "event", "kind": "round", "data": {"round": 3, "val_lo')
    out = watch(rec.run_dir, "--once")
    assert out.returncode == 0, out.stderr
    assert "2 of 5 rounds done" in out.stdout


def test_once_on_a_campaign(tmp_path: Path) -> None:
    rec = write_campaign(tmp_path)
    with RunningMarker(rec.run_dir, "campaign"):
        out = watch(rec.run_dir, "--once")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "campaign" in text and "points 2 of 4" in text and "ETA" in text
    assert "phase: estimate for" in text
    assert "point 1: gain |h| (dB)" in text and "-20.0" in text and "-40.0" in text


def test_once_on_a_compare(tmp_path: Path) -> None:
    root = write_compare(tmp_path)
    with RunningMarker(root, "compare"):
        out = watch(root, "--once")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "compare dryrun (ours,fpa,digital)  running" in text
    assert "cells 1 of 3 done" in text
    assert "g0-s0-fpa" in text and "round 2 of 5" in text and "train" in text
    assert "1 cell pending" in text
    # The finished cell, from its done.json: five rounds, val ppl 12.5, NMSE -25 dB through the MA.
    assert "finished cells" in text
    [done_row] = [line for line in text.splitlines() if "g0-s0-ours" in line]
    assert "12.5" in done_row and "-25.0" in done_row and "1m00s" in done_row


def test_a_folder_that_is_none_of_the_three_exits_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "compare.json").write_text("[]")
    for path, says in [
        (empty, "it has no config.yaml"),
        (tmp_path / "missing", "no such directory"),
        (bad, "compare.json"),
    ]:
        out = watch(path, "--once")
        assert out.returncode == 2, path
        assert "testbed watch: error:" in out.stderr and says in out.stderr


def test_a_bad_interval_exits_2(tmp_path: Path) -> None:
    out = watch(tmp_path, "--interval", "0")
    assert out.returncode == 2 and "--interval" in out.stderr


def test_sparkline_scales_and_blanks() -> None:
    assert sparkline([0.0, 1.0, 7.0]) == "▁▂█"
    assert sparkline([1.0, None, float("-inf"), 3.0]) == "▁  █"
    assert sparkline([2.0, 2.0]) == "▁▁"
    # A shared scale: the same value draws the same bar on two lines.
    assert sparkline([-20.0], lo=-30.0, hi=-10.0) == "▅"
    assert sparkline([None, None]) == "  "


def test_formatters() -> None:
    assert duration(5.25) == "5.2 s" and duration(125) == "2m05s" and duration(7260) == "2h01m"
    assert duration(None) == "-"
    assert si(50_000, "J") == "50 kJ" and si(0.0625, "m") == "62.5 mm" and si(None, "J") == "-"
