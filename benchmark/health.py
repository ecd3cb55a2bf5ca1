"""Client self-health: is the load generator itself the bottleneck?

Each process measures its event-loop lag (how late a periodic gevent timer wakes up: every greenlet
that hogs the loop delays the timestamps of all streams), its own CPU, and what the rest of the
machine did meanwhile (other processes' CPU and steal time from /proc/stat, this process's wait on a
run queue from /proc/self/schedstat). Open loop adds the scheduled-to-sent lag from the records.

Only the measured window counts (first send to last answer, marked by the locustfile): the start-up
(tokenizer, dataset, a full garbage collection) and the shutdown hold the loop once each, and one such
tick is the p99 of a short run's few dozen ticks. A run is flagged only for a sustained condition: its
CPU over CPU_LIMIT, or at least LAG_MIN_TICKS ticks and LAG_SHARE of the window's ticks late by more
than LOOP_LAG_LIMIT. The advice follows the cause: this process saturated (its own CPU near a core:
--processes N), or the machine busy (other processes, steal, run-queue wait: --processes won't help).
"""
from __future__ import annotations

import os
import time
from time import perf_counter

import gevent
import numpy as np
import psutil

INTERVAL_S = 0.05
SAMPLE_EVERY = 10      # ticks between CPU samples (0.5 s)
CPU_LIMIT = 90.0       # % of one core: this process is saturated
SELF_BUSY = 70.0       # % of one core: a lagging loop with this much CPU is this process's own doing
LOOP_LAG_LIMIT = 5.0   # ms: a tick later than this is a late tick
LAG_MIN_TICKS = 5      # late ticks needed (one stall at a stage change is not a saturated client)
LAG_SHARE = 0.10       # and this share of the window's ticks late
MIN_TICKS = 20         # fewer ticks in the window (a run of < 1 s): the lag is not judged
BUSY_OTHERS = 50.0     # % of the machine's CPUs used by other processes: the machine is busy
BUSY_STEAL = 5.0       # % of CPU time stolen by the hypervisor
BUSY_WAIT = 50.0       # ms per s this process waited, runnable, for a CPU


