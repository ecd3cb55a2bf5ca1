"""The built-in simulator, run as a real child process and read over loopback."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from benchmark import simulator
from benchmark.simulator import start
from conftest import RunQueueWait

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say four words please"}]
WORDS = 7  # whitespace words over all MESSAGES contents
NO_CACHE_HIT = {"prompt_tokens_details": {"cached_tokens": 0}}  # fewer words than a cache block (16)
FILLER = "the quick brown fox jumps over the lazy dog the quick brown".split()


@pytest.fixture(scope="module")
def sim():
    proc = start("--ttft-ms", "20", "--itl-ms", "2", "--output-len", "12")
    try:
        yield proc
    finally:
        proc.stop()


def body(**kw) -> dict:
    return {"model": "llm-sim", "messages": MESSAGES, "stream": True, **kw}


def post(url: str, payload: dict, path: str = "/v1/chat/completions", headers: dict | None = None,
         stream: bool = True) -> requests.Response:
    return requests.post(url + path, json=payload, headers=headers, stream=stream, timeout=10)


def read_events(resp: requests.Response, t0: float) -> list[tuple[float, str]]:
    """(seconds since t0 at receipt, data payload) for every `data:` line, read as bytes arrive."""
    events = []
    for line in resp.iter_lines(chunk_size=None):
        if line.startswith(b"data:"):
            events.append((time.perf_counter() - t0, line[5:].strip().decode()))
    return events


def kind(data: str) -> str:
    if data == "[DONE]":
        return "done"
    obj = json.loads(data)
    if not obj["choices"]:
        return "usage"
    choice = obj["choices"][0]
    if choice["finish_reason"]:
        return "finish"
    if "role" in choice.get("delta", {}):
        return "role"
    return "content"


def chat(url: str, headers: dict | None = None, path: str = "/v1/chat/completions", **kw):
    """Stream one request; returns (response, [(t, data)], [kind], [parsed JSON or None])."""
    t0 = time.perf_counter()
    resp = post(url, body(**kw) if path.endswith("chat/completions") else kw, path=path, headers=headers)
    events = read_events(resp, t0)
    kinds = [kind(d) for _, d in events]
    objs = [None if d == "[DONE]" else json.loads(d) for _, d in events]
    return resp, events, kinds, objs


def text_of(objs: list) -> str:
    out = []
    for o in objs:
        if o and o["choices"]:
            c = o["choices"][0]
            out.append(c["delta"].get("content") or "" if "delta" in c else c["text"])
    return "".join(out)


# ---------------------------------------------------------------- endpoints and chunk sequence


def test_models_and_health(sim):
    assert requests.get(sim.url + "/health", timeout=5).status_code == 200
    models = requests.get(sim.url + "/v1/models", timeout=5).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["llm-sim"]


def test_stream_sequence_with_usage(sim):
    resp, events, kinds, objs = chat(sim.url, max_tokens=30, ignore_eos=True,
                                     stream_options={"include_usage": True})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert kinds == ["role"] + ["content"] * 30 + ["finish", "usage", "done"]
    assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert objs[1]["object"] == "chat.completion.chunk" and objs[1]["id"].startswith("chatcmpl-")
    assert objs[-3]["choices"][0]["finish_reason"] == "length"
    assert objs[-2]["usage"] == {"prompt_tokens": WORDS, "completion_tokens": 30, "total_tokens": WORDS + 30, **NO_CACHE_HIT}
    text = text_of(objs)
    assert text.split()[:len(FILLER)] == FILLER and len(text.split()) == 30


def test_no_usage_without_stream_options(sim):
    _, _, kinds, _ = chat(sim.url, max_tokens=5, ignore_eos=True)
    assert kinds == ["role"] + ["content"] * 5 + ["finish", "done"]


def test_natural_length_and_max_tokens(sim):
    _, _, kinds, objs = chat(sim.url, max_tokens=100)  # --output-len 12 wins without ignore_eos
    assert kinds.count("content") == 12 and objs[-2]["choices"][0]["finish_reason"] == "stop"
    _, _, kinds, objs = chat(sim.url, max_tokens=4)
    assert kinds.count("content") == 4 and objs[-2]["choices"][0]["finish_reason"] == "length"
    _, _, kinds, _ = chat(sim.url, ignore_eos=True)  # no max_tokens: --output-len
    assert kinds.count("content") == 12


def test_non_stream_chat(sim):
    t0 = time.perf_counter()
    out = post(sim.url, body(stream=False, max_tokens=10, ignore_eos=True), stream=False).json()
    elapsed = time.perf_counter() - t0
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": " ".join(FILLER[:10])}
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": WORDS, "completion_tokens": 10, "total_tokens": WORDS + 10, **NO_CACHE_HIT}
    assert elapsed >= 0.020 + 9 * 0.002 - 0.002  # sent at TTFT + (n-1)*ITL


def test_completions_stream_and_non_stream(sim):
    prompt = {"model": "llm-sim", "prompt": "one two three", "max_tokens": 6, "ignore_eos": True}
    out = post(sim.url, prompt, path="/v1/completions", stream=False).json()
    assert out["object"] == "text_completion"
    assert out["choices"][0]["text"] == " ".join(FILLER[:6])
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9, **NO_CACHE_HIT}
    _, _, kinds, objs = chat(sim.url, path="/v1/completions", stream=True,
                             stream_options={"include_usage": True}, **prompt)
    assert kinds == ["content"] * 6 + ["finish", "usage", "done"]
    assert objs[0]["object"] == "text_completion"
    assert text_of(objs) == " ".join(FILLER[:6])


def test_bad_request_is_400(sim):
    assert post(sim.url, {"model": "m", "stream": True}).status_code == 400
    assert post(sim.url, body(max_tokens=0)).status_code == 400
    assert post(sim.url, body(), headers={"X-Sim-Fault": "no-such-fault"}).status_code == 400


def test_answers_stream_exact_completion(tmp_path):
    completion = "Natalia sold 48/2 = 24 clips in May.\n  She sold 48+24 = 72 clips.\nThe answer is 72\n"
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question": "How many clips did Natalia sell?", "completion": completion})
                       + "\n" + json.dumps({"question": "Other?", "completion": "no"}) + "\n")
    with start("--ttft-ms", "5", "--itl-ms", "1", "--answers", str(answers)) as proc:
        msgs = [{"role": "user", "content": "Question: Other?"}, {"role": "assistant", "content": "no"},
                {"role": "user", "content": "Question: How many clips did Natalia sell?\nAnswer:"}]
        _, _, kinds, objs = chat(proc.url, messages=msgs, max_tokens=512,
                                 stream_options={"include_usage": True})
        assert text_of(objs) == completion
        assert kinds.count("content") == len(completion.split())
        assert objs[-3]["choices"][0]["finish_reason"] == "stop"
        assert objs[-2]["usage"]["completion_tokens"] == len(completion.split())
        # cut by max_tokens, and filler for a question the file does not know
        _, _, _, objs = chat(proc.url, messages=msgs, max_tokens=3)
        assert text_of(objs) == "Natalia sold 48/2"
        _, _, _, objs = chat(proc.url, messages=[{"role": "user", "content": "unknown"}], max_tokens=3)
        assert text_of(objs) == "the quick brown"


# ---------------------------------------------------------------- timing


def test_timing_ttft_and_itl():
    with start("--ttft-ms", "100", "--itl-ms", "20") as proc, RunQueueWait(proc.pid, os.getpid()) as rq:
        ttfts, lasts, gaps = [], [], []
        for _ in range(5):
            _, events, kinds, _ = chat(proc.url, max_tokens=15, ignore_eos=True)
            content = [t * 1000 for (t, _), k in zip(events, kinds) if k == "content"]
            role = next(t * 1000 for (t, _), k in zip(events, kinds) if k == "role")
            assert len(content) == 15 and content[0] - role < 2 + rq.ms  # role and first token share a deadline
            ttfts.append(content[0])
            lasts.append(content[-1])
            gaps += [b - a for a, b in zip(content, content[1:])]
    # Never early; late by at most 5 ms plus a few run-queue waits of the server and this client,
    # measured while the requests ran (~0 on a quiet machine), capped so that 2x off always fails.
    # Medians over 5 requests: robust to a busy machine delaying one read.
    late = min(5 + 4 * rq.ms, 40)
    assert 99.5 <= statistics.median(ttfts) <= 100 + late, (ttfts, rq.ms)
    assert abs(statistics.median(gaps) - 20) < min(1 + rq.ms, 5), (gaps, rq.ms)
    assert 380 <= statistics.median(lasts) <= 380 + late, (lasts, rq.ms)  # absolute deadlines: no drift


def test_trace_is_server_side_truth_keyed_by_request_id(tmp_path):
    """--trace writes, per answer, the X-Request-Id the client sent and when each token really left."""
    from benchmark.client import ChatClient
    from benchmark.records import TOKEN_KINDS
    trace = tmp_path / "trace.jsonl"
    with start("--ttft-ms", "50", "--itl-ms", "10", "--trace", str(trace)) as proc, RunQueueWait(proc.pid) as rq:
        client = ChatClient(proc.url)
        payload = json.dumps(body(max_tokens=6, ignore_eos=True)).encode()
        outs = [client.send(payload) for _ in range(2)]
        deadline = time.monotonic() + 5
        while len(trace.read_text().splitlines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the line is written once the answer has ended
    lines = {d["request_id"]: d["tokens"] for d in map(json.loads, trace.read_text().splitlines())}
    assert set(lines) == {o["request_id"] for o in outs} and len(lines) == 2  # distinct ids, both traced
    for out in outs:
        tokens = lines[out["request_id"]]
        assert len(tokens) == 6
        assert 0.050 <= tokens[0] < 0.050 + min(15 + 4 * rq.ms, 40) / 1000, (tokens, rq.ms)
        assert all(t >= 0.050 + 0.010 * i - 1e-4 for i, t in enumerate(tokens)), tokens  # never early
        client_tokens = [e[0] for e in out["events"] if e[1] in TOKEN_KINDS]
        assert client_tokens[0] >= tokens[0]  # the client sent before arrival and read after the write


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize("fault,status", [("http-400", 400), ("http-401", 401), ("http-404", 404),
                                          ("http-422", 422), ("http-429", 429), ("http-429-noretry", 429),
                                          ("http-500", 500), ("http-503", 503)])
def test_http_faults(sim, fault, status):
    resp = post(sim.url, body(), headers={"X-Sim-Fault": fault})
    assert resp.status_code == status
    assert resp.headers.get("Retry-After") == ("1" if fault == "http-429" else None)
    payload = resp.json()
    if fault == "http-422":
        assert payload["code"] == 422 and payload["object"] == "error"
        assert "extra fields not permitted" in payload["message"] and "ignore_eos" in payload["message"]
    if fault == "http-500":
        assert payload == {"error": {"message": "Injected Failure"}}


def test_reset_before_headers(sim):
    with pytest.raises(requests.ConnectionError):
        post(sim.url, body(), headers={"X-Sim-Fault": "reset-before-headers"})


def test_reset_mid_stream(sim):
    t0 = time.perf_counter()
    resp = post(sim.url, body(max_tokens=20, ignore_eos=True), headers={"X-Sim-Fault": "reset-mid-stream"})
    events = []
    with pytest.raises(requests.RequestException):
        for line in resp.iter_lines(chunk_size=None):
            if line.startswith(b"data:"):
                events.append((time.perf_counter() - t0, line[5:].strip().decode()))
    assert [kind(d) for _, d in events] == ["role"] + ["content"] * simulator.FEW


@pytest.mark.parametrize("fault,expected", [
    ("no-done", ["role"] + ["content"] * 5 + ["finish", "usage"]),
    ("no-finish", ["role"] + ["content"] * 5 + ["usage", "done"]),
    ("empty-completion", ["role", "finish", "usage", "done"]),
    ("no-usage", ["role"] + ["content"] * 5 + ["finish", "done"]),
    ("usage-on-finish", ["role"] + ["content"] * 5 + ["finish", "done"]),
    ("huge:40", ["role"] + ["content"] * 40 + ["finish", "usage", "done"]),
])
def test_sequence_faults(sim, fault, expected):
    _, _, kinds, objs = chat(sim.url, headers={"X-Sim-Fault": fault}, max_tokens=5, ignore_eos=True,
                             stream_options={"include_usage": True})
    assert kinds == expected
    if fault == "usage-on-finish":
        assert objs[-2]["usage"]["completion_tokens"] == 5
    if fault == "empty-completion":
        assert text_of(objs) == "" and objs[2]["usage"]["completion_tokens"] == 0


def test_malformed_json(sim):
    resp = post(sim.url, body(max_tokens=6, ignore_eos=True), headers={"X-Sim-Fault": "malformed-json"})
    events = read_events(resp, time.perf_counter())
    bad = []
    for i, (_, data) in enumerate(events[:-1]):  # the last is [DONE]
        try:
            json.loads(data)
        except ValueError:
            bad.append(i)
    assert len(bad) == 1 and 1 < bad[0] < len(events) - 2  # somewhere in the middle
    assert events[-1][1] == "[DONE]"


def test_non_sse(sim):
    resp = post(sim.url, body(max_tokens=3, ignore_eos=True), headers={"X-Sim-Fault": "non-sse"})
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/json")
    assert resp.json()["choices"][0]["message"]["content"] == "the quick brown"


def test_nospace_crlf(sim):
    resp = post(sim.url, body(max_tokens=3, ignore_eos=True), headers={"X-Sim-Fault": "nospace-crlf"},
                stream=False)
    raw = resp.content
    assert b"data: " not in raw and raw.count(b"data:{") == 5 and raw.endswith(b"data:[DONE]\r\n\r\n")
    assert b"}\r\n\r\n: keep-alive\r\n\r\ndata:" in raw
    assert raw.replace(b"\r\n", b"").replace(b": keep-alive", b"").count(b"\n") == 0


def test_slow_first_byte(sim):
    t0 = time.perf_counter()
    resp = post(sim.url, body(max_tokens=2), headers={"X-Sim-Fault": "slow-first-byte:0.3"})
    assert time.perf_counter() - t0 >= 0.3  # headers held back
    assert [kind(d) for _, d in read_events(resp, t0)][-1] == "done"


def test_stall(sim):
    _, events, kinds, _ = chat(sim.url, headers={"X-Sim-Fault": "stall:0.3"}, max_tokens=8, ignore_eos=True)
    content = [t for (t, _), k in zip(events, kinds) if k == "content"]
    gaps = [b - a for a, b in zip(content, content[1:])]
    assert len(content) == 8
    assert gaps.index(max(gaps)) == simulator.FEW - 1 and 0.29 <= max(gaps) < 0.4


def test_fault_every_nth_request():
    with start("--ttft-ms", "0", "--itl-ms", "0", "--fault", "http-500", "--fault-every", "2") as proc:
        codes = [post(proc.url, body(max_tokens=2), stream=False).status_code for _ in range(4)]
        assert codes == [200, 500, 200, 500]
        # the header overrides the command line, "none" included
        assert post(proc.url, body(max_tokens=2), headers={"X-Sim-Fault": "none"}).status_code == 200
        assert post(proc.url, body(max_tokens=2), headers={"X-Sim-Fault": "http-404"}).status_code == 404


# ---------------------------------------------------------------- command line and process helper


@pytest.mark.parametrize("args,option", [
    (["--ttft-ms", "-1"], "--ttft-ms"), (["--itl-ms", "abc"], "--itl-ms"), (["--port", "70000"], "--port"),
    (["--output-len", "0"], "--output-len"), (["--fault", "bogus"], "--fault"),
    (["--fault", "stall"], "--fault"),
    (["--fault", "no-done:3"], "--fault"), (["--fault-every", "0"], "--fault-every"),
    (["--answers", "/nonexistent.jsonl"], "--answers"),
])
def test_bad_option_in_process(args, option, capsys):
    with pytest.raises(SystemExit) as exc:
        simulator.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and option in err


def test_bad_option_cli():
    out = subprocess.run([sys.executable, "-m", "benchmark.simulator", "--itl-ms", "-5"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "--itl-ms" in out.stderr and "Traceback" not in out.stderr


def test_start_failure_raises_with_stderr():
    with pytest.raises(RuntimeError, match="--ttft-ms"):
        start("--ttft-ms", "nope")


def test_startup_line_and_clean_sigterm_mid_stream():
    proc = start("--ttft-ms", "10", "--itl-ms", "50", "--model", "m1")
    try:
        port = int(proc.url.rsplit(":", 1)[1])
        assert proc.banner == (f"LLM simulator listening on http://127.0.0.1:{port} "
                               "(model m1, TTFT 10 ms, ITL 50 ms)")
        assert proc.pid > 0
        resp = post(proc.url, body(max_tokens=100, ignore_eos=True))
        next(resp.iter_lines(chunk_size=None))  # a stream is in flight
    finally:
        code = proc.stop()
    assert code == 0 and "Traceback" not in proc.stderr()
    assert proc.stop() == 0  # idempotent


def test_workers_share_the_port_and_stop_together():
    """--workers N: N processes answer on one port (for multi-core clients); stopping the first
    stops them all."""
    import psutil
    from concurrent.futures import ThreadPoolExecutor
    proc = start("--workers", "2", "--ttft-ms", "20", "--itl-ms", "5")
    try:
        children = psutil.Process(proc.pid).children()
        assert len(children) == 1
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda _: chat(proc.url, max_tokens=4, ignore_eos=True), range(16)))
        assert all(kinds.count("content") == 4 for _, _, kinds, _ in outs)
    finally:
        proc.stop()
    psutil.wait_procs(children, timeout=5)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
