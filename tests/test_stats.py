"""Confidence intervals (benchmark/stats.py): exact ranks, coverage on known distributions, clustered ITL.

The coverage checks are seeded simulations small enough for a unit test (a few hundred trials each:
the standard error of a coverage near 95 % is then about 1 point); perf/ci_coverage.py runs thousands
and prints the figures the README quotes.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from benchmark import metrics, stats
from benchmark.records import new_record


@pytest.mark.parametrize("n,q", [(10, 0.5), (40, 0.9), (200, 0.99), (400, 0.99), (1000, 0.75), (5000, 0.5)])
def test_order_ranks_hold_the_level_on_each_tail(n, q):
    lo, hi = stats.order_ranks(n, q)
    a = 0.025
    # P(quantile below x_(lo)) = P(B < lo) and P(quantile above x_(hi)) = P(B >= hi), each at most a/2 ...
    if lo >= 1:
        assert sps.binom.cdf(lo - 1, n, q) <= a
        assert sps.binom.cdf(lo, n, q) > a  # ... and the ranks are the tightest that do so
    if hi <= n:
        assert sps.binom.sf(hi - 1, n, q) <= a
        assert sps.binom.sf(hi - 2, n, q) > a
    else:
        assert sps.binom.sf(n - 1, n, q) > a  # an open upper bound only when even x_(n) would not do


def test_p99_needs_a_few_hundred_samples_for_an_upper_bound():
    x = np.arange(200.0)
    lo, hi = stats.quantile_interval(x, 0.99)
    assert np.isfinite(lo) and np.isnan(hi)
    lo, hi = stats.quantile_interval(np.arange(1000.0), 0.99)
    assert 975 <= lo < 990 < hi <= 999


def _coverage(draw, true_value, interval, trials, seed):
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        lo, hi = interval(draw(rng))
        hits += np.nan_to_num(lo, nan=-np.inf) <= true_value <= np.nan_to_num(hi, nan=np.inf)
    return hits / trials


@pytest.mark.parametrize("name,draw,quantile", [
    ("narrow normal", lambda rng, n: rng.normal(100, 2, n), lambda q: sps.norm.ppf(q, 100, 2)),
    ("heavy-tailed lognormal", lambda rng, n: rng.lognormal(0, 1.2, n), lambda q: np.exp(1.2 * sps.norm.ppf(q))),
    ("Pareto (alpha 1.5)", lambda rng, n: rng.pareto(1.5, n) + 1, lambda q: (1 - q) ** (-1 / 1.5)),
])
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_percentile_intervals_cover_the_true_quantile(name, draw, quantile, q):
    n = 500
    cov = _coverage(lambda rng: draw(rng, n), quantile(q), lambda x: stats.quantile_interval(x, q), 400, seed=7)
    assert 0.92 <= cov <= 0.995, (name, q, cov)  # order statistics: at least the level, a bit over


def test_mean_interval_covers_the_true_mean():
    cov = _coverage(lambda rng: rng.gamma(4, 5, 300), 20.0, stats.mean_interval, 600, seed=3)
    assert 0.93 <= cov <= 0.97, cov


def _clustered(rng, requests=200, gaps=40):
    # ITL-like: each request has its own speed (a slow request's gaps are all slow), plus per-gap noise
    scale = np.exp(rng.normal(0, 0.4, requests))
    values = (scale[:, None] * rng.lognormal(np.log(20), 0.15, (requests, gaps))).ravel()
    return values, np.full(requests, gaps)


def test_itl_intervals_account_for_gaps_of_one_request_being_alike():
    rng = np.random.default_rng(11)
    big, _ = _clustered(rng, 200_000, 4)
    qs = (0.5, 0.9)
    truth = {q: np.quantile(big, q) for q in qs}
    true_mean = big.mean()
    hit = {q: 0 for q in qs}
    naive = {q: 0 for q in qs}
    hit_mean = 0
    trials = 300
    for _ in range(trials):
        values, counts = _clustered(rng)
        for q in qs:
            lo, hi = stats.quantile_interval(values, q)  # as if all 8000 gaps were independent
            naive[q] += lo <= truth[q] <= hi
        (mlo, mhi), ci = stats.clustered_intervals(values.copy(), counts, qs)
        hit_mean += mlo <= true_mean <= mhi
        for q in qs:
            hit[q] += ci[q][0] <= truth[q] <= ci[q][1]
    for q in qs:
        assert naive[q] / trials < 0.6, naive  # treating gaps as independent is far too narrow here
        assert 0.9 <= hit[q] / trials <= 0.99, (q, hit[q] / trials)
    assert 0.9 <= hit_mean / trials <= 0.99, hit_mean / trials


def test_clustered_intervals_with_one_gap_per_request_match_the_binomial_ones():
    rng = np.random.default_rng(5)
    values = rng.lognormal(3, 0.5, 4000)
    _, ci = stats.clustered_intervals(values.copy(), np.ones(values.size, np.int64), (0.5, 0.9))
    for q in (0.5, 0.9):
        lo, hi = stats.quantile_interval(values, q)
        assert abs(ci[q][0] - lo) < 0.02 * lo and abs(ci[q][1] - hi) < 0.02 * hi, (q, ci[q], (lo, hi))


def test_a_skewed_mean_too_small_for_its_t_interval_is_flagged():
    rng = np.random.default_rng(4)
    heavy = rng.lognormal(0, 1.2, 300)       # skewness ~5-10: Cochran wants thousands
    assert stats.cochran_short(heavy) is not None
    assert "likely too narrow" in stats.thin_note("Average", None, 300, 1.0, 0.8, 1.2, stats.cochran_short(heavy))
    assert stats.cochran_short(rng.normal(100, 2, 300)) is None


def test_thin_notes_name_the_problem():
    assert stats.thin_note("P99", 0.99, 40, 10.0, 9.0, np.nan) == "P99 of 40 samples rests on the 2 largest values"
    assert "upper bound open" in stats.thin_note("P90", 0.9, 25, 10.0, 9.0, np.nan)
    assert "wider than 20%" in stats.thin_note("Median", 0.5, 30, 10.0, 8.0, 12.5)
    assert stats.thin_note("Median", 0.5, 3000, 10.0, 9.9, 10.1) == ""


def _record(i, ttft, gaps, stage="total"):
    events = [[ttft, "role", 0], [ttft, "content", 3]]
    t = ttft
    for g in gaps:
        t += g
        events.append([t, "content", 3])
    events.append([t, "usage", 0])
    return new_record(id=i, success=True, t_send=1000.0 + i, events=events, input_tokens=10,
                      output_tokens=len(gaps) + 1, stage=stage, token_source="usage")


def test_tables_carry_an_interval_for_every_average_and_percentile():
    rng = np.random.default_rng(2)
    recs = [_record(i, 0.1 + rng.exponential(0.02), 0.02 * np.exp(rng.normal(0, 0.3)) * np.ones(20),
                    stage="step1-2u" if i < 150 else "step2-4u") for i in range(300)]
    res = metrics.compute(recs)
    ci = res.intervals.set_index(["Performance Parameters", "Stage", "Statistic"])
    perf = res.perf.set_index(["Performance Parameters", "Stage"])
    for metric in ("TTFT", "TPOT", "ITL", "E2EL", "OutputTokens"):
        for stage in ("total", "step1-2u", "step2-4u"):
            for stat in ("Average", "Median", "P75", "P90", "P99"):
                value, lo, hi = ci.loc[(metric, stage, stat), ["Value", "Lower", "Upper"]]
                assert np.isclose(value, perf.loc[(metric, stage), stat]), (metric, stage, stat)
                if not np.isnan(hi) and not np.isnan(lo):
                    assert lo <= value <= hi, (metric, stage, stat, lo, value, hi)
    # ITL is clustered (each request has one speed): its interval is the cluster-robust one, wider
    # than pretending the 5700 gaps were independent
    assert ci.loc[("ITL", "total", "Median"), "Method"] == "cluster-robust over requests"
    lo, hi = ci.loc[("ITL", "total", "Median"), ["Lower", "Upper"]]
    gaps = np.concatenate([np.diff([e[0] for e in r["events"] if e[1] == "content"]) for r in recs]) * 1000
    naive_lo, naive_hi = stats.quantile_interval(gaps, 0.5)
    assert hi - lo > 3 * (naive_hi - naive_lo), ((lo, hi), (naive_lo, naive_hi))
    # 150 requests per stage: too few for a P99 upper bound, and the note says so
    assert "rests on the" in ci.loc[("TTFT", "step1-2u", "P99"), "Note"]
