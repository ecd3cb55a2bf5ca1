"""Tokens per SSE event and the reasoning/answer split of a finished stream, after the stream.

`annotate(rec, usage, chunk_usage, tokenizer)` is called once per successful request (run.Run.record,
beside the output token count, never inside the receive loop). It sets these record fields:

- `reasoning_tokens`, `answer_tokens`, `reasoning_token_source`: only when the request had reasoning
  (a `reasoning_content`/`reasoning` delta, `<think>` text in the content, or usage saying
  reasoning_tokens > 0); else None. Source "usage": `usage.completion_tokens_details.reasoning_tokens`
  (OpenAI's and vLLM's field) when it is > 0, answer = output_tokens - reasoning; source "tokenizer":
  each part's text encoded without special tokens (as output tokens are counted without usage).
- `event_tokens`, `event_token_source`: tokens carried by each event, a list parallel to `events` (the
  `[offset, kind, chars]` triple is unchanged), or None when every content/reasoning event carries
  exactly one token and the others none (the usual stream: nothing worth storing). Sources:
  "usage"     - per-chunk usage (vLLM's stream_options.continuous_usage_stats): the differences of
                consecutive `completion_tokens`, exact; used only when every content/reasoning event has one;
  "one-per-event" - the final usage's completion_tokens equals the content/reasoning events (each of
                which carries at least one token), or exceeds them by one on finish_reason "stop" (the
                end-of-sequence token, counted by vLLM, carries no text);
  "tokenizer" - otherwise: the completion (and the reasoning) encoded once with offsets, each token
                given to the event that holds its last character (event char counts -> token
                boundaries). A re-tokenised text can cut differently from the server's tokens, so these
                counts are an estimate (an event may get 0 tokens, its neighbour 2); when they add up to
                the number of text events, each is taken as one (None).

Think blocks in the content (`<think>...</think>`, a model whose template does not split reasoning out):
the events inside a block are reclassified as reasoning, the tags counted as reasoning. The rule is
benchmark/accuracy/gsm8k.py strip_reasoning's (AISBench's extract_non_reasoning_content): every
`<think>...</think>` block is reasoning; a lone `</think>` with no `<think>` anywhere (the chat template
put `<think>` in the prompt) makes everything up to the last `</think>` reasoning. One addition: an
unclosed `<think>` (the answer was cut while thinking) makes the rest reasoning; strip_reasoning keeps
that text. An event holding both reasoning and answer characters (`...</think>The answer`) counts as
answer (content), so TTFO is when the first answer character arrived. The record's `completion` and
`reasoning` texts stay as the server sent them.
"""
from __future__ import annotations

import re
from bisect import bisect_right
from itertools import accumulate

from .records import CONTENT, REASONING, TOKEN_KINDS

THINK_START, THINK_END = "<think>", "</think>"
_BLOCK = re.compile(re.escape(THINK_START) + ".*?" + re.escape(THINK_END), re.DOTALL)


def think_spans(text: str) -> list[tuple[int, int]]:
    """Character ranges of `text` that are reasoning, by the rule in the module docstring."""
    if THINK_END in text and THINK_START not in text:
        return [(0, text.rindex(THINK_END) + len(THINK_END))]
    spans = [m.span() for m in _BLOCK.finditer(text)]
    tail = text.find(THINK_START, spans[-1][1] if spans else 0)
    if tail >= 0:  # unclosed: still thinking when the answer ended
        spans.append((tail, len(text)))
    return spans


def _split_think(rec: dict) -> tuple[list[tuple[int, int]], set[int]]:
    """Reclassify the content events inside think blocks as reasoning (in place): the blocks' spans and
    the indices of the events reclassified."""
    text = rec["completion"]
    if THINK_START not in text and THINK_END not in text:
        return [], set()
    spans, moved, pos = think_spans(text), set(), 0
    for i, ev in enumerate(rec["events"]):
        if ev[1] == CONTENT:
            a, b = pos, pos + ev[2]
            pos = b
            if b > a and _covered(a, b, spans):  # every character inside a block
                ev[1] = REASONING
                moved.add(i)
    return spans, moved


def _covered(a: int, b: int, spans) -> bool:
    return any(s <= a and b <= e for s, e in spans)


def _count(value) -> int | None:
    return value if type(value) is int and value >= 0 else None


