"""Does the server's own account of a run agree with what the client measured? A verdict with causes.

    result = reconcile(sm, client_run(run_dir), config)    # a plain dict (server_metrics_reconcile.json)
    print("\\n".join(result["lines"]))

The window is the whole run: from the first send of every request (warm-up included: the server saw
those too) to the last event of any. Counter deltas are taken between the scrapes that BRACKET it (the
last before the first send, the first after the last end), not between the first and last scrape inside
it: a counter moves when a request finishes (or is prefilled), so only a window that holds every request
whole can be compared request for request with the records; scrapes inside the run would cut the first
and last requests in two and leave a count difference that means nothing.

What is compared, and when a flag fires (thresholds below, chosen so that loopback against an honest
simulator stays quiet, and a hidden 50 ms delay or a 20 % lie is caught):
- requests: the server's finished count (all reasons) should lie in [successes, successes + failures
  + cancelled]: the server may or may not have counted a request the client gave up on (as abort).
  Outside that range by any request -> flag (both windows are whole, so counts are exact).
- tokens: prompt and generation counters vs the client's sums over its successes; a server excess up to
  what the failed/cancelled requests could hold is allowed. Off by more than TOKEN_TOL -> flag, naming
  the tokenizer/chat template when the client counted with its tokenizer, the counter when with usage.
- TTFT and E2E: the server histogram against the client's samples in the same buckets (share under each
  bound on both sides with the client's 95 % Wilson interval, the largest gap), and the client's extra
  latency (client minus server, per request). When both sides counted the same requests the verdict
  rests on the means: the histogram's sum/count is exact, so mean(client) - mean(server) is the mean
  per-request extra, exactly (m requests the server timed and the client has no sample of widen it by
  what the buckets allow them). Otherwise it rests on the median: the server median lies in one bucket
  [a, b] and the client's has an order-statistic interval [lo, hi], so the extra lies in [lo - b, hi - a]
  at the bucket's resolution. The constant shift that carries the client's samples onto every bucket
  count is shown (it assumes every request was delayed alike); when none exists and the shares part by
  more than SHARE_GAP, the shapes differ -> flag. Extra surely above max(EXTRA_MS, EXTRA_SHARE x server
  mean) -> "gateway or network", unless within LAG_FACTOR x the client's own event-loop lag p50 (a
  busy client, said so); the server surely slower than the client by more than max(NEG_MS, NEG_SHARE x
  server mean) -> its histogram is wrong (no reply reaches the client before the server made it).
  Anything else that is not inside the thresholds is "unresolved", never "agree".
- prefix cache: the server's hit rate against the theoretical rate of the prompts as sent (config.json's
  prefix_cache_theory, benchmark/prefix_hits.py: with the tokenizer and with the simulator's words);
  more than PREFIX_TOL outside both -> flag. A run without it (made before) estimates the rate from
  --prefix-tokens; more than PREFIX_TOL apart -> flag.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .. import metrics, stats
from ..columns import CANCELLED, WARMUP, Columns, from_records, read_columns, token_mask
from ..records import read_records
from . import series

FILE_NAME = "server_metrics.jsonl"
RESULT_FILE = "server_metrics_reconcile.json"
CANCELLED_FILE = "cancelled.jsonl"

TOKEN_TOL = 0.02     # token totals may differ by 2 % before a flag (usage-counted runs agree exactly)
EXTRA_MS = 15.0      # client extra latency that is surely above this many ms -> flag (loopback: ~1 ms)
EXTRA_SHARE = 0.02   # ... and above this share of the server's mean (long E2E: small relative gaps)
NEG_MS = 5.0         # server surely slower than the client by more than this -> its histogram is wrong
NEG_SHARE = 0.05
PREFIX_TOL = 0.10    # prefix-cache hit rate this far (absolute) from the workload's -> flag
SHARE_GAP = 0.10     # a share gap this large with no constant shift explaining it -> shapes differ
LAG_FACTOR = 4.0     # ... and above this many times the client's own event-loop lag p50 (health.py): the
                     # typical lag, not its p99, which one stalled tick of a short run sets
BOUND_LAG_MS = 5.0   # health.LOOP_LAG_LIMIT: a client lagging more is client-bound (not imported: gevent)
LATENCIES = (("ttft", "TTFT"), ("e2e", "E2E"))


@dataclass
class ClientRun:
    """Every request the client sent (warm-up and cancelled included), one value each."""
    t_send: np.ndarray      # epoch s
    end: np.ndarray         # epoch s of the last event (t_send when none)
    success: np.ndarray
    cancelled: np.ndarray
    stage: np.ndarray       # stage name (object)
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    ttft: np.ndarray        # s (NaN: no token): successes by metrics.request_samples, others their first token
    e2el: np.ndarray        # s, successful requests only
    sources: Counter        # token_source of the successful requests
    stream: bool
    cols: Columns           # records.jsonl as read (events intact), for the report's time series

    @property
    def n(self) -> int:
        return int(self.t_send.size)


def client_run(run_dir: str, stream: bool | None = None) -> ClientRun | None:
    """The run's requests as the client saw them (None when records.jsonl is missing)."""
    path = os.path.join(run_dir, "records.jsonl")
    if not os.path.isfile(path):
        return None
    cols, _ = read_columns(path, drop_cancelled=False)
    cancelled = np.zeros(cols.n, bool)
    fail_idx = np.flatnonzero(~cols.success)  # cols.failed is in the order of the failed records
    for j, f in zip(fail_idx, cols.failed):
        cancelled[j] = str(f.get("error") or "").startswith(CANCELLED)
    extra = None
    cpath = os.path.join(run_dir, CANCELLED_FILE)
    if os.path.isfile(cpath):
        extra = from_records(read_records(cpath)[0])
    samples = metrics.request_samples(cols, profile="default", stream=stream)
    ttft = _first_tokens(cols) if samples.stream else np.full(cols.n, np.nan)
    e2el = np.full(cols.n, np.nan)
    ttft[cols.success] = samples.values["TTFT"] / 1000  # the tables' own definition for successes
    e2el[cols.success] = samples.values["E2EL"] / 1000

    def ends(c: Columns) -> np.ndarray:
        last = np.full(c.n, np.nan)
        has = c.counts > 0
        last[has] = c.offsets[np.cumsum(c.counts)[has] - 1]
        return c.t_send + np.nan_to_num(last, nan=0.0)

    parts = [(cols, cancelled, ttft, e2el)]
    if extra is not None and extra.n:
        parts.append((extra, np.ones(extra.n, bool), _first_tokens(extra), np.full(extra.n, np.nan)))
    cat = np.concatenate
    return ClientRun(
        t_send=cat([c.t_send for c, *_ in parts]), end=cat([ends(c) for c, *_ in parts]),
        success=cat([c.success for c, *_ in parts]), cancelled=cat([m for _, m, *_ in parts]),
        stage=cat([c.stage_of_each() for c, *_ in parts]),
        input_tokens=cat([c.input_tokens for c, *_ in parts]), output_tokens=cat([c.output_tokens for c, *_ in parts]),
        ttft=cat([p[2] for p in parts]), e2el=cat([p[3] for p in parts]), sources=Counter(cols.sources),
        stream=samples.stream, cols=cols)


