"""Reading server_metrics.jsonl back and reconciling it with the records, on hand-made files of known truth.

The server's side is computed here from the same requests the records describe (vLLM's names, types,
labels and buckets), so a test knows exactly what agreement, a hidden delay or a lie must look like.
"""
from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest

from benchmark.report import render
from benchmark.run import report
from benchmark.server_metrics import reconcile as rc
from benchmark.server_metrics import series
from test_report import charts, read, synthetic_records, write_run

# vLLM v1's buckets (vllm/v1/metrics/loggers.py)
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0]
LABELS = {"model_name": "demo-model", "engine": "0"}


def truth_of(records: list[dict], hidden_s: float = 0.0) -> list[dict]:
    """What an honest server saw of each request: it arrives 0.3 ms after the send (+ a hidden delay in
    front of the engine), and its first and last tokens leave 0.2 ms before the client reads them."""
    out = []
    for r in records:
        ev = r["events"]
        tok = [e[0] for e in ev if e[1] == "content"]
        if not tok:
            continue
        done = r["success"]
        out.append({"arrive": r["t_send"] + 0.0003 + hidden_s, "first": r["t_send"] + tok[0] - 0.0002,
                    "end": r["t_send"] + tok[-1] - 0.0002, "prompt": r["input_tokens"] or 128,
                    "gen": r["output_tokens"] if done else len(tok),
                    "reason": (r["finish_reason"] or "length") if done else "abort"})
    return out


def _hist(name: str, bounds: list[float], values: list[float], scale: float = 1.0) -> dict:
    v = np.asarray(values, float) * scale
    samples = [[f"{name}_bucket", {**LABELS, "le": str(b)}, float((v <= b).sum())] for b in bounds]
    samples.append([f"{name}_bucket", {**LABELS, "le": "+Inf"}, float(v.size)])
    samples += [[f"{name}_count", LABELS, float(v.size)], [f"{name}_sum", LABELS, float(v.sum())],
                [f"{name}_created", LABELS, 1.7e9]]
    return {"type": "histogram", "samples": samples}


def page(truth: list[dict], t: float, lie: dict | None = None, prefix: tuple[int, int] = (0, 0)) -> dict:
    """The families a vLLM /metrics page would show at time t. lie: {"requests"|"prompt_tokens"|
    "generation_tokens"|"ttft"|"e2e": factor}; prefix: (on, hit tokens per request after the first)."""
    lie = lie or {}
    running = [r for r in truth if r["arrive"] <= t < r["end"]]
    done = [r for r in truth if r["end"] <= t]
    first = [r for r in truth if r["first"] <= t]
    gen = sum(r["gen"] * min(1.0, max(0.0, (t - r["first"]) / max(r["end"] - r["first"], 1e-9))) for r in first)
    reasons: dict = {}
    for r in done:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1

    def counter(name, value):
        return {"type": "counter", "samples": [[f"{name}_total", LABELS, float(value)],
                                               [f"{name}_created", LABELS, 1.7e9]]}

    def gauge(name, value):
        return {"type": "gauge", "samples": [[name, LABELS, float(value)]]}

    success = {"type": "counter", "samples": [
        ["vllm:request_success_total", {**LABELS, "finished_reason": k}, float(round(v * lie.get("requests", 1)))]
        for k, v in sorted(reasons.items())]}
    fams = {
        "vllm:num_requests_running": gauge("vllm:num_requests_running", len(running)),
        "vllm:num_requests_waiting": gauge("vllm:num_requests_waiting", 0),
        "vllm:kv_cache_usage_perc": gauge("vllm:kv_cache_usage_perc", 0.02 * len(running)),
        "vllm:prompt_tokens": counter("vllm:prompt_tokens",
                                      round(sum(r["prompt"] for r in first) * lie.get("prompt_tokens", 1))),
        "vllm:generation_tokens": counter("vllm:generation_tokens", round(gen * lie.get("generation_tokens", 1))),
        "vllm:request_success": success,
        "vllm:time_to_first_token_seconds": _hist("vllm:time_to_first_token_seconds", TTFT_BUCKETS,
                                                  [r["first"] - r["arrive"] for r in first], lie.get("ttft", 1)),
        "vllm:e2e_request_latency_seconds": _hist("vllm:e2e_request_latency_seconds", E2E_BUCKETS,
                                                  [r["end"] - r["arrive"] for r in done], lie.get("e2e", 1)),
        "vllm:request_queue_time_seconds": _hist("vllm:request_queue_time_seconds", TTFT_BUCKETS,
                                                 [0.0005 for _ in first]),
    }
    if prefix[0]:
        fams["vllm:prefix_cache_queries"] = counter("vllm:prefix_cache_queries", sum(r["prompt"] for r in first))
        fams["vllm:prefix_cache_hits"] = counter("vllm:prefix_cache_hits", prefix[1] * max(len(first) - 1, 0))
    return fams


