"""Multi-turn conversations of the user's own: `.jsonl` or `.csv`.

JSONL, one conversation a line, either
  {"id"?: ..., "system"?: "...", "turns": [{"user": "...", "assistant"?: "...", "max_tokens"?: N,
   "think_time"?: S}, ...]}
or OpenAI-style {"id"?: ..., "messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}:
leading system messages make the system prompt, each user message opens a turn and an assistant
message right after it is that turn's recorded answer.
CSV, one turn a row, a header with `conversation_id` and `user` (required) and optional `turn` (the
turn's number, to sort by; default file order), `assistant`, `max_tokens`, `think_time`, `system` (on
any row of the conversation; every row that has one must say the same). A conversation's rows may be
anywhere in the file; conversations come in the order of their first row.

`assistant` is the dataset's recorded answer (optional: the model's own answer can be used instead);
`max_tokens` is that turn's output length; `think_time` the pause in seconds before that turn is sent.
A missing `id` is the conversation's line (JSONL) or its `conversation_id` (CSV). Errors are one line
naming the file, the line and what to fix.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

from . import DatasetError, jsonl_objects
from .custom import _max_tokens  # the same rule for a per-turn max_tokens as for a custom prompt's


@dataclass
class Turn:
    user: str
    answer: str | None = None      # the dataset's recorded assistant reply
    max_tokens: int | None = None
    think_s: float | None = None   # pause before this turn is sent


@dataclass
class Conversation:
    id: str
    turns: list[Turn]
    system: str | None = None


class Conversations(list):
    """A loader's conversations, with `source` and `dropped` ({reason: conversations left out})."""

    def __init__(self, items=(), source: str = "", dropped: dict | None = None):
        super().__init__(items)
        self.source = source
        self.dropped = dict(dropped or {})


def describe(convs) -> str:
    """One console line: conversations, turns, and what the loader left out."""
    turns = sum(len(c.turns) for c in convs)
    line = f"Conversations: {len(convs)} loaded, {turns} turns"
    source = getattr(convs, "source", "")
    if source:
        line += f" ({source})"
    dropped = getattr(convs, "dropped", {})
    if dropped:
        line += (f"; {sum(dropped.values())} left out by the loader's filters: "
                 + ", ".join(f"{n} {reason}" for reason, n in dropped.items()))
    return line


