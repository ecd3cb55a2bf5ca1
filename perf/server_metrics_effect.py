"""Does scraping the server's /metrics disturb the client's timing? TTFT and ITL error against the
simulator's --trace truth, with scraping off and on (a padded page the size of a busy vLLM server's).

The scraper is a child of the Locust process and inherits its core (taskset), so its parsing competes
with the token reads for that core: the worst case on a machine with few cores.

    python perf/server_metrics_effect.py                       # 64 users, 300 KB page, 1 s interval, 20 s
    python perf/server_metrics_effect.py --users 256 --pad-kb 600 --interval 0.5
"""
from __future__ import annotations

import argparse
import os
import sys

from tabulate import tabulate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client_capacity import run_point  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=64)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--pad-kb", type=int, default=300, help="extra series on the simulator's /metrics page")
    p.add_argument("--interval", type=float, default=1.0, help="--server-metrics-interval, seconds")
    p.add_argument("--repeats", type=int, default=2, help="runs per setting, alternated")
    a = p.parse_args()
    keys = ("TTFT err mean/p99 ms", "= send->arrival mean/p99", "+ written->read mean/p99", "ITL err mean/p99 ms",
            "requests", "client CPU", "sim CPU")
    rows = []
    for i in range(a.repeats):
        for scraping in (False, True):
            extra = ("--server-metrics-interval", str(a.interval)) if scraping else ("--server-metrics", "off")
            row = run_point(a.users, a.seconds, 50, 20, 128, "0", "1",
                            sim_args=("--metrics-pad-kb", str(a.pad_kb)), locust_args=extra)
            rows.append({"run": i + 1, "scraping": f"every {a.interval:g} s" if scraping else "off",
                         **{k: row[k] for k in keys}})
    print(f"Closed loop, {a.users} users, simulator TTFT 50 ms / ITL 20 ms / 128 tokens, /metrics page padded "
          f"by {a.pad_kb} KB; error = client - server-side truth (simulator --trace)")
    print(tabulate(rows, headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()
