"""The console's web page under load: first paint, server memory, and the latency of a live round.

1. First paint of a run page with 1,000 rounds, in Debian's headless chromium, from navigation to
   the frame after every chart and the map are drawn (cold: the server's first look at the run;
   warm: the median of 5 more). Baseline: the same browser showing that run's events.jsonl as a
   static file (a plain http.server), the floor of any page that shows the whole run.
2. The server's resident memory with 10 open pages (10 event streams, each past its snapshot) on
   a running run whose events.jsonl is 100 MB (its rounds plus the live documents of a long run:
   phases, heartbeats, stage states, budgets). Baseline: a process that reads that file whole
   with ``read_events`` (what a page that re-reads the file per update would hold).
3. The latency from a round record appended to that 100 MB file to the open page's render
   (median of 20). Baseline: one whole-file re-read and parse (``read_events``).

Targets: first paint <= 1 s, memory <= 200 MB, latency <= 0.5 s. Every request goes to 127.0.0.1;
the browser cannot reach anything else. The last line is JSON: first_paint_s, rss_mb,
event_latency_s.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from console_kit import HOMED_M, config_yaml, round_data, serve  # noqa: E402

from testbed.console.control import RunningMarker  # noqa: E402
from testbed.records import RunRecorder  # noqa: E402

ROUNDS = 1000
BIG_MB = 100
PAGES = 10
LATENCY_N = 20
NODES = 4


def write_rounds(
    parent: Path, name: str, rounds: int, live_docs: bool, target_mb: float = 0.0
) -> RunRecorder:
    """A run of ``rounds`` rounds; with ``live_docs``, each round also has the phases, a minute of
    heartbeats (one nodes document a second) and stage states a live run writes, and rounds are
    added until the file holds ``target_mb``."""
    rec = RunRecorder.create(parent, name, config_yaml(name, rounds=10_000), fsync=False)
    rec.start(name=name, scheme="ours", num_clients=NODES, num_antennas=4, region_m=0.5)
    rec.event("homed", positions_m=HOMED_M)
    r = 0
    while r < rounds or (live_docs and rec.events_path.stat().st_size < target_mb * 1e6):
        r += 1
        if live_docs:
            for phase in ("plan", "move", "settle", "estimate", "dispatch", "train", "ota", "aggregate", "evaluate", "checkpoint"):  # fmt: skip
                rec.event("phase", round=r, phase=phase, t_start=time.time())
            for stage in range(4):
                for state in ("moving", "idle"):
                    rec.event("stage", stage=f"ma{stage}", state=state, position_m=[0.1, 0.2], target_m=[0.1, 0.2], alarm=None)  # fmt: skip
            for _ in range(60):
                rec.event("nodes", round=r, nodes=[
                    {"node": k, "alive": True, "heartbeat_age_s": 0.3, "participation": 1, "tokens_per_s": 812.5,
                     "gpu_mem_bytes": 3.2e9} for k in range(NODES)])  # fmt: skip
            rec.event(
                "budget",
                round=r,
                energy_j=10.0 * r,
                energy_budget_j=1e6,
                latency_s=3.0 * r,
                latency_budget_s=1e6,
            )
        rec.event("round", **round_data(r))
    return rec


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident and peak resident memory of a process (Linux /proc), in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def whole_file_reader(path: Path) -> tuple[float, float]:
    """Baseline: a fresh process reads and parses the whole file; (seconds, its peak RSS in MB)."""
    code = (
        "import sys, time, resource; from testbed.records import read_events; t = time.perf_counter(); "
        "docs = read_events(sys.argv[1]); dt = time.perf_counter() - t; "
        "print(dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    seconds, peak = out.stdout.split()
    return float(seconds), float(peak)


def open_stream(port: int, rel: str) -> Any:
    """One page's event stream, read up to the end of its snapshot (and then left open)."""
    reply = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stream/{rel}", timeout=120)
    seen_snapshot = False
    for raw in reply:
        if raw.startswith(b"event: snapshot"):
            seen_snapshot = True
        elif seen_snapshot and raw == b"\n":
            return reply
    raise RuntimeError("the stream ended before its snapshot")


