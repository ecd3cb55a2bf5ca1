"""`python -m benchmark compare BASE NEW`: did a change make the numbers better, worse, or not move?

    python -m benchmark compare reports/A reports/B
    python -m benchmark compare --base r1 r2 r3 --new r4 r5 r6 --fail-on "ttft.p99>+10%,accuracy<-1"

Each side is one run folder, or several repeats of the same setup. For every metric, statistic and stage
the command prints base, new, their difference, the relative difference with a confidence interval, and
a verdict: better, worse, or no significant change. The decisions, in the order the maths runs:

Rows. Per stage (`total`, and each load stage present in every run of both sides): TTFT, TPOT, ITL,
E2EL (Average, Median, P90, P99) and the per-request OutputTokenThroughput (Average, Median), then the
run-level Request Throughput and Output Token Throughput, and SLO Attainment and Goodput when every run
had the same --slo. Latencies: lower is better; throughputs and attainment: higher is better. The point
values are the pooled samples of a side's runs by the tables' own definitions (metrics.request_samples,
numpy linear percentiles), so with one run per side they are the run's table values (default profile;
the aisbench profile's tables are rounded, these are not).

Interval. The relative difference rel = new / base - 1 gets a percentile-bootstrap interval, seeded
(--seed, default 0) and vectorised over --bootstrap replicates (default 1000):
- Requests are resampled with Poisson(1) weights (the Poisson bootstrap: asymptotically the same as
  drawing n with replacement, and the weights of different requests are independent, so a stage's
  request count varies as it would between runs of an open loop).
- With several runs on a side, two stages: each replicate first draws the side's runs with
  replacement (multiplicities m_r), then weights request i of run r with Poisson(m_r). The spread of
  run-to-run levels enters the interval: this is the between-run variance.
- ITL: a request's gaps move together (a slow request has many slow gaps), so whole requests are
  resampled with all their gaps: the weight of a gap is its request's weight. The weighted linear
  percentile is found without repeating gaps: the gaps are sorted once; a (requests x checkpoints)
  matrix holds each request's count of gaps below a few dozen checkpoints, dense around each quantile,
  so one matrix product gives every replicate's weighted CDF there, and only the bracket holding a
  replicate's quantile is scanned. Per-request metrics use the same code with one value per request.
  Every replicate is exactly np.percentile of the resampled (repeated) sample.
- Run-level throughputs: resampled request counts and tokens over the run's duration held fixed
  (tokens / D, D pooled as sum of m_r * D_r). For a closed loop this is conservative: the number of
  requests a fixed set of users completes varies less than Poisson. SLO Attainment also resamples the
  failed requests (Poisson(m_r x failures)), which count in its denominator.

Verdict. A row is significant when its interval excludes 0 AND its point change is at least
--min-effect (default 2 %, relative): a fraction of a millisecond of jitter on a 20 ms ITL is "no
significant change" however narrow its interval. Many rows are tested at once, so the intervals are
simultaneous: --level (default 95 %) is the family-wise level over all testable rows of the table. The
per-row level comes from the joint bootstrap distribution (Mandel & Betensky 2008, simultaneous
percentile intervals: the largest per-row tail gamma for which `level` of the replicates fall inside
every row's interval), clipped between Bonferroni's alpha/m and the unadjusted alpha. Rows of one side
are strongly correlated (TTFT mean/median/P90, E2EL ...), so this is less conservative than Bonferroni
while keeping the false-alarm rate over the whole table near alpha. The printed intervals are these
simultaneous ones, so a verdict always agrees with its printed interval. Each interval is stretched
about the point change by sqrt(n/(n-1)) * t_{n-1}/z (n: the smaller side's requests): the percentile
bootstrap acts like a normal interval with the plug-in variance and under-covers in short runs (on
40-request pairs it made 6.5 % false alarms instead of 5 %; 1.07x wider at n = 40, 1.01x at n = 300).
A percentile with fewer than 2 samples above it on a side (P99 of under 200 requests, P90 of under
20) is n/a: it lies between the largest values, has no distribution-free upper bound, and its
bootstrap is that of a maximum. perf/compare_false_alarms.py measures the false-alarm and detection
rates on synthetic noise-only and 10 %-ITL pairs. With few repeats (3 runs a side) the between-run
part of an interval rests on few distinct resamples and is itself rough.

Accuracy (a separate test, at 1 - level): when both sides scored references on the same prompt
indices, samples are paired by prompt_index over the whole run (stage `total`) and McNemar's exact test
is run (scipy.stats.binomtest on the discordant pairs: right->wrong vs wrong->right). When a prompt has
several samples on a side (repeats, several passes) its share of correct answers is compared instead,
and a flip is a prompt whose share went down or up: the sign test, which is McNemar's test when every
prompt has one sample per side. Other cases are not compared, with a note saying why.

Gate (--fail-on "ttft.p99>+10%,tpot.median>+5%,accuracy<-1"): each limit is METRIC[.STAT][@STAGE] then
> or < then a signed number, % for a relative limit, else absolute in the row's unit (ms, token/s,
req/s; SLO attainment and accuracy in percentage points). A limit is breached when its row's verdict
is significant (better or worse, not "no significant change" or n/a) and the point change is beyond the
limit in the limit's direction (> : change > limit, < : change < limit). STAGE defaults to total.
Metrics: ttft tpot itl e2el (need a stat), throughput (run-level Output Token Throughput; with a stat
avg/median the per-request OutputTokenThroughput), request_throughput, goodput, slo_attainment,
accuracy. Stats: avg mean median p50 p90 p99. A limit whose row can't be compared (no --slo, no
scored accuracy) is not checked and says so in a note; it does not fail. Exit 1 on a breach, one line
per breached limit; 2 on a bad limit or a refused comparison; 0 otherwise, whatever changed.

Refusals (exit 2, one line): a missing or unreadable run folder; runs of different datasets
(dataset_abbr) or prompt sets (accuracy.score.prompt_version of prompt_config); different metric
profiles; a saturated client, unless --force (then a note). Saturation is a process whose
cpu_percent exceeded health.CPU_LIMIT. health.verdict() also calls a run CLIENT-BOUND for an event-loop
lag p99 over its limit, and that test cries wolf on short runs (one lag tick while the test shuts down
is a p99 of a few dozen ticks), so loop lag only adds a note here.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tabulate import tabulate

from . import health, metrics
from .columns import CANCELLED, WARMUP, read_columns

# columns of Comparison.rows
ROW_COLUMNS = ("metric", "statistic", "stage", "unit", "base", "new", "diff", "rel", "rel_lo", "rel_hi",
               "better", "verdict")
BETTER, WORSE, SAME, NA = "better", "worse", "no significant change", "n/a"


@dataclass
class Side:
    """One side of a comparison: one run folder, or several repeats of the same setup."""
    runs: list[str]                          # run folder paths
    configs: list[dict]                      # each run's config.json
    samples: list[metrics.RequestSamples]    # each run's per-request samples (metrics.request_samples)
    results: list[metrics.Results]           # each run's tables (metrics.compute)


@dataclass
class Comparison:
    base: Side
    new: Side
    # one row per metric x statistic x stage, ROW_COLUMNS: base/new the point values (pooled over a
    # side's runs), diff = new - base, rel = diff / base, [rel_lo, rel_hi] its confidence interval,
    # better = "lower" or "higher" (which direction is an improvement), verdict BETTER/WORSE/SAME/NA
    rows: pd.DataFrame
    accuracy: dict | None = None   # paired accuracy test when both sides scored the same prompts
    verdict: str = ""              # one line for the top of the console output and the report
    notes: list[str] = field(default_factory=list)
    breaches: list[str] = field(default_factory=list)  # --fail-on limits breached, one line each
    # how the intervals were made: level (family-wise), row_level (each row's, simultaneous), min_effect,
    # bootstrap, seed, rows_tested
    settings: dict = field(default_factory=dict)


class CompareError(Exception):
    """A comparison refused or impossible: one line saying why."""


LEVEL, MIN_EFFECT, BOOTSTRAP, SEED = 0.95, 0.02, 1000, 0

# (metric, statistics, unit, better)
REQUEST_ROWS = (
    ("TTFT", ("Average", "Median", "P90", "P99"), "ms", "lower"),
    ("TPOT", ("Average", "Median", "P90", "P99"), "ms", "lower"),
    ("ITL", ("Average", "Median", "P90", "P99"), "ms", "lower"),
    ("E2EL", ("Average", "Median", "P90", "P99"), "ms", "lower"),
    ("OutputTokenThroughput", ("Average", "Median"), "token/s", "higher"),
)
RUN_ROWS = (("Request Throughput", "req/s"), ("Output Token Throughput", "token/s"))
SLO_ROWS = (("SLO Attainment", "%"), ("Goodput", "req/s"))
RUN_STAT = "Value"  # the statistic of a run-level row
QUANTILE = {"Median": 0.5, "P90": 0.9, "P99": 0.99}
MIN_SAMPLES = 5     # fewer finite samples on a side: the row is n/a
# A percentile with fewer than ABOVE samples above it on a side is n/a: it sits between the largest
# values, has no distribution-free upper confidence bound (stats.order_ranks), and its bootstrap is
# the bootstrap of a maximum (inconsistent; it raised most false alarms of P99 on 40-request runs).
# With fewer than THIN above it, a note says its interval is rough.
ABOVE = 2
THIN = 5


# ---------------------------------------------------------------------------------------------
# reading run folders


def read_config(run_dir: str) -> dict:
    """A run folder's config.json ({} when it has none); CompareError for a folder that isn't a run."""
    if not os.path.isdir(run_dir):
        raise CompareError(f"{run_dir}: no such run folder")
    if not os.path.isfile(os.path.join(run_dir, "records.jsonl")):
        raise CompareError(f"{run_dir}: no records.jsonl here; pass a run folder like reports/20260101_120000")
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise CompareError(f"{path}: unreadable ({e})") from None
    if not isinstance(config, dict):
        raise CompareError(f"{path}: not a JSON object")
    return config


def read_run(run_dir: str, config: dict) -> tuple[metrics.RequestSamples, metrics.Results, bool]:
    """A run's per-request samples and tables, read as `run.report` reads them: records.jsonl with the
    warm-up left out and cancelled requests dropped, the run's profile, stream and SLO; and whether its
    records carry reference answers (from the records kept whole while reading)."""
    try:
        cols, _ = read_columns(os.path.join(run_dir, "records.jsonl"), drop_cancelled=True,
                               exclude_stages=(WARMUP,))
    except OSError as e:
        raise CompareError(f"{run_dir}: records.jsonl unreadable ({e})") from None
    if not cols.n:
        raise CompareError(f"{run_dir}: no measured request in records.jsonl")
    has_reference = any(isinstance(r.get("reference"), str) and r["reference"].strip() for r in cols.examples)
    profile = config.get("metric_profile", "default")
    stream = config.get("stream", True)
    samples = metrics.request_samples(cols, profile, stream)  # before compute, which uses up the events
    results = metrics.compute(cols, profile=profile, max_concurrency=config.get("max_users"), stream=stream,
                              slo=config.get("slo") or None)
    return samples, results, has_reference


def _prompt_version(config: dict) -> str:
    from .accuracy.score import prompt_version
    return prompt_version(config.get("prompt_config"))


def check_comparable(base: list[tuple[str, dict]], new: list[tuple[str, dict]], force: bool) -> list[str]:
    """CompareError when the runs should not be compared; otherwise the notes to print."""
    runs = base + new
    notes = []

    def same(key, what, option):
        values = {}
        for path, cfg in runs:
            values.setdefault(key(cfg), path)
        if len(values) > 1:
            (v1, p1), (v2, p2) = list(values.items())[:2]
            raise CompareError(f"different {what}: {p1} has {v1}, {p2} has {v2}; comparing them would "
                               f"mislead{option}")

    same(lambda c: c.get("dataset_abbr") or c.get("dataset") or "?", "datasets", "")
    same(_prompt_version, "prompt sets (prompt_config version)", " (same --dataset, --num-prompts, "
         "--max-out-len and dataset options on both sides)")
    same(lambda c: c.get("metric_profile", "default"), "metric profiles", " (compare both under one: "
         "--metric-profile P)")
    for path, cfg in runs:
        profile = cfg.get("metric_profile", "default")
        if profile not in metrics.PROFILES:
            raise CompareError(f"{path}: unknown metric profile {profile!r}")
        if profile == "guidellm":  # its TPOT/ITL statistics are weighted; the resampling here is not
            raise CompareError(f"{path}: metric profile guidellm (weighted statistics) is not compared; "
                               "compare under another: --metric-profile default")
    # Saturation: CPU only. health.verdict() also flags sustained event-loop lag in the measured window,
    # but run folders made before it kept only a whole-run p99 (one shutdown tick of a few dozen), so
    # loop lag is only a note here.
    lags, lagged = [], 0
    for path, cfg in runs:
        processes = cfg.get("client_health") or {}
        if not isinstance(processes, dict):
            continue
        hot = [f"{name} CPU {h.get('cpu_percent', 0):.0f} %" for name, h in processes.items()
               if isinstance(h, dict) and (h.get("cpu_percent") or 0) > health.CPU_LIMIT]
        if hot:
            line = (f"{path}: the client was saturated ({', '.join(hot)} > {health.CPU_LIMIT:.0f} %): its "
                    f"latencies include the client's own delay")
            if not force:
                raise CompareError(line + "; rerun with --processes N, or pass --force to compare anyway")
            notes.append(line + " (compared anyway: --force)")
        lags += [h["loop_lag_p99_ms"] for h in processes.values()
                 if isinstance(h, dict) and (h.get("loop_lag_p99_ms") or 0) > health.LOOP_LAG_LIMIT]
        lagged += any(isinstance(h, dict) and (h.get("loop_lag_p99_ms") or 0) > health.LOOP_LAG_LIMIT
                      for h in processes.values())
    if lags:
        notes.append(f"client event-loop lag p99 over {health.LOOP_LAG_LIMIT:.0f} ms in {lagged} of {len(runs)} "
                     f"run(s) (max {max(lags):.1f} ms), CPU not saturated: compared (a short run often shows one "
                     "late tick at shutdown)")
    for key, label in (("model", "model"), ("backend", "backend"), ("max_users", "peak users"),
                       ("request_rate", "request rate"), ("ignore_eos", "ignore_eos"), ("stream", "stream"),
                       ("steps", "steps")):
        default = "openai-chat" if key == "backend" else None  # runs from before --backend used that one
        b = {_show(cfg.get(key, default)) for _, cfg in base}
        n = {_show(cfg.get(key, default)) for _, cfg in new}
        if b != n:
            notes.append(f"settings differ: {label} {', '.join(sorted(b))} (base) vs {', '.join(sorted(n))} (new)")
    return notes


def _show(value) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


# ---------------------------------------------------------------------------------------------
# weighted statistics (the bootstrap engine)

CHECKPOINTS = 12    # per side of each quantile: checkpoints at q +/- span*(k/CHECKPOINTS)^2
CELLS = 4_000_000   # float64 cells of one temporary matrix (32 MB)


class _Weighted:
    """Mean and linear percentiles of values that come in requests, for many weight vectors at once.

    values[j] belongs to request owner[j] (0..n_req-1); a weight vector gives every request a
    (whole-number) weight, and each of its values counts that many times."""

    def __init__(self, values: np.ndarray, owner: np.ndarray, n_req: int, qs: tuple[float, ...]):
        finite = np.isfinite(values)
        values, owner = values[finite], owner[finite]
        order = np.argsort(values, kind="stable")
        self.sorted, self.owner = values[order], owner[order]
        self.qs, self.n_req = qs, n_req
        n = self.sorted.size
        self.n = n
        self.sums = np.bincount(owner, weights=values, minlength=n_req)
        pos = {0, n}
        k = (np.arange(CHECKPOINTS + 1) / CHECKPOINTS) ** 2
        for q in qs:
            span = max(q, 1 - q)
            pos.update(np.clip(np.round((q + np.concatenate([-k, k]) * span) * n), 0, n).astype(int).tolist())
        self.cps = np.array(sorted(pos), dtype=np.int64)
        # below[i, c]: how many of request i's values sit before sorted position cps[c]
        self.below = np.zeros((n_req, self.cps.size))
        acc = np.zeros(n_req)
        for c in range(1, self.cps.size):
            a, b = self.cps[c - 1], self.cps[c]
            if b > a:
                acc += np.bincount(self.owner[a:b], minlength=n_req)
            self.below[:, c] = acc

    def point(self) -> tuple[float, list[float]]:
        """Unweighted mean and percentiles (numpy's linear method, as the tables)."""
        if not self.n:
            return math.nan, [math.nan] * len(self.qs)
        return float(self.sorted.mean()), [float(v) for v in np.percentile(self.sorted, [q * 100 for q in self.qs])]

    def replicates(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean (b,) and percentiles (b, len(qs)) for the rows of w (b, n_req)."""
        b = w.shape[0]
        F = w @ self.below          # weighted count of values before each checkpoint
        total = F[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (w @ self.sums) / total
        out = np.full((b, len(self.qs)), np.nan)
        ok = total > 0
        if not ok.any():
            return np.where(ok, mean, np.nan), out
        if not ok.all():
            w, F, total = w[ok], F[ok], total[ok]
        for i, q in enumerate(self.qs):
            h = q * (total - 1)
            e0 = np.floor(h)
            frac = h - e0
            v0 = self._value_at(w, F, e0)
            v1 = self._value_at(w, F, np.minimum(e0 + 1, total - 1))
            out[ok, i] = v0 + frac * (v1 - v0)
        return np.where(ok, mean, np.nan), out

    def _value_at(self, w: np.ndarray, F: np.ndarray, e: np.ndarray) -> np.ndarray:
        """Per row, the value at 0-based position e of the weighted (repeated) sorted sample: the first
        sorted j whose cumulative weight exceeds e."""
        bracket = (F <= e[:, None]).sum(axis=1) - 1   # F[:, 0] = 0 <= e < F[:, -1] = total
        out = np.empty(e.size)
        for c in np.unique(bracket):
            rows = np.flatnonzero(bracket == c)
            a, z = int(self.cps[c]), int(self.cps[c + 1])
            seg = self.owner[a:z]
            step = max(1, CELLS // max(seg.size, 1))
            for r0 in range(0, rows.size, step):
                rr = rows[r0:r0 + step]
                cum = np.cumsum(w[np.ix_(rr, seg)], axis=1)
                cum += F[rr, c][:, None]
                j = (cum <= e[rr][:, None]).sum(axis=1)
                out[rr] = self.sorted[a + np.minimum(j, z - a - 1)]
        return out


class _Resampler:
    """Bootstrap weights of one side's requests, chunk by chunk (rows: replicates), reproducibly.

    Replicate: runs drawn with replacement (multiplicity m_r), then Poisson(m_r) per request of run r.
    fails[stage] (b,): the resampled failed requests of that stage (Poisson(m_r x failures))."""

    def __init__(self, run_of: np.ndarray, n_runs: int, failures: dict, replicates: int, seed: int, side: int):
        self.run_of, self.n_runs, self.failures = run_of, n_runs, failures
        self.replicates, self.seed, self.side = replicates, seed, side
        self.chunk = max(1, min(replicates, CELLS // max(run_of.size, 1)))

    def chunks(self):
        for c, r0 in enumerate(range(0, self.replicates, self.chunk)):
            b = min(self.chunk, self.replicates - r0)
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.side, c]))
            if self.n_runs == 1:
                m = np.ones((b, 1))
                w = rng.poisson(1.0, size=(b, self.run_of.size)).astype(np.float64)
            else:
                m = rng.multinomial(self.n_runs, np.full(self.n_runs, 1 / self.n_runs), size=b).astype(np.float64)
                w = rng.poisson(m[:, self.run_of]).astype(np.float64)
            fails = {s: rng.poisson(m * f[None, :]).sum(axis=1) for s, f in self.failures.items()}
            yield slice(r0, r0 + b), m, w, fails


# ---------------------------------------------------------------------------------------------
# one side's data, pooled over its runs


@dataclass
class _Pooled:
    run_of: np.ndarray           # run of each successful request
    stage: np.ndarray            # stage name of each
    values: dict                 # metric -> per request values
    itl: np.ndarray              # pooled gaps
    itl_owner: np.ndarray        # request of each gap
    good: np.ndarray | None      # meets every SLO
    durations: dict              # stage -> per run duration, s
    failures: dict               # stage -> per run failed requests
    n_runs: int


def _common_value(results: metrics.Results, name: str, stage: str) -> float:
    c = results.common
    row = c[(c["Common Metric"] == name) & (c["Stage"] == stage)]
    return float(row["Value"].iloc[0]) if len(row) else math.nan


def _pool(side: Side, stages: list[str], slo: dict | None) -> _Pooled:
    values = {m: [] for m in ("TTFT", "TPOT", "E2EL", "OutputTokenThroughput", "OutputTokens")}
    run_of, stage, itl, owner, good = [], [], [], [], []
    offset = 0
    for r, s in enumerate(side.samples):
        n = s.stage.size
        for m in values:
            values[m].append(s.values[m])
        run_of.append(np.full(n, r, np.int64))
        stage.append(s.stage)
        itl.append(s.itl)
        owner.append(np.repeat(np.arange(n, dtype=np.int64) + offset, s.itl_counts))
        if slo:
            good.append(metrics.meets_slo(slo, {"ttft": s.values["TTFT"] / 1000, "tpot": s.values["TPOT"] / 1000,
                                                  "e2el": s.values["E2EL"] / 1000}))
        offset += n
    durations = {st: np.array([_common_value(res, "Benchmark Duration", st) / 1000 for res in side.results])
                 for st in stages}
    failures = {st: np.array([_common_value(res, "Total Requests", st) - _common_value(res, "Success Requests", st)
                              for res in side.results]) for st in stages}
    return _Pooled(np.concatenate(run_of), np.concatenate(stage), {m: np.concatenate(v) for m, v in values.items()},
                   np.concatenate(itl), np.concatenate(owner), np.concatenate(good) if slo else None,
                   durations, failures, len(side.samples))


def _side_stats(p: _Pooled, stages: list[str], slo: bool, replicates: int, seed: int, side: int) -> dict:
    """{(metric, statistic, stage): (point, replicates (B,), samples)} for one side."""
    groups = []  # (stage, request index, [(metric, stats, _Weighted)], run-level matrix)
    for st in stages:
        idx = np.arange(p.run_of.size) if st == metrics.TOTAL else np.flatnonzero(p.stage == st)
        n = idx.size
        local = np.arange(n)
        items = []
        for metric, stats, _, _ in REQUEST_ROWS:
            qs = tuple(QUANTILE[s] for s in stats if s in QUANTILE)
            if metric == "ITL":
                where = np.full(p.run_of.size, -1, np.int64)
                where[idx] = local
                g_owner = where[p.itl_owner]
                keep = g_owner >= 0
                items.append((metric, stats, _Weighted(p.itl[keep], g_owner[keep], n, qs)))
            else:
                items.append((metric, stats, _Weighted(p.values[metric][idx], local, n, qs)))
        cols = [np.ones(n), p.values["OutputTokens"][idx]]
        if slo:
            cols.append(p.good[idx].astype(np.float64))
        groups.append((st, idx, items, np.column_stack(cols)))

    out = {}
    for st, idx, items, X in groups:
        for metric, stats, wt in items:
            mean, qv = wt.point()
            for s in stats:
                point = mean if s == "Average" else qv[wt.qs.index(QUANTILE[s])]
                out[(metric, s, st)] = [point, np.full(replicates, np.nan), wt.n, n if metric == "ITL" else wt.n]
        D = p.durations[st].sum()
        totals = X.sum(axis=0)
        fails = p.failures[st].sum()
        out[("Request Throughput", RUN_STAT, st)] = [_div(totals[0], D), np.full(replicates, np.nan), idx.size, idx.size]
        out[("Output Token Throughput", RUN_STAT, st)] = [_div(totals[1], D), np.full(replicates, np.nan), idx.size, idx.size]
        if slo:
            out[("SLO Attainment", RUN_STAT, st)] = [100 * _div(totals[2], totals[0] + fails),
                                                     np.full(replicates, np.nan), idx.size, idx.size]
            out[("Goodput", RUN_STAT, st)] = [_div(totals[2], D), np.full(replicates, np.nan), idx.size, idx.size]

    resampler = _Resampler(p.run_of, p.n_runs, p.failures, replicates, seed, side)
    for rows, m, w, fails in resampler.chunks():
        for st, idx, items, X in groups:
            ws = w if st == metrics.TOTAL else w[:, idx]
            for metric, stats, wt in items:
                mean, qv = wt.replicates(ws)
                for s in stats:
                    out[(metric, s, st)][1][rows] = mean if s == "Average" else qv[:, wt.qs.index(QUANTILE[s])]
            sums = ws @ X
            with np.errstate(invalid="ignore", divide="ignore"):
                D = m @ p.durations[st]
                out[("Request Throughput", RUN_STAT, st)][1][rows] = sums[:, 0] / D
                out[("Output Token Throughput", RUN_STAT, st)][1][rows] = sums[:, 1] / D
                if slo:
                    out[("SLO Attainment", RUN_STAT, st)][1][rows] = 100 * sums[:, 2] / (sums[:, 0] + fails[st])
                    out[("Goodput", RUN_STAT, st)][1][rows] = sums[:, 2] / D
    return out


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b > 0 else math.nan


# ---------------------------------------------------------------------------------------------
# the comparison


def simultaneous_level(rel: np.ndarray, level: float) -> float:
    """Each row's two-sided tail gamma such that `level` of the bootstrap replicates (rows of rel:
    replicates x tested rows) lie inside every row's [gamma/2, 1 - gamma/2] percentile interval
    (Mandel & Betensky 2008), clipped to [alpha / rows, alpha]."""
    alpha = 1 - level
    b, m = rel.shape
    if m <= 1:
        return alpha
    from scipy.stats import rankdata
    filled = np.where(np.isnan(rel), np.nanmedian(rel, axis=0), rel)
    ranks = rankdata(filled, axis=0)          # average ranks: ties (discrete rows) are not extreme
    pos = (ranks - 0.5) / b
    extreme = np.minimum(pos, 1 - pos).min(axis=1)  # how far out the replicate's most extreme row is
    gamma = 2 * float(np.quantile(extreme, alpha, method="lower"))
    return float(np.clip(gamma, alpha / m, alpha))


def small_sample_factor(n: np.ndarray, gamma: float) -> np.ndarray:
    """How much wider than the bootstrap's a row's interval is drawn, from its n requests (the smaller
    side): the percentile bootstrap behaves like a normal interval with the plug-in variance, so it is
    stretched to Student's: sqrt(n / (n - 1)) * t_{n-1} / z at the row's level. 1.07 at n = 40 and a
    99.5 % row, 1.01 at n = 300."""
    from scipy.stats import norm, t
    n = np.maximum(n, 3)
    return np.sqrt(n / (n - 1)) * t.ppf(1 - gamma / 2, n - 1) / norm.ppf(1 - gamma / 2)


def compare(base_dirs: list[str], new_dirs: list[str], *, level: float = LEVEL, min_effect: float = MIN_EFFECT,
            bootstrap: int = BOOTSTRAP, seed: int = SEED, force: bool = False,
            profile: str | None = None) -> Comparison:
    """Compare run folders (several per side for repeats). CompareError (one line) when refused.
    profile: recompute every run under this metric profile instead of each run's own."""
    if not base_dirs or not new_dirs:
        raise CompareError("compare needs at least one run folder per side")
    if not 0 < level < 1:
        raise CompareError(f"--level: expected a confidence level between 0 and 1, e.g. 0.95; got {level}")
    if bootstrap < 100:
        raise CompareError(f"--bootstrap: expected at least 100 replicates; got {bootstrap}")
    if min_effect < 0:
        raise CompareError(f"--min-effect: expected a share >= 0; got {min_effect}")
    base_cfg = [(d, read_config(d)) for d in base_dirs]
    new_cfg = [(d, read_config(d)) for d in new_dirs]
    if profile is not None:
        base_cfg, new_cfg = ([(d, {**cfg, "metric_profile": profile}) for d, cfg in side] for side in (base_cfg, new_cfg))
    notes = check_comparable(base_cfg, new_cfg, force)
    sides, refs = [], []
    for runs in (base_cfg, new_cfg):
        read = [read_run(d, cfg) for d, cfg in runs]
        sides.append(Side([d for d, _ in runs], [cfg for _, cfg in runs], [x[0] for x in read], [x[1] for x in read]))
        refs.append([x[2] for x in read])
    base, new = sides

    # stages: total, and each load stage in every run of both sides (in the base's order)
    per_run = [list(dict.fromkeys(s.stage)) for side in sides for s in side.samples]
    load = [st for st in dict.fromkeys(x for run in per_run for x in run) if st != metrics.TOTAL]
    stages = [metrics.TOTAL] + [st for st in load if all(st in run for run in per_run)]
    left_out = [st for st in load if st not in stages]
    if left_out:
        notes.append(f"stage(s) not in every run, not compared: {', '.join(left_out)}")
    slos = {_show(cfg.get("slo") or {}) for side in sides for cfg in side.configs}
    slo = base.configs[0].get("slo") or None if len(slos) == 1 else None
    if len(slos) > 1:
        notes.append("SLO Attainment and Goodput not compared: the runs had different --slo")

    stats_b = _side_stats(_pool(base, stages, slo), stages, bool(slo), bootstrap, seed, 0)
    stats_n = _side_stats(_pool(new, stages, slo), stages, bool(slo), bootstrap, seed, 1)

    keys, units, better = [], {}, {}
    for metric, stats, unit, direction in REQUEST_ROWS:
        for s in stats:
            for st in stages:
                keys.append((metric, s, st))
                units[metric], better[metric] = unit, direction
    for metric, unit in RUN_ROWS + (SLO_ROWS if slo else ()):
        for st in stages:
            keys.append((metric, RUN_STAT, st))
            units[metric], better[metric] = unit, "higher"

    rows, reps, requests, thin, too_few, why_na = [], [], [], set(), {}, set()
    for key in keys:
        pb, rb, nb, kb = stats_b[key]
        pn, rn, nn, kn = stats_n[key]
        diff = pn - pb
        q = QUANTILE.get(key[1])
        above = math.floor(min(nb, nn) * (1 - q) + 1e-9) if q is not None else math.inf
        testable = (min(nb, nn) >= MIN_SAMPLES and above >= ABOVE and np.isfinite(pb) and np.isfinite(pn)
                    and pb != 0 and np.mean(np.isfinite(rb) & np.isfinite(rn) & (rb != 0)) > 0.9)
        rel = diff / pb if np.isfinite(pb) and pb != 0 else (0.0 if pb == 0 and pn == 0 else math.nan)
        rows.append({"metric": key[0], "statistic": key[1], "stage": key[2], "unit": units[key[0]],
                     "base": pb, "new": pn, "diff": diff, "rel": rel, "rel_lo": math.nan, "rel_hi": math.nan,
                     "better": better[key[0]], "verdict": NA, "_testable": testable})
        if testable:
            with np.errstate(invalid="ignore", divide="ignore"):
                reps.append(np.where(rb != 0, rn / rb - 1, np.nan))
            requests.append(min(kb, kn))
            if above < THIN:
                thin.add(key[1])
        elif not (np.isfinite(pb) and np.isfinite(pn)):
            why_na.add("a value that isn't measured (non-streaming TTFT/TPOT/ITL)")
        elif min(nb, nn) < MIN_SAMPLES:
            why_na.add(f"fewer than {MIN_SAMPLES} samples on a side")
        elif above < ABOVE:
            too_few.setdefault(key[1], []).append(label(rows[-1]))
        elif pb == 0 and pn == 0:
            rows[-1]["verdict"] = SAME
        elif pb == 0:
            why_na.add("a base value of 0 (no relative change)")
        else:
            why_na.add("too few usable bootstrap replicates")
    tested = [r for r in rows if r["_testable"]]
    gamma = 1 - level
    if tested:
        R = np.column_stack(reps)
        gamma = simultaneous_level(R, level)
        point = np.array([r["rel"] for r in tested])
        widen = small_sample_factor(np.array(requests, np.float64), gamma)
        lo = point + widen * (np.nanquantile(R, gamma / 2, axis=0) - point)
        hi = point + widen * (np.nanquantile(R, 1 - gamma / 2, axis=0) - point)
        if gamma / 2 * bootstrap < 1:
            notes.append(f"each row's interval is a {gamma / 2:.3%} tail of {bootstrap} replicates, beyond the "
                         f"most extreme one: raise --bootstrap (e.g. {math.ceil(4 / gamma / 100) * 100})")
        for r, a, z in zip(tested, lo, hi):
            r["rel_lo"], r["rel_hi"] = float(a), float(z)
            significant = (a > 0 or z < 0) and abs(r["rel"]) >= min_effect
            if not significant:
                r["verdict"] = SAME
            else:
                up = r["rel"] > 0
                r["verdict"] = WORSE if up == (r["better"] == "lower") else BETTER
    df = pd.DataFrame([{k: r[k] for k in ROW_COLUMNS} for r in rows], columns=list(ROW_COLUMNS))

    if why_na:
        notes.append(f"row(s) n/a: {'; '.join(sorted(why_na))}")
    for stat, names in too_few.items():
        need = math.ceil(ABOVE / (1 - QUANTILE[stat]))
        notes.append(f"n/a: {', '.join(names)}: fewer than {need} samples on a side; a {stat} of fewer sits "
                     "between the largest values and has no upper confidence bound")
    for stat in sorted(thin):
        need = math.ceil(THIN / (1 - QUANTILE[stat]))
        notes.append(f"{stat} rows from fewer than {need} samples a side rest on the few largest values: "
                     "their intervals are rough")
    for side, name in ((base, "base"), (new, "new")):
        failed = sum(_common_value(r, "Failed Requests", metrics.TOTAL) for r in side.results)
        total = sum(_common_value(r, "Total Requests", metrics.TOTAL) for r in side.results)
        if failed:
            notes.append(f"{name}: {failed:.0f} of {total:.0f} requests failed (left out of the latency rows)")
    if len(base.runs) > 1 or len(new.runs) > 1:
        notes.append(f"repeats: {len(base.runs)} base and {len(new.runs)} new run(s); intervals include the "
                     "between-run variance (runs resampled, then requests)")
    accuracy, acc_note = compare_accuracy(base, new, level, refs)
    if acc_note:
        notes.append(acc_note)
    comparison = Comparison(base, new, df, accuracy=accuracy, notes=notes, settings={
        "level": level, "row_level": 1 - gamma, "min_effect": min_effect, "bootstrap": bootstrap, "seed": seed,
        "rows_tested": len(tested)})
    comparison.verdict = verdict_line(comparison)
    return comparison


def label(row) -> str:
    """'TTFT P99', 'Request Throughput', with ' @stage' when not the whole run."""
    text = row["metric"] if row["statistic"] == RUN_STAT else f"{row['metric']} {row['statistic']}"
    return text if row["stage"] == metrics.TOTAL else f"{text} @{row['stage']}"


def rel_text(row) -> str:
    if not np.isfinite(row["rel"]):
        return "-"
    text = f"{row['rel'] * 100:+.1f} %"
    if np.isfinite(row["rel_lo"]):
        text += f" [{row['rel_lo'] * 100:+.1f}, {row['rel_hi'] * 100:+.1f}]"
    return text


def verdict_line(c: Comparison) -> str:
    rows = c.rows
    compared = int((rows["verdict"] != NA).sum())
    parts = []
    for verdict in (WORSE, BETTER):
        hit = rows[rows["verdict"] == verdict]
        if len(hit):
            hit = hit.reindex(hit["rel"].abs().sort_values(ascending=False).index)
            shown = ", ".join(f"{label(r)} {rel_text(r)}" for _, r in hit.head(3).iterrows())
            more = f" and {len(hit) - 3} more" if len(hit) > 3 else ""
            parts.append((verdict, len(hit), shown + more))
    acc = c.accuracy
    acc_text = ""
    if acc and acc["verdict"] in (BETTER, WORSE):
        acc_text = f"; accuracy {acc['verdict']}: {acc['diff']:+.2f} pp (McNemar p={acc['p_value']:.3g})"
    if not parts:
        return f"No significant change in {compared} rows" + acc_text
    text = "; ".join(f"{'NEW is ' if i == 0 else ''}{v} on {n} of {compared} rows: {shown}"
                     for i, (v, n, shown) in enumerate(parts))
    return text + acc_text


# ---------------------------------------------------------------------------------------------
# accuracy


def _scored(side: Side) -> pd.DataFrame:
    """Per-sample correctness (prompt_index, correct) of a side's runs (accuracy.score's scoring)."""
    from .accuracy.gsm8k import METRICS
    from .accuracy.score import score_records
    from .records import read_records
    frames = []
    for run_dir in side.runs:
        records, _ = read_records(os.path.join(run_dir, "records.jsonl"))
        # as score_run: warm-up requests and requests cut short by the test stopping are not samples
        records = [r for r in records if r.get("stage") != WARMUP
                   and not str(r.get("error") or "").startswith(CANCELLED)]
        details = score_records(records)
        frames.append(details[["prompt_index", f"correct_{METRICS[0]}"]].rename(
            columns={f"correct_{METRICS[0]}": "correct"}))
    return pd.concat(frames, ignore_index=True)


def compare_accuracy(base: Side, new: Side, level: float, refs: list[list[bool]] | None = None
                     ) -> tuple[dict | None, str]:
    """McNemar's exact test on the samples paired by prompt_index; (None, note) when not compared.

    refs: per side, per run, whether its records carry reference answers (read_run)."""
    refs = refs or [[True] * len(base.runs), [True] * len(new.runs)]
    runs = list(zip(base.runs + new.runs, base.configs + new.configs, refs[0] + refs[1]))
    if not any(has for _, _, has in runs):
        return None, ""  # no scored dataset on either side: nothing to say
    for run_dir, cfg, has in runs:
        if not has:
            return None, f"accuracy not compared: {run_dir} has no records with reference answers"
        if cfg.get("mode") == "perf" or cfg.get("ignore_eos"):
            return None, f"accuracy not compared: {run_dir} is a perf run (--mode perf or --ignore-eos)"
    b, n = _scored(base), _scored(new)
    if not len(b) or not len(n):
        return None, "accuracy not compared: no scorable records"
    pb, pn = set(b["prompt_index"]), set(n["prompt_index"])
    if pb != pn:
        return None, (f"accuracy not compared: the runs scored different prompts ({len(pb - pn)} only in base, "
                      f"{len(pn - pb)} only in new)")
    from scipy.stats import binomtest
    share_b = b.groupby("prompt_index")["correct"].mean()
    share_n = n.groupby("prompt_index")["correct"].mean().reindex(share_b.index)
    down = int((share_n < share_b).sum())   # right -> wrong
    up = int((share_n > share_b).sum())     # wrong -> right
    p = float(binomtest(up, up + down, 0.5).pvalue) if up + down else 1.0
    acc_b, acc_n = 100 * float(b["correct"].mean()), 100 * float(n["correct"].mean())
    verdict = SAME if p >= 1 - level or acc_b == acc_n else (BETTER if acc_n > acc_b else WORSE)
    repeated = len(b) > len(pb) or len(n) > len(pn)
    return {"metric": "accuracy", "prompts": len(pb), "base_samples": len(b), "new_samples": len(n),
            "base": acc_b, "new": acc_n, "diff": acc_n - acc_b, "right_to_wrong": down, "wrong_to_right": up,
            "p_value": p, "verdict": verdict,
            "test": ("sign test on each prompt's share of correct answers" if repeated
                     else "McNemar exact (binomial test on the discordant pairs)")}, ""


# ---------------------------------------------------------------------------------------------
# the gate (--fail-on)

GATE_METRICS = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2EL", "throughput": "Output Token Throughput",
                "request_throughput": "Request Throughput", "goodput": "Goodput", "slo_attainment": "SLO Attainment",
                "accuracy": "accuracy"}
