"""Shared fixtures: the simulator as a server with known timing, and headless Locust runs."""
from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
import time

import pytest

from benchmark import simulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")


@pytest.fixture
def start_sim():
    """start_sim(*args) -> a running simulator; every one started is stopped at teardown."""
    started = []

    def start(*args):
        sim = simulator.start(*args)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def locust_cmd(out_dir, *args) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "locustfile.py"), "--headless",
            "--output-dir", str(out_dir), "--only-summary", *args]


def run_locust(out_dir, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(locust_cmd(out_dir, *args), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def perf_csv(run: str) -> str:
    """The run's per-request table (performances/<model_abbr>/<dataset>.csv; not the stage curve)."""
    (path,) = [p for p in glob.glob(os.path.join(run, "performances", "*", "*.csv")) if not p.endswith("_curve.csv")]
    return path


def run_dirs(out_dir) -> list[str]:
    return sorted(d for d in glob.glob(os.path.join(str(out_dir), "*")) if os.path.isdir(d))


def scheduling_lag_ms(n: int = 40, sleep_s: float = 0.002) -> float:
    """How late this process wakes from a short sleep (p90 of n sleeps, ms): the machine's scheduling noise.

    Timing assertions add a few of these to their upper bounds (one per wake-up between the event and
    its reading), so a busy machine is allowed for by a figure the test measured, and callers cap the
    allowance so that a client or server 2x off is still caught.
    """
    lags = []
    for _ in range(n):
        t0 = time.perf_counter()
        time.sleep(sleep_s)
        lags.append((time.perf_counter() - t0 - sleep_s) * 1000)
    return sorted(lags)[int(0.9 * (n - 1))]


def wait_for_http(url: str, proc, timeout: float = 30, why=lambda: "") -> None:
    """Until `url` answers; fails at once if `proc` (the server's process) exits first.

    Every transient error (refused, reset, a read timeout from a busy server) is retried until the
    deadline: on a loaded 2-core machine a server that has started listening can still be slow to answer.
    """
    import requests
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, f"the server exited with {proc.returncode} before answering {url}\n{why()}"
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException as e:
            assert time.time() < deadline, f"{url} did not answer within {timeout:.0f} s ({e!r})\n{why()}"
            time.sleep(0.1)