def browser() -> Any | None:
    """Debian's headless chromium through chromium-driver, reaching loopback only; None if absent."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        print("no selenium: the browser figures are skipped")
        return None
    if not (Path("/usr/bin/chromium").is_file() and Path("/usr/bin/chromedriver").is_file()):
        print("no chromium/chromedriver (make system-deps): the browser figures are skipped")
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1500",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--no-pings",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=127.0.0.1:9",
                "--proxy-bypass-list=127.0.0.1"):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def wait_for(driver: Any, script: str, timeout_s: float = 60.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.01).until(lambda d: d.execute_script(script))


DRAWN = (
    "return document.body.dataset.loaded === '1' && performance.getEntriesByName('first-paint').length > 0 "
    f"&& [...document.querySelectorAll('[data-chart]')].every(c => c.dataset.points === '{ROUNDS}') "
    "&& document.querySelectorAll('#map circle.antenna').length === 4"
)


def first_paint(driver: Any, url: str) -> float:
    """Seconds from navigation start to the painted frame with every chart and the map."""
    driver.get(url)
    wait_for(driver, DRAWN)
    return driver.execute_script("return performance.getEntriesByName('first-paint')[0].startTime") / 1e3


def static_paint(driver: Any, url: str) -> float:
    """Seconds from navigation start to the load of a static text file."""
    driver.get(url)
    wait_for(driver, "return document.readyState === 'complete'")
    return driver.execute_script("return performance.getEntriesByType('navigation')[0].loadEventEnd") / 1e3


def main() -> int:
    result: dict[str, float | None] = {"first_paint_s": None, "rss_mb": None, "event_latency_s": None}
    with tempfile.TemporaryDirectory(prefix="bench_console-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        small = write_rounds(root / "paint", "thousand", ROUNDS, live_docs=False)
        small.stop("success")
        small.close()
        big = write_rounds(root / "big", "big", 0, live_docs=True, target_mb=BIG_MB)
        size_mb = big.events_path.stat().st_size / 1e6
        rounds_big = len(big.events("round"))
        print(f"set-up: {ROUNDS} rounds ({small.events_path.stat().st_size / 1e6:.1f} MB); a running run of "
              f"{rounds_big} rounds with its live documents, {size_mb:.1f} MB ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
        driver = browser()
        try:
            with RunningMarker(big.run_dir, "run"):
                # 1. first paint
                if driver is not None:
                    served = serve(root / "paint")
                    plain = http.server.ThreadingHTTPServer(
                        ("127.0.0.1", 0),
                        functools.partial(_Quiet, directory=str(small.run_dir)),
                    )
                    threading.Thread(target=plain.serve_forever, daemon=True).start()
                    try:
                        page = f"http://127.0.0.1:{served.port}/view/{small.run_dir.name}"
                        cold = first_paint(driver, page)
                        warm = statistics.median(first_paint(driver, page) for _ in range(5))
                        static_url = f"http://127.0.0.1:{plain.server_address[1]}/events.jsonl"
                        static = statistics.median(static_paint(driver, static_url) for _ in range(3))
                    finally:
                        plain.shutdown()
                        served.stop()
                    result["first_paint_s"] = round(cold, 3)
                    print(f"first paint, {ROUNDS} rounds: cold {cold:.3f} s, warm {warm:.3f} s (median of 5) vs the "
                          f"browser loading events.jsonl as a static file {static:.3f} s; ratio {cold / static:.2f} "
                          "(target <= 1 s)")  # fmt: skip
                # 2. memory with 10 pages on the 100 MB run, 3. latency of an appended round
                served = serve(root / "big")
                streams = []
                try:
                    idle_mb, _ = rss_mb(served.process.pid)
                    t = time.perf_counter()
                    streams = [open_stream(served.port, big.run_dir.name) for _ in range(PAGES)]
                    catch_up = time.perf_counter() - t
                    rss, peak = rss_mb(served.process.pid)
                    naive_s, naive_mb = whole_file_reader(big.events_path)
                    result["rss_mb"] = round(rss, 1)
                    print(f"server memory, {PAGES} pages on {size_mb:.0f} MB: RSS {rss:.1f} MB (peak {peak:.1f} MB; "
                          f"{idle_mb:.1f} MB before any page; first snapshot after {catch_up:.2f} s) vs reading "
                          f"the file whole {naive_mb:.1f} MB; ratio {rss / naive_mb:.2f} (target <= 200 MB)")  # fmt: skip
                    if driver is not None:
                        driver.get(f"http://127.0.0.1:{served.port}/view/{big.run_dir.name}")
                        wait_for(driver, "return document.body.dataset.loaded === '1'", 120)
                        delays = []
                        for r in range(rounds_big + 1, rounds_big + 1 + LATENCY_N):
                            time.sleep(random.uniform(0.05, 0.25))  # any phase of the server's poll
                            before = driver.execute_script("return TB_PAGE.charts.ppl.box.dataset.points")
                            appended = time.time()
                            big.event("round", **round_data(r))
                            wait_for(
                                driver, f"return TB_PAGE.charts.ppl.box.dataset.points !== '{before}'", 10
                            )
                            rendered = (
                                float(driver.execute_script("return document.body.dataset.renderedAt")) / 1e3
                            )
                            delays.append(rendered - appended)
                        latency = statistics.median(delays)
                        result["event_latency_s"] = round(latency, 3)
                        print(f"appended round -> page: median {latency:.3f} s of {LATENCY_N} (max {max(delays):.3f} "
                              f"s) vs one whole-file re-read {naive_s:.3f} s; ratio {latency / naive_s:.3f} "
                              "(target <= 0.5 s)")  # fmt: skip
                finally:
                    for stream in streams:
                        with contextlib.suppress(Exception):
                            stream.close()
                    served.stop()
        finally:
            if driver is not None:
                driver.quit()
            big.close()
    print(json.dumps(result))
    return 0


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


if __name__ == "__main__":
    sys.exit(main())
