"""The HTML report of `python -m benchmark compare BASE NEW --html PATH`: one self-contained file.

    from benchmark.report.comparison import render
    render(comparison, "compare.html")     # a compare.Comparison; returns the path written

Top to bottom: the verdict (gate breaches in red, notes), both runs' setup side by side, the comparison
table per stage (total first) with the differences coloured only where the verdict is significant,
overlaid CDFs of TTFT/TPOT/ITL/E2EL (base and new), latency against output throughput of both runs'
stages on one chart, and the paired accuracy test when there is one. Inline CSS and SVG, no script,
nothing fetched; every value goes through jinja2 autoescape, as in report.html.
"""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader

from .. import __version__, tables
from .. import (
    compare as _compare,  # module, not names: compare.py may import this module in turn
)
from . import load_text, svg, write_html
from .plots import NAMES, _common, _stat

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
CDF_POINTS = 400          # each CDF line is drawn through at most this many quantiles
CDF_SAMPLE = 4_000_000    # a pooled sample bigger than this is thinned evenly before its quantiles
CDF_METRICS = ("TTFT", "TPOT", "ITL", "E2EL")
LVT_METRICS = ("TTFT", "TPOT", "ITL", "E2EL")
SIDES = (("base", "c0"), ("new", "c1"))
MEDIAN = ("Median", "P50")

_env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True)


def render(comparison, out_path: str) -> str:
    """Write the comparison report of `comparison` (a compare.Comparison) to out_path; returns the path."""
    return write_html(_env.get_template("compare.html.j2").render(**context(comparison)), out_path)


def context(comparison) -> dict:
    rows = comparison.rows if comparison.rows is not None else pd.DataFrame(columns=list(_compare.ROW_COLUMNS))
    base_name, new_name = side_name(comparison.base), side_name(comparison.new)
    groups = table_groups(rows)
    total = next((g for g in groups if g["stage"] == "total"), groups[0] if groups else None)
    return {
        "title": f"{base_name} vs {new_name}",
        "subtitle": subtitle(comparison.base, comparison.new),
        "verdict": comparison.verdict or "",
        "breaches": list(comparison.breaches or []),
        "notes": list(comparison.notes or []),
        "counts": total["counts"] if total else [],
        "counts_stage": total["stage"] if total else "",
        "setup": setup(comparison.base, comparison.new),
        "groups": groups,
        "cdfs": [cdf_chart(m, comparison.base, comparison.new, rows) for m in CDF_METRICS],
        "lvt": lvt_charts(comparison.base, comparison.new),
        "accuracy": accuracy_rows(comparison.accuracy),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "version": __version__,
    }


# ---------------------------------------------------------------------------------------------
# header


def _run_name(path: str) -> str:
    path = str(path)
    return os.path.basename(os.path.normpath(path)) or path


def side_name(side, most: int = 3) -> str:
    names = [_run_name(r) for r in side.runs] or ["?"]
    if len(names) > most:
        return ", ".join(names[:most]) + f" +{len(names) - most} more"
    return ", ".join(names)


def _distinct(values) -> str:
    out = [str(v) for v in dict.fromkeys(v for v in values if v not in (None, "", [], {}))]
    return ", ".join(out) or "-"


def subtitle(base, new) -> str:
    """Models and hosts of both sides, said once when they are the same."""
    parts = []
    for key, name in (("model", "model"), ("host", "host")):
        b = _distinct(c.get(key) for c in base.configs or [])
        n = _distinct(c.get(key) for c in new.configs or [])
        parts.append(f"{name} {b}" if b == n else f"{name} {b} → {n}")
    return " · ".join(parts)


def _per_run(results: list, name: str, fmt: str) -> str:
    vals = []
    for r in results:
        v = _common(r.common, name, "total")
        vals.append("-" if not math.isfinite(v) else format(v, fmt))
    return ", ".join(vals) or "-"


