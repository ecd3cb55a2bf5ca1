"""GSM8K accuracy from the completions a load test already collected (no extra inference).

    from benchmark.accuracy import score_run, AccuracyError
    result = score_run("reports/20260101_120000", progress=True)   # prints the AISBench-style table

`gsm8k` holds the extraction rules, `score` the per-record / per-stage scoring, `summary` the writers.
"""
from __future__ import annotations

import sys

from .gsm8k import (METRICS, extract_accuracy, extract_flexible, extract_strict, is_correct,
                    lm_eval_match, reference_answer, score_sample, strip_reasoning)
from .score import (AccuracyError, AccuracyResult, prompt_version, score_records, score_run,
                    stage_table)

__all__ = ["METRICS", "AccuracyError", "AccuracyResult", "extract_accuracy", "extract_flexible",
           "extract_strict", "is_correct", "lm_eval_match", "main", "prompt_version", "reference_answer",
           "score_records", "score_run", "score_sample", "stage_table", "strip_reasoning"]


def main(run_dir: str, progress: bool = True) -> int:
    """`python -m benchmark accuracy RUN_DIR`: rescore from records.jsonl and re-render report.html;
    0, or 2 with one error line."""
    try:
        score_run(run_dir, progress=progress)
    except AccuracyError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    # report.html shows the accuracy too: re-rendered, so the run folder never disagrees with itself
    from ..report import render
    print(f"Report written to {render(run_dir)}")
    return 0