def machine_sample() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole machine since boot, from /proc/stat (zeros elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0, 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
    return (user + nice + system + irq + softirq) / hz, steal / hz, sum(fields) / hz


def runqueue_wait_s() -> float:
    """Seconds this process's main thread has waited, runnable, for a CPU (0 where unknown)."""
    try:
        with open("/proc/self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class HealthMonitor:
    def __init__(self):
        self.proc = psutil.Process()
        self.ends: list[float] = []   # epoch s at which each tick woke up
        self.lags: list[float] = []   # s late
        self.samples: list[tuple] = []  # (epoch, own cpu s, machine busy s, steal s, total s, run-queue wait s)
        self.first: float | None = None  # epoch of the first send (the locustfile marks the window)
        self.last: float | None = None   # epoch of the last answer's end
        self._greenlet = None

    def start(self) -> None:
        self.ends, self.lags, self.samples = [], [], []
        self.first = self.last = None
        self._wall0 = perf_counter()
        self._sample()
        self._greenlet = gevent.spawn(self._tick)

    def sent(self) -> None:
        """A request is being sent (the window opens at the first)."""
        if self.first is None:
            self.first = time.time()

    def ended(self, t: float | None = None) -> None:
        """An answer ended at epoch t (now by default): the window closes at the last."""
        t = time.time() if t is None else t
        if self.last is None or t > self.last:
            self.last = t

    def _sample(self) -> None:
        t = self.proc.cpu_times()
        self.samples.append((time.time(), t.user + t.system, *machine_sample(), runqueue_wait_s()))

    def _tick(self) -> None:
        n = 0
        while True:
            t = perf_counter()
            gevent.sleep(INTERVAL_S)
            self.lags.append(perf_counter() - t - INTERVAL_S)
            self.ends.append(time.time())
            n += 1
            if n % SAMPLE_EVERY == 0:
                self._sample()

    def stop(self) -> dict:
        if self._greenlet is None:
            return {}
        self._greenlet.kill(block=False)
        self._greenlet = None
        self._sample()
        out = summarize(self.ends, self.lags, self.samples, self.first, self.last, psutil.cpu_count() or 1)
        out["seconds"] = round(perf_counter() - self._wall0, 1)
        return out


def _window_samples(samples: list[tuple], first: float, last: float) -> tuple[tuple, tuple]:
    """The two CPU samples that measure the window: inside it when it holds two, else around it."""
    inside = [s for s in samples if first <= s[0] <= last]
    if len(inside) >= 2:
        return inside[0], inside[-1]
    before = [s for s in samples if s[0] <= first] or samples[:1]
    after = [s for s in samples if s[0] >= last] or samples[-1:]
    return before[-1], after[0]


def summarize(ends, lags, samples, first: float | None, last: float | None, cpus: int) -> dict:
    """The health fields of one process over the window [first, last] (the whole run when unmarked).

    ends/lags: each tick's wake-up epoch and lateness (s); samples: see HealthMonitor.samples."""
    ends, lags = np.asarray(ends, float), np.asarray(lags, float) * 1000
    whole = first is None or last is None or last <= first
    if whole:
        first = samples[0][0] if samples else (ends[0] if ends.size else 0.0)
        last = samples[-1][0] if samples else (ends[-1] if ends.size else 0.0)
    starts = ends - INTERVAL_S - lags / 1000
    keep = (starts >= first) & (ends <= last)
    win = lags[keep] if keep.any() else np.zeros(1)
    over = int((win > LOOP_LAG_LIMIT).sum()) if keep.any() else 0
    out = {
        "window_s": round(max(last - first, 0.0), 2), "window": "whole run" if whole else "first send to last end",
        "ticks": int(keep.sum()),
        "loop_lag_p50_ms": round(float(np.percentile(win, 50)), 3),
        "loop_lag_p99_ms": round(float(np.percentile(win, 99)), 3),
        "loop_lag_max_ms": round(float(win.max()), 3),
        "loop_lag_over_ticks": over, "loop_lag_over_share": round(over / max(int(keep.sum()), 1), 3),
        "loop_lag_p99_whole_run_ms": round(float(np.percentile(lags, 99)), 3) if lags.size else 0.0,
        "cpu_percent": 0.0, "cpus": cpus, "others_cpu_percent": 0.0, "steal_percent": 0.0,
        "runqueue_wait_ms_per_s": 0.0,
    }
    if len(samples) >= 2:
        s0, s1 = _window_samples(samples, first, last)
        wall = s1[0] - s0[0]
        if wall > 0:
            own = s1[1] - s0[1]
            total = s1[4] - s0[4]
            out["cpu_percent"] = round(100 * own / wall, 1)
            if total > 0:  # other processes' share of the machine's CPUs (busy time minus this process)
                out["others_cpu_percent"] = round(100 * max(s1[2] - s0[2] - own, 0.0) / total, 1)
                out["steal_percent"] = round(100 * (s1[3] - s0[3]) / total, 1)
            out["runqueue_wait_ms_per_s"] = round(1000 * (s1[5] - s0[5]) / wall, 1)
    return out


def sched_lag_ms(results) -> dict:
    """Open loop: how long arrivals waited at the client before being sent (the tables' QueueDelay)."""
    perf = results.perf
    row = perf[(perf["Performance Parameters"] == "QueueDelay") & (perf["Stage"] == "total")]
    if row.empty or not row["N"].iloc[0]:
        return {}
    return {"sched_lag_p50_ms": round(float(row["Median"].iloc[0]), 3),
            "sched_lag_p99_ms": round(float(row["P99"].iloc[0]), 3)}


def _lag_sustained(h: dict) -> bool:
    """Late ticks enough and often enough in the measured window (fields of this module's monitor)."""
    if "loop_lag_over_ticks" not in h:
        return False  # a run folder from before: its p99 over the whole run is no evidence on its own
    return (h.get("ticks", 0) >= MIN_TICKS and h["loop_lag_over_ticks"] >= LAG_MIN_TICKS
            and h.get("loop_lag_over_share", 0) >= LAG_SHARE)


def _machine_busy(h: dict) -> list[str]:
    why = []
    if h.get("others_cpu_percent", 0) >= BUSY_OTHERS:
        why.append(f"other processes took {h['others_cpu_percent']:.0f} % of its {h.get('cpus', '?')} CPU(s)")
    if h.get("steal_percent", 0) >= BUSY_STEAL:
        why.append(f"the hypervisor stole {h['steal_percent']:.0f} % of the CPU time")
    if h.get("runqueue_wait_ms_per_s", 0) >= BUSY_WAIT:
        why.append(f"this process waited {h['runqueue_wait_ms_per_s']:.0f} ms per second for a CPU")
    return why


def diagnose(name: str, h: dict) -> tuple[str, str] | None:
    """(cause, one phrase) when this process's health is bad: cause "saturated", "busy" or "loop"."""
    cpu = h.get("cpu_percent", 0) or 0
    lag = _lag_sustained(h)
    if not (cpu > CPU_LIMIT or lag):
        return None
    late = (f"{h['loop_lag_over_ticks']} of {h['ticks']} event-loop ticks ({100 * h['loop_lag_over_share']:.0f} %) "
            f"late by > {LOOP_LAG_LIMIT:.0f} ms, p99 {h['loop_lag_p99_ms']:.1f} ms" if lag else "")
    what = ", ".join(x for x in (f"CPU {cpu:.0f} %" if cpu > CPU_LIMIT else "", late) if x)
    wait = (h.get("runqueue_wait_ms_per_s", 0) or 0) / 10  # % of the time runnable but not running
    busy = _machine_busy(h)
    if cpu >= SELF_BUSY or cpu + wait >= CPU_LIMIT:  # it uses, or would use if it got one, a whole core
        own = f"its own CPU {cpu:.0f} % of a core" + (f" plus {wait:.0f} % waiting for one" if wait >= 5 else "")
        also = f"; the machine is busy too: {', '.join(busy)}" if busy else ""
        return "saturated", f"{name} is saturated: {what} ({own}){also}"
    if busy:
        return "busy", f"{name}: {what} at {cpu:.0f} % CPU: the machine is busy: {', '.join(busy)}"
    return "loop", f"{name}: {what} at only {cpu:.0f} % CPU, the machine otherwise idle"


def verdict(processes: dict[str, dict]) -> tuple[bool, str]:
    """(client_bound, one line) over every process's health."""
    found = [d for d in (diagnose(name, h) for name, h in processes.items() if isinstance(h, dict)) if d]
    cpu = max((h.get("cpu_percent", 0) for h in processes.values()), default=0)
    lag = max((h.get("loop_lag_p99_ms", 0) for h in processes.values()), default=0)
    windowed = any("loop_lag_over_ticks" in h for h in processes.values())
    summary = (f"{len(processes)} process(es), max CPU {cpu:.0f} %, max loop lag p99 {lag:.1f} ms"
               + (" in the measured window" if windowed else ""))
    if not found:
        return False, f"Client healthy: {summary}"
    causes = {c for c, _ in found}
    text = "; ".join(t for _, t in found)
    if "saturated" in causes:
        return True, (f"CLIENT-BOUND: {text}. Latencies include client delay: spread the load with "
                      f"--processes N or more --worker machines ({summary})")
    if "busy" in causes:
        return True, (f"CLIENT-DELAYED: {text}. Latencies include the wait for a CPU: free the machine or run "
                      f"the client on another one; --processes N won't help ({summary})")
    return True, (f"CLIENT-DELAYED: {text}. Something holds the event loop without using the CPU (a "
                  f"blocking call, a listener doing I/O in the loop): latencies include that delay ({summary})")
