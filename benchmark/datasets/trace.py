"""Timestamped request traces, replayed on their own timeline.

Formats (by extension, then by header):
- `.jsonl`: AISBench/Mooncake trace lines (AISBench ais_bench/benchmark/datasets/mooncake_trace.py, its
  configs/datasets/mooncake_trace/README_en.md): `timestamp` (ms, >= 0, required here: a replay needs
  it), `input_length` (tokens), `output_length` (tokens; absent: the run's --max-out-len), `hash_ids`
  (one id per block of 512 tokens: the first n-1 blocks are full, the last has input_length - 512*(n-1)
  tokens, which must be 1..512), or `input_text` (sent as is; input_length and hash_ids then ignored).
- `.csv` with a header, detected by its column names:
  Azure LLM inference traces (`TIMESTAMP`, `ContextTokens`, `GeneratedTokens`; datetime timestamps),
  BurstGPT (`Timestamp` in s, `Request tokens`, `Response tokens`; its other columns are ignored, and
  rows with 0 response tokens, failed requests in BurstGPT, are left out and counted).
Timeline: t = 0 is the trace's earliest request (a CSV row left out included: the timeline is the file's). `start_s` and `window_s` cut the window
[start_s, start_s + window_s) of the trace's own time, then `speed` scales it (2 = twice as fast):
t = (time since the first request - start_s) / speed. Requests are sorted by time (ties keep file
order); `num` keeps the first N of the window.

`prompt_for(req, tokenizer)` builds the prompt text. Each hash id is a block of single-token words
(the word tables of synthetic.py: every word costs one token after a space, so a prompt of n words is
n tokens and block boundaries never merge), fixed by the id alone: its first 5 words spell the id
(through a bijection of 64-bit numbers; other ids are hashed to 64 bits; so different ids differ
within their first 5 tokens), the rest is filler drawn from a generator
seeded by the id. A partial last block is the first tokens of that id's full block. So equal ids at
the same position give identical token blocks, exactly, in the chosen tokenizer. The prompt's very
first word is written without a space before it (a chat template may trim one): its token is then
the start-of-text form of the same word, so a hash id used both at position 0 and elsewhere (Mooncake
traces never do: their ids hash the whole prefix) differs in that one token.
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
from dataclasses import dataclass

import numpy as np

from . import DatasetError, Prompt, jsonl_objects

BLOCK_TOKENS = 512
ID_WORDS = 5                # words that spell a block's id: heads x mid^4 > 2^64
AZURE = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT = ("Timestamp", "Request tokens", "Response tokens")


@dataclass
class TraceRequest:
    index: int
    t: float                 # s after the window's start (after speed/offset/window)
    input_tokens: int
    output_tokens: int       # 0: not in the trace (the run's --max-out-len applies)
    hash_ids: tuple | None = None
    text: str | None = None


class Traces(list):
    """A trace's requests in time order, with `source` and `dropped` ({reason: count}) as Prompts."""

    def __init__(self, items=(), source: str = "", dropped: dict | None = None):
        super().__init__(items)
        self.source = source
        self.dropped = dict(dropped or {})


# ------------------------------------------------------------------------------------ reading

def check_schedule(speed=1.0, start_s=0.0, window_s=None) -> tuple[float, float, float | None]:
    """The schedule options, validated (DatasetError naming the option)."""
    def num(v, flag):
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise DatasetError(f"{flag}: expected a number; got {v!r}") from None
        if not math.isfinite(x):
            raise DatasetError(f"{flag}: expected a finite number; got {v!r}")
        return x
    speed = num(speed, "--trace-speed")
    if speed <= 0:
        raise DatasetError(f"--trace-speed: must be positive (2 = twice as fast); got {speed:g}")
    start_s = num(start_s, "--trace-start")
    if start_s < 0:
        raise DatasetError(f"--trace-start: seconds into the trace, must not be negative; got {start_s:g}")
    if window_s is not None:
        window_s = num(window_s, "--trace-window")
        if window_s <= 0:
            raise DatasetError(f"--trace-window: seconds of the trace to replay, must be positive; "
                               f"got {window_s:g}")
    return speed, start_s, window_s


