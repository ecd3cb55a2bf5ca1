"""Reasoning models (TTFO, reasoning vs answer tokens) and multi-token events (tokens per event, ITL per
token), against the simulator's known truth (--trace) and by hand from the records."""
from __future__ import annotations

import csv
import json
import os
import time

import numpy as np
import pytest

from benchmark import event_tokens, metrics, tables, tokens
from benchmark.client import ChatClient
from benchmark.datasets import Prompt
from benchmark.options import RunConfig
from benchmark.records import CONTENT, REASONING, TOKEN_KINDS
from benchmark.run import Run, build_body, report
from conftest import RunQueueWait, perf_csv, run_dirs, run_locust

PROMPT = Prompt(0, [{"role": "user", "content": "think about this"}])
N_TOKENS = 12  # max_tokens with ignore_eos: every answer has exactly this many tokens


def run_requests(sim, tmp_path, n=4, continuous=False):
    """n requests through the client and Run.record (the path a load test takes); the run and records."""
    cfg = RunConfig(output_dir=str(tmp_path / "runs"), max_out_len=N_TOKENS, ignore_eos=True,
                    continuous_usage=continuous)
    run = Run(cfg, "llm-sim", sim.url)
    client = ChatClient(sim.url)
    body = build_body(PROMPT, cfg, "llm-sim")
    recs = [run.record(client.send(body), PROMPT, "w", 0) for _ in range(n)]
    client.close()
    run.sink.close()
    assert all(r["success"] for r in recs), [r["error"] for r in recs]
    return run, recs


