"""The command line at its edges: bad input is one line naming what to fix and a non-zero exit, never a
traceback; options are discoverable; re-reporting keeps a run folder consistent; the GSM8K demo on the
built-in simulator scores a known accuracy."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import pytest

from benchmark import datasets
from benchmark.options import GROUPS, HELP_FLAG, ConfigError, RunConfig, add_arguments
from conftest import ROOT, free_port, run_dirs, run_locust
from test_report import synthetic_records, write_run


def error_lines(res) -> list[str]:
    return [ln for ln in (res.stderr + res.stdout).splitlines() if "error" in ln.lower()]


def assert_one_line(res, *names):
    """Non-zero exit, no traceback, exactly one error line, naming every one of `names`."""
    assert res.returncode != 0, res.stdout[-2000:]
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    errors = error_lines(res)
    assert len(errors) == 1 and all(n in errors[0] for n in names), (errors, res.stderr[-2000:])
    return errors[0]


def options(**values) -> argparse.Namespace:
    """Our options' defaults with `values` as typed (on a plain argparse parser: Locust, imported into the
    test process after ssl, would monkey-patch it too late; its own parser is tested in a subprocess)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    o = parser.parse_args([])
    o.num_users = o.host = o.run_time = None  # (Locust's own, that RunConfig reads)
    for k, v in values.items():
        setattr(o, k, v)
    return o


# ------------------------------------------------------------------------------------------ -u 0

def test_zero_users_is_refused_at_start(tmp_path):
    res = run_locust(tmp_path, "-u", "0", "-r", "1", "-t", "3s", timeout=60)
    assert_one_line(res, "-u", "0")
    assert not run_dirs(tmp_path)


def test_zero_users_check_leaves_shapes_alone():
    with pytest.raises(ConfigError, match="-u/--users"):
        RunConfig.from_options(options(num_users=0))
    # a step ramp names its own user counts (in a subprocess: benchmark.load imports Locust)
    script = ("import argparse; from benchmark.options import RunConfig, add_arguments; p = argparse.ArgumentParser(); "
              "add_arguments(p); o = p.parse_args([]); o.host = o.run_time = None; o.num_users = 0; o.steps = '2,4'; "
              "print(RunConfig.from_options(o).steps)")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.stdout.strip() == "[2, 4]", res.stderr[-2000:]
    assert RunConfig.from_options(options(num_users=None)).mode == "perf"  # web UI: the form sets it


# ------------------------------------------------------------------------------------------ sampling

@pytest.mark.parametrize("name,value,why", [
    ("top_k", "-2", "-1 (off) or at least 1"), ("top_k", "0", "-1 (off) or at least 1"),
    ("top_k", "2.5", "an integer"), ("top_p", "0", "(0, 1]"), ("top_p", "1.5", "(0, 1]"),
    ("temperature", "-0.1", "at least 0"), ("temperature", "hot", "a number"),
])
def test_sampling_values_outside_what_servers_accept_are_refused(name, value, why):
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ConfigError) as e:
        RunConfig.from_options(options(**{name: value}))
    assert str(e.value).startswith(f"{flag}:") and why in str(e.value) and repr(value) in str(e.value)


def test_sampling_values_servers_accept_are_sent():
    cfg = RunConfig.from_options(options(temperature="0", top_p="1", top_k="-1"))
    assert cfg.sampling == {"temperature": 0.0, "top_p": 1.0, "top_k": -1}
    assert RunConfig.from_options(options(top_k="40", top_p="0.95")).sampling == {"top_p": 0.95, "top_k": 40}


def test_bad_top_k_stops_the_run_before_any_request(tmp_path):
    res = run_locust(tmp_path, "--top-k", "-2", "-u", "1", "-t", "3s", timeout=60)
    assert_one_line(res, "--top-k", "'-2'")
    assert not run_dirs(tmp_path)


# ------------------------------------------------------------------------------------------ --output-dir

