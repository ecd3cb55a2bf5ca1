"""Score the completions of a run folder: records.jsonl (+ config.json) -> accuracy per load stage.

Counting: every record is one sample. A failed request is a wrong sample; the denominator of a row is
every request of that row (success or failure). A prompt sent several times (the cursor wrapped, or
several passes) contributes one sample per request, so repeated passes weigh every prompt equally.
Prompts of the pass that were never sent (a run stopped early) are not samples: they are reported as
coverage (`prompts` scored out of `expected_prompts`), never counted as wrong.

The prediction is the record's `completion` (the streamed `content`); `reasoning` (`reasoning_content`)
is never scored, as in AISBench where reasoning sits before `</think>` and is dropped.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field

import pandas as pd

from ..records import read_records
from . import summary
from .gsm8k import METRICS, lm_eval_normalize, reference_answer, score_sample

TOTAL = "total"  # the record's stage when the load shape has none
PROGRESS_MIN = 2000  # records: below this scoring takes well under a second, no progress line


class AccuracyError(Exception):
    """A run that can't be scored: one line saying why."""


@dataclass
class AccuracyResult:
    """What `score_run` computed and wrote.

    table:   the summary table as printed: columns dataset, version, metric, mode, <model_abbr> (float %).
    stages:  one row per stage, index `total` (the whole run) first, then each load stage in time order;
             columns samples, prompts, failed, truncated, <metric> (%), <metric>_correct (count).
    details: one row per scored record (see `score_records`).
    """
    table: pd.DataFrame
    stages: pd.DataFrame
    details: pd.DataFrame
    text: str
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.text


# ---------------------------------------------------------------- progress