def load(path: str, speed: float = 1.0, start_s: float = 0.0, window_s: float | None = None,
         num: int | None = None) -> Traces:
    speed, start_s, window_s = check_schedule(speed, start_s, window_s)
    if not os.path.exists(path):
        raise DatasetError(f"--dataset-path {path}: no such file")
    if os.path.isdir(path):
        raise DatasetError(f"--dataset-path {path}: is a folder; a trace is a .jsonl or .csv file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".csv"):
        raise DatasetError(f"--dataset-path {path}: expected a trace .jsonl (Mooncake/AISBench) or .csv "
                           "(Azure, BurstGPT)")
    dropped: dict = {}
    if ext == ".jsonl":
        rows, kind = _jsonl(path), "Mooncake/AISBench JSONL"
        t0 = min((r[0] for r in rows), default=0.0)
    else:
        rows, kind, t0 = _csv(path, dropped)   # t0: the earliest row, a left-out one included
    if not rows:
        left = ", ".join(f"{n} {reason}" for reason, n in dropped.items() if n)
        raise DatasetError(f"{path}: no requests in the trace" + (f" (left out: {left})" if left else ""))
    rows.sort(key=lambda r: r[0])          # stable: ties keep file order
    end = start_s + window_s if window_s is not None else math.inf
    kept = [r for r in rows if start_s <= r[0] - t0 < end]
    if not kept:
        raise DatasetError(f"{path}: no request in the window [{start_s:g} s, "
                           f"{'end' if window_s is None else f'{end:g} s'}) of a trace "
                           f"{rows[-1][0] - t0:.3f} s long (--trace-start, --trace-window)")
    if num:
        kept = kept[:int(num)]
    reqs = [TraceRequest(index=i, t=(ts - t0 - start_s) / speed, input_tokens=n_in, output_tokens=n_out,
                         hash_ids=ids, text=text)
            for i, (ts, n_in, n_out, ids, text) in enumerate(kept)]
    window = (f"; window {start_s:g} s to " + ("end" if window_s is None else f"{end:g} s")
              if start_s or window_s is not None else "")
    return Traces(reqs, source=f"trace, {kind} {path}: {len(reqs)} of {len(rows)} requests"
                               f"{window}, speed x{speed:g}, the last sent at {reqs[-1].t:.3f} s",
                  dropped={k: v for k, v in dropped.items() if v})


def _int_field(where: str, row: dict, name: str, minimum: int) -> int | None:
    v = row.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer() or v < minimum:
        raise DatasetError(f"{where}: '{name}' must be an integer of at least {minimum}; got {v!r}")
    return int(v)


def _jsonl(path: str) -> list[tuple]:
    return [_mooncake(f"{path}:{lineno}", row) for lineno, row in jsonl_objects(path)]


def _mooncake(where: str, row: dict) -> tuple:
    ts = row.get("timestamp")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts < 0:
        raise DatasetError(f"{where}: 'timestamp' (ms since the trace's start, >= 0) is "
                           + ("missing" if ts is None else f"not a valid time: {ts!r}"))
    n_out = _int_field(where, row, "output_length", 1) or 0
    text = row.get("input_text")
    if text is not None:
        if not isinstance(text, str) or not text:
            raise DatasetError(f"{where}: 'input_text' must be non-empty text")
        n_in = _int_field(where, row, "input_length", 1) or 0   # 0: unknown (counted by the server)
        return ts / 1000.0, n_in, n_out, None, text
    n_in = _int_field(where, row, "input_length", 1)
    if n_in is None:
        raise DatasetError(f"{where}: needs 'input_length' (tokens) or 'input_text'")
    ids = row.get("hash_ids")
    if ids in (None, []):
        return ts / 1000.0, n_in, n_out, None, None
    if not isinstance(ids, list) or not all(isinstance(h, (int, str)) and not isinstance(h, bool)
                                            for h in ids):
        raise DatasetError(f"{where}: 'hash_ids' must be a list of integers")
    last = n_in - BLOCK_TOKENS * (len(ids) - 1)
    if not 0 < last <= BLOCK_TOKENS:
        raise DatasetError(f"{where}: input_length {n_in} does not fit {len(ids)} hash_ids of "
                           f"{BLOCK_TOKENS} tokens (needs {BLOCK_TOKENS * (len(ids) - 1) + 1}.."
                           f"{BLOCK_TOKENS * len(ids)})")
    return ts / 1000.0, n_in, n_out, tuple(ids), None


def _csv(path: str, dropped: dict) -> tuple[list[tuple], str, float]:
    import pandas as pd
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), None)
    except OSError as e:
        raise DatasetError(f"--dataset-path {path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    if not header:
        raise DatasetError(f"{path}: empty file (expected a header row)")
    header = [h.strip() for h in header]
    if all(c in header for c in AZURE):
        kind, cols = "Azure LLM inference CSV", AZURE
    elif all(c in header for c in BURSTGPT):
        kind, cols = "BurstGPT CSV", BURSTGPT
    else:
        raise DatasetError(f"{path}: unknown trace columns ({', '.join(header)}); expected Azure's "
                           f"{', '.join(AZURE)} or BurstGPT's {', '.join(BURSTGPT)}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True,
                         encoding="utf-8-sig")
    except (ValueError, pd.errors.ParserError) as e:
        raise DatasetError(f"{path}: malformed CSV ({str(e).strip().splitlines()[0]})") from None
    df.columns = [c.strip() for c in df.columns]
    ts_col, in_col, out_col = cols
    if kind.startswith("Azure"):
        ts = pd.to_datetime(df[ts_col].str.strip(), format="ISO8601", errors="coerce")
        bad = ts.isna()
        secs = (ts - ts.min()).dt.total_seconds() if not bad.all() else ts
        what = "a date and time (e.g. 2023-11-16 18:15:46.68)"
    else:
        secs = pd.to_numeric(df[ts_col], errors="coerce")
        bad = secs.isna() | ~np.isfinite(secs.fillna(0)) | (secs < 0)
        what = "seconds (a number >= 0)"
    _first_bad(path, bad, ts_col, what, df[ts_col])
    lens = {}
    for col in (in_col, out_col):
        v = pd.to_numeric(df[col], errors="coerce")
        bad = v.isna() | (v < 0) | (v.fillna(0) % 1 != 0)
        _first_bad(path, bad, col, "a whole number of tokens", df[col])
        lens[col] = v.astype(np.int64)
    keep = np.ones(len(df), dtype=bool)
    for col, reason in ((in_col, f"{in_col} 0"), (out_col, f"{out_col} 0 (a failed request)")):
        zero = (lens[col] == 0).to_numpy()
        dropped[reason] = int((zero & keep).sum())
        keep &= ~zero
    t = secs.to_numpy(dtype=float)[keep]
    n_in = lens[in_col].to_numpy()[keep]
    n_out = lens[out_col].to_numpy()[keep]
    rows = [(float(a), int(b), int(c), None, None) for a, b, c in zip(t, n_in, n_out)]
    return rows, kind, float(secs.min()) if len(secs) else 0.0


def _first_bad(path: str, bad, col: str, what: str, raw) -> None:
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        # the header is line 1 (quoted newlines inside cells would shift this; traces have none)
        raise DatasetError(f"{path}:{i + 2}: column '{col}' must be {what}; got {raw.iloc[i]!r}")


# ------------------------------------------------------------------------------------ prompts

class _Blocks:
    """The word tables of one tokenizer and the blocks built so far (by id)."""

    def __init__(self, tok):
        from .synthetic import word_table
        self.tok = tok
        table = word_table(tok, need=10**9)  # the whole vocabulary: the mapping must not depend on need
        mid = set(table.mid)
        # a block's first word may open the prompt: one token at the start and after a space
        self.heads = [w for w in table.first if w in mid]
        self.mid = table.mid
        self.pool = table.pool
        if len(self.heads) < 2 or len(self.mid) < 2:
            raise DatasetError("trace: this tokenizer has too few single-token words to build blocks; "
                               "use another --tokenizer")
        self.cache: dict[int, list[str]] = {}
        self.texts: dict[int, str] = {}

    def words(self, key: int, n: int) -> list[str]:
        """The first n words of the block `key` (a 64-bit number)."""
        got = self.cache.get(key)
        if got is None or len(got) < n:
            # an odd multiplier mod 2^64 is a bijection: ids stay distinct, small ones spread out
            mixed = (key * 0x9E3779B97F4A7C15) % (1 << 64)
            spell, rest = [self.heads[mixed % len(self.heads)]], mixed // len(self.heads)
            for _ in range(ID_WORDS - 1):
                spell.append(self.mid[rest % len(self.mid)])
                rest //= len(self.mid)
            rng = np.random.default_rng(key)
            fill = rng.integers(0, len(self.pool), size=max(n, BLOCK_TOKENS) - ID_WORDS)
            got = spell + [self.pool[i] for i in fill]
            if len(self.cache) > 200_000:
                self.cache.clear()
            self.cache[key] = got
        return got[:n]

    def text(self, key: int, n: int, full: int) -> str:
        """The block's text; full blocks' texts are kept (a trace repeats them)."""
        if n != full:
            return " ".join(self.words(key, n))
        got = self.texts.get(key)
        if got is None:
            if len(self.texts) > 100_000:
                self.texts.clear()
            got = self.texts[key] = " ".join(self.words(key, n))
        return got


_blocks: dict[int, _Blocks] = {}


def _blocks_for(tok) -> _Blocks:
    b = _blocks.get(id(tok))
    if b is None or b.tok is not tok:
        b = _blocks[id(tok)] = _Blocks(tok)
    return b


def _key(value) -> int:
    """A block's 64-bit number: an integer id itself (mod 2^64), other ids through a hash."""
    if isinstance(value, int):
        return value % (1 << 64)
    return int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=8).digest(), "big")


