"""ShareGPT conversations (e.g. `ShareGPT_V3_unfiltered_cleaned_split.json`): a JSON list of
{"conversations": [{"from": "human" | "gpt", "value": ...}, ...]}.

As vLLM's benchmark (`sample_sharegpt_requests`): conversations are shuffled (seeded), the prompt is the
first human turn and the output length is the token count of the reply that follows it, unless a fixed
`max_out_len` is given; then conversations are dropped while prompt_len < 4, output_len < 4 (only when
the output length comes from the reply), prompt_len > 1024 or prompt_len + output_len > 2048, until
`num_prompts` are kept. Lengths are counted as vLLM does, `tokenizer(text).input_ids` (default special
tokens, no chat template), in bulk. The output length becomes the prompt's `max_tokens`.
"""
from __future__ import annotations

import json
import os

import numpy as np

from . import DatasetError, Prompt, Prompts

MIN_PROMPT_LEN = 4
MIN_OUTPUT_LEN = 4
MAX_PROMPT_LEN = 1024
MAX_TOTAL_LEN = 2048
HUMAN = ("human", "user")


NO_PAIR = "no human turn followed by a reply"


def pairs(path: str, counts: dict | None = None) -> list[tuple[str, str]]:
    """(first human turn, the reply after it) of every usable conversation, in file order.
    counts (optional): gets "conversations" (the file's items) and NO_PAIR (those without a pair)."""
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
