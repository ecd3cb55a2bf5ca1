"""A run's prefix-cache hit rate: achieved (what the server reports) against theoretical (the prompts as
sent, to an ideal cache).

Theoretical: at prepare time (off the -t clock), the run's prompts in send order go through benchmark/prefix_cache.py's
rule (full blocks of 16 tokens, chained keys, an unbounded cache, each request answered before the
next), twice: with the built-in simulator's tokens (whitespace words, role-marked in chat: exactly
what the simulator caches) and with the run's tokenizer (the chat template rendered as
benchmark/tokens.py counts inputs: close to what a real engine caches, when the tokenizer is the
model's). The send order is the order prompts are handed out (index order, cycled up to the run's
request limit, warm-up included; a multi-process run's shards interleave in nearly that order); a run without a limit (perf mode, stopped by time) is figured for one
pass over its prompts, and says so. Concurrent users and a multi-process run send in nearly that order;
within one pass an ideal cache's total barely depends on it (each block misses once; only the
last-token rule makes a prompt that is a whole-block prefix of another find one block less after it).
Kept in config.json under "prefix_cache_theory".

Achieved: the records' usage cached_tokens (metrics.prefix_cache_rows, per stage), and the server's
own counters in server_metrics/reconcile.py, which compares them with the theoretical figures.
"""
from __future__ import annotations

import math
import time

from . import backends, tokens
from .prefix_cache import BLOCK, PrefixCache, block_keys, max_hit_blocks, prompt_token_ids, request_words

KEY = "prefix_cache_theory"
# figured at prepare time up to this many prompt tokens (estimated from the characters: synthetic and
# trace words are ~5 characters a token): encoding takes ~2-8 s per million tokens, and a bigger run
# would wait that long before it starts
BUDGET_TOKENS = 1_000_000
CHARS_PER_TOKEN = 5


def plan(prompts: list, cfg, model: str, tokenizer) -> dict | None:
    """At prepare time, off Locust's -t clock (encoding every prompt takes ~8 s per million tokens on a
    busy 2-core machine): the theoretical figures of the prompts in the order the run hands them out
    (every prompt in index order, cycled up to --num-requests + --warmup, one pass when scored).
    None without prompts (a conversation run: its histories depend on the answers)."""
    if not prompts:
        return None
    chars = sum(len(m.get("content") or "") for p in prompts for m in p.messages if isinstance(m.get("content"), str))
    if chars > BUDGET_TOKENS * CHARS_PER_TOKEN:
        return {"skipped": f"about {chars // CHARS_PER_TOKEN:,} prompt tokens, over the {BUDGET_TOKENS:,} figured "
                           "before a run; cut the prompts with --num-prompts or --trace-window, or figure it "
                           "offline (README 'Prefix groups')"}
    limit = (cfg.num_requests + cfg.warmup if cfg.num_requests
             else len(prompts) + cfg.warmup if cfg.mode != "perf" else math.inf)
    try:
        return theory(prompts, list(range(len(prompts))), limit, cfg, model, tokenizer)
    except Exception as e:  # noqa: BLE001 - a second opinion: never stop a run for it
        return {"error": f"{type(e).__name__}: {e}"}


def prepare_line(figures: dict | None, built_to_share: bool) -> str:
    """The console line at prepare time: 'Prefix cache: theoretical hit rate ...' when the workload was
    built to share prefixes (a trace, synthetic --prefix-*) or its prompts share some anyway (a few-shot
    prompt); '' otherwise."""
    if not figures:
        return ""
    if "skipped" in figures:
        return f"Prefix cache: theoretical hit rate not figured ({figures['skipped']})" if built_to_share else ""
    fig = figures.get("tokenizer") or figures.get("words")
    if not isinstance(fig, dict) or not (built_to_share or fig["hit_rate"] > 0):
        return ""
    words = figures.get("words")
    also = f"; {100 * words['hit_rate']:.1f} % in the simulator's words" if "tokenizer" in figures and words else ""
    return (f"Prefix cache: theoretical hit rate {100 * fig['hit_rate']:.1f} % (block {figures['block']}) for "
            f"{figures['order']} ({fig['cached_tokens']} of {fig['prompt_tokens']} prompt tokens{also}); "
            "an ideal cache: compare with the server's after the run")