def _first_tokens(cols: Columns) -> np.ndarray:
    """Offset of each request's first content/reasoning event, s (NaN: none): the TTFT of a request that
    failed or was cut short after its first token, which the server timed as well."""
    out = np.full(cols.n, np.nan)
    tok = np.flatnonzero(token_mask(cols.kinds))
    if tok.size:
        owner = np.searchsorted(np.cumsum(cols.counts), tok, side="right")
        first = np.concatenate([[True], owner[1:] != owner[:-1]])
        out[owner[first]] = cols.offsets[tok[first]]
    return out


def reconcile_run(run_dir: str, config: dict | None = None):
    """(result, ServerMetrics, ClientRun) of a run folder, or None when it has no server_metrics.jsonl."""
    sm = series.load(os.path.join(run_dir, FILE_NAME))
    if sm is None and not os.path.isfile(os.path.join(run_dir, FILE_NAME)):
        return None
    config = config or {}
    client = client_run(run_dir, stream=config.get("stream"))
    return reconcile(sm, client, config), sm, client


# ---------------------------------------------------------------------------------------------


def reconcile(sm: series.ServerMetrics | None, client: ClientRun | None, config: dict | None = None) -> dict:
    """The comparison as a JSON-ready dict; result["lines"] is the printed verdict, result["flags"] the
    causes named. Never raises for thin data: it says why it cannot reconcile instead."""
    config = config or {}
    out: dict = {"engine": None, "engine_label": None, "notes": [], "reconciled": False, "reason": None,
                 "flags": [], "lines": [], "window": None,
                 "thresholds": {"token_tol": TOKEN_TOL, "extra_ms": EXTRA_MS, "extra_share": EXTRA_SHARE,
                                "neg_ms": NEG_MS, "neg_share": NEG_SHARE, "prefix_tol": PREFIX_TOL,
                                "share_gap": SHARE_GAP, "lag_factor": LAG_FACTOR}}
    if sm is None:
        return _cannot(out, "server_metrics.jsonl has no readable line")
    out.update(engine=sm.engine.name if sm.engine else sm.engine_name, engine_label=sm.label, url=sm.url,
               scrapes=sm.n, interval_s=sm.interval_s)
    t0 = t1 = None
    if client is not None and client.n and np.isfinite(client.t_send).any():
        t0, t1 = float(np.nanmin(client.t_send)), float(np.nanmax(client.end))
    out["notes"] = sm.notes(t0)
    every = f" every {sm.interval_s:g} s" if sm.interval_s else ""
    head = f"Server metrics: {sm.label}" + (f" at {sm.url}" if sm.url else "") + f", {sm.n} scrapes{every}"
    if sm.n < 2:
        return _cannot(out, (f"only {sm.n} scrape" if sm.n else "no scrape succeeded")
                       + " (one before the first request and one after the last are needed)"
                       + _first_error(sm), head)
    if sm.engine is None:
        return _cannot(out, "unknown engine: raw families kept, nothing to compare them with", head)
    if t0 is None:
        return _cannot(out, "no request in records.jsonl", head)
    i0, i1 = sm.window(t0, t1)
    out["window"] = {"t_first_send": t0, "t_last_end": t1, "duration_s": t1 - t0,
                     "scrape_before": None if i0 is None else float(sm.t[i0]),
                     "scrape_after": None if i1 is None else float(sm.t[i1])}
    if i0 is None:
        return _cannot(out, f"no scrape before the first request (the first came {sm.t[0] - t0:+.1f} s after "
                            "it): requests finished before it are not in any delta", head)
    if i1 is None:
        return _cannot(out, f"no scrape after the last request ended (the last was {sm.t[-1] - t1:+.1f} s from "
                            "it: the final scrape failed?)" + _first_error(sm), head)
    out["reconciled"] = True
    resets = [t for t, _ in sm.resets() if sm.t[i0] < t <= sm.t[i1]]
    out["resets"] = [t - t0 for t in resets]
    flags: list[dict] = []
    lines = [head + f": window {sm.t[i0] - t0:+.1f} s to {sm.t[i1] - t0:+.1f} s around the run"
             + (", warm-up included" if (client.stage == WARMUP).any() else "")]
    if resets:
        flags.append({"kind": "reset", "text": f"the server restarted during the run (a counter went down at "
                      f"{resets[0] - t0:+.1f} s): what it counted between the scrape before and the restart "
                      "is lost, so it undercounts"})
    out["requests"] = _requests(sm, client, i0, i1, flags, lines, bool(resets))
    out["tokens"] = _tokens(sm, client, i0, i1, config, flags, lines, bool(resets))
    out["latency"] = {}
    health = config.get("client_health")
    health = health.values() if isinstance(health, dict) else ()
    health = [h for h in health if isinstance(h, dict)]
    lag = max([float(h.get("loop_lag_p50_ms") or 0) for h in health] or [0.0])
    lag99 = max([float(h.get("loop_lag_p99_ms") or 0) for h in health] or [0.0])
    out["client_loop_lag_p50_ms"], out["client_loop_lag_p99_ms"] = lag, lag99
    for name, label in LATENCIES:
        h = sm.histogram(name)
        if h is None:
            continue
        if name == "ttft" and not client.stream:
            lines.append("  TTFT: non-streaming run, the client has no TTFT to compare")
            continue
        # the server times the first token of every request that got one, failed or cut short ones too
        x = client.ttft if name == "ttft" else client.e2el[client.success]
        others = int(client.n - np.isfinite(client.ttft).sum()) if name == "ttft" else int((~client.success).sum())
        out["latency"][name] = _latency(label, h, i0, i1, x, others, flags, lines, sm.engine.notes.get(name),
                                        lag, lag99)
    if not out["latency"]:
        lines.append(f"  latency: {sm.label} exports no TTFT/E2E histogram")
    elif (out["latency"].get("e2e") or {}).get("verdict") == "client slower" and \
            (out["latency"].get("ttft") or {}).get("verdict") == "agree":
        # a delay in front of the engine would show in TTFT too: this one builds up during the stream
        for f in flags:
            if f["kind"] == "e2e":
                f["text"] = f"{f['what']}: TTFT agrees, so the extra comes after the first token: a buffering " \
                            "proxy, a client slow to read, or the server's E2E histogram is wrong"
    q = sm.histogram("queue_time")
    if q is not None:
        _, qs, qn, _ = series.hist_increase(q, i0, i1)
        if qn and math.isfinite(qn) and qn > 0:
            out["queue_time"] = {"server_mean_ms": 1000 * qs / qn, "n": qn}
            lines.append(f"  server queue time: mean {1000 * qs / qn:.1f} ms over {qn:.0f} requests")
    out["prefix_cache"] = _prefix(sm, client, i0, i1, config, flags, lines)
    out["spec_decode"] = _spec(sm, i0, i1, lines)
    out["flags"] = flags
    if flags:
        lines += [f"  ! {f['text']}" for f in flags]
    else:
        loose = [k.upper() for k, v in out["latency"].items() if v.get("verdict") in ("unresolved", "client lag")]
        lines.append("  no flag: the server's account and the client's agree at the resolution stated above"
                     if not loose else f"  no flag, but {' and '.join(loose)} not shown to agree (report.html: why)")
    out["lines"] = lines
    out["details"] = [v["detail"] for v in out["latency"].values() if v.get("detail")]
    return _plain(out)


