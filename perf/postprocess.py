"""Post-processing at scale: records.jsonl of N requests -> tables (and the HTML report), time and memory.

Writes a run folder of N synthetic records shaped like the client's (role, 128 content events with
jittered 20 ms gaps, finish, usage; 1 % failures; ~4.4 KB a line), then runs, each in a fresh process:
  tables:  run.report(html=False)          records.jsonl -> console tables, CSV and JSON
  report:  python -m benchmark report DIR  the same plus report.html
and prints wall time and peak RSS (the process's high-water mark, from the kernel).

    python perf/postprocess.py                       # 1,000,000 requests (a 4.4 GB file)
    python perf/postprocess.py --requests 100000 --keep
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS = 128
TEXT = " ".join(["word"] * TOKENS)


def write_run(run_dir: str, n: int, seed: int = 0) -> int:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump({"model": "llm-sim", "model_abbr": "llm-sim", "dataset_abbr": "synthetic", "host": "perf",
                   "max_users": 256, "metric_profile": "default", "stream": True}, f)
    rng = np.random.default_rng(seed)
    block = 10_000
    t = 1_764_000_000.0
    with open(os.path.join(run_dir, "records.jsonl"), "wb") as f:
        for start in range(0, n, block):
            m = min(block, n - start)
            ttft = 0.05 + rng.exponential(0.005, m)
            gaps = 0.02 + rng.normal(0, 0.0005, (m, TOKENS - 1))
            offsets = np.concatenate([ttft[:, None], ttft[:, None] + np.cumsum(gaps, axis=1)], axis=1).round(6)
            lines = []
            for i in range(m):
                k = start + i
                off = offsets[i].tolist()
                ok = k % 100 != 99
                events = ([[off[0], "role", 0]] + [[o, "content", 5] for o in off] +
                          [[off[-1], "other", 0], [off[-1], "usage", 0]]) if ok else []
                t += 0.01
                lines.append(orjson.dumps({
                    "id": k, "worker": "perf:1", "user": k % 256, "stage": "total", "dataset": "synthetic",
                    "prompt_index": k, "t_sched": None, "t_send": round(t, 6), "events": events,
                    "input_tokens": 16 if ok else None, "output_tokens": TOKENS if ok else None,
                    "token_source": "usage" if ok else None, "completion": TEXT if ok else "", "reasoning": "",
                    "finish_reason": "length" if ok else None, "reference": None, "success": ok,
                    "error": "" if ok else "HTTP 500: Injected Failure", "http_status": 200 if ok else 500,
                    "attempts": 1, "request_id": f"perf-{k}"}) + b"\n")
            f.write(b"".join(lines))
    return os.path.getsize(os.path.join(run_dir, "records.jsonl"))


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall s, peak RSS GiB, output tail) of a fresh child process."""
    t0 = time.perf_counter()
    # each measurement in its own child so ru_maxrss (children's high-water mark) is its alone
    wrapper = [sys.executable, "-c",
               "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)",
               *cmd]
    r = subprocess.run(wrapper, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr[-1500:]}")
    peak_kb = int(r.stdout.rsplit("PEAK_KB", 1)[1].split()[0])
    return wall, peak_kb / 2**20, r.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1_000_000)
    p.add_argument("--keep", action="store_true", help="keep the generated run folder")
    a = p.parse_args()
    run_dir = tempfile.mkdtemp(prefix="llmpost-")
    try:
        t0 = time.perf_counter()
        size = write_run(run_dir, a.requests)
        print(f"{a.requests} records, {size / 2**30:.2f} GiB, written in {time.perf_counter() - t0:.1f} s")
        wall, peak, out = timed([sys.executable, "-c",
                                 f"from benchmark.run import report; report({run_dir!r}, html=False)"])
        print(f"records -> tables (run.report, html=False): {wall:.1f} s, peak RSS {peak:.2f} GiB")
        wall, peak, _ = timed([sys.executable, "-m", "benchmark", "report", run_dir])
        html = os.path.getsize(os.path.join(run_dir, "report.html"))
        print(f"records -> tables + report.html (python -m benchmark report): {wall:.1f} s, "
              f"peak RSS {peak:.2f} GiB, report.html {html / 1024:.0f} KiB")
        print("\n".join(line for line in out.splitlines() if line.startswith(("│ TTFT", "│ ITL", "| TTFT", "| ITL"))))
    finally:
        if a.keep:
            print(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