def annotate(rec: dict, usage: dict, chunk_usage: list | None, tokenizer) -> None:
    """Set the reasoning and per-event token fields of a successful record (see the module docstring).
    `tokenizer`: a callable giving the tokenizer, called only when one is needed."""
    spans, moved = _split_think(rec)
    events = rec["events"]
    think_text = "".join(rec["completion"][a:b] for a, b in spans)
    answer_text = _outside(rec["completion"], spans)
    details = usage.get("completion_tokens_details") if isinstance(usage, dict) else None
    usage_reasoning = _count(details.get("reasoning_tokens")) if isinstance(details, dict) else None
    has_reasoning = bool(rec["reasoning"] or spans or usage_reasoning)
    rec["reasoning_tokens"] = rec["answer_tokens"] = rec["reasoning_token_source"] = None
    if has_reasoning:
        # usage's 0 beside reasoning text it did not count (a server that fills the field with 0): tokenizer
        if usage_reasoning and rec.get("token_source") == "usage":
            rec["reasoning_tokens"] = usage_reasoning
            rec["answer_tokens"] = max(0, int(rec["output_tokens"] or 0) - usage_reasoning)
            rec["reasoning_token_source"] = "usage"
        else:
            from .tokens import count_outputs
            r, a = count_outputs(tokenizer(), [rec["reasoning"] + think_text, answer_text])
            rec["reasoning_tokens"], rec["answer_tokens"], rec["reasoning_token_source"] = r, a, "tokenizer"
    rec["event_tokens"], rec["event_token_source"] = _per_event(rec, events, usage, chunk_usage, tokenizer, moved)


def _outside(text: str, spans) -> str:
    out, pos = [], 0
    for a, b in spans:
        out.append(text[pos:a])
        pos = b
    out.append(text[pos:])
    return "".join(out)


def _per_event(rec, events, usage, chunk_usage, tokenizer, moved) -> tuple[list | None, str | None]:
    token_events = [i for i, ev in enumerate(events) if ev[1] in TOKEN_KINDS]
    if not token_events:
        return None, None
    if chunk_usage:
        counts = [0] * len(events)
        with_usage, last = set(), 0
        ok = True
        for i, n in chunk_usage:
            n = _count(n)
            if n is None or n < last:
                ok = False
                break
            counts[i] += n - last
            last = n
            with_usage.add(i)
        if ok and with_usage.issuperset(token_events):
            return (None if _one_each(counts, events) else counts), "usage"
    total = _count(usage.get("completion_tokens")) if isinstance(usage, dict) else None
    n = len(token_events)
    if total and (total == n or (total == n + 1 and rec.get("finish_reason") == "stop")):
        return None, "one-per-event"
    return _aligned(rec, events, tokenizer(), moved)


def _one_each(counts: list[int], events: list) -> bool:
    return all(c == (ev[1] in TOKEN_KINDS) for c, ev in zip(counts, events))


def _aligned(rec, events, tok, moved: set) -> tuple[list | None, str]:
    """Tokenizer counts per event: the completion and the reasoning text each encoded once with offsets,
    a token given to the event that holds its last character. Content events and reclassified think
    events take their characters from the completion in order, the other reasoning events from the
    reasoning field; events that are neither content nor reasoning get 0."""
    counts = [0] * len(events)
    owners = {"completion": [], "reasoning": []}
    for i, ev in enumerate(events):
        if ev[1] in TOKEN_KINDS:
            owners["reasoning" if ev[1] == REASONING and i not in moved else "completion"].append(i)
    for name, idx in owners.items():
        text = rec[name]
        if not idx or not text:
            continue
        ends = list(accumulate(events[i][2] for i in idx))  # cumulative char ends of the events
        for _start, end in _offsets(tok, text):
            j = min(bisect_right(ends, max(end - 1, 0)), len(idx) - 1)
            counts[idx[j]] += 1
    # as many tokens as text events: one each, however the re-tokenised text happened to cut (a 2 and a 0
    # would be an artefact of the estimate, not a multi-token event)
    one_each = sum(counts[i] for i in owners["completion"] + owners["reasoning"]) == len(owners["completion"]) + len(
        owners["reasoning"])
    return (None if one_each or _one_each(counts, events) else counts), "tokenizer"


def _offsets(tok, text: str):
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        return backend.encode(text, add_special_tokens=False).offsets
    return tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