def failed(why: str) -> dict:
    """The result when reading or comparing raised (a bug, or a file no rule foresaw): said, not raised."""
    return _cannot({"engine": None, "engine_label": None, "notes": [], "reconciled": False, "flags": [],
                    "thresholds": {}}, f"error while reading server_metrics.jsonl ({why})")


def _cannot(out: dict, reason: str, head: str = "Server metrics") -> dict:
    out["reason"] = f"cannot reconcile: {reason}"
    out["lines"] = [f"{head}: {out['reason']}"]
    return _plain(out)


def _first_error(sm: series.ServerMetrics) -> str:
    errs = [e["reason"] for e in sm.events if e["kind"] == "error"]
    return f"; scrape error: {errs[0]}" if errs else ""


# ---------------------------------------------------------------------------------------------
# requests and tokens


def _requests(sm, client: ClientRun, i0: int, i1: int, flags: list, lines: list, reset: bool) -> dict:
    ok = int(client.success.sum())
    cancelled = int(client.cancelled.sum())
    failed = client.n - ok - cancelled
    side = {"sent": client.n, "succeeded": ok, "failed": failed, "cancelled": cancelled,
            "warmup": int((client.stage == WARMUP).sum())}
    res = {"client": side, "server": None, "agree": None}
    if not sm.has("requests_finished"):
        lines.append(f"  requests: {sm.label} exports no finished-request counter; client {ok} succeeded, "
                     f"{failed} failed, {cancelled} cancelled")
        return res
    total, _ = series.increase(sm.counter("requests_finished"), i0, i1)
    by = {k: series.increase(v, i0, i1)[0] for k, v in sm.counter("requests_finished", by_label=True).items()}
    by = {k: v for k, v in by.items() if math.isfinite(v) and v > 0}
    res["server"] = {"finished": total, "by_reason": by}
    if not math.isfinite(total):
        lines.append("  requests: the finished-request counter is missing from the bracketing scrapes")
        return res
    total_i = int(round(total))
    reasons = ", ".join(f"{k} {v:.0f}" for k, v in sorted(by.items(), key=lambda kv: -kv[1]))
    client_txt = f"client {ok} succeeded, {failed} failed, {cancelled} cancelled"
    server_txt = f"server finished {total_i}" + (f" ({reasons})" if reasons else "")
    note = sm.engine.notes.get("requests_finished") if sm.engine else None
    if total_i < ok:
        res["agree"] = False
        flags.append({"kind": "requests", "text": f"client saw {ok - total_i} more requests than the server "
                      f"finished ({ok} succeeded, server {total_i})"
                      + ("; the server restarted, which loses counts" if reset else
                         ": another server answered some (a load balancer?), or its counter is wrong")})
        verdict = "DIFFER"
    elif total_i > ok + failed + cancelled:
        res["agree"] = False
        flags.append({"kind": "requests", "text": f"server finished {total_i - client.n} more requests than the "
                      f"client sent ({client.n}): other traffic on the server during the run, or its counter "
                      "is wrong"})
        verdict = "DIFFER"
    else:
        res["agree"] = True
        extra = total_i - ok
        verdict = "agree, exactly" if not extra else \
            f"agree ({extra} of the client's {failed + cancelled} failed/cancelled counted by the server)"
    lines.append(f"  requests: {server_txt}; {client_txt}: {verdict}" + (f" [{note}]" if note else ""))
    return res


