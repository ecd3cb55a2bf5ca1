"""Metric maths over request records: per-request latencies, their statistics and the common metrics.

Pure numpy/pandas, over a run's Columns (columns.py: per-request arrays, and one offset and kind per
SSE event with the events of each request contiguous); every metric is a vectorised operation over
those arrays.

Profiles:
- `default`: DESIGN.md. TTFT = first content/reasoning event; ITL = gaps between consecutive
  content/reasoning events; E2EL = last event of any kind (usage included). No rounding.
- `aisbench`: AISBench's definitions. Every data event counts (TTFT = first event of any kind, ITL over
  all events), and numbers are rounded where AISBench rounds them: each statistic in seconds to
  4 decimals, then x1000 to ms rounded to 4 decimals; common metrics rounded to 4 decimals
  (Benchmark Duration: D x 1000 rounded to 4 decimals).
- `vllm`, `guidellm`: what `vllm bench serve` and GuideLLM compute from the same stream; their
  definitions, with the tools' source they come from, are in profiles.py.

Reasoning and multi-token rows (TTFO, ReasoningTokens, AnswerTokens, TokensPerEvent, ITLPerToken) appear
only when a run has them, and only under `default` (the other profiles print what their tool prints);
exact definitions at REASONING_METRICS. ITLPerToken: each decode event's gap divided evenly over its k
tokens, one sample per token; ITL stays one gap per event.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from . import profiles, stats
from .columns import TOKEN_CODES, Columns, from_records, token_mask
from .records import TOKEN_KINDS

PROFILES = ("default", "aisbench", "vllm", "guidellm")
STATS = ("Average", "Min", "Max", "Median", "P75", "P90", "P99")
PERCENTILES = (50, 75, 90, 99)
PERF_COLUMNS = ("Performance Parameters", "Stage", *STATS, "N")
COMMON_COLUMNS = ("Common Metric", "Stage", "Value", "Unit")

LATENCY_METRICS = ("E2EL", "TTFT", "TPOT", "ITL")
# open loop only (records with t_sched): time an arrival waited at the client, and E2EL counted from
# the scheduled time (vLLM's queue-inclusive latency)
SCHED_METRICS = ("QueueDelay", "E2ELFromSched")
MS_METRICS = (*LATENCY_METRICS, *SCHED_METRICS)
TOKEN_METRICS = ("InputTokens", "OutputTokens")
RATE_METRICS = ("OutputTokenThroughput", "PrefillTokenThroughput")
PERF_METRICS = (*LATENCY_METRICS, *TOKEN_METRICS, *RATE_METRICS, *SCHED_METRICS)

COMMON_METRICS = (
    ("Benchmark Duration", "ms"),
    ("Total Requests", ""),
    ("Failed Requests", ""),
    ("Success Requests", ""),
    ("Concurrency", ""),
    ("Max Concurrency", ""),
    ("Peak In-Flight", ""),
    ("Request Throughput", "req/s"),
    ("Total Input Tokens", ""),
    ("Prefill Token Throughput", "token/s"),
    ("Total Generated Tokens", ""),
    ("Input Token Throughput", "token/s"),
    ("Output Token Throughput", "token/s"),
    ("Total Token Throughput", "token/s"),
)
# common metrics that are whole numbers (shown without decimals)
COUNT_METRICS = frozenset({
    "Total Requests", "Failed Requests", "Success Requests", "Max Concurrency", "Peak In-Flight",
    "Total Input Tokens", "Total Generated Tokens",
})

TOTAL = "total"

# Reasoning models and multi-token events (event_tokens.py fills the record fields), rows shown only when
# a run has them (a run without keeps today's tables to the byte), in every profile but aisbench (whose
# files keep AISBench's layout):
# - TTFO: time to the first answer event (content, not reasoning), per request; TTFT stays the first
#   token of any kind. A request with no reasoning has TTFO = TTFT; one that never answered has none.
# - ReasoningTokens / AnswerTokens: per request (a request without reasoning: 0 / all its output tokens).
# - TokensPerEvent: tokens carried by each content/reasoning event after the request's first one (the
#   decode steps; under speculative decoding an acceptance-length proxy), pooled over requests.
# - ITLPerToken: each such event's gap (from the previous event that carried a token) divided evenly over
#   its k tokens, one sample per token (k samples of gap/k), pooled. Its mean is the decode time per
#   token; with one token per event it equals ITL. ITL stays one gap per event. Events given 0 tokens
#   (a tokenizer estimate) are left out of both.
REASONING_METRICS = ("TTFO", "ReasoningTokens", "AnswerTokens")
MULTI_TOKEN_METRICS = ("TokensPerEvent", "ITLPerToken")
MS_METRICS = (*MS_METRICS, "TTFO", "ITLPerToken")
REASONING_COMMON = (("Total Reasoning Tokens", ""), ("Total Answer Tokens", ""))
COUNT_METRICS = COUNT_METRICS | {name for name, _ in REASONING_COMMON}


@dataclass
class Results:
    """Metric tables in display units (ms, tokens, token/s); tables.py renders them."""
    profile: str
    perf: pd.DataFrame     # PERF_COLUMNS; NaN where a metric cannot be measured (non-stream)
    common: pd.DataFrame   # COMMON_COLUMNS; Value float (NaN where not measurable)
    stream: bool = True
    intervals: pd.DataFrame | None = None  # stats.CI_COLUMNS: a confidence interval per statistic
    # stage -> (empty answers, successful requests): a success with 0 output tokens (finish_reason stop
    # and nothing said) counts as a success, as the server meant it; tables.empty_note says how many
    empty: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# the successful requests' events


def _ok_events(cols: Columns) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Event counts, offsets and kind codes of the successful requests only (in place: consumes cols)."""
    if cols.success.all():
        return cols.counts, cols.offsets, cols.kinds
    keep = np.repeat(cols.success, cols.counts)
    offsets = _compress_inplace(cols.offsets, keep)
    kinds = cols.kinds[keep]
    return cols.counts[cols.success], offsets, kinds