def setup(base, new) -> list[tuple[str, str, str, bool]]:
    """(what, base, new, differs) rows: the two sides' runs and setup side by side."""
    def cfg(side, key):
        return _distinct(c.get(key) for c in side.configs or [])

    def dataset(side):
        return _distinct((c.get("dataset_abbr") or c.get("dataset")) for c in side.configs or [])

    rows = [
        ("Run folders", ", ".join(_run_name(r) for r in base.runs) or "-",
         ", ".join(_run_name(r) for r in new.runs) or "-"),
        ("Runs", str(len(base.runs)), str(len(new.runs))),
        ("Model", cfg(base, "model"), cfg(new, "model")),
        ("Target", cfg(base, "host"), cfg(new, "host")),
        ("Dataset", dataset(base), dataset(new)),
        ("Load", _distinct(load_text(c) for c in base.configs or []),
         _distinct(load_text(c) for c in new.configs or [])),
        ("Metric profile", _distinct([c.get("metric_profile") for c in base.configs or []]
                                     + [r.profile for r in base.results or []]),
         _distinct([c.get("metric_profile") for c in new.configs or []] + [r.profile for r in new.results or []])),
        ("Requests (per run)", _per_run(base.results or [], "Total Requests", ".0f"),
         _per_run(new.results or [], "Total Requests", ".0f")),
        ("Failed (per run)", _per_run(base.results or [], "Failed Requests", ".0f"),
         _per_run(new.results or [], "Failed Requests", ".0f")),
        ("Output token/s (per run)", _per_run(base.results or [], "Output Token Throughput", ".4g"),
         _per_run(new.results or [], "Output Token Throughput", ".4g")),
        ("Started", cfg(base, "started"), cfg(new, "started")),
        ("Paths", ", ".join(map(str, base.runs)) or "-", ", ".join(map(str, new.runs)) or "-"),
    ]
    same_anyway = {"Run folders", "Paths", "Started"}  # these differ between any two runs
    return [(k, b, n, b != n and k not in same_anyway) for k, b, n in rows]


# ---------------------------------------------------------------------------------------------
# the table


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def num(v, signed: bool = False) -> str:
    """A value for the table: about 4-6 significant digits, whole numbers without decimals."""
    if not _finite(v):
        return "-"
    v = float(v)
    a = abs(v)
    if a == 0:
        s = "0"
    elif v.is_integer() and a < 1e15:
        s = f"{int(v)}"
    elif a >= 1000:
        s = f"{v:.1f}"
    elif a >= 100:
        s = f"{v:.2f}"
    elif a >= 1:
        s = f"{v:.3f}"
    else:
        s = f"{v:.4g}"
    return f"+{s}" if signed and v > 0 else s


def pct(v) -> str:
    if not _finite(v):
        return ""
    p = float(v) * 100
    return f"{p:+.2f}" if abs(p) < 0.1 and p != 0 else f"{p:+.1f}"


def rel_text(rel, lo, hi) -> str:
    if not _finite(rel):
        return "-"
    text = f"{pct(rel)} %"
    if _finite(lo) or _finite(hi):
        text += f" [{pct(lo) or '?'}, {pct(hi) or '?'}]"
    return text


def _stage_order(stages) -> list[str]:
    seen = list(dict.fromkeys(str(s) for s in stages))
    return (["total"] if "total" in seen else []) + [s for s in seen if s != "total"]


def _get(row: dict, key: str, default=None):
    v = row.get(key, default)
    return default if v is None or (isinstance(v, float) and math.isnan(v)) else v


def table_groups(rows: pd.DataFrame) -> list[dict]:
    """The comparison rows per stage (total first), formatted, with each group's verdict counts."""
    if rows is None or not len(rows):
        return []
    recs = rows.to_dict("records")
    stage_of = [str(_get(r, "stage", "total")) for r in recs]
    significant = (_compare.BETTER, _compare.WORSE)
    groups = []
    for stage in _stage_order(stage_of):
        out = []
        counts: dict[str, int] = {}
        for r, s in zip(recs, stage_of):
            if s != stage:
                continue
            verdict = str(_get(r, "verdict", _compare.NA))
            counts[verdict] = counts.get(verdict, 0) + 1
            out.append({
                "metric": str(_get(r, "metric", "")),
                "statistic": str(_get(r, "statistic", "")),
                "unit": str(_get(r, "unit", "")),
                "better": str(_get(r, "better", "")),
                "base": num(r.get("base")),
                "new": num(r.get("new")),
                "diff": num(r.get("diff"), signed=True),
                "rel": rel_text(r.get("rel"), r.get("rel_lo"), r.get("rel_hi")),
                "verdict": verdict,
                # the colour class: only where the verdict is significant
                "cls": verdict if verdict in significant else "",
            })
        order = [_compare.WORSE, _compare.BETTER, _compare.SAME, _compare.NA]
        count_list = [(k, counts[k]) for k in order if k in counts] + \
                     [(k, v) for k, v in counts.items() if k not in order]
        groups.append({"stage": stage, "rows": out, "counts": count_list,
                       "significant": any(k in significant for k in counts)})
    return groups


