"""The guide's tutorials, run: every ```bash block of docs/tutorials/*.md, in order, as one shell
script per tutorial, so a tutorial cannot go stale.

A block right under ``<!-- not run by the tests: WHY -->`` is not run (it needs hardware, the
lab's hosts, or the 20-minute paper sweep); ``test_what_is_not_run_says_why`` lists them. The
script runs in a fresh folder with a copy of configs/, with ``testbed`` and ``python`` on PATH
running this checkout. To keep the suite fast, ``testbed run/compare/measure/plan`` get the
small overrides the other tests use (fewer rounds, samples and optimizer starts), except for a
field the tutorial's own command sets: the tutorial's commands run as written, only smaller.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dryrun_kit
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docs"))

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "docs" / "tutorials"
NOT_RUN = re.compile(r"<!-- not run by the tests: (.+?) -->\s*$")
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)

# The fast settings, per subcommand (as tests/test_console_live.py and tests/test_compare.py use).
FAST = {
    "run": ["fl.rounds=2", *dryrun_kit.FAST],
    "compare": [
        "fl.rounds=1",
        "allocation.max_rounds=1",
        "fl.data.num_samples=60",
        "fl.training.local_steps=1",
        "allocation.position_starts=1",
    ],
    "measure": ["campaign.step_wavelengths=1.0"],
    "plan": ["allocation.position_starts=1", "allocation.max_outer_iterations=10"],
}

# `testbed` on the tutorial's PATH: this checkout's CLI, with the fast settings added after the
# tutorial's own arguments for every field the command does not set itself.
SHIM = """#!{python}
import json, os, sys
from testbed.cli import main

# The guard matters: the node processes' start method imports __main__ again.
if __name__ == "__main__":
    args = sys.argv[1:]
    command = next((a for a in args if not a.startswith("-")), "")
    own = {{args[i + 1].split("=", 1)[0] for i, a in enumerate(args[:-1]) if a == "--set"}}
    extra = []
    # A resumed run or campaign keeps its config.yaml, fast settings included.
    if not (command in ("run", "measure") and "--resume" in args):
        for o in json.loads(os.environ["TUTORIAL_FAST"]).get(command, []):
            if o.split("=", 1)[0] not in own:
                extra += ["--set", o]
    sys.exit(main(args + extra))