def keep(run, figures: dict | None) -> None:
    """At test start: the figures into the run's config.json (a worker, with no folder, keeps none)."""
    if run is None or run.dir is None or not figures:
        return
    run.config[KEY] = figures
    run._write_config()


def send_sequence(order: list, limit) -> tuple[list, str]:
    """Prompt indices in the order they are sent, and how that was decided."""
    if isinstance(limit, (int, float)) and math.isfinite(limit):
        n = int(limit)
        return [order[i % len(order)] for i in range(n)], f"{n} requests in send order"
    return list(order), f"one pass over the {len(order)} prompts (the run sends until stopped)"


def theory(prompts: list, order: list, limit, cfg, model: str, tokenizer, block: int = BLOCK) -> dict:
    """{"words": ..., "tokenizer": ...} ideal-cache figures of the prompts as sent (`tokenizer`: a callable
    giving it; when it fails, "tokenizer_error" says why and the words' figure stands)."""
    t0 = time.perf_counter()
    sequence, how = send_sequence(order, limit)
    used = sorted(set(sequence))
    backend = backends.get(cfg.backend)
    words = {i: request_words(backend.body(prompts[i], cfg, model), cfg.backend) for i in used}
    out = {"block": block, "requests": len(sequence), "order": how, "words": ideal(words, sequence, block)}
    try:
        tok = tokenizer()
        ids = dict(zip(used, _token_ids(tok, [prompts[i] for i in used], backend.CHAT)))
        out.update(tokenizer=ideal(ids, sequence, block), tokenizer_name=tokens.describe(tok))
    except Exception as e:  # noqa: BLE001 - no tokenizer at hand: the words' figure still holds
        out["tokenizer_error"] = f"{type(e).__name__}: {e}"
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def ideal(token_lists: dict, sequence: list, block: int = BLOCK) -> dict:
    """The ideal cache over `sequence` (indices into `token_lists`): prefix_cache.theoretical_hit_rate's
    figure, with each prompt's keys made once (a prompt sent again finds every block it may)."""
    cache, seen, cached, prompt = PrefixCache(None), set(), 0, 0
    for i in sequence:
        toks = token_lists[i]
        most = max_hit_blocks(len(toks), block)
        if i in seen:  # unbounded: all its blocks are still there
            hits = most
        else:
            seen.add(i)
            hits = cache.lookup_and_insert(block_keys(toks, block), most)
        cached += hits * block
        prompt += len(toks)
    return {"hit_rate": cached / prompt if prompt else 0.0, "cached_tokens": cached, "prompt_tokens": prompt}


def _token_ids(tok, prompts: list, chat: bool) -> list[list[int]]:
    """Each prompt's token ids as benchmark/tokens.py counts its input tokens."""
    if not chat:  # a text dialect sends the prompt as text; the server adds its special tokens
        return tokens.encode_ids(tok, [backends.prompt_text(p.messages) for p in prompts], add_special_tokens=True)
    return prompt_token_ids(tok, prompts)


def console_line(results, config: dict) -> str:
    """'Prefix cache: the server served X % of prompt tokens from cache (usage.cached_tokens), per stage
    ...; theoretical ...': '' when no request's usage had cached_tokens."""
    common = results.common
    rows = common[common["Common Metric"] == "Prefix Cache Hit Rate"] if len(common) else common
    if not len(rows):
        return ""
    per_stage = [(r["Stage"], r["Value"]) for _, r in rows.iterrows()]
    total = next((v for s, v in per_stage if s == "total"), math.nan)
    text = f"Prefix cache: the server served {_pct(total)} of prompt tokens from cache (usage.cached_tokens)"
    if len(per_stage) > 1:
        text += ", per stage " + ", ".join(f"{s} {_pct(v)}" for s, v in per_stage if s != "total")
    th = config.get(KEY) or {}
    figures = [f"{_pct(100 * th[key]['hit_rate'])} with {name}" for key, name in
               (("tokenizer", "the tokenizer"), ("words", "the simulator's words")) if isinstance(th.get(key), dict)]
    if figures:
        text += f"; theoretical, ideal cache of {th['block']}-token blocks, {th['order']}: " + ", ".join(figures)
    return text


def _pct(value: float) -> str:
    return f"{value:.1f} %" if isinstance(value, (int, float)) and math.isfinite(value) else "-"
