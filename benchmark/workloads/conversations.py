"""Multi-turn conversations (`--dataset conversations --dataset-path FILE`, or `--multi-turn` with
`--dataset sharegpt`).

A user holds one conversation at a time. Turn k is sent with the whole history: the system prompt, then
turns 1..k-1 (each the user's message and the assistant's answer), then user message k. The answers are
`--history real` (default: the model's own answers, as a chat front-end sends them: the history grows as
the model answers, and the engine's prefix cache holds exactly that text, so TTFT by turn shows the cache
at work) or `--history recorded` (the dataset's recorded replies: the same bodies on every run, so token
counts are reproducible; a turn without a recorded reply uses the real one).

Rules:
- Think time: before turn k >= 2, the user pauses `--think-time S` when given, else the turn's own
  `think_s`, else not at all. Turn 1 is sent when the conversation starts (open loop: at its arrival:
  `--request-rate` is the rate of new conversations).
- `--max-history-tokens N`: the oldest whole turns (user + answer) are dropped until the system prompt,
  the kept turns and the new user message fit N tokens (content tokens of the run's tokenizer, no chat
  template, as --input-len counts); the system prompt and the new message are always kept.
- A failed turn ends its conversation: its later turns are not sent (their history would hold no answer),
  and the user starts the next conversation. A cancelled turn (the test stopping) ends the user.
- Conversations are sharded across processes/workers by index, as prompts are, and a conversation is
  held by one user from its first turn to its last: it never moves between users or workers. In perf mode
  the shard's conversations cycle; a conversation's second pass is recorded as `ID~2`, and so on.
- A user that a load shape removes (a --steps stage change) drops the rest of its conversation.
- `--num-requests` and `--warmup` count turns. The next turn's body needs the previous answer, so a
  conversation's record is made at once (not by the idle worker).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from time import perf_counter

import gevent

from .. import datasets
from ..client import epoch
from ..columns import WARMUP
from ..datasets import DatasetError, Prompt
from ..run import build_body
from . import Request, Workload as Base, share

HISTORY = ("real", "recorded")


def load(cfg) -> list:
    """The run's conversations: datasets.load gives them for --dataset conversations and for
    --dataset sharegpt --multi-turn (datasets/conversations.py, sharegpt.load_conversations)."""
    from .independent import load as load_dataset
    if cfg.dataset not in ("sharegpt", "conversations"):
        raise DatasetError(f"--multi-turn: needs --dataset sharegpt or conversations; got {cfg.dataset}")
    return load_dataset(cfg)


def prepare(session, convs) -> str:
    session.conversations = convs
    session.prompts, session.bodies = [], []
    turns = sum(len(c.turns) for c in convs)
    return (f"Conversations: {len(convs)} loaded ({session.cfg.dataset}, {turns} turns, "
            f"history {session.cfg.history})")


@dataclass
class _Held:
    """The conversation a user holds."""
    index: int                # in the dataset
    id: str                   # as recorded (with ~N from its second pass on)
    conv: object              # datasets.conversations.Conversation
    k: int = 0                # turns sent and answered so far
    history: list = field(default_factory=list)  # [(user text, answer text, their tokens)]
    due: float = 0.0          # perf_counter time the next turn is due (after the think time)


class Workload(Base):
    defer = False      # the next turn's body needs this turn's answer and verdict
    needs_chat = True  # histories are chat messages with roles

    def __init__(self, session):
        super().__init__(session)
        cfg = session.cfg
        index, workers = session.shard
        self.convs = session.conversations
        self.order = list(range(index, len(self.convs), workers))
        self.cursor = itertools.count()       # turns this process sent
        self.starts = itertools.count()       # conversations this process started
        self.warmup = share(cfg.warmup, index, workers)
        self.limit = share(cfg.num_requests, index, workers) + self.warmup if cfg.num_requests else float("inf")
        self._tok = None

    def tokens(self, text: str) -> int:
        if self._tok is None:
            self._tok = datasets.tokenizer_for(self.session.cfg.tokenizer)
        from ..tokens import encode_lens
        return encode_lens(self._tok, [text or ""])[0]

    def _start(self) -> _Held | None:
        j = next(self.starts)
        if not self.order:
            return None  # more workers than conversations: this one has none
        passes, i = divmod(j, len(self.order))
        ci = self.order[i]
        conv = self.convs[ci]
        return _Held(ci, conv.id if passes == 0 else f"{conv.id}~{passes + 1}", conv)

    def next(self, user) -> Request | None:
        s, cfg = self.session, self.session.cfg
        held = user.state.get("conversation")
        n = next(self.cursor)
        if n >= self.limit:
            return None
        if held is None or held.k >= len(held.conv.turns):
            held = user.state["conversation"] = self._start()
            if held is None:
                return None
            t_sched = s.arrivals.next() if s.arrivals else None  # open loop: a new conversation arrives
        else:
            gevent.sleep(max(0.0, held.due - perf_counter()))  # think time
            t_sched = epoch(held.due) if s.arrivals else None  # open loop: due after its think time
        turn = held.conv.turns[held.k]
        messages = self.messages(held, turn.user)
        max_tokens = cfg.max_out_len if cfg.max_out_len_given else turn.max_tokens
        prompt = Prompt(held.index, messages, None, max_tokens)
        return Request(prompt, build_body(prompt, cfg, s.model), t_sched, WARMUP if n < self.warmup else s.stage,
                       conversation=held.id, turn=held.k + 1)

    def messages(self, held: _Held, text: str) -> list[dict]:
        """system + the kept turns + the new user message (--max-history-tokens drops the oldest turns)."""
        system = held.conv.system
        history = held.history
        cap = self.session.cfg.max_history_tokens
        if cap:
            budget = cap - self.tokens(text) - (self.tokens(system) if system else 0)
            kept, used = 0, 0
            for _, _, n in reversed(history):  # the newest turns first
                if used + n > budget:
                    break
                used += n
                kept += 1
            history = history[len(history) - kept:]
        out = [{"role": "system", "content": system}] if system else []
        for user_text, answer, _ in history:
            out += [{"role": "user", "content": user_text}, {"role": "assistant", "content": answer}]
        out.append({"role": "user", "content": text})
        return out

    def finished(self, user, request: Request, record: dict) -> None:
        held = user.state.get("conversation")
        if held is None or held.id != request.conversation:
            return
        if not record["success"]:
            user.state["conversation"] = None  # a failed turn ends its conversation (module doc)
            return
        turn = held.conv.turns[held.k]
        recorded = self.session.cfg.history == "recorded" and turn.answer is not None
        answer = turn.answer if recorded else record["completion"]
        n = self.tokens(turn.user) + self.tokens(answer) if self.session.cfg.max_history_tokens else 0
        held.history.append((turn.user, answer, n))
        held.k += 1
        if held.k < len(held.conv.turns):
            nxt = held.conv.turns[held.k]
            think = self.session.cfg.think_time
            think = think if think is not None else (nxt.think_s or 0.0)
            held.due = perf_counter() + max(0.0, think)
