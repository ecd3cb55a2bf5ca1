"""The simulator's GET /metrics: vLLM's families, computed from what it really did, and its lies."""

from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from benchmark import simulator
from benchmark.simulator import metrics

MODEL = "llm-sim"
LABELS = {"model_name": MODEL, "engine": "0"}


def scrape(url: str) -> dict:
    """family name -> family, parsed by prometheus_client's own parser."""
    resp = requests.get(url + "/metrics", timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(resp.text)}


def value(fams: dict, family: str, sample: str | None = None, **labels) -> float:
    """The one sample of `family` named `sample` (default: the family's own name) with these labels."""
    want = {**LABELS, **labels}
    found = [s.value for s in fams[family].samples
             if s.name == (sample or family) and all(s.labels.get(k) == v for k, v in want.items())]
    assert len(found) == 1, (family, sample, labels, fams[family].samples)
    return found[0]


def buckets(fams: dict, family: str) -> dict[float, float]:
    """le -> cumulative count of a histogram family."""
    return {float(s.labels["le"]): s.value for s in fams[family].samples if s.name == family + "_bucket"}


def stream(url: str, content: str = "one two three", headers: dict | None = None, **kw) -> dict:
    """One streamed chat request; returns its usage, finish reason and client-side TTFT/E2EL (s)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": True,
            "stream_options": {"include_usage": True}, **kw}
    t0 = time.perf_counter()
    out = {"usage": None, "finish": None, "ttft": None}
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, headers=headers, timeout=30) as r:
        for line in r.iter_lines(chunk_size=None):
            if not line.startswith(b"data:") or line.endswith(b"[DONE]"):
                continue
            obj = json.loads(line[5:])
            if obj.get("usage"):
                out["usage"] = obj["usage"]
            for c in obj["choices"]:
                if c["delta"].get("content") and out["ttft"] is None:
                    out["ttft"] = time.perf_counter() - t0
                out["finish"] = c["finish_reason"] or out["finish"]
    out["e2e"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------- counts, tokens and histograms


def test_counts_tokens_and_histograms_match_the_responses(start_sim):
    sim = start_sim("--ttft-ms", "150", "--itl-ms", "5", "--output-len", "12")
    outs = [stream(sim.url, content="a " * (i + 1), max_tokens=mt)
            for i, mt in enumerate([4, 8, 30, 30, 6])]  # 12 natural tokens: length, length, stop, stop, length
    plain = requests.post(sim.url + "/v1/chat/completions", timeout=10, json={
        "model": MODEL, "messages": [{"role": "user", "content": "x y"}], "max_tokens": 5}).json()
    # turned away before the engine: no finished request, no tokens
    assert requests.post(sim.url + "/v1/chat/completions", json={"model": MODEL}, timeout=10).status_code == 400
    assert requests.post(sim.url + "/v1/chat/completions", json={"model": MODEL, "messages": [
        {"role": "user", "content": "z"}]}, headers={"X-Sim-Fault": "http-500"}, timeout=10).status_code == 500

    usages = [o["usage"] for o in outs] + [plain["usage"]]
    finishes = [o["finish"] for o in outs] + [plain["choices"][0]["finish_reason"]]
    n = len(usages)
    fams = scrape(sim.url)
    assert fams["vllm:request_success"].type == "counter"
    for reason in metrics.FINISH_REASONS:
        assert value(fams, "vllm:request_success", "vllm:request_success_total",
                     finished_reason=reason) == finishes.count(reason)
    assert finishes.count("length") == 4 and finishes.count("stop") == 2
    prompt = sum(u["prompt_tokens"] for u in usages)
    generated = sum(u["completion_tokens"] for u in usages)
    assert value(fams, "vllm:prompt_tokens", "vllm:prompt_tokens_total") == prompt
    assert value(fams, "vllm:generation_tokens", "vllm:generation_tokens_total") == generated
    assert value(fams, "vllm:prefix_cache_queries", "vllm:prefix_cache_queries_total") == prompt
    assert value(fams, "vllm:prefix_cache_hits", "vllm:prefix_cache_hits_total") == 0
    for family in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                   "vllm:request_queue_time_seconds"):
        assert fams[family].type == "histogram"
        assert value(fams, family, family + "_count") == n, family
        assert buckets(fams, family)[float("inf")] == n
    assert value(fams, "vllm:inter_token_latency_seconds", "vllm:inter_token_latency_seconds_count") == \
        sum(u["completion_tokens"] - 1 for u in usages)
    # vLLM's own bucket bounds; TTFT 150 ms lies in (0.1, 0.25]: every observation there
    ttft = buckets(fams, "vllm:time_to_first_token_seconds")
    assert sorted(ttft)[:-1] == list(metrics.TTFT_BUCKETS)
    assert ttft[0.1] == 0 and ttft[0.25] == n
    assert sorted(buckets(fams, "vllm:inter_token_latency_seconds"))[:-1] == list(metrics.ITL_BUCKETS)
    assert sorted(buckets(fams, "vllm:e2e_request_latency_seconds"))[:-1] == list(
        metrics.REQUEST_LATENCY_BUCKETS)
    assert value(fams, "vllm:request_queue_time_seconds", "vllm:request_queue_time_seconds_sum") < 0.05 * n
    # idle again: nothing running, waiting or held in the KV cache
    assert value(fams, "vllm:num_requests_running") == 0 == value(fams, "vllm:num_requests_waiting")
    assert value(fams, "vllm:kv_cache_usage_perc") == 0


def test_cut_stream_is_an_abort_not_a_finished_request(start_sim):
    """reset-mid-stream: its prompt and the FEW tokens it wrote count, but (as in vLLM, where a request
    aborted by the frontend is never counted in request_success_total) no finished request."""
    sim = start_sim("--ttft-ms", "20", "--itl-ms", "5")
    with pytest.raises(requests.RequestException):
        stream(sim.url, content="a b c d", headers={"X-Sim-Fault": "reset-mid-stream"}, max_tokens=20,
               ignore_eos=True)
    fams = scrape(sim.url)
    assert all(value(fams, "vllm:request_success", "vllm:request_success_total", finished_reason=r) == 0
               for r in metrics.FINISH_REASONS)
    assert value(fams, "vllm:generation_tokens", "vllm:generation_tokens_total") == simulator.FEW
    assert value(fams, "vllm:prompt_tokens", "vllm:prompt_tokens_total") == 4
    assert value(fams, "vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_count") == 1
    assert value(fams, "vllm:e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds_count") == 0
    assert value(fams, "vllm:num_requests_running") == 0


def test_running_and_waiting_follow_max_concurrency(start_sim):
    """5 long streams on 2 slots: a mid-run scrape sees 2 running, 3 waiting, KV in use and generation
    tokens counted as written; the queue time shows the wait."""
    sim = start_sim("--ttft-ms", "50", "--itl-ms", "40", "--max-concurrency", "2", "--kv-capacity-tokens", "200")
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(stream, sim.url, max_tokens=20, ignore_eos=True) for _ in range(5)]
        seen, kv, partial = set(), [], []
        deadline = time.monotonic() + 20
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            fams = scrape(sim.url)
            running, waiting = value(fams, "vllm:num_requests_running"), value(fams, "vllm:num_requests_waiting")
            seen.add((running, waiting))
            kv.append(value(fams, "vllm:kv_cache_usage_perc"))
            gen = value(fams, "vllm:generation_tokens", "vllm:generation_tokens_total")
            if 0 < gen < 100 and gen % 20:
                partial.append(gen)  # a stream half written
            time.sleep(0.05)
        outs = [f.result() for f in futures]
    assert (2, 3) in seen, seen
    assert all(r <= 2 for r, _ in seen) and all(r + w <= 5 for r, w in seen), seen
    assert max(kv) > 0 and all(0 <= k <= 1 for k in kv)
    assert partial, "no scrape saw a stream half written"
    fams = scrape(sim.url)
    assert value(fams, "vllm:num_requests_running") == 0 == value(fams, "vllm:num_requests_waiting")
    assert value(fams, "vllm:kv_cache_usage_perc") == 0
    assert value(fams, "vllm:generation_tokens", "vllm:generation_tokens_total") == 100
    assert value(fams, "vllm:request_success", "vllm:request_success_total", finished_reason="length") == 5
    # three waited for a slot (~0.8 s each, at least one of them twice that); the first two did not
    queue = buckets(fams, "vllm:request_queue_time_seconds")
    assert queue[0.3] >= 2 and queue[float("inf")] == 5
    assert value(fams, "vllm:request_queue_time_seconds", "vllm:request_queue_time_seconds_sum") > 1.5
    # the server's TTFT includes the queue, as the client's does
    assert max(o["ttft"] for o in outs) > 0.8


# ---------------------------------------------------------------- lies and a hidden delay


def test_metrics_lie_scales_what_is_reported(start_sim):
    sim = start_sim("--ttft-ms", "150", "--itl-ms", "5", "--metrics-lie",
                    "requests=2,prompt_tokens=0.5,generation_tokens=3,ttft=0.1,e2e=10")
    outs = [stream(sim.url, content="a b c", max_tokens=10, ignore_eos=True) for _ in range(4)]
    fams = scrape(sim.url)
    assert value(fams, "vllm:request_success", "vllm:request_success_total", finished_reason="length") == 8
    assert value(fams, "vllm:prompt_tokens", "vllm:prompt_tokens_total") == round(0.5 * 12)
    assert value(fams, "vllm:generation_tokens", "vllm:generation_tokens_total") == 3 * 40
    # times are scaled before they are bucketed: a true ~150 ms TTFT lands in (0.01, 0.02]
    ttft = buckets(fams, "vllm:time_to_first_token_seconds")
    assert ttft[0.01] == 0 and ttft[0.04] == 4, ttft
    # a true ~0.2 s e2e (under 0.5 s) reported as ~2 s
    e2e = buckets(fams, "vllm:e2e_request_latency_seconds")
    assert e2e[0.5] == 0 and e2e[float("inf")] == 4, e2e
    client_e2e = statistics.mean(o["e2e"] for o in outs)
    server_e2e = value(fams, "vllm:e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds_sum") / 4
    assert server_e2e > 5 * client_e2e


def test_hidden_delay_is_seen_by_the_client_only(start_sim):
    sim = start_sim("--ttft-ms", "50", "--itl-ms", "5", "--hidden-delay-ms", "300")
    outs = [stream(sim.url, max_tokens=5, ignore_eos=True) for _ in range(4)]
    fams = scrape(sim.url)
    ttft = buckets(fams, "vllm:time_to_first_token_seconds")
    assert ttft[0.25] == 4, ttft  # the server saw ~50 ms, not ~350 ms
    server_ttft = value(fams, "vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_sum") / 4
    server_e2e = value(fams, "vllm:e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds_sum") / 4
    client_ttft = statistics.median(o["ttft"] for o in outs)
    client_e2e = statistics.median(o["e2e"] for o in outs)
    assert client_ttft >= 0.35 and 0.25 < client_ttft - server_ttft < 1.0, (client_ttft, server_ttft)
    assert 0.25 < client_e2e - server_e2e < 1.0, (client_e2e, server_e2e)


def test_pad_kb_makes_the_page_larger_and_still_parseable(start_sim):
    plain = start_sim()
    padded = start_sim("--metrics-pad-kb", "200")
    small = requests.get(plain.url + "/metrics", timeout=10).text
    large = requests.get(padded.url + "/metrics", timeout=10).text
    assert 200 * 1024 <= len(large) - len(small) < 210 * 1024, len(large) - len(small)
    fams = {f.name: f for f in text_string_to_metric_families(large)}
    assert set(scrape(plain.url)) < set(fams)  # every real family is still there
    assert value(fams, "vllm:num_requests_running") == 0


# ---------------------------------------------------------------- several processes on one port


def test_workers_two_serve_the_whole_servers_figures(start_sim):
    """--workers 2: whichever process answers the scrape reports both processes' requests."""
    sim = start_sim("--workers", "2", "--ttft-ms", "10", "--itl-ms", "2")
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: stream(sim.url, max_tokens=4, ignore_eos=True), range(32)))
    generated = sum(o["usage"]["completion_tokens"] for o in outs)
    for _ in range(8):  # a new connection each time: the scrapes land on either process
        fams = scrape(sim.url)
        assert value(fams, "vllm:request_success", "vllm:request_success_total", finished_reason="length") == 32
        assert value(fams, "vllm:generation_tokens", "vllm:generation_tokens_total") == generated
        assert value(fams, "vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_count") == 32