def load(path: str, num: int | None = None) -> Conversations:
    """The file's conversations (the first `num` when given)."""
    if not os.path.exists(path):
        raise DatasetError(f"--dataset-path {path}: no such file")
    if os.path.isdir(path):
        raise DatasetError(f"--dataset-path {path}: is a folder; conversations are a .jsonl or .csv file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".csv"):
        raise DatasetError(f"--dataset-path {path}: expected a conversation .jsonl or .csv file")
    convs = _read_csv(path) if ext == ".csv" else list(_read_jsonl(path))
    if not convs:
        raise DatasetError(f"{path}: no conversations in the file")
    if num:
        convs = convs[:int(num)]
    return Conversations(convs, source=f"conversations, {path}" + (" (--num-prompts: its first ones)"
                                                                   if num else ""))


# ------------------------------------------------------------------------------------ fields

def _text(where: str, value, name: str, required: bool) -> str | None:
    if value is None or value == "":
        if required:
            raise DatasetError(f"{where}: '{name}' is missing or empty")
        return None
    if not isinstance(value, str):
        raise DatasetError(f"{where}: '{name}' must be text, got {type(value).__name__}")
    return value


def _think(where: str, value) -> float | None:
    if value in (None, ""):
        return None
    try:
        s = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        s = None
    if s is None or not math.isfinite(s) or s < 0:
        raise DatasetError(f"{where}: 'think_time' must be seconds (a number >= 0), got {value!r}")
    return s


# ------------------------------------------------------------------------------------ JSONL

def _read_jsonl(path: str):
    for lineno, row in jsonl_objects(path):
        yield _conversation(f"{path}:{lineno}", row, default_id=f"line{lineno}")


def _conversation(where: str, row: dict, default_id: str) -> Conversation:
    cid = row.get("id")
    cid = default_id if cid in (None, "") else str(cid)
    if "turns" in row:
        turns = row["turns"]
        if not isinstance(turns, list) or not turns:
            raise DatasetError(f"{where}: 'turns' must be a non-empty list of {{\"user\", \"assistant\"?, "
                               "\"max_tokens\"?, \"think_time\"?}")
        out = []
        for k, t in enumerate(turns):
            w = f"{where}: turns[{k}]"
            if not isinstance(t, dict):
                raise DatasetError(f"{w} must be an object with a 'user' text")
            out.append(Turn(user=_text(w, t.get("user"), "user", True),
                            answer=_text(w, t.get("assistant"), "assistant", False),
                            max_tokens=_max_tokens(w, t.get("max_tokens")),
                            think_s=_think(w, t.get("think_time"))))
        return Conversation(cid, out, system=_text(where, row.get("system"), "system", False))
    if "messages" in row:
        return _from_messages(where, row["messages"], cid)
    raise DatasetError(f"{where}: expected 'turns' (a list of {{\"user\", \"assistant\"?}}) or 'messages' "
                       "(OpenAI-style {role, content})")


def _from_messages(where: str, messages, cid: str) -> Conversation:
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    system: list[str] = []
    turns: list[Turn] = []
    for k, m in enumerate(messages):
        w = f"{where}: messages[{k}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "user", "assistant"):
            raise DatasetError(f"{w} must be {{\"role\": system | user | assistant, \"content\": text}}")
        content = _text(w, m.get("content"), "content", True)
        if role == "system":
            if turns:
                raise DatasetError(f"{w}: a system message after the first user message; put system "
                                   "messages first")
            system.append(content)
        elif role == "user":
            turns.append(Turn(user=content))
        elif not turns:
            raise DatasetError(f"{w}: an assistant message before any user message")
        elif turns[-1].answer is not None:
            raise DatasetError(f"{w}: two assistant messages in a row; merge them")
        else:
            turns[-1].answer = content
    if not turns:
        raise DatasetError(f"{where}: 'messages' has no user message")
    return Conversation(cid, turns, system="\n\n".join(system) if system else None)


# ------------------------------------------------------------------------------------ CSV

def _read_csv(path: str) -> list[Conversation]:
    try:
        f = open(path, encoding="utf-8-sig", newline="")
    except OSError as e:
        raise DatasetError(f"--dataset-path {path}: cannot read it ({e.strerror})") from None
    groups: dict[str, list] = {}
    with f:
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{path}: empty file (expected a header row with conversation_id, user)")
            header = [h.strip() for h in header]
            missing = [c for c in ("conversation_id", "user") if c not in header]
            if missing:
                raise DatasetError(f"{path}: missing column {', '.join(repr(c) for c in missing)}; "
                                   f"columns: {', '.join(header)}")
            while True:
                try:
                    values = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    raise DatasetError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
                if not any(v.strip() for v in values):
                    continue
                where = f"{path}:{reader.line_num}"
                if len(values) != len(header):
                    raise DatasetError(f"{where}: expected {len(header)} fields ({', '.join(header)}), "
                                       f"got {len(values)}")
                row = dict(zip(header, values))
                cid = row["conversation_id"].strip()
                if not cid:
                    raise DatasetError(f"{where}: 'conversation_id' is empty")
                groups.setdefault(cid, []).append((where, row))
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: not UTF-8 text") from None
    convs = []
    for cid, rows in groups.items():
        order = []
        for where, row in rows:
            raw = row.get("turn", "").strip()
            if raw:
                try:
                    order.append(int(raw))
                except ValueError:
                    raise DatasetError(f"{where}: 'turn' must be an integer (the turn's number), "
                                       f"got {raw!r}") from None
            else:
                order.append(len(order))
        if len(set(order)) != len(order):
            dup = next(n for n in order if order.count(n) > 1)
            raise DatasetError(f"{rows[order.index(dup)][0]}: conversation {cid!r} has turn {dup} twice")
        systems = {row["system"] for _, row in rows if row.get("system")}
        if len(systems) > 1:
            first = next(row["system"] for _, row in rows if row.get("system"))
            where = next(w for w, row in rows if row.get("system") and row["system"] != first)
            raise DatasetError(f"{where}: conversation {cid!r} has two different 'system' prompts")
        turns = [Turn(user=_text(w, row["user"], "user", True),
                      answer=_text(w, row.get("assistant"), "assistant", False),
                      max_tokens=_max_tokens(w, row.get("max_tokens")),
                      think_s=_think(w, row.get("think_time")))
                 for _, (w, row) in sorted(zip(order, rows), key=lambda x: x[0])]
        convs.append(Conversation(cid, turns, system=systems.pop() if systems else None))
    return convs
