"""Client capacity and timing fidelity of one Locust process against the simulator.

The simulator runs pinned to one core and the Locust process to the other (taskset), closed loop.
For each user count: TTFT and ITL error (client-measured minus the simulator's configured value),
achieved vs ideal output token/s, client CPU. Then, at ITL 0, the SSE events/s one process ingests.

    python perf/client_capacity.py                  # 1, 64, 256, 512 users, 20 s each
    python perf/client_capacity.py --users 128 --seconds 30
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
from tabulate import tabulate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmark import simulator  # noqa: E402
from benchmark.records import TOKEN_KINDS, read_records  # noqa: E402


def run_point(users: int, seconds: float, ttft_ms: float, itl_ms: float, tokens: int,
              client_core: str, server_core: str) -> dict:
    sim = simulator.start("--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms))
    out = tempfile.mkdtemp(prefix="llmperf-")
    try:
        os.sched_setaffinity(sim.pid, {int(server_core)})
        cmd = ["taskset", "-c", client_core, sys.executable, "-m", "locust", "-f",
               os.path.join(ROOT, "locustfile.py"), "--headless", "--only-summary", "-u", str(users),
               "-r", str(users), "-t", f"{int(seconds)}s", "--host", sim.url, "--max-out-len", str(tokens),
               "--ignore-eos", "--output-dir", out, "--input-len", "fixed:16"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        ps = psutil.Process(proc.pid)
        time.sleep(min(5, seconds / 4))  # skip start-up and ramp
        c0, w0 = sum(ps.cpu_times()[:2]), time.monotonic()
        time.sleep(seconds - min(5, seconds / 4) - 1)
        c1, w1 = sum(ps.cpu_times()[:2]), time.monotonic()
        err = proc.communicate(timeout=120)[1]
    finally:
        sim.stop()
    if not os.listdir(out):
        raise SystemExit(f"locust wrote no run folder at {users} users: {err[-800:]}")
    run_dir = os.path.join(out, sorted(os.listdir(out))[0])
    records, _ = read_records(os.path.join(run_dir, "records.jsonl"))
    ok = [r for r in records if r["success"]]
    if not ok:
        raise SystemExit(f"no successful request at {users} users: {err[-500:]}")
    ttft, gaps, n_events = [], [], 0
    for r in ok:
        t = np.array([e[0] for e in r["events"] if e[1] in TOKEN_KINDS])
        ttft.append(t[0])
        gaps.append(np.diff(t))
        n_events += len(r["events"])
    ttft_err = np.array(ttft) * 1000 - ttft_ms
    itl_err = np.concatenate(gaps) * 1000 - itl_ms
    starts = np.array([r["t_send"] for r in ok])
    ends = starts + np.array([r["events"][-1][0] for r in ok])
    duration = ends.max() - starts.min()
    out_tokens = sum(r["output_tokens"] for r in ok)
    ideal = users * tokens / ((ttft_ms + (tokens - 1) * itl_ms) / 1000) if itl_ms or ttft_ms else float("nan")
    return {
        "users": users, "requests": len(ok), "failed": len(records) - len(ok),
        "TTFT err mean/p99 ms": f"{ttft_err.mean():.2f} / {np.percentile(ttft_err, 99):.2f}",
        "ITL err mean/p99 ms": f"{itl_err.mean():.2f} / {np.percentile(itl_err, 99):.2f}",
        "token/s (of ideal)": f"{out_tokens / duration:.0f} ({100 * out_tokens / duration / ideal:.1f} %)",
        "events/s": f"{n_events / duration:.0f}",
        "client CPU": f"{100 * (c1 - c0) / (w1 - w0):.0f} %",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", default="1,64,256,512")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--full-speed-users", type=int, default=256)
    p.add_argument("--client-core", default="0")
    p.add_argument("--server-core", default="1")
    a = p.parse_args()
    rows = [run_point(int(u), a.seconds, 50, 20, 128, a.client_core, a.server_core)
            for u in a.users.split(",")]
    print("Closed loop, simulator TTFT 50 ms / ITL 20 ms / 128 tokens; error = client - simulator")
    print(tabulate(rows, headers="keys", tablefmt="github"))
    if a.full_speed_users:
        row = run_point(a.full_speed_users, a.seconds, 0, 0, 512, a.client_core, a.server_core)
        print(f"\nFull speed (ITL 0, 512 tokens, {a.full_speed_users} users): {row['events/s']} SSE events/s "
              f"ingested, client CPU {row['client CPU']}")


if __name__ == "__main__":
    main()
