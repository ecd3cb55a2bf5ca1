"""Prompt sources. Every loader returns a list of Prompt; `load(name, ...)` picks one by name.

Options API (for benchmark/options.py): `add_arguments(add)` registers the dataset options through
`add(flag, **argparse_kwargs)` (string values, string defaults); `parse_options(o)` validates them into
keyword arguments of `load` (plain JSON-able values, safe to keep in config.json).
"""
from __future__ import annotations

import os
from dataclasses import dataclass


class DatasetError(Exception):
    """Unusable dataset input: a one-line message saying what to fix."""


@dataclass
class Prompt:
    index: int
    messages: list[dict]
    reference: str | None = None   # the gold answer, for scored datasets
    max_tokens: int | None = None  # per-prompt output length (synthetic lengths, custom files)
    t_sched_s: float | None = None  # when to send it, s on the trace's timeline (--dataset trace)


class Prompts(list):
    """A loader's prompts, with what it says about them: `source` (where they came from) and `dropped`
    ({reason: how many items of the source the loader left out})."""

    def __init__(self, items=(), source: str = "", dropped: dict | None = None):
        super().__init__(items)
        self.source = source
        self.dropped = dict(dropped or {})


def describe(prompts: list) -> str:
    """One console line: how many prompts, from what, and how many items a filter left out and why."""
    source = getattr(prompts, "source", "")
    dropped = getattr(prompts, "dropped", {})
    line = f"Prompts: {len(prompts)} loaded" + (f" ({source})" if source else "")
    if dropped:
        line += (f"; {sum(dropped.values())} left out by the loader's filters: "
                 + ", ".join(f"{n} {reason}" for reason, n in dropped.items()))
    return line


DATASETS = ("synthetic", "gsm8k", "custom", "sharegpt")
PROMPT_STYLES = ("4shot", "0shot")
SUBSETS = ("test", "demo")
DEFAULT_NUM_PROMPTS = {"synthetic": 1000, "sharegpt": 1000}  # gsm8k, custom: the whole subset/file
NEEDS_PATH = ("gsm8k", "custom", "sharegpt")


def add_arguments(add) -> None:
    """Register the dataset options: `add(flag, **argparse_kwargs)` adds one."""
    add("--prompt-style", default="4shot",
        help="gsm8k prompt: 4shot (AISBench 4-shot CoT chat, 9 messages) | 0shot (the question alone)")
    add("--subset", default="test", help="gsm8k questions: test (all of test.jsonl) | demo (first 8)")
    add("--input-len", default="fixed:128",
        help="synthetic input length in tokens: fixed:N | uniform:MIN:MAX | "
             "gaussian:MEAN:STD:MIN:MAX | zipf:A:MIN:MAX (counted on the content, no chat template)")
    add("--output-len", default="",
        help="synthetic output lengths (each prompt's max_tokens), same forms as --input-len; "
             "default fixed:<--max-out-len>")
    add("--prefix-tokens", default="0",
        help="synthetic: tokens of a prefix shared by every prompt (prefix-cache tests); "
             "part of --input-len")


def _opt(o, name: str, default: str) -> str:
    v = getattr(o, name, None)
    if v is None:
        return default
    return str(v).strip()


def parse_options(o) -> dict:
    """The dataset options of the parsed options `o`, validated: keyword arguments for `load`.
    Raises DatasetError with one line naming the option."""
    from .synthetic import parse_dist
    style = _opt(o, "prompt_style", "4shot").lower()
    if style not in PROMPT_STYLES:
        raise DatasetError(f"--prompt-style: expected one of {', '.join(PROMPT_STYLES)}; got {style!r}")
    subset = _opt(o, "subset", "test").lower()
    if subset not in SUBSETS:
        raise DatasetError(f"--subset: expected one of {', '.join(SUBSETS)}; got {subset!r}")
    input_len = parse_dist(_opt(o, "input_len", "fixed:128") or "fixed:128", "--input-len")
    out_raw = _opt(o, "output_len", "")
    output_len = parse_dist(out_raw, "--output-len").spec if out_raw else ""
    raw = _opt(o, "prefix_tokens", "0") or "0"
    try:
        prefix = int(raw)
    except ValueError:
        raise DatasetError(f"--prefix-tokens: expected an integer; got {raw!r}") from None
    if prefix < 0:
        raise DatasetError(f"--prefix-tokens: must not be negative; got {raw!r}")
    if prefix and prefix >= input_len.lo:
        raise DatasetError(f"--prefix-tokens: must be smaller than the shortest --input-len "
                           f"({input_len.lo} in {input_len.spec}); got {raw!r}")
    return {"prompt_style": style, "subset": subset, "input_len": input_len.spec,
            "output_len": output_len, "prefix_tokens": prefix}


