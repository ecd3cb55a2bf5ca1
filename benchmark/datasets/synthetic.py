"""Length-controlled synthetic prompts, in real tokens.

Input and output lengths are drawn from a distribution (`fixed:N`, `uniform:MIN:MAX`,
`gaussian:MEAN:STD:MIN:MAX` rounded and clipped to [MIN, MAX], `zipf:A:MIN:MAX` with
P(MIN + k - 1) proportional to k^-A for k = 1..MAX-MIN+1), seeded.

How a prompt of exactly N tokens is built: from the tokenizer's vocabulary we keep the words
(2-16 ASCII letters) that cost exactly one token after a space ("mid" words) and the ones that cost
one token at the start of a text ("first" words), checked in bulk (lazily, 4096 candidates at a time,
as many as the prompt count needs) and cached per tokenizer. A prompt is a
first word followed by N-1 mid words joined by single spaces (fillers are short lowercase words); the
tokenizers in use split words at spaces before merging, so the count is N by construction. The
prompts are then encoded in bulk and checked: all of them up to VERIFY_ALL_TOKENS tokens in total,
else a random sample of about that size (and then all of them if any sampled one is off, which means
the construction does not hold for this tokenizer); a prompt that is off is repaired by adding or
dropping words, or the load fails with one line.

What is counted: the message content alone, encoded without special tokens and without the chat
template. A template adds a constant number of tokens per request (none for the default
tokenizer, which has no template); servers report that total in `usage.prompt_tokens`.

Every prompt differs from the others from its first token on (after the shared prefix, if any): the
first token (and the second, past the number of first words: about 22 000 for the default
tokenizer) spells the prompt's index through a seeded permutation of the word table, so a server's
prefix cache can't fake a fast TTFT. With `prefix_tokens = P`, the first P tokens are the same in
every prompt (for prefix-cache tests); P is part of the input length, so it must be smaller than the
shortest input length. With `prefix_groups = G`, prompt i belongs to group i mod G (round-robin, so
groups interleave in send order) and the P shared tokens are the same within a group and differ
between groups from their first token on. `prefix_ratio = R` sets P = round(R x the mean input
length) instead (the share of the input that is shared, as a whole); see `prefix_length`.
The output length becomes the prompt's `max_tokens` (send it with ignore_eos for exact outputs).
Since every word is one token and words are separated by single spaces, a whitespace word count (the
built-in simulator's prompt_tokens) equals the token count too.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from . import DatasetError, Prompt

FORMS = "fixed:N, uniform:MIN:MAX, gaussian:MEAN:STD:MIN:MAX or zipf:A:MIN:MAX"
VERIFY_ALL_TOKENS = 256_000     # verify every prompt up to this many tokens in total, else a sample
POOL_MAX_LETTERS = 5            # filler words: short lowercase ones (fast to tokenize, here and on
                                # the server)
_WORD = re.compile(r"\s?[A-Za-z]{2,16}")


# ------------------------------------------------------------------------------------ distributions

@dataclass(frozen=True)
class LengthDist:
    kind: str                 # fixed | uniform | gaussian | zipf
    lo: int
    hi: int
    mean_param: float = 0.0   # gaussian MEAN
    std: float = 0.0          # gaussian STD
    a: float = 0.0            # zipf exponent

    @property
    def spec(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.lo}"
        if self.kind == "uniform":
            return f"uniform:{self.lo}:{self.hi}"
        if self.kind == "gaussian":
            return f"gaussian:{_num(self.mean_param)}:{_num(self.std)}:{self.lo}:{self.hi}"
        return f"zipf:{_num(self.a)}:{self.lo}:{self.hi}"

    def pmf(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, probabilities): the exact distribution that `sample` draws from."""
        values = np.arange(self.lo, self.hi + 1)
        if self.kind == "fixed":
            return values, np.ones(1)
        if self.kind == "uniform":
            return values, np.full(len(values), 1.0 / len(values))
        if self.kind == "zipf":
            w = np.arange(1, len(values) + 1, dtype=float) ** -self.a
            return values, w / w.sum()
        # gaussian: round to nearest, then clip (the tails land on MIN and MAX)
        if self.std == 0:
            p = (values == min(max(round(self.mean_param), self.lo), self.hi)).astype(float)
            return values, p
        erf = np.vectorize(math.erf)
        cdf = lambda x: 0.5 * (1 + erf((x - self.mean_param) / (self.std * math.sqrt(2))))  # noqa: E731
        upper = cdf(values + 0.5)
        lower = cdf(values - 0.5)
        upper[-1], lower[0] = 1.0, 0.0
        return values, upper - lower

    def mean(self) -> float:
        values, p = self.pmf()
        return float((values * p).sum())

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(n, self.lo, dtype=np.int64)
        if self.kind == "uniform":
            return rng.integers(self.lo, self.hi + 1, size=n, dtype=np.int64)
        if self.kind == "gaussian":
            x = np.rint(rng.normal(self.mean_param, self.std, size=n))
            return np.clip(x, self.lo, self.hi).astype(np.int64)
        values, p = self.pmf()
        return values[rng.choice(len(values), size=n, p=p)].astype(np.int64)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def parse_dist(spec, option: str = "--input-len") -> LengthDist:
    """`fixed:N` (a bare N too), `uniform:MIN:MAX`, `gaussian:MEAN:STD:MIN:MAX`, `zipf:A:MIN:MAX`.
    Raises DatasetError with one line naming `option`."""
    if isinstance(spec, LengthDist):
        return spec
    text = str(spec).strip()
    bad = DatasetError(f"{option}: expected {FORMS}; got {text!r}")
    parts = [p.strip() for p in text.split(":")]
    if len(parts) == 1 and parts[0]:
        parts = ["fixed", parts[0]]
    kind, args = parts[0].lower(), parts[1:]
    arity = {"fixed": 1, "uniform": 2, "gaussian": 4, "zipf": 3}
    if kind not in arity or len(args) != arity[kind]:
        raise bad
    n_float = {"fixed": 0, "uniform": 0, "gaussian": 2, "zipf": 1}[kind]
    try:
        floats = [float(x) for x in args[:n_float]]
        ints = [int(x) for x in args[n_float:]]
    except ValueError:
        raise bad from None
    if any(not math.isfinite(x) for x in floats):
        raise bad
    lo, hi = (ints[0], ints[0]) if kind == "fixed" else (ints[0], ints[1])
    if lo < 1:
        raise DatasetError(f"{option}: lengths must be at least 1 token; got {text!r}")
    if lo > hi:
        raise DatasetError(f"{option}: MIN must not exceed MAX; got {text!r}")
    if kind == "gaussian":
        if floats[1] < 0:
            raise DatasetError(f"{option}: STD must not be negative; got {text!r}")
        return LengthDist("gaussian", lo, hi, mean_param=floats[0], std=floats[1])
    if kind == "zipf":
        if floats[0] <= 0:
            raise DatasetError(f"{option}: the zipf exponent A must be positive; got {text!r}")
        if hi - lo > 10_000_000:
            raise DatasetError(f"{option}: zipf range too wide (at most 10000000 values); got {text!r}")
        return LengthDist("zipf", lo, hi, a=floats[0])
    return LengthDist(kind, lo, hi)


