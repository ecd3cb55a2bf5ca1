"""Independent single-turn prompts, as before conversations: each request is the next prompt of this
process's shard (every n-th prompt of n workers), cycled; `--num-requests` and `--warmup` shared by the
workers; one pass over the prompts when scored (accuracy/all); open loop waits for an arrival."""
from __future__ import annotations

import itertools

from .. import datasets
from ..columns import WARMUP
from ..run import build_body
from . import Request, Workload as Base, share


def load(cfg):
    return datasets.load(cfg.dataset, cfg.dataset_path, cfg.num_prompts, seed=cfg.seed,
                         max_out_len=cfg.max_out_len if cfg.max_out_len_given else None,
                         tokenizer=cfg.tokenizer, **cfg.dataset_options)


def prepare(session, prompts) -> str:
    session.prompts = prompts
    session.bodies = [build_body(p, session.cfg, session.model) for p in prompts]
    return datasets.describe(prompts)


class Workload(Base):
    def __init__(self, session):
        super().__init__(session)
        cfg = session.cfg
        index, workers = session.shard
        self.order = list(range(index, len(session.prompts), workers)) or [0]
        self.cursor = itertools.count()
        # requests this process sends: --num-requests shared by the workers, one pass when scored, or no end
        self.warmup = share(cfg.warmup, index, workers)
        self.limit = (share(cfg.num_requests, index, workers) + self.warmup if cfg.num_requests
                      else len(self.order) + self.warmup if cfg.mode != "perf" else float("inf"))

    def next(self, user) -> Request | None:
        s = self.session
        n = next(self.cursor)
        if n >= self.limit:
            return None  # the asked number of requests, or one scored pass, has been sent
        i = self.order[n % len(self.order)]
        t_sched = s.arrivals.next() if s.arrivals else None  # open loop: wait for an arrival
        return Request(s.prompts[i], s.bodies[i], t_sched, WARMUP if n < self.warmup else s.stage)
