"""Client self-health: is the load generator itself the bottleneck?

Each process measures its CPU use and its event-loop lag (how late a periodic gevent timer wakes
up: every greenlet that hogs the loop delays the timestamps of all streams). Open loop adds the
scheduled-to-sent lag from the records. A saturated client is flagged, with what to do about it.
"""
from __future__ import annotations

from time import perf_counter

import gevent
import numpy as np
import psutil

INTERVAL_S = 0.05
CPU_LIMIT = 90.0       # % of one core
LOOP_LAG_LIMIT = 5.0   # ms, p99


class HealthMonitor:
    def __init__(self):
        self.proc = psutil.Process()
        self.lags: list[float] = []
        self._greenlet = None

    def start(self) -> None:
        self.lags = []
        self._cpu0, self._wall0 = sum(self.proc.cpu_times()[:2]), perf_counter()
        self._greenlet = gevent.spawn(self._tick)

    def _tick(self) -> None:
        while True:
            t = perf_counter()
            gevent.sleep(INTERVAL_S)
            self.lags.append(perf_counter() - t - INTERVAL_S)

    def stop(self) -> dict:
        if self._greenlet is None:
            return {}
        self._greenlet.kill(block=False)
        self._greenlet = None
        wall = perf_counter() - self._wall0
        cpu = sum(self.proc.cpu_times()[:2]) - self._cpu0
        lags = np.array(self.lags or [0.0]) * 1000
        return {"cpu_percent": round(100 * cpu / wall, 1) if wall > 0 else 0.0,
                "loop_lag_p50_ms": round(float(np.percentile(lags, 50)), 3),
                "loop_lag_p99_ms": round(float(np.percentile(lags, 99)), 3),
                "loop_lag_max_ms": round(float(lags.max()), 3), "seconds": round(wall, 1)}


def sched_lag_ms(results) -> dict:
    """Open loop: how long arrivals waited at the client before being sent (the tables' QueueDelay)."""
    perf = results.perf
    row = perf[(perf["Performance Parameters"] == "QueueDelay") & (perf["Stage"] == "total")]
    if row.empty or not row["N"].iloc[0]:
        return {}
    return {"sched_lag_p50_ms": round(float(row["Median"].iloc[0]), 3),
            "sched_lag_p99_ms": round(float(row["P99"].iloc[0]), 3)}


def verdict(processes: dict[str, dict]) -> tuple[bool, str]:
    """(client_bound, one line) over every process's health."""
    worst = []
    for name, h in processes.items():
        if h.get("cpu_percent", 0) > CPU_LIMIT:
            worst.append(f"{name} CPU {h['cpu_percent']:.0f} % > {CPU_LIMIT:.0f} %")
        if h.get("loop_lag_p99_ms", 0) > LOOP_LAG_LIMIT:
            worst.append(f"{name} event-loop lag p99 {h['loop_lag_p99_ms']:.1f} ms > {LOOP_LAG_LIMIT:.0f} ms")
    cpu = max((h.get("cpu_percent", 0) for h in processes.values()), default=0)
    lag = max((h.get("loop_lag_p99_ms", 0) for h in processes.values()), default=0)
    summary = f"{len(processes)} process(es), max CPU {cpu:.0f} %, max loop lag p99 {lag:.1f} ms"
    if worst:
        return True, (f"CLIENT-BOUND: {'; '.join(worst)}. Latencies include client delay: spread the "
                      f"load with --processes N or more --worker machines ({summary})")
    return False, f"Client healthy: {summary}"
