"""The prefix-cache block rule, shared by the simulator's cache and the client's theoretical hit rate.

As vLLM's automatic prefix caching does it (vllm/v1/core/kv_cache_utils.py hash_request_tokens,
vllm/v1/core/kv_cache_manager.py get_computed_blocks):
- a prompt's tokens are cut into blocks of `block` tokens; only full blocks are cached (a partial tail
  never is);
- each block's key is the hash of the parent block's key and this block's tokens, so a key stands for
  the whole prefix up to the block's end (a chain): equal keys mean equal prefixes;
- a request's hits are its blocks found in the cache from the start until the first miss, and at most
  (tokens - 1) // block blocks: when the whole prompt is cached the engine still recomputes its last
  token to get the logits, so a prompt of exactly k full blocks finds at most k - 1 of them;
- cached tokens = hit blocks x block; the request then stores all its full blocks.
`PrefixCache` is bounded (LRU eviction of blocks: the least recently found or stored goes first);
`theoretical_hit_rate` is the ideal: an unbounded cache and requests answered one after the other.

Tokens are whatever the caller passes (token ids, or the simulator's whitespace words): a real engine's
tokens differ from the simulator's words, so the two give different figures for the same prompts.
Keys are Python hashes: stable within one process, which is all a cache needs.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

BLOCK = 16  # vLLM's default block size on GPUs


def block_keys(tokens: Sequence, block: int = BLOCK) -> list:
    """The chained keys of the full blocks of `tokens` (the tail of fewer than `block` tokens has none)."""
    keys, parent = [], None
    for end in range(block, len(tokens) + 1, block):
        parent = hash((parent, tuple(tokens[end - block:end])))
        keys.append(parent)
    return keys


def max_hit_blocks(n_tokens: int, block: int = BLOCK) -> int:
    """Most blocks a prompt of n tokens can find: its last token is always computed again."""
    return max(n_tokens - 1, 0) // block


class PrefixCache:
    """Full blocks by chained key, at most `capacity_blocks` of them, least recently used evicted first."""

    def __init__(self, capacity_blocks: int | None):
        self.capacity = None if capacity_blocks is None else max(0, int(capacity_blocks))  # None: unbounded
        self.blocks: OrderedDict = OrderedDict()  # key -> None, least recently used first

    def lookup_and_insert(self, keys: Sequence, max_hits: int | None = None) -> int:
        """Blocks of `keys` found from the start until the first miss (at most `max_hits`), then every
        key stored as most recently used, the first most of all; the least recently used are evicted.
        Returns the hit blocks."""
        blocks = self.blocks
        limit = len(keys) if max_hits is None else min(max_hits, len(keys))
        hits = 0
        while hits < limit and keys[hits] in blocks:
            hits += 1
        for key in reversed(keys):  # the tail least recent: evicted first, as vLLM frees a request's blocks
            if key in blocks:
                blocks.move_to_end(key)
            else:
                blocks[key] = None
        while self.capacity is not None and len(blocks) > self.capacity:
            blocks.popitem(last=False)
        return hits


def theoretical_hit_rate(token_id_lists_in_send_order, block: int = BLOCK) -> tuple[float, int, int]:
    """(hit rate, cached tokens, prompt tokens) of these prompts sent one after the other to an ideal
    (unbounded) cache by the rule above; hit rate 0.0 when there are no prompt tokens."""
    cache = PrefixCache(capacity_blocks=None)
    cached = prompt = 0
    for tokens in token_id_lists_in_send_order:
        hits = cache.lookup_and_insert(block_keys(tokens, block), max_hit_blocks(len(tokens), block))
        cached += hits * block
        prompt += len(tokens)
    return (cached / prompt if prompt else 0.0), cached, prompt


def word_tokens(text: str) -> list[str]:
    """The simulator's tokens of a text prompt: its whitespace words (`len(text.split())` = its count)."""
    return text.split()


def message_text(content) -> str:
    """A chat message's content as the simulator reads it: a string, or the text parts of a list, joined
    with spaces."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return ""


def chat_word_tokens(messages: Sequence[dict]) -> list[str]:
    """The simulator's tokens of a chat request's messages, in order: the words of each message, the
    first word of each carrying its role, so the same words split into messages differently give
    different tokens while the count stays the number of words (the usage count). A message with no
    words leaves no mark."""
    out = []
    for m in messages:
        role, words = m.get("role"), message_text(m.get("content")).split()
        if words:
            words[0] = f"<{role}>{words[0]}"
            out += words
    return out


def request_words(body: dict, dialect: str) -> list[str]:
    """The simulator's tokens of a request body in a dialect of benchmark/backends (what its cache keys):
    the chat messages' words as `chat_word_tokens` marks them, else the prompt text's words."""
    if dialect == "openai-chat":
        return chat_word_tokens(body.get("messages") or [])
    prompt = body.get({"openai": "prompt", "triton": "text_input"}.get(dialect, "inputs"))
    if isinstance(prompt, list):  # /v1/completions takes a list of strings or token ids: one text
        prompt = " ".join(map(str, prompt))
    return word_tokens(prompt) if isinstance(prompt, str) else []


def prompt_token_ids(tokenizer, prompts) -> list[list[int]]:
    """The token ids a server would see for each Prompt's messages, as benchmark/tokens.py counts input
    tokens: the chat template when the tokenizer has one (which writes its special tokens itself), else
    the contents joined, with the default special tokens."""
    from .tokens import encode_ids, input_text
    rendered = [input_text(tokenizer, p.messages) for p in prompts]
    out: list = [None] * len(rendered)
    for templated in (True, False):
        idx = [i for i, (_, t) in enumerate(rendered) if t is templated]
        for i, ids in zip(idx, encode_ids(tokenizer, (rendered[i][0] for i in idx), not templated)):
            out[i] = ids
    return out


def describe(token_id_lists: Iterable[Sequence[int]], block: int = BLOCK) -> str:
    """The console line for the prompts in send order."""
    rate, cached, total = theoretical_hit_rate(token_id_lists, block)
    return (f"Prefix cache: theoretical hit rate {100 * rate:.1f} % (block {block}) for the prompts in "
            f"send order ({cached} of {total} prompt tokens)")


def describe_prompts(prompts, tokenizer, block: int = BLOCK) -> str:
    """The console line for a list of Prompts in send order, tokenized as the server sees them (this
    encodes every prompt: about 8 s per million tokens on a busy 2-core machine)."""
    return describe(prompt_token_ids(tokenizer, prompts), block)