def read_trace(path, ids, timeout=5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # a line is written once its answer has ended
        lines = {d["request_id"]: d for d in map(json.loads, path.read_text().splitlines())} if path.exists() else {}
        if set(ids) <= set(lines):
            return lines
        time.sleep(0.05)
    raise AssertionError(f"trace lines missing for {set(ids) - set(lines)}")


def row(results, metric, stage="total") -> dict:
    perf = results.perf
    (r,) = perf[(perf["Performance Parameters"] == metric) & (perf["Stage"] == stage)].to_dict("records")
    return r


def by_hand(samples) -> list[float]:
    a = np.asarray(samples, float)
    return [a.mean(), a.min(), a.max(), *np.percentile(a, (50, 75, 90, 99))]


def token_events(rec):
    return [i for i, e in enumerate(rec["events"]) if e[1] in TOKEN_KINDS]


# ---------------------------------------------------------------------------------------------- reasoning


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning", "think"])
def test_ttfo_against_trace_truth(start_sim, tmp_path, field):
    trace = tmp_path / "trace.jsonl"
    sim = start_sim("--ttft-ms", "30", "--itl-ms", "15", "--reasoning-tokens", "4", "--reasoning-field", field,
                    "--trace", str(trace))
    with RunQueueWait(sim.pid) as rq:
        run, recs = run_requests(sim, tmp_path)
    truth = read_trace(trace, [r["request_id"] for r in recs])
    late = min(15 + 4 * rq.ms, 40) / 1000
    on_time = []
    for rec in recs:
        line = truth[rec["request_id"]]
        assert line["reasoning"] == 4 and len(line["tokens"]) == N_TOKENS
        kinds = [rec["events"][i][1] for i in token_events(rec)]
        assert kinds == [REASONING] * 4 + [CONTENT] * 8, kinds  # <think> text reclassified too
        ttft = rec["events"][token_events(rec)[0]][0]
        ttfo = next(e[0] for e in rec["events"] if e[1] == CONTENT)
        assert ttfo == rec["events"][token_events(rec)[4]][0]  # the 5th token event: the trace's first answer token
        # the client sent before the arrival and read after the write (the trace takes its time just
        # after the write, so a server descheduled there stamps it a little late)
        assert ttft > line["tokens"][0] - late and ttfo > line["tokens"][4] - late
        # from the first token to the first answer token as the server wrote them (the send-to-arrival
        # time, large for a new connection, cancels out) -- unless the client itself was held up between
        # the two reads (on a busy machine the test process can be descheduled for 100+ ms and read both
        # at once; the simulator's run-queue wait does not see that): so at least one request must show it
        on_time.append(abs((ttfo - ttft) - (line["tokens"][4] - line["tokens"][0])) < late)
        assert line["tokens"][4] >= 0.030 + 4 * 0.015 - 1e-4  # after 4 reasoning tokens 15 ms apart: never early
        # usage details: exact
        assert (rec["reasoning_tokens"], rec["answer_tokens"], rec["reasoning_token_source"]) == (4, 8, "usage")
        if field == "think":
            assert rec["completion"].startswith("<think>") and rec["reasoning"] == ""  # texts as sent
        else:
            assert rec["reasoning"] == "the quick brown fox" and "<think>" not in rec["completion"]
    assert any(on_time), (on_time, rq.ms)
    res = report(run.dir, html=False, echo=False)
    ttfos = [next(e[0] for e in r["events"] if e[1] == CONTENT) * 1000 for r in recs]
    assert [row(res, "TTFO")[s] for s in metrics.STATS] == pytest.approx(by_hand(ttfos), rel=1e-12)
    assert row(res, "TTFO")["N"] == len(recs)
    assert row(res, "ReasoningTokens")["Average"] == 4 and row(res, "AnswerTokens")["Max"] == 8
    common = tables.common_dict(res)
    assert common["Total Reasoning Tokens"]["total"] == 16 and common["Total Answer Tokens"]["total"] == 32
    assert "TokensPerEvent" not in set(res.perf["Performance Parameters"])  # one token per event


@pytest.mark.parametrize("field,tags", [("reasoning_content", 0), ("think", 2)])
def test_reasoning_split_by_tokenizer_without_usage(start_sim, tmp_path, field, tags):
    sim = start_sim("--ttft-ms", "10", "--itl-ms", "2", "--reasoning-tokens", "5", "--reasoning-field", field,
                    "--fault", "no-usage")
    _, recs = run_requests(sim, tmp_path, n=2)
    tok = tokens.load_tokenizer()
    for rec in recs:
        assert rec["token_source"] == "tokenizer" and rec["reasoning_token_source"] == "tokenizer"
        if field == "think":
            spans = event_tokens.think_spans(rec["completion"])
            thought = "".join(rec["completion"][a:b] for a, b in spans)
            answer = rec["completion"][spans[-1][1]:]
        else:
            thought, answer = rec["reasoning"], rec["completion"]
        # the tokenizer on each part, as output tokens are counted without usage ...
        assert rec["reasoning_tokens"] == tokens.count_output(tok, thought)
        assert rec["answer_tokens"] == tokens.count_output(tok, answer)
        # ... which for these words is the simulator's truth (the <think> tags are a token each)
        assert (rec["reasoning_tokens"], rec["answer_tokens"]) == (5 + tags, N_TOKENS - 5)


def test_think_rule_matches_strip_reasoning():
    """Blocks, a lone </think> (the template put <think> in the prompt) and an unclosed <think>."""
    from benchmark.accuracy import strip_reasoning
    for text in ("<think>a b</think> answer", "<think>x</think>y<think>z</think> w", "thinking here</think> 42",
                 "a</think>b</think> c"):
        spans = event_tokens.think_spans(text)
        assert event_tokens._outside(text, spans).strip() == strip_reasoning(text), (text, spans)
    assert event_tokens.think_spans("answer <think>cut while thinking") == [(7, 32)]
    # events: a lone </think> makes everything up to it reasoning; an event that also holds answer
    # characters counts as answer (TTFO = when the answer began)
    rec = {"completion": "plan it</think>The answer", "reasoning": "", "finish_reason": "stop",
           "events": [[.1, "role", 0], [.2, CONTENT, 4], [.3, CONTENT, 11], [.4, CONTENT, 10]],
           "output_tokens": 9, "token_source": "usage"}
    event_tokens.annotate(rec, {"completion_tokens": 9}, None, tokens.load_tokenizer)
    assert [e[1] for e in rec["events"]] == ["role", REASONING, REASONING, CONTENT]
    rec["events"][2][2], rec["events"][3][2] = 14, 7  # " it</think>The" then " answer"
    rec["events"][1][1] = rec["events"][2][1] = CONTENT
    event_tokens.annotate(rec, {"completion_tokens": 9}, None, tokens.load_tokenizer)
    assert [e[1] for e in rec["events"]] == ["role", REASONING, CONTENT, CONTENT]
    assert rec["reasoning_token_source"] == "tokenizer"  # usage has no details
    tok = tokens.load_tokenizer()
    assert rec["reasoning_tokens"] == tokens.count_output(tok, "plan it</think>")


# -------------------------------------------------------------------------------------- multi-token events


def itl_per_token_by_hand(recs) -> tuple[list[float], list[float], int]:
    """ITL per token and tokens per event from the records, by the definitions in metrics.py."""
    itl, tpe, requests = [], [], 0
    for rec in recs:
        per = rec["event_tokens"] or [int(e[1] in TOKEN_KINDS) for e in rec["events"]]
        carried = [(e[0], k) for e, k in zip(rec["events"], per) if e[1] in TOKEN_KINDS and k > 0]
        requests += len(carried) > 1
        for (t0, _), (t1, k) in zip(carried, carried[1:]):
            tpe.append(k)
            itl += [(t1 - t0) / k * 1000] * k
    return itl, tpe, requests


@pytest.mark.parametrize("continuous", [True, False], ids=["per-chunk-usage", "tokenizer-alignment"])
def test_tokens_per_event_exact(start_sim, tmp_path, continuous):
    trace = tmp_path / "trace.jsonl"
    sim = start_sim("--ttft-ms", "10", "--itl-ms", "5", "--tokens-per-event", "1-3", "--seed", "7",
                    "--trace", str(trace))
    run, recs = run_requests(sim, tmp_path, n=5, continuous=continuous)
    truth = read_trace(trace, [r["request_id"] for r in recs])
    for rec in recs:
        line = truth[rec["request_id"]]
        assert rec["event_token_source"] == ("usage" if continuous else "tokenizer")
        got = [rec["event_tokens"][i] for i in token_events(rec)]
        assert got == line["per_event"], (got, line)  # the server's grouping, exactly
        assert sum(line["per_event"]) == N_TOKENS and len(line["tokens"]) == N_TOKENS
    assert len({tuple(truth[r["request_id"]]["per_event"]) for r in recs}) > 1  # drawn per request
    # read by two processes (a big file's way) the columns are the same
    from benchmark.columns import read_columns
    path = os.path.join(run.dir, "records.jsonl")
    one, two = read_columns(path, processes=1)[0], read_columns(path, processes=2)[0]
    assert one.event_tokens.tolist() == two.event_tokens.tolist() and two.event_tokens.sum() == N_TOKENS * len(recs)
    assert one.token_split_sources == two.token_split_sources
    res = report(run.dir, html=False, echo=False)
    itl, tpe, requests = itl_per_token_by_hand(recs)
    assert tpe == [k for r in recs for k in truth[r["request_id"]]["per_event"][1:]]
    assert [row(res, "TokensPerEvent")[s] for s in metrics.STATS] == pytest.approx(by_hand(tpe), rel=1e-12)
    assert [row(res, "ITLPerToken")[s] for s in metrics.STATS] == pytest.approx(by_hand(itl), rel=1e-9)
    assert row(res, "ITLPerToken")["N"] == row(res, "TokensPerEvent")["N"] == requests == len(recs)
    # ITL stays one gap per event: here about 5 ms, where ITL per token is about 5 ms / tokens
    gaps = [(b[0] - a[0]) * 1000 for r in recs for a, b in zip([r["events"][i] for i in token_events(r)],
                                                               [r["events"][i] for i in token_events(r)[1:]])]
    assert row(res, "ITL")["Average"] == pytest.approx(np.mean(gaps), rel=1e-9)
    assert row(res, "ITLPerToken")["Average"] < row(res, "ITL")["Average"]


def test_plain_run_keeps_todays_tables(start_sim, tmp_path, monkeypatch):
    """No reasoning, one token per event: exactly the tables the code without this feature makes."""
    sim = start_sim("--ttft-ms", "10", "--itl-ms", "2", "--no-prefix-cache")  # no cached_tokens row either
    run, recs = run_requests(sim, tmp_path, n=4, continuous=True)
    assert {r["event_token_source"] for r in recs} == {"usage"}
    assert all(r["event_tokens"] is None and r["reasoning_tokens"] is None for r in recs)
    res = report(run.dir, html=False, echo=False)
    files = {p: open(p, "rb").read() for p in _table_files(run.dir)}
    shown = (tables.console(res), files)
    # the same run with the split switched off (today's code path) and the new record fields dropped
    monkeypatch.setattr(metrics, "_split_samples", lambda *a, **k: metrics._Split())
    lines = [json.loads(x) for x in open(os.path.join(run.dir, "records.jsonl"))]
    for rec in lines:
        for name in ("reasoning_tokens", "answer_tokens", "reasoning_token_source", "event_tokens",
                     "event_token_source"):
            del rec[name]
    with open(os.path.join(run.dir, "records.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines)
    old = report(run.dir, html=False, echo=False)
    assert (tables.console(old), {p: open(p, "rb").read() for p in _table_files(run.dir)}) == shown
    assert list(res.perf["Performance Parameters"]) == [m for m in metrics.PERF_METRICS
                                                        if m not in metrics.SCHED_METRICS]
    assert list(res.common["Common Metric"]) == [m for m, _ in metrics.COMMON_METRICS]


def _table_files(run_dir):
    perf = os.path.join(run_dir, "performances")
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(perf) for f in fs)


def test_locust_run_shows_the_new_rows(start_sim, tmp_path):
    sim = start_sim("--ttft-ms", "20", "--itl-ms", "4", "--reasoning-tokens", "6", "--reasoning-field", "reasoning",
                    "--tokens-per-event", "2-3")
    res = run_locust(tmp_path, "--host", sim.url, "-u", "2", "-r", "2", "-t", "3s", "--max-out-len", "24",
                     "--ignore-eos", "--continuous-usage")
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = run_dirs(tmp_path)
    for metric in ("TTFO", "ReasoningTokens", "AnswerTokens", "TokensPerEvent", "ITLPerToken"):
        assert f"│ {metric} " in res.stdout, metric
    assert "Token split: reasoning/answer tokens from usage" in res.stdout
    assert "tokens per event from usage" in res.stdout
    rows = {r[0]: r for r in csv.reader(open(perf_csv(run)))}
    assert float(rows["ReasoningTokens"][2]) == 6 and float(rows["AnswerTokens"][2]) == 18
    assert 2 <= float(rows["TokensPerEvent"][2]) <= 3  # Average of draws from 2-3
    html = open(os.path.join(run, "report.html"), encoding="utf-8").read()
    for metric in ("TTFO", "ReasoningTokens", "TokensPerEvent", "ITLPerToken"):
        assert f"<td>{metric}</td>" in html, metric


def test_web_ui_rows_only_when_seen():
    from benchmark.webui import LiveWindow
    plain = {"success": True, "t_send": 100.0, "output_tokens": 3, "error": "",
             "events": [[.1, "role", 0], [.2, CONTENT, 3], [.3, CONTENT, 3], [.4, CONTENT, 3]]}
    live = LiveWindow()
    live.add(plain)
    names = [r["metric"] for r in live.rows(now=101.0)]
    assert not any(n.startswith(("TTFO", "Reasoning", "Tokens per event", "ITL per token")) for n in names)
    live.add({"success": True, "t_send": 100.0, "output_tokens": 7, "error": "", "reasoning_tokens": 2,
              "answer_tokens": 5, "events": [[.1, "role", 0], [.2, REASONING, 3], [.3, REASONING, 3],
                                             [.5, CONTENT, 3], [.8, CONTENT, 6], [.9, "usage", 0]],
              "event_tokens": [0, 1, 1, 2, 3, 0]})
    rows = {r["metric"]: r for r in live.rows(now=101.0)}
    assert rows["TTFO (ms): first answer token"]["n"] == 2  # the plain request: TTFO = TTFT
    assert rows["TTFO (ms): first answer token"]["p50"] == pytest.approx(350.0)  # of 200 and 500 ms
    assert rows["Reasoning tokens per request"]["avg"] == 1.0 and rows["Answer tokens per request"]["avg"] == 4.0
    # decode events of the second request: 1, 2, 3 tokens after gaps of 100, 200, 300 ms (the plain one: 1, 1)
    assert rows["Tokens per event (decode)"]["avg"] == round((1 + 1 + 1 + 2 + 3) / 5, 2)
    per_token = [100, 100, 100, 100, 100, 100, 100, 100]  # 100/1 x2 (plain), 100/1, 200/2 x2, 300/3 x3
    assert rows["ITL per token (ms)"]["avg"] == pytest.approx(np.mean(per_token)) and rows["ITL per token (ms)"]["n"] == 8


def test_rows_per_stage_by_hand():
    """Two stages of hand-made records: each stage's rows are its own requests' samples."""
    def rec(stage, times, per_event, reasoning=0):
        events = [[.01, "role", 0]] + [[t, REASONING if i < reasoning else CONTENT, 3] for i, t in enumerate(times)]
        return {"success": True, "t_send": 100.0, "stage": stage, "output_tokens": sum(per_event),
                "input_tokens": 5, "events": events, "event_tokens": [0] + per_event,
                "reasoning_tokens": sum(per_event[:reasoning]) if reasoning else None,
                "answer_tokens": sum(per_event[reasoning:]) if reasoning else None}
    a = rec("s1", [.1, .2, .4], [1, 2, 4], reasoning=1)
    b = rec("s2", [.1, .13, .19, .25], [1, 1, 3, 2])
    res = metrics.compute([a, b])
    # s1: decode events 2 (gap 100 ms), 4 (gap 200 ms) -> per token 50, 50, 50 x4
    assert row(res, "TokensPerEvent", "s1")["Average"] == 3 and row(res, "TokensPerEvent", "s1")["N"] == 1
    assert row(res, "ITLPerToken", "s1")["Average"] == pytest.approx(50) and row(res, "ITLPerToken", "s1")["Max"] == pytest.approx(50)
    # s2: 1 (30 ms), 3 (60 ms -> 20 x3), 2 (60 ms -> 30 x2)
    assert [row(res, "ITLPerToken", "s2")[s] for s in metrics.STATS] == pytest.approx(by_hand([30, 20, 20, 20, 30, 30]))
    assert row(res, "TokensPerEvent", "total")["N"] == 2
    # TTFO: a's answer starts at its second token event; b has no reasoning: TTFO = TTFT
    assert row(res, "TTFO", "s1")["Average"] == pytest.approx(200) and row(res, "TTFO", "s2")["Average"] == pytest.approx(100)
    assert row(res, "ReasoningTokens", "s2")["Max"] == 0 and row(res, "AnswerTokens", "s2")["Average"] == 7
    assert tables.common_dict(res)["Total Reasoning Tokens"] == {"total": 1, "s1": 1, "s2": 0}
    # the aisbench profile keeps AISBench's layout
    assert "TTFO" not in set(metrics.compute([a, b], profile="aisbench").perf["Performance Parameters"])


# ------------------------------------------------------------------------------------ on every dialect


@pytest.mark.parametrize("backend", ["openai-chat", "openai", "tgi", "mindie", "triton"])
def test_reasoning_and_multi_token_events_on_every_dialect(start_sim, tmp_path, backend):
    """The simulator's reasoning and 2-token events in each dialect (as <think> text where the dialect has
    no reasoning field): the client splits the thought out, times the first answer token as the trace
    says it left, and counts 2 tokens per event."""
    trace = tmp_path / "trace.jsonl"
    sim = start_sim("--ttft-ms", "20", "--itl-ms", "10", "--reasoning-tokens", "4", "--tokens-per-event", "2",
                    "--trace", str(trace))
    cfg = RunConfig(output_dir=str(tmp_path / "runs"), max_out_len=N_TOKENS, backend=backend, model="llm-sim",
                    ignore_eos=backend in ("openai-chat", "openai", "triton"))
    run = Run(cfg, "llm-sim", sim.url)
    client = ChatClient(sim.url, backend=backend, model="llm-sim")
    body = build_body(PROMPT, cfg, "llm-sim")
    with RunQueueWait(sim.pid) as rq:
        recs = [run.record(client.send(body), PROMPT, "w", 0) for _ in range(3)]
    client.close()
    run.sink.close()
    assert all(r["success"] for r in recs), [r["error"] for r in recs]
    truth = read_trace(trace, [r["request_id"] for r in recs])
    late = min(10 + 4 * rq.ms, 40) / 1000
    on_time = []
    for rec in recs:
        line = truth[rec["request_id"]]
        assert line["reasoning"] == 4 and line["per_event"][:2] == [2, 2]
        kinds = [rec["events"][i][1] for i in token_events(rec)]
        assert kinds[:2] == [REASONING, REASONING] and set(kinds[2:]) == {CONTENT}, kinds
        ttft = rec["events"][token_events(rec)[0]][0]
        ttfo = next(e[0] for e in rec["events"] if e[1] == CONTENT)
        assert ttfo == rec["events"][token_events(rec)[2]][0]  # the 3rd token event holds tokens 4 and 5
        # the gap as the server wrote it, unless the client was held up between the two reads (see above)
        on_time.append(abs((ttfo - ttft) - (line["tokens"][4] - line["tokens"][0])) < late)
        counted = [k for k, i in zip(rec["event_tokens"], range(len(rec["events"]))) if i in token_events(rec)]
        # the answer's 8 tokens in 4 events of 2; the thought's events hold 2 simulator tokens, and the
        # tokenizer also counts the <think> tags where the thought is text (as a real engine would)
        assert counted[2:] == [2] * 4, (rec["event_tokens"], rec["event_token_source"])
        assert counted[:2] == ([2, 2] if backend == "openai-chat" else [3, 3]), rec["event_tokens"]
    assert any(on_time), (on_time, rq.ms)
    res = report(run.dir, html=False, echo=False)
    assert row(res, "TokensPerEvent")["Median"] == 2
