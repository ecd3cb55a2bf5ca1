"""Confidence intervals for the statistics of the performance tables (pure numpy/scipy).

- Percentiles of independent samples (one per request: TTFT, TPOT, E2EL, tokens, rates): the
  distribution-free interval from order statistics. The number of samples below the true q-quantile is
  Binomial(n, q), so [x_(l), x_(u)] with l, u taken from that binomial's tails contains it with
  probability >= the level, whatever the distribution (Hahn & Meeker, Statistical Intervals, 5.2).
  When n is too small for a bound (P99 of 40 samples has no upper one), that bound is open (NaN).
- Percentiles of ITL: the gaps of one request are not independent (a slow request has many slow gaps),
  so the interval is Woodruff's (1952), the standard one for quantiles of clustered samples: the
  variance of the empirical CDF at the estimate, from per-request sums (cluster-robust), gives an
  effective sample size whose binomial ranks make the interval. With one gap per request it is the
  binomial one.
- Means: Student's t over requests; for ITL the pooled mean is a ratio (sum of gaps / number of gaps)
  over requests, with the cluster-robust (linearised) variance of that ratio.
Min and Max have no distribution-free interval and get none.
"""
from __future__ import annotations

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
CI_COLUMNS = ("Performance Parameters", "Stage", "Statistic", "Value", "Lower", "Upper", "N", "Method", "Note")
WIDE = 0.20  # an interval wider than this share of its value is flagged
BLOCK = 1 << 22


def order_ranks(n: int, q: float, level: float = LEVEL) -> tuple[int, int]:
    """1-based ranks (l, u) of the order statistics bounding the q-quantile of n samples; 0 or n+1
    where the binomial tail does not fit in the sample (an open bound)."""
    a = (1 - level) / 2
    lo = int(sps.binom.ppf(a, n, q))            # P(B <= lo - 1) <= a: x_(lo) is below the quantile
    hi = int(sps.binom.ppf(1 - a, n, q)) + 1    # P(B >= hi) <= a: x_(hi) is above it
    # ppf rounds up, so check the tails and step outwards where needed
    while lo > 0 and sps.binom.cdf(lo - 1, n, q) > a:
        lo -= 1
    while hi <= n and sps.binom.sf(hi - 1, n, q) > a:
        hi += 1
    return lo, min(hi, n + 1)


def quantile_interval(samples: np.ndarray, q: float, level: float = LEVEL) -> tuple[float, float]:
    """Distribution-free interval for the q-quantile (0 < q < 1) of independent samples."""
    x = samples[np.isfinite(samples)]
    n = x.size
    if n == 0:
        return np.nan, np.nan
    lo, hi = order_ranks(n, q, level)
    want = [r - 1 for r in (lo, hi) if 1 <= r <= n]
    vals = dict(zip(want, np.partition(x, want)[want])) if want else {}
    return vals.get(lo - 1, np.nan), vals.get(hi - 1, np.nan)


