"""The web UI at its edges: the report link with default settings, a Start with bad values refused where
the user looks (no phantom test), simulator options from the form applied, and master + worker runs whose
-t clock starts when the workers can send."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import requests

from benchmark.records import read_records
from conftest import ROOT, free_port, run_dirs, wait_for_http

LOCUSTFILE = os.path.join(ROOT, "locustfile.py")


def _wait(predicate, timeout, what, log=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    tail = open(log).read()[-3000:] if log else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")


class WebUI:
    """Locust's web UI on the locustfile, run from `cwd` with the default (relative) --output-dir."""

    def __init__(self, cwd, *args):
        self.cwd, self.port = str(cwd), free_port()
        self.log = os.path.join(self.cwd, "locust.log")
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--web-host", "127.0.0.1",
                                      "--web-port", str(self.port), "--sim-ttft-ms", "10", "--sim-itl-ms", "2",
                                      "--max-out-len", "8", *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=self.cwd)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for_http(self.url, self.proc, 60, why=lambda: open(self.log).read())

    def swarm(self, **form):
        return requests.post(f"{self.url}/swarm", data={"user_count": 2, "spawn_rate": 2, **form}, timeout=120).json()

    def state(self) -> str:
        return requests.get(f"{self.url}/stats/requests", timeout=10).json()["state"]

    def llm(self) -> dict:
        return requests.get(f"{self.url}/llm/stats", timeout=10).json()

    def rows(self) -> dict:
        return {r["metric"]: r for r in self.llm()["rows"]}

    def run(self, seconds=2.5, **form) -> str:
        """One short test: start, a few requests, stop, until its report is written; its run folder."""
        before = self.llm()["run_dir"]
        assert self.swarm(**form)["success"]
        run_dir = _wait(lambda: self.llm()["run_dir"] != before and self.llm()["run_dir"], 30, "the run folder",
                        self.log)
        records = os.path.join(self.cwd, run_dir, "records.jsonl")
        _wait(lambda: os.path.isfile(records) and sum(1 for _ in open(records)) >= 3, 30, "records", self.log)
        time.sleep(seconds)
        assert requests.post(f"{self.url}/stop", timeout=30).json()["success"]
        _wait(lambda: self.llm()["report"] and "ready" in self.rows()["HTML report"]["p50"], 60,
              "the report after stop", self.log)
        return os.path.join(self.cwd, run_dir)

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    ui = WebUI(tmp_path_factory.mktemp("webui"))
    yield ui
    ui.close()


# ------------------------------------------------------------------------------------------ report link

ROUTE_CHECK = """
import os, sys
from types import SimpleNamespace
from flask import Flask
from locust.event import Events
from benchmark import webui
os.makedirs("reports/20260101_120000")
with open("reports/20260101_120000/report.html", "w") as f:
    f.write("<html><title>the report</title></html>")
ui = SimpleNamespace(template_args={}, app=Flask("locust"), auth_required_if_enabled=lambda view: view)
env = SimpleNamespace(web_ui=ui, events=Events(), runner=None, parsed_options=None, host="")
webui.install(env, lambda: SimpleNamespace(dir=os.path.join("reports", "20260101_120000")))
res = ui.app.test_client().get("/llm/report")
print(res.status_code, b"the report" in res.data)
"""


