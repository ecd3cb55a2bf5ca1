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


# the theoretical hit rate is computed at prepare time up to this many prompt tokens (estimated from the
# characters: the synthetic and trace words are ~5 characters a token); encoding takes ~2-8 s per million
# tokens, so a bigger run would wait that long before it starts
PREFIX_LINE_TOKENS = 1_000_000
CHARS_PER_TOKEN = 5


def prepare(session, prompts) -> str:
    session.prompts = prompts
    session.bodies = [build_body(p, session.cfg, session.model) for p in prompts]
    line = datasets.describe(prompts)
    cfg = session.cfg
    opts = cfg.dataset_options
    if getattr(session, "worker", False):
        return line  # the master prints the prefix line: a worker would only encode the prompts again
    if cfg.dataset == "trace" or (cfg.dataset == "synthetic" and (opts.get("prefix_tokens") or opts.get("prefix_ratio"))):
        line += "\n" + prefix_line(prompts, cfg.tokenizer)
    return line


def prefix_line(prompts, tokenizer) -> str:
    """The `Prefix cache: theoretical hit rate ...` line for the prompts in send order (one pass), or,
    over PREFIX_LINE_TOKENS, how to get it."""
    from .. import prefix_cache
    chars = sum(len(m.get("content") or "") for p in prompts for m in p.messages)
    if chars > PREFIX_LINE_TOKENS * CHARS_PER_TOKEN:
        return (f"Prefix cache: theoretical hit rate not computed (about {chars // CHARS_PER_TOKEN:,} prompt tokens, "
                f"over the {PREFIX_LINE_TOKENS:,} computed before a run; cut the prompts with --num-prompts or "
                "--trace-window, or compute it offline: README 'Prefix groups')")
    return prefix_cache.describe_prompts(prompts, datasets.tokenizer_for(tokenizer))


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
