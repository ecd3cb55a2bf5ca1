"""Issue 16, datasets side: timestamped traces (Mooncake JSONL, Azure and BurstGPT CSV), prompts built from
hash_ids at the token level, conversations (own JSONL/CSV, ShareGPT whole), prefix-group synthetic prompts
and the theoretical prefix-cache hit rate."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from benchmark import prefix_cache
from benchmark.datasets import DatasetError, Prompts, add_arguments, describe, load, parse_options
from benchmark.datasets import conversations, sharegpt, trace
from benchmark.datasets.trace import TraceRequest, prompt_for
from benchmark.prefix_cache import PrefixCache, block_keys, max_hit_blocks, prompt_token_ids, theoretical_hit_rate
from benchmark.tokens import encode_lens, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOONCAKE = os.path.join(ROOT, "datasets", "trace_demo", "mooncake_trace.jsonl")
BURSTGPT = os.path.join(ROOT, "datasets", "trace_demo", "burstgpt_trace.csv")
CONVS = os.path.join(ROOT, "datasets", "conversation_demo", "conversations.jsonl")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def jsonl(tmp_path, name, rows):
    return write(tmp_path, name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def lcp(a, b) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


# ------------------------------------------------------------------------------------------ trace files

def test_mooncake_jsonl_fields_sorted_and_in_seconds(tmp_path):
    path = jsonl(tmp_path, "t.jsonl", [
        {"timestamp": 3000, "input_length": 600, "output_length": 7, "hash_ids": [1, 2]},
        {"timestamp": 1000, "input_text": "Hi there", "output_length": 3, "hash_ids": [9]},
        {"timestamp": 1000, "input_length": 20},
        {"timestamp": 1500.5, "input_length": 512, "output_length": 1, "hash_ids": [1]},
    ])
    t = trace.load(path)
    assert [r.t for r in t] == [0.0, 0.0, 0.5005, 2.0]        # from the earliest, ms -> s, ties in file order
    assert [r.index for r in t] == [0, 1, 2, 3]
    assert t[0].text == "Hi there" and t[0].hash_ids is None  # input_text wins over hash_ids (AISBench)
    assert (t[1].input_tokens, t[1].output_tokens, t[1].hash_ids, t[1].text) == (20, 0, None, None)
    assert t[2].hash_ids == (1,) and t[3].hash_ids == (1, 2) and t[3].output_tokens == 7
    assert t.source.startswith("trace, Mooncake/AISBench JSONL") and t.dropped == {}


@pytest.mark.parametrize("line, message", [
    ("{nope", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ({"input_length": 10}, "'timestamp' (ms since the trace's start, >= 0) is missing"),
    ({"timestamp": -5, "input_length": 10}, "'timestamp' (ms since the trace's start, >= 0) is not a valid time: -5"),
    ({"timestamp": "soon", "input_length": 10}, "is not a valid time: 'soon'"),
    ({"timestamp": 0, "output_length": 5}, "needs 'input_length' (tokens) or 'input_text'"),
    ({"timestamp": 0, "input_length": 0}, "'input_length' must be an integer of at least 1; got 0"),
    ({"timestamp": 0, "input_length": 10, "output_length": 2.5}, "'output_length' must be an integer"),
    ({"timestamp": 0, "input_length": 512, "hash_ids": [1, 2]},
     "input_length 512 does not fit 2 hash_ids of 512 tokens (needs 513..1024)"),
    ({"timestamp": 0, "input_length": 1025, "hash_ids": [1, 2]}, "does not fit 2 hash_ids"),
    ({"timestamp": 0, "input_length": 10, "hash_ids": "1,2"}, "'hash_ids' must be a list of integers"),
    ({"timestamp": 0, "input_text": ""}, "'input_text' must be non-empty text"),
])
def test_mooncake_bad_lines_are_one_line_with_file_and_line(tmp_path, line, message):
    path = jsonl(tmp_path, "bad.jsonl", [{"timestamp": 0, "input_length": 5}, "", line])
    with pytest.raises(DatasetError) as e:
        trace.load(path)
    msg = one_line(e)
    assert msg.startswith(f"{path}:3: ") and message in msg, msg


def test_azure_csv_datetime_timestamps(tmp_path):
    path = write(tmp_path, "AzureLLMInferenceTrace_conv.csv",
                 "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:15:46.6805900,374,44\n"
                 "2023-11-16 18:15:50.9951690,396,109\n"
                 "2023-11-16 18:15:46.1805900,879,0\n"
                 "2023-11-16 18:16:46.6805900,1000,12\n")
    t = trace.load(path)
    # the 0-token answer is left out (and counted); time 0 stays the trace's earliest row, even dropped
    assert [round(r.t, 6) for r in t] == [0.5, 4.814579, 60.5]
    assert [(r.input_tokens, r.output_tokens) for r in t] == [(374, 44), (396, 109), (1000, 12)]
    assert t.dropped == {"GeneratedTokens 0 (a failed request)": 1}
    assert "Azure LLM inference CSV" in t.source


def test_burstgpt_csv_speed_start_and_window():
    # the shipped BurstGPT-style file: the expected schedule is computed from its rows here
    rows = [line.split(",") for line in open(BURSTGPT).read().splitlines()[1:]]
    times = [float(r[0]) for r in rows]
    kept = [(float(r[0]), int(r[2]), int(r[3])) for r in rows if int(r[3]) > 0]
    t0 = min(times)
    full = trace.load(BURSTGPT)
    assert len(full) == len(kept) == 28 and full.dropped == {"Response tokens 0 (a failed request)": 2}
    assert [r.t for r in full] == pytest.approx([a - t0 for a, _, _ in kept])
    assert [(r.input_tokens, r.output_tokens) for r in full] == [(b, c) for _, b, c in kept]
    fast = trace.load(BURSTGPT, speed=2.0)
    assert [r.t for r in fast] == pytest.approx([r.t / 2 for r in full])
    win = trace.load(BURSTGPT, speed=2.0, start_s=5.0, window_s=10.0)
    expect = [(a - t0 - 5.0) / 2 for a, _, _ in kept if 5.0 <= a - t0 < 15.0]
    assert len(expect) >= 3 and [r.t for r in win] == pytest.approx(expect)
    assert [r.index for r in win] == list(range(len(expect)))
    assert len(trace.load(BURSTGPT, num=4)) == 4


def test_window_edges_are_half_open(tmp_path):
    path = jsonl(tmp_path, "w.jsonl", [{"timestamp": ms, "input_length": 5} for ms in (0, 1000, 2000, 3000)])
    assert [r.t for r in trace.load(path, start_s=1.0, window_s=2.0)] == [0.0, 1.0]   # [1 s, 3 s)
    assert [r.t for r in trace.load(path, speed=0.5, start_s=1.0)] == [0.0, 2.0, 4.0]


@pytest.mark.parametrize("kwargs, message", [
    ({"speed": 0}, "--trace-speed: must be positive (2 = twice as fast); got 0"),
    ({"speed": float("nan")}, "--trace-speed: expected a finite number; got nan"),
    ({"start_s": -1}, "--trace-start: seconds into the trace, must not be negative; got -1"),
    ({"window_s": 0}, "--trace-window: seconds of the trace to replay, must be positive; got 0"),
    ({"start_s": 50}, "no request in the window [50 s, end) of a trace 31.452 s long"),
])
def test_schedule_errors(kwargs, message):
    with pytest.raises(DatasetError) as e:
        trace.load(BURSTGPT, **kwargs)
    assert message in one_line(e)


@pytest.mark.parametrize("text, message", [
    ("", "empty file (expected a header row)"),
    ("time,in,out\n1,2,3\n", "unknown trace columns (time, in, out); expected Azure's TIMESTAMP, ContextTokens, "
                             "GeneratedTokens or BurstGPT's Timestamp, Request tokens, Response tokens"),
    ("Timestamp,Request tokens,Response tokens\n1,2,3\nsoon,2,3\n",
     ":3: column 'Timestamp' must be seconds (a number >= 0); got 'soon'"),
    ("Timestamp,Request tokens,Response tokens\n1,2,3\n2,2.5,3\n",
     ":3: column 'Request tokens' must be a whole number of tokens; got '2.5'"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,2,3\nyesterday,2,3\n",
     ":3: column 'TIMESTAMP' must be a date and time"),
])
def test_csv_bad_input_is_one_line(tmp_path, text, message):
    path = write(tmp_path, "t.csv", text)
    with pytest.raises(DatasetError) as e:
        trace.load(path)
    assert message in one_line(e)


def test_trace_path_errors(tmp_path):
    for path, message in ((str(tmp_path / "none.jsonl"), "no such file"), (str(tmp_path), "is a folder"),
                          (write(tmp_path, "t.txt", "x"), "expected a trace .jsonl")):
        with pytest.raises(DatasetError) as e:
            trace.load(path)
        assert message in one_line(e)


# ------------------------------------------------------------------------------------------ hash_ids -> tokens

def expected_lcp_floor(a: TraceRequest, b: TraceRequest, block=512) -> int:
    """Tokens two hash-id prompts must share: their equal leading blocks (a partial block counts its
    own length and ends the run)."""
    n = 0
    for k, (x, y) in enumerate(zip(a.hash_ids, b.hash_ids)):
        if x != y:
            break
        la = block if k < len(a.hash_ids) - 1 else a.input_tokens - block * k
        lb = block if k < len(b.hash_ids) - 1 else b.input_tokens - block * k
        n += min(la, lb)
        if la != block or lb != block:
            break
    return n


def test_equal_hash_ids_give_equal_token_blocks_and_different_ones_differ(tok):
    reqs = [TraceRequest(0, 0.0, 1300, 5, (7, 8, 9)), TraceRequest(1, 0.1, 1100, 5, (7, 8, 4)),
            TraceRequest(2, 0.2, 700, 5, (7, 3)), TraceRequest(3, 0.3, 1024, 5, (7, 8)),
            TraceRequest(4, 0.4, 200, 5, (7,)), TraceRequest(5, 0.5, 1536, 5, (5, 8, 9))]
    toks = [ids(tok, prompt_for(r, tok).messages[0]["content"]) for r in reqs]
    assert [len(t) for t in toks] == [r.input_tokens for r in reqs]          # exact lengths
    # block by block: equal ids at the same position are the same 512 tokens ...
    assert toks[0][:512] == toks[1][:512] == toks[2][:512] == toks[3][:512] == toks[4][:200] + toks[0][200:512]
    assert toks[0][512:1024] == toks[1][512:1024] == toks[3][512:1024]
    assert toks[4] == toks[0][:200]                                          # a partial block: its first tokens
    # ... and different ids differ within their first 5 tokens (the id's spelling)
    for a, b, at in ((0, 1, 1024), (0, 2, 512), (0, 5, 0)):
        assert at <= lcp(toks[a], toks[b]) < at + trace.ID_WORDS, (a, b)
    # the same id deeper in another prompt: the same tokens there too (block 8 at 512 in 0, 1 and 5)
    assert toks[5][512:1024] == toks[0][512:1024] and toks[5][1024:] == toks[0][1024:1300] + toks[5][1300:]


def test_shipped_trace_prefix_sharing_is_exact_at_the_token_level(tok):
    reqs = trace.load(MOONCAKE)
    assert len(reqs) == 40 and reqs[-1].t == pytest.approx(18.734)
    prompts = load("trace", MOONCAKE, tokenizer=tok)
    assert isinstance(prompts, Prompts) and len(prompts) == 40
    assert [p.t_sched_s for p in prompts] == [r.t for r in reqs]
    assert [p.max_tokens for p in prompts] == [r.output_tokens or None for r in reqs]
    toks = [ids(tok, p.messages[0]["content"]) for p in prompts]
    built = [i for i, r in enumerate(reqs) if r.text is None]
    assert [len(toks[i]) for i in built] == [reqs[i].input_tokens for i in built]
    texts = {reqs[i].text for i in range(40) if reqs[i].text}
    assert len(texts) == 2 and texts <= {p.messages[0]["content"] for p in prompts}   # input_text as is
    hashed = [i for i in built if reqs[i].hash_ids]
    shared = 0
    for x in hashed:
        for y in hashed:
            if x < y:
                floor = expected_lcp_floor(reqs[x], reqs[y])
                shared += floor > 0
                assert floor <= lcp(toks[x], toks[y]) < floor + trace.ID_WORDS, (x, y)
    assert shared > 100     # the file has shared prefixes to test
    # requests with neither hash_ids nor input_text: unique prompts
    plain = [i for i in built if not reqs[i].hash_ids]
    assert len(plain) == 2 and all(lcp(toks[i], toks[j]) < trace.ID_WORDS for i in plain for j in built if i != j)


def test_trace_through_options(tok):
    p, _ = parser()
    opts = parse_options(p.parse_args(["--dataset", "trace", "--trace-speed", "4", "--trace-start", "2",
                                       "--trace-window", "8"]))
    assert (opts["trace_speed"], opts["trace_start"], opts["trace_window"]) == (4.0, 2.0, 8.0)
    assert "multi_turn" not in opts and "prefix_groups" not in opts   # defaults: left out of the config
    prompts = load("trace", MOONCAKE, tokenizer=tok, **opts)
    expect = trace.load(MOONCAKE, speed=4, start_s=2, window_s=8)
    assert [q.t_sched_s for q in prompts] == [r.t for r in expect] and 0 < len(prompts) < 40
    assert all(0 <= q.t_sched_s < 2.0 for q in prompts)     # an 8 s window at 4x: 2 s of schedule
    assert "window 2 s to 10 s, speed x4" in describe(prompts)


# ------------------------------------------------------------------------------------------ hit rate

def test_hit_rate_by_hand():
    a = list(range(1, 11))                 # 10 tokens: blocks [1-4] [5-8], 2 left over
    b = list(range(1, 9)) + [99, 98]
    d, e = [1, 2, 3, 4], [5, 6, 7, 8]
    # a: 0; b: 8 (both blocks); a again: 8; d: 0 (a whole-prompt hit leaves the last token to compute:
    # at most (4-1)//4 = 0 blocks); e: 0 ([5-8] is cached only under the parent [1-4])
    assert theoretical_hit_rate([a, b, a, d, e], block=4) == (16 / 38, 16, 38)
    # another order, another rate: e, d cache root blocks; a hits [1-4] only; b, a hit both
    assert theoretical_hit_rate([e, d, a, b, a], block=4) == (20 / 38, 20, 38)
    assert theoretical_hit_rate([a, a, a], block=16) == (0.0, 0, 30)     # no full block
    assert theoretical_hit_rate([[7] * 33] * 2, block=16) == (32 / 66, 32, 66)
    assert theoretical_hit_rate([], block=16) == (0.0, 0, 0)
    cache = PrefixCache(None)  # a: 2 full blocks of 4, stored; then found again, capped by the last-token rule
    assert cache.lookup_and_insert(block_keys(a, 4), max_hit_blocks(len(a), 4)) == 0
    assert cache.lookup_and_insert(block_keys(a, 4), max_hit_blocks(len(a), 4)) == 2
    assert cache.lookup_and_insert(block_keys(a + [0] * 6, 4), max_hit_blocks(len(a) + 6, 4)) == 2
    assert prefix_cache.describe([a, b, a, d, e], block=4) == (
        "Prefix cache: theoretical hit rate 42.1 % (block 4) for the prompts in send order "
        "(16 of 38 prompt tokens)")


def lcp_hit_rate(token_lists, block):
    """The same figure another way: a prompt's hit is its longest common prefix with any earlier prompt,
    capped at len - 1, floored to whole blocks."""
    cached = total = 0
    for i, t in enumerate(token_lists):
        best = max((lcp(t, token_lists[j]) for j in range(i)), default=0)
        cached += max(0, min(best, len(t) - 1)) // block * block
        total += len(t)
    return cached, total


def test_hit_rate_on_the_shipped_trace_and_conversations(tok):
    prompts = load("trace", MOONCAKE, tokenizer=tok)
    toks = prompt_token_ids(tok, prompts)
    for block in (16, 512):
        rate, cached, total = theoretical_hit_rate(toks, block)
        assert (cached, total) == lcp_hit_rate(toks, block) and total == sum(map(len, toks))
        assert 0.3 < rate < 0.95
    # conversations sent with their recorded answers: turn k's prompt holds turns 1..k-1
    convs = conversations.load(CONVS)
    histories = []
    for c in convs:
        messages = [{"role": "system", "content": c.system}] if c.system else []
        for turn in c.turns:
            messages.append({"role": "user", "content": turn.user})
            histories.append(type(prompts[0])(len(histories), list(messages)))
            messages.append({"role": "assistant", "content": turn.answer or ""})
    toks = prompt_token_ids(tok, histories)
    rate, cached, total = theoretical_hit_rate(toks, 16)
    assert (cached, total) == lcp_hit_rate(toks, 16) and cached > 0


# ------------------------------------------------------------------------------------------ prefix groups

def test_prefix_groups_and_ratio_share_exactly_the_asked_prefix(tok):
    prompts = load("synthetic", None, 30, "fixed:200", seed=3, tokenizer=tok, prefix_ratio=0.25, prefix_groups=3)
    toks = [ids(tok, p.messages[0]["content"]) for p in prompts]
    assert all(len(t) == 200 for t in toks)
    for i in range(30):
        for j in range(i + 1, 30):
            # same group (round-robin): exactly the 50 shared tokens; other groups: not even the first
            assert lcp(toks[i], toks[j]) == (50 if i % 3 == j % 3 else 0), (i, j)
    # by hand: 27 prompts after each group's first hit 48 tokens (50 floored to blocks of 16) of 200
    assert theoretical_hit_rate(toks, 16) == (27 * 48 / 6000, 27 * 48, 6000)
    assert "shared prefix 50 (0.25 of the mean input) in 3 groups" in describe(prompts)
    # --prefix-tokens with groups; a length distribution: the ratio is of the mean input length
    prompts = load("synthetic", None, 12, "uniform:100:300", seed=1, tokenizer=tok, prefix_ratio=0.3,
                   prefix_groups=2)
    toks = [ids(tok, p.messages[0]["content"]) for p in prompts]
    assert all(lcp(toks[i], toks[i + 2]) == 60 and lcp(toks[i], toks[i + 1]) == 0 for i in range(10))
    prompts = load("synthetic", None, 8, "fixed:64", seed=1, tokenizer=tok, prefix_tokens=17, prefix_groups=4)
    toks = [ids(tok, p.messages[0]["content"]) for p in prompts]
    assert [lcp(toks[0], t) for t in toks[1:]] == [0, 0, 0, 17, 0, 0, 0]


@pytest.mark.parametrize("args, message", [
    (["--prefix-tokens", "8", "--prefix-ratio", "0.5"],
     "--prefix-tokens and --prefix-ratio both set the shared prefix's length: give one"),
    (["--prefix-groups", "4"], "--prefix-groups 4: needs --prefix-tokens or --prefix-ratio"),
    (["--prefix-groups", "0", "--prefix-tokens", "8"], "--prefix-groups: must be at least 1; got '0'"),
    (["--prefix-groups", "two"], "--prefix-groups: expected an integer; got 'two'"),
    (["--prefix-ratio", "1"], "--prefix-ratio: the shared share of each prompt, at least 0 and under 1; got '1'"),
    (["--prefix-ratio", "half"], "--prefix-ratio: expected a number; got 'half'"),
    (["--input-len", "uniform:10:300", "--prefix-ratio", "0.5"],
     "--prefix-ratio 0.5: a shared prefix of 78 tokens (0.5 x the mean input length) must be shorter than the "
     "shortest --input-len (10 in uniform:10:300)"),
    (["--input-len", "fixed:4", "--prefix-ratio", "0.1"], "rounds to 0"),
    (["--trace-speed", "0"], "--trace-speed: must be positive"),
    (["--trace-speed", "fast"], "--trace-speed: expected a number; got 'fast'"),
    (["--trace-start", "-3"], "--trace-start: seconds into the trace, must not be negative"),
    (["--trace-window", "0"], "--trace-window: seconds of the trace to replay, must be positive"),
    (["--dataset", "synthetic", "--multi-turn"], "--multi-turn: runs the conversations of --dataset sharegpt"),
    (["--dataset", "sharegpt", "--prefix-groups", "2", "--prefix-tokens", "4"],
     "--prefix-groups: only for --dataset synthetic; got --dataset sharegpt"),
    (["--dataset", "synthetic", "--trace-speed", "2"], "--trace-speed: only for --dataset trace; got --dataset synthetic"),
    (["--dataset", "conversations", "--trace-window", "5"], "--trace-window: only for --dataset trace"),
])
def test_option_errors_are_one_line(args, message):
    p, _ = parser()
    with pytest.raises(DatasetError) as e:
        parse_options(p.parse_args(args))
    assert message in one_line(e)


def parser():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="synthetic")
    calls = []

    def add(flag, **kw):
        calls.append(flag)
        p.add_argument(flag, **kw)

    add_arguments(add)
    return p, calls


# ------------------------------------------------------------------------------------------ conversations

def test_shipped_conversations(tok):
    convs = load("conversations", CONVS)
    assert isinstance(convs, conversations.Conversations) and len(convs) == 6
    assert [len(c.turns) for c in convs] == [3, 2, 4, 2, 5, 2]
    trip = convs[0]
    assert trip.id == "trip" and trip.system.startswith("You are a concise travel assistant")
    assert [t.think_s for t in trip.turns] == [None, 4.0, 6.5] and [t.max_tokens for t in trip.turns] == [64, 48, 32]
    recipe = convs[3]   # the OpenAI-style line
    assert recipe.turns[1] == conversations.Turn("And for a hard one?", "Ten to eleven minutes.")
    assert convs[5].turns[-1].answer is None and convs[5].turns[-1].think_s == 2.0
    assert conversations.describe(convs).startswith("Conversations: 6 loaded, 18 turns")
    assert [c.id for c in load("conversations", CONVS, 2)] == ["trip", "math"]


def test_conversation_csv(tmp_path):
    path = write(tmp_path, "c.csv",
                 "conversation_id,turn,user,assistant,max_tokens,think_time,system\n"
                 "a,2,Second?,Yes.,,1.5,\n"
                 "b,1,Other,,16,,Be brief.\n"
                 "a,1,First?,Sure.,32,,Be kind.\n"
                 "\n"
                 "a,3,Third,,,,Be kind.\n")
    convs = conversations.load(path)
    assert [c.id for c in convs] == ["a", "b"]
    a, b = convs
    assert a.system == "Be kind." and b.system == "Be brief."
    assert a.turns == [conversations.Turn("First?", "Sure.", 32, None), conversations.Turn("Second?", "Yes.", None, 1.5),
                       conversations.Turn("Third")]
    assert b.turns == [conversations.Turn("Other", None, 16)]


@pytest.mark.parametrize("row, message", [
    ("{bad", ":2: not valid JSON"),
    ({"turns": []}, ":2: 'turns' must be a non-empty list"),
    ({"turns": ["hi"]}, ":2: turns[0] must be an object with a 'user' text"),
    ({"turns": [{"assistant": "x"}]}, ":2: turns[0]: 'user' is missing or empty"),
    ({"turns": [{"user": "hi", "max_tokens": 0}]}, ":2: turns[0]: max_tokens must be a positive integer, got 0"),
    ({"turns": [{"user": "hi", "think_time": -1}]}, ":2: turns[0]: 'think_time' must be seconds (a number >= 0)"),
    ({"turns": [{"user": 5}]}, ":2: turns[0]: 'user' must be text, got int"),
    ({"system": 3, "turns": [{"user": "hi"}]}, ":2: 'system' must be text, got int"),
    ({"prompt": "hi"}, ":2: expected 'turns' (a list of {\"user\", \"assistant\"?}) or 'messages'"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, ":2: messages[0]: an assistant message before any user"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, ":2: messages[2]: two assistant messages in a row"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
     ":2: messages[1]: a system message after the first user message"),
    ({"messages": [{"role": "tool", "content": "a"}]}, ":2: messages[0] must be {\"role\": system | user | assistant"),
    ({"messages": [{"role": "system", "content": "a"}]}, ":2: 'messages' has no user message"),
])
def test_conversation_jsonl_bad_lines(tmp_path, row, message):
    path = jsonl(tmp_path, "c.jsonl", [{"turns": [{"user": "ok"}]}, row])
    with pytest.raises(DatasetError) as e:
        conversations.load(path)
    msg = one_line(e)
    assert msg.startswith(path) and message in msg, msg


@pytest.mark.parametrize("text, message", [
    ("", "empty file (expected a header row with conversation_id, user)"),
    ("id,user\n1,hi\n", "missing column 'conversation_id'; columns: id, user"),
    ("conversation_id,user\n1,hi,extra\n", ":2: expected 2 fields (conversation_id, user), got 3"),
    ("conversation_id,user\n,hi\n", ":2: 'conversation_id' is empty"),
    ("conversation_id,user,turn\na,hi,1\na,again,one\n", ":3: 'turn' must be an integer (the turn's number), got 'one'"),
    ("conversation_id,user,turn\na,hi,1\na,again,1\n", ":2: conversation 'a' has turn 1 twice"),
    ("conversation_id,user,system\na,hi,X\na,again,Y\n", ":3: conversation 'a' has two different 'system' prompts"),
    ("conversation_id,user,think_time\na,hi,soon\n", ":2: 'think_time' must be seconds"),
    ("conversation_id,user\na,\n", ":2: 'user' is missing or empty"),
])
def test_conversation_csv_bad_input(tmp_path, text, message):
    path = write(tmp_path, "c.csv", text)
    with pytest.raises(DatasetError) as e:
        conversations.load(path)
    assert message in one_line(e)


def test_sharegpt_conversations_whole(tmp_path, tok):
    def conv(*turns, cid=None):
        item = {"conversations": [{"from": f, "value": v} for f, v in turns]}
        if cid:
            item["id"] = cid
        return item
    data = [
        conv(("human", "Hi, who are you?"), ("gpt", "An assistant, here to help."), ("human", "Tell a joke."),
             ("gpt", "Why did the chicken cross the road? To get to the other side."), cid="ok"),
        conv(("gpt", "Hello! How can I help?"), ("human", "What is 2+2?"), ("gpt", "It is four."), cid="greeting"),
        conv(("system", "Be terse."), ("human", "Capital of Peru?"), ("gpt", "Lima."), ("human", "Thanks!"),
             cid="sys"),
        conv(("human", "a"), ("system", "b"), ("gpt", "c")),                  # system turn inside: out
        conv(("human", "a"), ("human", "b"), ("gpt", "c")),                   # broken alternation: out
        conv(("human", "a"), ("gpt", "")),                                     # empty turn: out
        conv(("human", "only a question")),                                    # no pair: out
        {"conversations": "nope"},                                             # no pair: out
    ]
    path = write(tmp_path, "sg.json", json.dumps(data))
    convs = sharegpt.load_conversations(path, 0, seed=0, tokenizer=tok)
    assert sorted(c.id for c in convs) == ["greeting", "ok", "sys"]
    assert convs.dropped == {sharegpt.NO_PAIR: 2, sharegpt.MALFORMED: 1, sharegpt.SYSTEM_INSIDE: 1,
                             sharegpt.BROKEN: 1}
    by = {c.id: c for c in convs}
    assert [(t.user, t.answer) for t in by["greeting"].turns] == [("What is 2+2?", "It is four.")]  # greeting cut
    assert by["sys"].system == "Be terse." and [t.user for t in by["sys"].turns] == ["Capital of Peru?"]
    ok = by["ok"].turns
    assert [t.max_tokens for t in ok] == encode_lens(tok, [t.answer for t in ok], add_special_tokens=True)
    fixed = load("sharegpt", path, 0, max_out_len=77, tokenizer=tok, multi_turn=True)
    assert isinstance(fixed, conversations.Conversations)
    assert {t.max_tokens for c in fixed for t in c.turns} == {77}
    assert [c.id for c in sharegpt.load_conversations(path, 2, seed=0, tokenizer=tok)] == [c.id for c in convs[:2]]
    line = conversations.describe(convs)
    assert "5 left out by the loader's filters" in line and "1 two human turns or two replies in a row" in line


def test_multi_turn_only_with_conversation_datasets():
    with pytest.raises(DatasetError) as e:
        load("synthetic", None, 5, multi_turn=True)
    assert one_line(e).startswith("--multi-turn: runs the conversations of --dataset sharegpt")
    for name in ("trace", "conversations"):
        with pytest.raises(DatasetError) as e:
            load(name, None)
        assert one_line(e).startswith(f"--dataset {name} needs --dataset-path")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2), min_size=0, max_size=40), max_size=12), st.sampled_from([1, 2, 3, 16]))
def test_hit_rate_equals_longest_common_prefix_rule(token_lists, block):
    """The block chain and the longest-common-prefix rule agree on any prompts (a small alphabet makes
    prefixes collide often)."""
    rate, cached, total = theoretical_hit_rate(token_lists, block)
    assert (cached, total) == lcp_hit_rate(token_lists, block)
    assert rate == (cached / total if total else 0.0)


def test_describe_lines(tok):
    convs = load("conversations", CONVS)
    assert describe(convs) == conversations.describe(convs)
    prompts = load("synthetic", None, 4, "fixed:40", tokenizer=tok, prefix_tokens=32)
    # 3 prompts after the first hit the 32 shared tokens (2 blocks of 16) of 160
    assert prefix_cache.describe_prompts(prompts, tok) == (
        "Prefix cache: theoretical hit rate 60.0 % (block 16) for the prompts in send order "
        "(96 of 160 prompt tokens)")


def test_readme_figure_for_the_shipped_trace(tok):
    """The hit rate README states for the shipped trace is the one computed here."""
    import re
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    stated = re.search(r"mooncake_trace\.jsonl` \(40 requests over\s+19 s sharing prefixes; theoretical hit rate "
                       r"([\d.]+) % at block 16", text)
    assert stated, "README no longer states the shipped trace's hit rate"
    rate, _, _ = theoretical_hit_rate(prompt_token_ids(tok, load("trace", MOONCAKE, tokenizer=tok)), 16)
    assert f"{100 * rate:.1f}" == stated.group(1)