GATE_STATS = {"avg": "Average", "mean": "Average", "median": "Median", "p50": "Median", "p90": "P90", "p99": "P99"}
_LIMIT = re.compile(r"^(?P<metric>[A-Za-z_0-9]+)(?:\.(?P<stat>[A-Za-z0-9]+))?(?:@(?P<stage>[^<>]+?))?"
                    r"(?P<op>[<>])(?P<value>[+-]?(?:\d+(?:\.\d*)?|\.\d+))(?P<pct>%?)$")


@dataclass
class Limit:
    text: str      # as written
    metric: str    # a row's metric name, or "accuracy"
    statistic: str
    stage: str
    op: str        # ">" or "<"
    value: float   # % when relative, else the row's unit
    relative: bool


def parse_fail_on(text: str) -> list[Limit]:
    """'ttft.p99>+10%,accuracy<-1' -> limits; ValueError with what to fix."""
    limits = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        spec = re.sub(r"\s+", "", part)
        m = _LIMIT.match(spec)
        if not m:
            raise ValueError(f"{part!r}: expected METRIC.STAT>+N% or METRIC.STAT<-N, e.g. ttft.p99>+10%, "
                             "tpot.median>+5%, accuracy<-1")
        name, stat = m["metric"].lower(), (m["stat"] or "").lower()
        if name not in GATE_METRICS:
            raise ValueError(f"{part!r}: unknown metric {m['metric']!r} (use {', '.join(GATE_METRICS)})")
        if stat and stat not in GATE_STATS:
            raise ValueError(f"{part!r}: unknown statistic {m['stat']!r} (use {', '.join(GATE_STATS)})")
        metric = GATE_METRICS[name]
        statistic = RUN_STAT
        if name in ("ttft", "tpot", "itl", "e2el"):
            if not stat:
                raise ValueError(f"{part!r}: {name} needs a statistic, e.g. {name}.p99 or {name}.median")
            statistic = GATE_STATS[stat]
        elif name == "throughput" and stat:
            if GATE_STATS[stat] not in ("Average", "Median"):
                raise ValueError(f"{part!r}: the per-request throughput has avg and median only")
            metric, statistic = "OutputTokenThroughput", GATE_STATS[stat]
        elif stat:
            raise ValueError(f"{part!r}: {name} is one value per run, without a statistic (write {name}{m['op']}...)")
        if name == "accuracy" and m["pct"]:
            raise ValueError(f"{part!r}: accuracy limits are in percentage points, without % (e.g. accuracy<-1)")
        if name == "accuracy" and m["stage"]:
            raise ValueError(f"{part!r}: accuracy is compared over the whole run, without @stage")
        limits.append(Limit(part, metric, statistic, m["stage"] or metrics.TOTAL, m["op"], float(m["value"]),
                            bool(m["pct"])))
    if not limits:
        raise ValueError("no limit given; e.g. --fail-on \"ttft.p99>+10%,accuracy<-1\"")
    return limits