def write_metrics(run: str, truth: list[dict], *, every: float = 1.0, lie=None, restart_at: float | None = None,
                  errors: list[tuple[float, str]] = (), times: list[float] | None = None, cut: bool = False,
                  prefix=(0, 0)) -> str:
    """server_metrics.jsonl as the scraper writes it: meta, a full first scrape, one per `every` s from
    before the first arrival to after the last end, error/recovered lines, the end line."""
    t_start = min(r["arrive"] for r in truth) - 0.7
    t_stop = max(r["end"] for r in truth) + 0.4
    if times is None:
        times = list(np.arange(t_start, t_stop + every, every))
    path = os.path.join(run, "server_metrics.jsonl")
    err_at = dict(errors)
    with open(path, "w") as f:
        f.write(json.dumps({"kind": "meta", "url": "http://127.0.0.1:8000/metrics", "interval_s": every,
                            "started": times[0] if times else t_start}) + "\n")
        down = False
        for i, t in enumerate(times):
            hit = next((reason for te, reason in err_at.items() if abs(te - t) < every / 2), None)
            if hit:
                if not down:
                    f.write(json.dumps({"kind": "error", "t": t, "reason": hit}) + "\n")
                down = True
                continue
            if down:
                f.write(json.dumps({"kind": "recovered", "t": t}) + "\n")
                down = False
            if restart_at is not None and t >= restart_at:
                # a new server process: it counts only what it saw after the restart
                fams = page([r for r in truth if r["arrive"] >= restart_at], t, lie, prefix=prefix)
            else:
                fams = page(truth, t, lie, prefix=prefix)
            if i == 0:
                fams["process_cpu_seconds_total"] = {"type": "counter", "samples": [["process_cpu_seconds_total", {}, 1.0]]}
            f.write(json.dumps({"kind": "scrape", "t": t, "dt": 0.004, "engine": "vllm", "full": i == 0,
                                "families": fams}) + "\n")
        f.write(json.dumps({"kind": "end", "t": t_stop + 0.1, "scrapes": len(times), "errors": len(errors)}) + "\n")
        if cut:
            f.write('{"kind": "scrape", "t": 17000')
    return path


def make_run(tmp_path, n=300, name="run", hidden_s=0.0, shift_client_s=0.0, stages=(), fail_every=0, **kw):
    recs = synthetic_records(n, stages=stages, fail_every=fail_every)
    truth = truth_of(recs, hidden_s)
    if shift_client_s:  # the client saw every event later than the server made it (something in between)
        for r in recs:
            r["events"] = [[e[0] + shift_client_s, *e[1:]] for e in r["events"]]
    run = write_run(tmp_path / name, recs)
    write_metrics(run, truth, **kw)
    return run, recs, truth


def result_of(run: str) -> dict:
    out = rc.reconcile_run(run, json.load(open(os.path.join(run, "config.json"))))
    assert out is not None
    return out[0]


def kinds(res: dict) -> set:
    return {f["kind"] for f in res["flags"]}


# ---------------------------------------------------------------------------------------------


