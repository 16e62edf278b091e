"""`testbed serve` over HTTP: the index, the live stream, the token, the Host check, a port in use,
the folders it refuses, and the report files it serves (and those it does not).

The server runs as the CLI runs it (a child process on a free loopback port); every request goes
to 127.0.0.1, also for the server bound to 0.0.0.0. The browser tests are in
``test_console_browser.py``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console_kit import EVIL_NAME, ROOT, round_data, serve, write_campaign, write_compare, write_run
from hypothesis import given
from hypothesis import strategies as st

from testbed.console.control import RunningMarker
from testbed.console.server import is_loopback, patch_of


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A finished run, a running run (its marker held by this process), a campaign, a compare."""
    root = tmp_path_factory.mktemp("runs")
    done = write_run(root, "dryrun", 6, finished=True)
    done.close()
    live = write_run(root, "edge", 4, finished=False)
    campaign = write_campaign(root)
    campaign.close()
    compare = write_compare(root)
    with RunningMarker(live.run_dir, "run"):
        yield {
            "root": root,
            "done": done.run_dir,
            "live": live,
            "campaign": campaign.run_dir,
            "compare": compare,
        }
    live.close()


@pytest.fixture(scope="module")
def server(runs: dict[str, Any]) -> Iterator[Any]:
    served = serve(runs["root"])
    yield served
    served.stop()


def _json(served: Any, path: str) -> Any:
    status, _, body = served.get(path)
    assert status == 200, body
    return json.loads(body)


def test_index_lists_each_folder_with_its_status(server: Any, runs: dict[str, Any]) -> None:
    rows = {row["rel"]: row for row in _json(server, "/api/index")["rows"]}
    assert rows[runs["done"].name]["status"] == "done"
    assert rows[runs["done"].name]["done"] == 6 and rows[runs["done"].name]["final_ppl"] > 1
    assert rows[runs["live"].run_dir.name]["status"] == "running"
    assert rows["compare-dryrun"]["kind"] == "compare" and rows["compare-dryrun"]["total"] == 3
    assert rows[runs["campaign"].name]["kind"] == "campaign"
    # The compare's cells are on its page, not rows of the index.
    assert not any("cells/" in rel for rel in rows)


def test_snapshot_and_pages(server: Any, runs: dict[str, Any]) -> None:
    state = _json(server, f"/api/view/{runs['done'].name}")
    assert state["view"]["kind"] == "run" and len(state["view"]["rounds"]) == 6
    assert state["view"]["antennas"]["positions_m"] == round_data(6)["positions_m"]
    status, headers, body = server.get(f"/view/{runs['done'].name}")
    assert status == 200 and b'<main id="main">' in body
    # No script of the page is inline, and the policy forbids any.
    assert b"<script>" not in body and "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    status, _, body = server.get("/static/vendor/uplot/LICENSE")
    assert status == 200 and b"MIT License" in body


def test_unknown_folders_and_traversal_are_404(server: Any, runs: dict[str, Any]) -> None:
    assert server.get("/api/view/nothing-here")[0] == 404
    assert server.get("/api/view/..%2F..%2Fetc")[0] == 404
    assert server.get(f"/api/view/{runs['done'].name}/checkpoints")[0] == 404
    # A compare's cell run has a page; a path that only looks like one does not.
    assert server.get("/api/view/compare-dryrun/cells/g0-s0-fpa/" + _cell_run(runs))[0] == 200
    assert server.get("/api/view/compare-dryrun/cells/../cells/g0-s0-fpa/" + _cell_run(runs))[0] == 404


def _cell_run(runs: dict[str, Any]) -> str:
    return next((runs["compare"] / "cells" / "g0-s0-fpa").iterdir()).name


def test_report_files_only_from_a_compare(server: Any, runs: dict[str, Any]) -> None:
    status, headers, body = server.get("/files/compare-dryrun/compare.md")
    # Served as plain text (the page shows it with textContent), never as HTML.
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b"<b>not bold</b>" in body
    (runs["compare"] / "secret.txt").write_text("no")
    (runs["compare"] / "link.md").symlink_to(runs["done"] / "config.yaml")
    assert server.get("/files/compare-dryrun/secret.txt")[0] == 404
    assert server.get("/files/compare-dryrun/link.md")[0] == 404
    assert server.get(f"/files/{runs['done'].name}/config.yaml")[0] == 404
    assert server.get("/files/compare-dryrun/..%2Fcompare.json")[0] == 404


def _events(served: Any, rel: str) -> Iterator[tuple[str, Any]]:
    """The page's stream as (event, data) pairs, read as a browser's EventSource reads it."""
    reply = urllib.request.urlopen(f"http://127.0.0.1:{served.port}/api/stream/{rel}", timeout=30)
    assert reply.headers["content-type"].startswith("text/event-stream")
    event, data = "", ""
    for raw in reply:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and event:
            yield event, json.loads(data)
            event, data = "", ""


def test_stream_sends_a_snapshot_then_appended_rounds(server: Any, runs: dict[str, Any]) -> None:
    rec = runs["live"]
    stream = _events(server, rec.run_dir.name)
    event, state = next(stream)
    assert event == "snapshot" and [r["round"] for r in state["view"]["rounds"]] == [1, 2, 3, 4]
    rec.event("round", **round_data(5))
    for event, patch in stream:
        assert event == "patch"
        rounds = patch.get("view", {}).get("patch", {}).get("rounds")
        if rounds is not None:
            # Only the new row travels: the page never gets the whole run again.
            assert list(rounds) == ["append"] and [r["round"] for r in rounds["append"]] == [5]
            break
    stream.close()  # type: ignore[attr-defined]


