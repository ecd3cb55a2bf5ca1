"""In a real browser: Debian's chromium, headless, driven by Playwright (never a downloaded browser).

The HTML report opened from file:// renders every table and chart with nothing fetched and no console
error; a web-UI run against the simulator is started from the page, its LLM tab fills with live numbers,
and after stop the report link works. Screenshots go to test-artifacts/ (git-ignored).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from benchmark.records import read_records
from benchmark.report import render
from conftest import ROOT, free_port, perf_csv, wait_for_http
from test_report import XSS, synthetic_records, write_run

CHROMIUM = os.environ.get("LLM_TESTING_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
ARTIFACTS = os.path.join(ROOT, "test-artifacts")
PLOTS = ("dist-ttft", "dist-tpot", "dist-itl", "dist-e2el", "time-tokens", "time-requests", "time-inflight",
         "scatter-ttft", "scatter-tpot", "timeline", "lvt-ttft", "lvt-tpot", "lvt-e2el")


@pytest.fixture(scope="module")
def browser():
    if not os.path.isfile(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: these tests need Debian's chromium "
                    f"(apt-get install -y chromium; .ci/run installs it)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -r requirements.txt", pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1320, "height": 900})
    pg = context.new_page()
    pg.console_errors = []
    pg.on("console", lambda m: m.type == "error" and pg.console_errors.append(m.text))
    pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))
    yield pg
    context.close()


def test_report_renders_offline_every_table_and_chart(tmp_path, page):
    recs = synthetic_records(1500, stages=("c4", "c8", "c16"), fail_every=97)
    recs[0]["completion"] = f"before {XSS} after"
    run = write_run(tmp_path / "run", recs)
    path = render(run)

    requests = []

    def only_the_file(route):
        requests.append(route.request.url)
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            route.abort()
    page.route("**/*", only_the_file)
    page.goto(f"file://{path}")
    page.wait_for_load_state("load")

    assert requests == [f"file://{path}"], requests  # the file itself and nothing else
    assert page.console_errors == []

    # the tables: per stage, total first
    sets = page.locator("details.tableset")
    assert sets.count() == 4
    for i in range(4):
        if i:  # stages start folded
            sets.nth(i).locator("summary").click()
        assert sets.nth(i).locator("table.perf tr").count() == 9   # header + 8 metrics
        assert sets.nth(i).locator("table.ci tr").count() == 9     # and each one's intervals
        assert sets.nth(i).locator("table.common tr").count() == 15
    assert page.locator("#stage-table tr").count() == 5
    assert "stream ended without finish_reason" in page.locator("#failure-table").inner_text()

    # every chart is drawn: an SVG with a real size and visible marks in it
    drawn = page.evaluate("""() => Array.from(document.querySelectorAll('svg.chart')).map(svg => {
        const r = svg.getBoundingClientRect();
        const marks = Array.from(svg.querySelectorAll('g[clip-path] rect, g[clip-path] path'))
            .map(e => e.getBBox()).filter(b => b.width > 0 || b.height > 0).length;
        return [svg.dataset.chart, Math.round(r.width), Math.round(r.height), marks];
    })""")
    by_key = {k: (w, h, m) for k, w, h, m in drawn}
    for key in PLOTS:
        assert key in by_key, key
        w, h, marks = by_key[key]
        assert w > 300 and h > 150 and marks > 0, (key, by_key[key])
    assert by_key["dist-ttft"][2] >= 10  # histogram bars

    # model output is text, not markup
    assert f"before {XSS} after" in page.locator("#sample-table").inner_text()
    assert page.evaluate("() => document.querySelectorAll('script').length") == 0

    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "report.png"), full_page=True)


def _wait(predicate, timeout, what, log=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    tail = open(log).read()[-3000:] if log else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")


def _llm_rows(page) -> dict[str, list[str]]:
    rows = {}
    for tr in page.locator("table tbody tr").all():
        cells = [c.strip() for c in tr.inner_text().split("\t")]
        if cells:
            rows[cells[0]] = cells[1:]
    return rows


def test_web_ui_llm_tab_fills_live_and_links_the_report(tmp_path, page):
    import requests
    port = free_port()
    log = open(tmp_path / "locust.log", "w")
    cmd = [sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "locustfile.py"), "--web-host", "127.0.0.1",
           "--web-port", str(port), "--output-dir", str(tmp_path / "out"), "--sim-ttft-ms", "10",
           "--sim-itl-ms", "2", "--max-out-len", "8"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    ui = f"http://127.0.0.1:{port}"
    try:
        logf = str(tmp_path / "locust.log")
        wait_for_http(ui, proc, 60, why=lambda: open(logf).read())
        page.goto(ui)
        page.fill("input[name=userCount]", "3")
        page.fill("input[name=spawnRate]", "3")
        page.get_by_role("button", name="Start").click()
        page.get_by_role("tab", name="LLM metrics").click()

        def ttft_row():
            row = _llm_rows(page).get("TTFT (ms)")
            return row if row and re.fullmatch(r"[\d.]+", row[0] or "") else None
        first = _wait(ttft_row, 30, "live TTFT numbers in the LLM tab", logf)
        assert 5 < float(first[0]) < 200, first  # simulator TTFT 10 ms
        n0 = int(first[4])
        _wait(lambda: int((ttft_row() or [0] * 5)[4]) > n0, 15, "the LLM tab to refresh", logf)
        rows = _llm_rows(page)
        for name in ("TPOT (ms)", "ITL (ms)", "E2EL (ms)", "Output token/s per request"):
            assert re.fullmatch(r"[\d.]+", rows[name][0]) and float(rows[name][2]) >= float(rows[name][0]), rows[name]
        assert float(rows["Output token/s, whole run"][3]) > 0
        assert "when the test stops" in rows["HTML report"][0]
        os.makedirs(ARTIFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(ARTIFACTS, "webui-llm-tab.png"))

        page.get_by_role("button", name="Stop").click()
        _wait(lambda: "ready" in (_llm_rows(page).get("HTML report") or [""])[0], 40, "the report after stop", logf)

        # after stop the tab holds the whole run: the same P50 as the run's own table
        stats = requests.get(f"{ui}/llm/stats", timeout=5).json()
        run_dir = stats["run_dir"]
        records, _ = read_records(os.path.join(run_dir, "records.jsonl"))
        ttft = next(r for r in stats["rows"] if r["metric"] == "TTFT (ms)")
        assert ttft["n"] == sum(r["success"] for r in records) > 0
        csv = open(perf_csv(run_dir)).read()
        median = float(re.search(r"^TTFT,total,[^,]+,[^,]+,[^,]+,([\d.]+) ms", csv, re.M).group(1))
        assert abs(ttft["p50"] - median) <= 0.006, (ttft, median)

        page.get_by_role("tab", name="Download Data").click()
        page.get_by_role("link", name="LLM report of the last run (HTML)").click()
        page.wait_for_url(f"{ui}/llm/report")
        assert page.title().startswith("LLM load test: llm-sim")
        assert page.locator("svg.chart").count() >= 10
        assert page.locator("#tables table.perf tr").count() == 9
        page.screenshot(path=os.path.join(ARTIFACTS, "webui-report.png"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
    assert page.console_errors == [], page.console_errors


def _glob(run_dir, pattern):
    import glob
    return sorted(glob.glob(os.path.join(run_dir, pattern)))