# ------------------------------------------------------------------------------------ word tables

@dataclass
class WordTable:
    first: list[str]   # one token at the start of a text
    mid: list[str]     # one token after a single space
    pool: list[str]    # the mid words used as filler: short lowercase ones when there are enough


CHUNK = 4096           # candidate words checked at a time


class _Vocab:
    """The candidate words of one tokenizer, checked lazily, a chunk at a time, in a fixed
    (shuffled) order: a table for `need` prompts depends only on the tokenizer and `need`."""

    def __init__(self, tok):
        from ..tokens import encode_lens
        self.tok, self.encode_lens = tok, encode_lens
        ids = [[i] for i in range(len(tok))]
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is not None:
            strs = backend.decode_batch(ids, skip_special_tokens=False)
        else:
            strs = tok.batch_decode(ids, skip_special_tokens=False)
        special = set(getattr(tok, "all_special_ids", []) or [])
        words = sorted({s.strip() for i, s in enumerate(strs) if i not in special and _WORD.fullmatch(s)})
        order = np.random.default_rng(20240611).permutation(len(words))
        self.cands = [words[i] for i in order]
        self.base = "Hello"
        self.base_len = encode_lens(tok, [self.base])[0]
        short = [w for w in self.cands if w.islower() and len(w) <= POOL_MAX_LETTERS]
        self.pool = self._mid_ok(short)
        self.pool_set = set(short)
        self.first: list[str] = []
        self.first_at: list[int] = [0]   # len(first) after each chunk
        self.mid: list[str] = list(self.pool)
        self.mid_at: list[int] = [len(self.mid)]

    def _mid_ok(self, words):
        after = self.encode_lens(self.tok, [f"{self.base} {w}" for w in words])
        return [w for w, k in zip(words, after) if k - self.base_len == 1]

    def _first_ok(self, words):
        return [w for w, k in zip(words, self.encode_lens(self.tok, words)) if k == 1]

    def table(self, need: int) -> WordTable:
        n_chunks = -(-len(self.cands) // CHUNK)
        # first words: whole chunks until there are `need` of them (or no more candidates)
        c = 1
        while True:
            while len(self.first_at) <= c:
                k = len(self.first_at) - 1
                self.first += self._first_ok(self.cands[k * CHUNK:(k + 1) * CHUNK])
                self.first_at.append(len(self.first))
            if self.first_at[c] >= need or c >= n_chunks:
                break
            c += 1
        first = self.first[:self.first_at[c]]
        # mid words: the pool, then whole chunks of the other candidates until `need`
        c = 0
        while True:
            while len(self.mid_at) <= c:
                k = len(self.mid_at) - 1
                chunk = [w for w in self.cands[k * CHUNK:(k + 1) * CHUNK] if w not in self.pool_set]
                self.mid += self._mid_ok(chunk)
                self.mid_at.append(len(self.mid))
            if (self.mid_at[c] >= need and self.mid_at[c] >= 2) or c >= n_chunks:
                break
            c += 1
        mid = self.mid[:self.mid_at[c]]
        if not first or len(mid) < 2:
            raise DatasetError("synthetic: this tokenizer has too few single-token words to build "
                               "prompts of exact lengths; use another --tokenizer")
        return WordTable(first, mid, self.pool if len(self.pool) >= 1000 else mid)


_vocabs: dict[int, _Vocab] = {}


def word_table(tok, need: int = 0) -> WordTable:
    """Single-token words of `tok`, at least `need` first and mid words when the vocabulary has
    them. Checked in bulk, cached per tokenizer object."""
    v = _vocabs.get(id(tok))
    if v is None or v.tok is not tok:
        v = _vocabs[id(tok)] = _Vocab(tok)
    return v.table(need)


# ------------------------------------------------------------------------------------ prompts

def prefix_length(input_len="fixed:128", prefix_tokens: int = 0, prefix_ratio: float = 0.0,
                  prefix_groups: int = 1) -> int:
    """The shared prefix's length in tokens from --prefix-tokens or --prefix-ratio (not both), checked
    against --input-len and --prefix-groups. Raises DatasetError with one line."""
    in_dist = parse_dist(input_len, "--input-len")
    P, R = int(prefix_tokens or 0), float(prefix_ratio or 0.0)
    G = 1 if prefix_groups is None else int(prefix_groups)
    if P < 0:
        raise DatasetError(f"--prefix-tokens: must not be negative; got '{P}'")
    if not (math.isfinite(R) and 0 <= R < 1):
        raise DatasetError(f"--prefix-ratio: the shared share of each prompt, at least 0 and under 1; got '{R:g}'")
    if G < 1:
        raise DatasetError(f"--prefix-groups: must be at least 1; got '{G}'")
    if P and R:
        raise DatasetError("--prefix-tokens and --prefix-ratio both set the shared prefix's length: give one")
    if G > 1 and not (P or R):
        raise DatasetError(f"--prefix-groups {G}: needs --prefix-tokens or --prefix-ratio (the length each "
                           "group shares)")
    if R:
        P = int(round(R * in_dist.mean()))
        if P < 1:
            raise DatasetError(f"--prefix-ratio {R:g}: a shared prefix of {R:g} x {in_dist.mean():g} tokens "
                               "rounds to 0; raise it")
        if P >= in_dist.lo:
            raise DatasetError(f"--prefix-ratio {R:g}: a shared prefix of {P} tokens ({R:g} x the mean input "
                               f"length) must be shorter than the shortest --input-len ({in_dist.lo} in "
                               f"{in_dist.spec})")
    elif P and P >= in_dist.lo:
        raise DatasetError(f"--prefix-tokens: must be smaller than the shortest --input-len "
                           f"({in_dist.lo} in {in_dist.spec}); got '{P}'")
    return P


def load(num_prompts: int, input_len="fixed:128", seed: int = 0, tokenizer=None,
         output_len=None, prefix_tokens: int = 0, prefix_groups: int = 1,
         prefix_ratio: float = 0.0) -> list[Prompt]:
    """`num_prompts` prompts whose content is exactly the sampled input length in tokens of
    `tokenizer` (default: the default tokenizer); `max_tokens` = sampled output length when
    `output_len` is given (else None: the request's --max-out-len applies)."""
    from ..tokens import encode_lens, load_tokenizer
    tok = tokenizer if tokenizer is not None else load_tokenizer(None)
    in_dist = parse_dist(input_len, "--input-len")
    out_dist = parse_dist(output_len, "--output-len") if output_len not in (None, "") else None
    prefix_tokens = prefix_length(in_dist, prefix_tokens, prefix_ratio, prefix_groups)
    G = int(prefix_groups or 1)
    n = int(num_prompts)
    if n <= 0:
        return []
    table = word_table(tok, need=max(n, G))
    first = np.array(table.first, dtype=object)
    mid = np.array(table.mid, dtype=object)
    pool = np.array(table.pool, dtype=object)
    F, M = len(first), len(mid)

    rng = np.random.default_rng(seed)
    in_lens = in_dist.sample(rng, n)
    out_lens = out_dist.sample(rng, n) if out_dist is not None else None
    perm_first, perm_mid = rng.permutation(F), rng.permutation(M)
    idx = np.arange(n)

    # each prompt: [shared prefix (P words)] u0 [u1] filler...; u0 (and u1) spell the prompt's index
    P = prefix_tokens
    if P:
        shared = pool[rng.integers(0, len(pool), size=(G, P - 1))].tolist()
        if G == 1:
            heads = [first[rng.integers(F)]]
        elif G <= F:   # distinct first tokens: groups differ from their first token on
            heads = first[rng.permutation(F)[:G]].tolist()
        else:
            raise DatasetError(f"--prefix-groups: at most {F} groups with this tokenizer; got {G}")
        prefixes = [" ".join([heads[g]] + shared[g]) for g in range(G)]
        u0 = mid[perm_mid[idx % M]]
        u1 = mid[perm_mid[(idx // M) % M]]
    else:
        u0 = first[perm_first[idx % F]]
        u1 = mid[perm_mid[(idx // F) % M]]
    n_fill = np.maximum(in_lens - P - 2, 0)
    fill = pool[rng.integers(0, len(pool), size=int(n_fill.sum()))].tolist()
    ends = np.cumsum(n_fill).tolist()
    texts = []
    start = 0
    for i in range(n):
        words = [prefixes[i % G]] if P else []
        words.append(u0[i])
        if in_lens[i] - P > 1:
            words.append(u1[i])
        words.extend(fill[start:ends[i]])
        start = ends[i]
        texts.append(" ".join(words))

    _verify(tok, texts, in_lens, pool, rng, keep=P + 2, encode_lens=encode_lens)
    return [Prompt(index=i, messages=[{"role": "user", "content": texts[i]}],
                   max_tokens=int(out_lens[i]) if out_lens is not None else None)
            for i in range(n)]


def _verify(tok, texts, targets, filler, rng, keep, encode_lens) -> None:
    """Encode the prompts in bulk, repair the few (if any) that are off, in place."""
    n = len(texts)
    total = int(targets.sum())
    if total <= VERIFY_ALL_TOKENS:
        check = np.arange(n)
    else:  # a random sample of about VERIFY_ALL_TOKENS tokens, the first prompt included
        k = max(1, int(n * VERIFY_ALL_TOKENS / total))
        check = np.union1d([0], rng.choice(n, size=min(k, n), replace=False))
    lens = np.array(encode_lens(tok, [texts[i] for i in check]))
    off = check[lens != targets[check]]
    if len(off) and len(check) < n:  # the construction failed for this tokenizer: check them all
        check = np.arange(n)
        lens = np.array(encode_lens(tok, texts))
        off = check[lens != targets]
    for _ in range(8):
        if not len(off):
            return
        got = encode_lens(tok, [texts[i] for i in off])
        still = []
        for i, g in zip(off, got):
            diff = int(targets[i]) - g
            if diff == 0:
                continue
            words = texts[i].split(" ")
            if diff > 0:
                words += list(filler[rng.integers(0, len(filler), size=diff)])
            elif len(words) + diff >= keep:
                words = words[:diff]
            else:
                words = words[:keep]
            texts[i] = " ".join(words)
            still.append(i)
        off = np.array(still, dtype=np.int64)
    got = encode_lens(tok, [texts[i] for i in off]) if len(off) else []
    bad = [(int(i), g) for i, g in zip(off, got) if g != targets[i]]
    if bad:
        i, g = bad[0]
        raise DatasetError(f"synthetic: cannot build a prompt of exactly {int(targets[i])} tokens with "
                           f"this tokenizer (got {g}); use another --tokenizer")