def test_series_reads_gauges_counters_histograms_and_brackets(tmp_path):
    run, recs, truth = make_run(tmp_path, n=120, cut=True)
    sm = series.load(os.path.join(run, "server_metrics.jsonl"))
    assert sm.engine.name == "vllm" and sm.label == "vLLM" and sm.skipped == 1  # the cut last line
    assert sm.n >= 10 and "process_cpu_seconds_total" in sm.families
    running = sm.gauge("running")
    assert running.shape == (sm.n,) and np.nanmax(running) == 8 and running[0] == 0
    assert np.allclose(sm.gauge("kv_usage"), running * 0.02)
    fin = sm.counter("requests_finished")
    assert fin[-1] == len(truth) and np.all(np.diff(fin) >= 0)
    assert set(sm.counter("requests_finished", by_label=True)) == {"length"}
    h = sm.histogram("ttft")
    assert h.bounds[-1] == math.inf and list(h.bounds[:-1]) == TTFT_BUCKETS
    assert h.counts.shape == (sm.n, len(TTFT_BUCKETS) + 1) and h.count[-1] == len(truth)
    t0, t1 = min(r["t_send"] for r in recs), max(r["t_send"] + r["events"][-1][0] for r in recs)
    i0, i1 = sm.window(t0, t1)
    assert sm.t[i0] < t0 and sm.t[i1] > t1 and (i0 == sm.n - 1 or sm.t[i0 + 1] > t0)
    assert sm.window(sm.t[0] - 5, t1) == (None, i1)
    assert any("scraped" in n and "every 1 s" in n for n in sm.notes())
    assert np.isnan(sm.gauge("prefix_hit_rate")).all()  # the engine has it, this page does not


def test_snapshot_gives_the_live_figures():
    line = {"kind": "scrape", "engine": "vllm", "families": page(
        [{"arrive": 0, "first": 0.1, "end": 5, "prompt": 10, "gen": 10, "reason": "stop"}] * 3, 1.0)}
    assert series.snapshot(line) == {"running": 3, "waiting": 0, "kv_usage": pytest.approx(0.06)}
    assert series.snapshot({"kind": "error"}) == {"running": None, "waiting": None, "kv_usage": None}
    line["engine"] = None  # detected from the families
    assert series.snapshot(line)["running"] == 3


def test_agreement_when_the_server_page_matches_the_records(tmp_path):
    run, _, truth = make_run(tmp_path, n=300)
    res = result_of(run)
    assert res["reconciled"] and res["flags"] == [], res["lines"]
    assert res["requests"]["agree"] and res["requests"]["server"]["finished"] == 300
    assert res["tokens"]["prompt"]["agree"] and res["tokens"]["generation"]["diff"] == 0
    for name, extra in (("ttft", 0.5), ("e2e", 0.52)):  # what this honest server leaves to the client
        lat = res["latency"][name]
        assert lat["verdict"] == "agree" and lat["mean"]["paired"]
        lo, hi = lat["extra_ms"]  # the same requests on both sides: the means' difference is exact
        assert lo == pytest.approx(extra, abs=0.01) and hi == pytest.approx(extra, abs=0.01)
        a, b = lat["median"]["server_bucket_ms"]
        assert lat["median"]["resolution_ms"] == pytest.approx(b - a)
    text = "\n".join(res["lines"])
    assert "requests: server finished 300 (length 300)" in text and "agree, exactly" in text
    assert "no flag" in text and "resolution" in text


def test_server_counting_fewer_requests_fires(tmp_path):
    run, _, _ = make_run(tmp_path, n=200, lie={"requests": 0.8})
    res = result_of(run)
    assert "requests" in kinds(res)
    assert any(re.match(r"client saw 40 more requests than the server finished", f["text"]) for f in res["flags"])
    run, _, _ = make_run(tmp_path, n=200, name="more", lie={"requests": 1.2})
    assert any("more requests than the client sent" in f["text"] for f in result_of(run)["flags"])