def mean_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Student's t interval for the mean of independent samples."""
    x = samples[np.isfinite(samples)]
    if x.size < 2:
        return np.nan, np.nan
    half = float(sps.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    m = float(x.mean())
    return m - half, m + half


def _segment_sums(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sum of each request's run of values (values request after request, counts[i] of request i)."""
    out = np.zeros(counts.size)
    has = counts > 0
    if values.size:
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[has]
        out[has] = np.add.reduceat(values, starts)
    return out


def _segment_sums_below(values: np.ndarray, counts: np.ndarray, bound: float) -> np.ndarray:
    """How many of each request's values are <= bound, a slice of requests at a time (no value-sized
    temporary beyond one block)."""
    out = np.zeros(counts.size)
    ends = np.cumsum(counts)
    per_block = max(1, int(BLOCK / max(float(counts.mean()), 1.0))) if counts.size else 1
    for r0 in range(0, counts.size, per_block):
        r1 = min(r0 + per_block, counts.size)
        a, b = int(ends[r0] - counts[r0]), int(ends[r1 - 1])
        k = counts[r0:r1]
        has = k > 0
        if a == b:
            continue
        starts = (ends[r0:r1] - k)[has] - a
        part = out[r0:r1]
        part[has] = np.add.reduceat(values[a:b] <= bound, starts, dtype=np.int64)
    return out


SUBSAMPLE = 2_000_000  # values used to place the quantile when only its standard error needs it


def clustered_intervals(values: np.ndarray, counts: np.ndarray, qs: tuple[float, ...], level: float = LEVEL,
                        overwrite: bool = False) -> tuple[tuple[float, float], dict[float, tuple[float, float]]]:
    """Intervals for the pooled mean and the q-quantiles of values that come in requests.

    values: request after request, counts[i] of request i. The mean is a ratio over requests
    (cluster-robust linearised variance, t quantile); each quantile gets Woodruff's interval: the
    cluster-robust variance of the empirical CDF at the estimate gives a design effect, hence an effective
    number of independent samples, whose binomial order-statistic ranks are read as proportions of the
    pooled values. overwrite=True lets the final quantile step reorder `values` in place."""
    has = counts > 0
    k = counts[has].astype(np.float64)
    nan2 = (np.nan, np.nan)
    if k.size < 2:
        return nan2, {q: nan2 for q in qs}
    m_req = k.size
    inflate = m_req / (m_req - 1)
    sums = _segment_sums(values, counts)[has]
    mean = sums.sum() / k.sum()
    se_mean = np.sqrt(inflate * np.sum((sums - mean * k) ** 2)) / k.sum()
    half = float(sps.t.ppf(0.5 + level / 2, m_req - 1) * se_mean)
    mean_ci = (float(mean) - half, float(mean) + half)

    # where each quantile lies (a strided subsample of a huge array is plenty for its standard error)
    step = max(1, values.size // SUBSAMPLE)
    estimates = np.quantile(values[::step], qs)
    n = values.size
    probs, slots = [], {}
    for q, est in zip(qs, estimates):
        below = _segment_sums_below(values, counts, est)[has]
        p = below.sum() / k.sum()
        var = inflate * np.sum((below - p * k) ** 2) / k.sum() ** 2
        # the design effect at the quantile gives an effective number of independent samples; the
        # binomial order-statistic ranks for that many (skewed near the tails, as the truth is) are
        # then read as proportions of the pooled sample
        iid_var = p * (1 - p) / n
        n_eff = int(min(n, max(2, round(n * iid_var / var)))) if var > 0 else n
        lo_r, hi_r = order_ranks(n_eff, q, level)
        slots[q] = (len(probs) if lo_r >= 1 else None, len(probs) + 1 if hi_r <= n_eff else None)
        probs += [max(lo_r - 1, 0) / (n_eff - 1), min(hi_r - 1, n_eff - 1) / (n_eff - 1)]
    bounds = np.quantile(values, probs, overwrite_input=overwrite)
    return mean_ci, {q: tuple(float(bounds[i]) if i is not None else np.nan for i in slots[q]) for q in qs}


def cochran_short(samples: np.ndarray) -> float | None:
    """The sample skewness when the sample is too small for the t interval of its mean by Cochran's rule
    (n >= 25 x skewness^2; below it a right-skewed latency sample's interval is too narrow: 0.88
    coverage for a lognormal(0, 1.2) of 100, perf/ci_coverage.py), else None."""
    x = samples[np.isfinite(samples)]
    if x.size < 3 or np.ptp(x) == 0:
        return None
    g = float(sps.skew(x))
    return g if x.size < 25 * g * g else None


def thin_note(stat: str, q: float | None, n: int, value: float, lo: float, hi: float,
              skew: float | None = None) -> str:
    """Why a figure means little, or '' when it is fine."""
    if n == 0:
        return ""
    if skew is not None:
        return (f"{stat} of {n} samples of a skewed distribution (skewness {skew:.1f}): its interval is "
                f"likely too narrow (Cochran: >= {int(np.ceil(25 * skew * skew))} samples); prefer the median")
    if q is not None:
        above = (n - 1) * (1 - q)  # samples past the percentile's position (numpy's linear rule)
        if above < 2:
            return f"{stat} of {n} samples rests on the {int(np.ceil(above)) + 1} largest values"
    if np.isnan(lo) or np.isnan(hi):
        side = "upper" if np.isnan(hi) and not np.isnan(lo) else "lower" if np.isnan(lo) and not np.isnan(hi) else "either"
        return f"{stat} of {n} samples: too few for a {LEVEL:.0%} interval ({side} bound open)"
    if value and (hi - lo) > WIDE * abs(value):
        return f"{stat} of {n} samples: interval wider than {WIDE:.0%} of the value"
    return ""
