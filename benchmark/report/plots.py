"""The report's charts, as inline SVG, from RunData (per-request arrays) and metrics.Results (the tables).

Percentile markers are the tables' own numbers, so a chart never disagrees with the table above it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import svg
from .data import RunData, bin_width, downsample, mean_in_flight, per_bin_rate

BINS = 50
SCATTER_POINTS = 3000
GANTT_ROWS = 300
LAT_METRICS = (("TTFT", "ttft"), ("TPOT", "tpot"), ("ITL", "itl"), ("E2EL", "e2el"))
NAMES = {"TTFT": "time to first token", "TPOT": "time per output token", "ITL": "inter-token latency",
         "E2EL": "end-to-end latency"}


def _stat(perf: pd.DataFrame, metric: str, stage: str, col: str) -> float:
    row = perf[(perf["Performance Parameters"] == metric) & (perf["Stage"] == stage)]
    return float(row[col].iloc[0]) if len(row) else float("nan")


def _common(common: pd.DataFrame, metric: str, stage: str) -> float:
    row = common[(common["Common Metric"] == metric) & (common["Stage"] == stage)]
    return float(row["Value"].iloc[0]) if len(row) else float("nan")


def stage_names(perf: pd.DataFrame) -> list[str]:
    return [s for s in dict.fromkeys(perf["Stage"]) if s != "total"]


def distribution(metric: str, samples: np.ndarray, perf: pd.DataFrame) -> dict:
    """Histogram (left axis: requests or gaps) and CDF (right axis: %), P50/P90/P99 marked."""
    key = f"dist-{metric.lower()}"
    title = f"{metric} ({NAMES[metric]}), ms"
    x = samples[np.isfinite(samples)]
    note = ""
    if x.size == 0:
        return {"key": key, "svg": svg.empty(title, "no samples (non-streaming run, or no successful request)", key),
                "note": ""}
    unit = "gaps" if metric == "ITL" else "requests"
    lo, hi, note = _body(x, unit)
    edges = np.linspace(lo, hi, BINS + 1)
    counts, _ = np.histogram(x, bins=edges)
    below = int((x < edges[0]).sum())
    cdf = (below + np.concatenate([[0], np.cumsum(counts)])) / x.size * 100
    c = svg.Chart(title, "ms", unit, xrange=(lo, hi), yrange=(0, counts.max() * 1.08),
                  y2label="cumulative %", y2range=(0, 100), key=key)
    tips = [f"{edges[i]:.4g}-{edges[i + 1]:.4g} ms: {counts[i]} {unit} ({100 * counts[i] / x.size:.1f}%)"
            for i in range(BINS)]
    c.bars(edges, counts, "c0", tips, label="histogram")
    c.line(edges, cdf, "c3", y2=True, label="CDF")
    marks = [(name, _stat(perf, metric, "total", col))
             for name, col in (("P50", "Median"), ("P90", "P90"), ("P99", "P99"))]
    # labels all to the right of their line, or all to the left when one would run off the plot
    anchor = "end" if any(c.near_right(v) for _, v in marks) else "start"
    for row, (name, v) in enumerate(marks):
        c.vline(v, f"{name} {v:.4g}", row=row, anchor=anchor)
    return {"key": key, "svg": c.svg(), "note": note}


def _one(unit: str, n: int) -> str:
    return unit[:-1] if n == 1 else unit


def _body(x: np.ndarray, unit: str) -> tuple[float, float, str]:
    """The range drawn: the body of the distribution, so one outlier doesn't squash the rest into a bar.

    From P1 - 2*(P50 - P1) to P99 + 2*(P99 - P50), never past the data; what falls outside is said."""
    mn, mx = float(x.min()), float(x.max())
    p1, p50, p99 = np.percentile(x, [1, 50, 99])
    pad = 0.01 * abs(p50) or 1e-3
    lo = max(mn, p1 - 2 * max(p50 - p1, pad))
    hi = min(mx, p99 + 2 * max(p99 - p50, pad))
    if hi - lo <= 1e-6 * max(abs(p50), 1e-9):  # one value (up to float noise): a band around it
        lo, hi = float(p50) - pad, float(p50) + pad
    notes = []
    below, above = int((x < lo).sum()), int((x > hi).sum())
    if below:
        notes.append(f"{below} {_one(unit, below)} below {lo:.4g} ms (min {mn:.4g})")
    if above:
        notes.append(f"{above} {_one(unit, above)} above {hi:.4g} ms (max {mx:.4g})")
    return float(lo), float(hi), ("Not drawn: " + "; ".join(notes) + ".") if notes else ""


def _stage_marks(chart: svg.Chart, data: RunData, stages: list[str]) -> None:
    """A labelled line where each stage starts (first send of the stage)."""
    for i, name in enumerate(stages):
        sel = data.stage == name
        if sel.any():
            chart.vline(float(np.nanmin(data.start[sel])), str(name), cls="stg", row=i % 3)


def over_time(data: RunData, stages: list[str]) -> list[dict]:
    duration = max(data.duration, 1e-3)
    width = bin_width(duration)
    nbins = max(int(np.ceil(duration / width)), 1)
    edges = np.minimum(np.arange(nbins + 1) * width, duration)
    if nbins > 1 and edges[-1] - edges[-2] < 0.5 * width:  # a sliver of a last bin: fold it into the one before
        edges = np.delete(edges, -2)
    mid = edges[:-1]
    label = "per second" if width == 1 else f"per second, {width:g} s bins"
    xl = "seconds since the first request"
    charts = []

    tok = per_bin_rate(data.tok_time, edges, data.tok_weight)
    c = svg.Chart(f"Output token/s ({label})", xl, "token/s", width=1130, height=220,
                  xrange=(0, edges[-1]), xtight=True,
                  yrange=(0, max(tok.max(), 1) * 1.08), key="time-tokens")
    _stage_marks(c, data, stages)
    c.line(np.append(mid, edges[-1]), np.append(tok, tok[-1]), "c0", step=True, label="output token/s")
    charts.append({"key": "time-tokens", "svg": c.svg(), "wide": True})

    ok = per_bin_rate(np.where(data.success, data.end, np.nan), edges)
    fail_t = np.where(np.isfinite(data.end), data.end, data.start)
    bad = per_bin_rate(np.where(~data.success, fail_t, np.nan), edges)
    c = svg.Chart(f"Requests/s completed ({label})", xl, "req/s", width=1130, height=200,
                  xrange=(0, edges[-1]), xtight=True, yrange=(0, max(ok.max(), bad.max(), 0.1) * 1.08),
                  key="time-requests")
    _stage_marks(c, data, stages)
    c.line(np.append(mid, edges[-1]), np.append(ok, ok[-1]), "c1", step=True, label="succeeded")
    if bad.any():
        c.line(np.append(mid, edges[-1]), np.append(bad, bad[-1]), "bad", step=True, label="failed")
    charts.append({"key": "time-requests", "svg": c.svg(), "wide": True})

    end = np.where(np.isfinite(data.end), data.end, data.start)
    fl = mean_in_flight(data.start, end, edges)
    c = svg.Chart(f"Requests in flight (mean over each {width:g} s)", xl, "in flight", width=1130, height=200,
                  xrange=(0, edges[-1]), xtight=True, yrange=(0, max(fl.max(), 1) * 1.08), key="time-inflight")
    _stage_marks(c, data, stages)
    c.line(np.append(mid, edges[-1]), np.append(fl, fl[-1]), "c2", step=True, label="in flight")
    charts.append({"key": "time-inflight", "svg": c.svg(), "wide": True})
    return charts


def scatter(data: RunData, metric: str, values: np.ndarray, stages: list[str]) -> dict:
    key = f"scatter-{metric.lower()}"
    title = f"{metric} of each request over time, ms"
    idx = np.flatnonzero(np.isfinite(values) & np.isfinite(data.start))
    if idx.size == 0:
        return {"key": key, "svg": svg.empty(title, "no samples", key), "note": ""}
    shown = downsample(idx, SCATTER_POINTS)
    note = f"{shown.size} of {idx.size} requests drawn (random sample)." if shown.size < idx.size else ""
    c = svg.Chart(title, "seconds since the first request (send time)", "ms",
                  xrange=(0, max(float(data.start[idx].max()), 1e-9)),
                  yrange=(0, float(values[idx].max()) * 1.05 or 1), key=key)
    groups = stages or ["total"]
    for i, name in enumerate(groups):
        sel = shown[data.stage[shown] == name] if stages else shown
        c.dots(data.start[sel], values[sel], f"c{i % 8}", label=str(name) if stages else None)
    return {"key": key, "svg": c.svg(), "note": note}


def timeline(data: RunData) -> dict:
    key = "timeline"
    title = f"Request timeline: first {GANTT_ROWS} requests by send time"
    order = np.argsort(data.start, kind="stable")
    order = order[np.isfinite(data.start[order])][:GANTT_ROWS]
    if order.size == 0:
        return {"key": key, "svg": svg.empty(title, "no requests", key), "note": ""}
    rows = np.arange(order.size)
    start = data.start[order]
    end = np.where(np.isfinite(data.end[order]), data.end[order], start)
    first = start + np.nan_to_num(data.ttft[order], nan=0) / 1000
    ok = data.success[order]
    height = min(max(6 * order.size, 160), 560)
    c = svg.Chart(title.replace(f"first {GANTT_ROWS}", f"first {order.size}"),
                  "seconds since the first request", "request (send order)", width=1130, height=height,
                  xrange=(0, float(end.max()) or 1), yrange=(0, order.size), key=key, yinvert=True,
                  xtight=True, ytight=True)
    row_h = (height - c.mt - c.mb) / max(order.size, 1) * 0.8
    y = rows + 0.5
    c.spans(start[ok], first[ok], y[ok], "c1", row_h, label="waiting for first token")
    c.spans(first[ok], end[ok], y[ok], "c0", row_h, label="streaming")
    c.spans(start[~ok], end[~ok], y[~ok], "bad", row_h, label="failed")
    return {"key": key, "svg": c.svg(), "note": ""}


def latency_vs_throughput(perf: pd.DataFrame, common: pd.DataFrame, stages: list[str]) -> list[dict]:
    """One point per load stage: latency percentiles against the stage's output token throughput."""
    if len(stages) < 2:
        return []
    x = np.array([_common(common, "Output Token Throughput", s) for s in stages])
    charts = []
    for metric in ("TTFT", "TPOT", "E2EL"):
        key = f"lvt-{metric.lower()}"
        p50 = np.array([_stat(perf, metric, s, "Median") for s in stages])
        p99 = np.array([_stat(perf, metric, s, "P99") for s in stages])
        ymax = np.nanmax(np.concatenate([p99, p50, [0]]))
        if not np.isfinite(ymax) or ymax <= 0:
            continue
        c = svg.Chart(f"{metric} vs throughput", "output token/s (per stage)", "ms",
                      width=370, height=240, xrange=(0, np.nanmax(x) * 1.1 if np.isfinite(np.nanmax(x)) else 1),
                      yrange=(0, ymax * 1.1), key=key)
        order = np.argsort(x)
        c.line(x[order], p50[order], "c0", points=True, label="P50")
        c.line(x[order], p99[order], "c3", points=True, label="P99")
        for s, xv, yv in zip(stages, x, p99):
            c.label(xv, yv, str(s))
        charts.append({"key": key, "svg": c.svg(), "note": ""})
    return charts