class Progress:
    """A minimal progress line on stderr (tqdm is not a dependency)."""

    def __init__(self, total: int, label: str = "scoring", stream=None, enabled: bool = True):
        self.total, self.label, self.enabled = total, label, enabled and total > 0
        self.stream = stream or sys.stderr
        tty = getattr(self.stream, "isatty", lambda: False)()
        self.every = max(1, total // (100 if tty else 10))
        self.end = "\r" if tty else "\n"
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.enabled and (self.n % self.every == 0 or self.n == self.total):
            self.stream.write(f"{self.label}: {self.n}/{self.total} records ({100 * self.n // self.total}%)"
                              f"{self.end}")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.end == "\r":
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------- scoring

def _has_reference(rec: dict) -> bool:
    ref = rec.get("reference")
    return isinstance(ref, str) and ref.strip() != ""


DETAIL_COLUMNS = (["id", "worker", "prompt_index", "stage", "t_send", "failed", "error", "finish_reason",
                   "reference", "reference_lm_eval"]
                  + [f"{k}_{m}" for m in METRICS for k in ("pred", "correct")])


def _score_rows(records: list[dict], progress: bool = False) -> list[dict]:
    scored = [r for r in records if _has_reference(r)]
    bar = Progress(len(scored), enabled=progress and len(scored) >= PROGRESS_MIN)
    rows = []
    for rec in scored:
        failed = not rec.get("success")
        ref = rec["reference"]
        row = {"id": rec.get("id"), "worker": rec.get("worker"), "prompt_index": rec.get("prompt_index"),
               "stage": rec.get("stage") or TOTAL, "t_send": rec.get("t_send"), "failed": failed,
               "error": rec.get("error") or "", "finish_reason": rec.get("finish_reason")}
        if failed:  # a failed request is a wrong answer, whatever partial text it streamed
            row.update(reference=reference_answer(ref), reference_lm_eval=lm_eval_normalize(ref))
            for m in METRICS:
                row[f"pred_{m}"], row[f"correct_{m}"] = None, False
        else:
            s = score_sample(rec.get("completion") or "", ref)
            row.update(reference=s["reference"], reference_lm_eval=s["reference_lm_eval"])
            for m in METRICS:
                row[f"pred_{m}"], row[f"correct_{m}"] = s["pred"][m], s["correct"][m]
        rows.append(row)
        bar.update()
    bar.close()
    return rows


def score_records(records: list[dict], progress: bool = False) -> pd.DataFrame:
    """One row per record that carries a reference answer, in record order.

    Columns: id, worker, prompt_index, stage, t_send, failed, error, finish_reason, reference
    (OpenCompass form), reference_lm_eval (lm-eval normalised), and for each metric m in METRICS
    `pred_<m>` (None for a failed request) and `correct_<m>`.
    """
    return pd.DataFrame(_score_rows(records, progress), columns=DETAIL_COLUMNS)


def stage_order(details: pd.DataFrame) -> list[str]:
    """Load stages in time order (earliest send), ties by first appearance; [] when the run has none."""
    stages = list(dict.fromkeys(details["stage"]))
    if stages == [TOTAL] or not stages:
        return []
    first = pd.to_numeric(details["t_send"], errors="coerce").groupby(details["stage"], sort=False).min()

    def key(stage):
        t = first.get(stage)
        return (pd.isna(t), 0.0 if pd.isna(t) else float(t), stages.index(stage))
    return sorted(stages, key=key)


def _row(d: pd.DataFrame) -> dict:
    n = len(d)
    out = {"samples": n, "prompts": int(d["prompt_index"].nunique()), "failed": int(d["failed"].sum()),
           "truncated": int((d["finish_reason"] == "length").sum())}
    for m in METRICS:
        correct = int(d[f"correct_{m}"].sum())
        out[m] = 100 * correct / n
        out[f"{m}_correct"] = correct
    return out


def stage_table(details: pd.DataFrame) -> pd.DataFrame:
    """Per-stage accuracy: index `total` first, then each load stage in time order."""
    if not len(details):
        raise AccuracyError("no scorable records")
    rows = {TOTAL: _row(details)}
    for stage in stage_order(details):
        # a stage literally named "total" next to real stages would collide with the whole-run row
        rows["total (stage)" if stage == TOTAL else stage] = _row(details[details["stage"] == stage])
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "stage"
    return df


# ---------------------------------------------------------------- run folder

def prompt_version(prompt_config) -> str:
    """Our `version` column: first 6 hex of sha256(json.dumps(prompt_config, sort_keys=True));
    `-` (AISBench's placeholder) when the run didn't record its prompt configuration."""
    if not prompt_config:
        return "-"
    return hashlib.sha256(json.dumps(prompt_config, sort_keys=True).encode()).hexdigest()[:6]


def run_time_str(run_dir: str, config: dict) -> str:
    """AISBench's time string (%Y%m%d_%H%M%S) of the run, not of the scoring, so rescoring a run
    rewrites identical files: the run folder's name, else config `started`, else records' mtime."""
    m = re.match(r"(\d{8}_\d{6})", os.path.basename(os.path.normpath(run_dir)))
    if m:
        return m.group(1)
    started = config.get("started")
    if isinstance(started, str):
        for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"):
            try:
                return time.strftime("%Y%m%d_%H%M%S", time.strptime(started, fmt))
            except ValueError:
                pass
    return time.strftime("%Y%m%d_%H%M%S", time.localtime(os.path.getmtime(os.path.join(run_dir, "records.jsonl"))))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "-", str(name)).strip("-") or "dataset"


def _read_config(run_dir: str) -> dict:
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except ValueError as e:
        raise AccuracyError(f"{path}: not valid JSON ({e})") from None
    return config if isinstance(config, dict) else {}


