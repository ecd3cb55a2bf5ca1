"""--backend: each API dialect's request body, its events read back, timing against the simulator's
--trace truth, the same verdict for each fault on every dialect, and one headless run per dialect."""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pytest

from benchmark import backends, datasets, simulator
from benchmark.client import ChatClient, parse_stream
from benchmark.datasets import Prompt
from benchmark.options import ConfigError, RunConfig, add_arguments
from benchmark.records import TOKEN_KINDS, read_records
from benchmark.run import build_body
from conftest import SHARED, RunQueueWait, run_dirs, run_locust

GSM8K = os.path.join(SHARED, "datasets", "gsm8k")
PROMPT = Prompt(0, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}])
TEXT_BACKENDS = [n for n in backends.NAMES if not backends.get(n).CHAT]


def body_of(name: str, **cfg) -> dict:
    cfg.setdefault("max_out_len", 16)
    return json.loads(build_body(PROMPT, RunConfig(backend=name, **cfg), "m1"))


# ------------------------------------------------------------------ request bodies, as each dialect documents them


def test_openai_chat_body_is_the_chat_body():
    assert body_of("openai-chat", ignore_eos=True, sampling={"temperature": 0.5, "seed": 1}) == {
        "model": "m1", "messages": PROMPT.messages, "max_tokens": 16, "stream": True,
        "stream_options": {"include_usage": True}, "ignore_eos": True, "temperature": 0.5, "seed": 1}
    assert "ignore_eos" not in body_of("openai-chat")


def test_openai_completions_body_sends_the_prompt_as_text():
    assert body_of("openai", ignore_eos=True, sampling={"top_p": 0.9}) == {
        "model": "m1", "prompt": "Be brief.\nHello there", "max_tokens": 16, "stream": True,
        "stream_options": {"include_usage": True}, "ignore_eos": True, "top_p": 0.9}


def test_tgi_body_inputs_and_parameters():
    assert body_of("tgi", sampling={"temperature": 0.7, "top_k": 5, "seed": 3}) == {
        "inputs": "Be brief.\nHello there", "seed": 3,
        "parameters": {"max_new_tokens": 16, "details": True, "temperature": 0.7, "top_k": 5}}
    # temperature 0 is greedy (TGI refuses 0); top_k -1 (off) is left out; extra parameters merge in
    assert body_of("tgi", sampling={"temperature": 0, "top_k": -1, "parameters": {"seed": 7}})["parameters"] == {
        "max_new_tokens": 16, "details": True, "do_sample": False, "seed": 7}


def test_mindie_body_inputs_stream_and_parameters():
    assert body_of("mindie", sampling={"top_p": 0.95}) == {
        "inputs": "Be brief.\nHello there", "stream": True,
        "parameters": {"max_new_tokens": 16, "details": True, "top_p": 0.95}}


def test_triton_body_top_level_inputs_and_min_tokens_for_ignore_eos():
    assert body_of("triton", model="ensemble", ignore_eos=True, sampling={"temperature": 0.0}) == {
        "text_input": "Be brief.\nHello there", "max_tokens": 16, "stream": True, "min_tokens": 16,
        "temperature": 0.0}
    assert backends.get("triton").path("my model") == "/v2/models/my%20model/generate_stream"


def test_per_prompt_max_tokens_wins_in_every_dialect():
    prompt = Prompt(0, [{"role": "user", "content": "x"}], max_tokens=7)
    for name in backends.NAMES:
        body = json.loads(build_body(prompt, RunConfig(backend=name, max_out_len=99, model="m"), "m"))
        sent = body.get("max_tokens") or body.get("parameters", {}).get("max_new_tokens")
        assert sent == 7, (name, body)


