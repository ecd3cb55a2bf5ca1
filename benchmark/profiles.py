"""Other tools' metric definitions, for `--metric-profile vllm | guidellm` (metrics.py applies them).

The same records give different numbers under different tools because each tool defines its metrics
differently (GuideLLM issue #470). These profiles re-derive each tool's figures from one run's events, so
the differences can be read off one run (README "Metric profiles" has the table, metric by metric).

`vllm`: what `vllm bench serve` prints. Source: vllm/benchmarks/lib/endpoint_request_func.py
(`async_request_openai_chat_completions`, `async_request_openai_completions`) and
vllm/benchmarks/serve.py (`calculate_metrics`, `benchmark`).
- A "chunk" is an SSE data event whose `choices` is non-empty: every event but the usage-only one (role,
  content, reasoning, and the finish chunk with an empty delta, all count; text is not required).
  Our records type an event without text, role or usage `other`, whether its choices were empty or not;
  vLLM skips the (rare) chunk with neither choices nor usage, which this profile would count.
- TTFT = first chunk; ITL = every gap between consecutive chunks, pooled (a chunk carrying several tokens
  is one gap, zero gaps included); E2EL ("latency") = last chunk: the usage-only chunk does not end it.
  Older vLLM (benchmarks/backend_request_func.py, 2024) timed only chunks with non-empty `content` (no
  role chunk, no reasoning) and ended the latency at [DONE]; this profile follows the current code.
- TPOT = (E2EL - TTFT) / (output_len - 1), over the requests with output_len > 1 only (goodput counts
  the others as 0). output_len: the usage's completion_tokens, else vLLM's tokenizer on the text.
- Statistics: numpy mean / median / linear percentiles on the raw seconds, x1000 for ms (our own
  `_stats`; the table's Min/Max are ours, vLLM prints std instead, which the table has no column for).
- Duration: wall time of the whole benchmark, first request out to last one back, failed ones included;
  from records: first send (or scheduled time, open loop) to the last event of any request. Request,
  output and total token throughput = successes / tokens over that duration. Goodput (with --slo) =
  requests meeting every limit (<=) / duration. Peak concurrent requests: successful requests only,
  intervals [start, start + E2EL) (an end and a start at the same time do not overlap). Peak output
  token throughput: chunks per 1 s bucket from the first successful start (a chunk counts as one token;
  it needs every chunk's epoch time, one float per event, while the tables are made).

`guidellm`: GuideLLM's. Source: src/guidellm/backends/openai/http.py (`_resolve_streaming`),
request_handlers.py (`ChatCompletionsRequestHandler.add_streaming_line`, `_validate_text_response`),
src/guidellm/schemas/request_stats.py (`GenerativeRequestStats`), benchmark/schemas/metrics.py
(`GenerativeMetrics.compile`) and src/guidellm/schemas/statistics.py (`DistributionSummary`).
- A "token iteration" is an event with content or reasoning text (our content/reasoning events).
- TTFT = first token iteration (0 when a success has none, as GuideLLM's `or 0.0` does); E2EL
  (request_latency) = end of the stream (our last event of any kind: [DONE] is not an event here).
- TPOT = (last token iteration - start) / output_tokens: the first token included, one value per
  request, weighted by output_tokens in the statistics.
- ITL = (last token iteration - first) / (output_tokens - 1): one value per request (what vLLM would
  call TPOT, but over token iterations), weighted by output_tokens - 1; none when output_tokens <= 1.
- output_tokens: usage completion_tokens (else GuideLLM counts token iterations; our records then hold
  the tokenizer's count, and the report's token-source line says so).
- A response with no text and 0 output tokens is an error to GuideLLM (UNUSABLE_BACKEND_RESPONSE), not
  an empty success.
- Statistics: weighted; values with weight 0 dropped; mean = weighted mean; percentiles (and median) =
  the smallest value whose cumulative weight share reaches p (no interpolation); min/max over the values
  kept. N = the requests with weight > 0.
- Rates (req/s, token/s): the time-weighted mean of GuideLLM's rate distribution, which is the total
  over the span of its event times: requests / (first send .. last end of any request, the measurement
  window), prompt tokens at each first token, output tokens spread over first .. last token iteration.
  GuideLLM merges event times closer than 0.1 ms first, moving the span by at most that; we do not.
"""
from __future__ import annotations

import numpy as np

from .columns import KINDS
from .records import USAGE

_USAGE = KINDS.index(USAGE)


def vllm_chunks(kinds: np.ndarray) -> np.ndarray:
    """Events vLLM's request functions time: every chunk with choices, i.e. all but the usage-only one."""
    return kinds != _USAGE


def guidellm_stats(values: np.ndarray, weights: np.ndarray | None = None) -> tuple[list[float], int]:
    """Average, Min, Max, Median, P75, P90, P99 as GuideLLM's DistributionSummary.from_values computes
    them over (value, weight) pairs, and the number of values kept (finite, weight > 0).
    Zeros when none is kept."""
    values = np.asarray(values, np.float64)
    weights = np.ones(values.size) if weights is None else np.asarray(weights, np.float64)
    keep = np.isfinite(values) & (weights > 0)
    values, weights = values[keep], weights[keep]
    if not values.size:
        return [0.0] * 7, 0
    n = int(values.size)
    values, where = np.unique(values, return_inverse=True)  # equal values pooled, as GuideLLM pools them
    weights = np.bincount(where.ravel(), weights=weights, minlength=values.size)
    probabilities = weights / weights.sum()
    share = np.cumsum(probabilities)
    # the smallest value whose cumulative share reaches p; float noise may leave the last share under 1
    pick = np.minimum(np.searchsorted(share, (0.5, 0.75, 0.90, 0.99), side="left"), values.size - 1)
    mean = float(np.sum(values * probabilities))
    return [mean, float(values[0]), float(values[-1]), *map(float, values[pick])], n


def rate(total: float, times: np.ndarray) -> float:
    """GuideLLM's mean rate: the events' total weight over the span of their times; 0 with under two times."""
    times = times[np.isfinite(times)]
    if times.size < 2 or times.max() <= times.min():
        return 0.0
    return total / float(times.max() - times.min())


def vllm_peak_in_flight(starts: np.ndarray, ends: np.ndarray) -> int:
    """Most successful requests open at once over [start, end): an end before a start at the same time."""
    ok = np.isfinite(starts) & np.isfinite(ends)
    if not ok.any():
        return 0
    times = np.concatenate([starts[ok], ends[ok]])
    step = np.concatenate([np.ones(ok.sum(), np.int32), -np.ones(ok.sum(), np.int32)])
    order = np.lexsort((step, times))  # at equal times, close (-1) first
    return int(np.cumsum(step[order]).max())


def vllm_peak_output_rate(chunk_times: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> float:
    """vLLM's "Peak output token throughput": chunks counted per whole second since the first successful
    start (int() of the offset), over ceil(last end - first start) + 1 buckets; the largest count."""
    if not starts.size or not np.isfinite(starts).any():
        return 0.0
    t0 = np.nanmin(starts)
    buckets = int(np.ceil(np.nanmax(ends) - t0)) + 1
    where = (chunk_times - t0).astype(np.int64)  # int() truncates toward 0, as vLLM's int(...)
    where = where[(where >= 0) & (where < buckets)]
    return float(np.bincount(where, minlength=buckets).max()) if buckets > 0 else 0.0
