"""The HTML report: every section from hand-made records, escaping, stages, accuracy, offline-ness, size."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np

from benchmark import metrics
from benchmark.records import RecordSink, new_record, read_records
from benchmark.report import render
from conftest import ROOT

XSS = "<script>alert('x')</script>"


def synthetic_records(n: int, *, stages: tuple[str, ...] = (), fail_every: int = 0, users: int = 8,
                      out_tokens: int = 64, ttft: float = 0.1, itl: float = 0.02, seed: int = 0,
                      completion: str = "The answer is 42.", stream: bool = True) -> list[dict]:
    """Closed-loop-like records: `users` streams back to back, jittered TTFT/ITL, stages in time order."""
    rng = np.random.default_rng(seed)
    t_user = np.full(users, 1_700_000_000.0)
    recs = []
    for i in range(n):
        u = int(np.argmin(t_user))
        t_send = float(t_user[u])
        stage = stages[min(i * len(stages) // n, len(stages) - 1)] if stages else "total"
        slow = 1 + (stages.index(stage) if stages else 0) * 0.5
        failed = bool(fail_every) and i % fail_every == fail_every - 1
        first = ttft * slow * rng.lognormal(0, 0.25)
        gaps = itl * slow * rng.lognormal(0, 0.15, out_tokens - 1)
        tok = first + np.concatenate([[0], np.cumsum(gaps)])
        if not stream:
            events = [[float(tok[-1]), "content", len(completion)]]
        else:
            events = [[float(first) - 1e-5, "role", 0]] + [[float(t), "content", 4] for t in tok]
            events.append([float(tok[-1]) + 2e-5, "usage", 0])
        if failed:
            events = events[: 1 + out_tokens // 3]
        rec = new_record(id=i, worker="test:1", user=u, stage=stage, dataset="synthetic", prompt_index=i % 100,
                         t_send=t_send, events=events, success=not failed, http_status=200,
                         input_tokens=None if failed else 128, output_tokens=None if failed else out_tokens,
                         token_source=None if failed else "usage", completion=completion,
                         finish_reason=None if failed else "length",
                         error=f"stream ended without finish_reason (request {i:06d}) {XSS}" if failed else "")
        recs.append(rec)
        t_user[u] = t_send + events[-1][0] + 0.001
    return recs


def write_run(path, records, **config) -> str:
    run = str(path)
    os.makedirs(run, exist_ok=True)
    cfg = {"host": "http://10.0.0.7:8000", "model": "demo-model", "model_abbr": "demo-model",
           "dataset": "synthetic", "dataset_abbr": "synthetic", "max_out_len": 64, "users": 8, "max_users": 8,
           "metric_profile": "default", "stream": True, "mode": "perf", "tool": "llm-testing 0.1.0",
           "command": "locust -f locustfile.py --headless -u 8", "started": "2026-01-01T12:00:00+0000",
           "finished": "2026-01-01T12:01:00+0000", **config}
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump(cfg, f)
    sink = RecordSink(os.path.join(run, "records.jsonl"))
    for r in records:
        sink.write(r)
    sink.close()
    return run


def read(path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def charts(html: str) -> dict[str, str]:
    return dict(re.findall(r'<svg class="chart[^"]*" data-chart="([^"]+)"(.*?)</svg>', html, re.S))


EXTERNAL = re.compile(r"""(?:\b(?:src|href|action|poster|data|xlink:href)\s*=\s*["']?\s*(?!#|data:)[a-z]+:"""
                      r"""|\b(?:src|href)\s*=\s*["']?\s*//|@import|url\(\s*["']?(?!#))""", re.I)


def test_every_section_from_records(tmp_path):
    recs = synthetic_records(400, fail_every=37)
    recs[0]["completion"] = f"Sure: {XSS} <b>bold</b> & done"
    run = write_run(tmp_path / "run", recs)
    path = render(run)
    assert path == os.path.join(run, "report.html")
    html = read(path)
    for anchor in ("summary", "tables", "distributions", "over-time", "timeline", "failures", "samples"):
        assert f'<section id="{anchor}"' in html, anchor
    assert "accuracy" not in re.findall(r'<section id="([^"]+)"', html)  # not scored: no panel
    assert '<section id="health"' not in html                            # nothing recorded: no panel
    # header
    for text in ("http://10.0.0.7:8000", "demo-model", "synthetic", "8 users", "llm-testing 0.1.0",
                 "locust -f locustfile.py --headless -u 8", "usage (390)"):
        assert text in html, text
    # the AISBench tables, as formatted for the console
    results = metrics.compute(read_records(os.path.join(run, "records.jsonl"))[0])
    from benchmark import tables
    plain = re.sub(r' title="[^"]*"|<sup class="thin">†</sup>', "", html.replace("\n", ""))
    for row in tables.perf_rows(results):
        assert f"<td>{row[0]}</td>" + "".join(f'<td class="n">{v}</td>' for v in row[2:]) in plain
    # each statistic's confidence interval rides on its cell, and brackets the value shown
    ci = results.intervals.set_index(["Performance Parameters", "Stage", "Statistic"])
    lo, hi, value = ci.loc[("TTFT", "total", "Median"), ["Lower", "Upper", "Value"]]
    assert lo <= value <= hi and lo < hi
    assert f'title="95% CI {lo:.3f} ms – {hi:.3f} ms"' in html
    assert "95% confidence interval" in html
    assert '<td class="n">400</td>' in html and '<td class="n">10</td>' in html  # total / failed
    # every chart is there and has marks in it
    c = charts(html)
    for key in ("dist-ttft", "dist-tpot", "dist-itl", "dist-e2el", "time-tokens", "time-requests",
                "time-inflight", "scatter-ttft", "scatter-tpot", "timeline"):
        assert key in c and ("<rect" in c[key] or "<path" in c[key]), key
    assert re.search(r'class="span bad"', c["timeline"])  # failed requests drawn in red
    assert "lvt-ttft" not in c                             # one stage: no latency-vs-throughput
    # failures: reason, count, first example (escaped)
    assert re.search(r"<tr><td>stream ended without finish_reason \(request &lt;n&gt;\) &lt;script&gt;.*?</td>"
                     r'<td class="n">10</td><td><pre class="out">stream ended without finish_reason \(request 000036\) '
                     r"&lt;script&gt;", html)


def test_model_output_and_errors_are_escaped(tmp_path):
    recs = synthetic_records(60, fail_every=7, completion=f"{XSS}<img src=x onerror=alert(1)>")
    recs[3]["stage"] = "</svg><script>bad()</script>"
    run = write_run(tmp_path / "run", recs, model="<b>m</b>", command=f"locust {XSS}")
    html = read(render(run))
    assert "<script" not in html.lower()
    assert "<img" not in html.lower()
    assert "&lt;script&gt;alert(" in html and "&lt;img src=x" in html
    assert "&lt;b&gt;m&lt;/b&gt;" in html


def test_stage_run_has_per_stage_tables_and_latency_vs_throughput(tmp_path):
    stages = ("c4", "c8", "c16")
    run = write_run(tmp_path / "run", synthetic_records(600, stages=stages), slo={"ttft": 0.15})
    html = read(render(run))
    assert "SLO attainment / goodput" in html and '<th class="n">SLO %</th>' in html
    for s in ("total", *stages):
        assert f'data-stage="{s}"' in html, s
    stage_table = html.split('id="stage-table"')[1].split("</table>")[0]
    rows = re.findall(r"<tr(?: class=\"total\")?><td>([^<]+)</td>", stage_table)
    assert rows == [*stages, "total"]
    c = charts(html)
    for key in ("lvt-ttft", "lvt-tpot", "lvt-e2el"):
        assert key in c and 'class="pt c0"' in c[key] and "c16" in c[key]
    assert all(s in c["scatter-ttft"] for s in stages)  # one colour per stage, in the legend
    assert c["time-tokens"].count('class="stg"') == 3   # stage starts marked over time


def test_accuracy_panel_per_stage_next_to_latency(tmp_path):
    from benchmark.accuracy import score_run
    stages = ("low", "high")
    recs = synthetic_records(40, stages=stages, completion="... so the answer is 42")
    for i, r in enumerate(recs):
        r["reference"] = "6 * 7 = 42\n#### 42" if i % 4 else "#### 41"
    run = write_run(tmp_path / "run", recs, dataset="gsm8k", dataset_abbr="gsm8k", mode="all")
    score_run(run, echo=False)
    html = read(render(run))
    panel = html.split('<section id="accuracy">')[1].split("</section>")[0]
    assert "results/demo-model/gsm8k.json" in panel
    assert re.search(r'<tr class="total"><td>total</td><td class="n">75.00</td>', panel)
    for s in stages:  # each stage's accuracy in the row that also holds its TTFT/TPOT
        assert re.search(rf'<tr><td>{s}</td><td class="n">75.00</td>.*?</tr>', panel)
    stage_table = html.split('id="stage-table"')[1].split("</table>")[0]
    assert "Accuracy %" in stage_table and stage_table.count(">75.00<") == 3
    # no stages: the whole run's accuracy still sits beside its latency
    for r in recs:
        r["stage"] = "total"
    run = write_run(tmp_path / "flat", recs, dataset="gsm8k", dataset_abbr="gsm8k", mode="all")
    score_run(run, echo=False)
    html = read(render(run))
    ttft = metrics.compute(recs).perf.set_index("Performance Parameters").loc["TTFT", "Median"]
    assert re.search(rf'<tr class="total"><td>total</td><td class="n">75.00</td>.*<td class="n">{ttft:.2f}</td>',
                     html.split('<section id="accuracy">')[1])
    assert 'id="stage-table"' not in html


def test_nothing_is_fetched_from_anywhere(tmp_path):
    run = write_run(tmp_path / "run", synthetic_records(200, stages=("a", "b"), fail_every=11))
    html = read(render(run))
    assert not EXTERNAL.findall(html), EXTERNAL.findall(html)[:5]
    assert "<script" not in html and "<link" not in html.replace('<link rel="icon" href="data:,">', "")
    assert "@font-face" not in html and "xmlns" not in html
    # the only URL in the file is the target host, as text in the header
    assert re.findall(r"https?://[^\s<\"]+", html) == ["http://10.0.0.7:8000"] * html.count("http://10.0.0.7:8000")


def test_percentile_markers_are_the_table_numbers(tmp_path):
    recs = synthetic_records(300)
    run = write_run(tmp_path / "run", recs)
    html = read(render(run))
    results = metrics.compute(recs)
    perf = results.perf.set_index("Performance Parameters")
    c = charts(html)
    for metric in ("TTFT", "TPOT", "ITL", "E2EL"):
        for label, col in (("P50", "Median"), ("P90", "P90"), ("P99", "P99")):
            assert f">{label} {perf.loc[metric, col]:.4g}<" in c[f"dist-{metric.lower()}"], (metric, label)


def test_non_streaming_and_all_failed_runs_still_render(tmp_path):
    run = write_run(tmp_path / "ns", synthetic_records(50, stream=False), stream=False)
    c = charts(read(render(run)))
    assert "no samples" in c["dist-ttft"] and "<rect class=\"c0\"" not in c["dist-ttft"]
    assert "<rect class=\"c0\"" in c["dist-e2el"]
    recs = synthetic_records(20, fail_every=1)
    html = read(render(write_run(tmp_path / "bad", recs)))
    assert "No successful request" in html and 'class="span bad"' in charts(html)["timeline"]


def test_client_health_panel_only_when_recorded(tmp_path):
    health = {"local": {"cpu_percent": 97.5, "loop_lag_p50_ms": 0.2, "loop_lag_p99_ms": 41.0},
              "worker <1>": {"cpu_percent": 12.0, "loop_lag_p50_ms": 0.1, "loop_lag_p99_ms": 0.4}}
    html = read(render(write_run(tmp_path / "run", synthetic_records(30), client_health=health)))
    panel = html.split('<section id="health">')[1].split("</section>")[0]
    assert "<th>process</th><th>cpu_percent</th><th>loop_lag_p50_ms</th>" in panel
    assert "<td>local</td><td>97.5</td>" in panel and "worker &lt;1&gt;" in panel
    assert "CLIENT-BOUND" in panel  # the verdict of benchmark.health, when it judges the numbers
    html = read(render(write_run(tmp_path / "kv", synthetic_records(30), client_health={"note": "cpu > 90%"})))
    assert "cpu &gt; 90%" in html.split('<section id="health">')[1]


def test_cli_report_writes_html_where_asked(tmp_path):
    run = write_run(tmp_path / "run", synthetic_records(50))
    out = tmp_path / "elsewhere" / "r.html"
    res = subprocess.run([sys.executable, "-m", "benchmark", "report", run, "--html", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    assert out.is_file() and f"Report written to {out}" in res.stdout
    assert not os.path.exists(os.path.join(run, "report.html"))
    res = subprocess.run([sys.executable, "-m", "benchmark", "report", run], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert res.returncode == 0 and os.path.isfile(os.path.join(run, "report.html"))


def test_ten_thousand_requests_render_fast_and_small(tmp_path):
    recs = synthetic_records(10_000, stages=("s1", "s2", "s3", "s4"), fail_every=500, out_tokens=128)
    run = write_run(tmp_path / "run", recs)
    t = time.perf_counter()
    path = render(run)  # reads records.jsonl and computes the tables itself, as `benchmark report` does
    took = time.perf_counter() - t
    size = os.path.getsize(path)
    print(f"10 000 requests x 128 tokens: report.html {size / 1024:.0f} KiB in {took:.2f} s")
    assert size < 1_000_000, size
    assert took < 15, took
    assert "3000 of 9980 requests drawn" in read(path)


def test_live_window_reads_records_incrementally_and_matches_the_tables(tmp_path):
    from benchmark.webui import LiveWindow
    recs = synthetic_records(300, fail_every=50)
    cancelled = new_record(id=999, t_send=recs[-1]["t_send"], success=False, error="cancelled: the test stopped")
    lines = [json.dumps(r) + "\n" for r in [*recs, cancelled]]
    path = tmp_path / "records.jsonl"
    live = LiveWindow(str(path))
    assert live.poll() == 0                                  # no file yet
    path.write_text("".join(lines[:100]) + lines[100][:40])  # the 101st line is half written
    assert live.poll() == 100
    with open(path, "a") as f:
        f.write(lines[100][40:] + "".join(lines[101:]))
    assert live.poll() == 201
    rows = {r["metric"]: r for r in live.rows()}
    perf = metrics.compute(recs).perf.set_index("Performance Parameters")
    for name, metric in (("TTFT (ms)", "TTFT"), ("TPOT (ms)", "TPOT"), ("ITL (ms)", "ITL"), ("E2EL (ms)", "E2EL"),
                         ("Output token/s per request", "OutputTokenThroughput")):
        digits = 1 if metric == "OutputTokenThroughput" else 2
        for col, stat in (("p50", "Median"), ("p90", "P90"), ("p99", "P99"), ("avg", "Average")):
            assert rows[name][col] == round(perf.loc[metric, stat], digits), (name, col)
    assert rows["TTFT (ms)"]["n"] == perf.loc["TTFT", "N"] == 294
    assert rows["Requests: failed / all"]["avg"] == 6 and rows["Requests: failed / all"]["n"] == 300
    common = metrics.compute(recs).common.set_index("Common Metric")
    assert rows["Output token/s, whole run"]["avg"] == round(common.loc["Output Token Throughput", "Value"], 1)
    assert "when the test stops" in rows["HTML report"]["p50"]