def test_gsm8k_4shot_text_form_joins_the_turns_as_aisbench_does():
    """AISBench's completions-style APIs render the 4-shot template with LMTemplateParser and no meta
    template: every turn's prompt, joined by a line break. The reference body's 9 messages -> one text."""
    ref = json.load(open(os.path.join(SHARED, "reference", "aisbench", "gsm8k_4shot_chat_request_body_example.json")))
    (prompt,) = datasets.load("gsm8k", GSM8K, 1)
    assert prompt.messages == ref["messages"]
    text = backends.prompt_text(prompt.messages)
    assert text == "\n".join(m["content"] for m in ref["messages"])
    assert text.count("Question: ") == 5 and text.endswith("Let's think step by step\nAnswer:")
    assert "The answer is 4\n\nQuestion: Mark's basketball team" in text  # an answer's own "\n", then the join
    body = json.loads(build_body(prompt, RunConfig(backend="openai", dataset="gsm8k", max_out_len=512), "m"))
    assert body["prompt"] == text and "messages" not in body


def options(**values) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    o = parser.parse_args([])
    o.num_users = o.host = o.run_time = None
    for k, v in values.items():
        setattr(o, k, v)
    return o


@pytest.mark.parametrize("values, needle", [
    ({"backend": "vllm"}, "--backend: expected one of openai-chat, openai, tgi, triton, mindie"),
    ({"backend": "tgi", "ignore_eos": True}, "--ignore-eos: --backend tgi has no request field"),
    ({"backend": "mindie", "ignore_eos": True}, "--ignore-eos: --backend mindie has no request field"),
    ({"backend": "triton"}, "--backend triton needs --model"),
    ({"backend": "tgi", "no_stream": True}, "--no-stream: --backend tgi is measured streaming only"),
])
def test_options_a_backend_cannot_honour_are_one_line(values, needle):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_options(options(**values))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_backend_is_recorded_in_the_config():
    cfg = RunConfig.from_options(options(backend="triton", model="ensemble", ignore_eos=True))
    assert cfg.public()["backend"] == "triton"
    assert RunConfig.from_options(options()).public()["backend"] == "openai-chat"


# ------------------------------------------------------------------ events as the servers document them


def parse(name: str, *events: dict, ended: bool = True) -> dict:
    lines = [(1.0 + i * 0.01, b"data: " + json.dumps(e).encode() + b"\n\n") for i, e in enumerate(events)]
    return parse_stream(lines, 1.0, {}, ended=ended, backend=backends.get(name))


def test_tgi_stream_length_on_the_last_token_and_eos_as_a_special_token():
    tok = lambda i, t, special=False: {"index": i, "token": {"id": i, "text": t, "logprob": -0.1, "special": special},  # noqa: E731
                                       "generated_text": None, "details": None}
    last = {**tok(1, " world"), "generated_text": "Hello world",
            "details": {"finish_reason": "length", "generated_tokens": 2, "seed": None, "input_length": 9}}
    out = parse("tgi", tok(0, "Hello"), last)
    assert out["success"] and out["completion"] == "Hello world" and out["finish_reason"] == "length"
    assert out["usage"] == {"completion_tokens": 2, "prompt_tokens": 9}
    assert [e[1] for e in out["events"]] == ["content", "content"]
    eos = {**tok(2, "</s>", special=True), "generated_text": "Hello world",
           "details": {"finish_reason": "eos_token", "generated_tokens": 3, "seed": None}}
    out = parse("tgi", tok(0, "Hello"), tok(1, " world"), eos)
    assert out["completion"] == "Hello world" and out["finish_reason"] == "eos_token"  # "</s>" is not text
    assert [e[1] for e in out["events"]] == ["content", "content", "other"]
    out = parse("tgi", tok(0, "Hello"), tok(1, " world"))  # no final event
    assert not out["success"] and out["error"].startswith("truncated")


