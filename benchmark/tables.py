"""Render metrics.Results: console tables (AISBench layout) and the CSV/JSON files AISBench writes.

Value strings follow the profile:
- `aisbench`: the numbers are already rounded as AISBench rounds them (metrics.py); they are shown the way
  AISBench shows them, i.e. Python's str() of the float ("734.7 ms", "953.05", "43.555 token/s").
- `default`: ms with 3 decimals, token/s and req/s with 4, Concurrency rounded to 4, token counts as is.
Values that cannot be measured (NaN, e.g. TTFT of a non-streaming run) show as "-" (null in JSON).
"""
from __future__ import annotations

import csv
import json
import math
import os

import pandas as pd
from tabulate import tabulate

from .metrics import COUNT_METRICS, MS_METRICS, PERF_COLUMNS, RATE_METRICS, Results
from .stats import CI_COLUMNS, LEVEL

MISSING = "-"
COMMON_HEADERS = ("Common Metric", "Stage", "Value")


SHOW_DECIMALS = 4  # AISBench rounds every figure to 4 decimals (ms after the seconds are rounded)


def _number(value: float, decimals: int | None) -> str:
    """str() of the float as AISBench prints it (rounded to 4 decimals first: a figure AISBench itself
    rounded is unchanged, one it does not compute, such as Goodput, and a percentile of token counts
    lose their float noise: 415.8000000000002 -> 415.8), or fixed decimals."""
    return _short(value) if decimals is None else f"{value:.{decimals}f}"


def _short(value: float) -> str:
    return str(round(float(value), SHOW_DECIMALS))


def perf_value(metric: str, value: float, profile: str) -> str:
    """One statistic of the per-request table as a display string."""
    if value is None or math.isnan(value):
        return MISSING
    aisbench = profile == "aisbench"
    if metric in MS_METRICS:
        return _number(value, None if aisbench else 3) + " ms"
    if metric in RATE_METRICS:
        return _number(value, None if aisbench else 4) + " token/s"
    return _number(value, None)  # token counts: shown as is


def common_value(metric: str, value: float, unit: str, profile: str):
    """A common metric as AISBench's JSON holds it: a string with unit, or a bare number."""
    if value is None or math.isnan(value):
        return None
    if metric in COUNT_METRICS:
        return int(round(value))
    if profile == "aisbench":
        text = _short(value)
    elif unit == "ms":
        text = f"{value:.3f}"
    elif unit:
        text = f"{value:.4f}"
    else:
        return round(float(value), 4)
    return f"{text} {unit}" if unit else float(value)


def perf_rows(results: Results) -> list[list[str]]:
    """The per-request table as strings (header excluded), row order as in results.perf."""
    rows = []
    for rec in results.perf.itertuples(index=False):
        metric, stage, *values, n = rec
        rows.append([metric, stage, *(perf_value(metric, v, results.profile) for v in values), str(int(n))])
    return rows


def common_dict(results: Results) -> dict:
    """{"Benchmark Duration": {"total": "7383.463 ms"}, ...}: the layout of AISBench's JSON."""
    out: dict = {}
    for metric, stage, value, unit in results.common.itertuples(index=False):
        out.setdefault(metric, {})[stage] = common_value(metric, value, unit, results.profile)
    return out


def _display(value) -> str:
    return MISSING if value is None else str(value)


def console(results: Results) -> str:
    """Both tables in AISBench's console layout (tabulate fancy_grid, N centred)."""
    perf = tabulate(perf_rows(results), headers=list(PERF_COLUMNS), tablefmt="fancy_grid",
                    disable_numparse=True, colalign=("left",) * (len(PERF_COLUMNS) - 1) + ("center",))
    common_rows = [[metric, stage, _display(value)]
                   for metric, stages in common_dict(results).items() for stage, value in stages.items()]
    common = tabulate(common_rows, headers=list(COMMON_HEADERS), tablefmt="fancy_grid",
                      disable_numparse=True, colalign=("left",) * 3)
    return perf + "\n" + common


def write(results: Results, perf_dir: str, dataset: str) -> tuple[str, str]:
    """Write <perf_dir>/<dataset>.csv and .json as AISBench does; returns (csv_path, json_path)."""
    os.makedirs(perf_dir, exist_ok=True)
    csv_path = os.path.join(perf_dir, f"{dataset}.csv")
    json_path = os.path.join(perf_dir, f"{dataset}.json")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)  # csv's default \r\n line ends, as AISBench's files have
        writer.writerow(PERF_COLUMNS)
        writer.writerows(perf_rows(results))
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(common_dict(results), f, indent=4, ensure_ascii=False)
    return csv_path, json_path