def _source(client: ClientRun) -> str:
    src = {k: v for k, v in client.sources.items() if k}
    if not src:
        return "unknown"
    if len(src) == 1:
        return next(iter(src))
    return ", ".join(f"{k} {v}" for k, v in Counter(src).most_common())


def _tokens(sm, client: ClientRun, i0: int, i1: int, config: dict, flags: list, lines: list, reset: bool) -> dict:
    ok = client.success
    others = int((~ok).sum())  # failed or cancelled: the server may have counted their tokens
    source = _source(client)
    res = {"source": source, "sources": dict(client.sources)}
    parts = []
    for canonical, label, values in (("prompt_tokens", "prompt", client.input_tokens),
                                     ("generation_tokens", "generation", client.output_tokens)):
        if not sm.has(canonical):
            continue
        server, _ = series.increase(sm.counter(canonical), i0, i1)
        note = sm.engine.notes.get(canonical) if sm.engine else None
        if canonical == "prompt_tokens" and sm.engine and sm.engine.name == "llamacpp" and sm.has("prefix_hits"):
            # llama.cpp counts only the prompt tokens it evaluated; the reused ones are counted apart
            hits, _ = series.increase(sm.counter("prefix_hits"), i0, i1)
            server, note = server + (hits if math.isfinite(hits) else 0.0), "evaluated + cached prompt tokens"
        mine = float(values[ok].sum())
        per = float(values[ok].max()) if ok.any() else 0.0
        if canonical == "generation_tokens":
            per = max(per, float(config.get("max_out_len") or 0))
        allowance = others * per
        entry = {"server": server, "client": mine, "allowance": allowance, "agree": None}
        res[label] = entry
        if not math.isfinite(server):
            continue
        diff = server - mine
        pct = 100.0 * diff / mine if mine else (0.0 if not diff else math.inf)
        entry.update(diff=diff, diff_pct=pct)
        more, fewer = diff > TOKEN_TOL * mine + allowance, -diff > TOKEN_TOL * mine
        entry["agree"] = not (more or fewer)
        text = f"{label} {server:.0f} vs {mine:.0f} ({pct:+.1f} %)"
        if more or fewer:
            cause = ("tokenizer or chat template differs from the server's" if "tokenizer" in source and
                     "usage" not in source else
                     "the server's counter disagrees with its own usage replies (counts something they don't, "
                     "or is wrong)" if source == "usage" else "tokenizer or counter differs")
            if fewer and reset:
                cause = "the server restarted, which loses counts"
            elif fewer and note:
                cause = note
            flags.append({"kind": "tokens", "text": f"server counted {abs(pct):.1f} % {'more' if more else 'fewer'} "
                          f"{label} tokens than the client ({server:.0f} vs {mine:.0f}, client from {source}): "
                          f"{cause}"})
            text += " DIFFER"
        elif allowance and diff > TOKEN_TOL * mine:
            text += (f" (the rest fits the {others} failed/cancelled requests the client has no count for: "
                     f"up to {allowance:.0f})")
        parts.append(text)
    if parts:
        lines.append(f"  tokens, server vs client ({source} counts): " + "; ".join(parts)
                     + ("" if any(e.get("agree") is False for e in res.values() if isinstance(e, dict))
                        else f": agree (tolerance {100 * TOKEN_TOL:g} %)"))
    else:
        lines.append(f"  tokens: {sm.label} exports no token counters")
    return res