def prompt_for(req: TraceRequest, tokenizer, block_tokens: int = BLOCK_TOKENS) -> Prompt:
    """The request's prompt: input_text as is, else hash_ids blocks, else a prompt of input_tokens
    tokens unique to this request (spelled from its index). max_tokens = output_tokens (None if 0)."""
    if req.text is not None:
        text = req.text
    else:
        blocks = _blocks_for(tokenizer)
        if req.hash_ids:
            last = req.input_tokens - block_tokens * (len(req.hash_ids) - 1)
            # words are joined by single spaces, so joining block texts by one gives the same text
            text = " ".join(blocks.text(_key(h), block_tokens if k < len(req.hash_ids) - 1 else last,
                                        block_tokens) for k, h in enumerate(req.hash_ids))
        else:
            text = " ".join(blocks.words(_key(f"trace request {req.index}"), req.input_tokens))
    return Prompt(index=req.index, messages=[{"role": "user", "content": text}],
                  max_tokens=req.output_tokens or None, t_sched_s=req.t)


def prompts(reqs: list[TraceRequest], tokenizer, block_tokens: int = BLOCK_TOKENS) -> list[Prompt]:
    """Every request's prompt, their token counts checked in bulk (all of them up to
    synthetic.VERIFY_ALL_TOKENS tokens, else a sample): a tokenizer for which the construction does not
    hold fails with one line instead of sending wrong lengths."""
    from ..tokens import encode_lens
    from .synthetic import VERIFY_ALL_TOKENS
    out = [prompt_for(r, tokenizer, block_tokens) for r in reqs]
    built = [i for i, r in enumerate(reqs) if r.text is None]
    total = sum(reqs[i].input_tokens for i in built)
    if total > VERIFY_ALL_TOKENS:
        rng = np.random.default_rng(0)
        k = max(1, int(len(built) * VERIFY_ALL_TOKENS / total))
        built = sorted(rng.choice(built, size=min(k, len(built)), replace=False).tolist())
    lens = encode_lens(tokenizer, [out[i].messages[0]["content"] for i in built])
    for i, n in zip(built, lens):
        if n != reqs[i].input_tokens:
            raise DatasetError(f"trace: request {i} should be {reqs[i].input_tokens} tokens but this "
                               f"tokenizer makes it {n}; use another --tokenizer")
    return out