def test_mindie_stream_as_its_docs_show_it():
    first = {"prefill_time": 45.54, "decode_time": None, "token": {"id": 626, "text": "am"}}
    last = {"prefill_time": None, "decode_time": 28.3, "token": {"id": 263, "text": " a"},
            "generated_text": "am a", "details": {"finish_reason": "length", "generated_tokens": 2, "seed": 846930886}}
    out = parse("mindie", first, last)
    assert out["success"] and out["completion"] == "am a" and out["usage"] == {"completion_tokens": 2}


def test_triton_success_is_a_body_that_ended():
    ev = lambda t: {"model_name": "ensemble", "model_version": "1", "sequence_end": False, "sequence_id": 0,  # noqa: E731
                    "sequence_start": False, "text_output": t}
    out = parse("triton", ev("Machine"), ev(" learning"))
    assert out["success"] and out["completion"] == "Machine learning" and out["finish_reason"] is None
    assert out["usage"] is None
    out = parse("triton", ev("Machine"), ended=False)  # the body never ended (e.g. cancelled mid-answer)
    assert not out["success"] and "did not end" in out["error"]
    out = parse("triton", ev("Machine"), {"error": "in ensemble 'ensemble', out of memory"})
    assert not out["success"] and "out of memory" in out["error"]


# ------------------------------------------------------------------ against the simulator


def request(name: str, max_tokens: int = 4, ignore_eos: bool = True) -> bytes:
    dialect = backends.get(name)
    cfg = RunConfig(backend=name, max_out_len=max_tokens, model="llm-sim",
                    ignore_eos=ignore_eos and dialect.IGNORE_EOS is not None)
    return build_body(Prompt(0, [{"role": "user", "content": "hi"}]), cfg, "llm-sim")


def tokens(out) -> list[float]:
    return [e[0] for e in out["events"] if e[1] in TOKEN_KINDS]


def test_every_dialect_times_tokens_as_the_trace_says_they_left(tmp_path):
    """Per dialect: client token times never precede the simulator's deadlines, each token is read before
    the next was written, and the client's TTFT and ITL match the trace's within the tolerance the
    Locust fidelity test uses."""
    trace = tmp_path / "trace.jsonl"
    sim = simulator.start("--ttft-ms", "50", "--itl-ms", "40", "--output-len", "4", "--trace", str(trace))
    outs = {}
    try:
        with RunQueueWait(sim.pid) as rq:
            for name in backends.NAMES:
                c = ChatClient(sim.url, backend=name, model="llm-sim")
                outs[name] = [c.send(request(name)) for _ in range(3)]
                c.close()
        deadline = time.monotonic() + 5
        while len(trace.read_text().splitlines()) < 3 * len(outs) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sim.stop()
    truth = {d["request_id"]: d for d in map(json.loads, trace.read_text().splitlines())}
    late_ms = min(5 + 4 * rq.ms, 40)
    for name, results in outs.items():
        ttft_err, itl_err = [], []
        for out in results:
            assert out["success"] and out["attempts"] == 1, (name, out["error"])
            server = truth[out["request_id"]]
            client = [out["t_send"] + t for t in tokens(out)]
            written = [server["arrival"] + t for t in server["tokens"]]
            assert len(client) == len(written) == 4, (name, out["events"], server)
            due = [server["arrival"] + 0.050 + 0.040 * i for i in range(4)]
            assert all(c >= d - 1e-3 for c, d in zip(client, due)), (name, client, due)
            assert all(c < w for c, w in zip(client, written[1:])), (name, client, written)
            ttft_err.append((client[0] - written[0]) * 1000)
            itl_err += list((np.diff(client) - np.diff(written)) * 1000)
        # the trace stamps a write just after it: a read can come a fraction of a ms "before" it
        assert -1 < np.median(ttft_err) < late_ms, (name, ttft_err, rq.ms)
        assert abs(np.median(itl_err)) < min(1 + rq.ms, 5), (name, itl_err, rq.ms)