def _beyond(change: float, limit: Limit) -> bool:
    return change > limit.value if limit.op == ">" else change < limit.value


def _limit_text(limit: Limit) -> str:
    return f"{limit.op}{limit.value:+g}{' %' if limit.relative else ''}"


def check_gate(c: Comparison, limits: list[Limit]) -> list[str]:
    """The breached limits, one line each (also kept in c.breaches); notes for limits not checked.
    CompareError for a limit on a stage that isn't compared."""
    stages = list(dict.fromkeys(c.rows["stage"]))
    breaches = []
    for limit in limits:
        if limit.metric == "accuracy":
            acc = c.accuracy
            if acc is None:
                c.notes.append(f"--fail-on {limit.text}: not checked (accuracy not compared)")
                continue
            change = acc["diff"]
            if acc["verdict"] in (BETTER, WORSE) and _beyond(change, limit):
                breaches.append(f"FAIL {limit.text}: accuracy {acc['diff']:+.2f} pp ({acc['base']:.2f} -> "
                                f"{acc['new']:.2f} %, {acc['right_to_wrong']} right->wrong, "
                                f"{acc['wrong_to_right']} wrong->right, McNemar p={acc['p_value']:.3g}); "
                                f"limit {_limit_text(limit)} pp")
            continue
        if limit.stage not in stages:
            raise CompareError(f"--fail-on {limit.text}: stage {limit.stage!r} is not compared "
                               f"(stages: {', '.join(stages)})")
        rows = c.rows[(c.rows["metric"] == limit.metric) & (c.rows["statistic"] == limit.statistic)
                      & (c.rows["stage"] == limit.stage)]
        if not len(rows):
            why = "the runs had no common --slo" if limit.metric in ("SLO Attainment", "Goodput") else "no such row"
            c.notes.append(f"--fail-on {limit.text}: not checked ({why})")
            continue
        row = rows.iloc[0]
        if row["verdict"] == NA:
            c.notes.append(f"--fail-on {limit.text}: not checked ({label(row)} is n/a)")
            continue
        change = row["rel"] * 100 if limit.relative else row["diff"]
        if row["verdict"] in (BETTER, WORSE) and _beyond(change, limit):
            breaches.append(f"FAIL {limit.text}: {label(row)} {rel_text(row)} ({_value(row['base'], row['unit'])} -> "
                            f"{_value(row['new'], row['unit'])}, {row['verdict']}); limit {_limit_text(limit)}"
                            f"{'' if limit.relative else ' ' + row['unit']}")
    c.breaches = breaches
    return breaches