# --- safe by default -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def open_server(runs: dict[str, Any]) -> Iterator[Any]:
    """Bound to every address (0.0.0.0): it needs its token. Requests still go to 127.0.0.1."""
    served = serve(runs["root"], "--host", "0.0.0.0")
    yield served
    served.stop()


def test_a_non_loopback_bind_needs_the_token(open_server: Any) -> None:
    token = open_server.url.split("?token=")[1]
    assert len(token) >= 24
    for path in ("/", "/api/index", "/static/common.js", "/api/view/x", f"/?token={token}x"):
        status, _, body = open_server.get(path)
        assert status == 403, path
        assert b"token" in body
    # The token once: a cookie, and a redirect to the URL without it.
    status, headers, _ = open_server.get(f"/api/index?token={token}")
    assert status == 303 and headers["location"] == "/api/index"
    cookie = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=strict" in headers["set-cookie"]
    assert open_server.get("/api/index", {"Cookie": cookie})[0] == 200
    assert open_server.get("/api/index", {"Cookie": cookie + "x"})[0] == 403


def test_a_loopback_bind_answers_only_loopback_names(server: Any) -> None:
    assert server.get("/api/index", {"Host": f"localhost:{server.port}"})[0] == 200
    assert server.get("/api/index", {"Host": f"[::1]:{server.port}"})[0] == 200
    # DNS rebinding: a page elsewhere whose name resolves to 127.0.0.1 gets nothing.
    assert server.get("/api/index", {"Host": f"attacker.example:{server.port}"})[0] == 403


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.2") and is_loopback("::1")
    assert is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("lab-pc")


# --- bad input ---------------------------------------------------------------------------------------
def _serve_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "testbed.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_a_port_in_use_exits_2_naming_it(runs: dict[str, Any]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = _serve_cli(str(runs["root"]), "--port", str(port))
    assert out.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in out.stderr and "--port" in out.stderr


def test_a_folder_with_nothing_to_show_exits_2(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    out = _serve_cli(str(tmp_path))
    assert out.returncode == 2
    assert "holds no run, campaign or compare" in out.stderr and "config.yaml" in out.stderr
    out = _serve_cli(str(tmp_path / "missing"))
    assert out.returncode == 2 and "no such directory" in out.stderr


def test_a_single_run_folder_is_served(runs: dict[str, Any]) -> None:
    served = serve(runs["done"])
    try:
        rows = _json(served, "/api/index")["rows"]
        assert [(r["rel"], r["status"]) for r in rows] == [("", "done")]
        assert _json(served, "/api/view/")["view"]["kind"] == "run"
    finally:
        served.stop()


def test_a_damaged_compare_is_a_row_saying_so(tmp_path: Path) -> None:
    write_run(tmp_path, "dryrun", 1, finished=True).close()
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "compare.json").write_text("{not json")
    served = serve(tmp_path)
    try:
        rows = {r["rel"]: r for r in _json(served, "/api/index")["rows"]}
        assert rows["cmp"]["status"] == "unreadable" and "compare.json" in rows["cmp"]["error"]
        assert served.get("/api/view/cmp")[0] == 404
        assert len(rows) == 2
    finally:
        served.stop()


def test_a_name_holding_markup_arrives_as_plain_data(tmp_path: Path) -> None:
    write_run(tmp_path, EVIL_NAME, 2, finished=True).close()
    served = serve(tmp_path)
    try:
        (row,) = _json(served, "/api/index")["rows"]
        # JSON carries it unchanged; the page puts it in with textContent (test_console_browser).
        assert row["name"] == EVIL_NAME
    finally:
        served.stop()


# --- the patches -------------------------------------------------------------------------------------
def apply(state: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """What the page's TB.applyPatch does (common.js), in Python."""
    for key, op in patch.items():
        if "set" in op:
            state[key] = op["set"]
        elif "drop" in op:
            state[key] = state[key][op["drop"] :] + op["append"]
        elif "append" in op:
            state[key] = state.get(key, []) + op["append"]
        elif "patch" in op:
            state[key] = apply(dict(state.get(key, {})), op["patch"])
        elif op.get("del"):
            del state[key]
    return state


def test_patch_kinds() -> None:
    old = {"rounds": [1, 2], "log": [1, 2, 3, 4], "view": {"a": 1, "b": 2}, "gone": 1, "same": [5]}
    new = {"rounds": [1, 2, 3], "log": [3, 4, 5, 6], "view": {"a": 1, "b": 3}, "same": [5], "new": 0}
    patch = patch_of(old, new)
    assert patch == {
        "rounds": {"append": [3]},
        "log": {"drop": 2, "append": [5, 6]},
        "view": {"patch": {"b": {"set": 3}}},
        "gone": {"del": True},
        "new": {"set": 0},
    }
    assert apply(json.loads(json.dumps(old)), patch) == new


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=2),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
    max_leaves=12,
)


@given(
    st.dictionaries(st.text(max_size=2), json_values, max_size=4),
    st.dictionaries(st.text(max_size=2), json_values, max_size=4),
)
def test_a_patch_turns_old_into_new(old: dict[str, Any], new: dict[str, Any]) -> None:
    patch = patch_of(old, new)
    assert apply(json.loads(json.dumps(old)), json.loads(json.dumps(patch))) == new
