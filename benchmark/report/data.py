"""Per-request arrays for the plots, from a run's Columns in one vectorised pass.

The definitions are DESIGN.md's (and metrics.py's): with the `default` profile only content/reasoning
events count for TTFT and ITL; with `aisbench` every data event does. Failed requests have no latencies.
The tables' own numbers always come from metrics.compute(); these arrays only draw the pictures.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import profiles
from ..columns import Columns, token_mask


@dataclass
class RunData:
    n: int
    t0: float                 # epoch s of the first send; every time below is seconds since t0
    start: np.ndarray         # per record
    end: np.ndarray           # per record: last event (NaN when the record has no events)
    success: np.ndarray       # bool
    stage: np.ndarray         # object (stage name per record)
    ttft: np.ndarray          # ms, NaN for failures / non-stream
    e2el: np.ndarray          # ms, NaN for failures
    tpot: np.ndarray          # ms, NaN for failures / non-stream
    out_tokens: np.ndarray
    itl: np.ndarray           # ms, pooled gaps of successful requests
    tok_time: np.ndarray      # token events of successful requests (s since t0) ...
    tok_weight: np.ndarray    # ... and the output tokens each one stands for

    @property
    def duration(self) -> float:
        ends = self.end[np.isfinite(self.end)]
        return float(ends.max()) if ends.size else 0.0


def run_data(cols: Columns, profile: str = "default", stream: bool = True) -> RunData:
    """The plot arrays of `cols` (left unchanged; pass records through columns.from_records)."""
    n = cols.n
    t_send, success, out, stage = cols.t_send, cols.success, cols.output_tokens, cols.stage_of_each()
    finite = t_send[np.isfinite(t_send)]
    t0 = float(finite.min()) if finite.size else 0.0
    start = t_send - t0

    counts, offsets = cols.counts, cols.offsets
    total = int(counts.sum())
    owner = np.repeat(np.arange(n), counts)
    first_idx = np.concatenate([[0], np.cumsum(counts)[:-1]]) if n else np.zeros(0, np.int64)
    has = counts > 0
    last = np.full(n, np.nan)
    last[has] = offsets[first_idx[has] + counts[has] - 1]
    end = start + last

    if stream and profile == "vllm":
        mask = profiles.vllm_chunks(cols.kinds)  # vLLM times every chunk but the usage-only one
    elif stream and profile != "aisbench":
        mask = token_mask(cols.kinds)
    else:
        mask = np.ones(total, bool)
    ok_event = mask & success[owner]
    tok_off, tok_owner = offsets[ok_event], owner[ok_event]
    tok_counts = np.bincount(tok_owner, minlength=n)

    ttft = np.full(n, np.nan)
    if stream and tok_off.size:
        firsts = np.concatenate([[True], tok_owner[1:] != tok_owner[:-1]])
        ttft[tok_owner[firsts]] = tok_off[firsts]
    e2el = np.where(success, last, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (e2el - ttft) / (out - 1), 0.0)
    tpot[~success | np.isnan(ttft)] = np.nan

    if stream and tok_off.size > 1:
        same = tok_owner[1:] == tok_owner[:-1]
        itl = np.diff(tok_off)[same]
    else:
        itl = np.zeros(0)

    with np.errstate(invalid="ignore", divide="ignore"):
        per_event = out / np.maximum(tok_counts, 1)
    tok_time = start[tok_owner] + tok_off
    tok_weight = per_event[tok_owner]
    if not stream:  # one event per request: all its tokens at the end
        tok_time = np.where(success, end, np.nan)
        tok_weight = np.where(success, out, 0.0)

    return RunData(n=n, t0=t0, start=start, end=end, success=success, stage=stage, ttft=ttft * 1000,
                   e2el=e2el * 1000, tpot=tpot * 1000, out_tokens=out, itl=itl * 1000,
                   tok_time=tok_time, tok_weight=tok_weight)


def bin_width(duration: float, max_bins: int = 300) -> float:
    """Seconds per bin for time series: 1 s unless that makes more than max_bins bins."""
    for w in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if duration / w <= max_bins:
            return float(w)
    return float(np.ceil(duration / max_bins / 3600) * 3600)


def per_bin_rate(times: np.ndarray, edges: np.ndarray, weights=None) -> np.ndarray:
    """Events (or summed weights) per second in each bin; a short last bin is divided by its own width."""
    ok = np.isfinite(times)
    w = None if weights is None else np.asarray(weights)[ok]
    counts, _ = np.histogram(times[ok], bins=edges, weights=w)
    return counts / np.maximum(np.diff(edges), 1e-9)


def mean_in_flight(start: np.ndarray, end: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Time-averaged number of open [start, end] intervals in each bin between consecutive edges.

    Busy(t) = sum over requests of their time open before t; its increase over a bin, divided by the
    bin's width, is the mean in-flight count (the per-bin version of the Concurrency metric)."""
    ok = np.isfinite(start) & np.isfinite(end)
    s, e = np.sort(start[ok]), np.sort(np.maximum(end[ok], start[ok]))
    ps, pe = np.concatenate([[0], np.cumsum(s)]), np.concatenate([[0], np.cumsum(e)])
    ks, ke = np.searchsorted(s, edges, "right"), np.searchsorted(e, edges, "right")
    busy = (ks * edges - ps[ks]) - (ke * edges - pe[ke])
    return np.diff(busy) / np.diff(edges)


def downsample(idx: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """At most k of the indices, chosen uniformly at random (reproducible), in their original order."""
    if idx.size <= k:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=k, replace=False))
