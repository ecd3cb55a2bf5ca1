"""The prefix cache: the block rule by hand, LRU eviction, the simulator's cache against its --trace truth,
and a run's theoretical hit rate against what the simulator's /metrics and the records report."""
from __future__ import annotations

import json
import os
import re

import requests

from benchmark import prefix_cache, prefix_hits
from benchmark.prefix_cache import PrefixCache, block_keys, max_hit_blocks, theoretical_hit_rate
from benchmark.records import read_records
from benchmark.run import _cached
from conftest import run_dirs, run_locust

WORDS = [f"w{i}" for i in range(400)]


def test_block_keys_chain_the_whole_prefix():
    toks = list(range(40))
    keys = block_keys(toks, 16)
    assert len(keys) == 2  # the tail of 8 tokens is no block
    assert keys[0] == hash((None, tuple(range(16))))
    assert keys[1] == hash((keys[0], tuple(range(16, 32))))
    other = block_keys([99] + toks[1:], 16)  # the same second block after a different first one
    assert other[0] != keys[0] and other[1] != keys[1]
    assert block_keys(toks[:31], 16) == keys[:1] and block_keys(toks[:15], 16) == []
    assert block_keys(toks[:32], 16) == keys


def test_the_last_token_is_always_computed():
    assert [max_hit_blocks(n, 16) for n in (0, 1, 16, 17, 32, 33)] == [0, 0, 0, 1, 1, 2]


def test_lru_evicts_least_recently_used_blocks_tail_first():
    a, b, c = (block_keys([t] * 32, 16) for t in ("a", "b", "c"))  # two blocks each
    cache = PrefixCache(4)
    assert cache.lookup_and_insert(a) == 0 and cache.lookup_and_insert(b) == 0
    assert cache.lookup_and_insert(a) == 2  # found, and now the most recent
    assert cache.lookup_and_insert(c) == 0  # evicts b, the least recently used
    assert cache.lookup_and_insert(b) == 0  # evicted; storing it again evicts a
    assert cache.lookup_and_insert(c) == 2 and cache.lookup_and_insert(a) == 0
    tail = PrefixCache(3)
    long = block_keys(list(range(48)), 16)  # three blocks
    tail.lookup_and_insert(long)
    tail.lookup_and_insert(block_keys(["x"] * 16, 16))  # one new block evicts long's last one
    assert tail.lookup_and_insert(long) == 2
    assert PrefixCache(4).lookup_and_insert(a, max_hits=0) == 0


def test_theoretical_hit_rate_by_hand():
    shared = list(range(32))
    first, second = shared + [100] * 8, shared + [200] * 8
    assert theoretical_hit_rate([first, second], 16) == (32 / 80, 32, 80)
    # the same 32 tokens twice: the second finds one block, its last token is computed again
    assert theoretical_hit_rate([shared, shared], 16) == (16 / 64, 16, 64)
    assert theoretical_hit_rate([], 16) == (0.0, 0, 0)


def test_a_run_plan_cycles_its_prompts_and_repeats_hit_as_the_ideal_cache_says():
    order = [2, 0, 1]
    assert prefix_hits.send_sequence(order, 7)[0] == [2, 0, 1, 2, 0, 1, 2]
    seq, how = prefix_hits.send_sequence(order, float("inf"))
    assert seq == order and "one pass" in how
    lists = {0: list(range(40)), 1: list(range(20)) + [7] * 13, 2: [5] * 50}
    for limit in (3, 7, 11):
        seq = prefix_hits.send_sequence(order, limit)[0]
        rate, cached, prompt = theoretical_hit_rate([lists[i] for i in seq], 16)
        assert prefix_hits.ideal(lists, seq, 16) == {"hit_rate": rate, "cached_tokens": cached,
                                                      "prompt_tokens": prompt}


