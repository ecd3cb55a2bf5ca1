"""Issue 13, "Verdicts people act on": figures and verdicts shown the way a reader can act on them."""
from __future__ import annotations

import csv
import json
import os
import re

from conftest import run_dirs, run_locust

from benchmark import metrics, run, tables
from benchmark.records import new_record


def rec(t_send, events, inp=0, out=0, success=True, **kw):
    return new_record(t_send=t_send, events=[list(e) for e in events], input_tokens=inp, output_tokens=out,
                      success=success, **kw)


# ------------------------------------------------------------------------------------------------
# number formatting

def _noisy_run() -> list[dict]:
    """Token counts whose linear percentiles land on float noise (415.8000000000002 and friends), and
    durations that make Goodput an endless fraction."""
    out = []
    for i, n in enumerate((382, 404, 392, 402, 386, 393, 416, 423, 437, 407, 417, 392)):
        t = 1000.0 + i * 0.37
        out.append(rec(t, [(0.1, "content", 1), (0.1 + 0.013 * (n - 1), "content", 1), (0.2 + 0.013 * n, "usage", 0)],
                       inp=97 + i, out=n))
    return out


NOISE = re.compile(r"\d\.\d{5,}")  # more than 4 decimals anywhere


def _cells(res):
    rows = tables.perf_rows(res)
    common = [str(v) for stages in tables.common_dict(res).values() for v in stages.values()]
    return [c for row in rows for c in row] + common


def test_aisbench_profile_shows_at_most_4_decimals_console_csv_json(tmp_path):
    res = metrics.compute(_noisy_run(), profile="aisbench", slo={"ttft": 1.0})
    goodput = tables.common_dict(res)["Goodput"]["total"]
    assert NOISE.search(str(goodput)) is None, goodput
    assert not [c for c in _cells(res) if NOISE.search(c)], [c for c in _cells(res) if NOISE.search(c)]
    assert NOISE.search(tables.console(res)) is None
    csv_path, json_path = tables.write(res, str(tmp_path), "ds")
    with open(csv_path, newline="") as f:
        flat = [c for row in csv.reader(f) for c in row]
    assert flat and not [c for c in flat if NOISE.search(c)]
    with open(json_path) as f:
        text = f.read()
    assert NOISE.search(text) is None, text
    assert json.loads(text)["Goodput"]["total"].endswith(" req/s")


def test_token_count_percentiles_lose_float_noise_in_default_profile(tmp_path):
    res = metrics.compute(_noisy_run())
    raw = res.perf[(res.perf["Performance Parameters"] == "OutputTokens") & (res.perf["Stage"] == "total")]
    assert any(len(repr(float(v))) > 12 for v in raw.iloc[0, 2:9]), "fixture no longer makes float noise"
    row = next(r for r in tables.perf_rows(res) if r[0] == "OutputTokens" and r[1] == "total")
    assert not [c for c in row if NOISE.search(c)], row
    assert NOISE.search(tables.console(res)) is None
    csv_path, _ = tables.write(res, str(tmp_path), "ds")
    with open(csv_path, newline="") as f:
        out_rows = [r for r in csv.reader(f) if r[0] == "OutputTokens"]
    assert out_rows and not [c for r in out_rows for c in r if NOISE.search(c)]


def test_aisbench_rounded_figures_unchanged():
    assert tables._number(734.7, None) == "734.7"
    assert tables._number(43.555, None) == "43.555"
    assert tables._number(415.8000000000002, None) == "415.8"


# ------------------------------------------------------------------------------------------------
# empty answers

def _answer(t, n_tokens):
    events = [(0.01, "role", 0)] + [(0.02 + 0.01 * i, "content", 4) for i in range(n_tokens)]
    return rec(t, events + [(0.03 + 0.01 * n_tokens, "usage", 0)], inp=10, out=n_tokens,
               finish_reason="stop", completion="word " * n_tokens, token_source="usage")