# ---------------------------------------------------------------------------------------------
# segment helpers: a "segment" is the run of values that belong to one request.
# At a million requests the flat arrays hold ~1e8 values (800 MB each), so the big steps work in
# place, block by block, instead of allocating a second full-size array.

BLOCK = 1 << 22


def _starts(counts: np.ndarray) -> np.ndarray:
    starts = np.zeros(counts.size, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


def _first_last(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last value of every segment (NaN for empty segments)."""
    first = np.full(counts.size, np.nan)
    last = np.full(counts.size, np.nan)
    starts = _starts(counts)
    has = counts > 0
    first[has] = values[starts[has]]
    last[has] = values[starts[has] + counts[has] - 1]
    return first, last


def _owners(index: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Segment of each flat index."""
    return np.searchsorted(np.cumsum(counts), index, side="right")


def _count_per_segment(index: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """How many of the flat indices fall in each segment (cheap when they are few, as here)."""
    return np.bincount(_owners(index, counts), minlength=counts.size)


def _compress_inplace(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """values[keep], written over the front of `values`; returns that view."""
    written = 0
    for a in range(0, values.size, BLOCK):
        part = values[a:a + BLOCK][keep[a:a + BLOCK]]  # a copy: safe to write over its own block
        values[written:written + part.size] = part
        written += part.size
    return values[:written]


def _diff_inplace(values: np.ndarray) -> np.ndarray:
    """np.diff(values), written over `values`; returns that view (one shorter)."""
    n = values.size - 1
    for a in range(0, n, BLOCK):
        b = min(a + BLOCK, n)
        values[a:b] = values[a + 1:b + 1] - values[a:b]  # values[b] is read before it is overwritten
    return values[:max(n, 0)]


def _tokens_only(offsets: np.ndarray, counts: np.ndarray, token: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep only content/reasoning events (in place); their count per segment."""
    other = np.flatnonzero(~token)  # role/usage/other: a few per request
    tok_counts = counts - _count_per_segment(other, counts)
    return _compress_inplace(offsets, token), tok_counts


def _segment_gaps(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Differences between consecutive values inside each segment, pooled in segment order.

    Consumes `values` (the gaps are written over it). Returns (gaps, gaps per segment, whether the
    segment has a non-zero gap)."""
    n_gaps = np.maximum(counts - 1, 0)
    if values.size < 2:
        return np.empty(0), n_gaps, np.zeros(counts.size, dtype=bool)
    diffs = _diff_inplace(values)
    # the diff that bridges two requests sits just before each request's first value
    keep = np.ones(diffs.size, dtype=bool)
    bridge = _starts(counts) - 1
    keep[bridge[(bridge >= 0) & (bridge < diffs.size)]] = False
    gaps = _compress_inplace(diffs, keep)
    del keep
    decoding = n_gaps > _count_per_segment(np.flatnonzero(gaps == 0), n_gaps)
    return gaps, n_gaps, decoding


# ---------------------------------------------------------------------------------------------
# per-request samples


@dataclass
class _Samples:
    """Per successful request (seconds), plus the pooled ITL gaps."""
    e2el: np.ndarray
    ttft: np.ndarray
    tpot: np.ndarray
    itl: np.ndarray
    itl_per_request: np.ndarray   # number of ITL gaps of each request (to map gaps to stages)
    decoding: np.ndarray          # request has a non-zero ITL gap (counts in TPOT/ITL N)
    # guidellm: statistic weights ("TPOT": per request, "ITL": per value of itl) and the token
    # iterations' first/last offsets and count per request (its token rates); vllm: each chunk's epoch
    # time and chunks per request (its peak output rate)
    weights: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def _samples(counts: np.ndarray, offsets: np.ndarray, kinds: np.ndarray, output_tokens: np.ndarray,
             profile: str, stream: bool, t_send: np.ndarray | None = None) -> _Samples:
    """Per-request samples of the successful requests' events (consumes `offsets`).
    t_send: the successful requests' send times (the vllm profile's peak output rate needs them)."""
    first, e2el = _first_last(offsets, counts)
    n = counts.size
    if not stream:
        nothing = np.full(n, np.nan)
        return _Samples(e2el, nothing, nothing, np.empty(0), np.zeros(n, np.int64), np.zeros(n, bool))
    if profile != "aisbench":
        # default, guidellm: only content/reasoning events carry tokens: TTFT and ITL are taken over those
        # alone; vllm: every chunk with choices (all but the usage-only one), which also ends its E2EL
        keep = profiles.vllm_chunks(kinds) if profile == "vllm" else token_mask(kinds)
        offsets, counts = _tokens_only(offsets, counts, keep)
        del keep
        first, last = _first_last(offsets, counts)
        if profile == "vllm":
            e2el = last
            extra = {"chunk_counts": counts, "chunk_times": None if t_send is None else
                     np.repeat(t_send, counts) + offsets}
        if profile == "guidellm":
            return _guidellm_samples(first, last, e2el, counts, output_tokens)
    itl, itl_per_request, decoding = _segment_gaps(offsets, counts)
    del offsets
    ttft = first
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(output_tokens > 1, (e2el - ttft) / (output_tokens - 1), 0.0)
    return _Samples(e2el, ttft, tpot, itl, itl_per_request, decoding,
                    extra=extra if profile == "vllm" else {})


def _guidellm_samples(first: np.ndarray, last: np.ndarray, e2el: np.ndarray, n_tokens: np.ndarray,
                      output_tokens: np.ndarray) -> _Samples:
    """GuideLLM's per-request TTFT, TPOT and ITL (profiles.py): one ITL value per request, weighted."""
    has = np.isfinite(first)
    ttft = np.where(has, first, 0.0)  # GuideLLM's `time_to_first_token_ms or 0.0`
    tpot = _ratio(np.where(has, last, e2el), output_tokens)
    # output_tokens > 1 with no token iteration: GuideLLM's `inter_token_latency_ms or 0.0`, weight out - 1
    itl_all = np.where(output_tokens > 1, np.where(has, _ratio(last - first, output_tokens - 1), 0.0), np.nan)
    per = np.isfinite(itl_all)
    weights = {"TPOT": output_tokens.astype(np.float64), "ITL": (output_tokens - 1.0)[per]}
    extra = {"first": first, "last": last, "n_tokens": n_tokens}
    return _Samples(e2el, ttft, tpot, itl_all[per], per.astype(np.int64), per, weights, extra)


# ---------------------------------------------------------------------------------------------
# statistics and tables


def _ratio(num, den) -> np.ndarray:
    """num / den where den > 0, else NaN (and no warnings)."""
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _stats(samples: np.ndarray, overwrite: bool = False) -> list[float]:
    """Average, Min, Max and linear percentiles of the finite samples (zeros when there are none).

    overwrite=True lets the percentile partition `samples` in place (no copy of a 1e8-long ITL array)."""
    finite = np.isfinite(samples)
    if not finite.all():
        samples, overwrite = samples[finite], True
    del finite
    if samples.size == 0:
        return [0.0] * len(STATS)
    head = [float(samples.mean()), float(samples.min()), float(samples.max())]  # before any reordering
    pct = np.percentile(samples, PERCENTILES, overwrite_input=overwrite)
    return [*head, *map(float, pct)]


def _aisbench_round(metric: str, values: list[float]) -> list[float]:
    # AISBench rounds each statistic (in seconds) to 4 decimals, then converts to ms rounding again
    if metric in MS_METRICS:
        return [round(round(v, 4) * 1000, 4) for v in values]
    return [round(v, 4) for v in values]


def _perf_rows(stage: str, s: dict, profile: str, stream: bool, itl_counts: np.ndarray,
               intervals: list[list], weights: dict | None = None) -> list[list]:
    """The stage's per-request table rows; appends the rows of their confidence intervals to `intervals`.
    weights: guidellm's statistic weights of the metrics that have them ({metric: array like samples})."""
    rows = []
    for metric in PERF_METRICS:
        if metric not in s or (profile == "aisbench" and metric == "PrefillTokenThroughput"):
            continue  # open-loop rows only with scheduled times; AISBench has no per-request prefill
        samples, n = s[metric]
        if not stream and metric in ("TTFT", "TPOT", "ITL", "PrefillTokenThroughput"):
            values, n = [np.nan] * len(STATS), 0
        elif profile == "guidellm":
            w = (weights or {}).get(metric)
            values, n = profiles.guidellm_stats(samples, w)
            if w is None:  # a weighted statistic has no interval here (stats.py's are unweighted)
                intervals += _interval_rows(metric, stage, samples, values, itl_counts, None)
            if metric in MS_METRICS:
                values = [v * 1000 for v in values]
        else:
            # ITL's interval first: it reads the gaps in request order, which the statistics reorder
            itl_bounds = _itl_bounds(samples, itl_counts) if metric == "ITL" else None
            values = _stats(samples, overwrite=metric == "ITL")
            intervals += _interval_rows(metric, stage, samples, values, itl_counts, itl_bounds)
            if profile == "aisbench":
                values = _aisbench_round(metric, values)
            elif metric in MS_METRICS:
                values = [v * 1000 for v in values]
        rows.append([metric, stage, *values, int(n)])
    return rows


_CI_STATS = (("Average", None), ("Median", 0.50), ("P75", 0.75), ("P90", 0.90), ("P99", 0.99))


def _itl_bounds(gaps: np.ndarray, counts: np.ndarray) -> dict:
    """{statistic: (lo, hi)} for the pooled ITL gaps, which come in requests (cluster-robust; stats.py).
    Reorders `gaps` in place (its last step is a quantile over them)."""
    mean_ci, q_ci = stats.clustered_intervals(gaps, counts, tuple(q for _, q in _CI_STATS[1:]), overwrite=True)
    return {"Average": mean_ci, **{name: q_ci[q] for name, q in _CI_STATS[1:]}}


def _interval_rows(metric: str, stage: str, samples: np.ndarray, values: list[float], itl_counts: np.ndarray,
                   itl_bounds: dict | None) -> list[list]:
    """A 95 % interval for the Average and each percentile of one metric, in display units, unrounded.

    values: the metric's unrounded statistics (STATS order, seconds for ms metrics). Independent
    per-request samples get the t interval and the order-statistic one; ITL gaps get `itl_bounds`."""
    scale = 1000.0 if metric in MS_METRICS else 1.0
    estimate = dict(zip(STATS, values))
    skew = None
    if itl_bounds is not None:
        n, method, bounds = int((itl_counts > 0).sum()), "cluster-robust over requests", itl_bounds
    else:
        x = samples[np.isfinite(samples)]
        n, method = int(x.size), "t / order statistics"
        skew = stats.cochran_short(x)
        bounds = {"Average": stats.mean_interval(x), **{name: stats.quantile_interval(x, q)
                                                        for name, q in _CI_STATS[1:]}}
    rows = []
    for name, q in _CI_STATS:
        lo, hi = (b * scale for b in bounds[name])
        value = estimate[name] * scale if n else np.nan
        note = stats.thin_note(name, q, n, value, lo, hi, skew if name == "Average" else None)
        rows.append([metric, stage, name, value, lo, hi, n, method, note])
    return rows


def _peak_in_flight(starts: np.ndarray, ends: np.ndarray) -> int:
    """Most [start, end] intervals open at once; touching intervals count as overlapping."""
    ok = np.isfinite(starts) & np.isfinite(ends)
    if not ok.any():
        return 0
    times = np.concatenate([starts[ok], ends[ok]])
    step = np.concatenate([np.ones(ok.sum(), np.int32), -np.ones(ok.sum(), np.int32)])
    order = np.lexsort((-step, times))  # at equal times, open before close
    return int(np.cumsum(step[order]).max())


def _common_rows(stage: str, req: Columns, end: np.ndarray, sel: np.ndarray, smp: _Samples, ok_sel: np.ndarray,
                 profile: str, stream: bool, max_concurrency: int | None, slo: dict | None) -> list[list]:
    total = int(sel.sum())
    ok_idx = np.flatnonzero(sel & req.success)
    success = ok_idx.size
    e2el = smp.e2el[ok_sel]
    starts = req.t_send[ok_idx]
    ends = starts + e2el
    valid = np.isfinite(ends)
    duration = float(ends[valid].max() - starts[valid].min()) if valid.any() else 0.0
    if profile in ("vllm", "guidellm"):
        duration = _wall_duration(req, end, sel)
    inputs = float(req.input_tokens[ok_idx].sum())
    outputs = float(req.output_tokens[ok_idx].sum())
    peak = _peak_in_flight(req.t_send[sel], req.t_send[sel] + end[sel])
    if profile == "vllm":
        peak = profiles.vllm_peak_in_flight(starts, ends)

    def per_d(x: float) -> float:
        return x / duration if duration > 0 else 0.0

    ttft = smp.ttft[ok_sel]
    ttft_sum = float(np.nansum(ttft))
    prefill = (inputs / ttft_sum if ttft_sum > 0 else 0.0) if stream else np.nan
    values = {
        "Benchmark Duration": duration,
        "Total Requests": total,
        "Failed Requests": total - success,
        "Success Requests": success,
        "Concurrency": per_d(float(np.nansum(e2el))),
        "Max Concurrency": max_concurrency if max_concurrency is not None else peak,
        "Peak In-Flight": peak,
        "Request Throughput": per_d(success),
        "Total Input Tokens": inputs,
        "Prefill Token Throughput": prefill,
        "Total Generated Tokens": outputs,
        "Input Token Throughput": per_d(inputs),
        "Output Token Throughput": per_d(outputs),
        "Total Token Throughput": per_d(inputs + outputs),
    }
    if profile == "guidellm" and stream:
        values.update(_guidellm_rates(req, ok_idx, smp, ok_sel, starts + e2el))
    rows = []
    for name, unit in COMMON_METRICS:
        value = float(values[name])
        if name == "Benchmark Duration":
            value = round(value * 1000, 4) if profile == "aisbench" else value * 1000
        elif profile == "aisbench" and name not in COUNT_METRICS and not np.isnan(value):
            value = round(value, 4)
        rows.append([name, stage, value, unit])
    if profile == "vllm" and stream:
        rows.append(["Peak Output Token Throughput", stage, _vllm_peak_output(smp, ok_sel, starts, ends), "token/s"])
    if slo:
        good = meets_slo(slo, {"ttft": ttft, "tpot": smp.tpot[ok_sel], "e2el": e2el})
        rows += [["SLO Attainment", stage, 100.0 * good.sum() / total if total else 0.0, "%"],
                 ["Goodput", stage, per_d(float(good.sum())), "req/s"],
                 ["Good Output Token Throughput", stage, per_d(float(req.output_tokens[ok_idx][good].sum())),
                  "token/s"]]
    return rows


def _wall_duration(req: Columns, end: np.ndarray, sel: np.ndarray) -> float:
    """vLLM's and GuideLLM's duration, from records: first send (scheduled time when open loop) to the last
    event of any request, failed ones included (both time the whole benchmark, not its successes)."""
    start = req.t_send[sel]
    if req.t_sched is not None:
        start = np.fmin(start, req.t_sched[sel])  # fmin: a NaN scheduled time leaves t_send
    stop = req.t_send[sel] + np.nan_to_num(end[sel], nan=0.0)  # a request without events ends when sent
    ok = np.isfinite(start) & np.isfinite(stop)
    return float(stop[ok].max() - start[ok].min()) if ok.any() else 0.0


def _guidellm_rates(req: Columns, ok_idx: np.ndarray, smp: _Samples, ok_sel: np.ndarray,
                    request_end: np.ndarray) -> dict:
    """GuideLLM's prompt, output and total token/s (profiles.rate over its timings of each request)."""
    t = req.t_send[ok_idx]
    first, last = t + smp.extra["first"][ok_sel], t + smp.extra["last"][ok_sel]
    n_iter = smp.extra["n_tokens"][ok_sel]
    inputs, outputs = req.input_tokens[ok_idx], req.output_tokens[ok_idx]
    prompt_at = np.where(np.isfinite(first), first, request_end)  # `prompt_tokens_timing`
    # `output_tokens_timings`: first .. last token iteration when there are several and output_tokens > 1;
    # only the first one when output_tokens <= 1; one point (last iteration, or the end) otherwise
    spread = np.isfinite(first) & (n_iter > 1)
    out_lo = np.where(spread, first, np.where(np.isfinite(last), last, request_end))
    out_hi = np.where(spread & (outputs > 1), last, out_lo)
    out_times = np.concatenate([out_lo, out_hi])
    return {
        "Input Token Throughput": profiles.rate(float(inputs.sum()), prompt_at),
        "Output Token Throughput": profiles.rate(float(outputs.sum()), out_times),
        "Total Token Throughput": profiles.rate(float(inputs.sum() + outputs.sum()),
                                                np.concatenate([prompt_at, out_times])),
    }


def _vllm_peak_output(smp: _Samples, ok_sel: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> float:
    times = smp.extra.get("chunk_times")
    if times is None:
        return np.nan
    return profiles.vllm_peak_output_rate(times[np.repeat(ok_sel, smp.extra["chunk_counts"])], starts, ends)


SLO_METRICS = ("ttft", "tpot", "e2el")


def record_meets_slo(rec: dict, slo: dict) -> bool:
    """One record against {"ttft"|"tpot"|"e2el": seconds} (default profile definitions), for live
    decisions such as the capacity search; the tables use the vectorised `meets_slo`."""
    if not rec["success"] or not rec["events"]:
        return False
    tokens = [e[0] for e in rec["events"] if e[1] in TOKEN_KINDS]
    e2el = rec["events"][-1][0]
    ttft = tokens[0] if tokens else float("inf")
    n = rec["output_tokens"] or 0
    values = {"ttft": ttft, "e2el": e2el, "tpot": (e2el - ttft) / (n - 1) if n > 1 and tokens else 0.0}
    return all(values[name] <= limit for name, limit in slo.items())


def meets_slo(slo: dict, values: dict) -> np.ndarray:
    """Successful requests meeting every limit in `slo` ({"ttft": seconds, ...}); an unmeasured
    value (NaN, e.g. TTFT of a non-streaming request) does not meet it."""
    good = np.ones(len(values["e2el"]), bool)
    for name, limit in slo.items():
        good &= np.nan_to_num(values[name], nan=np.inf) <= limit
    return good


def _stage_samples(smp: _Samples, req: Columns, ok_sel: np.ndarray, gap_sel, profile: str = "default") -> dict:
    """{metric: (samples, N)} for the successful requests picked by ok_sel."""
    ok_idx = np.flatnonzero(req.success)[ok_sel]
    inputs, outputs = req.input_tokens[ok_idx], req.output_tokens[ok_idx]
    e2el, ttft = smp.e2el[ok_sel], smp.ttft[ok_sel]
    itl = smp.itl if gap_sel is None else smp.itl[gap_sel]
    decoding = int(smp.decoding[ok_sel].sum())

    def finite(a):
        return a, int(np.isfinite(a).sum())

    sched = {}
    if req.t_sched is not None:
        queue = req.t_send[ok_idx] - req.t_sched[ok_idx]
        sched = {"QueueDelay": finite(queue), "E2ELFromSched": finite(queue + e2el)}
    tpot = (smp.tpot[ok_sel], decoding)
    if profile == "vllm":  # vLLM's TPOT statistics are over the requests with more than one token only
        tpot = finite(np.where(outputs > 1, smp.tpot[ok_sel], np.nan))
    return {
        **sched,
        "E2EL": finite(e2el),
        "TTFT": finite(ttft),
        "TPOT": tpot,
        "ITL": (itl, decoding),
        "InputTokens": (inputs, inputs.size),
        "OutputTokens": (outputs, outputs.size),
        "OutputTokenThroughput": finite(_ratio(outputs, e2el)),
        "PrefillTokenThroughput": finite(_ratio(inputs, ttft)),
    }


def _looks_streamed(ok_counts: np.ndarray) -> bool:
    """A run where no successful request has more than one event is non-streaming."""
    return not ok_counts.size or bool((ok_counts > 1).any())


def compute(records: list[dict] | Columns, profile: str = "default", max_concurrency: int | None = None,
            stream: bool | None = None, slo: dict | None = None) -> Results:
    """Metric tables for `records`, or for a run already read as Columns (see module doc for the
    profiles). A Columns' event arrays are used up: the big steps work in place, so a million requests
    fit in memory.

    stream=None detects it: a run where no successful request has more than one event is non-streaming,
    and gives no TTFT/TPOT/ITL/Prefill values (N=0).
    slo: {"ttft"|"tpot"|"e2el": limit in seconds}: adds SLO Attainment (% of all requests), Goodput
    (req/s meeting every limit) and Good Output Token Throughput rows (vLLM's goodput)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown metric profile {profile!r}; expected one of {PROFILES}")
    cols = records if isinstance(records, Columns) else from_records(records)
    end = _first_last(cols.offsets, cols.counts)[1]  # each request's last event, before they are used up
    measured = cols.success  # the client's verdict: the empty-answer note counts from it
    if profile == "guidellm":
        cols = _guidellm_success(cols)
    counts, offsets, kinds = _ok_events(cols)
    if stream is None:
        stream = _looks_streamed(counts)
    split = _split_samples(cols, counts, offsets, kinds, profile, stream)  # before _samples uses offsets up
    smp = _samples(counts, offsets, kinds, cols.output_tokens[cols.success], profile, stream,
                   cols.t_send[cols.success])
    del offsets, kinds

    stages = [(TOTAL, None)] + [(name, code) for code, name in enumerate(cols.stage_names) if name != TOTAL]
    ok_stage = cols.stage[cols.success]
    blank = cols.output_tokens[measured] == 0
    measured_stage = cols.stage[measured]
    empty = {name: (int(blank.sum()), int(blank.size)) if code is None else
             (int(blank[measured_stage == code].sum()), int((measured_stage == code).sum())) for name, code in stages}
    gap_stage = np.repeat(ok_stage, smp.itl_per_request) if len(stages) > 1 else None
    perf, common, intervals = [], [], []
    # total last: its ITL statistics may reorder the pooled gaps that the stages select from
    for name, code in reversed(stages):
        sel = np.ones(cols.stage.size, bool) if code is None else cols.stage == code
        ok_sel = np.ones(ok_stage.size, bool) if code is None else ok_stage == code
        gap_sel = None if code is None else gap_stage == code
        weights = {"TPOT": smp.weights["TPOT"][ok_sel],
                   "ITL": smp.weights["ITL"] if gap_sel is None else smp.weights["ITL"][gap_sel]} \
            if smp.weights else None
        perf += _perf_rows(name, _stage_samples(smp, cols, ok_sel, gap_sel, profile), profile, stream,
                           smp.itl_per_request[ok_sel], intervals, weights)
        perf += _split_rows(name, split, ok_stage, code, intervals)
        # the configured peak belongs to the whole run; a stage reports its measured peak
        stage_max = max_concurrency if code is None else None
        common += _common_rows(name, cols, end, sel, smp, ok_sel, profile, stream, stage_max, slo)
        common += _split_common_rows(name, split, ok_sel)
        common += prefix_cache_rows(name, cols, sel, profile)
    order = [name for name, _ in stages]
    return Results(profile, _order(perf, PERF_COLUMNS, order), _order(common, COMMON_COLUMNS, order), stream,
                   _order(intervals, stats.CI_COLUMNS, order), empty)


def _guidellm_success(cols: Columns) -> Columns:
    """GuideLLM fails a response with no text and 0 output tokens (`_validate_text_response`): here a
    success with 0 output tokens and no content/reasoning event is failed too (a copy; cols is unchanged)."""
    has_text = cols.counts > _count_per_segment(np.flatnonzero(~token_mask(cols.kinds)), cols.counts)
    return replace(cols, success=cols.success & ((cols.output_tokens > 0) | has_text))


@dataclass
class RequestSamples:
    """The successful requests' samples in display units (ms, tokens, token/s), `cols` left unchanged.

    values[metric]: one value per successful request for every metric of PERF_METRICS except ITL (NaN
    where unmeasured); itl: the pooled gaps in ms, request after request, itl_counts[i] of them for
    request i (so a resampling of requests can carry their gaps along)."""
    stage: np.ndarray          # stage name of each successful request (object array)
    t_send: np.ndarray         # epoch s
    values: dict
    itl: np.ndarray
    itl_counts: np.ndarray
    stream: bool


def request_samples(cols: Columns, profile: str = "default", stream: bool | None = None) -> RequestSamples:
    """Per-request samples of a run's successful requests, by the same definitions as `compute`."""
    if profile == "guidellm":
        cols = _guidellm_success(cols)
    counts, kinds = cols.counts, cols.kinds
    if cols.success.all():
        offsets = cols.offsets.copy()  # _samples works in place
    else:
        keep = np.repeat(cols.success, counts)
        offsets, kinds, counts = cols.offsets[keep], kinds[keep], counts[cols.success]
    if stream is None:
        stream = _looks_streamed(counts)
    smp = _samples(counts, offsets, kinds, cols.output_tokens[cols.success], profile, stream)
    per = _stage_samples(smp, cols, np.ones(counts.size, bool), None, profile)
    values = {m: np.asarray(v, np.float64) * (1000 if m in MS_METRICS else 1)
              for m, (v, _) in per.items() if m != "ITL"}
    if not stream:
        for m in ("TTFT", "TPOT", "PrefillTokenThroughput"):
            values[m] = np.full(counts.size, np.nan)
    return RequestSamples(cols.stage_of_each()[cols.success], cols.t_send[cols.success], values,
                          smp.itl * 1000, smp.itl_per_request, stream)


def _order(rows: list[list], columns: tuple, stages: list[str]) -> pd.DataFrame:
    """Metric-major row order (every stage of a metric together, total first), as AISBench writes it."""
    df = pd.DataFrame(rows, columns=list(columns))
    metric_rank = {name: i for i, name in enumerate(dict.fromkeys(df[columns[0]]))}
    stage_rank = {name: i for i, name in enumerate(stages)}
    order = np.lexsort((df["Stage"].map(stage_rank).to_numpy(), df[columns[0]].map(metric_rank).to_numpy()))
    return df.iloc[order].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# failures

_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I)
_HEX_ID = re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{12,}\b", re.I)
_NUMBER = re.compile(r"\d+\.\d+|\d{4,}")  # keeps 3-digit codes such as HTTP 500 distinct
REASON_CHARS = 120


def failure_reason(record: dict) -> str:
    """Grouping key of a failed record: its error text with ids and varying numbers masked."""
    text = " ".join(str(record.get("error") or "").split())
    if not text:
        status = record.get("http_status")
        return f"HTTP {status}" if status else "unknown error"
    text = _UUID.sub("<id>", text)
    text = _HEX_ID.sub("<id>", text)
    return _NUMBER.sub("<n>", text)[:REASON_CHARS]


def attempt_counts(cols: Columns) -> dict:
    """How many requests went out more than once, and why (records' `resends` and `retries`)."""
    return {"resent_requests": cols.resent, "resends": cols.resends, "retried_requests": cols.retried,
            "retries": cols.retries, "retried_and_failed": cols.retried_failed}


def attempts_note(cols: Columns) -> str:
    """The console's line on resends and retries; empty when every request was sent once."""
    c = attempt_counts(cols)
    parts = []
    if c["resends"]:
        parts.append(f"{c['resent_requests']} request(s) resent at once ({c['resends']} resend(s)): the first send "
                     "on a kept-alive connection the server had already closed never left")
    if c["retries"]:
        ok = c["retried_requests"] - c["retried_and_failed"]
        parts.append(f"{c['retried_requests']} request(s) retried under --retry ({c['retries']} retries): {ok} then "
                     f"succeeded, {c['retried_and_failed']} failed every attempt; their latencies count from the "
                     "last attempt's send (t_send; t_first_send is the first's)")
    return "Resends and retries: " + "; ".join(parts) if parts else ""


def failure_summary(records: list[dict]) -> pd.DataFrame:
    """reason, count, first_example (error text and HTTP status of the first record with that reason)."""
    groups: dict[str, list] = {}
    for r in records:
        if r.get("success"):
            continue
        reason = failure_reason(r)
        if reason in groups:
            groups[reason][0] += 1
        else:
            groups[reason] = [1, _example(r)]
    df = pd.DataFrame([(k, c, ex) for k, (c, ex) in groups.items()],
                      columns=["reason", "count", "first_example"])
    df["count"] = df["count"].astype(np.int64)
    return df.sort_values("count", ascending=False, kind="stable").reset_index(drop=True)


def _example(record: dict) -> str:
    error = str(record.get("error") or "").strip()
    status = record.get("http_status")
    if not status:
        return error
    return f"{error} (HTTP {status})" if error else f"HTTP {status}"


# ---------------------------------------------------------------------------------------------
# reasoning and multi-token events (definitions at REASONING_METRICS above)


@dataclass
class _Split:
    """Per successful request: TTFO (s), reasoning and answer tokens; pooled per-event samples with the
    request each came from. `reasoning` / `multi`: whether the run shows those rows."""
    reasoning: bool = False
    multi: bool = False
    ttfo: np.ndarray | None = None
    reasoning_tokens: np.ndarray | None = None
    answer_tokens: np.ndarray | None = None
    tpe: np.ndarray | None = None         # tokens of each decode event
    tpe_owner: np.ndarray | None = None   # its request (index among the successful ones)
    itl_tok: np.ndarray | None = None     # s, one per token of those events
    itl_tok_owner: np.ndarray | None = None


def _split_samples(cols: Columns, counts: np.ndarray, offsets: np.ndarray, kinds: np.ndarray, profile: str,
                   stream: bool) -> _Split:
    """The successful requests' reasoning and multi-token samples; reads `offsets`, leaves it as it is."""
    out = _Split()
    if profile != "default" or cols.reasoning_tokens is None:  # other profiles print what their tool prints
        return out
    ok = cols.success
    n = counts.size
    reasoning_codes = kinds == TOKEN_CODES[1]
    rt = cols.reasoning_tokens[ok]
    out.reasoning = bool(reasoning_codes.any() or np.nansum(rt) > 0)
    if out.reasoning:
        # no count in the record: 0 reasoning when it had no reasoning event, else unknown (left out)
        unknown = np.bincount(_owners(np.flatnonzero(reasoning_codes), counts), minlength=n) > 0
        out.reasoning_tokens = np.where(np.isnan(rt) & ~unknown, 0.0, rt)
        at = cols.answer_tokens[ok]
        out.answer_tokens = np.where(np.isnan(at) & ~unknown, cols.output_tokens[ok], at)
        out.ttfo = np.full(n, np.nan)
        if stream:
            answer = np.flatnonzero(kinds == TOKEN_CODES[0])
            owner = _owners(answer, counts)
            first = np.r_[True, owner[1:] != owner[:-1]] if owner.size else np.zeros(0, bool)
            out.ttfo[owner[first]] = offsets[answer[first]]
    if cols.event_tokens is None or not stream:
        return out
    per_event = cols.event_tokens[np.repeat(ok, cols.counts)] if not ok.all() else cols.event_tokens
    carrying = np.flatnonzero(token_mask(kinds) & (per_event > 0))
    owner = _owners(carrying, counts)
    first = np.r_[True, owner[1:] != owner[:-1]] if owner.size else np.zeros(0, bool)
    at = offsets[carrying]
    gap = np.empty(at.size)
    gap[1:] = at[1:] - at[:-1]
    k = per_event[carrying]
    decode = ~first
    if not (k[decode] > 1).any():
        return out  # one token per event: the rows would repeat ITL
    out.multi = True
    out.tpe, out.tpe_owner = k[decode].astype(np.float64), owner[decode]
    reps = k[decode].astype(np.int64)
    out.itl_tok = np.repeat(gap[decode] / k[decode], reps)
    out.itl_tok_owner = np.repeat(owner[decode], reps)
    return out


def _split_rows(stage: str, split: _Split, ok_stage: np.ndarray, code, intervals: list[list]) -> list[list]:
    """The stage's TTFO, reasoning/answer token and multi-token rows (none when the run has neither)."""
    rows = []
    ok_sel = np.ones(ok_stage.size, bool) if code is None else ok_stage == code
    per_request = []
    if split.reasoning:
        ttfo = split.ttfo[ok_sel]
        per_request = [("TTFO", ttfo), ("ReasoningTokens", split.reasoning_tokens[ok_sel]),
                       ("AnswerTokens", split.answer_tokens[ok_sel])]
    for metric, samples in per_request:
        n = int(np.isfinite(samples).sum())
        values = _stats(samples) if n else [np.nan] * len(STATS)  # no answer anywhere (or not streamed): "-"
        intervals += _interval_rows(metric, stage, samples, values, np.zeros(0), None)
        rows.append([metric, stage, *[v * 1000 if metric in MS_METRICS else v for v in values], n])
    if split.multi:
        for metric, samples, owner in (("TokensPerEvent", split.tpe, split.tpe_owner),
                                       ("ITLPerToken", split.itl_tok, split.itl_tok_owner)):
            if code is not None:
                samples, owner = samples[ok_sel[owner]], owner[ok_sel[owner]]
            per = np.bincount(owner, minlength=ok_stage.size)[ok_sel]
            bounds = _itl_bounds(samples.copy(), per)  # cluster-robust: the samples come in requests
            values = _stats(samples)
            intervals += _interval_rows(metric, stage, samples, values, per, bounds)
            rows.append([metric, stage, *[v * 1000 if metric in MS_METRICS else v for v in values],
                         int((per > 0).sum())])
    return rows


def _split_common_rows(stage: str, split: _Split, ok_sel: np.ndarray) -> list[list]:
    if not split.reasoning:
        return []
    # a request whose split is unknown makes the total unknown ("-"), never an undercount
    return [["Total Reasoning Tokens", stage, float(split.reasoning_tokens[ok_sel].sum()), ""],
            ["Total Answer Tokens", stage, float(split.answer_tokens[ok_sel].sum()), ""]]


def prefix_cache_rows(stage: str, cols: Columns, sel: np.ndarray, profile: str) -> list[list]:
    """Prefix Cache Hit Rate: sum of usage's cached_tokens / sum of input tokens, over the stage's successes
    whose usage had cached_tokens; no row when no request of the run had it (or another tool's profile)."""
    cached = cols.cached_tokens
    if profile != "default" or cached is None or not np.isfinite(cached[cols.success]).any():
        return []
    known = sel & cols.success & np.isfinite(cached)
    inputs = float(cols.input_tokens[known].sum())
    return [["Prefix Cache Hit Rate", stage, 100.0 * float(cached[known].sum()) / inputs if inputs else np.nan, "%"]]


def split_note(cols: Columns, results: Results) -> str:
    """The console's line on where the reasoning split and the tokens per event came from; '' when the
    run shows neither."""
    shown = set(results.perf["Performance Parameters"])
    parts = []
    src = cols.token_split_sources
    if "ReasoningTokens" in shown:
        parts.append("reasoning/answer tokens from " + _sources(src, "reasoning_token"))
    if "TokensPerEvent" in shown:
        parts.append("tokens per event from " + _sources(src, "event_token") + " (usage: per-chunk usage, exact; "
                     "one-per-event: usage total = events; tokenizer: an estimate, re-tokenised text)")
    return "Token split: " + "; ".join(parts) if parts else ""


def _sources(counts: Counter, prefix: str) -> str:
    items = [(k.split(":", 1)[1], v) for k, v in counts.most_common() if k.startswith(prefix + ":")]
    return ", ".join(f"{name} ({v} requests)" for name, v in items) or "-"
