"""Against a real OpenAI-compatible server: llama.cpp's llama-server with the Gemma 3 270M base model.

`scripts/real_server.sh` builds the server and assembles the model into a cache outside the repository
(`.ci/run` calls it before this stage and exports LLAMA_SERVER/LLAMA_MODEL, so there a missing file fails);
run by hand without those variables, these tests skip, saying why, only when the files are missing.
The server is started on a free loopback port for this module and always stopped by its pid.
`-c 8192` over `-np 4` slots gives each slot 2048 tokens: the 4-shot GSM8K chat prompts are 1480-1570
Gemma tokens, which the 1024 of `-c 4096` refuse ("exceeds the available context size").
"""
from __future__ import annotations

import csv
import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from benchmark.records import read_records
from conftest import ROOT, SHARED, aisbench_files, run_dirs, run_locust

sys.path.insert(0, os.path.join(ROOT, "scripts"))
from llama_server import LlamaServer  # noqa: E402  (scripts/ is not a package)

pytestmark = pytest.mark.realserver

SCRIPT = os.path.join(ROOT, "scripts", "real_server.sh")
TEMPLATE = os.path.join(ROOT, "tests", "realserver", "gemma-chat.jinja")
GSM8K = os.path.join(SHARED, "datasets", "gsm8k")
ALIAS = "gemma"

# llama-server (this build) closes the connection after every streamed answer although its headers say
# "Keep-Alive: timeout=5, max=100" (its chunked content provider returns false after sink.done(), which
# cpp-httplib takes for an aborted response). A request sent into a closing connection may not be resent
# (POST is not idempotent), so once the client has seen such a close it opens a fresh connection for every
# request to the server: no --retry is needed, every request succeeds at its first attempt.


