"""The console's pages in a real headless browser: Debian's chromium, driven by selenium through
Debian's chromium-driver (nothing downloads a browser; `make test` installs both with apt).

The browser reaches only loopback: a dead local proxy and a resolver that knows no names stand
between it and anything else. Set TESTBED_SCREENSHOTS=DIR to keep the run and campaign pages'
screenshots (the README's come from here: ``TESTBED_SCREENSHOTS=docs/console``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console_kit import EVIL_NAME, round_data, serve, tiny_png, write_campaign, write_compare, write_run

from testbed.console.control import RunningMarker

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# One wait for the page to load; "within 2 s" is the bound for a live update.
LOAD_S = 30.0
LIVE_S = 2.0
CHARTS = ("ppl", "nmse", "energy", "latency", "breakdown")


def _why_not() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).is_file():
            return f"{path} is missing: `make system-deps` installs Debian's {package} (apt, as root)"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1500",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--no-pings",
        # Nothing but loopback: every other name resolves to nothing, every other URL to a dead proxy.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--proxy-server=127.0.0.1:9",
        "--proxy-bypass-list=127.0.0.1",
    ):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except Exception as exc:  # a chromium that cannot start here (no /dev/shm, a broken install)
        pytest.skip(f"chromium does not start headless here: {exc}")
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("runs")
    done = write_run(root, "dryrun", 8, finished=True)
    done.close()
    live = write_run(root, "edge", 30, finished=False, total=40)
    evil = write_run(root, EVIL_NAME, 2, finished=False)
    campaign = write_campaign(root)
    compare = write_compare(root)
    with (
        RunningMarker(live.run_dir, "run"),
        RunningMarker(evil.run_dir, "run"),
        RunningMarker(campaign.run_dir, "campaign"),
    ):
        yield {
            "root": root,
            "done": done,
            "live": live,
            "evil": evil,
            "campaign": campaign,
            "compare": compare,
        }
    for rec in (live, evil, campaign):
        rec.close()


@pytest.fixture(scope="module")
def server(runs: dict[str, Any]) -> Iterator[Any]:
    served = serve(runs["root"])
    yield served
    served.stop()


def _open(browser: Any, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, LOAD_S).until(
        lambda d: d.execute_script("return document.body.dataset.loaded === '1'")
    )


def _page(server: Any, rec: Any) -> str:
    return f"http://127.0.0.1:{server.port}/view/{rec.run_dir.name}"


def _points(browser: Any) -> dict[str, tuple[int, int]]:
    """Per chart: the points it says it drew, and the x values uPlot holds."""
    return browser.execute_script(
        "const out = {};"
        "for (const [k, c] of Object.entries(TB_PAGE.charts).concat([['breakdown', TB_PAGE.breakdown]]))"
        "  out[k] = [Number(c.box.dataset.points), c.plot.data[0].length];"
        "return out;"
    )


def test_index_lists_each_folder_with_its_status(browser: Any, server: Any, runs: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, server.url)
    rows = {
        row.get_attribute("data-rel"): row
        for row in browser.find_elements(By.CSS_SELECTOR, "#index tbody tr")
    }
    status = {rel: row.find_element(By.CSS_SELECTOR, ".status").text for rel, row in rows.items()}
    assert status[runs["done"].run_dir.name] == "done"
    assert status[runs["live"].run_dir.name] == "running"
    assert rows["compare-dryrun"].get_attribute("data-kind") == "compare"
    assert status["compare-dryrun"] == "interrupted"  # one cell done, one stopped mid-way, no compare running
    cells = [td.text for td in rows[runs["live"].run_dir.name].find_elements(By.TAG_NAME, "td")]
    assert cells[0] == "run" and cells[2] == "edge" and cells[5] == "30 of 40 rounds"


def test_run_page_draws_every_round_and_the_antennas(browser: Any, server: Any, runs: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, _page(server, runs["done"]))
    assert _points(browser) == {chart: [8, 8] for chart in CHARTS}
    antennas = browser.find_elements(By.CSS_SELECTOR, "#map circle.antenna")
    assert len(antennas) == 4
    drawn = [[float(a.get_attribute("data-x")), float(a.get_attribute("data-y"))] for a in antennas]
    assert drawn == round_data(8)["positions_m"]
    # Each antenna's path this run: home, then one vertex per round.
    paths = browser.find_elements(By.CSS_SELECTOR, "#map polyline.path")
    assert [len(p.get_attribute("points").split()) for p in paths] == [9, 9, 9, 9]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#map circle.clearance")) == 4


def test_an_appended_round_reaches_the_open_page(browser: Any, server: Any, runs: dict[str, Any]) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    rec = runs["live"]
    _open(browser, _page(server, rec))
    assert _points(browser)["ppl"] == [30, 30]
    rec.event("round", **round_data(31))
    appended = time.monotonic()
    WebDriverWait(browser, LIVE_S, poll_frequency=0.05).until(lambda d: _points(d)["ppl"] == [31, 31])
    assert time.monotonic() - appended < LIVE_S
    assert _points(browser) == {chart: [31, 31] for chart in CHARTS}


def test_markup_in_a_name_shows_as_text(browser: Any, server: Any, runs: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, _page(server, runs["evil"]))
    assert browser.find_element(By.ID, "title").text == f"run {EVIL_NAME}"
    assert EVIL_NAME in browser.find_element(By.ID, "log").text  # the warning line holds it too
    assert browser.execute_script("return window.__pwned === undefined")
    assert browser.find_elements(By.CSS_SELECTOR, "main img, header img") == []
    _open(browser, server.url)
    row = browser.find_element(By.CSS_SELECTOR, f'#index tr[data-rel="{runs["evil"].run_dir.name}"]')
    assert row.find_elements(By.TAG_NAME, "td")[2].text == EVIL_NAME
    assert browser.execute_script("return window.__pwned === undefined")


def test_campaign_page_fills_the_gain_map(browser: Any, server: Any, runs: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, _page(server, runs["campaign"]))
    # 30 points of two antennas each over a 10 x 10 grid: 60 cells coloured, 100 cells of the plan.
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gainmap rect.cell")) == 60
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gainmap rect.todo")) == 100
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gainmap rect.latest")) == 2
    assert "30 of 50" in browser.find_element(By.ID, "summary").text


def test_compare_page_shows_cells_and_a_growing_report(
    browser: Any, server: Any, runs: dict[str, Any]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(browser, f"http://127.0.0.1:{server.port}/view/compare-dryrun")
    states = {
        row.get_attribute("data-cell"): row.get_attribute("data-state")
        for row in browser.find_elements(By.CSS_SELECTOR, "#cells tbody tr")
    }
    assert states == {"g0-s0-ours": "done", "g0-s0-fpa": "interrupted", "g0-s0-digital": "pending"}
    assert "1 of 3 done" in browser.find_element(By.ID, "summary").text
    WebDriverWait(browser, LOAD_S).until(lambda d: "<b>not bold</b>" in d.find_element(By.ID, "report").text)
    # A figure the report writes later appears on the open page.
    (runs["compare"] / "loss.png").write_bytes(tiny_png())
    WebDriverWait(browser, LOAD_S).until(
        lambda d: d.execute_script(
            "const i = document.querySelector('#figures img'); return i && i.naturalWidth === 1"
        )
    )
    # A cell's run links to its own live page.
    link = browser.find_element(By.CSS_SELECTOR, '#cells tr[data-cell="g0-s0-fpa"] a')
    link.click()
    WebDriverWait(browser, LOAD_S).until(
        lambda d: d.execute_script("return document.body.dataset.loaded === '1'")
    )
    assert _points(browser)["ppl"] == [2, 2]


def test_an_unknown_folder_says_so(browser: Any, server: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"http://127.0.0.1:{server.port}/view/no-such-run")
    WebDriverWait(browser, LOAD_S).until(lambda d: d.find_element(By.ID, "title").text.startswith("404"))


def test_without_the_token_a_non_loopback_bind_answers_403(browser: Any, runs: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    served = serve(runs["root"], "--host", "0.0.0.0")
    try:
        # Bound to every address; the browser still goes to 127.0.0.1 only.
        local = f"http://127.0.0.1:{served.port}"
        browser.get(f"{local}/")
        assert browser.find_element(By.TAG_NAME, "body").text.startswith("403")
        _open(browser, f"{local}/?token={served.url.split('?token=')[1]}")
        assert browser.current_url == f"{local}/"  # the token went into a cookie
        assert len(browser.find_elements(By.CSS_SELECTOR, "#index tbody tr")) == 5
        _open(browser, _page(served, runs["done"]))  # the cookie opens the run page and its stream
        assert _points(browser)["ppl"] == [8, 8]
    finally:
        served.stop()
        browser.delete_all_cookies()


def test_screenshots_of_the_run_and_campaign_pages(
    browser: Any, server: Any, runs: dict[str, Any], tmp_path: Path
) -> None:
    keep = os.environ.get("TESTBED_SCREENSHOTS")
    out = Path(keep) if keep else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    for name, rec, ready in (
        ("run.png", runs["live"], "return document.querySelectorAll('#map circle.antenna').length === 4"),
        (
            "campaign.png",
            runs["campaign"],
            "return Number(document.getElementById('gainmap').dataset.cells) > 0",
        ),
    ):
        _open(browser, _page(server, rec))
        assert browser.execute_script(ready)
        browser.set_window_size(1400, 1560 if name == "run.png" else 760)
        time.sleep(0.3)  # the charts follow the window's width
        browser.save_screenshot(str(out / name))
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    browser.set_window_size(1400, 1500)
