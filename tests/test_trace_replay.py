"""Trace replay (benchmark/workloads/trace.py), schedule adherence (benchmark/schedule.py), the per-turn
table (benchmark/by_turn.py) and the prefix-cache line at prepare time: the workload driven directly, then
headless runs against the simulator."""
from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys
from types import SimpleNamespace
from time import perf_counter

import gevent
import numpy as np
import pytest

from benchmark import by_turn, schedule
from benchmark.client import epoch
from benchmark.columns import from_records
from benchmark.datasets import Prompt
from benchmark.options import ConfigError, RunConfig
from benchmark.records import figures, new_record
from benchmark.workloads import kind, trace as trace_wl

from conftest import ROOT, run_dirs

LOCUSTFILE = os.path.join(ROOT, "locustfile.py")
DEMO = os.path.join(ROOT, "datasets", "trace_demo")
# a send may be late by the event loop's wake-up and a busy 2-core machine's scheduling; never early
LATE_OK_S = 0.25


def write_trace(path, times_ms, input_length=24, output_length=2):
    with open(path, "w") as f:
        for t in times_ms:
            f.write(json.dumps({"timestamp": t, "input_length": input_length, "output_length": output_length}) + "\n")
    return str(path)


def headless(out, *args, timeout=180):
    cmd = [sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--headless", "--output-dir", str(out),
           "--only-summary", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = run_dirs(out)
    with open(os.path.join(run, "records.jsonl")) as f:
        return [json.loads(line) for line in f], res.stdout + res.stderr, run


def schedule_line(output):
    (line,) = [x for x in output.splitlines() if x.startswith("Schedule:")]
    return line


# -- the workload, driven directly -------------------------------------------------------------------------

def fake_session(times_s, shard=(0, 1), **cfg):
    prompts = [Prompt(i, [{"role": "user", "content": f"p{i}"}], t_sched_s=t) for i, t in enumerate(times_s)]
    return SimpleNamespace(cfg=RunConfig(dataset="trace", **cfg), shard=shard, prompts=prompts,
                           bodies=[b"%d" % i for i in range(len(prompts))], stage="total", arrivals=None)


def test_kind_and_users_take_due_entries_in_order_never_early():
    assert kind(RunConfig(dataset="trace")) == "trace"
    times = [0.0, 0.05, 0.05, 0.12, 0.2, 0.3]
    wl = trace_wl.Workload(fake_session(times))
    sent = []

    def user(number):
        u = SimpleNamespace(number=number, state={})
        while True:
            req = wl.next(u)
            if req is None:
                return
            sent.append((req.prompt.index, perf_counter(), req.t_sched))
            gevent.sleep(0.01)  # "in flight"

    gevent.joinall([gevent.spawn(user, n) for n in range(3)])
    assert sorted(i for i, *_ in sent) == list(range(len(times)))  # each entry once
    for i, t_sent, t_sched in sent:
        due = wl.t0 + times[i]
        assert t_sched == pytest.approx(epoch(due), abs=1e-9)  # t_sched: the due time, as an epoch
        assert due <= t_sent < due + LATE_OK_S  # never early, on time with users free


def test_shards_by_index_and_num_requests_and_warmup():
    s = fake_session([0.0] * 7, shard=(1, 2), num_requests=4, warmup=2)
    wl = trace_wl.Workload(s)
    u = SimpleNamespace(number=0, state={})
    got = []
    while (req := wl.next(u)) is not None:
        got.append((req.prompt.index, req.stage))
    # worker 1 of 2 takes entries 1, 3, 5: warm-up 1 of 2, then 2 of the 4 requests: 1 + 2 entries
    assert got == [(1, "warmup"), (3, "total"), (5, "total")]


@pytest.mark.parametrize("flag, value", [("request_rate", "5"), ("steps", "1,2")])
def test_a_trace_refuses_a_second_load_model(flag, value):
    o = SimpleNamespace(**{**vars(_defaults()), "dataset": "trace", "dataset_path": "t.jsonl", flag: value})
    with pytest.raises(ConfigError, match="--dataset trace sends each request at its time"):
        RunConfig.from_options(o)


def _defaults():
    import argparse

    from benchmark.options import add_arguments
    p = argparse.ArgumentParser()
    add_arguments(p)
    p.add_argument("--host", default="")
    p.add_argument("-u", "--users", dest="num_users", type=int, default=1)
    return p.parse_args([])


def test_llm_help_lists_the_dataset_flags_under_dataset():
    res = subprocess.run([sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--llm-help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    out = res.stdout
    dataset = out[out.index("LLM dataset"):out.index("LLM request")]
    for flag in ("--trace-speed", "--trace-start", "--trace-window", "--prefix-ratio", "--prefix-groups"):
        assert flag in dataset, flag
    assert "--multi-turn" in out[out.index("LLM conversations"):]


# -- schedule adherence, from records ------------------------------------------------------------------------

def rec(t_sched, t_send, e2el, success=True):
    return new_record(t_sched=t_sched, t_send=t_send, success=success, output_tokens=1,
                      events=[[e2el / 2, "content", 1], [e2el, "other", 0]])


def test_adherence_reuses_queue_delay_and_tells_a_busy_cap_from_a_slow_client():
    from benchmark import metrics
    recs = [rec(0.0, 0.001, 1.0),   # on time; in flight until 1.001
            rec(0.5, 1.001, 0.1),   # due at 0.5 while the one user was busy: 501 ms late, users busy
            rec(3.0, 3.05, 0.1),    # 50 ms late with nobody in flight: the client was slow
            rec(4.0, 4.002, 0.1)]
    a = schedule.adherence(from_records(recs), users=1)
    lags = np.array([1, 501, 50, 2], float)
    assert a["n"] == 4 and a["late"] == 2 and a["late_busy"] == 1
    assert a["p50_ms"] == pytest.approx(np.percentile(lags, 50)) and a["max_ms"] == pytest.approx(501)
    qd = metrics.compute(from_records(recs)).perf
    row = qd[(qd["Performance Parameters"] == "QueueDelay") & (qd["Stage"] == "total")].iloc[0]
    assert row["Median"] == pytest.approx(a["p50_ms"], abs=1e-3) and row["P99"] == pytest.approx(a["p99_ms"], abs=1e-3)
    line = schedule.line(a)
    assert "LATE: 2 (50.0 %) sent more than 10 ms late" in line
    assert "1 of them found the one user busy (raise -u)" in line and "1 with a user free" in line
    assert "the schedule was kept" in schedule.line(schedule.adherence(from_records(recs[:1]), users=1))
    assert schedule.adherence(from_records([new_record(t_send=1.0, success=True)])) is None  # closed loop


# -- headless replays against the simulator -----------------------------------------------------------------

TIMES_MS = [0, 100, 250, 400, 400, 700, 1000, 1300, 1600, 2000]


def check_on_time(recs, times_s):
    """Every record: t_sched follows its timestamp on one timeline, sent never early and not late."""
    zero = {round(r["t_sched"] - times_s[r["prompt_index"]], 6) for r in recs}
    assert max(zero) - min(zero) < 1e-5, zero  # t_sched - t = one t0: the schedule is the trace's
    for r in recs:
        lag = r["t_send"] - r["t_sched"]
        assert 0 <= lag < LATE_OK_S, (r["prompt_index"], lag)


@pytest.mark.parametrize("speed", [1, 2])
def test_send_times_follow_the_timestamps_and_speed_scales_them(tmp_path, start_sim, speed):
    sim = start_sim("--ttft-ms", "5", "--itl-ms", "1")
    path = write_trace(tmp_path / "t.jsonl", TIMES_MS)
    recs, out, _ = headless(tmp_path / "out", "--host", sim.url, "-u", "4", "-r", "4", "-t", "60s",
                            "--dataset", "trace", "--dataset-path", path, "--trace-speed", str(speed))
    assert sorted(r["prompt_index"] for r in recs) == list(range(len(TIMES_MS)))
    assert all(r["success"] for r in recs)
    times_s = [t / 1000 / speed for t in TIMES_MS]
    check_on_time(recs, times_s)
    sends = sorted(r["t_send"] for r in recs)
    assert sends[-1] - sends[0] == pytest.approx(2.0 / speed, abs=LATE_OK_S)  # speed 2: half the span
    assert schedule_line(out).startswith(f"Schedule: {len(TIMES_MS)} requests sent after their scheduled time")


def test_more_concurrent_requests_than_users_show_as_late(tmp_path, start_sim):
    sim = start_sim("--ttft-ms", "5", "--itl-ms", "20")
    path = write_trace(tmp_path / "t.jsonl", [0, 0, 0, 0, 0, 0], output_length=10)  # 6 at once, ~0.2 s each
    recs, out, run = headless(tmp_path / "out", "--host", sim.url, "-u", "2", "-r", "2", "-t", "60s",
                              "--dataset", "trace", "--dataset-path", path)
    assert len(recs) == 6 and all(r["t_send"] >= r["t_sched"] for r in recs)
    late = sum(r["t_send"] - r["t_sched"] > schedule.LATE_MS / 1000 for r in recs)
    assert late >= 4  # two at a time: the other four waited for a free user
    line = schedule_line(out)
    assert f"LATE: {late} (" in line and "found all 2 users busy (raise -u)" in line
    with open(os.path.join(run, "report.html")) as f:
        html = f.read()
    assert 'id="schedule"' in html and f"LATE: {late} (" in html


def test_two_processes_send_each_entry_once_and_none_early(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", [i * 100 for i in range(16)])
    recs, _, _ = headless(tmp_path / "out", "--processes", "2", "-u", "4", "-r", "4", "-t", "60s",
                          "--sim-ttft-ms", "5", "--sim-itl-ms", "1", "--dataset", "trace", "--dataset-path", path,
                          timeout=240)
    indices = [r["prompt_index"] for r in recs]
    assert sorted(indices) == list(range(16))  # each entry exactly once
    by_worker = {}
    for r in recs:
        by_worker.setdefault(r["worker"], []).append(r)
    assert len(by_worker) == 2
    for worker_recs in by_worker.values():  # each process on its own t0: its shard follows the trace
        assert len({r["prompt_index"] % 2 for r in worker_recs}) == 1
        check_on_time(worker_recs, [i * 0.1 for i in range(16)])


@pytest.mark.parametrize("name, n", [("mooncake_trace.jsonl", 40), ("burstgpt_trace.csv", 28)])
def test_the_shipped_traces_replay_headless(tmp_path, name, n):
    recs, out, _ = headless(tmp_path / "out", "-u", "8", "-r", "8", "-t", "60s", "--sim-ttft-ms", "5",
                            "--sim-itl-ms", "1", "--dataset", "trace",
                            "--dataset-path", os.path.join(DEMO, name), "--trace-speed", "10")
    assert len(recs) == n and all(r["success"] for r in recs)
    assert sorted(r["prompt_index"] for r in recs) == list(range(n))
    assert all(r["t_send"] >= r["t_sched"] for r in recs)
    assert schedule_line(out).startswith(f"Schedule: {n} requests sent")
    assert "Prefix cache: theoretical hit rate" in out


# -- by turn ------------------------------------------------------------------------------------------------

def test_by_turn_table_matches_the_records(tmp_path):
    recs, out, run = headless(tmp_path / "out", "-u", "3", "-r", "3", "--num-requests", "12", "--sim-ttft-ms", "5",
                              "--sim-itl-ms", "1", "--dataset", "conversations", "--dataset-path",
                              os.path.join(ROOT, "datasets", "conversation_demo", "conversations.jsonl"))
    (path,) = glob.glob(os.path.join(run, "performances", "*", "*_by_turn.csv"))
    with open(path) as f:
        table = list(csv.DictReader(f))
    turns = sorted({r["turn"] for r in recs})
    assert [int(row["Turn"]) for row in table] == turns
    for row in table:
        k = int(row["Turn"])
        mine = [r for r in recs if r["turn"] == k]
        ok = [r for r in mine if r["success"]]
        ttft = [r["events"][[e[1] for e in r["events"]].index("content")][0] * 1000 for r in ok]
        assert int(row["Requests"]) == len(mine) and int(row["Failed"]) == len(mine) - len(ok)
        assert float(row["TTFT Average (ms)"]) == pytest.approx(sum(ttft) / len(ttft), abs=1e-3)
        assert float(row["E2EL Average (ms)"]) == pytest.approx(
            sum(r["events"][-1][0] * 1000 for r in ok) / len(ok), abs=1e-3)
        assert float(row["InputTokens Average"]) == pytest.approx(
            sum(r["input_tokens"] for r in ok) / len(ok), abs=1e-3)
    assert "By turn (conversations" in out
    with open(os.path.join(run, "report.html")) as f:
        assert 'id="by-turn-table"' in f.read()


def test_by_turn_rows_by_hand_and_none_without_conversations(tmp_path):
    def r(turn, ttft, e2el, n_in, success=True, stage="total", error=""):
        return {**new_record(turn=turn, conversation="c", success=success, stage=stage, error=error,
                             input_tokens=n_in, output_tokens=2, t_send=1.0,
                             events=[[ttft, "content", 1], [e2el, "content", 1]] if success else [])}
    recs = [r(1, 0.1, 0.3, 10), r(1, 0.3, 0.5, 20), r(2, 0.05, 0.2, 40), r(2, 0, 0, 0, success=False, error="HTTP 500"),
            r(2, 0.9, 0.9, 99, stage="warmup"), r(1, 0, 0, 0, success=False, error="cancelled: the test stopped")]
    path = tmp_path / "records.jsonl"
    import orjson
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in recs))
    rows = by_turn.rows(str(path))
    assert [x[:3] for x in rows] == [[1, 2, 0], [2, 2, 1]]
    assert rows[0][3] == pytest.approx(200) and rows[0][4] == pytest.approx(200) and rows[0][5] == pytest.approx(400)
    assert rows[0][6] == pytest.approx(15) and rows[1][3] == pytest.approx(50) and rows[1][6] == pytest.approx(40)
    assert figures(recs[0])["ttft_s"] == pytest.approx(0.1)
    path.write_bytes(orjson.dumps(new_record(t_send=1.0, success=True)) + b"\n")
    assert by_turn.rows(str(path)) == [] and by_turn.write([], str(tmp_path), "x") is None


# -- the prefix line ----------------------------------------------------------------------------------------

def test_the_prefix_line_at_prepare_for_a_synthetic_shared_prefix(tmp_path):
    # 4 prompts of 40 tokens sharing 32 (no chat template in the default tokenizer: 40 tokens each), block 16:
    # the first is a miss, the next three are served the 2 shared blocks each: 96 of 160 = 60.0 %
    _, out, _ = headless(tmp_path / "out", "-u", "1", "-r", "1", "--num-requests", "4", "--num-prompts", "4",
                         "--prefix-tokens", "32", "--input-len", "fixed:40", "--max-out-len", "2",
                         "--sim-ttft-ms", "2", "--sim-itl-ms", "1")
    assert "Prefix cache: theoretical hit rate 60.0 % (block 16) for 4 requests in send order (96 of 160 prompt " \
           "tokens; " in out, out


def test_the_prefix_line_says_how_to_get_it_over_the_budget(monkeypatch):
    from benchmark import prefix_hits
    from benchmark.options import RunConfig
    monkeypatch.setattr(prefix_hits, "BUDGET_TOKENS", 10)
    prompts = [Prompt(0, [{"role": "user", "content": "word " * 20}])]
    figures = prefix_hits.plan(prompts, RunConfig(), "m", lambda: None)
    line = prefix_hits.prepare_line(figures, built_to_share=True)
    assert line.startswith("Prefix cache: theoretical hit rate not figured (about 20 prompt tokens")
    assert prefix_hits.prepare_line(figures, built_to_share=False) == ""  # nothing said where nothing was built


def test_an_open_loop_run_gets_the_schedule_line_of_its_queue_delay(tmp_path, start_sim):
    sim = start_sim("--ttft-ms", "5", "--itl-ms", "1")
    recs, out, run = headless(tmp_path / "out", "--host", sim.url, "-u", "4", "-r", "4", "-t", "3s",
                              "--request-rate", "10", "--max-out-len", "4")
    ok = [r for r in recs if r["success"] and r["t_sched"] is not None]
    lags = np.array([(r["t_send"] - r["t_sched"]) * 1000 for r in ok])
    line = schedule_line(out)
    assert line.startswith(f"Schedule: {len(ok)} requests sent after their scheduled time by "
                           f"p50 {np.percentile(lags, 50):.1f} ms")
    assert f"max {lags.max():.1f} ms" in line