def test_shared_block_sums_every_worker():
    """In-process: the render of any worker's Stats sums both slots (so it fails if it showed its own)."""
    shared = metrics.Shared(2)
    a = metrics.Stats(MODEL, 1000, shared=shared, worker=0)
    b = metrics.Stats(MODEL, 1000, shared=shared, worker=1)
    for stats, n in ((a, 3), (b, 5)):
        for _ in range(n):
            r = stats.request(0.0, 10, "stop")
            r.schedule(0.0)
            r.wrote(2, 0.1)
            r.done(0.2)
    held = b.request(0.0, 100, "stop")
    held.schedule(0.0)  # one still running on worker 1
    for stats in (a, b):
        fams = {f.name: f for f in text_string_to_metric_families(stats.render().decode())}
        assert value(fams, "vllm:request_success", "vllm:request_success_total", finished_reason="stop") == 8
        assert value(fams, "vllm:generation_tokens", "vllm:generation_tokens_total") == 16
        assert value(fams, "vllm:num_requests_running") == 1
        assert value(fams, "vllm:kv_cache_usage_perc") == pytest.approx(0.1)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("args,option", [
    (["--metrics-lie", "bogus=2"], "--metrics-lie"), (["--metrics-lie", "ttft=-1"], "--metrics-lie"),
    (["--metrics-lie", "ttft=abc"], "--metrics-lie"), (["--metrics-lie", "ttft"], "--metrics-lie"),
    (["--metrics-lie", "ttft=nan"], "--metrics-lie"), (["--hidden-delay-ms", "-5"], "--hidden-delay-ms"),
    (["--metrics-pad-kb", "-1"], "--metrics-pad-kb"), (["--kv-capacity-tokens", "0"], "--kv-capacity-tokens"),
])
def test_bad_metrics_options_exit_2_with_one_line(args, option, capsys):
    with pytest.raises(SystemExit) as exc:
        simulator.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and option in err


def test_parse_lie():
    assert metrics.parse_lie("ttft=0.5, requests=2") == {"ttft": 0.5, "requests": 2.0}
    with pytest.raises(ValueError, match="FIELD"):
        metrics.parse_lie("itl=2")


def test_scrape_while_streaming_does_not_break_streams(start_sim):
    """Scrapes between token writes: every stream still ends complete."""
    sim = start_sim("--ttft-ms", "10", "--itl-ms", "5", "--metrics-pad-kb", "100")
    stop = threading.Event()

    def scraper():
        while not stop.is_set():
            scrape(sim.url)

    t = threading.Thread(target=scraper)
    t.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda _: stream(sim.url, max_tokens=20, ignore_eos=True), range(8)))
    finally:
        stop.set()
        t.join()
    assert all(o["usage"]["completion_tokens"] == 20 and o["finish"] == "length" for o in outs)
