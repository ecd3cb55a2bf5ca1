"""Client capacity and timing fidelity of one Locust process against the simulator.

The simulator runs pinned to one core and the Locust process to the other (taskset), closed loop.
For each user count: TTFT and ITL error = client-measured minus server-side truth (the simulator's
--trace: when each request reached its handler and each token really left, matched to the client's
record by X-Request-Id). The TTFT error is split into send->arrival (client t_send to the simulator's
handler; in a burst of new requests this includes the simulator's own queue on its one core) and
written->read (the first token's write to the client's read). Also: the simulator's lateness behind
its configured timing, achieved vs ideal output token/s, client and simulator CPU. Each user's first
request (it opens the connection) is sent as --warmup and left out. Then, at ITL 0, the SSE events/s
one process ingests.

    python perf/client_capacity.py                  # 1, 128, 256, 512 users, 20 s each
    python perf/client_capacity.py --users 128 --seconds 30
    python perf/client_capacity.py --users 1 --scaling 1,2,4,8   # on a machine with 16+ cores
"""
from __future__ import annotations

import argparse
import json
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
from benchmark.columns import CANCELLED  # noqa: E402
from benchmark.records import TOKEN_KINDS, read_records  # noqa: E402
from benchmark.run import WARMUP  # noqa: E402


