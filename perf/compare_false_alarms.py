"""False-alarm and detection rates of `python -m benchmark compare` on synthetic run pairs.

    python perf/compare_false_alarms.py                    # 200 noise-only pairs, 100 pairs with ITL +10 %
    python perf/compare_false_alarms.py --pairs 50 --requests 200 --users 8

Each run is written as a real run folder (config.json, records.jsonl) and compared with
benchmark.compare.compare(), at the default level, min-effect and bootstrap, seed = pair number.
Records are drawn from the same distributions on both sides of a noise-only pair: a closed loop of
--users users; per request a lognormal TTFT (median --ttft-ms, sigma 0.25), a per-request ITL scale
(median --itl-ms, lognormal sigma 0.05: some requests decode a little slower than others), and gaps
around that scale (lognormal sigma 0.15), fixed output length; the role chunk just before the first
token and the usage chunk just after the last. A detection pair multiplies the new side's ITL scale by
1.10 (a 10 % slower decode).

Printed: the share of noise-only pairs with at least one row flagged (the family-wise false-alarm
rate, what --level controls), the share of rows flagged, which rows raised them; then the share of
10 %-ITL pairs flagged worse on TPOT (Average and Median) and on ITL (Average and Median), and on any
row in the wrong direction.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmark import compare as cmp  # noqa: E402
from benchmark.records import RecordSink, new_record  # noqa: E402

CONFIG = {"dataset_abbr": "synthetic", "metric_profile": "default", "stream": True,
          "prompt_config": {"dataset": "synthetic", "num_prompts": 1000, "max_out_len": 32},
          "client_health": {"local": {"cpu_percent": 20.0, "loop_lag_p99_ms": 0.5}}}


def synthetic_run(path: str, rng: np.random.Generator, requests: int = 300, users: int = 4,
                  ttft_ms: float = 100.0, itl_ms: float = 20.0, out_tokens: int = 32,
                  itl_factor: float = 1.0) -> str:
    """Write a run folder of `requests` closed-loop requests; returns its path."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({**CONFIG, "max_users": users}, f)
    sink = RecordSink(os.path.join(path, "records.jsonl"))
    clock = np.full(users, 1.7e9)
    ttft = ttft_ms / 1000 * rng.lognormal(0, 0.25, requests)
    scale = itl_ms / 1000 * itl_factor * rng.lognormal(0, 0.05, requests)
    gaps = scale[:, None] * rng.lognormal(0, 0.15, (requests, out_tokens - 1))
    for i in range(requests):
        u = i % users
        tokens = ttft[i] + np.concatenate([[0.0], np.cumsum(gaps[i])])
        events = ([[float(ttft[i]) - 0.0002, "role", 0]] + [[float(t), "content", 4] for t in tokens]
                  + [[float(tokens[-1]) + 0.0003, "usage", 0]])
        sink.write(new_record(id=i, worker="local", user=u, dataset="synthetic", prompt_index=i,
                              t_send=float(clock[u]), events=events, input_tokens=128, output_tokens=out_tokens,
                              token_source="usage", success=True, finish_reason="length"))
        clock[u] += events[-1][0] + 0.001
    sink.close()
    return path


def flagged(c: cmp.Comparison) -> list[str]:
    rows = c.rows[c.rows["verdict"].isin([cmp.BETTER, cmp.WORSE])]
    return [f"{r['metric']} {r['statistic']} ({r['verdict']})" for _, r in rows.iterrows()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=200, help="noise-only pairs (default 200)")
    ap.add_argument("--detect-pairs", type=int, default=100, help="pairs with ITL +10 %% (default 100)")
    ap.add_argument("--requests", type=int, default=300, help="requests per run (default 300)")
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--bootstrap", type=int, default=cmp.BOOTSTRAP)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    alarms, row_alarms, rows_total, which = 0, 0, 0, Counter()
    detect = Counter()
    with tempfile.TemporaryDirectory(prefix="compare-fa-") as tmp:
        for kind, n_pairs in (("noise", args.pairs), ("itl+10%", args.detect_pairs)):
            for k in range(n_pairs):
                rng = np.random.default_rng([k, 0 if kind == "noise" else 1])
                a = synthetic_run(os.path.join(tmp, f"{kind}{k}a"), rng, args.requests, args.users)
                b = synthetic_run(os.path.join(tmp, f"{kind}{k}b"), rng, args.requests, args.users,
                                  itl_factor=1.0 if kind == "noise" else 1.10)
                c = cmp.compare([a], [b], bootstrap=args.bootstrap, seed=k)
                flags = flagged(c)
                if kind == "noise":
                    alarms += bool(flags)
                    row_alarms += len(flags)
                    rows_total += int((c.rows["verdict"] != cmp.NA).sum())
                    which.update(flags)
                else:
                    v = c.rows.set_index(["metric", "statistic"])["verdict"]
                    detect["tpot"] += v[("TPOT", "Average")] == cmp.WORSE and v[("TPOT", "Median")] == cmp.WORSE
                    detect["itl"] += v[("ITL", "Average")] == cmp.WORSE and v[("ITL", "Median")] == cmp.WORSE
                    detect["better"] += (c.rows["verdict"] == cmp.BETTER).any()
                for d in (a, b):
                    for name in os.listdir(d):
                        os.remove(os.path.join(d, name))
    s = c.settings
    print(f"{args.requests} requests per run, {args.users} users, level {s['level']:.0%} family-wise "
          f"(last pair: each of {s['rows_tested']} rows at {s['row_level']:.2%}), min-effect "
          f"{s['min_effect']:.0%}, {args.bootstrap} replicates")
    if args.pairs:
        print(f"noise-only pairs: {alarms} of {args.pairs} with any row flagged = false-alarm rate "
              f"{100 * alarms / args.pairs:.1f} %; rows flagged {row_alarms} of {rows_total} "
              f"({100 * row_alarms / max(rows_total, 1):.2f} %)")
        for name, count in which.most_common(8):
            print(f"  {count:4d} x {name}")
    if args.detect_pairs:
        n = args.detect_pairs
        print(f"ITL +10 % pairs: TPOT avg+median flagged worse in {detect['tpot']} of {n} "
              f"({100 * detect['tpot'] / n:.0f} %), ITL avg+median worse in {detect['itl']} of {n} "
              f"({100 * detect['itl'] / n:.0f} %); any row 'better' in {detect['better']} of {n}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