# fault -> the dialects it applies to (None: all); no-done/usage-on-finish are OpenAI's [DONE] and usage
# chunk; Triton has no finish reason to drop
APPLIES = {"http-400": None, "http-429": None, "http-500": None, "reset-before-headers": None,
           "reset-mid-stream": None, "no-done": ("openai-chat", "openai"),
           "no-finish": ("openai-chat", "openai", "tgi", "mindie"), "malformed-json": None, "non-sse": None,
           "nospace-crlf": None, "empty-completion": None, "usage-on-finish": ("openai-chat", "openai"),
           "no-usage": None, "slow-first-byte:0.6": None, "stall:0.6": None, "huge:6": None}
EXPECTED = {  # the chat dialect's verdict and reason class; every other dialect must agree
    "http-400": (False, "HTTP 400"), "http-429": (False, "HTTP 429"), "http-500": (False, "HTTP 500"),
    "reset-before-headers": (False, "connection error"), "reset-mid-stream": (False, "stream broken after"),
    "no-done": (True, ""), "no-finish": (False, "truncated"), "malformed-json": (False, "malformed JSON in stream"),
    "non-sse": (False, "not an SSE stream"), "nospace-crlf": (True, ""), "empty-completion": (True, ""),
    "usage-on-finish": (True, ""), "no-usage": (True, ""), "slow-first-byte:0.6": (False, "timeout"),
    "stall:0.6": (False, "stalled"), "huge:6": (True, "")}


def test_each_fault_gets_the_same_verdict_on_every_dialect(start_sim):
    sim = start_sim("--ttft-ms", "5", "--itl-ms", "2", "--output-len", "4")
    seen = {}
    for name in backends.NAMES:
        c = ChatClient(sim.url, backend=name, model="llm-sim", timeout=0.3, read_timeout=0.3)
        body = request(name, max_tokens=4, ignore_eos=False)
        for fault, applies in APPLIES.items():
            if applies is not None and name not in applies:
                continue
            c.headers["X-Sim-Fault"] = fault
            out = c.send(body)
            seen[name, fault] = out
            ok, reason = EXPECTED[fault]
            assert out["success"] is ok and out["error"].startswith(reason), (name, fault, out["error"])
        c.headers["X-Sim-Fault"] = "none"
        assert c.send(body)["success"], name  # the connection is usable after the faults
        c.close()
    for name in backends.NAMES:
        assert seen[name, "empty-completion"]["completion"] == ""
        assert len(tokens(seen[name, "huge:6"])) == 6
        assert seen[name, "no-usage"]["usage"] is None
        assert len(tokens(seen[name, "reset-mid-stream"])) == 3  # faults.FEW chunks, then the reset
        assert seen[name, "nospace-crlf"]["completion"] == "the quick brown fox"
    # where the dialect reports one, the finish reason is its own word for the same thing
    assert [seen[n, "huge:6"]["finish_reason"] for n in backends.NAMES] == ["length", "length", "length", None, "length"]
    assert seen["tgi", "empty-completion"]["finish_reason"] == "eos_token"


def test_unknown_triton_model_is_one_line(start_sim):
    sim = start_sim("--ttft-ms", "5", "--itl-ms", "2")
    c = ChatClient(sim.url, backend="triton", model="nope")
    out = c.send(request("triton"))
    assert not out["success"] and out["error"].startswith("HTTP 400") and "nope" in out["error"]


@pytest.mark.parametrize("name", [n for n in backends.NAMES if n != backends.DEFAULT])
def test_headless_run_per_backend_writes_tables(tmp_path, start_sim, name):
    sim = start_sim("--ttft-ms", "20", "--itl-ms", "5")
    extra = ("--model", "llm-sim") if name == "triton" else ()
    res = run_locust(tmp_path, "--host", sim.url, "--backend", name, "-u", "2", "-r", "2", "-t", "3s",
                     "--max-out-len", "8", *extra)
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = run_dirs(tmp_path)
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["backend"] == name
    records, _ = read_records(os.path.join(run, "records.jsonl"))
    ok = [r for r in records if r["success"]]
    assert len(ok) >= 4 and len(ok) == len(records), [r["error"] for r in records][:3]
    assert {r["output_tokens"] for r in ok} == {8}
    # the dialects that report the output count are counted by it; Triton's by the tokenizer
    assert {r["token_source"] for r in ok} == {"tokenizer" if name == "triton" else "usage"}
    assert "Performance Parameters" in res.stdout
    perf = os.path.join(run, "performances", config["model_abbr"], "synthetic.csv")
    assert os.path.isfile(perf)