def interval_rows(results: Results) -> list[list]:
    """The confidence intervals as CI_COLUMNS rows of strings: bounds in the table's units ("" = open)."""
    rows = []
    for metric, stage, stat, value, lo, hi, n, method, note in results.intervals.itertuples(index=False):
        def show(v):
            return "" if v is None or math.isnan(v) else perf_value(metric, v, "default")
        rows.append([metric, stage, stat, show(value), show(lo), show(hi), str(int(n)), method, note])
    return rows


def write_intervals(results: Results, perf_dir: str, dataset: str) -> tuple[str, str] | None:
    """<dataset>_ci.csv and <dataset>_ci.json beside AISBench's two files (which keep their exact layout):
    a 95 % interval for every Average and percentile of the per-request table. Returns the paths."""
    if results.intervals is None:
        return None
    csv_path = os.path.join(perf_dir, f"{dataset}_ci.csv")
    json_path = os.path.join(perf_dir, f"{dataset}_ci.json")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow((*CI_COLUMNS[:3], "Value", f"Lower {LEVEL:.0%}", f"Upper {LEVEL:.0%}", *CI_COLUMNS[6:]))
        writer.writerows(interval_rows(results))
    out: dict = {"level": LEVEL, "metrics": {}}
    for metric, stage, stat, value, lo, hi, n, method, note in results.intervals.itertuples(index=False):
        def num(v):
            return None if v is None or math.isnan(v) else float(v)
        out["metrics"].setdefault(metric, {}).setdefault(stage, {})[stat] = {
            "value": num(value), "lower": num(lo), "upper": num(hi), "n": int(n), "method": method,
            **({"note": note} if note else {})}
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2, ensure_ascii=False)
    return csv_path, json_path


def thin_notes(results: Results, stage: str = "total") -> list[str]:
    """Figures too thin to mean much (the intervals' notes), for the console and the report."""
    if results.intervals is None:
        return []
    ci = results.intervals
    rows = ci[(ci["Stage"] == stage) & (ci["Note"] != "")]
    return [f"{metric} {note}" for metric, note in zip(rows["Performance Parameters"], rows["Note"])]


def curve(results: Results) -> pd.DataFrame | None:
    """Latency against throughput, one row per stage (steps, capacity-search steps); None without stages."""
    stages = [s for s in dict.fromkeys(results.perf["Stage"]) if s != "total"]
    if not stages:
        return None
    perf = results.perf.set_index(["Performance Parameters", "Stage"])
    common = results.common.set_index(["Common Metric", "Stage"])["Value"]
    rows = []
    for stage in stages:
        row = {"stage": stage, "peak_in_flight": common[("Peak In-Flight", stage)],
               "request_throughput_req_s": common[("Request Throughput", stage)],
               "output_token_throughput_token_s": common[("Output Token Throughput", stage)]}
        for metric in ("TTFT", "TPOT", "ITL", "E2EL"):
            for stat in ("Median", "P90", "P99"):
                row[f"{metric}_{stat}_ms".lower()] = perf.loc[(metric, stage), stat]
        rows.append(row)
    return pd.DataFrame(rows)


def write_curve(results: Results, perf_dir: str, dataset: str) -> str | None:
    """<perf_dir>/<dataset>_curve.csv when the run has stages; its path, or None."""
    table = curve(results)
    if table is None:
        return None
    path = os.path.join(perf_dir, f"{dataset}_curve.csv")
    table.to_csv(path, index=False, float_format="%.4f")
    return path


EMPTY_WARN_SHARE = 0.2  # a fifth of the answers empty: say it loudly


def empty_note(results: Results, stage: str = "total") -> str:
    """How many successful answers were empty (0 output tokens: finish_reason stop, nothing said), with a
    warning when a large share is; '' when none was. They stay successes: the server meant them."""
    empty, ok = (results.empty or {}).get(stage, (0, 0))
    if not empty:
        return ""
    counted = ("under the guidellm profile those without text count as failures, as GuideLLM counts them"
               if results.profile == "guidellm" else "counted as successes")
    line = (f"Empty answers: {empty} of {ok} successful request(s) ({100 * empty / ok:.0f} %) returned "
            f"0 output tokens ({counted})")
    if empty >= EMPTY_WARN_SHARE * ok:
        line += (". WARNING: a large share of empty answers: a broken chat template, a wrong stop "
                 "sequence or a model that ends at once looks exactly like this; read a completion in "
                 "records.jsonl")
    return line
