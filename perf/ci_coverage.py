"""How often do the tables' 95 % intervals contain the truth? A seeded simulation on known distributions.

    python perf/ci_coverage.py                    # 2000 trials per case (~1-2 min on 2 cores)
    python perf/ci_coverage.py --trials 5000

Per-request figures (TTFT, TPOT, E2EL, ...): independent samples from a narrow normal, a heavy-tailed
lognormal and a Pareto(1.5); the percentile intervals are stats.quantile_interval (order statistics),
the mean's stats.mean_interval (t). ITL: gaps that come in requests, each request with its own speed
(lognormal scale) times per-gap noise; stats.clustered_intervals, and beside it the interval that
pretends the gaps are independent, to show why the clustered one is needed. Prints coverage (share of
trials whose interval contained the true value; an open bound counts as unbounded), how often a bound
was open, and how often the mean's interval was flagged as too narrow (Cochran's rule, stats.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from scipy import stats as sps

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmark import stats  # noqa: E402

QS = (0.5, 0.9, 0.99)
IID = {
    "normal(100, 2)": (lambda rng, n: rng.normal(100, 2, n), lambda q: sps.norm.ppf(q, 100, 2), 100.0),
    "lognormal(0, 1.2)": (lambda rng, n: rng.lognormal(0, 1.2, n), lambda q: np.exp(1.2 * sps.norm.ppf(q)),
                          float(np.exp(1.2 ** 2 / 2))),
    "pareto(1.5)": (lambda rng, n: rng.pareto(1.5, n) + 1, lambda q: (1 - q) ** (-1 / 1.5), 3.0),
}


def covered(lo, hi, truth) -> bool:
    return bool(np.nan_to_num(lo, nan=-np.inf) <= truth <= np.nan_to_num(hi, nan=np.inf))


def iid_cases(trials: int, seed: int) -> None:
    print(f"independent samples, {trials} trials per row")
    print(f"{'distribution':<20}{'n':>6}  " + "".join(f"{'P' + str(int(q * 100)):>14}" for q in QS) + f"{'mean':>10}{'mean flagged':>14}")
    for name, (draw, quantile, mean) in IID.items():
        for n in (100, 1000):
            rng = np.random.default_rng(seed)
            hit = dict.fromkeys(QS, 0)
            opened = dict.fromkeys(QS, 0)
            hit_mean = flagged = 0
            for _ in range(trials):
                x = draw(rng, n)
                flagged += stats.cochran_short(x) is not None
                for q in QS:
                    lo, hi = stats.quantile_interval(x, q)
                    hit[q] += covered(lo, hi, quantile(q))
                    opened[q] += bool(np.isnan(lo) or np.isnan(hi))
                hit_mean += covered(*stats.mean_interval(x), mean)
            cells = "".join(f"{hit[q] / trials:>8.3f}" + (f" ({opened[q] / trials:.0%} open)" if opened[q] else " " * 6)
                            for q in QS)
            print(f"{name:<20}{n:>6}  {cells}{hit_mean / trials:>10.3f}{flagged / trials:>14.0%}")


def clustered(rng, requests: int, gaps: int, spread: float):
    scale = np.exp(rng.normal(0, spread, requests))
    return (scale[:, None] * rng.lognormal(np.log(20), 0.15, (requests, gaps))).ravel(), np.full(requests, gaps)


def itl_cases(trials: int, seed: int) -> None:
    print(f"\nITL-like gaps in requests (per-request speed spread 0.4), {trials // 4} trials per row")
    print(f"{'requests x gaps':<20}" + "".join(f"{'P' + str(int(q * 100)) + ' clustered':>16}{'iid':>7}" for q in QS)
          + f"{'mean':>8}")
    rng = np.random.default_rng(seed)
    big, _ = clustered(rng, 400_000, 5, 0.4)
    truth = {q: float(np.quantile(big, q)) for q in QS}
    true_mean = float(big.mean())
    for requests, gaps in ((100, 50), (400, 50), (2000, 20)):
        hit = dict.fromkeys(QS, 0)
        naive = dict.fromkeys(QS, 0)
        hit_mean = 0
        n_trials = trials // 4
        for _ in range(n_trials):
            v, c = clustered(rng, requests, gaps, 0.4)
            for q in QS:
                naive[q] += covered(*stats.quantile_interval(v, q), truth[q])
            mean_ci, ci = stats.clustered_intervals(v, c, QS, overwrite=True)
            hit_mean += covered(*mean_ci, true_mean)
            for q in QS:
                hit[q] += covered(*ci[q], truth[q])
        print(f"{f'{requests} x {gaps}':<20}" + "".join(f"{hit[q] / n_trials:>16.3f}{naive[q] / n_trials:>7.3f}"
                                                        for q in QS) + f"{hit_mean / n_trials:>8.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    t0 = time.time()
    iid_cases(args.trials, args.seed)
    itl_cases(args.trials, args.seed)
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