"""


def blocks(page: Path) -> list[tuple[str, str | None]]:
    """Each ```bash block of a page with the reason it is not run (None: it runs)."""
    text = page.read_text(encoding="utf-8")
    found = []
    for m in BLOCK.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.match(before.strip())
        found.append((m.group(1), reason.group(1) if reason else None))
    return found


def run_tutorial(name: str, tmp_path: Path, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    page = TUTORIALS / f"{name}.md"
    script = "\n".join(code for code, reason in blocks(page) if reason is None)
    assert script.strip(), f"{page}: no command to run"
    work = tmp_path / "work"
    shutil.copytree(ROOT / "configs", work / "configs")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "testbed").write_text(SHIM.format(python=sys.executable))
    (bin_dir / "testbed").chmod(0o755)
    # A wrapper, not a link: a link to the venv's python outside .venv/bin loses the venv.
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "TUTORIAL_FAST": json.dumps(FAST),
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "120",
    }
    # Whatever the tutorial leaves in the background ends with the script.
    prologue = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\nset -x\n"
    proc = subprocess.run(
        ["bash", "-c", prologue + script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, (
        f"{page.name} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    )
    return proc


def only(pattern: str, root: Path) -> Path:
    found = sorted(root.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def test_every_tutorial_is_tested_and_what_is_not_run_says_why() -> None:
    pages = sorted(p.stem for p in TUTORIALS.glob("*.md"))
    assert pages == sorted(["first-dry-run", "compare", "campaign", "hardware", "console"])
    skipped = {p.stem: [r for _, r in blocks(p) if r] for p in TUTORIALS.glob("*.md")}
    # Only these need what a test cannot have: the paper's sweep, a USRP, the lab's hosts.
    assert {k: len(v) for k, v in skipped.items() if v} == {"compare": 1, "hardware": 2}
    for page in TUTORIALS.glob("*.md"):
        for code, _ in blocks(page):
            assert code.strip(), f"{page.name}: an empty bash block"


@pytest.mark.slow
def test_tutorial_1_the_first_dry_run(tmp_path: Path) -> None:
    proc = run_tutorial("first-dry-run", tmp_path)
    run = only("work/runs/dryrun-*", tmp_path)
    out = proc.stdout
    assert f"run directory: runs/{run.name}" in out
    # The breakdown as rounded milliseconds, largest first, not a dict of 16-digit floats.
    assert re.search(r"median round time: [a-z]+ \d+ ms, [a-z]+ \d+ ms", out)
    assert "median_time_breakdown_s: {" not in out
    for name in ["config.yaml", "events.jsonl", "run.log", "summary.json", "fl/checkpoints/LATEST"]:
        assert (run / name).exists(), name
    report = (run / "report" / "report.md").read_text()
    assert "initial val loss (before round 1)" in report and "| slice | median (ms) | share |" in report
    assert "_No data" not in report
    assert re.search(r"round 2: round_done", out)
    # The record formats page documents every key a real round record has.
    import hooks  # docs/hooks.py (tests/test_docs.py puts docs/ on the path too)

    records = hooks.records_page()
    for line in (run / "events.jsonl").read_text().splitlines():
        doc = json.loads(line)
        if doc.get("kind") == "round":
            missing = [k for k in doc["data"] if not re.search(rf"\b{k}\b", records)]
            assert not missing, f"round keys missing from the record formats page: {missing}"


@pytest.mark.slow
def test_tutorial_2_comparing_schemes(tmp_path: Path) -> None:
    run_tutorial("compare", tmp_path)
    first = tmp_path / "work" / "runs" / "first-compare"
    report = (first / "compare.md").read_text()
    for scheme in ["ours", "fpa", "non_ma", "digital"]:
        assert scheme in report
    assert len(list((first / "cells").glob("*/done.json"))) == 4
    assert len(list((tmp_path / "work" / "runs" / "k-compare" / "cells").glob("*/done.json"))) == 4


@pytest.mark.slow
def test_tutorial_3_a_campaign_and_planning_on_its_map(tmp_path: Path) -> None:
    proc = run_tutorial("campaign", tmp_path)
    campaign = only("work/runs/campaign-*", tmp_path)
    out = proc.stdout
    # The run directory is said first, before the campaign's own end line.
    assert out.index(f"run directory: runs/{campaign.name}") < out.index("campaign complete")
    report = (campaign / "report" / "report.md").read_text()
    assert report.startswith("# Campaign report") and "Scheme" not in report and "_No data" not in report
    assert "summed over the clients" in report
    assert f"channel: the measured map of campaign {campaign.parent.name}/{campaign.name}" in out or (
        f"channel: the measured map of campaign runs/{campaign.name}" in out
    )
    run = only("work/runs/dryrun-*", tmp_path)
    assert (run / "summary.json").exists()


@pytest.mark.slow
def test_tutorial_4_hardware_on_the_emulators(tmp_path: Path) -> None:
    proc = run_tutorial("hardware", tmp_path)
    out = proc.stdout
    assert "grbl emulator at socket://127.0.0.1:23000" in out
    assert "READY tcp://127.0.0.1:5600" in out
    assert "ma0" in out and "grbl" in out
    keys = tmp_path / "work" / "keys"
    assert (keys / "coordinator.key_secret").exists() and (keys / "allow" / "radio").is_dir()


@pytest.mark.slow
def test_tutorial_5_watch_stop_and_resume(tmp_path: Path) -> None:
    proc = run_tutorial("console", tmp_path)
    run = only("work/runs/watched-*", tmp_path)
    assert "<!doctype html>" in proc.stdout.lower() or "<html" in proc.stdout.lower()
    stops = [
        json.loads(line)
        for line in (run / "events.jsonl").read_text().splitlines()
        if '"doc": "stop"' in line
    ]
    assert [s["status"] for s in stops] == ["stopped", "success"]
    assert json.loads((run / "summary.json").read_text())["rounds"] == 12
