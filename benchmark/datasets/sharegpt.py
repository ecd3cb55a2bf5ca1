"""ShareGPT conversations (e.g. `ShareGPT_V3_unfiltered_cleaned_split.json`): a JSON list of
{"conversations": [{"from": "human" | "gpt", "value": ...}, ...]}.

As vLLM's benchmark (`sample_sharegpt_requests`): conversations are shuffled (seeded), the prompt is the
first human turn and the output length is the token count of the reply that follows it, unless a fixed
`max_out_len` is given; then conversations are dropped while prompt_len < 4, output_len < 4 (only when
the output length comes from the reply), prompt_len > 1024 or prompt_len + output_len > 2048, until
`num_prompts` are kept. Lengths are counted as vLLM does, `tokenizer(text).input_ids` (default special
tokens, no chat template), in bulk. The output length becomes the prompt's `max_tokens`.

`load_conversations` uses the conversations whole (`--multi-turn`): each human turn and the reply after
it is one Turn, the reply its recorded answer and (unless `max_out_len` is given) its token count that
turn's max_tokens. Leading system turns become the system prompt; replies before the first human
turn (ShareGPT's greetings) and a last human turn without a reply are cut (the conversation is kept);
conversations with a system turn further in, two human turns or two replies in a row, or an empty or
non-text turn are left out and counted in `dropped`, as are those with no human turn and reply.
Shuffled with `seed` as `load` is, then the first `num` are kept.
"""
from __future__ import annotations

import json
import os

import numpy as np

from . import DatasetError, Prompt, Prompts
from .conversations import Conversation, Conversations, Turn

MIN_PROMPT_LEN = 4
MIN_OUTPUT_LEN = 4
MAX_PROMPT_LEN = 1024
MAX_TOTAL_LEN = 2048
HUMAN = ("human", "user")


NO_PAIR = "no human turn followed by a reply"


