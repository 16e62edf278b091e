"""The run directory: layout, flush per record, torn-line tolerance, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from testbed.records import RecordError, RunRecorder, read_events


def test_layout_and_documents(tmp_path: Path) -> None:
    with RunRecorder.create(tmp_path, "demo", "run: {name: demo}\n") as rec:
        assert rec.run_dir.parent == tmp_path and rec.run_dir.name.startswith("demo-")
        for sub in ("checkpoints", "captures", "report"):
            assert (rec.run_dir / sub).is_dir()
        assert rec.config_path.read_text() == "run: {name: demo}\n"
        rec.start(plan="x")
        rec.event("round", round=1, loss=np.float32(2.5), h=np.array([1.0, 2.0]), b=1 + 2j)
        rec.stop("success")
        rec.write_summary({"rounds": 1})
    docs = read_events(rec.events_path)
    assert [d["doc"] for d in docs] == ["start", "event", "stop"]
    assert [d["seq"] for d in docs] == [0, 1, 2]
    assert docs[1]["kind"] == "round" and docs[1]["data"] == {
        "round": 1,
        "loss": 2.5,
        "h": [1.0, 2.0],
        "b": {"re": 1.0, "im": 2.0},
    }
    assert json.loads(rec.summary_path.read_text()) == {"rounds": 1}


def test_two_runs_in_the_same_second_get_separate_folders(tmp_path: Path) -> None:
    a = RunRecorder.create(tmp_path, "same", "")
    b = RunRecorder.create(tmp_path, "same", "")
    assert a.run_dir != b.run_dir
    a.close()
    b.close()


def test_each_record_is_on_disk_before_the_next_call(tmp_path: Path) -> None:
    rec = RunRecorder.create(tmp_path, "flush", "")
    rec.event("a", n=1)
    # Read through a separate handle while the writer is still open: the line must be there.
    assert [d["data"]["n"] for d in read_events(rec.events_path)] == [1]
    rec.event("a", n=2)
    assert len(rec.events_path.read_text().splitlines()) == 2
    rec.close()


def test_a_killed_writer_loses_nothing_it_wrote(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from testbed.records import RunRecorder\n"
        f"rec = RunRecorder.create({str(tmp_path)!r}, 'killed', '')\n"
        "for i in range(5): rec.event('tick', i=i)\n"
        "os._exit(9)\n"  # no close, no atexit: as a crash
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == 9
    (run_dir,) = tmp_path.iterdir()
    assert [d["data"]["i"] for d in read_events(run_dir / "events.jsonl")] == [0, 1, 2, 3, 4]


def test_torn_last_line_is_skipped_and_cut_on_resume(tmp_path: Path) -> None:
    rec = RunRecorder.create(tmp_path, "torn", "a: 1\n")
    rec.start()
    rec.event("round", round=1)
    rec.close()
    with rec.events_path.open("a") as f:
        f.write('{"doc": "event", "seq": 2, "ki')  # a crash mid-write
    assert len(read_events(rec.events_path)) == 2
    again = RunRecorder.reopen(rec.run_dir)
    again.event("round", round=2)
    again.close()
    docs = read_events(rec.events_path)
    assert [d.get("data", {}).get("round") for d in docs] == [None, 1, 2]
    assert docs[-1]["seq"] == 2  # numbering continues where the valid records ended
    assert all(line.startswith("{") for line in rec.events_path.read_text().splitlines())


def test_damage_before_the_last_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"doc": "start"}\nnot json\n{"doc": "stop"}\n')
    with pytest.raises(RecordError, match="line 2 is not valid JSON"):
        read_events(path)


def test_reopen_needs_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="not a run directory"):
        RunRecorder.reopen(tmp_path)
    with pytest.raises(RecordError, match="no events file"):
        read_events(tmp_path / "events.jsonl")


def test_log_lines_go_to_the_run_directory(tmp_path: Path) -> None:
    import logging

    rec = RunRecorder.create(tmp_path, "log", "")
    rec.attach_log()
    logging.getLogger("testbed.test").warning("stage ma0 homed")
    rec.close()
    assert "stage ma0 homed" in rec.log_path.read_text()
