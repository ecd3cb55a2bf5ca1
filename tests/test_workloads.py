"""Workloads (benchmark/workloads/): the conversation workload's bodies, history, think time, truncation
and failed-turn rule, driven directly; then headless runs against the simulator: records carry
conversation/turn, a --processes 2 run keeps each conversation on one process, the llm_request event and
the request context, and a user locustfile subclassing LLMUser."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from time import perf_counter
from types import SimpleNamespace

import pytest

from benchmark.datasets.conversations import Conversation, Turn
from benchmark.options import RunConfig
from benchmark.tokens import encode_lens, load_tokenizer
from benchmark.workloads import conversations as conv_wl, independent, kind, needs_chat

from conftest import ROOT, run_dirs

SYSTEM = "You answer in one line."


def convs(n=3, turns=3, think=None):
    return [Conversation(f"c{i}", [Turn(f"question {i}.{k}", answer=f"recorded answer {i}.{k}", max_tokens=5 + k,
                                        think_s=think) for k in range(1, turns + 1)], SYSTEM)
            for i in range(n)]


def session(conversations, shard=(0, 1), **cfg):
    return SimpleNamespace(cfg=RunConfig(dataset="conversations", **cfg), shard=shard, conversations=conversations,
                           arrivals=None, stage="total", model="m", prompts=[], bodies=[])


def user(number=0):
    return SimpleNamespace(number=number, state={})


def answered(workload, u, request, text, success=True):
    workload.finished(u, request, {"success": success, "completion": text})


def messages(request):
    body = json.loads(request.body)
    assert body["messages"] == request.prompt.messages  # the body is what the prompt says
    return body["messages"]


@pytest.mark.parametrize("history", ["real", "recorded"])
def test_turn_k_holds_turns_before_it_with_the_right_answers(history):
    s = session(convs(1, 3), history=history)
    w, u = conv_wl.Workload(s), user()
    real = ["real one", "real two", "real three"]
    sent = []
    for k in range(3):
        r = w.next(u)
        assert (r.conversation, r.turn, r.prompt.index) == ("c0", k + 1, 0)
        assert json.loads(r.body)["max_tokens"] == 6 + k  # the turn's own max_tokens
        sent.append(messages(r))
        answered(w, u, r, real[k])
    answers = real if history == "real" else ["recorded answer 0.1", "recorded answer 0.2"]
    assert sent[0] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "question 0.1"}]
    assert sent[2] == [{"role": "system", "content": SYSTEM},
                       {"role": "user", "content": "question 0.1"}, {"role": "assistant", "content": answers[0]},
                       {"role": "user", "content": "question 0.2"}, {"role": "assistant", "content": answers[1]},
                       {"role": "user", "content": "question 0.3"}]
    assert sent[1] == sent[2][:3] + [{"role": "user", "content": "question 0.2"}]
    # the conversation is done: the user's next request is the next conversation's first turn (cycled)
    r = w.next(u)
    assert (r.conversation, r.turn) == ("c0~2", 1)


def test_recorded_history_without_a_recorded_answer_uses_the_real_one():
    c = Conversation("x", [Turn("q1"), Turn("q2")])
    w, u = conv_wl.Workload(session([c], history="recorded")), user()
    r = w.next(u)
    answered(w, u, r, "what the model said")
    assert messages(w.next(u))[1] == {"role": "assistant", "content": "what the model said"}


def test_think_time_fixed_overrides_the_data_and_the_data_applies_otherwise():
    for think_time, expected in ((None, 0.3), (0.1, 0.1)):
        w, u = conv_wl.Workload(session(convs(1, 2, think=0.3), think_time=think_time)), user()
        t0 = perf_counter()
        answered(w, u, w.next(u), "a")
        assert perf_counter() - t0 < 0.05  # turn 1: no think time
        t1 = perf_counter()
        r = w.next(u)
        waited = perf_counter() - t1
        assert r.turn == 2
        assert expected - 0.01 <= waited < expected + 0.25, (think_time, waited)


def test_max_history_tokens_drops_the_oldest_whole_turns_and_keeps_the_system_prompt():
    tok = load_tokenizer(None)
    n = lambda text: encode_lens(tok, [text])[0]  # noqa: E731
    c = Conversation("long", [Turn(f"question number {k} " + "word " * 10 * k) for k in range(1, 5)], SYSTEM)
    answers = [f"answer {k} " + "blah " * 5 * k for k in range(1, 4)]
    pair = [n(c.turns[k].user) + n(answers[k]) for k in range(3)]
    fixed = n(SYSTEM) + n(c.turns[3].user)
    cap = fixed + pair[2] + pair[1]  # turns 2 and 3 fit exactly; turn 1 must go
    w, u = conv_wl.Workload(session([c], max_history_tokens=cap)), user()
    for k in range(3):
        answered(w, u, w.next(u), answers[k])
    m = messages(w.next(u))
    assert m[0] == {"role": "system", "content": SYSTEM}
    assert [x["content"] for x in m[1:]] == [c.turns[1].user, answers[1], c.turns[2].user, answers[2], c.turns[3].user]
    w, u = conv_wl.Workload(session([c], max_history_tokens=cap - 1)), user()  # one token less: turn 2 goes too
    for k in range(3):
        answered(w, u, w.next(u), answers[k])
    assert [x["content"] for x in messages(w.next(u))[1:]] == [c.turns[2].user, answers[2], c.turns[3].user]


def test_a_failed_turn_ends_its_conversation():
    w, u = conv_wl.Workload(session(convs(2, 3))), user()
    r = w.next(u)
    answered(w, u, r, "ok")
    r = w.next(u)
    assert (r.conversation, r.turn) == ("c0", 2)
    answered(w, u, r, "", success=False)
    r = w.next(u)
    assert (r.conversation, r.turn) == ("c1", 1)  # c0's turn 3 is never sent
    assert messages(r)[-1]["content"] == "question 1.1" and len(messages(r)) == 2


def test_conversations_are_sharded_by_index_and_num_requests_counts_turns():
    s = session(convs(5, 2), shard=(1, 2), num_requests=7)  # this process: 7 // 2 = 3 turns
    w = conv_wl.Workload(s)
    users = [user(0), user(1)]
    seen = []
    for _ in range(4):
        for u in users:
            r = w.next(u)
            if r is None:
                continue
            seen.append((r.conversation, r.turn, u.number))
            answered(w, u, r, "a")
    assert seen == [("c1", 1, 0), ("c3", 1, 1), ("c1", 2, 0)]  # odd indices only, 3 turns, then None


def test_open_loop_arrivals_start_conversations_and_later_turns_follow_their_answers():
    class Arrivals:  # what session.arrivals gives: the next arrival's scheduled epoch time
        def __init__(self):
            self.calls = 0

        def next(self):
            self.calls += 1
            return 1000.0 + self.calls

    s = session(convs(2, 3), think_time=0.05)
    s.arrivals = Arrivals()
    w, u = conv_wl.Workload(s), user()
    sched = []
    for _ in range(4):
        r = w.next(u)
        sched.append((r.conversation, r.turn, r.t_sched))
        answered(w, u, r, "a")
    assert s.arrivals.calls == 2  # one arrival per new conversation, none per later turn
    assert sched[0] == ("c0", 1, 1001.0) and sched[3] == ("c1", 1, 1002.0)
    assert [t for _, _, t in sched[1:3]] == sorted(t for _, _, t in sched[1:3])
    assert sched[1][2] > 1e9  # turn 2: due after its think time (an epoch time), not an arrival


def test_kind_and_the_chat_check_point():
    assert kind(RunConfig(dataset="conversations")) == "conversations"
    assert kind(RunConfig(dataset="sharegpt", multi_turn=True)) == "conversations"
    assert kind(RunConfig(dataset="sharegpt")) == "independent"
    assert needs_chat(RunConfig(dataset="conversations")) and not needs_chat(RunConfig())
    assert independent.Workload.defer and not conv_wl.Workload.defer


@pytest.mark.parametrize("values, says", [
    ({"dataset": "synthetic", "multi_turn": True}, "--multi-turn: runs the conversations of --dataset sharegpt"),
    ({"dataset": "conversations", "history": "model"}, "--history: expected one of real, recorded"),
    ({"dataset": "conversations", "mode": "accuracy"}, "no gold answers to score"),
    ({"dataset": "conversations", "think_time": "-1"}, "--think-time"),
    ({"dataset": "conversations", "max_history_tokens": "lots"}, "--max-history-tokens"),
    ({"dataset": "conversations", "backend": "tgi"}, "--backend tgi sends one text prompt: conversations"),
    ({"dataset": "sharegpt", "multi_turn": True, "backend": "openai"}, "--backend openai sends one text prompt"),
])
def test_bad_conversation_options_say_one_line(values, says):
    from test_cli_edges import options
    from benchmark.options import ConfigError
    with pytest.raises(ConfigError, match=says.replace("-", r"\-")):
        RunConfig.from_options(options(**values))
    cfg = RunConfig.from_options(options(dataset="conversations", think_time="0.5", max_history_tokens="100",
                                         history="recorded"))
    assert (cfg.think_time, cfg.max_history_tokens, cfg.history) == (0.5, 100, "recorded")


def test_a_conversation_run_without_its_file_stops_with_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--headless", "--output-dir",
                          str(tmp_path), "--dataset", "conversations", "--dataset-path", str(tmp_path / "no.jsonl")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 2
    assert "llm-testing: error: --dataset-path" in res.stderr and "Traceback" not in res.stderr


# -- headless runs against the simulator ------------------------------------------------------------------

def write_conversations(path, n=6, turns=3, think=None):
    with open(path, "w") as f:
        for c in convs(n, turns, think):
            # the documented file format (datasets/conversations.py): assistant, think_time
            turns = [{k: v for k, v in (("user", t.user), ("assistant", t.answer), ("max_tokens", t.max_tokens),
                                        ("think_time", t.think_s)) if v is not None} for t in c.turns]
            f.write(json.dumps({"id": c.id, **({"system": c.system} if c.system else {}), "turns": turns}) + "\n")
    return str(path)


def write_answers(path, n=6, turns=3):
    """Simulator canned answers (by the last user message): each turn's real answer is k+2 words long, the
    recorded one is 3 words: the input token counts (simulator usage: words of all messages) tell them apart."""
    with open(path, "w") as f:
        for i in range(n):
            for k in range(1, turns + 1):
                f.write(json.dumps({"question": f"question {i}.{k}",
                                    "completion": " ".join(["real"] * (k + 2))}) + "\n")
    return str(path)


def headless(out, locustfile, *args, env=None, timeout=180, codes=(0,)):
    cmd = [sys.executable, "-m", "locust", "-f", locustfile, "--headless", "--output-dir", str(out),
           "--only-summary", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                         env={**os.environ, **(env or {})})
    assert res.returncode in codes, res.stderr[-3000:]
    (run,) = run_dirs(out)
    with open(os.path.join(run, "records.jsonl")) as f:
        return [json.loads(line) for line in f], res


LOCUSTFILE = os.path.join(ROOT, "locustfile.py")
CAPTURE = os.path.join(ROOT, "tests", "locustfiles", "capture.py")
OWN = os.path.join(ROOT, "tests", "locustfiles", "own_prompts.py")


def words(text):
    return len(text.split())


@pytest.mark.parametrize("history", ["real", "recorded"])
def test_run_records_carry_conversation_and_turn_and_the_history_sent(tmp_path, start_sim, history):
    data = write_conversations(tmp_path / "c.jsonl")
    sim = start_sim("--ttft-ms", "2", "--itl-ms", "1", "--answers", write_answers(tmp_path / "a.jsonl"))
    recs, _ = headless(tmp_path / "out", LOCUSTFILE, "--host", sim.url, "-u", "2", "-r", "2",
                       "--num-requests", "12", "--dataset", "conversations", "--dataset-path", data,
                       "--history", history)
    assert len(recs) == 12 and all(r["success"] for r in recs)
    by_conv = defaultdict(list)
    for r in recs:
        by_conv[r["conversation"]].append(r)
    assert len(by_conv) == 4
    for cid, turns in by_conv.items():
        i = int(cid[1:])
        assert [r["turn"] for r in turns] == [1, 2, 3] and {r["prompt_index"] for r in turns} == {i}
        assert len({r["user"] for r in turns}) == 1  # one user holds a conversation
        # input tokens (simulator usage: words of every message) = system + earlier turns + this question
        expected, history_words = [], 0
        for k, r in enumerate(turns, 1):
            expected.append(words(SYSTEM) + history_words + words(f"question {i}.{k}"))
            answer = r["completion"] if history == "real" else f"recorded answer {i}.{k}"
            assert r["completion"] == " ".join(["real"] * (k + 2))
            history_words += words(f"question {i}.{k}") + words(answer)
        assert [r["input_tokens"] for r in turns] == expected, (cid, history)


def test_two_processes_never_move_a_conversation(tmp_path):
    data = write_conversations(tmp_path / "c.jsonl", n=8, turns=3)
    recs, _ = headless(tmp_path / "out", LOCUSTFILE, "--processes", "2", "-u", "4", "-r", "4",
                       "--num-requests", "24", "--sim-ttft-ms", "2", "--sim-itl-ms", "1",
                       "--dataset", "conversations", "--dataset-path", data, timeout=240)
    assert len(recs) == 24 and all(r["success"] for r in recs)
    workers = defaultdict(set)
    for r in recs:
        workers[r["conversation"]].add((r["worker"], r["user"]))
    assert len({w for r in recs for w in [r["worker"]]}) == 2  # both processes sent
    assert all(len(w) == 1 for w in workers.values()), workers  # one process, one user per conversation
    # each process held every other conversation: the shards split by index
    per_worker = defaultdict(set)
    for r in recs:
        per_worker[r["worker"]].add(int(r["conversation"][1:]) % 2)
    assert sorted(len(v) for v in per_worker.values()) == [1, 1] and len(set().union(*per_worker.values())) == 2


def test_llm_request_event_and_request_context_in_a_user_locustfile(tmp_path):
    data = write_conversations(tmp_path / "c.jsonl", n=3, turns=2)
    events_file, bodies_file = tmp_path / "events.jsonl", tmp_path / "bodies.jsonl"
    recs, res = headless(tmp_path / "out", CAPTURE, "-u", "1", "-r", "1", "--num-requests", "4",
                         "--sim-ttft-ms", "20", "--sim-itl-ms", "5", "--max-out-len", "6",
                         "--dataset", "conversations", "--dataset-path", data,
                         env={"EVENTS_FILE": str(events_file), "BODIES_FILE": str(bodies_file)})
    got = [json.loads(line) for line in open(events_file)]
    llm = [g for g in got if g["event"] == "llm_request"]
    ctx = [g for g in got if g["event"] == "request"]
    assert len(llm) == len(ctx) == len(recs) == 4  # once per request, our listeners not doubled
    by_id = {r["id"]: r for r in recs}
    for e, c in zip(llm, ctx):
        rec = by_id[e["id"]]
        tok = [ev[0] for ev in rec["events"] if ev[1] == "content"]
        assert e["ttft_s"] == pytest.approx(tok[0]) and e["ttft_s"] >= 0.015  # the simulator's 20 ms TTFT
        assert e["itl_s"] == pytest.approx([b - a for a, b in zip(tok, tok[1:])])
        assert e["tpot_s"] == pytest.approx((rec["events"][-1][0] - tok[0]) / (rec["output_tokens"] - 1))
        assert (e["output_tokens"], e["input_tokens"]) == (rec["output_tokens"], rec["input_tokens"])
        assert (e["conversation"], e["turn"], e["stage"], e["success"]) == (rec["conversation"], rec["turn"],
                                                                           "total", True)
        assert {k: c[k] for k in ("ttft_s", "tpot_s", "conversation", "turn")} == \
               {k: e[k] for k in ("ttft_s", "tpot_s", "conversation", "turn")}
    # the subclass's send saw every body: turn 2 carries turn 1's answer as the model gave it
    bodies = [json.loads(line) for line in open(bodies_file)]
    first = {(b["conversation"], b["turn"]): b["messages"] for b in bodies}
    rec1 = next(r for r in recs if (r["conversation"], r["turn"]) == ("c0", 1))
    assert first[("c0", 2)][2] == {"role": "assistant", "content": rec1["completion"]}


def test_a_subclass_with_its_own_prompt_source(tmp_path):
    recs, res = headless(tmp_path / "out", OWN, "-u", "2", "-r", "2",
                         "--sim-ttft-ms", "2", "--sim-itl-ms", "1", "--max-out-len", "4")
    assert "OwnUser" in res.stderr and "ChatUser" not in res.stderr  # only the subclass was spawned
    assert len(recs) == 6 and all(r["success"] for r in recs)
    # its own prompts: index i is "say i" repeated i+1 times (simulator usage counts words)
    assert sorted(r["prompt_index"] for r in recs) == [0, 1, 2, 3, 4, 5]
    assert all(r["input_tokens"] == 2 * (r["prompt_index"] + 1) for r in recs)
    assert all(r["output_tokens"] == 4 for r in recs)


def test_figures_of_a_record():
    from benchmark.records import figures, new_record
    rec = new_record(success=True, output_tokens=3, input_tokens=9, stage="s", conversation="c", turn=2,
                     events=[[0.0, "role", 0], [0.1, "content", 2], [0.15, "reasoning", 1], [0.3, "content", 2],
                             [0.31, "usage", 0]])
    f = figures(rec)
    assert f["ttft_s"] == 0.1 and f["e2el_s"] == 0.31
    assert f["itl_s"] == pytest.approx([0.05, 0.15]) and f["tpot_s"] == pytest.approx((0.31 - 0.1) / 2)
    assert (f["conversation"], f["turn"], f["stage"], f["error"]) == ("c", 2, "s", None)
    failed = figures(new_record(success=False, error="HTTP 500", events=[[0.2, "other", 0]]))
    assert (failed["ttft_s"], failed["e2el_s"], failed["itl_s"], failed["error"]) == (None, None, [], "HTTP 500")


def test_the_session_and_workloads_import_no_locust_and_the_wiring_registers_once():
    no_locust = ("import sys, benchmark.session, benchmark.workloads.conversations, benchmark.workloads.independent\n"
                 "import benchmark.workloads.trace\n"
                 "from benchmark.options import parse_step_time, parse_steps\n"  # --steps parsed without Locust
                 "assert parse_steps('1,2') == [1, 2] and parse_step_time('1m30s') == 90.0\n"
                 "assert not [m for m in sys.modules if m.split('.')[0] == 'locust'], 'locust imported'\n"
                 "print('ok')\n")
    once = ("import locust, importlib.util, benchmark.user as u\n"
            "from locust import events\n"
            "n = len(events.test_start._handlers), len(events.init._handlers)\n"
            "spec = importlib.util.spec_from_file_location('benchmark.user_again', u.__file__)\n"
            "again = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(again)\n"  # the same file loaded under another name
            "assert (len(events.test_start._handlers), len(events.init._handlers)) == n, 'wired twice'\n"
            "assert again.session is u.session and again.LLMUser.abstract\n"
            "print('ok')\n")
    for code in (no_locust, once):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert res.stdout.strip() == "ok", res.stderr[-2000:]


def test_a_failed_turn_ends_its_conversation_in_a_run(tmp_path, start_sim):
    data = write_conversations(tmp_path / "c.jsonl", n=6, turns=3)
    sim = start_sim("--ttft-ms", "2", "--itl-ms", "1", "--fault", "http-500", "--fault-every", "4")
    recs, _ = headless(tmp_path / "out", LOCUSTFILE, "--host", sim.url, "-u", "1", "-r", "1",
                       "--num-requests", "10", "--dataset", "conversations", "--dataset-path", data,
                       codes=(1,))  # Locust's exit code when requests failed
    recs.sort(key=lambda r: r["t_send"])
    failed = [k for k, r in enumerate(recs) if not r["success"]]
    assert len(recs) == 10 and len(failed) >= 2, [(r["conversation"], r["turn"], r["success"]) for r in recs]
    for k in failed:
        cid = recs[k]["conversation"]
        assert not [r for r in recs[k + 1:] if r["conversation"] == cid]  # none of its later turns is sent
        if k + 1 < len(recs):
            assert recs[k + 1]["turn"] == 1 and recs[k + 1]["conversation"] != cid  # the next one starts
    done = {r["conversation"] for r in recs if r["turn"] == 3 and r["success"]}
    assert done  # the conversations without a failure ran to their last turn


def test_sharegpt_multi_turn_runs_whole_conversations(tmp_path, start_sim):
    """--dataset sharegpt --multi-turn: each ShareGPT conversation sent turn by turn, the recorded
    replies in the history (--history recorded), so every turn's prompt holds the ones before it."""
    item = lambda cid, *pairs: {"id": cid, "conversations": [  # noqa: E731
        {"from": f, "value": v} for q, a in pairs for f, v in (("human", q), ("gpt", a))]}
    data = tmp_path / "sg.json"
    data.write_text(json.dumps([item("a", ("one two", "three four five"), ("six", "seven")),
                                item("b", ("alpha", "beta gamma"), ("delta epsilon", "zeta"), ("eta", "theta"))]))
    sim = start_sim("--ttft-ms", "2", "--itl-ms", "1")
    recs, res = headless(tmp_path / "out", LOCUSTFILE, "--host", sim.url, "-u", "1", "-r", "1",
                         "--num-requests", "5", "--dataset", "sharegpt", "--dataset-path", str(data),
                         "--multi-turn", "--history", "recorded")
    assert all(r["success"] for r in recs) and len(recs) == 5
    turns = defaultdict(list)
    for r in recs:
        turns[r["conversation"]].append((r["turn"], r["input_tokens"]))
    # simulator usage counts the words of every message: the question plus the recorded history
    assert sorted(turns) == ["a", "b"] and turns["a"] == [(1, 2), (2, 2 + 3 + 1)], turns
    assert turns["b"] == [(1, 1), (2, 1 + 2 + 2), (3, 1 + 2 + 2 + 1 + 1)], turns