def load(name: str, path: str | None = None, num_prompts: int = 0, input_len="fixed:128",
         seed: int = 0, max_out_len: int | None = None, tokenizer=None, *,
         prompt_style: str = "4shot", subset: str = "test", output_len: str = "",
         prefix_tokens: int = 0) -> list[Prompt]:
    """Prompts of dataset `name` (one of DATASETS).

    num_prompts: 0 = the dataset's default (synthetic, sharegpt: 1000; gsm8k, custom: all), else the
      first N (gsm8k, custom) or N built/sampled ones (synthetic, sharegpt).
    input_len: synthetic input length distribution (a spec string; a bare int means fixed:N).
    max_out_len: the user's --max-out-len, or None when not given. synthetic: the default output length
      (`fixed:max_out_len`); sharegpt: when given, every prompt's output length (else the first reply's
      token count, as vLLM's benchmark).
    tokenizer: a transformers tokenizer, a local tokenizer path, or None for the default tokenizer;
      only loaded by the datasets that count tokens (synthetic, sharegpt).
    """
    if name not in DATASETS:
        raise DatasetError(f"--dataset: unknown dataset {name!r}; choose from: {', '.join(DATASETS)}")
    if name in NEEDS_PATH and not path:
        raise DatasetError(f"--dataset {name} needs --dataset-path "
                           + {"gsm8k": "(a folder with test.jsonl and train.jsonl)",
                              "custom": "(a .jsonl or .csv file)",
                              "sharegpt": "(a ShareGPT .json file)"}[name])
    n = int(num_prompts or 0)
    if n < 0:
        raise DatasetError(f"--num-prompts: must not be negative; got {n}")
    n = n or DEFAULT_NUM_PROMPTS.get(name, 0)
    if name == "gsm8k":
        from .gsm8k import _folder, load as load_gsm8k
        prompts = load_gsm8k(path, n, prompt_style=prompt_style, subset=subset)
        test = os.path.join(_folder(path), "test.jsonl")
        return Prompts(prompts, source=f"gsm8k {subset} subset, {prompt_style}: the first {len(prompts)} of "
                                       f"{_lines(test)} questions in {test}")
    if name == "custom":
        from .custom import load as load_custom
        prompts = load_custom(path, n)
        return Prompts(prompts, source=f"custom, {path}" + (" (--num-prompts: its first ones)" if n else ""))
    tok = tokenizer_for(tokenizer)
    if name == "sharegpt":
        from .sharegpt import load as load_sharegpt
        return load_sharegpt(path, n, seed=seed, tokenizer=tok, max_out_len=max_out_len)
    from .synthetic import load as load_synthetic
    if not output_len and max_out_len:
        output_len = f"fixed:{int(max_out_len)}"
    prompts = load_synthetic(n, input_len, seed, tok, output_len=output_len or None,
                             prefix_tokens=prefix_tokens)
    return Prompts(prompts, source=f"synthetic, input {input_len}"
                                   + (f", output {output_len}" if output_len else "")
                                   + (f", shared prefix {prefix_tokens}" if prefix_tokens else ""))


def _lines(path: str) -> int:
    """Non-blank lines of a jsonl file (the loader already read it: it exists)."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def tokenizer_for(tokenizer):
    """The tokenizer object (a path, None for the default, or one already loaded); DatasetError if it can't load."""
    if tokenizer is not None and not isinstance(tokenizer, str):
        return tokenizer
    from ..tokens import TokenizerError, load_tokenizer
    try:
        return load_tokenizer(tokenizer or None)
    except TokenizerError as e:
        raise DatasetError(str(e)) from None
