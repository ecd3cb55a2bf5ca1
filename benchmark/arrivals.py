"""Open-loop arrivals: `--request-rate R [--burstiness B]`.

Arrivals are scheduled on absolute times (gamma inter-arrival times, shape B, mean 1/R: B=1 is
Poisson, B=0 constant) and `-u` users are the in-flight cap: an arrival waits at that gate for a
free user. Each record keeps its scheduled time (`t_sched`), so client-side queueing is visible.
No Locust import, so the maths is testable in a plain process.
"""
from __future__ import annotations

from time import perf_counter

import gevent
import numpy as np
from gevent.queue import Queue

from .client import epoch
from .options import ConfigError


class Arrivals:
    """Scheduled send times, produced on absolute deadlines into a queue the users take from."""

    def __init__(self, rate: float, burstiness: float = 1.0, seed: int = 0, ramp: tuple | None = None):
        """ramp: (strategy, start_rps, end_rps, seconds): the rate goes from start to end over the run,
        linearly or exponentially (vLLM's / AISBench's ramp-up), instead of the constant `rate`."""
        if rate <= 0 and not ramp:
            raise ConfigError(f"--request-rate: must be > 0; got {rate!r}")
        if burstiness < 0:
            raise ConfigError(f"--burstiness: must be >= 0; got {burstiness!r}")
        self.rate, self.burstiness, self.ramp = rate, burstiness, ramp
        self.rng = np.random.default_rng(seed)
        self.queue: Queue = Queue()
        self._greenlet = None

    def unit_gaps(self, n: int) -> np.ndarray:
        """Inter-arrival times for a rate of 1/s: gamma with shape B and mean 1 (constant for B=0)."""
        if self.burstiness == 0:
            return np.ones(n)
        return self.rng.gamma(self.burstiness, 1.0 / self.burstiness, n)

    def rate_at(self, elapsed: float) -> float:
        if not self.ramp:
            return self.rate
        strategy, start, end, seconds = self.ramp
        p = min(1.0, max(0.0, elapsed / seconds))
        return start + (end - start) * p if strategy == "linear" else start * (end / start) ** p

    def start(self) -> None:
        self.stop()
        self.queue = Queue()
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        t0 = due = perf_counter()
        while True:
            for unit in self.unit_gaps(1024):
                due += unit / self.rate_at(due - t0)
                gevent.sleep(max(0.0, due - perf_counter()))  # absolute deadlines: no drift
                self.queue.put(epoch(due))

    def next(self) -> float:
        """Block until an arrival is due; its scheduled epoch time."""
        return self.queue.get()