def test_unwritable_output_dir_is_one_line_and_no_user_runs(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # (a file as the parent: unwritable even for root, whom permission bits don't stop)
    res = subprocess.run([sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "locustfile.py"), "--headless",
                          "--only-summary", "--output-dir", str(blocker / "runs"), "-u", "1", "-t", "3s"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert_one_line(res, "--output-dir", str(blocker / "runs"))
    assert "Writing records" not in res.stdout and "Ramping" not in res.stderr


# ------------------------------------------------------------------------------------------ report on garbage

def test_report_on_a_records_file_of_garbage_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "records.jsonl").write_text("garbage\n{not json\n[1, 2]\n\x00\x01\n")
    rep = subprocess.run([sys.executable, "-m", "benchmark", "report", str(run)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert rep.returncode == 2, rep.stdout
    assert rep.stderr.count("\n") == 1 and "records.jsonl" in rep.stderr and "readable record" in rep.stderr
    assert "No request was sent" not in rep.stdout + rep.stderr and "Traceback" not in rep.stderr


# ------------------------------------------------------------------------------------------ discoverable options

def test_llm_help_lists_every_option_in_its_group():
    res = subprocess.run([sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "locustfile.py"), HELP_FLAG],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    text = res.stdout
    flags = [a.option_strings[0] for a in _our_actions()]
    assert len(flags) > 40
    for flag in flags:
        assert re.search(rf"^  {re.escape(flag)}\b", text, re.M), flag
    for title, members in GROUPS.items():
        assert f"\n{title}:\n" in text, title
        body = text.split(f"\n{title}:\n", 1)[1].split("\n\n", 1)[0]
        for flag in members:
            if flag in flags:
                assert re.search(rf"^  {re.escape(flag)}\b", body, re.M), (title, flag)
    assert "locust --help" in text  # and where Locust's own are


def _our_actions():
    parser = argparse.ArgumentParser()
    before = len(parser._actions)
    add_arguments(parser)
    return [a for a in parser._actions[before:] if a.option_strings[0] != HELP_FLAG]


def test_grouped_options_stay_in_the_web_ui_form():
    """Locust's form lists every action of its parser marked include_in_web_ui, grouped or not."""
    script = ("import json; from locust.argument_parser import get_empty_argument_parser as g, "
              "ui_extra_args_dict; from benchmark.options import add_arguments; p = g(); add_arguments(p); "
              "print(json.dumps(sorted(p.args_included_in_web_ui)))")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    in_form = set(json.loads(res.stdout.splitlines()[-1]))
    ours = {a.dest for a in _our_actions()}
    assert ours - in_form == {"api_key"}  # the key is kept out of the page source on purpose
    assert "llm_help" not in in_form


# ------------------------------------------------------------------------------------------ re-reporting

def _perf_files(run):
    base = os.path.join(run, "performances", "demo-model", "synthetic")
    return {name: open(f"{base}{name}", "rb").read() for name in (".csv", ".json", "_ci.csv", "_ci.json")}


def test_report_with_another_profile_writes_beside_the_run_and_leaves_its_files(tmp_path):
    run = write_run(tmp_path / "run", synthetic_records(200))
    report = [sys.executable, "-m", "benchmark", "report", run]
    assert subprocess.run(report, capture_output=True, cwd=ROOT, timeout=120).returncode == 0
    default = _perf_files(run)
    config_before = open(os.path.join(run, "config.json"), "rb").read()
    for profile in ("aisbench", "vllm", "guidellm"):
        res = subprocess.run(report + ["--metric-profile", profile], capture_output=True, text=True, cwd=ROOT,
                             timeout=120)
        assert res.returncode == 0, res.stderr
        assert f"profiles/{profile}" in res.stdout.replace(os.sep, "/")
        other = os.path.join(run, "profiles", profile)
        assert f"metric profile {profile}" in open(os.path.join(other, "report.html")).read()
        assert _perf_files(other) != default  # another tool's numbers, in their own folder
        assert _perf_files(run) == default  # the run's own files and config.json untouched
        assert open(os.path.join(run, "config.json"), "rb").read() == config_before
    assert "metric profile default" in open(os.path.join(run, "report.html")).read()
    # the run's own profile renders in place, byte for byte as before
    back = subprocess.run(report + ["--metric-profile", "default"], capture_output=True, cwd=ROOT, timeout=120)
    assert back.returncode == 0
    assert _perf_files(run) == default


def test_report_restores_a_folder_switched_by_an_older_version(tmp_path):
    run = write_run(tmp_path / "run", synthetic_records(50))
    report = [sys.executable, "-m", "benchmark", "report", run]
    assert subprocess.run(report, capture_output=True, cwd=ROOT, timeout=120).returncode == 0
    default = _perf_files(run)
    path = os.path.join(run, "config.json")
    config = json.load(open(path))
    config.update(metric_profile="aisbench", metric_profile_as_run="default")  # what `report` used to write
    json.dump(config, open(path, "w"))
    assert subprocess.run(report, capture_output=True, cwd=ROOT, timeout=120).returncode == 0
    assert _perf_files(run) != default  # that folder's files were AISBench's
    back = subprocess.run(report + ["--metric-profile", "default"], capture_output=True, cwd=ROOT, timeout=120)
    assert back.returncode == 0
    restored = json.load(open(path))
    assert restored["metric_profile"] == "default" and "metric_profile_as_run" not in restored
    assert _perf_files(run) == default


def test_accuracy_rescoring_re_renders_the_report(tmp_path):
    recs = synthetic_records(8, completion="The answer is 3")
    for r in recs:
        r["reference"] = "3"
        r["dataset"] = "demo_gsm8k"
    run = write_run(tmp_path / "run", recs, dataset="gsm8k", dataset_abbr="demo_gsm8k", mode="all")
    cmd = [sys.executable, "-m", "benchmark", "accuracy", run, "--no-progress"]
    assert subprocess.run(cmd, capture_output=True, cwd=ROOT, timeout=120).returncode == 0
    assert "100.00 %" in open(os.path.join(run, "report.html")).read()
    # a rule change (here: the references) and a rescore: report.html follows
    lines = [json.loads(ln) for ln in open(os.path.join(run, "records.jsonl"))]
    for r in lines[:2]:
        r["reference"] = "4"
    with open(os.path.join(run, "records.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines)
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    html = open(os.path.join(run, "report.html")).read()
    assert "75.00 %" in html and "100.00 %" not in html
    assert "Report written to" in res.stdout


# ------------------------------------------------------------------------------------------ prompts loaded

def test_loader_says_how_many_prompts_it_kept_and_why_it_left_others_out(tmp_path):
    convs = [{"conversations": [{"from": "human", "value": f"Tell me about topic number {i} in detail please"},
                                {"from": "gpt", "value": "Here is a fairly long answer about it. " * 3}]}
             for i in range(5)]
    convs.append({"conversations": [{"from": "human", "value": "only a question, no reply"}]})
    convs.append({"conversations": [{"from": "human", "value": "a question whose reply is short"},
                                    {"from": "gpt", "value": "Ok"}]})
    path = tmp_path / "share.json"
    path.write_text(json.dumps(convs))
    prompts = datasets.load("sharegpt", str(path), 0)
    line = datasets.describe(prompts)
    assert len(prompts) == 5
    assert line.startswith("Prompts: 5 loaded (sharegpt, 7 conversations in ")
    assert "2 left out by the loader's filters: 1 no human turn followed by a reply, 1 reply under 4 tokens" in line
    assert datasets.describe(datasets.load("custom", _custom(tmp_path), 0)).startswith("Prompts: 2 loaded (custom")


def _custom(tmp_path) -> str:
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "a"}\n\n{"question": "b"}\n')
    return str(path)


# ------------------------------------------------------------------------------------------ --processes

def test_processes_print_a_bad_option_once(tmp_path):
    port = str(free_port())  # its own master port: never another run's workers
    res = run_locust(tmp_path, "--processes", "2", "--master-bind-port", port, "--master-port", port,
                     "-u", "2", "-t", "3s", "--max-out-len", "many", timeout=90)
    assert_one_line(res, "--max-out-len", "'many'")
    assert "Bad response code" not in res.stderr and res.stderr.count("'many'") == 1


# ------------------------------------------------------------------------------------------ GSM8K demo

def test_gsm8k_demo_on_the_builtin_simulator_scores_the_shipped_answers(tmp_path):
    """The README's demo: the simulator answers from datasets/demo_gsm8k/simulator_answers.jsonl, 5 of 8
    right by AISBench's rule (one of them after a trailing `Question:` that the rule cuts off)."""
    res = run_locust(tmp_path, "-u", "8", "-r", "8", "--dataset", "gsm8k", "--dataset-path",
                     os.path.join(ROOT, "datasets", "demo_gsm8k"), "--subset", "demo", "--sim-ttft-ms", "5",
                     "--sim-itl-ms", "1", "-t", "60s", timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "answers from " in res.stdout and "simulator_answers.jsonl" in res.stdout
    assert re.search(r"^Prompts: 8 loaded \(gsm8k demo subset, 4shot: the first 8 of 10 questions", res.stdout, re.M)
    (run,) = run_dirs(tmp_path)
    result = json.load(open(os.path.join(run, "results", "llm-sim", "demo_gsm8k.json")))
    assert result["counts"]["samples"] == 8 and result["counts"]["failed"] == 0
    assert (result["accuracy"], result["strict-match"], result["flexible-extract"]) == (62.5, 25.0, 62.5)
    assert "62.50" in res.stdout


def test_demo_answers_file_covers_exactly_the_demo_questions():
    from benchmark.datasets.gsm8k import load
    answers = [json.loads(ln) for ln in open(os.path.join(ROOT, "datasets", "demo_gsm8k",
                                                          "simulator_answers.jsonl"))]
    prompts = load(os.path.join(ROOT, "datasets", "demo_gsm8k"), subset="demo")
    assert [a["question"] for a in answers] == [p.messages[-1]["content"].split("Question: ", 1)[1]
                                                .split("\nLet's think step by step", 1)[0] for p in prompts]