def test_empty_answers_counted_and_warned():
    recs = [_answer(100 + i, 0 if i % 3 == 0 else 5) for i in range(9)]  # 3 of 9 empty
    res = metrics.compute(recs)
    assert res.empty["total"] == (3, 9)
    note = tables.empty_note(res)
    assert note.startswith("Empty answers: 3 of 9 successful") and "WARNING" in note and "chat template" in note
    few = metrics.compute([_answer(100 + i, 0 if i == 0 else 5) for i in range(20)])  # 1 of 20: said, not warned
    assert "1 of 20" in tables.empty_note(few) and "WARNING" not in tables.empty_note(few)
    assert tables.empty_note(metrics.compute([_answer(100, 5)])) == ""


def test_empty_answers_in_console_and_report(tmp_path, capsys):
    d = tmp_path / "run"
    d.mkdir()
    recs = [_answer(100 + i, 0 if i % 2 else 5) | {"stage": "step1-2u" if i < 6 else "step2-4u"}
            for i in range(10)]
    with open(d / "records.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    run.report(str(d))
    out = capsys.readouterr().out
    assert "Empty answers: 5 of 10 successful request(s) (50 %)" in out and "WARNING" in out
    html = (d / "report.html").read_text()
    assert 'id="empty-answers"' in html and "5 of 10" in html
    assert "Empty answers: 3 of 6" in html and "Empty answers: 2 of 4" in html  # per stage table notes


def test_empty_answers_end_to_end(tmp_path, start_sim):
    sim = start_sim("--ttft-ms", "5", "--itl-ms", "1", "--fault", "empty-completion", "--fault-every", "2")
    p = run_locust(tmp_path, "--host", sim.url, "-u", "2", "-r", "2", "-t", "60s", "--num-requests", "10",
                   "--max-out-len", "8")
    assert p.returncode == 0, p.stderr[-2000:]
    m = re.search(r"Empty answers: (\d+) of (\d+)", p.stdout)
    assert m and int(m.group(2)) == 10 and 4 <= int(m.group(1)) <= 6, p.stdout[-3000:]
    assert "broken chat template" in p.stdout
    html = open(os.path.join(run_dirs(tmp_path)[-1], "report.html")).read()
    assert 'id="empty-answers"' in html


# ------------------------------------------------------------------------------------------------
# requests cut off by a load shape

def test_cancel_reason_names_the_stage():
    class Shape:  # a load shape as locustfile.py passes it (benchmark.load imports Locust)
        ended = False
    shape = Shape()
    assert run.stop_reason(None, True, "total", "total") == "the test stopped"
    assert run.stop_reason(shape, True, "step1-4u", "step2-1u") == \
        "the load shape removed users going from stage step1-4u to step2-1u"
    assert run.stop_reason(shape, False, "step2-1u", "step2-1u") == "the test stopped"
    shape.ended = True
    assert run.stop_reason(shape, False, "step2-1u", "step2-1u") == \
        "the load shape ended after its last stage step2-1u"


def test_cancelled_line_groups_reasons(tmp_path, capsys):
    d = tmp_path / "run"
    d.mkdir()
    ok = [_answer(100 + i, 5) for i in range(3)]
    cut = [rec(101 + i, [], success=False, error=f"cancelled: {why} while the request was in flight",
               stage="step1-4u", t_sched=100.5 + i)
           for i, why in enumerate(["the load shape removed users going from stage step1-4u to step2-1u"] * 2
                                   + ["the test stopped"])]
    with open(d / "records.jsonl", "w") as f:  # a distributed run keeps them with the others
        f.writelines(json.dumps(r) + "\n" for r in ok + cut[:1])
    with open(d / "cancelled.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in cut[1:])
    run.report(str(d), html=False)
    out = capsys.readouterr().out
    assert ("Cancelled: 3 request(s) in flight, not counted as failures: 2 when the load shape removed users "
            "going from stage step1-4u to step2-1u; 1 when the test stopped") in out, out
    assert run.cancelled_line(2, {"the test stopped": 2}) == \
        "Cancelled: 2 request(s) in flight when the test stopped (not counted as failures)"


def _cancelled(out_dir):
    with open(os.path.join(run_dirs(out_dir)[-1], "cancelled.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_steps_down_say_which_stage_removed_users(tmp_path, start_sim):
    sim = start_sim("--ttft-ms", "1500", "--itl-ms", "10")
    p = run_locust(tmp_path, "--host", sim.url, "--steps", "4,1", "--step-time", "2s")
    assert p.returncode == 0, p.stderr[-2000:]
    errors = [r["error"] for r in _cancelled(tmp_path)]
    removed = [e for e in errors if "removed users going from stage step1-4u to step2-1u" in e]
    assert removed, errors  # 4 users in flight at 2 s (each waits 1.5 s per answer), 3 of them removed
    assert "when the load shape removed users going from stage step1-4u to step2-1u" in p.stdout


def test_cancelled_open_loop_records_keep_t_sched(tmp_path, start_sim):
    sim = start_sim("--ttft-ms", "3000", "--itl-ms", "10")
    p = run_locust(tmp_path, "--host", sim.url, "-u", "2", "-r", "2", "--request-rate", "20", "-t", "2s")
    assert p.returncode == 0, p.stderr[-2000:]
    cut = _cancelled(tmp_path)
    assert cut and all(isinstance(r["t_sched"], float) and r["t_sched"] <= r["t_send"] + 1e-3 for r in cut), cut


# ------------------------------------------------------------------------------------------------
# client-health verdict

from benchmark import health  # noqa: E402


def _ticks(n, lag_s=0.0005, t0=1000.0, spikes=()):
    """n ticks of the 50 ms timer from t0, each lag_s late; spikes: {index: lag_s}."""
    ends, lags, t = [], [], t0
    for i in range(n):
        lag = dict(spikes).get(i, lag_s)
        t += health.INTERVAL_S + lag
        ends.append(t)
        lags.append(lag)
    return ends, lags


def _samples(t0, t1, cpu=0.05, others=0.0, steal=0.0, wait=0.0, cpus=2, step=0.5):
    """CPU samples every `step` s: this process uses `cpu` of a core, the others `others` cores."""
    out, t, k = [], t0, 0
    while t <= t1 + 1e-9:
        dt = t - t0
        out.append((t, cpu * dt, (cpu + others + steal) * dt, steal * dt, cpus * dt, wait * dt))
        k += 1
        t = t0 + k * step
    return out


def test_one_late_tick_at_startup_or_shutdown_is_not_client_bound():
    # 5 s of ticks; a 60 ms stall at start-up (tick 0) and at shutdown (last tick), outside the window
    ends, lags = _ticks(100, spikes={0: 0.060, 99: 0.080})
    s = _samples(1000.0, ends[-1])
    h = health.summarize(ends, lags, s, first=ends[1], last=ends[97], cpus=2)
    assert h["loop_lag_p99_whole_run_ms"] > 50 and h["loop_lag_p99_ms"] < 1 and h["loop_lag_over_ticks"] == 0
    assert {"loop_lag_p50_ms", "loop_lag_p99_ms", "cpu_percent"} <= set(h)  # what reconcile.py reads
    bound, line = health.verdict({"local": h})
    assert not bound and line.startswith("Client healthy"), line
    # one stall inside the window (a stage change) is still not sustained
    ends, lags = _ticks(100, spikes={50: 0.060})
    h = health.summarize(ends, lags, s, first=ends[1], last=ends[97], cpus=2)
    assert h["loop_lag_over_ticks"] == 1 and not health.verdict({"local": h})[0]


def test_saturated_process_is_client_bound_with_processes_advice():
    ends, lags = _ticks(100, lag_s=0.030)  # every tick 30 ms late
    h = health.summarize(ends, lags, _samples(1000.0, ends[-1], cpu=0.97), first=ends[2], last=ends[95], cpus=2)
    assert h["cpu_percent"] > 90 and h["loop_lag_over_share"] == 1.0
    bound, line = health.verdict({"local": h})
    assert bound and line.startswith("CLIENT-BOUND") and "is saturated" in line and "--processes N" in line


def test_busy_machine_is_told_apart_from_a_saturated_client():
    ends, lags = _ticks(100, spikes={i: 0.015 for i in range(0, 100, 3)})  # a third of the ticks late
    s = _samples(1000.0, ends[-1], cpu=0.10, others=1.8, wait=0.02)
    h = health.summarize(ends, lags, s, first=ends[1], last=ends[98], cpus=2)
    assert h["others_cpu_percent"] == 90.0 and h["runqueue_wait_ms_per_s"] == 20.0
    bound, line = health.verdict({"local": h})
    assert bound and line.startswith("CLIENT-DELAYED") and "the machine is busy" in line
    assert "other processes took 90 % of its 2 CPU(s)" in line and "won't help" in line and "CLIENT-BOUND" not in line
    stolen = health.summarize(ends, lags, _samples(1000.0, ends[-1], cpu=0.1, steal=0.3), ends[1], ends[98], 2)
    assert "stole 15 %" in health.verdict({"local": stolen})[1]


def test_old_run_folders_keep_a_cpu_only_verdict():
    old = {"cpu_percent": 6.0, "loop_lag_p50_ms": 0.4, "loop_lag_p99_ms": 38.0, "loop_lag_max_ms": 60.0}
    assert not health.verdict({"local": old})[0]
    assert health.verdict({"local": {**old, "cpu_percent": 97.0}})[0]


def _health_line(stdout):
    return next((line for line in stdout.splitlines() if "Client healthy" in line or "CLIENT-" in line), "")


def test_short_runs_on_the_simulator_are_not_client_bound(tmp_path):
    for i in range(3):
        p = run_locust(tmp_path / str(i), "-u", "4", "-r", "4", "-t", "5s")
        assert p.returncode == 0, p.stderr[-2000:]
        line = _health_line(p.stdout)
        assert line, p.stdout[-2000:]
        # a machine busy with other tests may delay the client; it must never be blamed on the client
        assert "CLIENT-BOUND" not in line and ("Client healthy" in line or "the machine is busy" in line), line
        with open(os.path.join(run_dirs(tmp_path / str(i))[-1], "config.json")) as f:
            h = json.load(f)["client_health"]["local"]
        assert h["window"] == "first send to last end" and h["ticks"] > 0


HOG = '''"""The project's locustfile plus a greenlet that holds the event loop 37 ms out of every 40 ms."""
import time

import gevent
from locust import events

from locustfile import *  # noqa: F401,F403


def _hog():
    while True:
        t = time.perf_counter()
        while time.perf_counter() - t < 0.037:
            pass
        gevent.sleep(0.003)


@events.test_start.add_listener
def _start_hog(**_):
    gevent.spawn(_hog)
'''


def test_a_client_hogging_its_loop_is_client_bound(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT
    hog = tmp_path / "hog.py"
    hog.write_text(HOG)
    cmd = [sys.executable, "-m", "locust", "-f", str(hog), "--headless", "--output-dir", str(tmp_path / "out"),
           "--only-summary", "-u", "4", "-r", "4", "-t", "5s"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 0, p.stderr[-2000:]
    line = _health_line(p.stdout)
    assert line.startswith("CLIENT-BOUND") and "is saturated" in line and "--processes N" in line, line


# ------------------------------------------------------------------------------------------------
# charts: ticks and labels

from benchmark.report import svg  # noqa: E402

SVG_RE = re.compile(r'<svg class="chart[^"]*" data-chart="([^"]+)" viewBox="0 0 (\d+) (\d+)".*?</svg>', re.S)
TEXT_RE = re.compile(r'<text class="(mk|pl)" x="([-\d.]+)" y="([-\d.]+)"[^>]*>([^<]*)</text>')
XTICK_RE = re.compile(r'<text class="tk" x="([-\d.]+)" y="([-\d.]+)" text-anchor="middle">([^<]*)</text>')


def _charts(html: str) -> dict:
    return {m.group(1): (m.group(0), int(m.group(2)), int(m.group(3))) for m in SVG_RE.finditer(html)}


def _label_boxes(chart: str) -> list[tuple]:
    import html as h
    return [(float(x), float(y) - 9, float(x) + svg.text_width(h.unescape(t), cls), float(y) + 2, t)
            for cls, x, y, t in TEXT_RE.findall(chart)]


def _check_chart(key, chart, width, height):
    boxes = _label_boxes(chart)
    for i, a in enumerate(boxes):
        assert 0 <= a[0] and a[2] <= width and 0 <= a[1] and a[3] <= height, (key, a, width)
        for b in boxes[i + 1:]:
            assert not svg._overlap(a[:4], b[:4], pad=0), (key, a, b)
    ticks = [t for _, _, t in XTICK_RE.findall(chart)]
    assert len(ticks) == len(set(ticks)), (key, ticks)
    return boxes, ticks


def _stage_run(d, stages, itl=0.020, jitter=1e-5, same_throughput=False, n_per=30, seed=3):
    import random
    rnd = random.Random(seed)
    d.mkdir()
    recs, t = [], 1000.0
    for si, st in enumerate(stages):
        for _ in range(n_per):
            gap = itl + rnd.uniform(-jitter, jitter)
            n = 64 if same_throughput else 16 + 8 * si
            ttft = 0.1 + 0.001 * si
            ev = ([(0.01, "role", 0)] + [(ttft + gap * i, "content", 4) for i in range(n)]
                  + [(ttft + gap * n, "usage", 0)])
            recs.append(rec(t, ev, inp=100, out=n, stage=st, finish_reason="stop", completion="x",
                            token_source="usage"))
            t += 0.05
    with open(d / "records.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    run.report(str(d), echo=False)
    return _charts((d / "report.html").read_text())


def test_tick_labels_tell_ticks_apart():
    for lo, hi in ((19.99, 20.01), (20.305, 20.33), (415.2, 415.9), (0, 1e6), (0, 2.5e4), (1e-4, 3e-4),
                   (5.0, 5.0), (0, 12.5)):
        ticks = svg.nice_ticks(lo, hi)
        labels = svg.tick_labels(ticks)
        assert len(set(labels)) == len(labels), (lo, hi, labels)
        assert 3 <= len(ticks) <= 12, (lo, hi, ticks)
    assert svg.tick_labels([0, 2.5, 5, 7.5, 10]) == ["0", "2.5", "5.0", "7.5", "10.0"]
    assert svg.tick_labels([0, 10000, 20000]) == ["0", "10k", "20k"]


def test_narrow_tpot_histogram_and_markers(tmp_path):
    charts = _stage_run(tmp_path / "narrow", ["total"], jitter=1e-5)
    for key in ("dist-tpot", "dist-itl", "dist-ttft", "dist-e2el"):
        chart, w, h = charts[key]
        boxes, ticks = _check_chart(key, chart, w, h)
        assert len(ticks) >= 3 and {b[4].split()[0] for b in boxes} == {"P50", "P90", "P99"}, (key, ticks, boxes)


def test_single_value_distribution(tmp_path):
    charts = _stage_run(tmp_path / "one", ["total"], jitter=0, n_per=5)
    for key in ("dist-tpot", "dist-itl"):
        chart, w, h = charts[key]
        boxes, ticks = _check_chart(key, chart, w, h)
        assert len(boxes) == 3 and len(ticks) >= 2, (key, boxes, ticks)


def test_wide_distribution(tmp_path):
    charts = _stage_run(tmp_path / "wide", ["total"], itl=0.5, jitter=0.49, n_per=40)
    for key in ("dist-tpot", "dist-itl", "dist-e2el"):
        _check_chart(key, *charts[key])


def test_many_stages_keep_labels_apart_and_inside(tmp_path):
    stages = [f"step{i + 1}-{2 ** i}u" for i in range(12)]
    for name, same in (("spread", False), ("piled", True)):
        charts = _stage_run(tmp_path / name, stages, same_throughput=same, n_per=12)
        for key in ("lvt-ttft", "lvt-tpot", "lvt-e2el", "time-tokens", "time-requests", "time-inflight"):
            chart, w, h = charts[key]
            boxes, _ = _check_chart(key, chart, w, h)
            assert {b[4] for b in boxes} >= set(stages) if key.startswith("lvt") else len(boxes) == 12, (key, boxes)
        chart, w, h = charts["scatter-ttft"]  # the legend stays right of the title
        assert "more</text>" in chart