# ---------------------------------------------------------------------------------------------
# latency histograms


def _wilson(k: np.ndarray, n: int, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """95 % Wilson interval of shares k/n (the client's sampling uncertainty at each bound)."""
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return np.clip(mid - half, 0, 1), np.clip(mid + half, 0, 1)


def shift_interval(x: np.ndarray, bounds: np.ndarray, shares: np.ndarray) -> tuple[float, float] | None:
    """The constant shifts d (s) for which the client's samples x - d fall into the server's buckets as
    the server's shares say (a few ranks of slack for sampling and for a few odd requests), or None
    when no single shift does: then the two distributions differ in shape, not just in place.

    At a bound b with server share s, about s*n of the shifted samples must lie at or below b: with
    sorted x, that holds for x_(lo) - b <= d < x_(hi+1) - b, lo/hi being s*n less/more the slack."""
    xs = np.sort(x)
    n = xs.size
    lo_d, hi_d = -math.inf, math.inf
    for b, s in zip(bounds, shares):
        target = s * n
        slack = 2 * math.sqrt(n * s * (1 - s)) + max(2.0, 0.01 * n)
        lo_r, hi_r = math.floor(target - slack), math.ceil(target + slack)
        if lo_r >= 1:
            lo_d = max(lo_d, xs[lo_r - 1] - b)
        if hi_r <= n - 1:
            hi_d = min(hi_d, xs[hi_r] - b)
    return (lo_d, hi_d) if lo_d < hi_d else None


def _latency(label: str, h: series.Histogram, i0: int, i1: int, x: np.ndarray, others: int,
             flags: list, lines: list, note: str | None = None, lag_ms: float = 0.0, lag99_ms: float = 0.0) -> dict:
    """One latency histogram against the client's samples x (s). others: requests the client sent but has
    no sample of, which the server may have observed (failed, cancelled); note: the engine's caveat."""
    counts, hsum, hcount, _ = series.hist_increase(h, i0, i1)
    x = x[np.isfinite(x)]
    n = int(x.size)
    res: dict = {"n_server": hcount, "n_client": n}
    if not (math.isfinite(hcount) and hcount > 0) or n == 0:
        lines.append(f"  {label}: nothing to compare (server observed {hcount if math.isfinite(hcount) else 0:.0f}, "
                     f"client {n} samples)")
        return res
    bounds = h.bounds[:-1]
    server = counts[:-1] / hcount
    below = np.searchsorted(np.sort(x), bounds, side="right")
    client_share = below / n
    c_lo, c_hi = _wilson(below.astype(float), n)
    gap = client_share - server
    # the bounds worth showing: where either side is between 0 and 1, and one each side of that
    live = np.flatnonzero(((server > 0) & (server < 1)) | ((client_share > 0) & (client_share < 1)))
    first = max(int(live[0]) - 1, 0) if live.size else 0
    last = min(int(live[-1]) + 1, bounds.size - 1) if live.size else bounds.size - 1
    res["buckets"] = [{"bound_ms": 1000 * float(b), "server": float(s), "client": float(c), "client_lo": float(lo),
                       "client_hi": float(hi)}
                      for b, s, c, lo, hi in zip(bounds[first:last + 1], server[first:last + 1],
                                                 client_share[first:last + 1], c_lo[first:last + 1],
                                                 c_hi[first:last + 1])]
    k = int(np.argmax(np.abs(gap))) if gap.size else 0
    res["largest_gap"] = {"bound_ms": 1000 * float(bounds[k]), "server": float(server[k]),
                          "client": float(client_share[k]), "client_lo": float(c_lo[k]), "client_hi": float(c_hi[k]),
                          "gap": float(gap[k])} if gap.size else None

    # the server median lies in the bucket where the cumulative count first reaches half
    m = int(np.searchsorted(counts, hcount / 2, side="left"))
    a = float(h.bounds[m - 1]) if m > 0 else 0.0
    b = float(h.bounds[min(m, h.bounds.size - 1)])
    c_med = float(np.median(x))
    q_lo, q_hi = stats.quantile_interval(x, 0.5)
    med = {"server_bucket_ms": [1000 * a, 1000 * b], "resolution_ms": 1000 * (b - a), "client_ms": 1000 * c_med,
           "client_ci_ms": [1000 * q_lo, 1000 * q_hi],
           "extra_ms": [1000 * (q_lo - b), 1000 * (q_hi - a)]}
    res["median"] = med
    s_mean = hsum / hcount if math.isfinite(hsum) else math.nan
    c_mean = float(x.mean())
    # When the server observed the client's requests and m more (ones the client gave up on), the
    # difference of the two means is exact up to those m: each lies between 0 and the top of the
    # highest bucket in use, which bounds the server's mean over the client's own requests.
    m = int(round(hcount)) - n
    paired = math.isfinite(s_mean) and 0 <= m <= others
    top = float(h.bounds[min(int(np.searchsorted(counts, hcount, side="left")), h.bounds.size - 1)])
    low = int(np.flatnonzero(counts > 0)[0])
    bottom = float(h.bounds[low - 1]) if low > 0 else 0.0       # every observation lies in [bottom, top]
    own_hi = (hsum - m * bottom) / n if paired else math.nan    # the m extra requests as short as allowed
    own_lo = (hsum - m * top) / n if paired else math.nan       # ... or as long
    res["mean"] = {"server_ms": 1000 * s_mean, "client_ms": 1000 * c_mean, "extra_ms": 1000 * (c_mean - s_mean),
                   "extra_ci_ms": [1000 * (c_mean - own_hi), 1000 * (c_mean - own_lo) if m else 1000 * (c_mean - own_hi)],
                   "paired": bool(paired), "server_only": max(m, 0)}
    if paired:
        res["mean"]["extra_ms"] = 1000 * (c_mean - (own_hi if not m else (own_lo + own_hi) / 2))
    shift = shift_interval(x, bounds, server)
    res["shift_ms"] = None if shift is None else [1000 * shift[0], 1000 * shift[1]]

    # The verdict rests on what needs no model of the delay: the mean extra over the same requests (an
    # average of per-request differences) when both sides counted them, else the median's bucket
    # interval. The constant-shift interval assumes every request was delayed alike, so it only informs.
    lo, hi = res["mean"]["extra_ci_ms"] if paired else med["extra_ms"]
    res["extra_ms"] = [lo, hi]
    res["basis"] = "mean" if paired else "median"
    ref = 1000 * (s_mean if math.isfinite(s_mean) else (a + b) / 2)
    # a client whose event loop ran late read every stream late by about that much: its own delay, not
    # the network's (health.py measures it; a busy machine's stall can add ~10 ms to a short run's mean)
    base = max(EXTRA_MS, EXTRA_SHARE * ref)
    pos = max(base, LAG_FACTOR * lag_ms)
    neg = max(NEG_MS, NEG_SHARE * ref)
    res["thresholds_ms"] = [-neg, pos]
    point = res["mean"]["extra_ms"] if paired else (lo + hi) / 2 if math.isfinite(lo + hi) else math.nan
    by = _ms(point, sign=False) if math.isfinite(point) else f"at least {_ms(lo, sign=False)}"
    by_neg = _ms(-point, sign=False) if math.isfinite(point) else f"at least {_ms(-hi, sign=False)}"
    exact = paired and not m
    mean_txt = (f"{_ms(res['mean']['extra_ms'])} at the mean (exact: the same {n} requests)" if exact
                else f"{_ms(res['mean']['extra_ms'])} at the mean ({_range(res['mean']['extra_ci_ms'])}: the server "
                     f"also counted {m} the client has no sample of)" if paired else "")
    median_txt = (f"server median in bucket {_bucket(a, b)} (resolution {_ms(1000 * (b - a), sign=False)}), so "
                  f"at the median {_range(med['extra_ms'])}")
    short = (f"{'exact ' if exact else ''}at the mean" if paired else f"at the median {_range((lo, hi))}") + \
        (f"; at the median {_range(med['extra_ms'])}" if paired else "")
    # (a client whose loop ran late delays some reads and not others: its shape then says nothing)
    if shift is None and lag99_ms <= BOUND_LAG_MS and \
            abs(gap[k]) > SHARE_GAP + max(client_share[k] - c_lo[k], c_hi[k] - client_share[k]):
        flags.append({"kind": f"{label.lower()}_shape", "text": f"the client's {label} distribution is not the "
                      f"server's moved by a constant (at {_ms(1000 * bounds[k], sign=False)}: server "
                      f"{100 * server[k]:.0f} % under, client {100 * client_share[k]:.0f} % [{100 * c_lo[k]:.0f}-"
                      f"{100 * c_hi[k]:.0f}]): the server's histogram is scaled or holds other requests, or the "
                      "extra delay varies from request to request"})
    if lo > pos:
        res["verdict"] = "client slower"
        what = f"client {label} exceeds server {label} by {by} ({short})"
        flags.append({"kind": label.lower(), "what": what, "text": f"{what}: gateway or network in front of the engine"
                      + (f", or the client itself (event-loop lag p50 {lag_ms:.1f} ms)" if lag_ms >= 1 else "")
                      + (f" (the server's {label} is {note})" if note else "")})
    elif hi < -neg:
        res["verdict"] = "server slower"
        flags.append({"kind": label.lower(), "text": f"server {label} exceeds what the client saw by {by_neg} "
                      f"({short}): the server's histogram cannot be right, no reply reaches the client before "
                      "the server made it"})
    elif lo >= -neg and hi <= base:
        res["verdict"] = "agree"
    elif lo >= -neg and hi <= pos:
        res["verdict"] = "client lag"
    else:
        res["verdict"] = "unresolved"
    word = {"agree": "agree", "client slower": "DIFFER", "server slower": "DIFFER",
            "client lag": f"no flag: the extra ({_range((lo, hi))}) is within {LAG_FACTOR:g} x the client's own "
                          f"event-loop lag p50 ({lag_ms:.1f} ms), a busy client explains it",
            "unresolved": f"no disagreement the data can show, but they resolve the extra only to {_range((lo, hi))}"
            }[res["verdict"]]
    parts = [f"client extra {mean_txt}"] if mean_txt else []
    parts.append(median_txt)
    if shift is not None:
        parts.append(f"a constant shift of {_range(res['shift_ms'])} fits every bucket")
    if res["largest_gap"] and abs(gap[k]) >= 0.005:
        g = res["largest_gap"]
        parts.append(f"shares part most at {_ms(g['bound_ms'], sign=False)} (server {100 * g['server']:.0f} % "
                     f"under, client {100 * g['client']:.0f} % [{100 * g['client_lo']:.0f}-"
                     f"{100 * g['client_hi']:.0f}])")
    if note:
        parts.append(f"the server's {label} is {note}")
    # the console gets the verdict and the interval it rests on; the report the whole reasoning
    res["detail"] = f"{label} ({n} client samples, {hcount:.0f} server): {word}: " + "; ".join(parts)
    short_word = {"agree": "agree", "client slower": "DIFFER", "server slower": "DIFFER",
                  "client lag": "within the client's own event-loop lag", "unresolved": "unresolved"}[res["verdict"]]
    basis = ("exact, the same requests" if exact else "at the mean") if paired else \
        f"at the median, server bucket {_bucket(a, b)}"
    extra = _ms(lo) if lo == hi else _range((lo, hi))
    lines.append(f"  {label}: {short_word}: client extra {extra} ({basis}; "
                 f"{n} client samples, {hcount:.0f} server)")
    return res


def _ms(v: float, sign: bool = True) -> str:
    if not math.isfinite(v):
        return "unbounded" if not sign else ("-inf" if v < 0 else "+inf")
    return f"{v:+.1f} ms" if sign else f"{v:.1f} ms"


def _range(r) -> str:
    lo, hi = r
    if not math.isfinite(lo) and not math.isfinite(hi):
        return "anything"
    return f"{_ms(lo)} to {_ms(hi)}"


def _bucket(a: float, b: float) -> str:
    return f"{1000 * a:g}-{1000 * b:g} ms" if math.isfinite(b) else f"above {1000 * a:g} ms"


# ---------------------------------------------------------------------------------------------
# prefix cache and speculative decoding


def _prefix(sm, client: ClientRun, i0: int, i1: int, config: dict, flags: list, lines: list) -> dict | None:
    rate, how = None, ""
    if sm.has("prefix_hits"):
        hits, _ = series.increase(sm.counter("prefix_hits"), i0, i1)
        if sm.has("prefix_queries"):
            queries, _ = series.increase(sm.counter("prefix_queries"), i0, i1)
        elif sm.has("prompt_tokens") and sm.engine and sm.engine.name == "llamacpp":
            prompt, _ = series.increase(sm.counter("prompt_tokens"), i0, i1)
            queries = prompt + hits  # llama.cpp's prompt counter leaves the cached tokens out
        else:
            queries = math.nan
        if math.isfinite(hits) and math.isfinite(queries) and queries > 0:
            rate, how = hits / queries, f"{hits:.0f} of {queries:.0f} prompt tokens"
    elif sm.has("prefix_hit_rate"):
        g = sm.gauge("prefix_hit_rate")[i0:i1 + 1]
        if np.isfinite(g).any():
            rate, how = float(np.nanmean(g)), "mean of the engine's hit-rate gauge"
    if rate is None:
        return None
    res = {"hit_rate": rate, "how": how, "target": None}
    prefix = int((config.get("dataset_options") or {}).get("prefix_tokens") or 0)
    ok = client.success
    text = f"  prefix cache: server reports hits of {100 * rate:.1f} % ({how})"
    theory = _theory(config)
    if theory:  # the prompts as sent, to an ideal cache (prefix_hits.py), with two tokenizations
        # the server's tokens are unknown here: flag only a rate outside both figures' band
        target = min(theory.values(), key=lambda t: abs(t - rate))
        res.update(target=target, theoretical=theory)
        text += "; the prompts as sent would find " + " or ".join(
            f"{100 * t:.1f} % ({name})" for name, t in theory.items()) + " in an ideal cache"
        if rate < min(theory.values()) - PREFIX_TOL or rate > max(theory.values()) + PREFIX_TOL:
            flags.append({"kind": "prefix", "text": f"server reports prefix-cache hits of {100 * rate:.1f} % where "
                          f"the workload was built for {100 * target:.1f} % (theoretical, ideal cache): "
                          + ("prefix caching off, the cache too small (evictions) or requests out of order"
                             if rate < target else "more sharing than the prompts as sent have")})
    elif prefix and ok.sum() > 1 and client.input_tokens[ok].sum() > 0:
        mean_in = float(client.input_tokens[ok].mean())
        n_ok = int(ok.sum())
        # every request but the first finds the shared prefix (block granularity rounds it down a little)
        target = prefix * (n_ok - 1) / n_ok / mean_in
        res.update(target=target, prefix_tokens=prefix, mean_prompt_tokens=mean_in)
        text += f"; the workload was built for about {100 * target:.1f} % ({prefix}-token shared prefix of " \
                f"{mean_in:.0f} mean prompt tokens)"
        if abs(rate - target) > PREFIX_TOL:
            flags.append({"kind": "prefix", "text": f"server reports prefix-cache hits of {100 * rate:.1f} % where "
                          f"the workload was built for {100 * target:.1f} %: "
                          + ("prefix caching off or the cache too small" if rate < target else
                             "more sharing than the prompts were built with (chat template, repeated prompts)")})
    lines.append(text)
    return res


def _theory(config: dict) -> dict:
    """{"tokenizer": rate, "simulator words": rate} from config.json's prefix_cache_theory ({} when none)."""
    th = config.get("prefix_cache_theory")
    if not isinstance(th, dict):
        return {}
    out = {}
    for key, name in (("tokenizer", "tokenizer"), ("words", "simulator words")):
        rate = th.get(key, {}).get("hit_rate") if isinstance(th.get(key), dict) else None
        if isinstance(rate, (int, float)) and math.isfinite(rate):
            out[name] = float(rate)
    return out


def _spec(sm, i0: int, i1: int, lines: list) -> dict | None:
    if not (sm.has("spec_draft") and sm.has("spec_accepted")):
        return None
    draft, _ = series.increase(sm.counter("spec_draft"), i0, i1)
    acc, _ = series.increase(sm.counter("spec_accepted"), i0, i1)
    if not (math.isfinite(draft) and draft > 0):
        return None
    lines.append(f"  speculative decoding: {100 * acc / draft:.1f} % of {draft:.0f} drafted tokens accepted")
    return {"drafted": draft, "accepted": acc, "acceptance": acc / draft}


def _plain(v):
    """JSON-ready: numpy numbers as Python ones, NaN/inf as None."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else None
    return v