def test_chat_tokens_mark_message_boundaries():
    one = [{"role": "user", "content": " ".join(WORDS[:32])}]
    two = [{"role": "system", "content": " ".join(WORDS[:16])}, {"role": "user", "content": " ".join(WORDS[16:32])}]
    a, b = prefix_cache.chat_word_tokens(one), prefix_cache.chat_word_tokens(two)
    assert len(a) == len(b) == 32 and block_keys(a, 16)[0] != block_keys(b, 16)[0]


def test_cached_tokens_read_from_usage():
    assert _cached({"prompt_tokens_details": {"cached_tokens": 48}}) == 48
    assert _cached({"prompt_tokens_details": {"cached_tokens": 0}}) == 0
    for usage in ({}, {"prompt_tokens_details": None}, {"prompt_tokens_details": {"cached_tokens": -1}},
                  {"prompt_tokens_details": {"cached_tokens": True}}, {"prompt_tokens_details": {}}):
        assert _cached(usage) is None


def _metric(url: str, name: str) -> float:
    text = requests.get(url + "/metrics", timeout=10).text
    return float(re.search(rf"^{name}_total{{[^}}]*}} (\S+)$", text, re.M).group(1))


def _complete(url: str, prompt: str) -> dict:
    resp = requests.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": 2, "ignore_eos": True,
                                                         "stream": True, "stream_options": {"include_usage": True}},
                         timeout=30)
    usage = [json.loads(line[5:]) for line in resp.text.splitlines() if line.startswith("data: {")][-1]["usage"]
    return usage


def test_a_repeated_prompt_is_served_from_cache_sooner(tmp_path, start_sim):
    trace = tmp_path / "trace.jsonl"
    sim = start_sim("--ttft-ms", "10", "--itl-ms", "1", "--prefill-ms-per-token", "1", "--trace", str(trace))
    prompt = " ".join(WORDS[:200])
    usages = [_complete(sim.url, prompt) for _ in range(2)]
    lines = [json.loads(x) for x in trace.read_text().splitlines()]
    assert [u["prompt_tokens_details"]["cached_tokens"] for u in usages] == [0, 192]  # (200 - 1) // 16 blocks
    assert [x["cached_tokens"] for x in lines] == [0, 192] and lines[1]["prompt_tokens"] == 200
    first, again = (x["tokens"][0] for x in lines)  # server truth: s from arrival to the first token
    assert 0.210 <= first < 0.210 + 0.05  # 10 ms + 200 uncached tokens x 1 ms
    assert 0.018 <= again < 0.018 + 0.05  # 10 ms + 8 uncached tokens x 1 ms
    assert abs((first - again) - 0.192) < 0.05
    assert _metric(sim.url, "vllm:prefix_cache_queries") == 400
    assert _metric(sim.url, "vllm:prefix_cache_hits") == 192


def test_no_prefix_cache_and_no_prefill_cost(tmp_path, start_sim):
    trace = tmp_path / "trace.jsonl"
    off = start_sim("--ttft-ms", "10", "--itl-ms", "1", "--no-prefix-cache", "--prefill-ms-per-token", "1",
                    "--trace", str(trace))
    prompt = " ".join(WORDS[:100])
    usages = [_complete(off.url, prompt) for _ in range(2)]
    assert all("prompt_tokens_details" not in u for u in usages)
    assert _metric(off.url, "vllm:prefix_cache_hits") == 0 and _metric(off.url, "vllm:prefix_cache_queries") == 200
    assert all(0.110 <= json.loads(x)["tokens"][0] for x in trace.read_text().splitlines())
    # the default: a cache, and TTFT --ttft-ms whatever it finds
    trace2 = tmp_path / "trace2.jsonl"
    on = start_sim("--ttft-ms", "30", "--itl-ms", "1", "--trace", str(trace2))
    assert [_complete(on.url, prompt)["prompt_tokens_details"]["cached_tokens"] for _ in range(2)] == [0, 96]
    firsts = [json.loads(x)["tokens"][0] for x in trace2.read_text().splitlines()]
    assert all(0.030 <= t < 0.030 + 0.05 for t in firsts), firsts


