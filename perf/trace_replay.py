"""Trace replay fidelity: how close to their scheduled times one Locust process sends a trace's requests.

For each rate: a synthetic Mooncake-format trace (Poisson arrivals at that rate, `--seconds` long, short
prompts and answers) is replayed with `--dataset trace` against the built-in simulator (TTFT 5 ms, ITL
1 ms, 4 tokens: the server is never the bottleneck), the client pinned to one core and the simulator to
another (taskset) when the machine has two. Printed per rate: the scheduled-to-sent lag (record t_send
- t_sched: the tables' QueueDelay) p50/p99/max and the share sent more than 10 ms late
(benchmark/schedule.py), from the run's records. Figures only: nothing is asserted.

    python perf/trace_replay.py                       # 10, 100 and 1,000 requests/s, 5 s each
    python perf/trace_replay.py --rates 1000 --seconds 10 --processes 4   # on a bigger machine
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from tabulate import tabulate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmark import schedule, simulator  # noqa: E402
from benchmark.columns import WARMUP, read_columns  # noqa: E402


def write_trace(path: str, rate: float, seconds: float, seed: int = 0) -> int:
    """Poisson arrivals at `rate` for `seconds`; returns how many requests."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate, int(rate * seconds * 1.5) + 10))
    t = t[t < seconds]
    with open(path, "w") as f:
        for ts in t:
            f.write(json.dumps({"timestamp": round(float(ts) * 1000, 3), "input_length": 32,
                                "output_length": 4}) + "\n")
    return int(t.size)


def run_rate(rate: float, seconds: float, users: int, processes: int, cores: tuple[str, str] | None) -> dict:
    out = tempfile.mkdtemp(prefix="llm-trace-replay-")
    path = os.path.join(out, "trace.jsonl")
    n = write_trace(path, rate, seconds)
    sim = simulator.start("--ttft-ms", "5", "--itl-ms", "1")
    try:
        if cores:
            import psutil
            psutil.Process(sim.pid).cpu_affinity([int(cores[1])])
        cmd = (["taskset", "-c", cores[0]] if cores else []) + [
            sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "locustfile.py"), "--headless",
            "--only-summary", "-u", str(users), "-r", str(users), "-t", f"{int(seconds * 3 + 30)}s",
            "--host", sim.url, "--output-dir", out, "--dataset", "trace", "--dataset-path", path,
            *(["--processes", str(processes)] if processes > 1 else [])]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=seconds * 4 + 120)
    finally:
        sim.stop()
    runs = [d for d in os.listdir(out) if d != "trace.jsonl"]
    if res.returncode != 0 or not runs:
        raise SystemExit(f"the replay at {rate:g} req/s failed: {res.stderr[-800:]}")
    run_dir = os.path.join(out, runs[0])
    cols, _ = read_columns(os.path.join(run_dir, "records.jsonl"), drop_cancelled=True, exclude_stages=(WARMUP,))
    a = schedule.adherence(cols, users)
    lines = [x for x in (res.stdout + res.stderr).splitlines() if x.startswith(("Schedule:", "Client "))]
    return {"rate": rate, "scheduled": n, "answered": a["n"] if a else 0, "users": users, "adherence": a,
            "lines": lines, "run_dir": run_dir}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="10,100,1000", help="requests/s, comma-separated")
    p.add_argument("--seconds", type=float, default=5.0, help="trace length per rate (keep it short on a shared machine)")
    p.add_argument("--processes", type=int, default=1)
    args = p.parse_args()
    cores = ("0", "1") if (os.cpu_count() or 1) >= 2 else None
    rows = []
    for rate in (float(r) for r in args.rates.split(",")):
        users = max(16, int(rate * 0.1))  # ~10 ms answers: about rate/100 in flight; 10x that for bursts
        r = run_rate(rate, args.seconds, users, args.processes, cores)
        a = r["adherence"] or {}
        rows.append([f"{rate:g}", r["scheduled"], r["answered"], users,
                     f"{a.get('p50_ms', float('nan')):.2f}", f"{a.get('p99_ms', float('nan')):.2f}",
                     f"{a.get('max_ms', float('nan')):.2f}",
                     f"{100.0 * a.get('late', 0) / max(1, a.get('n', 0)):.1f} %"])
        for line in r["lines"]:
            print(f"  {rate:g} req/s: {line}")
    print(f"\ntrace replay, {args.seconds:g} s per rate, Poisson arrivals, --processes {args.processes}, "
          f"client on core {cores[0] if cores else 'any'}, simulator on core {cores[1] if cores else 'any'} "
          f"(TTFT 5 ms, ITL 1 ms, 4 tokens):")
    print(tabulate(rows, headers=["req/s", "scheduled", "answered", "users", "lag p50 ms", "lag p99 ms",
                                  "lag max ms", f"late > {schedule.LATE_MS:g} ms"], tablefmt="github"))


if __name__ == "__main__":
    main()
