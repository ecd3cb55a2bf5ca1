"""GSM8K accuracy: extraction rules on tricky completions, and scoring of a hand-made run folder.

Every expected value below was worked out by hand from the rules in DESIGN.md (AISBench/OpenCompass
`accuracy`) and lm-eval's gsm8k.yaml (`strict-match`, `flexible-extract`), not computed by the code.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re

import pytest

from benchmark.accuracy import (AccuracyError, extract_accuracy, extract_flexible, extract_strict,
                                is_correct, main, reference_answer, score_run, score_sample,
                                strip_reasoning)
from benchmark.accuracy.gsm8k import FLEXIBLE_RE, OC_NUMBER_RE, last_match
from benchmark.accuracy.score import Progress
from benchmark.accuracy.summary import console_block, format_summary_txt
from benchmark.records import new_record

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_TXT = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "reference", "aisbench",
                             "run2_accuracy_summary.txt")

# a real GSM8K answer (test question 0): commas, `$`, `<<...>>`, `#### 18`
JANET = ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
         "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer\u2019s market.\n#### 18")

I = "[invalid]"
# completion, reference, (accuracy pred, ok), (strict-match pred, ok), (flexible-extract pred, ok)
CASES = [
    # comma: OpenCompass's regex splits 1,000 into 1 and 000 (kept quirk); lm-eval ignores commas
    ("The answer is 1,000", "#### 1,000", ("000", False), (I, False), ("1,000", True)),
    ("#### 1,000.", "#### 1,000", ("000", False), ("1,000.", True), ("1,000.", True)),
    # `$` and a sentence-final period, against the full GSM8K answer text
    ("He pays $18.", JANET, ("18", True), (I, False), ("$18.", True)),
    # decimals: float(18.00) == 18 for OpenCompass; lm-eval is an exact string match
    ("Each costs 18.00 dollars", "#### 18", ("18.00", True), (I, False), ("18.00", False)),
    # negative
    ("The temperature fell to -5 degrees.", "#### -5", ("-5", True), (I, False), ("-5", True)),
    ("It holds between 3-5 apples", "#### 5", ("-5", False), (I, False), ("-5", False)),
    # no number at all
    ("I cannot tell.", "#### 7", ("NULL", False), (I, False), (I, False)),
    # several numbers: the last one (flexible's `7,` and `14` are its 2+-char group)
    ("3 + 4 = 7, then 7 * 2 = 14 apples", "#### 14", ("14", True), (I, False), ("14", True)),
    # strict takes the first `####`, the other two the last number
    ("#### 5\nThen #### 6", "#### 5", ("6", False), ("5", True), ("6", False)),
    # text after `Question:` is cut (lm-eval's `until` stop sequence for the other two)
    ("The answer is 42.\n\nQuestion: Tom has 3 cats and 7 dogs. #### 10", "#### 42",
     ("42", True), (I, False), ("42.", True)),
    # trailing dots: lm-eval removes only one
    ("The answer is 5...", "#### 5", ("5", True), (I, False), ("5...", False)),
    # <think> blocks are dropped, wherever they are
    ("<think>Maybe 12, or 15?</think>\nThe answer is 13", "#### 13", ("13", True), (I, False), ("13", True)),
    ("The answer is 13. <think>or maybe 99</think>", "#### 13", ("13", True), (I, False), ("13.", True)),
    ("<think>Question: is it 5?</think>The answer is 8", "#### 8", ("8", True), (I, False), ("8", True)),
    # a lone </think>: only what follows it counts
    ("so it is 99 or 98</think>\n#### 7", "#### 7", ("7", True), ("7", True), ("7", True)),
    # an unclosed <think> (truncated reasoning) is left as is
    ("<think>I guess 12", "#### 12", ("12", True), (I, False), ("12", True)),
    # a loader that stored only the number as the reference
    ("1000", "1,000", ("1000", True), (I, False), ("1000", True)),
]


@pytest.mark.parametrize("completion,reference,acc,strict,flex", CASES)
def test_extraction_rules(completion, reference, acc, strict, flex):
    assert extract_accuracy(completion) == acc[0]
    assert extract_strict(completion) == strict[0]
    assert extract_flexible(completion) == flex[0]
    s = score_sample(completion, reference)
    assert s["pred"] == {"accuracy": acc[0], "strict-match": strict[0], "flexible-extract": flex[0]}
    assert s["correct"] == {"accuracy": acc[1], "strict-match": strict[1], "flexible-extract": flex[1]}


def test_last_match_equals_findall_on_long_texts():
    """The tail-window shortcut gives exactly findall(...)[-1] (random texts, matches near the cut)."""
    rng = random.Random(7)
    alphabet = "0123456789.,-$ \n\tab#٣"   # ٣: an Arabic-Indic digit, which \d matches
    for _ in range(3000):
        n = rng.choice([10, 250, 256, 260, 300, 600])
        text = "".join(rng.choice(alphabet) for _ in range(n))
        for regex in (OC_NUMBER_RE, FLEXIBLE_RE):
            found = regex.findall(text)
            assert last_match(regex, text) == (found[-1] if found else None), (regex.pattern, text)
    assert last_match(OC_NUMBER_RE, "12 " + "a " * 300) == "12"          # nothing in the tail
    assert last_match(OC_NUMBER_RE, "-1" + "2" * 600) == "-1" + "2" * 600  # no whitespace to restart at
    assert last_match(FLEXIBLE_RE, "x " * 300 + "$1,0") == ("$1,0", "")


def test_reasoning_and_reference_helpers():
    assert strip_reasoning("Start<think>reasoning here</think> End") == "Start End"
    assert strip_reasoning("a</think>b</think> c ") == "c"
    assert strip_reasoning("  no tags  ") == "no tags"
    assert reference_answer(JANET) == "18"
    assert reference_answer("blah\n#### 1,234") == "1234"
    assert reference_answer(" 42 ") == "42"


@pytest.mark.parametrize("pred,ref,ok", [
    ("18", "18", True), ("18.0000001", "18", True), ("18.00001", "18", False), ("NULL", "18", False),
    ("2.5", "2.5", True),      # equal strings
    ("2.50", "2.5", False),    # int("2.5") raises: a decimal reference only matches as a string
    ("-3", "-3", True), ("3", "-3", False),
])
def test_opencompass_equality(pred, ref, ok):
    assert is_correct(pred, ref) is ok


# ---------------------------------------------------------------- a run folder with two stages

REFS = {0: JANET, 1: "1 + 2 = 3\n#### 3", 2: "#### 7", 3: "#### 5"}
PROMPT_CONFIG = {"dataset": "gsm8k", "prompt_style": "4shot-chat", "subset": "demo", "num_prompts": 4}


def _rec(i, stage, t, prompt, completion, success=True, error=""):
    return new_record(id=i, worker="local", user=0, stage=stage, dataset="gsm8k", prompt_index=prompt,
                      t_send=t, completion=completion, reference=REFS[prompt], success=success,
                      error=error, finish_reason="stop" if success else None)


def make_run(tmp_path, name="20260102_030405"):
    run = tmp_path / name
    run.mkdir()
    recs = [
        # ramp-2 first in the file, but sent later: stages are ordered by time
        _rec(5, "ramp-2", 200.0, 0, "It is 18.00"),                 # acc T  strict F  flex F
        _rec(6, "ramp-2", 201.0, 1, "#### 3"),                      # T T T
        _rec(7, "ramp-2", 202.0, 2, "", False, "HTTP 500"),         # failed
        _rec(8, "ramp-2", 203.0, 3, "The answer is 5"),             # T F T
        _rec(9, "ramp-2", 204.0, 0, "The answer is 17"),            # prompt 0 again: F F F
        _rec(1, "ramp-1", 100.0, 0, "The answer is 18."),           # T F T
        _rec(2, "ramp-1", 101.0, 1, "The answer is 4."),            # F F F
        _rec(3, "ramp-1", 102.0, 2, "The answer is 7", False, "stream cut"),  # failed: wrong anyway
        _rec(4, "ramp-1", 103.0, 3, "So #### 5"),                   # T T T
    ]
    with open(run / "records.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    config = {"model_abbr": "sim-model", "dataset": "gsm8k", "mode": "accuracy", "prompt_config": PROMPT_CONFIG}
    (run / "config.json").write_text(json.dumps(config))
    return run


# by hand: ramp-1 acc 2/4 strict 1/4 flex 2/4; ramp-2 acc 3/5 strict 1/5 flex 2/5; all acc 5/9 strict 2/9 flex 4/9
EXPECTED = {
    "total": {"accuracy": 500 / 9, "strict-match": 200 / 9, "flexible-extract": 400 / 9},
    "ramp-1": {"accuracy": 50.0, "strict-match": 25.0, "flexible-extract": 50.0},
    "ramp-2": {"accuracy": 60.0, "strict-match": 20.0, "flexible-extract": 40.0},
}
SHOWN = {"total": ("55.56", "22.22", "44.44"), "ramp-1": ("50.00", "25.00", "50.00"),
         "ramp-2": ("60.00", "20.00", "40.00")}


def test_score_run_per_stage(tmp_path):
    run = make_run(tmp_path)
    r = score_run(str(run), echo=False)
    assert list(r.stages.index) == ["total", "ramp-1", "ramp-2"]
    for stage, metrics in EXPECTED.items():
        for m, v in metrics.items():
            assert r.stages.loc[stage, m] == pytest.approx(v, abs=1e-12), (stage, m)
    assert r.stages.loc["total", "samples"] == 9 and r.stages.loc["total", "failed"] == 2
    assert r.stages.loc["ramp-2", "samples"] == 5 and r.stages.loc["ramp-2", "prompts"] == 4
    assert r.stages.loc["ramp-1", "accuracy_correct"] == 2
    # the returned table is the printed one
    assert list(r.table.columns) == ["dataset", "version", "metric", "mode", "sim-model"]
    assert list(r.table["dataset"]) == ["gsm8k"] * 3 + ["gsm8k@ramp-1"] * 3 + ["gsm8k@ramp-2"] * 3
    assert list(r.table["metric"][:3]) == ["accuracy", "strict-match", "flexible-extract"]
    assert set(r.table["mode"]) == {"gen"}
    assert r.table["sim-model"].iloc[3] == 50.0


def test_files_written(tmp_path):
    run = make_run(tmp_path)
    score_run(str(run), echo=False)
    version = hashlib.sha256(json.dumps(PROMPT_CONFIG, sort_keys=True).encode()).hexdigest()[:6]

    res = json.loads((run / "results" / "sim-model" / "gsm8k.json").read_text())
    assert res["accuracy"] == pytest.approx(500 / 9)
    assert res["strict-match"] == pytest.approx(200 / 9)
    assert res["flexible-extract"] == pytest.approx(400 / 9)
    assert res["details_file"] == os.path.join("results", "sim-model", "gsm8k_details.jsonl")
    assert res["version"] == version
    assert res["counts"]["samples"] == 9 and res["counts"]["failed"] == 2
    assert res["counts"]["accuracy_correct"] == 5
    assert set(res["stages"]) == {"ramp-1", "ramp-2"}
    assert res["stages"]["ramp-2"]["accuracy"] == 60.0
    assert res["stages"]["ramp-2"]["counts"]["samples"] == 5

    lines = (run / res["details_file"]).read_text().splitlines()
    details = [json.loads(x) for x in lines]
    assert len(details) == 9
    d = {x["id"]: x for x in details}
    assert d[3] == {"id": 3, "worker": "local", "prompt_index": 2, "stage": "ramp-1", "failed": True,
                    "error": "stream cut", "finish_reason": None, "reference": "7", "reference_lm_eval": "7",
                    "pred_accuracy": None, "correct_accuracy": False, "pred_strict-match": None,
                    "correct_strict-match": False, "pred_flexible-extract": None,
                    "correct_flexible-extract": False}
    assert d[5]["pred_accuracy"] == "18.00" and d[5]["correct_accuracy"] is True
    assert d[5]["pred_flexible-extract"] == "18.00" and d[5]["correct_flexible-extract"] is False
    assert d[4]["pred_strict-match"] == "5" and d[4]["correct_strict-match"] is True

    txt = (run / "summary" / "summary.txt").read_text()
    lines = txt.split("\n")
    assert lines[0] == "20260102_030405"          # the run's time string, as AISBench
    assert lines[1] == "tabulate format"
    assert lines[2] == "^" * 128
    assert lines[3].split() == ["dataset", "version", "metric", "mode", "sim-model"]
    assert set(lines[4].replace(" ", "")) == {"-"}
    rows = [x.split() for x in lines[5:14]]
    for (label, stage) in (("gsm8k", "total"), ("gsm8k@ramp-1", "ramp-1"), ("gsm8k@ramp-2", "ramp-2")):
        got = [row for row in rows if row[0] == label]
        assert [row[2] for row in got] == ["accuracy", "strict-match", "flexible-extract"]
        assert all(row[1] == version and row[3] == "gen" for row in got)
        assert tuple(row[4] for row in got) == SHOWN[stage]
    assert all(re.fullmatch(r"\d+\.\d\d", row[4]) for row in rows)
    assert lines[14] == "$" * 128 and lines[15] == ""
    assert "csv format" in txt and "markdown format" in txt and "raw format" in txt

    csv_lines = (run / "summary" / "summary.csv").read_text().splitlines()
    assert csv_lines[0] == "dataset,version,metric,mode,sim-model"
    assert csv_lines[1] == f"gsm8k,{version},accuracy,gen,55.56"
    assert csv_lines[4] == f"gsm8k@ramp-1,{version},accuracy,gen,50.00"
    md_lines = (run / "summary" / "summary.md").read_text().splitlines()
    assert md_lines[0] == "| dataset | version | metric | mode | sim-model |"
    assert md_lines[1] == "|----- | ----- | ----- | ----- | -----|"
    assert md_lines[2] == f"| gsm8k | {version} | accuracy | gen | 55.56 |"


def test_summary_layout_matches_aisbench_reference():
    """The reference run2 file, rebuilt from its own values, byte for byte (its first section)."""
    with open(REFERENCE_TXT, encoding="utf-8") as f:
        reference = f.read()
    table = [["dataset", "version", "metric", "mode", "vllm-api-stream-chat"],
             ["demo_gsm8k", "f588a9", "accuracy", "gen", "50.00"]]
    assert console_block(table, "20261127_092125") + "\n" == reference
    assert format_summary_txt(table, "20261127_092125", "raw").startswith(reference)


def test_console_output_and_progress(tmp_path, capsys):
    run = make_run(tmp_path)
    score_run(str(run), progress=True)
    out, err = capsys.readouterr()
    assert out.startswith("20260102_030405\ntabulate format\n" + "^" * 128 + "\n")
    assert "gsm8k@ramp-2" in out and "55.56" in out
    assert "note: 2 of 9 requests failed and count as wrong" in out
    assert err == ""  # a small run gets no progress line


def test_progress_line():
    stream = io.StringIO()  # not a tty: one line per 10%
    bar = Progress(50, stream=stream)
    for _ in range(50):
        bar.update()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "scoring: 5/50 records (10%)" and lines[-1] == "scoring: 50/50 records (100%)"
    assert len(lines) == 10


def test_rescoring_is_idempotent(tmp_path):
    run = make_run(tmp_path)
    score_run(str(run), echo=False)
    paths = sorted(p for p in run.rglob("*") if p.is_file())
    first = {p: p.read_bytes() for p in paths}
    score_run(str(run), echo=False)
    assert sorted(p for p in run.rglob("*") if p.is_file()) == paths
    assert {p: p.read_bytes() for p in paths} == first


def test_single_stage_run_and_coverage_note(tmp_path):
    run = tmp_path / "20260103_000000"
    run.mkdir()
    with open(run / "records.jsonl", "w") as f:
        f.write(json.dumps(new_record(id=0, prompt_index=0, reference="#### 18", completion="18",
                                      success=True)) + "\n")
        f.write("{cut short by a cra\n")
    (run / "config.json").write_text(json.dumps({"model_abbr": "m", "dataset": "gsm8k",
                                                 "prompt_config": PROMPT_CONFIG}))
    r = score_run(str(run), echo=False)
    assert list(r.table["dataset"]) == ["gsm8k"] * 3
    assert list(r.table["m"]) == [100.0, 0.0, 100.0]  # "18": no "####" for strict
    assert "1 of the 4 prompts of the pass were sent; the 3 never sent are not counted" in r.notes
    assert any("1 unreadable line" in n for n in r.notes)
    res = json.loads((run / "results" / "m" / "gsm8k.json").read_text())
    assert "stages" not in res and res["counts"]["expected_prompts"] == 4


def test_errors(tmp_path, capsys):
    with pytest.raises(AccuracyError, match="no records.jsonl here"):
        score_run(str(tmp_path))
    assert main(str(tmp_path)) == 2
    assert capsys.readouterr().err.startswith("error: ")

    run = tmp_path / "synthetic"
    run.mkdir()
    (run / "records.jsonl").write_text(json.dumps(new_record(id=0, dataset="synthetic", completion="x",
                                                             success=True)) + "\n")
    (run / "config.json").write_text(json.dumps({"dataset": "synthetic"}))
    with pytest.raises(AccuracyError) as e:
        score_run(str(run))
    assert str(e.value) == ("records of dataset synthetic carry no reference answers; accuracy needs "
                            "--dataset gsm8k or a custom file with answers")
    assert "\n" not in str(e.value)


def test_warmup_and_cancelled_records_are_not_samples(tmp_path):
    import json as _json
    from benchmark.accuracy import score_run
    from benchmark.records import new_record
    recs = [new_record(prompt_index=0, success=True, completion="The answer is 4", reference="#### 4"),
            new_record(prompt_index=1, success=True, completion="The answer is 5", reference="#### 4",
                       stage="warmup"),
            new_record(prompt_index=2, success=False, error="cancelled: the test stopped", reference="#### 4")]
    (tmp_path / "records.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in recs))
    (tmp_path / "config.json").write_text(_json.dumps({"model_abbr": "m", "dataset": "gsm8k"}))
    result = score_run(str(tmp_path), echo=False)
    assert result.stages.loc["total", "samples"] == 1
    assert result.stages.loc["total", "accuracy"] == 100.0