def test_failed_requests_the_server_counted_are_no_flag(tmp_path):
    run, recs, _ = make_run(tmp_path, n=200, fail_every=20)
    res = result_of(run)
    assert res["requests"]["client"]["failed"] == 10 and res["requests"]["agree"]
    assert "10 of the client's 10 failed/cancelled counted by the server" in "\n".join(res["lines"])
    assert "requests" not in kinds(res) and "tokens" not in kinds(res), res["flags"]


def test_warmup_and_cancelled_requests_are_in_the_window(tmp_path):
    """The server saw the warm-up and the requests cut short at the stop (it may count those as abort)."""
    from benchmark.records import RecordSink, new_record
    recs = synthetic_records(200)
    for r in recs[:16]:
        r["stage"] = "warmup"
    truth = truth_of(recs)
    t_stop = max(r["t_send"] + r["events"][-1][0] for r in recs) - 0.5
    cut = [new_record(id=1000 + i, stage="total", t_send=t_stop - 0.3, events=[], success=False,
                      error="cancelled: the test stopped while the request was in flight") for i in range(3)]
    # the server aborted two of them before the last scrape (prefill done, a few tokens made)
    truth += [{"arrive": c["t_send"] + 0.001, "first": c["t_send"] + 0.1, "end": t_stop + 0.05, "prompt": 128,
               "gen": 3, "reason": "abort"} for c in cut[:2]]
    run = write_run(tmp_path / "run", recs)
    sink = RecordSink(os.path.join(run, "cancelled.jsonl"))
    for c in cut:
        sink.write(c)
    sink.close()
    write_metrics(run, truth)
    res = result_of(run)
    assert res["requests"]["client"] == {"sent": 203, "succeeded": 200, "failed": 0, "cancelled": 3, "warmup": 16}
    assert res["requests"]["server"]["by_reason"] == {"length": 200, "abort": 2} and res["requests"]["agree"]
    assert res["flags"] == [], res["lines"]
    assert "warm-up included" in res["lines"][0]
    lat = res["latency"]["e2e"]
    assert lat["mean"]["paired"] and lat["mean"]["server_only"] == 2 and lat["verdict"] in ("agree", "unresolved")


def test_token_mismatch_fires_and_names_the_cause(tmp_path):
    run, _, _ = make_run(tmp_path, n=200, lie={"prompt_tokens": 1.2})
    res = result_of(run)
    (flag,) = [f for f in res["flags"] if f["kind"] == "tokens"]
    assert flag["text"].startswith("server counted 20.0 % more prompt tokens")
    assert "usage replies" in flag["text"]  # the client's counts came from usage: the counter is off
    # counted by the tokenizer: then the tokenizer or chat template is the suspect
    recs = synthetic_records(200)
    for r in recs:
        r["token_source"] = "tokenizer"
    run = write_run(tmp_path / "tok", recs)
    write_metrics(run, truth_of(recs), lie={"generation_tokens": 0.8})
    (flag,) = [f for f in result_of(run)["flags"] if f["kind"] == "tokens"]
    assert "20.0 % fewer generation tokens" in flag["text"] and "tokenizer or chat template" in flag["text"]


def test_hidden_50ms_in_front_of_the_engine_fires_with_the_right_extra(tmp_path):
    run, _, _ = make_run(tmp_path, n=300, shift_client_s=0.050)
    res = result_of(run)
    assert {"ttft", "e2e"} <= kinds(res), res["lines"]
    for name, extra in (("ttft", 50.5), ("e2e", 50.52)):  # 50 ms hidden + the honest server's 0.5 ms
        lat = res["latency"][name]
        lo, hi = lat["extra_ms"]
        assert lo - 0.01 <= extra <= hi + 0.01 and lat["verdict"] == "client slower"
        mlo, mhi = lat["median"]["extra_ms"]  # the bucket-honest interval at the median holds it too
        assert mlo <= extra <= mhi
    flag = next(f["text"] for f in res["flags"] if f["kind"] == "ttft")
    assert re.match(r"client TTFT exceeds server TTFT by 50\.\d ms", flag) and "gateway or network" in flag