def score_run(run_dir: str, progress: bool = False, echo: bool = True) -> AccuracyResult:
    """Score `run_dir/records.jsonl`, write results/ and summary/, print the table (echo) and return it.

    Reads config.json keys `model_abbr`, `dataset` (or `dataset_abbr`), `prompt_config`, `ignore_eos`;
    all optional. Raises AccuracyError (one line) for a folder without records or without references.
    """
    records_path = os.path.join(run_dir, "records.jsonl")
    if not os.path.isfile(records_path):
        raise AccuracyError(f"{run_dir}: no records.jsonl here; pass a run folder like reports/20260101_120000")
    config = _read_config(run_dir)
    records, skipped = read_records(records_path)
    # warm-up requests (--warmup) and requests cut short by the test stopping are not samples
    records = [r for r in records if r.get("stage") != "warmup"
               and not (r.get("error") or "").startswith("cancelled")]
    if not records:
        raise AccuracyError(f"{records_path}: no records to score")
    dataset = (config.get("dataset_abbr") or config.get("dataset")
               or next((r["dataset"] for r in records if r.get("dataset")), None) or "dataset")
    if not any(_has_reference(r) for r in records):
        raise AccuracyError(f"records of dataset {dataset} carry no reference answers; accuracy needs "
                            f"--dataset gsm8k or a custom file with answers")
    model_abbr = config.get("model_abbr") or "model"
    prompt_config = config.get("prompt_config")
    version = prompt_version(prompt_config)

    rows = _score_rows(records, progress=progress)
    details = pd.DataFrame(rows, columns=DETAIL_COLUMNS)
    stages = stage_table(details)
    total = stages.loc[TOTAL]

    # ---- notes
    notes = []
    unscored = len(records) - len(details)
    if unscored:
        notes.append(f"{unscored} record(s) without a reference answer not scored")
    expected = prompt_config.get("num_prompts") if isinstance(prompt_config, dict) else None
    expected = expected or config.get("num_prompts")
    if not isinstance(expected, int) or isinstance(expected, bool) or expected <= 0:
        expected = None
    if expected and 0 < total["prompts"] < expected:
        notes.append(f"{int(total['prompts'])} of the {expected} prompts of the pass were sent; the "
                     f"{expected - int(total['prompts'])} never sent are not counted")
    if total["failed"]:
        notes.append(f"{int(total['failed'])} of {int(total['samples'])} requests failed and count as wrong")
    if total["truncated"]:
        notes.append(f"{int(total['truncated'])} completion(s) stopped at max_tokens (finish_reason=length)")
    if config.get("ignore_eos"):
        notes.append("this run used ignore_eos: completions ran on past their answer, accuracy is not meaningful")
    if skipped:
        notes.append(f"{skipped} unreadable line(s) in records.jsonl skipped (cut short by a crash?)")

    # ---- results/<model_abbr>/<dataset>.json and the details file
    ds, abbr = _safe(dataset), _safe(model_abbr)
    details_rel = os.path.join("results", abbr, f"{ds}_details.jsonl")
    files = {"results": os.path.join(run_dir, "results", abbr, f"{ds}.json"),
             "details": os.path.join(run_dir, details_rel)}

    def metrics_of(stage: str) -> dict:
        return {m: float(stages.loc[stage, m]) for m in METRICS}

    def counts_of(stage: str) -> dict:
        row = stages.loc[stage]
        c = {k: int(row[k]) for k in ("samples", "prompts", "failed", "truncated")}
        c.update({f"{m}_correct": int(row[f"{m}_correct"]) for m in METRICS})
        return c

    result_json = {**metrics_of(TOTAL), "details_file": details_rel, "version": version,
                   "counts": counts_of(TOTAL)}
    if expected:
        result_json["counts"]["expected_prompts"] = expected
    if unscored:
        result_json["counts"]["unscored"] = unscored
    staged = [s for s in stages.index if s != TOTAL]
    if staged:
        result_json["stages"] = {s: {**metrics_of(s), "counts": counts_of(s)} for s in staged}
    summary.write_json(files["results"], result_json)
    summary.write_jsonl(files["details"], [{k: v for k, v in r.items() if k != "t_send"} for r in rows])

    # ---- summary/summary.{txt,csv,md}: the whole run, then one row set per stage
    scores = {None if s == TOTAL else s: metrics_of(s) for s in stages.index}
    table = summary.summary_rows(scores, ds, version, model_abbr)
    time_str = run_time_str(run_dir, config)
    raw = {summary.row_label(ds, stage): values for stage, values in scores.items()}
    written = summary.write_summary(os.path.join(run_dir, "summary"), table, time_str,
                                    summary.format_raw(raw, model_abbr))
    files.update({f"summary_{ext}": path for ext, path in written.items()})

    frame = pd.DataFrame(table[1:], columns=table[0])
    frame[model_abbr] = [values[m] for values in scores.values() for m in METRICS]  # same order as rows

    text = summary.console_block(table, time_str)
    text += "".join(f"note: {n}\n" for n in notes)
    text += f"Accuracy written to {files['results']} and {os.path.join(run_dir, 'summary')}\n"
    if echo:
        print(text, end="")
    return AccuracyResult(table=frame, stages=stages, details=details, text=text, files=files, notes=notes)