RUN = ("--num-requests", "20", "--num-prompts", "20", "-u", "1", "-r", "1", "-t", "120s", "--max-out-len", "4",
       "--input-len", "fixed:100", "--prefix-tokens", "64")


def _run(tmp_path, sim):
    res = run_locust(tmp_path, "--host", sim.url, *RUN, timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (run,) = run_dirs(tmp_path)
    config = json.load(open(os.path.join(run, "config.json")))
    records = read_records(os.path.join(run, "records.jsonl"))[0]
    with open(os.path.join(run, "server_metrics_reconcile.json")) as f:
        reconciled = json.load(f)
    return run, res.stdout, config["prefix_cache_theory"], records, reconciled


def test_theoretical_hit_rate_is_what_the_simulator_achieves(tmp_path, start_sim):
    sim = start_sim("--ttft-ms", "5", "--itl-ms", "1")  # a cache far larger than the run
    run, out, theory, records, reconciled = _run(tmp_path, sim)
    words = theory["words"]
    assert theory["requests"] == 20 and words["prompt_tokens"] == 2000
    assert theory["tokenizer"]["prompt_tokens"] > 0 and theory["tokenizer"]["cached_tokens"] > 0
    assert words["cached_tokens"] == 19 * 64  # every request but the first finds the 4-block shared prefix
    assert sum(r["cached_tokens"] for r in records) == words["cached_tokens"]
    assert sum(r["input_tokens"] for r in records) == words["prompt_tokens"]
    assert _metric(sim.url, "vllm:prefix_cache_hits") == words["cached_tokens"]
    assert _metric(sim.url, "vllm:prefix_cache_queries") == words["prompt_tokens"]
    rate = 100 * words["hit_rate"]
    assert f"Prefix cache: the server served {rate:.1f} % of prompt tokens from cache" in out
    assert f"{rate:.1f} % with the simulator's words" in out
    assert re.search(rf"Prefix Cache Hit Rate\s*│ total\s*│ {rate:.4f} %", out)
    assert reconciled["prefix_cache"]["hit_rate"] == words["hit_rate"]
    assert not [f for f in reconciled["flags"] if f["kind"] == "prefix"], reconciled["flags"]
    assert 'id="prefix-cache"' in open(os.path.join(run, "report.html")).read()


def test_a_small_cache_evicts_and_the_flag_names_it(tmp_path, start_sim):
    sim = start_sim("--ttft-ms", "5", "--itl-ms", "1", "--kv-capacity-tokens", "32")  # 2 blocks
    run, out, theory, records, reconciled = _run(tmp_path, sim)
    achieved = sum(r["cached_tokens"] for r in records)
    assert achieved == 19 * 32  # only the first 2 of the prefix's 4 blocks survive each request
    assert achieved < theory["words"]["cached_tokens"] == 19 * 64
    flags = [f["text"] for f in reconciled["flags"] if f["kind"] == "prefix"]
    assert flags and f"server reports prefix-cache hits of {100 * achieved / 2000:.1f} % where the workload was " \
        f"built for {100 * theory['words']['hit_rate']:.1f} %" in flags[0], flags
    assert "the cache too small" in flags[0]


def test_no_cached_tokens_no_row(tmp_path, start_sim):
    sim = start_sim("--ttft-ms", "5", "--itl-ms", "1", "--no-prefix-cache")
    run, out, theory, records, reconciled = _run(tmp_path, sim)
    assert all(r["cached_tokens"] is None for r in records)
    assert "Prefix Cache Hit Rate" not in out and "Prefix cache: the server served" not in out
    assert theory["words"]["cached_tokens"] == 19 * 64  # the workload's figure stands without a cache
    flags = [f["text"] for f in reconciled["flags"] if f["kind"] == "prefix"]
    assert flags and "hits of 0.0 %" in flags[0]