def test_a_busy_client_explains_its_own_extra_latency(tmp_path):
    """An extra within twice the client's own event-loop lag p99 is put down to the client, not the network."""
    run, _, _ = make_run(tmp_path, n=200, shift_client_s=0.030)
    cfg = json.load(open(os.path.join(run, "config.json")))
    busy = {**cfg, "client_health": {"local": {"cpu_percent": 95.0, "loop_lag_p50_ms": 10.0, "loop_lag_p99_ms": 40.0}}}
    res = rc.reconcile_run(run, busy)[0]
    assert res["latency"]["ttft"]["verdict"] == "client lag" and "ttft" not in kinds(res)
    assert "within the client's own event-loop lag" in "\n".join(res["lines"])
    assert "a busy client explains it" in "\n".join(res["details"])
    res = result_of(run)  # a healthy client: the same 30 ms is the network's
    assert "ttft" in kinds(res) and res["latency"]["ttft"]["verdict"] == "client slower"


def test_a_server_claiming_slower_latencies_than_the_client_saw_fires(tmp_path):
    run, _, _ = make_run(tmp_path, n=300, lie={"ttft": 1.2})
    res = result_of(run)
    assert res["latency"]["ttft"]["verdict"] == "server slower"
    assert any(f["kind"] == "ttft" and "cannot be right" in f["text"] for f in res["flags"])
    assert res["latency"]["e2e"]["verdict"] == "agree"


def test_counter_reset_gives_no_negative_delta_and_is_said(tmp_path):
    recs = synthetic_records(300)
    truth = truth_of(recs)
    run = write_run(tmp_path / "run", recs)
    mid = (min(r["arrive"] for r in truth) + max(r["end"] for r in truth)) / 2
    write_metrics(run, truth, restart_at=mid)
    sm = series.load(os.path.join(run, "server_metrics.jsonl"))
    total, resets = series.increase(sm.counter("requests_finished"), 0, sm.n - 1)
    assert total > 0 and len(resets) == 1
    assert any("went down" in n and "restarted" in n for n in sm.notes())
    res = result_of(run)
    assert "reset" in kinds(res)
    assert res["tokens"]["prompt"]["server"] > 0 and res["tokens"]["generation"]["server"] > 0
    assert all(b["server"] >= 0 for b in res["latency"]["ttft"]["buckets"])
    req = next(f["text"] for f in res["flags"] if f["kind"] == "requests")
    assert "restarted" in req  # the shortfall is put down to the restart, not to a lie


@pytest.mark.parametrize("times, reason", [
    ("none", "no scrape succeeded"),
    ("one", "only 1 scrape"),
    ("late", "no scrape before the first request"),
    ("early", "no scrape after the last request ended"),
])
def test_short_files_cannot_reconcile_and_say_why(tmp_path, times, reason):
    recs = synthetic_records(50)
    truth = truth_of(recs)
    run = write_run(tmp_path / "run", recs)
    t0, t1 = min(r["arrive"] for r in truth), max(r["end"] for r in truth)
    times = {"none": [], "one": [t0 - 1], "late": [t0 + 1, t1 + 1], "early": [t0 - 1, t1 - 1]}[times]
    write_metrics(run, truth, times=times, errors=[(t1 + 5, "connection refused")] if times == [] else ())
    res = result_of(run)
    assert not res["reconciled"] and res["reason"].startswith("cannot reconcile: ")
    assert reason in res["reason"] and len(res["lines"]) == 1 and "cannot reconcile" in res["lines"][0]
    json.dumps(res, allow_nan=False)


def test_empty_or_garbage_file_is_no_exception(tmp_path):
    run = write_run(tmp_path / "run", synthetic_records(20))
    path = os.path.join(run, "server_metrics.jsonl")
    open(path, "w").close()
    assert series.load(path) is None
    res = result_of(run)
    assert res["lines"] == ["Server metrics: cannot reconcile: server_metrics.jsonl has no readable line"]
    with open(path, "w") as f:
        f.write('{"kind": "meta", "url": "http://h/metrics", "interval_s": 1}\nnot json\n'
                '{"kind": "error", "t": 1700000000.5, "reason": "HTTP 200 but not Prometheus text: <html>"}\n')
    res = result_of(run)
    assert "no scrape succeeded" in res["reason"] and "not Prometheus text" in res["reason"]
    assert any("scrape failed at" in n and "not Prometheus text" in n for n in res["notes"])


