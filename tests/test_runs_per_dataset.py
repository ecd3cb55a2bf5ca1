"""Headless runs per dataset against the simulator: tables, token statistics and accuracy end to end."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest

from benchmark import datasets, tokens
from benchmark.options import RunConfig
from benchmark.records import read_records
from benchmark.run import build_body
from conftest import ROOT, SHARED, perf_csv, run_dirs, run_locust

GSM8K = os.path.join(SHARED, "datasets", "gsm8k")


def perf_rows(run):
    path = perf_csv(run)
    return path, {r[0]: r for r in csv.reader(open(path))}


def test_synthetic_input_lengths_reach_the_tables(tmp_path, start_sim):
    sim = start_sim("--ttft-ms", "5", "--itl-ms", "1")
    res = run_locust(tmp_path, "--host", sim.url, "-u", "2", "-r", "2", "-t", "3s", "--max-out-len", "8",
                     "--input-len", "uniform:20:60", "--num-prompts", "50")
    assert res.returncode == 0, res.stderr[-1500:]
    (run,) = run_dirs(tmp_path)
    _, rows = perf_rows(run)
    # the simulator counts words; synthetic prompts are built of single-token words
    lo, hi = float(rows["InputTokens"][3]), float(rows["InputTokens"][4])
    assert 20 <= lo <= hi <= 60 and hi > lo


def test_gsm8k_all_mode_scores_the_collected_completions(tmp_path, start_sim):
    """The simulator answers from canned completions: 4 of the 8 demo questions right."""
    questions = [json.loads(line) for line in open(os.path.join(GSM8K, "test.jsonl"))][:8]
    answers = tmp_path / "answers.jsonl"
    with open(answers, "w") as f:
        for i, q in enumerate(questions):
            gold = q["answer"].split("####")[-1].strip().replace(",", "")
            said = gold if i % 2 == 0 else str(int(gold) + 1)
            f.write(json.dumps({"question": q["question"],
                                "completion": f"Let me think. The answer is {said}\n\nQuestion: 12"}) + "\n")
    sim = start_sim("--ttft-ms", "5", "--itl-ms", "1", "--answers", str(answers))
    res = run_locust(tmp_path / "out", "--host", sim.url, "-u", "4", "-r", "4", "-t", "3s",
                     "--dataset", "gsm8k", "--dataset-path", GSM8K, "--subset", "demo", "--max-out-len", "64")
    assert res.returncode == 0, res.stderr[-1500:]
    (run,) = run_dirs(tmp_path / "out")
    records, _ = read_records(os.path.join(run, "records.jsonl"))
    assert {r["prompt_index"] for r in records} == set(range(8)) and all(r["success"] for r in records)
    result = json.load(open(os.path.join(run, "results", "llm-sim", "demo_gsm8k.json")))
    assert result["accuracy"] == 50.0
    summary = open(os.path.join(run, "summary", "summary.txt")).read()
    assert re.search(r"demo_gsm8k\s+\w{6}\s+accuracy\s+gen\s+50\.00", summary)
    assert "natural-length" in res.stdout
    _, rows = perf_rows(run)
    assert float(rows["InputTokens"][2]) > 500  # 4-shot prompts are long

    # rescoring from records alone gives the same table
    os.remove(os.path.join(run, "results", "llm-sim", "demo_gsm8k.json"))
    rep = subprocess.run([sys.executable, "-m", "benchmark", "accuracy", run], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert rep.returncode == 0, rep.stderr
    assert json.load(open(os.path.join(run, "results", "llm-sim", "demo_gsm8k.json")))["accuracy"] == 50.0


def test_gsm8k_request_body_matches_aisbench_apart_from_sampling():
    ref = json.load(open(os.path.join(SHARED, "reference", "aisbench",
                                      "gsm8k_4shot_chat_request_body_example.json")))
    cfg = RunConfig(dataset="gsm8k", max_out_len=512, sampling={"temperature": 0.01})
    (prompt,) = datasets.load("gsm8k", GSM8K, 1)
    body = json.loads(build_body(prompt, cfg, "fake-llm"))
    assert body.pop("ignore_eos", False) == ref.pop("ignore_eos") is False
    assert body == ref


def test_accuracy_mode_refuses_ignore_eos(tmp_path):
    res = run_locust(tmp_path, "--dataset", "gsm8k", "--dataset-path", GSM8K, "--mode", "accuracy",
                     "--ignore-eos", "-u", "1", "-t", "2s", timeout=60)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "--ignore-eos" in res.stderr.strip().splitlines()[-1]


def test_custom_jsonl_run(tmp_path, start_sim):
    data = tmp_path / "mine.jsonl"
    with open(data, "w") as f:
        for i in range(5):
            f.write(json.dumps({"question": "word " * (10 + i), "answer": str(i)}) + "\n")
    sim = start_sim("--ttft-ms", "5", "--itl-ms", "1")
    res = run_locust(tmp_path / "out", "--host", sim.url, "-u", "2", "-r", "2", "-t", "2s",
                     "--dataset", "custom", "--dataset-path", str(data), "--max-out-len", "4")
    assert res.returncode == 0, res.stderr[-1500:]
    (run,) = run_dirs(tmp_path / "out")
    path, rows = perf_rows(run)
    assert path.endswith("custom.csv")
    assert (float(rows["InputTokens"][3]), float(rows["InputTokens"][4])) == (10.0, 14.0)


def test_sharegpt_run_uses_reply_lengths(tmp_path, start_sim):
    convs = [{"id": str(i), "conversations": [{"from": "human", "value": "tell me " + "more " * (5 + i)},
                                              {"from": "gpt", "value": "sure " * (6 + i)}]}
             for i in range(6)]
    data = tmp_path / "sharegpt.json"
    data.write_text(json.dumps(convs))
    sim = start_sim("--ttft-ms", "5", "--itl-ms", "1")
    res = run_locust(tmp_path / "out", "--host", sim.url, "-u", "2", "-r", "2", "-t", "2s",
                     "--dataset", "sharegpt", "--dataset-path", str(data), "--num-prompts", "6",
                     "--ignore-eos")
    assert res.returncode == 0, res.stderr[-1500:]
    (run,) = run_dirs(tmp_path / "out")
    records, _ = read_records(os.path.join(run, "records.jsonl"))
    outs = {r["output_tokens"] for r in records}
    tok = tokens.load_tokenizer(None)
    replies = {tokens.count_output(tok, c["conversations"][1]["value"]) for c in convs}
    assert outs and outs <= replies, (outs, replies)  # max_tokens = the first reply's token count


@pytest.mark.parametrize("args,needle", [
    (["--dataset", "nope"], "--dataset"),
    (["--dataset", "gsm8k"], "--dataset-path"),
    (["--dataset", "custom", "--dataset-path", "/nonexistent/file.jsonl"], "/nonexistent/file.jsonl"),
    (["--input-len", "gauss:1"], "--input-len"),
])
def test_bad_dataset_options_are_one_line(tmp_path, args, needle):
    res = run_locust(tmp_path, *args, "-u", "1", "-t", "2s", timeout=60)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "error" in last and needle in last, res.stderr[-800:]
