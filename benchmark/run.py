"""A run folder: config.json, the record sink while the test runs, and the tables when it ends.

`report(run_dir)` is the one way tables are made, at test stop and by `python -m benchmark report`,
always from records.jsonl alone, so both give the same numbers.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time

from . import __version__, metrics, tables, tokens
from .datasets import Prompt
from .options import RunConfig
from .records import RecordSink, new_record, read_records


class ReportError(Exception):
    """A run folder that can't be reported on: one line saying what is missing."""


def build_body(prompt: Prompt, cfg: RunConfig, model: str) -> bytes:
    """The request body, built once per prompt before the test starts."""
    body = {"model": model, "messages": prompt.messages, "max_tokens": prompt.max_tokens or cfg.max_out_len,
            "stream": cfg.stream}
    if cfg.stream:
        body["stream_options"] = {"include_usage": True}
    if cfg.ignore_eos:  # only when asked: some servers answer 422 to fields they don't know
        body["ignore_eos"] = True
    body.update(cfg.sampling)
    return json.dumps(body, ensure_ascii=False).encode()


def model_abbr(cfg: RunConfig, model: str) -> str:
    name = cfg.model_abbr or model or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def _new_run_dir(root: str) -> str:
    base = os.path.join(root, time.strftime("%Y%m%d_%H%M%S"))
    path, n = base, 1
    while os.path.exists(path):  # two runs in one second (web UI restarts, tests)
        path, n = f"{base}_{n}", n + 1
    os.makedirs(path)
    return path


class Run:
    def __init__(self, cfg: RunConfig, model: str, host: str, extra: dict | None = None):
        self.cfg = cfg
        self.dir = _new_run_dir(cfg.output_dir)
        self.config = {
            **cfg.public(), "host": host, "model": model, "model_abbr": model_abbr(cfg, model),
            "tool": f"llm-testing {__version__}", "command": " ".join(sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {}),
        }
        self._write_config()
        self.sink = RecordSink(os.path.join(self.dir, "records.jsonl"))
        self.seq = 0
        self._input_counts: dict[int, int] = {}

    def _write_config(self) -> None:
        with open(os.path.join(self.dir, "config.json"), "w") as f:
            json.dump(self.config, f, indent=2)

    def record(self, result: dict, prompt: Prompt, worker: str, user: int) -> dict:
        """Complete one request's fields into a record, write it, and return it."""
        usage = result.pop("usage", None) or {}
        rec = new_record(id=self.seq, worker=worker, user=user, dataset=self.cfg.dataset_abbr,
                         prompt_index=prompt.index, reference=prompt.reference, **result)
        self.seq += 1
        if rec["success"]:
            self._count_tokens(rec, usage, prompt)
        self.sink.write(rec)
        return rec

    def _count_tokens(self, rec: dict, usage: dict, prompt: Prompt) -> None:
        """Server usage when it reports > 0, else the tokenizer (after the stream, never inside it)."""
        out_tokens = usage.get("completion_tokens") or 0
        in_tokens = usage.get("prompt_tokens") or 0
        rec["token_source"] = "usage" if out_tokens > 0 else "tokenizer"
        if not out_tokens:
            out_tokens = tokens.count_output(self.tokenizer, rec["completion"] + rec["reasoning"])
        if not in_tokens:
            if prompt.index not in self._input_counts:
                self._input_counts[prompt.index] = tokens.count_input(self.tokenizer, prompt.messages)
            in_tokens = self._input_counts[prompt.index]
        rec["output_tokens"], rec["input_tokens"] = out_tokens, in_tokens

    @property
    def tokenizer(self):
        return tokens.load_tokenizer(self.cfg.tokenizer)  # cached per path

    def finish(self, **extra) -> metrics.Results:
        self.sink.close()
        self.config.update(extra, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self._write_config()
        results = report(self.dir)
        if self.cfg.mode in ("accuracy", "all"):
            if self.cfg.mode == "all":
                print("Note: --mode all: latencies above are for natural-length outputs (no ignore_eos).")
            from .accuracy import AccuracyError, score_run
            try:
                score_run(self.dir)
            except AccuracyError as e:
                print(f"error: {e}")
        return results


def report(run_dir: str, profile: str | None = None, echo: bool = True) -> metrics.Results:
    """Tables from records.jsonl (+ config.json): printed and written under performances/."""
    records_path = os.path.join(run_dir, "records.jsonl")
    if not os.path.isfile(records_path):
        raise ReportError(f"{run_dir}: no records.jsonl here; pass a run folder like reports/20260101_120000")
    config = {}
    config_path = os.path.join(run_dir, "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            config = json.load(f)
    records, skipped = read_records(records_path)
    profile = profile or config.get("metric_profile", "default")
    results = metrics.compute(records, profile=profile, max_concurrency=config.get("max_users"),
                              stream=config.get("stream", True))
    perf_dir = os.path.join(run_dir, "performances", config.get("model_abbr", "model"))
    csv_path, json_path = tables.write(results, perf_dir, config.get("dataset_abbr", "dataset"))
    if echo:
        print(tables.console(results))
        failures = metrics.failure_summary(records)
        if len(failures):
            print("Failures by reason:")
            print(failures.to_string(index=False))
        if skipped:
            print(f"note: {skipped} unreadable line(s) in records.jsonl skipped (cut short by a crash?)")
        print(f"Results written to {csv_path} and {json_path}")
    return results
