"""Timestamped trace replay (`--dataset trace --dataset-path FILE`): each request is sent at its own time
on the trace's timeline (open loop), as the trace says, not as fast as users allow.

- Timeline: t0 is this process's first `next` (the test's start here, after setup: prompts, bodies and
  the server scraper are ready by then); the entry with `t_sched_s` = t is due at t0 + t
  (`--trace-speed/--trace-start/--trace-window` are applied by the loader, datasets/trace.py).
- Users cap in-flight requests: a free user takes the next entry in time order, sleeps until it is
  due and sends it. When every user is busy, the entry waits for the first one to finish and is sent
  late: that lateness is the record's `t_send - t_sched` (the tables' QueueDelay; run.report's
  `Schedule:` line sums it up). Nothing is ever sent before it is due.
- Each record's `t_sched` is the due time as an epoch (client.epoch of the perf_counter deadline), as
  the open-loop arrivals record theirs, so t_send - t_sched is the scheduled-to-sent lag.
- Distributed (`--processes N`, master/worker): entry i goes to worker i mod N (the prompts' shard),
  so no entry is sent twice; each worker replays its entries on its own t0 (its first `next`; the
  workers start within a few ms of each other), so none is sent early on its timeline.
- The run ends when the trace is exhausted: this process's entries all sent and answered (a user that
  finds none left stops; the last one ends the test as a finished scored pass does). `--num-requests N`
  replays the first N entries (shared by the workers); `--warmup W` sends the first W as warm-up.
"""
from __future__ import annotations

import itertools
from time import perf_counter

import gevent

from ..client import epoch
from ..columns import WARMUP
from . import Request, Workload as Base, share
from .independent import load, prepare  # noqa: F401 - the loader's Prompts carry t_sched_s; bodies as usual


class Workload(Base):
    def __init__(self, session):
        super().__init__(session)
        self.cursor = itertools.count()
        self.t0 = None       # perf_counter time of the timeline's zero: set by the first `next`
        self.order: list[int] = []

    def _begin(self) -> None:
        s, cfg = self.session, self.session.cfg
        index, workers = s.shard  # read now: a worker learns its shard at test start
        self.order = list(range(index, len(s.prompts), workers))
        self.warmup = share(cfg.warmup, index, workers)
        if cfg.num_requests:
            self.order = self.order[:share(cfg.num_requests, index, workers) + self.warmup]
        self.t0 = perf_counter()

    def next(self, user) -> Request | None:
        if self.t0 is None:
            self._begin()
        s = self.session
        n = next(self.cursor)
        if n >= len(self.order):
            return None  # the trace is exhausted on this process
        i = self.order[n]
        prompt = s.prompts[i]
        due = self.t0 + (prompt.t_sched_s or 0.0)
        wait = due - perf_counter()
        if wait > 0:
            gevent.sleep(wait)
            while perf_counter() < due:  # gevent may wake a hair early: never send before the time
                gevent.sleep(due - perf_counter())
        return Request(prompt, s.bodies[i], epoch(due), WARMUP if n < self.warmup else s.stage)