def cached_paths() -> tuple[str, str]:
    """The binary and model paths, as real_server.sh names them for this machine's CPU level."""
    out = subprocess.run(["bash", SCRIPT, "--paths"], capture_output=True, text=True, check=True).stdout
    paths = dict(line.split("=", 1) for line in out.splitlines())
    return paths["LLAMA_SERVER"], paths["LLAMA_MODEL"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # .ci/run exports the paths real_server.sh built: then a missing file fails, it is never skipped
    required = "LLAMA_SERVER" in os.environ
    binary, model = (os.environ["LLAMA_SERVER"], os.environ["LLAMA_MODEL"]) if required else cached_paths()
    missing = [p for p in (binary, model) if not os.path.isfile(p)]
    if missing and required:
        pytest.fail(f"LLAMA_SERVER/LLAMA_MODEL name missing files: {', '.join(missing)}")
    if missing:
        pytest.skip(f"real server not built: {', '.join(missing)} missing; run scripts/real_server.sh "
                    f"(builds llama-server once, ~14 min on 2 cores, and assembles the model)")
    srv = LlamaServer(binary, model, str(tmp_path_factory.mktemp("llama") / "llama-server.log"),
                      ["-np", "4", "-c", "8192", "-t", "2", "--poll", "0", "--chat-template-file", TEMPLATE,
                       "--alias", ALIAS, "--metrics"])
    try:
        yield srv
    finally:
        srv.stop()
    assert srv.proc.returncode is not None


def perf_files(run):
    (csv_path,) = aisbench_files(run, "csv")
    (json_path,) = aisbench_files(run, "json")
    rows = {r[0]: r for r in csv.reader(open(csv_path))}
    return rows, json.load(open(json_path))


def value(cell: str) -> float:
    return float(cell.split()[0])


def check_run(res, tmp_path, server) -> tuple[str, list[dict]]:
    """The run folder and its records, every one a success."""
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + server.log_tail(1500)
    (run,) = run_dirs(tmp_path)
    records, skipped = read_records(os.path.join(run, "records.jsonl"))
    assert skipped == 0
    bad = [(r["error"], r["http_status"]) for r in records if not r["success"]]
    assert not bad, (bad[:3], server.log_tail(1500))
    return run, records


def test_perf_run_streams_tokens_usage_and_overlap(tmp_path, server):
    # a count of requests, not a duration: beside four CPU burners one wave of 4 answers takes ~20 s
    # instead of ~2 s, and a 30 s run could end before any answer was in
    res = run_locust(tmp_path, "--host", server.url, "--model", "", "-u", "4", "-r", "4", "--num-requests", "8",
                     "-t", "240s", "--dataset", "synthetic", "--input-len", "fixed:128", "--max-out-len", "32",
                     "--ignore-eos", timeout=300)
    run, ok = check_run(res, tmp_path, server)
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["model"] == ALIAS  # --model "" asked /v1/models
    assert {r["user"] for r in ok} == {0, 1, 2, 3}, [r["user"] for r in ok]  # >= 1 answer per user
    assert {r["finish_reason"] for r in ok} == {"length"}  # ignore_eos: every stream ran to max_tokens
    assert {r["token_source"] for r in ok} == {"usage"}
    assert {r["output_tokens"] for r in ok} == {32}
    for r in ok:
        # llama-server's chunking: a role chunk (sent with the first token), one token per content
        # chunk, a finish chunk with an empty delta, a usage chunk (choices []), then [DONE]; so
        # usage.completion_tokens (OutputTokens) equals the number of content events
        kinds = [e[1] for e in r["events"]]
        assert kinds == ["role"] + ["content"] * r["output_tokens"] + ["other", "usage"], kinds
        assert r["input_tokens"] > 100  # 128 synthetic tokens, counted by Gemma's own tokenizer
        t = [e[0] for e in r["events"] if e[1] == "content"]
        ttft, e2el, n = t[0], r["events"][-1][0], r["output_tokens"]
        tpot = (e2el - ttft) / (n - 1)  # the tables' definition
        assert e2el >= t[-1] and e2el >= ttft + (n - 1) * tpot - 1e-9

    rows, common = perf_files(run)
    ttft, tpot, e2el = (value(rows[m][2]) for m in ("TTFT", "TPOT", "E2EL"))  # averages, ms
    # n = 32 for every request, so the averages obey the per-request identity; 0.01 ms display rounding
    assert e2el >= ttft + 31 * tpot - 0.5, (e2el, ttft, tpot)
    assert abs(e2el - (ttft + 31 * tpot)) < 0.5
    assert value(rows["OutputTokens"][2]) == 32
    assert common["Max Concurrency"]["total"] == 4
    assert common["Peak In-Flight"]["total"] == 4  # the four streams overlapped on the server's slots
    assert common["Success Requests"]["total"] == common["Total Requests"]["total"] == len(ok)

    # the server's own account (llama-server --metrics, scraped every second during the run)
    rec = json.load(open(os.path.join(run, "server_metrics_reconcile.json")))
    assert rec["engine"] == "llamacpp" and rec["reconciled"], rec["lines"]
    tokens = rec["tokens"]
    # generated tokens: llama.cpp's counter and its usage replies count the same tokens
    assert tokens["generation"]["server"] == tokens["generation"]["client"] == 32 * len(ok), tokens
    # prompt tokens: evaluated + reused from a slot's cache, against the usage replies' prompt_tokens
    assert tokens["prompt"]["agree"], (tokens, rec["lines"])
    assert not {f["kind"] for f in rec["flags"]} & {"tokens", "requests"}, rec["flags"]
    # llama.cpp exports no finished-request counter: said, never guessed
    assert any("exports no finished-request counter" in line for line in rec["lines"]), rec["lines"]
    assert rec["requests"]["server"] is None


def test_gsm8k_all_mode_scores_real_completions(tmp_path, server):
    # all mode ends when the 8th answer is in; -t is only a cap. Each 4-shot prompt is ~1500 tokens of
    # prefill: ~1 min for all 8 on a quiet 2-core machine, 5-10 min beside four CPU burners
    res = run_locust(tmp_path, "--host", server.url, "--model", "", "-u", "4", "-r", "4", "-t", "900s",
                     "--mode", "all", "--dataset", "gsm8k", "--dataset-path", GSM8K, "--subset", "demo",
                     "--max-out-len", "96", timeout=960)
    run, ok = check_run(res, tmp_path, server)
    assert sorted(r["prompt_index"] for r in ok) == list(range(8))  # each prompt sent once
    assert all(r["finish_reason"] in ("stop", "length") for r in ok)
    assert all(r["output_tokens"] <= 96 and r["token_source"] == "usage" for r in ok)
    assert all(r["input_tokens"] > 500 for r in ok)  # the 4-shot chat prompt through the template

    (result_path,) = glob.glob(os.path.join(run, "results", "*", "demo_gsm8k.json"))
    written = json.load(open(result_path))
    assert written["counts"]["samples"] == 8 and written["counts"]["prompts"] == 8
    assert written["counts"]["failed"] == 0
    summary_path = os.path.join(run, "summary", "summary.txt")
    summary = open(summary_path).read()
    assert re.search(r"demo_gsm8k\s+\w{6}\s+accuracy\s+gen\s+\d+\.\d\d", summary), summary

    # rescoring the records alone gives the same table
    os.remove(result_path)
    os.remove(summary_path)
    rep = subprocess.run([sys.executable, "-m", "benchmark", "accuracy", run], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert rep.returncode == 0, rep.stderr
    rescored = json.load(open(result_path))
    assert rescored == written
    assert open(summary_path).read() == summary  # the time string is the run's, not the scoring's
    assert np.isclose(rescored["accuracy"], 100 * rescored["counts"]["accuracy_correct"] / 8)


def test_completions_backend_streams_text_events(tmp_path, server):
    """--backend openai: llama-server's /v1/completions, the prompt sent as text (no chat template)."""
    res = run_locust(tmp_path, "--host", server.url, "--model", "", "--backend", "openai", "-u", "2", "-r", "2",
                     "--num-requests", "4", "-t", "240s", "--dataset", "synthetic", "--input-len", "fixed:64",
                     "--max-out-len", "16", "--ignore-eos", timeout=300)
    run, ok = check_run(res, tmp_path, server)
    assert json.load(open(os.path.join(run, "config.json")))["backend"] == "openai"
    assert len(ok) == 4 and {r["finish_reason"] for r in ok} == {"length"}
    assert {r["output_tokens"] for r in ok} == {16}
    for r in ok:
        kinds = [e[1] for e in r["events"]]
        # one text chunk per token (what the server counted), then the finish chunk(s): no role chunk
        assert "role" not in kinds and kinds.count("content") == 16, kinds
        assert r["input_tokens"] > 40 and r["completion"]
    rows, _ = perf_files(run)
    assert value(rows["OutputTokens"][2]) == 16 and value(rows["TTFT"][2]) > 0