def test_gsm8k_on_a_text_backend_is_scored_and_its_prompt_counted_as_text(tmp_path, start_sim):
    """The 4-shot prompt goes to MindIE's /infer as one text; the simulator finds each question in it and
    answers from its canned completions (4 of 8 right); MindIE reports no prompt count, so the
    tokenizer counts the text that was sent."""
    from benchmark import tokens
    questions = [json.loads(line) for line in open(os.path.join(GSM8K, "test.jsonl"))][:8]
    answers = tmp_path / "answers.jsonl"
    with open(answers, "w") as f:
        for i, q in enumerate(questions):
            gold = q["answer"].split("####")[-1].strip().replace(",", "")
            said = gold if i % 2 == 0 else str(int(gold) + 1)
            f.write(json.dumps({"question": q["question"], "completion": f"So. The answer is {said}\n"}) + "\n")
    sim = start_sim("--ttft-ms", "5", "--itl-ms", "1", "--answers", str(answers))
    res = run_locust(tmp_path / "out", "--host", sim.url, "--backend", "mindie", "-u", "4", "-r", "4", "-t", "3s",
                     "--dataset", "gsm8k", "--dataset-path", GSM8K, "--subset", "demo", "--max-out-len", "64")
    assert res.returncode == 0, res.stderr[-1500:]
    (run,) = run_dirs(tmp_path / "out")
    records, _ = read_records(os.path.join(run, "records.jsonl"))
    assert {r["prompt_index"] for r in records} == set(range(8)) and all(r["success"] for r in records)
    assert json.load(open(os.path.join(run, "results", "llm-sim", "demo_gsm8k.json")))["accuracy"] == 50.0
    prompts = datasets.load("gsm8k", GSM8K, 8)
    tok = tokens.load_tokenizer(None)
    want = {p.index: tokens.count_text_input(tok, backends.prompt_text(p.messages)) for p in prompts}
    assert {r["prompt_index"]: r["input_tokens"] for r in records} == want


def test_a_text_backend_counts_the_prompt_as_the_text_sent(tmp_path):
    from benchmark import tokens
    from benchmark.records import new_record
    from benchmark.run import Run
    tok = tokens.load_tokenizer(None)
    prompt = Prompt(3, [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "cd"},
                        {"role": "user", "content": "ef"}])
    counted = {}
    for name in ("openai-chat", "openai"):
        run = Run(RunConfig(backend=name, output_dir=str(tmp_path / name)), "m", "http://127.0.0.1:9")
        rec = new_record(completion="x", success=True)
        run._count_tokens(rec, {"completion_tokens": 1}, prompt)
        run.sink.close()
        counted[name] = rec["input_tokens"]
    assert counted["openai-chat"] == tokens.count_input(tok, prompt.messages)
    assert counted["openai"] == tokens.count_text_input(tok, "ab\ncd\nef")
    assert counted["openai"] != counted["openai-chat"]


def test_bad_backend_on_the_command_line_is_one_line(tmp_path):
    res = run_locust(tmp_path, "--backend", "vllm", "-u", "1", "-t", "1s")
    lines = [ln for ln in (res.stderr + res.stdout).splitlines() if "error" in ln.lower()]
    assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout, res.stderr[-2000:]
    assert len(lines) == 1 and "--backend: expected one of openai-chat" in lines[0], lines
