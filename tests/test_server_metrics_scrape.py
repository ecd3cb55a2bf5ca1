"""The server-metrics scraper against small hostile servers on loopback, and the engine table.

Every server here is a thread in this process on 127.0.0.1 (port 0); every scraper child is stopped
by its pid. Timing bounds are loose: the machine may be a busy 2-core one.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from benchmark.server_metrics import engines, read
from benchmark.server_metrics.scrape import ScraperProcess, metrics_url, parse, summarize
from conftest import ROOT, free_port, pid_alive

# ---------------------------------------------------------------- pages


def engine_page(engine: engines.Engine, *, extra: bool = True, candidate: int = 0, value: float = 1.0) -> bytes:
    """A page with one family per canonical the engine maps (its `candidate`-th name, or the last
    one it has), built by prometheus_client itself, with realistic labels."""
    reg = CollectorRegistry()
    labels = ["model_name", "engine"] if engine.name == "vllm" else ["model_name"]
    lv = ["m", "0"] if engine.name == "vllm" else ["m"]
    done = set()
    for canonical, names in engine.metrics.items():
        name = names[min(candidate, len(names) - 1)]
        if name in done:  # SGLang maps prompt_tokens twice
            continue
        done.add(name)
        kind = engines.KINDS[canonical]
        if canonical == "requests_finished" and engine.finished_reason_label:
            c = Counter(name, "d", labels + [engine.finished_reason_label], registry=reg)
            for reason in ("stop", "length", "abort"):
                c.labels(*lv, reason).inc(value)
        elif kind == "counter":
            Counter(name, "d", labels, registry=reg).labels(*lv).inc(value)
        elif kind == "gauge":
            Gauge(name, "d", labels, registry=reg).labels(*lv).set(min(value, 1.0) / 2)
        else:
            h = Histogram(name, "d", labels, buckets=[0.01, 0.1, 1.0, 10.0], registry=reg).labels(*lv)
            for x in (0.005, 0.05, 0.5):
                h.observe(x * value)
    if extra:  # families no mapping names: kept only in the first, full scrape
        Gauge("process_open_fds", "d", registry=reg).set(7)
        if engine.prefix:
            Counter(engine.prefix + "num_preemptions", "d", labels, registry=reg).labels(*lv).inc()
    return generate_latest(reg)


class Target:
    """A /metrics server in a thread whose behaviour the test switches with .mode."""

    def __init__(self, mode: str = "vllm", port: int = 0):
        self.mode, self.hits, self.release = mode, 0, threading.Event()
        self._value = 1.0
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                target.hits += 1
                target.reply(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def reply(self, h: BaseHTTPRequestHandler) -> None:
        mode = self.mode
        if mode == "slow":
            self.release.wait(1.5)
            mode = "vllm"
        if mode == "hang":
            self.release.wait(60)
            return
        if mode == "vllm":
            self._value += 1
            self._send(h, 200, engine_page(engines.VLLM, value=self._value), "text/plain; version=0.0.4")
        elif mode == "garbage":
            self._send(h, 200, b"this is not\nprometheus {{{ text at all\n", "text/plain")
        elif mode == "html":
            self._send(h, 200, b"<!doctype html><html><body>Login</body></html>", "text/html; charset=utf-8")
        elif mode == "404":
            self._send(h, 404, b"404 page not found\n", "text/plain")
        elif mode == "500":
            self._send(h, 500, b"boom\n", "text/plain")

    @staticmethod
    def _send(h, status: int, body: bytes, ctype: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def targets():
    made = []

    def make(*args, **kw):
        t = Target(*args, **kw)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


@pytest.fixture
def scrapers():
    made = []

    def make(url, out, interval_s=0.2, timeout_s=1.0):
        s = ScraperProcess(url, str(out), interval_s=interval_s, timeout_s=timeout_s)
        made.append(s)
        s.start()
        assert s.pid and s.wait_first(15.0), s.error
        return s

    yield make
    for s in made:
        s.stop(timeout_s=3.0)
        assert not pid_alive(s.pid)


def kinds(lines):
    return [x["kind"] for x in lines]


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


# ---------------------------------------------------------------- a healthy vLLM page


def test_vllm_page_lines_families_engine_intervals_final(targets, scrapers, tmp_path):
    tgt = targets("vllm")
    out = tmp_path / "server_metrics.jsonl"
    sc = scrapers(tgt.url, out, interval_s=0.2)
    assert wait_for(lambda: kinds(read(str(out))).count("scrape") >= 6)
    t_stop = time.time()
    summary = sc.stop(timeout_s=5.0)
    lines = read(str(out))

    assert kinds(lines)[0] == "meta" and kinds(lines)[-1] == "end"
    assert lines[0]["url"] == tgt.url and lines[0]["interval_s"] == 0.2
    scr = [x for x in lines if x["kind"] == "scrape"]
    assert "error" not in kinds(lines)
    assert summary == {"scrapes": len(scr), "errors": 0, "last_error": None, "engine": "vllm", "ended": True}

    first, later = scr[0], scr[1:]
    assert first["full"] is True and all(x["full"] is False for x in later)
    assert all(x["engine"] == "vllm" for x in scr)
    assert {"process_open_fds", "vllm:num_preemptions", "vllm:prompt_tokens_created"} <= set(first["families"])
    keep = engines.VLLM.families()
    for x in later:
        assert set(x["families"]) <= keep
        assert "vllm:num_requests_running" in x["families"] and "process_open_fds" not in x["families"]

    fam = later[0]["families"]
    assert fam["vllm:prompt_tokens"]["type"] == "counter"
    assert fam["vllm:prompt_tokens"]["samples"][0][:2] == ["vllm:prompt_tokens_total", {"model_name": "m", "engine": "0"}]
    ttft = fam["vllm:time_to_first_token_seconds"]
    assert ttft["type"] == "histogram"
    assert {"vllm:time_to_first_token_seconds_bucket", "vllm:time_to_first_token_seconds_sum",
            "vllm:time_to_first_token_seconds_count"} == {s[0] for s in ttft["samples"]}
    reasons = {s[1]["finished_reason"] for s in fam["vllm:request_success"]["samples"]}
    assert reasons == {"stop", "length", "abort"}

    # t increases, at about the interval (loose: the tick grid, not a tight timing claim)
    ts = [x["t"] for x in scr]
    assert all(b > a for a, b in zip(ts, ts[1:]))
    gaps = [b - a for a, b in zip(ts[:-1], ts[1:-1])]  # the last one is the final scrape, off-grid
    assert 0.1 < statistics.median(gaps) < 0.6
    assert all(x["dt"] >= 0 for x in scr)
    # the final scrape was taken after stop was asked for, and counts moved on between scrapes
    assert scr[-1]["t"] >= t_stop
    vals = [x["families"]["vllm:prompt_tokens"]["samples"][0][2] for x in later]
    assert vals == sorted(vals) and vals[-1] > vals[0]


# ---------------------------------------------------------------- hostile targets


def test_slow_target_times_out_once_and_the_run_goes_on(targets, scrapers, tmp_path):
    tgt = targets("vllm")
    out = tmp_path / "m.jsonl"
    sc = scrapers(tgt.url, out, interval_s=0.2, timeout_s=0.5)
    tgt.mode = "slow"  # 1.5 s per answer: every attempt now times out
    assert wait_for(lambda: "error" in kinds(read(str(out))))
    time.sleep(1.5)  # more timeouts: still a single error line
    tgt.mode = "vllm"
    assert wait_for(lambda: "recovered" in kinds(read(str(out))))
    n = kinds(read(str(out))).count("scrape")
    assert wait_for(lambda: kinds(read(str(out))).count("scrape") >= n + 2)
    summary = sc.stop()
    lines = read(str(out))
    errs = [x for x in lines if x["kind"] == "error"]
    assert len(errs) == 1 and "within 0.5 s" in errs[0]["reason"]
    assert summary["errors"] >= 2 and summary["ended"] and "within" in summary["last_error"]


def test_down_target_is_refused(scrapers, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/metrics"
    out = tmp_path / "m.jsonl"
    sc = scrapers(url, out, interval_s=0.1)
    time.sleep(0.8)
    t0 = time.monotonic()
    summary = sc.stop(timeout_s=5.0)
    assert time.monotonic() - t0 < 4.0
    lines = read(str(out))
    assert kinds(lines) == ["meta", "error", "end"]
    assert "refused" in lines[1]["reason"] and "\n" not in lines[1]["reason"]
    assert summary["scrapes"] == 0 and summary["errors"] >= 2 and "refused" in summary["last_error"]
    assert summary["engine"] is None and summary["ended"]


@pytest.mark.parametrize("mode, words", [("garbage", "not Prometheus text"), ("html", "HTML page"),
                                         ("500", "HTTP 500")])
def test_bad_pages_are_one_error_line(targets, scrapers, tmp_path, mode, words):
    tgt = targets(mode)
    out = tmp_path / "m.jsonl"
    sc = scrapers(tgt.url, out, interval_s=0.1)
    assert wait_for(lambda: tgt.hits >= 4)
    summary = sc.stop()
    lines = read(str(out))
    assert kinds(lines) == ["meta", "error", "end"]
    assert words in lines[1]["reason"]
    assert summary["errors"] >= 4 and summary["scrapes"] == 0 and words in summary["last_error"]


def test_garbage_after_a_good_start_is_noted(targets, scrapers, tmp_path):
    tgt = targets("vllm")
    out = tmp_path / "m.jsonl"
    sc = scrapers(tgt.url, out, interval_s=0.1)
    tgt.mode = "garbage"
    assert wait_for(lambda: "error" in kinds(read(str(out))))
    sc.stop()
    errs = [x for x in read(str(out)) if x["kind"] == "error"]
    assert len(errs) == 1 and "not Prometheus text" in errs[0]["reason"]


def test_target_disappears_and_comes_back(targets, scrapers, tmp_path):
    tgt = targets("vllm")
    out = tmp_path / "m.jsonl"
    sc = scrapers(tgt.url, out, interval_s=0.1)
    assert wait_for(lambda: kinds(read(str(out))).count("scrape") >= 2)
    port = tgt.port
    tgt.close()
    assert wait_for(lambda: "error" in kinds(read(str(out))))
    time.sleep(0.5)  # several refused attempts
    targets("vllm", port=port)  # the same address again
    assert wait_for(lambda: "recovered" in kinds(read(str(out))))
    summary = sc.stop()
    lines = read(str(out))
    ks = kinds(lines)
    # going away may first look like a connection closed mid-answer, then refused: one line each
    errs = [x["reason"] for x in lines if x["kind"] == "error"]
    assert 1 <= len(errs) <= 2 and "refused" in errs[-1] and ks.count("recovered") == 1
    assert ks.index("scrape") < ks.index("error") < ks.index("recovered") < len(ks) - 1 - ks[::-1].index("scrape")
    assert summary["ended"] and "refused" in summary["last_error"]


def test_404_is_noted_once_and_retried_slowly(targets, scrapers, tmp_path):
    tgt = targets("404")
    out = tmp_path / "m.jsonl"
    sc = scrapers(tgt.url, out, interval_s=0.1)
    time.sleep(1.5)  # 15 ticks at the normal pace; the slow pace allows none of them
    hits_before_stop = tgt.hits
    summary = sc.stop()
    lines = read(str(out))
    assert kinds(lines) == ["meta", "error", "end"]
    assert "404" in lines[1]["reason"] and "no metrics" in lines[1]["reason"]
    assert hits_before_stop == 1 and tgt.hits == 2  # the first try, then the final one at stop
    assert summary["errors"] == 2


def test_stop_returns_within_its_timeout_when_the_target_hangs(targets, tmp_path):
    tgt = targets("hang")
    out = tmp_path / "m.jsonl"
    sc = ScraperProcess(tgt.url, str(out), interval_s=0.2, timeout_s=20.0)
    sc.start()
    assert wait_for(lambda: tgt.hits >= 1, 15.0)  # a scrape is in flight, and will be for 20 s
    t0 = time.monotonic()
    summary = sc.stop(timeout_s=1.0)
    assert time.monotonic() - t0 < 4.0
    assert not pid_alive(sc.pid)
    assert summary["ended"] is False and summary["scrapes"] == 0
    assert sc.stop() is summary  # idempotent


def test_stop_right_after_start_is_not_an_error(targets, tmp_path):
    tgt = targets("vllm")
    sc = ScraperProcess(tgt.url, str(tmp_path / "m.jsonl"), interval_s=0.2)
    sc.start()
    summary = sc.stop(timeout_s=10.0)  # maybe before the child has even set up its handlers
    assert not pid_alive(sc.pid)
    assert summary["last_error"] is None and summary["errors"] == 0


def test_an_armed_child_scrapes_nothing_until_started_and_ends_quietly_if_never_started(targets, tmp_path):
    tgt = targets("vllm")
    sc = ScraperProcess(tgt.url, interval_s=0.2)
    sc.arm()  # before the test: spawned and imported, off Locust's -t clock
    time.sleep(1.0)
    assert pid_alive(sc.pid) and tgt.hits == 0
    out = tmp_path / "run" / "m.jsonl"
    sc.start(str(out))
    assert sc.wait_first(15.0) and kinds(read(str(out)))[:2] == ["meta", "scrape"]
    assert sc.stop(timeout_s=10.0)["scrapes"] >= 2  # the first and the final one
    idle = ScraperProcess(tgt.url, interval_s=0.2)
    idle.arm()
    hits = tgt.hits
    summary = idle.stop(timeout_s=10.0)
    assert not pid_alive(idle.pid) and tgt.hits == hits
    assert summary == {"scrapes": 0, "errors": 0, "last_error": None, "engine": None, "ended": False}


def test_a_spawn_failure_never_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    sc = ScraperProcess("http://127.0.0.1:1/metrics", str(tmp_path / "m.jsonl"))
    sc.start()
    assert sc.pid is None and "could not start" in sc.error
    assert sc.wait_first(0.2) is False
    assert sc.stop() == {"scrapes": 0, "errors": 0, "last_error": sc.error, "engine": None, "ended": False}


def test_the_child_dies_with_its_parent(targets, tmp_path):
    tgt = targets("vllm")
    out = tmp_path / "m.jsonl"
    code = ("import sys, time; from benchmark.server_metrics.scrape import ScraperProcess;"
            f"s = ScraperProcess({tgt.url!r}, {str(out)!r}, 0.2); s.start(); print(s.pid, flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert wait_for(lambda: "scrape" in kinds(read(str(out))), 15.0)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        assert wait_for(lambda: not pid_alive(child), 10.0)
        assert kinds(read(str(out)))[-1] == "end"  # it still ended cleanly
    finally:
        if parent.poll() is None:
            os.kill(parent.pid, signal.SIGKILL)
            parent.wait(10)


def test_by_hand_cli(targets, tmp_path):
    tgt = targets("vllm")
    out = tmp_path / "m.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "benchmark.server_metrics.scrape", "--url", tgt.url,
                          "--interval", "0.2", "--out", str(out)], cwd=ROOT)
    try:
        assert wait_for(lambda: "scrape" in kinds(read(str(out))), 15.0)
        p.send_signal(signal.SIGINT)
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    assert kinds(read(str(out)))[-1] == "end"
    bad = subprocess.run([sys.executable, "-m", "benchmark.server_metrics.scrape", "--url", tgt.url,
                          "--interval", "0", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "positive" in bad.stderr


# ---------------------------------------------------------------- engines


@pytest.mark.parametrize("engine", engines.ENGINES, ids=lambda e: e.name)
def test_detect_each_engine_from_its_own_page(engine):
    fams = parse(engine_page(engine).decode())
    assert engines.detect(fams) is engine
    for canonical, names in engine.metrics.items():
        assert engine.family(canonical, fams) == names[0]
        assert engines.KINDS[canonical] == fams[names[0]]["type"]
    assert engines.get(engine.name) is engine


def test_older_vllm_names_are_later_candidates():
    fams = parse(engine_page(engines.VLLM, candidate=1).decode())
    assert engines.detect(fams) is engines.VLLM
    assert engines.VLLM.family("kv_usage", fams) == "vllm:gpu_cache_usage_perc"
    assert engines.VLLM.family("itl", fams) == "vllm:time_per_output_token_seconds"
    assert engines.VLLM.family("prefix_hits", fams) == "vllm:gpu_prefix_cache_hits"
    both = set(fams) | {"vllm:kv_cache_usage_perc"}
    assert engines.VLLM.family("kv_usage", both) == "vllm:kv_cache_usage_perc"  # the newer name wins


def test_detect_unknown_mixed_and_counter_without_total():
    assert engines.detect({"process_open_fds", "python_info", "http_requests"}) is None
    assert engines.detect(set()) is None
    assert engines.get("nope") is None
    # MindIE's unprefixed names alone are not enough: its NPU gauge is the signature
    assert engines.detect({"num_requests_running", "prompt_tokens"}) is None
    # a gateway page carrying SGLang's families among its own
    assert engines.detect({"dynamo_frontend_requests", "sglang:num_running_reqs", "sglang:token_usage"}) is engines.SGLANG
    # TGI's Rust exporter writes counters without _total: the family is the same name
    fams = parse("# TYPE tgi_request_success counter\ntgi_request_success 5\n# TYPE tgi_queue_size gauge\ntgi_queue_size 2\n")
    assert engines.detect(fams) is engines.TGI
    assert engines.TGI.family("requests_finished", fams) == "tgi_request_success"
    # llama.cpp's names as its server writes them
    page = "".join(f"# HELP llamacpp:{n} h\n# TYPE llamacpp:{n} {t}\nllamacpp:{n} {v}\n" for n, t, v in (
        ("prompt_tokens_total", "counter", 33), ("tokens_predicted_total", "counter", 9),
        ("requests_processing", "gauge", 1), ("requests_deferred", "gauge", 0)))
    fams = parse(page)
    assert engines.detect(fams) is engines.LLAMACPP
    assert fams["llamacpp:prompt_tokens"]["samples"] == [["llamacpp:prompt_tokens_total", {}, 33.0]]


def test_every_mapped_name_has_a_known_kind_and_a_source_comment():
    src = open(engines.__file__).read()
    for e in engines.ENGINES:
        assert set(e.metrics) <= set(engines.KINDS)
        assert all(e.metrics.values())
        assert bool(e.prefix) != bool(e.signature)
        head = src[:src.index(f'name="{e.name}"')].rsplit("\n\n", 1)[-1]
        assert "Source:" in head, e.name


# ---------------------------------------------------------------- pure parts


def test_filtered_parse_equals_the_full_parse_for_kept_families():
    text = engine_page(engines.VLLM).decode()
    keep = engines.VLLM.families()
    full = parse(text)
    assert parse(text, keep) == {k: v for k, v in full.items() if k in keep}


def test_nan_and_duplicate_families(tmp_path):
    fams = parse("# TYPE g gauge\ng{a=\"1\"} NaN\n# TYPE g gauge\ng{a=\"2\"} +Inf\n")
    assert [s[1]["a"] for s in fams["g"]["samples"]] == ["1", "2"]  # merged
    import orjson
    assert json.loads(orjson.dumps(fams))["g"]["samples"][0][2] is None  # written as null


@pytest.mark.parametrize("host, option, url", [
    ("http://h:8000/v1", None, "http://h:8000/metrics"),
    ("http://h:8000/v1", "", "http://h:8000/metrics"),
    ("https://h.example/v1/", "  ", "https://h.example/metrics"),
    ("localhost:8080", None, "http://localhost:8080/metrics"),
    ("http://h:8000/v1", "off", None),
    ("http://h:8000/v1", "OFF", None),
    ("http://h:8000/v1", "https://h:1025/metrics", "https://h:1025/metrics"),
    ("http://h:8000/v1", "9091", "http://h:9091/metrics"),
    ("http://[::1]:8000/v1", ":9091", "http://[::1]:9091/metrics"),
    (None, None, None),
    ("", "", None),
])
def test_metrics_url(host, option, url):
    assert metrics_url(host, option) == url


@pytest.mark.parametrize("option", ["ftp://h/metrics", "nonsense", "99999", "http://"])
def test_metrics_url_rejects_nonsense(option):
    with pytest.raises(ValueError):
        metrics_url("http://h:8000/v1", option)


def test_read_tolerates_a_cut_last_line_and_summarize(tmp_path):
    p = tmp_path / "m.jsonl"
    good = [{"kind": "meta", "pid": 1}, {"kind": "scrape", "t": 1.0, "engine": "vllm", "full": True, "families": {}},
            {"kind": "error", "t": 2.0, "reason": "x refused"}, {"kind": "recovered", "t": 3.0}]
    p.write_bytes(b"".join(json.dumps(x).encode() + b"\n" for x in good) + b'{"kind": "scrape", "t": 4.0, "fam')
    assert read(str(p)) == good
    assert read(str(tmp_path / "missing.jsonl")) == []
    assert summarize(good) == {"scrapes": 1, "errors": 1, "last_error": "x refused", "engine": "vllm", "ended": False}
    # an earlier run in the same file does not count, nor a run of another pid
    assert summarize(good + [{"kind": "meta", "pid": 2}])["scrapes"] == 0
    assert summarize(good, pid=1)["scrapes"] == 1 and summarize(good, pid=3)["scrapes"] == 0