# ---------------------------------------------------------------------------------------------
# CDFs


def _pooled(side, metric: str) -> np.ndarray:
    parts = []
    for s in side.samples or []:
        x = s.itl if metric == "ITL" else s.values.get(metric)
        if x is None:
            continue
        x = np.asarray(x, np.float64)
        parts.append(x[np.isfinite(x)])
    if not parts:
        return np.zeros(0)
    x = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if x.size > CDF_SAMPLE:  # evenly thinned: quantiles at 400 probabilities hardly move
        x = x[:: math.ceil(x.size / CDF_SAMPLE)]
    return x


def ecdf(x: np.ndarray, k: int = CDF_POINTS) -> tuple[np.ndarray, np.ndarray, bool]:
    """(x, cumulative %, step) of the empirical CDF of finite x: every sample when there are at most k
    (a step line), else the quantiles at k evenly spaced probabilities (a line through them)."""
    n = x.size
    if n <= k:
        xs = np.sort(x)
        return np.concatenate([xs[:1], xs]), np.concatenate([[0.0], np.arange(1, n + 1) / n * 100]), True
    p = np.linspace(0, 1, k)
    return np.quantile(x, p), p * 100, False


def _median_from_rows(rows: pd.DataFrame, metric: str, col: str) -> float:
    """The comparison table's own median of `metric` (stage total), so a marker never disagrees with it."""
    if rows is None or not len(rows) or col not in rows:
        return float("nan")
    sel = rows[(rows["metric"] == metric) & (rows["statistic"].isin(MEDIAN)) & (rows["stage"] == "total")]
    if not len(sel):
        return float("nan")
    v = sel[col].iloc[0]
    return float(v) if _finite(v) else float("nan")


def cdf_chart(metric: str, base, new, rows: pd.DataFrame) -> dict:
    key = f"cdf-{metric.lower()}"
    title = f"{metric} ({NAMES[metric]}), ms"
    data = {name: _pooled(side, metric) for name, side in (("base", base), ("new", new))}
    if all(x.size == 0 for x in data.values()):
        return {"key": key, "svg": svg.empty(title, "not measured on either side (non-streaming runs, "
                                                    "or no successful request)", key), "note": ""}
    present = {k: x for k, x in data.items() if x.size}
    q = {k: np.percentile(x, [1, 50, 99]) for k, x in present.items()}
    mn = min(float(x.min()) for x in present.values())
    mx = max(float(x.max()) for x in present.values())
    # the bodies of both distributions (as report.html's histograms): one outlier doesn't squash them
    lo = max(mn, min(p1 - 2 * max(p50 - p1, 0.01 * abs(p50) or 1e-3) for p1, p50, _ in q.values()))
    hi = min(mx, max(p99 + 2 * max(p99 - p50, 0.01 * abs(p50) or 1e-3) for _, p50, p99 in q.values()))
    if hi <= lo:
        pad = 0.01 * abs(hi) or 1e-3
        lo, hi = lo - pad, hi + pad
    if 0 <= lo < 0.25 * hi:
        lo = 0.0
    c = svg.Chart(title, "ms", "cumulative %", xrange=(lo, hi), yrange=(0, 100), key=key)
    notes = []
    marks = []
    for row, (name, cls) in enumerate(SIDES):
        x = data[name]
        if not x.size:
            notes.append(f"{name}: not measured")
            c.legend.append((f"{name} (not measured)", cls))
            continue
        xs, ys, step = ecdf(x)
        c.line(xs, ys, cls, label=name, step=step)
        med = _median_from_rows(rows, metric, name)
        marks.append((name, cls, med if math.isfinite(med) else float(np.median(x)), row))
        cut = [f"{100 * np.mean(x < lo):.1f} % below" if (x < lo).any() else "",
               f"{100 * np.mean(x > hi):.1f} % above" if (x > hi).any() else ""]
        cut = ", ".join(t for t in cut if t)
        unit = "gaps" if metric == "ITL" else "requests"
        notes.append(f"{name}: {x.size} {unit}" + (f" ({cut} the axis)" if cut else ""))
    anchor = "end" if any(c.near_right(v) for _, _, v, _ in marks) else "start"
    for name, cls, v, row in marks:
        c.vline(v, f"{name} P50 {v:.4g}", cls=f"med {cls}", row=row, anchor=anchor)
    return {"key": key, "svg": c.svg(), "note": "; ".join(notes) + "."}