def test_unknown_engine_keeps_raw_families_and_says_so(tmp_path):
    recs = synthetic_records(20)
    run = write_run(tmp_path / "run", recs)
    with open(os.path.join(run, "server_metrics.jsonl"), "w") as f:
        for t in (recs[0]["t_send"] - 1, recs[-1]["t_send"] + 5):
            f.write(json.dumps({"kind": "scrape", "t": t, "dt": 0.01, "engine": None, "full": True, "families": {
                "my_requests": {"type": "counter", "samples": [["my_requests_total", {}, 3.0]]}}}) + "\n")
    res = result_of(run)
    assert "unknown engine: raw families kept" in res["reason"]
    section = read(render(run)).split('<section id="server-metrics"')[1].split("</section>")[0]
    assert "Engine: <b>unknown engine: raw families kept</b>" in section and "cannot reconcile" in section
    assert "sm-requests" in section  # the client's side is still drawn on the scrape grid


def test_prefix_cache_hit_rate_against_the_workload(tmp_path):
    run, _, _ = make_run(tmp_path, n=100, prefix=(1, 16))
    cfg = json.load(open(os.path.join(run, "config.json")))
    res = rc.reconcile_run(run, {**cfg, "dataset_options": {"prefix_tokens": 64}})[0]
    assert res["prefix_cache"]["hit_rate"] == pytest.approx(16 * 99 / (128 * 100))
    assert res["prefix_cache"]["target"] == pytest.approx(64 * 99 / 100 / 128)
    assert any(f["kind"] == "prefix" and "where the workload was built for 49.5 %" in f["text"] for f in res["flags"])
    res = result_of(run)  # no prefix in the config: the rate is reported, nothing is judged
    assert res["prefix_cache"]["target"] is None and "prefix" not in kinds(res)
    assert "server reports hits of 12.4 %" in "\n".join(res["lines"])


# ---------------------------------------------------------------------------------------------
# console and report


def test_report_prints_the_verdict_and_writes_the_json(tmp_path, capsys):
    run, _, _ = make_run(tmp_path, n=200, shift_client_s=0.05)
    report(run, html=False)
    out = capsys.readouterr().out
    lines = out.splitlines()
    health = next(i for i, line in enumerate(lines) if line.startswith("Client health"))
    assert lines[health + 1].startswith("Server metrics: vLLM at ")
    assert "client TTFT exceeds server TTFT by 50" in out
    saved = json.load(open(os.path.join(run, rc.RESULT_FILE)))
    assert saved["reconciled"] and saved["latency"]["ttft"]["verdict"] == "client slower"


def test_report_html_gets_the_section_only_when_the_file_exists(tmp_path):
    stages = ("c4", "c8")
    run, _, _ = make_run(tmp_path, n=300, stages=stages, shift_client_s=0.05)
    html = read(render(run))
    assert '<section id="server-metrics"' in html and 'href="#server-metrics"' in html
    c = charts(html)
    for key in ("sm-requests", "sm-kv", "sm-tokens"):
        assert key in c and "<path" in c[key], key
    assert all(s in c["sm-requests"] for s in stages)  # stage boundaries marked
    section = html.split('<section id="server-metrics"')[1].split("</section>")[0]
    assert "vLLM" in section and "scraped" in section and "gateway or network" in section
    assert re.search(r'<table[^>]*id="sm-stages"', section) and ">c8<" in section
    assert re.search(r'<table[^>]*id="sm-buckets-ttft"', section)
    plain = tmp_path / "plain"
    os.rename(os.path.join(run, "server_metrics.jsonl"), tmp_path / "moved.jsonl")
    html = read(render(run, str(plain / "report.html")))
    assert "server-metrics" not in html and "sm-requests" not in html
