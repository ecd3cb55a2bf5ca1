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


def wait_for_http(url: str, proc, timeout: float = 30, why=lambda: "") -> None:
    """Until `url` answers; fails at once if `proc` (the server's process) exits first."""
    import requests
    deadline = time.time() + timeout
    while True:
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            assert time.time() < deadline and proc.poll() is None, why()
            time.sleep(0.1)