# ---------------------------------------------------------------------------------------------
# console


def _value(v: float, unit: str, sign: bool = False) -> str:
    if v is None or not np.isfinite(v):
        return "-"
    decimals = {"ms": 3, "token/s": 2, "req/s": 3, "%": 2}.get(unit, 3)
    return f"{v:{'+' if sign else ''}.{decimals}f} {unit}".rstrip()


def console(c: Comparison) -> str:
    lines = [c.verdict]
    table = [[r["metric"], "" if r["statistic"] == RUN_STAT else r["statistic"], r["stage"],
              _value(r["base"], r["unit"]), _value(r["new"], r["unit"]), _value(r["diff"], r["unit"], sign=True),
              rel_text(r), r["verdict"]] for _, r in c.rows.iterrows()]
    lines.append(tabulate(table, headers=["metric", "stat", "stage", "base", "new", "diff", "rel [lo, hi]", "verdict"],
                          tablefmt="fancy_grid", disable_numparse=True))
    s = c.settings
    lines.append(f"Intervals: simultaneous {s['level']:.0%} over {s['rows_tested']} rows (each row at "
                 f"{s['row_level']:.2%}), {s['bootstrap']} bootstrap replicates, seed {s['seed']}; "
                 f"significant = interval excludes 0 and |change| >= {s['min_effect']:.1%}")
    acc = c.accuracy
    if acc:
        lines.append(f"Accuracy: base {acc['base']:.2f} %, new {acc['new']:.2f} % ({acc['diff']:+.2f} pp) over "
                     f"{acc['prompts']} prompts; {acc['right_to_wrong']} right->wrong, {acc['wrong_to_right']} "
                     f"wrong->right; {acc['test']}: p={acc['p_value']:.3g}; {acc['verdict']}")
    lines += [f"note: {n}" for n in c.notes]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# command line


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help="compare two runs (or two sets of repeats): better, worse or no change",
                       description="Compare BASE and NEW run folders. Exit 1 when a --fail-on limit is breached, "
                                   "2 when the comparison is refused, else 0.")
    p.add_argument("runs", nargs="*", metavar="RUN", help="BASE NEW (or use --base/--new)")
    p.add_argument("--base", nargs="+", metavar="RUN", help="base run folder(s): several for repeats")
    p.add_argument("--new", nargs="+", metavar="RUN", help="new run folder(s): several for repeats")
    p.add_argument("--fail-on", metavar="LIMITS", default=None,
                   help='e.g. "ttft.p99>+10%%,tpot.median>+5%%,accuracy<-1": exit 1 when a significant change '
                        'is beyond a limit')
    p.add_argument("--level", type=float, default=LEVEL, help="family-wise confidence level (default 0.95)")
    p.add_argument("--min-effect", default="2", metavar="PCT",
                   help="smallest relative change that counts, in %% (default 2)")
    p.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help="bootstrap replicates (default 1000)")
    p.add_argument("--seed", type=int, default=SEED, help="bootstrap seed (default 0)")
    p.add_argument("--force", action="store_true", help="compare even runs whose client was saturated")
    p.add_argument("--metric-profile", choices=metrics.PROFILES, default=None,
                   help="recompute both sides under this profile (default: each run's own, which must agree)")
    p.add_argument("--html", metavar="PATH", default=None, help="also write an HTML comparison report")
    return p