def test_report_route_sends_a_relative_run_folder(tmp_path):
    """Flask's send_file resolves a relative path against the app's package (Locust's): the route must not.
    (In a subprocess, run from tmp_path: Locust imported here would monkey-patch ssl too late.)"""
    env = dict(os.environ, PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-c", ROUTE_CHECK], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=60)
    assert res.stdout.split()[-2:] == ["200", "True"], res.stdout + res.stderr[-2000:]


def test_report_link_opens_with_the_default_output_dir(web):
    run = web.run()
    assert not os.path.isabs(web.llm()["run_dir"])  # reports/<run>, relative to where locust runs
    res = requests.get(f"{web.url}/llm/report", timeout=30)
    assert res.status_code == 200 and "<svg" in res.text, res.text[:300]
    assert res.text == open(os.path.join(run, "report.html"), encoding="utf-8").read()


# ------------------------------------------------------------------------------------------ refused starts

def test_a_bad_form_value_refuses_the_start(web):
    before = run_dirs(os.path.join(web.cwd, "reports"))
    res = web.swarm(input_len="uniform:9:1")
    assert res["success"] is False and res["message"].startswith("--input-len:") and "'uniform:9:1'" in res["message"]
    assert web.state() in ("ready", "stopped")  # no phantom test
    assert run_dirs(os.path.join(web.cwd, "reports")) == before
    assert web.rows()["Start refused"]["p50"] == res["message"]


def test_a_dead_host_refuses_the_start(web):
    dead = f"http://127.0.0.1:{free_port()}"
    res = web.swarm(host=dead)
    assert res["success"] is False and dead in res["message"]
    assert web.state() in ("ready", "stopped")


def test_a_refused_start_never_shows_the_last_run_as_current(web):
    run = web.run()
    name = os.path.basename(run)
    assert web.rows()["Run"]["p50"] == f"last run, finished: {name}"
    assert web.swarm(top_k="-2")["success"] is False
    time.sleep(1)
    rows = web.rows()
    assert rows["Run"]["p50"] == f"last run, finished: {name}" and "--top-k" in rows["Start refused"]["p50"]
    assert web.state() in ("ready", "stopped")
    assert not any("running" in r["p50"] for r in rows.values() if isinstance(r["p50"], str))


# ------------------------------------------------------------------------------------------ simulator options

def test_simulator_options_changed_in_the_form_restart_it(web):
    run = web.run(seconds=1.5, sim_ttft_ms="300")
    assert re.search(r"restarted the built-in simulator at \S+ \(pid \d+, TTFT 300 ms", open(web.log).read())
    ok = [r for r in read_records(os.path.join(run, "records.jsonl"))[0] if r["success"]]
    ttft = np.median([next(e[0] for e in r["events"] if e[1] == "content") for r in ok])
    assert ttft >= 0.29, ttft  # the simulator never answers early: 10 ms would mean the option was ignored
    assert json.load(open(os.path.join(run, "config.json")))["sim_ttft_ms"] == 300
    web.run(seconds=1, sim_ttft_ms="10")  # (and back, for the tests after this one)


# ------------------------------------------------------------------------------------------ in the browser

def test_the_form_shows_why_it_refused_the_start(web):
    from playwright.sync_api import sync_playwright
    chromium = os.environ.get("LLM_TESTING_CHROMIUM", "/usr/bin/chromium")
    if not os.path.isfile(chromium):
        pytest.fail(f"{chromium} not found: apt-get install -y chromium", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1320, "height": 900})
            page.goto(web.url)
            page.wait_for_load_state("load")
            if web.state() == "stopped":  # after a test the page shows its stats: "New" opens the form
                page.get_by_role("button", name="New").click()
            page.fill("input[name=userCount]", "2")
            page.fill("input[name=spawnRate]", "2")
            page.get_by_role("button", name="Custom parameters").click()
            page.locator("input[name=inputLen]").fill("uniform:9:1")
            page.get_by_role("button", name="Start").click()
            alert = page.get_by_role("alert")
            alert.wait_for(timeout=30_000)
            assert "--input-len: MIN must not exceed MAX; got 'uniform:9:1'" in alert.inner_text()
            assert page.get_by_role("button", name="Start").is_visible()  # still the start form
            assert web.state() in ("ready", "stopped")
        finally:
            browser.close()


# ------------------------------------------------------------------------------------------ master + worker

def _stamp(line: str) -> float:
    m = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]", line)
    return time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000


def test_workers_are_prepared_before_the_run_time_starts(tmp_path):
    """A separate worker started with the master: Locust counts it ready when it connects, before it has
    loaded its prompts; the master must hold the start until it is prepared with the master's options."""
    port = str(free_port())
    master_log, worker_log = open(tmp_path / "master.log", "w"), open(tmp_path / "worker.log", "w")
    master = subprocess.Popen([sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--master", "--headless",
                               "--expect-workers", "1", "--master-bind-port", port, "--only-summary",
                               "--output-dir", str(tmp_path / "out"), "-u", "2", "-r", "2", "-t", "4s",
                               "--sim-ttft-ms", "10", "--sim-itl-ms", "2", "--max-out-len", "6",
                               "--input-len", "fixed:40"],
                              stdout=master_log, stderr=subprocess.STDOUT, cwd=ROOT)
    # the worker's own command line names no option of ours: the master's are the run's
    worker = subprocess.Popen([sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--worker", "--master-host",
                               "127.0.0.1", "--master-port", port],
                              stdout=worker_log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        assert master.wait(120) == 0, open(tmp_path / "master.log").read()[-3000:]
        worker.wait(30)
    finally:
        for proc in (master, worker):
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        master_log.close()
        worker_log.close()
    mlog = open(tmp_path / "master.log").read().splitlines()
    wlog = open(tmp_path / "worker.log").read().splitlines()
    ready = [ln for ln in mlog if re.search(r"worker 0 \(\S+\) ready: Prompts: 1000 loaded", ln)]
    timer = [ln for ln in mlog if "Run time limit set to 4 seconds" in ln]
    prepared = [ln for ln in wlog if "prepared for http://127.0.0.1:" in ln]
    assert len(ready) == 1 and len(timer) == 1 and len(prepared) == 1, "\n".join(mlog[-40:] + wlog)
    assert _stamp(ready[0]) <= _stamp(timer[0])  # the clock starts after the worker is ready, not before
    assert "input fixed:40, output fixed:6" in prepared[0]  # prepared with the master's options
    (run,) = run_dirs(tmp_path / "out")
    records, _ = read_records(os.path.join(run, "records.jsonl"))
    assert records and {r["output_tokens"] for r in records if r["success"]} == {6}