def _cpu_s(p: psutil.Process) -> float:
    """CPU seconds of a process and its children (Locust's --processes workers, simulator workers)."""
    total = 0.0
    for q in [p, *p.children(recursive=True)]:
        try:
            total += sum(q.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def run_point(users: int, seconds: float, ttft_ms: float, itl_ms: float, tokens: int,
              client_cores: str, server_cores: str, processes: int = 1, sim_args: tuple = (),
              locust_args: tuple = ()) -> dict:
    out = tempfile.mkdtemp(prefix="llmperf-")
    trace_path = os.path.join(out, "trace.jsonl")
    sim_cores = _cores(server_cores)
    sim = simulator.start("--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms), "--trace", trace_path,
                          "--workers", str(len(sim_cores)), *sim_args)
    try:
        for q in [psutil.Process(sim.pid), *psutil.Process(sim.pid).children()]:
            q.cpu_affinity(sim_cores)
        cmd = ["taskset", "-c", client_cores, sys.executable, "-m", "locust", "-f",
               os.path.join(ROOT, "locustfile.py"), "--headless", "--only-summary", "-u", str(users),
               "-r", str(users), "-t", f"{int(seconds)}s", "--host", sim.url, "--max-out-len", str(tokens),
               "--ignore-eos", "--output-dir", out, "--input-len", "fixed:16",
               # each user's first request opens its TCP connection (all at once at start-up): that is
               # connection set-up, not steady-state streaming, so it is sent as warm-up
               "--warmup", str(users), *locust_args] + (["--processes", str(processes)] if processes > 1 else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        ps, sim_ps = psutil.Process(proc.pid), psutil.Process(sim.pid)
        time.sleep(min(5, seconds / 4))  # skip start-up and ramp
        c0, s0, w0 = _cpu_s(ps), _cpu_s(sim_ps), time.monotonic()
        time.sleep(seconds - min(5, seconds / 4) - 1)
        c1, s1, w1 = _cpu_s(ps), _cpu_s(sim_ps), time.monotonic()
        err = proc.communicate(timeout=120)[1]
    finally:
        sim.stop()
    if not os.listdir(out):
        raise SystemExit(f"locust wrote no run folder at {users} users: {err[-800:]}")
    run_dir = os.path.join(out, sorted(d for d in os.listdir(out) if d != "trace.jsonl")[0])
    records, _ = read_records(os.path.join(run_dir, "records.jsonl"))
    ok = [r for r in records if r["success"] and r["stage"] != WARMUP]
    if not ok:
        raise SystemExit(f"no successful request at {users} users: {err[-500:]}")
    with open(trace_path) as f:
        trace = {d["request_id"]: d for d in map(json.loads, f)}
    ttft_err, itl_err, sim_late, send_lag, n_events = [], [], [], [], 0
    for r in ok:
        n_events += len(r["events"])
        client = np.array([e[0] for e in r["events"] if e[1] in TOKEN_KINDS])
        server = np.array(trace[r["request_id"]]["tokens"]) if r["request_id"] in trace else None
        if server is None or len(server) != len(client):
            continue  # still streaming when the simulator stopped
        send_lag.append(trace[r["request_id"]]["arrival"] - r["t_send"])  # both epoch clocks
        ttft_err.append(client[0] - server[0])
        itl_err.append(np.diff(client) - np.diff(server))
        sim_late.append(server[0] - ttft_ms / 1000)
    if not ttft_err:
        raise SystemExit(f"no record at {users} users matched the simulator's trace")
    ttft_err, itl_err, sim_late = np.array(ttft_err) * 1000, np.concatenate(itl_err) * 1000, np.array(sim_late) * 1000
    send_lag = np.array(send_lag) * 1000
    read_lag = ttft_err - send_lag  # first token written by the server -> read by the client
    starts = np.array([r["t_send"] for r in ok])
    ends = starts + np.array([r["events"][-1][0] for r in ok])
    duration = ends.max() - starts.min()
    out_tokens = sum(r["output_tokens"] for r in ok)
    ideal = users * tokens / ((ttft_ms + (tokens - 1) * itl_ms) / 1000) if itl_ms or ttft_ms else float("nan")
    return {
        "users": users, "requests": len(ok), "failed": sum(not r["success"] and not r["error"].startswith(CANCELLED) for r in records), "matched": len(ttft_err),
        "TTFT err mean/p99 ms": _mean_p99(ttft_err),
        "= send->arrival mean/p99": _mean_p99(send_lag),
        "+ written->read mean/p99": _mean_p99(read_lag),
        "ITL err mean/p99 ms": _mean_p99(itl_err),
        "sim TTFT late mean/p99 ms": _mean_p99(sim_late),
        "token/s (of ideal)": f"{out_tokens / duration:.0f} ({100 * out_tokens / duration / ideal:.1f} %)",
        "events/s": f"{n_events / duration:.0f}",
        "client CPU": f"{100 * (c1 - c0) / (w1 - w0):.0f} %",
        "sim CPU": f"{100 * (s1 - s0) / (w1 - w0):.0f} %",
    }


def _mean_p99(a: np.ndarray) -> str:
    return f"{a.mean():.2f} / {np.percentile(a, 99):.2f}"


def _cores(spec: str) -> list[int]:
    """'1' or '4-7' or '1,3' -> core numbers."""
    cores = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        cores += range(int(a), int(b or a) + 1)
    return cores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", default="1,128,256,512")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--full-speed-users", type=int, default=256)
    p.add_argument("--client-core", default="0")
    p.add_argument("--server-core", default="1")
    p.add_argument("--scaling", metavar="1,2,4,8",
                   help="then, at full speed, --processes P for each P: the client on cores 0..P-1, "
                        "P simulator workers on cores P..2P-1 (needs 2P cores), --full-speed-users per process")
    a = p.parse_args()
    rows = [run_point(int(u), a.seconds, 50, 20, 128, a.client_core, a.server_core)
            for u in a.users.split(",")]
    print("Closed loop, simulator TTFT 50 ms / ITL 20 ms / 128 tokens; "
          "error = client - server-side truth (simulator --trace)")
    print(tabulate(rows, headers="keys", tablefmt="github"))
    if a.full_speed_users:
        row = run_point(a.full_speed_users, a.seconds, 0, 0, 512, a.client_core, a.server_core)
        print(f"\nFull speed (ITL 0, 512 tokens, {a.full_speed_users} users): {row['events/s']} SSE events/s "
              f"ingested, client CPU {row['client CPU']}")
    if a.scaling:
        rows = []
        for n in map(int, a.scaling.split(",")):
            if 2 * n > (os.cpu_count() or 1):
                print(f"--processes {n}: skipped, needs {2 * n} cores ({os.cpu_count()} here)")
                continue
            row = run_point(a.full_speed_users * n, a.seconds, 0, 0, 512, f"0-{n - 1}", f"{n}-{2 * n - 1}", n)
            rows.append({"processes": n, "users": a.full_speed_users * n, "events/s": row["events/s"],
                         "client CPU (all processes)": row["client CPU"], "sim CPU": row["sim CPU"]})
        print("\nScaling at full speed (ITL 0, 512 tokens)")
        print(tabulate(rows, headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()