# ---------------------------------------------------------------------------------------------
# latency vs throughput


def _points(results) -> tuple[pd.DataFrame, bool]:
    """One row per stage of a run (tables.curve), or its whole-run point when it has no stages."""
    table = tables.curve(results)
    if table is not None and len(table):
        return table, True
    row = {"stage": "total",
           "output_token_throughput_token_s": _common(results.common, "Output Token Throughput", "total")}
    for metric in LVT_METRICS:
        for stat in ("Median", "P90", "P99"):
            row[f"{metric}_{stat}_ms".lower()] = _stat(results.perf, metric, "total", stat)
    return pd.DataFrame([row]), False


def lvt_charts(base, new) -> dict:
    """Per metric, P50 (solid) and P99 (dashed) latency against output token/s: one line per run through
    its stages, base and new in their colours on one chart."""
    runs = {name: [(_run_name(path), *_points(r)) for path, r in
                   zip(list(side.runs) + [""] * len(side.results or []), side.results or [])]
            for name, side in (("base", base), ("new", new))}
    staged = any(has for rs in runs.values() for _, _, has in rs)
    charts = []
    for metric in LVT_METRICS:
        key = f"lvt-{metric.lower()}"
        p50, p99 = f"{metric}_median_ms".lower(), f"{metric}_p99_ms".lower()
        xs, ys = [], []
        for rs in runs.values():
            for _, t, _ in rs:
                xs.append(t["output_token_throughput_token_s"].to_numpy(float))
                ys.append(t[[p50, p99]].to_numpy(float).ravel())
        x, y = (np.concatenate(a) if a else np.zeros(0) for a in (xs, ys))
        x, y = x[np.isfinite(x)], y[np.isfinite(y)]
        title = f"{metric} P50 (solid), P99 (dashed) vs throughput" if staged else f"{metric} P50 and P99 vs throughput"
        if not x.size or not y.size or y.max() <= 0:
            charts.append({"key": key, "svg": svg.empty(title, "not measured", key, width=560, height=120)})
            continue
        c = svg.Chart(title, "output token/s" + (" (per stage)" if staged else " (whole run)"), "ms",
                      xrange=(0, x.max() * 1.1 or 1), yrange=(0, y.max() * 1.1), key=key)
        for name, cls in SIDES:
            measured = any(np.isfinite(t[[p50, p99]].to_numpy(float)).any() for _, t, _ in runs[name])
            c.legend.append((name if measured else f"{name} (not measured)", cls))
            for i, (run, t, has) in enumerate(runs[name]):
                order = np.argsort(t["output_token_throughput_token_s"].to_numpy(float), kind="stable")
                t = t.iloc[order]
                tx = t["output_token_throughput_token_s"].to_numpy(float)
                c.line(tx, t[p50].to_numpy(float), cls, points=True)
                c.line(tx, t[p99].to_numpy(float), f"{cls} dash", points=True)
                if has and i:  # the stages of a side's repeats: labelled once
                    continue
                for s, xv, yv in zip(t["stage"], tx, t[p50].to_numpy(float)):
                    c.label(xv, yv, str(s) if has else (run if len(runs[name]) > 1 else name))
        charts.append({"key": key, "svg": c.svg()})
    note = ("One point per load stage of each run: its P50 (solid) and P99 (dashed) latency against the "
            "output token throughput it reached; points labelled with the stage."
            if staged else
            "Neither side has load stages: one point per run, its whole-run P50 (large dot) and P99 (small "
            "dot) latency against its output token throughput.")
    return {"charts": charts, "note": note, "staged": staged}


# ---------------------------------------------------------------------------------------------
# accuracy


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "-" if not math.isfinite(float(v)) else f"{float(v):.4g}"
    if isinstance(v, str):
        return v
    try:
        return json.dumps(v, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(v)


def accuracy_rows(acc) -> list[tuple[str, str, str]] | None:
    """(key, value, colour class) per entry of the paired accuracy test, whatever keys it has."""
    if not acc:
        return None
    if not isinstance(acc, dict):
        return [("accuracy", _cell(acc), "")]
    out = []
    for k, v in acc.items():
        cls = str(v) if k == "verdict" and v in (_compare.BETTER, _compare.WORSE) else ""
        out.append((str(k), _cell(v), cls))
    return out
