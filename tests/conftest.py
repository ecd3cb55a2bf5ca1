"""Shared fixtures: the simulator as a server with known timing, and headless Locust runs."""
from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
import threading
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


def run_locust(out_dir, *args, timeout=120, watch: RunQueueWait | None = None) -> subprocess.CompletedProcess:
    """One headless run to its end; `watch` also watches the Locust process's run-queue wait."""
    cmd = locust_cmd(out_dir, *args)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) as proc:
        if watch is not None:
            watch.watch(proc.pid)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


COMPANIONS = ("_curve", "_ci", "_by_turn")  # performances/<abbr>/<dataset>_curve.csv, _ci.csv/.json beside AISBench's two


def aisbench_files(run: str, ext: str) -> list[str]:
    """AISBench's own files of a run folder: performances/<model_abbr>/<dataset>.csv or .json."""
    return [p for p in glob.glob(os.path.join(run, "performances", "*", f"*.{ext}"))
            if not p[:-len(ext) - 1].endswith(COMPANIONS)]


def perf_csv(run: str) -> str:
    """The run's per-request table (performances/<model_abbr>/<dataset>.csv; not its companions)."""
    (path,) = aisbench_files(run, "csv")
    return path


def run_dirs(out_dir) -> list[str]:
    return sorted(d for d in glob.glob(os.path.join(str(out_dir), "*")) if os.path.isdir(d))


class RunQueueWait:
    """How long the watched processes waited, runnable, for a CPU: the scheduling noise of a busy machine.

    Reads each process's /proc/PID/schedstat (time on the CPU, time waiting on a run queue, time slices)
    every 50 ms in a thread, from `watch(pid)` until the block ends; `ms` is the mean wait per time slice,
    summed over the watched processes (a token crosses each of them: the server writes it, the client
    reads it). On a quiet machine it is ~0.01 ms; with four CPU burners on 2 cores, 0.5-2 ms. Timing
    assertions add a multiple of it to their upper bounds, capped so that 2x off always fails.

        with RunQueueWait(sim.pid) as rq:
            ...
        late_ms = min(5 + 4 * rq.ms, 40)
    """

    def __init__(self, *pids: int):
        self._first: dict[int, tuple[int, int]] = {}
        self._last: dict[int, tuple[int, int]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        for pid in pids:
            self.watch(pid)

    @staticmethod
    def _read(pid: int):
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                _, wait_ns, slices = map(int, f.read().split()[:3])
            return wait_ns, slices
        except (OSError, ValueError):
            return None  # gone, or not Linux

    def watch(self, pid: int) -> None:
        now = self._read(pid)
        if now:
            self._first.setdefault(pid, now)
            self._last[pid] = now

    def _poll(self) -> None:
        while not self._done.wait(0.05):
            for pid in list(self._first):
                self.watch(pid)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        for pid in list(self._first):
            self.watch(pid)

    @property
    def ms(self) -> float:
        total = 0.0
        for pid, (w0, n0) in self._first.items():
            w1, n1 = self._last[pid]
            total += (w1 - w0) / 1e6 / max(n1 - n0, 1)
        return total


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
