"""The hit rate an ideal prefix cache would reach on a run's prompts, in send order.

The block rule is vLLM's automatic prefix caching (vllm/v1/core/kv_cache_manager.py,
`get_computed_blocks`; the hashes in kv_cache_utils.py `hash_request_tokens`): prompts are cut into
full blocks of `block` tokens, each block keyed by the whole prefix up to its end (a chained hash), and
a request is served the longest run of leading blocks already cached, capped at `prompt_len - 1` tokens
(the last token is always recomputed to get the logits). After a request, all of its full prompt
blocks are cached. "Ideal": unbounded (nothing is ever evicted) and every earlier request has finished
before the next one is looked up. Generated tokens are not counted: a conversation whose next turn
repeats the model's own answer can hit more on a real engine than this says.

`PrefixCache` is the rule with state (the simulator's cache reuses it); `theoretical_hit_rate` runs it
over a list of prompts.
"""
from __future__ import annotations

from typing import Iterable, Sequence

DEFAULT_BLOCK = 16   # vLLM's default --block-size on GPUs


class PrefixCache:
    """An unbounded block-granular prefix cache. Blocks are keyed exactly, by (parent block's key,
    this block's tokens): no hash collisions, and two prompts share a key only if their whole
    prefixes up to that block are equal."""

    def __init__(self, block: int = DEFAULT_BLOCK):
        if int(block) < 1:
            raise ValueError(f"block must be at least 1 token; got {block}")
        self.block = int(block)
        self._keys: dict[tuple, int] = {}

    def lookup(self, tokens: Sequence[int]) -> int:
        """Prompt tokens the cache serves now: leading cached full blocks, at most len(tokens) - 1."""
        b = self.block
        limit = (len(tokens) - 1) // b if len(tokens) else 0
        parent, hit = -1, 0
        while hit < limit:
            found = self._keys.get((parent, tuple(tokens[hit * b:(hit + 1) * b])))
            if found is None:
                break
            parent, hit = found, hit + 1
        return hit * b

    def insert(self, tokens: Sequence[int]) -> None:
        """Cache every full block of the prompt."""
        parent = -1
        b = self.block
        for end in range(b, len(tokens) + 1, b):
            key = (parent, tuple(tokens[end - b:end]))
            found = self._keys.get(key)
            if found is None:
                found = self._keys[key] = len(self._keys)
            parent = found

    def serve(self, tokens: Sequence[int]) -> int:
        """One request: its cached tokens, then its blocks are cached."""
        hit = self.lookup(tokens)
        self.insert(tokens)
        return hit


def theoretical_hit_rate(token_id_lists: Iterable[Sequence[int]], block: int = DEFAULT_BLOCK
                         ) -> tuple[float, int, int]:
    """(hit rate, cached tokens, prompt tokens) of an ideal prefix cache over the prompts' token ids
    in send order; hit rate = cached / prompt tokens (0.0 when there are no tokens)."""
    cache = PrefixCache(block)
    cached = total = 0
    for tokens in token_id_lists:
        tokens = list(tokens)
        cached += cache.serve(tokens)
        total += len(tokens)
    return (cached / total if total else 0.0), cached, total


def prompt_token_ids(tokenizer, prompts) -> list[list[int]]:
    """The token ids a server would see for each Prompt's messages: the chat template when the
    tokenizer has one (encoded without added special tokens), else the contents joined (with the
    default special tokens), as benchmark/tokens.py counts inputs."""
    from .tokens import input_text
    rendered = [input_text(tokenizer, p.messages) for p in prompts]
    out: list[list[int]] = [[] for _ in rendered]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    for templated in (True, False):
        idx = [i for i, (_, t) in enumerate(rendered) if t is templated]
        if not idx:
            continue
        texts = [rendered[i][0] for i in idx]
        if backend is not None:
            enc = backend.encode_batch(texts, add_special_tokens=not templated)
            ids = [e.ids for e in enc]
        else:
            ids = tokenizer(texts, add_special_tokens=not templated)["input_ids"]
        for i, row in zip(idx, ids):
            out[i] = list(row)
    return out


def describe(token_id_lists: Iterable[Sequence[int]], block: int = DEFAULT_BLOCK) -> str:
    """The console line for the prompts in send order."""
    rate, cached, total = theoretical_hit_rate(token_id_lists, block)
    return (f"Prefix cache: theoretical hit rate {100 * rate:.1f} % (block {block}) for the prompts in "
            f"send order ({cached} of {total} prompt tokens)")


def describe_prompts(prompts, tokenizer, block: int = DEFAULT_BLOCK) -> str:
    """The console line for a list of Prompts in send order, tokenized as the server sees them (this
    encodes every prompt: about 8 s per million tokens on a busy 2-core machine)."""
    return describe(prompt_token_ids(tokenizer, prompts), block)
