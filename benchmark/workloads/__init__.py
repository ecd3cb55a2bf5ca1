"""Workloads: what each user sends next. One module per workload, behind one small interface.

A workload is made once per process per test (Session.start) and is asked by every user's loop:

    request = workload.next(user)       # the next Request, or None: this user has nothing more to send
    ... user sends request.body ...
    workload.finished(user, request, record)   # after the request's record is made

`next` may sleep (gevent) until the request is due: an open-loop arrival, a conversation's think time.
`user` is any object with `number` (the user's index) and `state` (a dict the workload may keep
per-user things in: a conversation in progress). No Locust here: users are plain objects in tests.

`defer`: True when the user may leave the record to the idle worker (idle.py) and send its next request
at once; False when `next` needs the previous record first (a conversation's next turn carries the
answer). `needs_chat`: the workload only makes sense on a chat endpoint (messages with roles): the one
check point where a text-only backend must be refused.

A new workload: a module with `load(cfg)` (its dataset, loaded once per prompt configuration),
`prepare(session, loaded) -> str` (bodies built before the test; the console line) and a Workload
subclass `Workload(session)`, named in KINDS and chosen by `kind(cfg)`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..datasets import Prompt


@dataclass
class Request:
    """One request a user is about to send."""
    prompt: Prompt            # index, messages (for a turn: the whole history), max_tokens, reference
    body: bytes               # the encoded request body
    t_sched: float | None     # open loop: the epoch time it was due (None: closed loop, sent at once)
    stage: str
    conversation: str | None = None
    turn: int | None = None   # 1-based turn index within its conversation


class Workload:
    defer = True
    needs_chat = False

    def __init__(self, session):
        self.session = session

    def next(self, user) -> Request | None:
        raise NotImplementedError

    def finished(self, user, request: Request, record: dict) -> None:
        """After `request`'s record is made (a deferred record: later, by the idle worker)."""


KINDS = ("independent", "conversations", "trace")


def kind(cfg) -> str:
    """The workload of a run's options."""
    if cfg.dataset == "conversations" or getattr(cfg, "multi_turn", False):
        return "conversations"
    return "trace" if cfg.dataset == "trace" else "independent"


def _module(name: str):
    if name == "conversations":
        from . import conversations
        return conversations
    if name == "trace":
        from . import trace
        return trace
    from . import independent
    return independent


def load(cfg):
    return _module(kind(cfg)).load(cfg)


def prepare(session, loaded) -> str:
    return _module(kind(session.cfg)).prepare(session, loaded)


def needs_chat(cfg) -> bool:
    """The one check point for text-only backends: True when cfg's workload sends chat messages that a
    completions-only endpoint can't take (the caller refuses such a backend with one line)."""
    return _module(kind(cfg)).Workload.needs_chat


def make(session) -> Workload:
    return _module(kind(session.cfg)).Workload(session)


def share(total: int, index: int, workers: int) -> int:
    """This process's part of `total` when `workers` processes share it (the first ones take one more)."""
    return total // workers + (index < total % workers)
