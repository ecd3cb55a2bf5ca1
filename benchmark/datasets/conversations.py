"""Multi-turn conversations: the data classes the conversation workload (workloads/conversations.py) runs.

PLACEHOLDER until Helper E's loaders merge (issue 16): the same two data classes, and a minimal reader
of a JSONL file with one conversation per line, in these classes' own field names:
  {"id": "c1", "system": "optional", "turns": [{"user": "...", "answer": "optional recorded reply",
   "max_tokens": 64, "think_s": 1.5}, ...]}
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from . import DatasetError


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


def load(path: str, num_conversations: int = 0, **_) -> list[Conversation]:
    if not path or not os.path.isfile(path):
        raise DatasetError(f"--dataset-path {path}: no such file")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                turns = [Turn(**t) for t in obj["turns"]]
                if not turns or not all(isinstance(t.user, str) for t in turns):
                    raise ValueError("no turns")
                out.append(Conversation(str(obj.get("id", len(out))), turns, obj.get("system")))
            except (ValueError, KeyError, TypeError) as e:
                raise DatasetError(f"{path}:{n}: not a conversation ({e})") from None
            if num_conversations and len(out) >= num_conversations:
                break
    if not out:
        raise DatasetError(f"{path}: no conversation")
    return out