def _min_effect(text: str) -> float:
    try:
        value = float(str(text).strip().rstrip("%"))
    except ValueError:
        raise CompareError(f"--min-effect: expected a percentage such as 2 or 2%; got {text!r}") from None
    if not 0 <= value < 100:
        raise CompareError(f"--min-effect: expected a percentage in [0, 100); got {text!r}")
    return value / 100


def run(args) -> int:
    """The `compare` subcommand: 0, 1 (a --fail-on limit breached) or 2 (refused, one line on stderr)."""
    try:
        if args.base or args.new:
            if args.runs or not (args.base and args.new):
                raise CompareError("give BASE NEW, or --base RUN... --new RUN..., not both")
            base_dirs, new_dirs = args.base, args.new
        elif len(args.runs) == 2:
            base_dirs, new_dirs = [args.runs[0]], [args.runs[1]]
        else:
            raise CompareError(f"compare needs BASE NEW (two run folders) or --base RUN... --new RUN...; "
                               f"got {len(args.runs)} folder(s)")
        limits = []
        if args.fail_on is not None:
            try:
                limits = parse_fail_on(args.fail_on)
            except ValueError as e:
                raise CompareError(f"--fail-on {e}") from None
        c = compare(base_dirs, new_dirs, level=args.level, min_effect=_min_effect(args.min_effect),
                    bootstrap=args.bootstrap, seed=args.seed, force=args.force,
                    profile=getattr(args, "metric_profile", None))
        breaches = check_gate(c, limits) if limits else []
    except CompareError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    if args.html:
        try:
            from .report.comparison import render
        except ImportError as e:
            c.notes.append(f"HTML comparison report not written: benchmark.report.comparison unavailable ({e})")
        else:
            c.notes.append(f"Comparison report written to {render(c, args.html)}")
    print(console(c))
    for line in breaches:
        print(line)
    return 1 if breaches else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["compare", *(sys.argv[1:] if argv is None else argv)])
    return run(args)
