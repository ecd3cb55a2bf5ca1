"""RequestRecord schema, an append-only JSONL sink that survives SIGKILL, and a tolerant reader.

A record is a plain dict (cheap to build and to serialise on the hot path). `events` holds one
`[offset_s, kind, n_chars]` per SSE `data:` event, offsets from `t_send` measured with perf_counter.

Attempts: `t_send` (and so every latency) is the send time of the attempt whose answer is recorded;
`t_first_send` (epoch s) that of the request's first attempt, equal to `t_send` when it was sent once.
`attempts` = 1 + `resends` + `retries`: a resend went out again at once because its first send on a
kept-alive connection provably never left (the connection was already dead); a retry is an attempt
`--retry` allowed after a failed one. Records written before these three fields read them as None.
"""
from __future__ import annotations

import json
import os

import orjson

FIELDS = (
    "id", "worker", "user", "stage", "dataset", "prompt_index", "t_sched", "t_send", "events",
    "input_tokens", "output_tokens", "token_source", "completion", "reasoning", "finish_reason",
    "reference", "success", "error", "http_status", "attempts", "request_id",
    "t_first_send", "resends", "retries",
    # after the stream, by event_tokens.annotate (see there): the reasoning/answer split, tokens per event
    "reasoning_tokens", "answer_tokens", "reasoning_token_source", "event_tokens", "event_token_source",
    # multi-turn workloads (workloads/conversations.py): the conversation's id and the 1-based turn; None else
    "conversation", "turn",
    # usage.prompt_tokens_details.cached_tokens: prompt tokens the server's prefix cache found (None: not sent)
    "cached_tokens",
)

# event kinds, as DESIGN.md names them
ROLE, CONTENT, REASONING, USAGE, OTHER = "role", "content", "reasoning", "usage", "other"
TOKEN_KINDS = (CONTENT, REASONING)


def figures(rec: dict) -> dict:
    """One finished record's per-request figures, DESIGN.md's default definitions (as the web UI tab's):
    seconds, None where not measured (a failure, a non-streamed answer). What events.llm_request and
    the `context` of Locust's request event carry (benchmark/user.py)."""
    events_ = rec.get("events") or []
    tok = [e[0] for e in events_ if e[1] in TOKEN_KINDS]
    e2el = events_[-1][0] if events_ and rec["success"] else None
    streamed = rec["success"] and len(events_) > 1 and tok
    out = rec.get("output_tokens") or 0
    ttft = tok[0] if streamed else None
    return {"ttft_s": ttft, "tpot_s": (e2el - ttft) / (out - 1) if streamed and out > 1 else None,
            "itl_s": [b - a for a, b in zip(tok, tok[1:])] if streamed else [],
            "e2el_s": e2el, "input_tokens": rec.get("input_tokens"), "output_tokens": rec.get("output_tokens"),
            "stage": rec["stage"], "conversation": rec.get("conversation"), "turn": rec.get("turn"),
            "success": rec["success"], "error": rec["error"] or None}


def new_record(**values) -> dict:
    """A record with every field present (None / empty where unknown)."""
    rec = dict.fromkeys(FIELDS)
    rec.update(events=[], completion="", reasoning="", error="", success=False, stage="total")
    rec.update(values)
    unknown = set(rec) - set(FIELDS)
    if unknown:
        raise KeyError(f"unknown record fields: {sorted(unknown)}")
    return rec


class RecordSink:
    """One JSON line per record, written with a single os.write on an O_APPEND descriptor.

    No user-space buffer: once write() returns the line belongs to the kernel, so a process killed
    with SIGKILL keeps every finished record, and concurrent writers never interleave lines.
    """

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.count = 0

    def write(self, record: dict) -> None:
        # orjson: ~6x faster than json.dumps, and this runs for every request inside the load test
        try:
            line = orjson.dumps(record, default=_plain)
        except TypeError:  # e.g. a lone surrogate in the text (half an emoji): json escapes it
            line = json.dumps(record, default=_plain).encode()
        os.write(self._fd, line + b"\n")
        self.count += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _plain(value):
    """What orjson leaves to us (numpy numbers, subclasses of float and int), written as json would."""
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    if hasattr(value, "item"):  # a numpy scalar
        return value.item()
    raise TypeError(f"a record field of type {type(value).__name__} cannot be written as JSON")


def jsonl_dicts(path: str):
    """Each non-blank line of a JSONL file as a dict, or None where the line is unreadable (cut short by
    a crash, broken UTF-8, not an object)."""
    with open(path, "rb") as f:  # bytes: a line of broken UTF-8 is skipped like any unreadable line
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                obj = None
            yield obj if isinstance(obj, dict) else None


def read_records(path: str) -> tuple[list[dict], int]:
    """Every complete record in `path`, and the number of lines skipped as unreadable
    (e.g. a line cut short by a crash). Missing fields are filled with their defaults."""
    records, skipped = [], 0
    for obj in jsonl_dicts(path):
        if obj is None:
            skipped += 1
            continue
        rec = new_record()
        rec.update({k: v for k, v in obj.items() if k in rec})
        records.append(rec)
    return records, skipped
