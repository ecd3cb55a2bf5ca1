"""Server metrics end to end: Locust runs against the simulator's vLLM-format /metrics, honest or not.

The simulator knows the truth of what it did and can be told to lie (--metrics-lie) or to hide a delay
in front of itself (--hidden-delay-ms): the verdict must agree on the honest one and fire on the others.
"""
from __future__ import annotations

import json
import os
import time

from benchmark import webui
from benchmark.records import read_records
from benchmark.server_metrics import FILE, read
from conftest import free_port, run_dirs, run_locust

REQUESTS = ("--num-requests", "12", "-u", "4", "-r", "4", "-t", "120s", "--max-out-len", "16",
            "--input-len", "fixed:32")


def one_run(tmp_path, sim, *args):
    res = run_locust(tmp_path, "--host", sim.url, *REQUESTS, *args, timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (run,) = run_dirs(tmp_path)
    return run, res.stdout


def result(run):
    with open(os.path.join(run, "server_metrics_reconcile.json")) as f:
        return json.load(f)


def kinds(res):
    return {f["kind"] for f in res["flags"]}


def test_an_honest_server_agrees_on_counts_and_latency(tmp_path, start_sim):
    run, out = one_run(tmp_path, start_sim())
    lines = read(os.path.join(run, FILE))
    assert [x["kind"] for x in lines][0] == "meta" and lines[-1]["kind"] == "end"
    scrapes = [x for x in lines if x["kind"] == "scrape"]
    assert scrapes[0]["full"] and scrapes[0]["engine"] == "vllm" and len(scrapes) >= 2
    res = result(run)
    assert res["reconciled"], res["lines"]
    assert res["requests"]["server"]["finished"] == 12 and res["requests"]["agree"]
    assert res["tokens"]["prompt"]["agree"] and res["tokens"]["generation"]["agree"]
    assert res["tokens"]["generation"]["server"] == res["tokens"]["generation"]["client"]  # usage: exact
    assert not kinds(res) & {"requests", "tokens"}, res["flags"]
    ttft = res["latency"]["ttft"]
    assert ttft["basis"] == "mean" and ttft["verdict"] != "server slower"
    assert ttft["extra_ms"][0] < 50, ttft  # loopback: a few ms, far from the hidden delay below
    assert "Server metrics: vLLM" in out
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["server_metrics_scrape"]["engine"] == "vllm" and config["server_metrics_scrape"]["scrapes"] >= 2
    html = open(os.path.join(run, "report.html")).read()
    assert 'id="server-metrics"' in html and "<svg" in html


def test_a_hidden_delay_in_front_of_the_engine_is_named(tmp_path, start_sim):
    run, out = one_run(tmp_path, start_sim("--hidden-delay-ms", "200"))
    res = result(run)
    ttft = res["latency"]["ttft"]
    assert ttft["verdict"] == "client slower", res["lines"]
    lo, hi = ttft["extra_ms"]
    assert 150 < lo <= hi and lo < 300, ttft  # the 200 ms, as the client paid it
    assert "ttft" in kinds(res) and "gateway or network" in out
    assert res["requests"]["agree"]  # the delay hides time, not requests


def test_a_server_that_undercounts_requests_is_flagged(tmp_path, start_sim):
    run, out = one_run(tmp_path, start_sim("--metrics-lie", "requests=0.5"))
    res = result(run)
    assert res["requests"]["server"]["finished"] == 6
    assert "requests" in kinds(res) and "client saw 6 more requests than the server finished" in out


def test_off_and_a_dead_metrics_url_never_disturb_the_run(tmp_path, start_sim):
    sim = start_sim()
    run, out = one_run(tmp_path / "off", sim, "--server-metrics", "off")
    assert not os.path.exists(os.path.join(run, FILE)) and "Server metrics" not in out
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["server_metrics"] == "off" and "server_metrics_scrape" not in config
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    run, out = one_run(tmp_path / "dead", sim, "--server-metrics", dead)
    assert len(read_records(os.path.join(run, "records.jsonl"))[0]) == 12  # every request made and kept
    assert "cannot reconcile: no scrape succeeded" in out
    errors = [x for x in read(os.path.join(run, FILE)) if x["kind"] == "error"]
    assert len(errors) == 1 and "refused" in errors[0]["reason"], errors  # noted once, with its reason
    assert "refused" in open(os.path.join(run, "report.html")).read()


def test_several_processes_scrape_once(tmp_path, start_sim):
    port = str(free_port())  # its own master port: never another run's workers
    run, _ = one_run(tmp_path, start_sim(), "--processes", "2", "--master-bind-port", port, "--master-port", port)
    lines = read(os.path.join(run, FILE))
    assert sum(x["kind"] == "meta" for x in lines) == 1  # the master's scraper only, never one per worker
    assert result(run)["requests"]["server"]["finished"] == 12


def test_the_web_ui_rows_show_the_newest_scrape(tmp_path):
    assert webui.server_rows(str(tmp_path)) == []  # not scraped: no rows
    page = {"vllm:num_requests_running": {"type": "gauge", "samples": [["vllm:num_requests_running", {}, 3.0]]},
            "vllm:num_requests_waiting": {"type": "gauge", "samples": [["vllm:num_requests_waiting", {}, 5.0]]},
            "vllm:kv_cache_usage_perc": {"type": "gauge", "samples": [["vllm:kv_cache_usage_perc", {}, 0.25]]}}
    now = time.time()
    with open(tmp_path / FILE, "w") as f:
        f.write(json.dumps({"kind": "meta", "url": "u", "interval_s": 1.0, "started": now}) + "\n")
        old = {**page, "vllm:num_requests_running": {"type": "gauge",
                                                     "samples": [["vllm:num_requests_running", {}, 1.0]]}}
        for fams in (old, page):
            f.write(json.dumps({"kind": "scrape", "t": now, "dt": 0.01, "engine": "vllm", "full": False,
                                "families": fams}) + "\n")
        f.write('{"kind": "scrape", "t": ')  # a line being written: ignored
    rows = {r["metric"]: r["avg"] for r in webui.server_rows(str(tmp_path))}
    assert rows == {"Server: running requests": 3.0, "Server: waiting requests": 5.0,
                    "Server: KV-cache usage (%)": 25.0}
    with open(tmp_path / FILE, "a") as f:
        f.write('\n{"kind": "error", "t": 1, "reason": "connection refused"}\n')
    (row,) = webui.server_rows(str(tmp_path))
    assert "connection refused" in row["p50"]


def test_requests_cut_by_the_stop_keep_their_events_and_pair_with_the_server(tmp_path, start_sim):
    # 128 tokens take ~2.6 s: at the 4 s stop the second wave is mid-stream
    res = run_locust(tmp_path, "--host", start_sim().url, "-u", "4", "-r", "4", "-t", "4s", "--max-out-len", "128",
                     timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = run_dirs(tmp_path)
    cut = read_records(os.path.join(run, "cancelled.jsonl"))[0]
    assert cut and all(r["events"] and r["events"][0][1] == "role" for r in cut), cut[:1]
    assert all(any(e[1] == "content" for e in r["events"]) for r in cut)
    ttft = result(run)["latency"]["ttft"]
    # every first token the server timed has its client sample: the mean extra is exact
    assert ttft["n_server"] == ttft["n_client"] and ttft["mean"]["server_only"] == 0, ttft