def _read(path: str) -> list:
    if not os.path.isfile(path):
        raise DatasetError(f"--dataset-path {path}: no such file")
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except OSError as e:
        raise DatasetError(f"--dataset-path {path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    except ValueError as e:
        raise DatasetError(f"{path}: not valid JSON ({getattr(e, 'msg', e)} at line "
                           f"{getattr(e, 'lineno', '?')})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of {{\"conversations\": [...]}} objects")
    return data


def pairs(path: str, counts: dict | None = None) -> list[tuple[str, str]]:
    """(first human turn, the reply after it) of every usable conversation, in file order.
    counts (optional): gets "conversations" (the file's items) and NO_PAIR (those without a pair)."""
    data = _read(path)
    out = []
    for item in data:
        conv = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(conv, list) or len(conv) < 2:
            continue
        for k, turn in enumerate(conv[:-1]):
            if isinstance(turn, dict) and turn.get("from") in HUMAN:
                reply = conv[k + 1]
                if (isinstance(turn.get("value"), str) and isinstance(reply, dict)
                        and reply.get("from") not in HUMAN and isinstance(reply.get("value"), str)):
                    out.append((turn["value"], reply["value"]))
                break
    if counts is not None:
        counts["conversations"] = len(data)
        counts[NO_PAIR] = len(data) - len(out)
    return out


def load(path: str, num_prompts: int = 1000, seed: int = 0, tokenizer=None,
         max_out_len: int | None = None) -> list[Prompt]:
    from ..tokens import encode_lens, load_tokenizer
    tok = tokenizer if tokenizer is not None else load_tokenizer(None)
    counts: dict = {}
    convs = pairs(path, counts)
    dropped = {NO_PAIR: counts[NO_PAIR]}
    if not convs:
        raise DatasetError(f"{path}: no conversation with a human turn followed by a reply")
    order = np.random.default_rng(seed).permutation(len(convs))
    fixed = int(max_out_len) if max_out_len else None
    kept: list[tuple[str, int]] = []
    chunk = max(256, 2 * num_prompts)
    for start in range(0, len(order), chunk):
        batch = [convs[i] for i in order[start:start + chunk]]
        p_lens = encode_lens(tok, [p for p, _ in batch], add_special_tokens=True)
        o_lens = ([fixed] * len(batch) if fixed else
                  encode_lens(tok, [r for _, r in batch], add_special_tokens=True))
        for (prompt, _), p_len, o_len in zip(batch, p_lens, o_lens):
            reason = (f"prompt under {MIN_PROMPT_LEN} tokens" if p_len < MIN_PROMPT_LEN else
                      f"reply under {MIN_OUTPUT_LEN} tokens" if fixed is None and o_len < MIN_OUTPUT_LEN else
                      f"prompt over {MAX_PROMPT_LEN} tokens" if p_len > MAX_PROMPT_LEN else
                      f"prompt + reply over {MAX_TOTAL_LEN} tokens" if p_len + o_len > MAX_TOTAL_LEN else None)
            if reason:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            kept.append((prompt, o_len))
            if len(kept) == num_prompts:
                break
        if len(kept) == num_prompts:
            break
    if not kept:
        raise DatasetError(f"{path}: no conversation passed the length filters (prompt 4-1024 tokens, "
                           "reply at least 4, both at most 2048)")
    return Prompts([Prompt(index=i, messages=[{"role": "user", "content": p}], max_tokens=o)
                    for i, (p, o) in enumerate(kept)],
                   source=f"sharegpt, {counts['conversations']} conversations in {path}",
                   dropped={k: v for k, v in dropped.items() if v})


SYSTEM_INSIDE = "system turn after the first human turn"
BROKEN = "two human turns or two replies in a row"
MALFORMED = "empty or non-text turn"


def _turns(conv: list) -> tuple[str | None, list[tuple[str, str]]] | str:
    """(system prompt, [(human, reply)]) of one ShareGPT conversation, or the reason to leave it out."""
    system: list[str] = []
    k = 0
    while k < len(conv) and isinstance(conv[k], dict) and conv[k].get("from") == "system":
        system.append(conv[k].get("value"))
        k += 1
    while k < len(conv) and isinstance(conv[k], dict) and conv[k].get("from") not in (*HUMAN, "system"):
        k += 1   # replies before the first human turn: cut
    rest = conv[k:]
    if any(not isinstance(t, dict) or not isinstance(t.get("value"), str) or not t["value"].strip()
           for t in rest) or any(not isinstance(v, str) or not v.strip() for v in system):
        return MALFORMED
    if any(t.get("from") == "system" for t in rest):
        return SYSTEM_INSIDE
    if rest and rest[-1].get("from") in HUMAN:
        rest = rest[:-1]  # a last question without a reply: nothing sizes its output, cut
    out = []
    for j in range(0, len(rest) - 1, 2):
        human, reply = rest[j], rest[j + 1]
        if human.get("from") not in HUMAN or reply.get("from") in HUMAN:
            return BROKEN
        out.append((human["value"], reply["value"]))
    if len(rest) % 2:
        return BROKEN   # an odd length after the cuts: two of a kind in a row somewhere
    if not out:
        return NO_PAIR
    return ("\n\n".join(system) if system else None), out


def load_conversations(path: str, num: int = 1000, seed: int = 0, tokenizer=None,
                       max_out_len: int | None = None) -> Conversations:
    """ShareGPT conversations used whole: see the module's docstring."""
    from ..tokens import encode_lens, load_tokenizer
    data = _read(path)
    dropped = {NO_PAIR: 0, MALFORMED: 0, SYSTEM_INSIDE: 0, BROKEN: 0}
    usable = []
    for i, item in enumerate(data):
        conv = item.get("conversations") if isinstance(item, dict) else None
        got = _turns(conv) if isinstance(conv, list) else NO_PAIR
        if isinstance(got, str):
            dropped[got] += 1
            continue
        cid = item.get("id")
        usable.append((str(cid) if cid not in (None, "") else f"sharegpt-{i}", *got))
    if not usable:
        raise DatasetError(f"{path}: no conversation with a human turn followed by a reply")
    order = np.random.default_rng(seed).permutation(len(usable))
    chosen = [usable[i] for i in order[:int(num)]] if num else [usable[i] for i in order]
    if max_out_len:
        lens = None
    else:
        tok = tokenizer if tokenizer is not None else load_tokenizer(None)
        lens = iter(encode_lens(tok, [r for _, _, turns in chosen for _, r in turns], add_special_tokens=True))
    convs = [Conversation(cid, [Turn(user=h, answer=r, max_tokens=int(max_out_len) if lens is None else next(lens))
                                for h, r in turns], system=system)
             for cid, system, turns in chosen]
    return Conversations(convs, source=f"sharegpt conversations, {len(data)} in {path}",
                         dropped={k: v for k, v in dropped.items() if v})
