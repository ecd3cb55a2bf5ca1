"""Prompt sources. Every loader returns a list of Prompt; `load(name, ...)` picks one by name.

Options API (for benchmark/options.py): `add_arguments(add)` registers the dataset options through
`add(flag, **argparse_kwargs)` (string values, string defaults; `--multi-turn` a store_true flag);
`parse_options(o)` validates them into
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


def jsonl_objects(path: str):
    """(line number, object) for each non-blank line of a JSONL file (a UTF-8 BOM allowed); a line that is
    not a JSON object, an unreadable file or non-UTF-8 text: a one-line DatasetError naming file:line."""
    import json
    try:
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise DatasetError(f"{path}:{lineno}: not valid JSON ({getattr(e, 'msg', e)})") from None
                if not isinstance(row, dict):
                    raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                yield lineno, row
    except OSError as e:
        raise DatasetError(f"--dataset-path {path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None


def describe(prompts: list) -> str:
    """One console line: how many prompts, from what, and how many items a filter left out and why."""
    from .conversations import Conversations, describe as describe_conversations
    if isinstance(prompts, Conversations):
        return describe_conversations(prompts)
    source = getattr(prompts, "source", "")
    dropped = getattr(prompts, "dropped", {})
    line = f"Prompts: {len(prompts)} loaded" + (f" ({source})" if source else "")
    if dropped:
        line += (f"; {sum(dropped.values())} left out by the loader's filters: "
                 + ", ".join(f"{n} {reason}" for reason, n in dropped.items()))
    return line


DATASETS = ("synthetic", "gsm8k", "custom", "sharegpt", "trace", "conversations")
PROMPT_STYLES = ("4shot", "0shot")
SUBSETS = ("test", "demo")
# gsm8k, custom, trace, conversations: the whole subset/file (a trace: its whole window)
DEFAULT_NUM_PROMPTS = {"synthetic": 1000, "sharegpt": 1000}
NEEDS_PATH = ("gsm8k", "custom", "sharegpt", "trace", "conversations")
PATH_HINT = {"gsm8k": "(a folder with test.jsonl and train.jsonl)", "custom": "(a .jsonl or .csv file)",
             "sharegpt": "(a ShareGPT .json file)",
             "trace": "(a Mooncake/AISBench .jsonl, or an Azure or BurstGPT .csv trace)",
             "conversations": "(a conversation .jsonl or .csv file)"}


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
    add("--prefix-ratio", default="0",
        help="synthetic: the shared prefix as a share of the mean input length (0.5: half of it); "
             "instead of --prefix-tokens")
    add("--prefix-groups", default="1",
        help="synthetic: prompts in G groups (round-robin), each group sharing its own prefix of "
             "--prefix-tokens / --prefix-ratio")
    add("--trace-speed", default="1",
        help="trace: time scaling of the replay (2 = twice as fast, 0.5 = half speed)")
    add("--trace-start", default="0",
        help="trace: seconds into the trace (from its first request) where the replay starts")
    add("--trace-window", default="",
        help="trace: seconds of the trace to replay from --trace-start (default: to its end)")
    add("--multi-turn", action="store_true", default=False,
        help="sharegpt: use whole conversations (every turn) instead of their first turn")


def _opt(o, name: str, default: str) -> str:
    v = getattr(o, name, None)
    if v is None:
        return default
    return str(v).strip()


def parse_options(o) -> dict:
    """The dataset options of the parsed options `o`, validated: keyword arguments for `load` (the
    newer ones, NEW_DEFAULTS, only when not at their default). Raises DatasetError with one line naming
    the option."""
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
    from .synthetic import prefix_length
    from .trace import check_schedule
    prefix = _number(o, "prefix_tokens", "0", int, "--prefix-tokens", "an integer")
    ratio = _number(o, "prefix_ratio", "0", float, "--prefix-ratio", "a number")
    groups = _number(o, "prefix_groups", "1", int, "--prefix-groups", "an integer")
    prefix_length(input_len, prefix, ratio, groups)   # validates how they combine
    speed = _number(o, "trace_speed", "1", float, "--trace-speed", "a number")
    start = _number(o, "trace_start", "0", float, "--trace-start", "a number (seconds)")
    window_raw = _opt(o, "trace_window", "")
    window = _number(o, "trace_window", "", float, "--trace-window", "a number (seconds)") if window_raw else None
    speed, start, window = check_schedule(speed, start, window)
    multi = getattr(o, "multi_turn", False)
    multi = multi if isinstance(multi, bool) else str(multi).strip().lower() in ("1", "true", "yes", "on")
    dataset = _opt(o, "dataset", "")
    # options of one dataset set on another would be silently ignored: refuse them (defaults pass)
    if dataset and dataset != "synthetic":
        for flag, value, default in (("--prefix-ratio", ratio, 0.0), ("--prefix-groups", groups, 1)):
            if value != default:
                raise DatasetError(f"{flag}: only for --dataset synthetic; got --dataset {dataset}")
    if dataset and dataset != "trace":
        for flag, value, default in (("--trace-speed", speed, 1.0), ("--trace-start", start, 0.0),
                                     ("--trace-window", window, None)):
            if value != default:
                raise DatasetError(f"{flag}: only for --dataset trace; got --dataset {dataset}")
    if multi and dataset and dataset not in ("sharegpt", "conversations"):
        raise DatasetError(f"--multi-turn: runs the conversations of --dataset sharegpt (or use --dataset "
                           f"conversations); got --dataset {dataset}")
    out = {"prompt_style": style, "subset": subset, "input_len": input_len.spec,
           "output_len": output_len, "prefix_tokens": prefix}
    # issue 16's options only when set: a run without them keeps the prompt configuration (and so the
    # `version` hash that compare checks) of the runs before them
    new = {"prefix_ratio": ratio, "prefix_groups": groups, "trace_speed": speed, "trace_start": start,
           "trace_window": window, "multi_turn": multi}
    out.update({k: v for k, v in new.items() if v != NEW_DEFAULTS[k]})
    return out


NEW_DEFAULTS = {"prefix_ratio": 0.0, "prefix_groups": 1, "trace_speed": 1.0, "trace_start": 0.0,
                "trace_window": None, "multi_turn": False}


def _number(o, name: str, default: str, kind, flag: str, what: str):
    raw = _opt(o, name, default) or default
    try:
        return kind(raw)
    except ValueError:
        raise DatasetError(f"{flag}: expected {what}; got {raw!r}") from None


def load(name: str, path: str | None = None, num_prompts: int = 0, input_len="fixed:128",
         seed: int = 0, max_out_len: int | None = None, tokenizer=None, *,
         prompt_style: str = "4shot", subset: str = "test", output_len: str = "",
         prefix_tokens: int = 0, prefix_ratio: float = 0.0, prefix_groups: int = 1,
         trace_speed: float = 1.0, trace_start: float = 0.0, trace_window: float | None = None,
         multi_turn: bool = False) -> list:
    """Prompts of dataset `name` (one of DATASETS).

    num_prompts: 0 = the dataset's default (synthetic, sharegpt: 1000; gsm8k, custom: all), else the
      first N (gsm8k, custom) or N built/sampled ones (synthetic, sharegpt).
    input_len: synthetic input length distribution (a spec string; a bare int means fixed:N).
    max_out_len: the user's --max-out-len, or None when not given. synthetic: the default output length
      (`fixed:max_out_len`); sharegpt: when given, every prompt's output length (else the first reply's
      token count, as vLLM's benchmark).
    tokenizer: a transformers tokenizer, a local tokenizer path, or None for the default tokenizer;
      only loaded by the datasets that count tokens (synthetic, sharegpt, trace).
    trace: Prompts in time order, each with `t_sched_s` (its send time on the replay's timeline) and
      max_tokens = the trace's output length.
    conversations, and sharegpt with multi_turn: a `conversations.Conversations` (not Prompts): the
      conversation workload consumes them.
    """
    if name not in DATASETS:
        raise DatasetError(f"--dataset: unknown dataset {name!r}; choose from: {', '.join(DATASETS)}")
    if name in NEEDS_PATH and not path:
        raise DatasetError(f"--dataset {name} needs --dataset-path {PATH_HINT[name]}")
    if multi_turn and name not in ("sharegpt", "conversations"):
        raise DatasetError(f"--multi-turn: runs the conversations of --dataset sharegpt (or use --dataset "
                           f"conversations); got --dataset {name}")
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
    if name == "conversations":
        from .conversations import load as load_conversations
        return load_conversations(path, n or None)
    tok = tokenizer_for(tokenizer)
    if name == "trace":
        from . import trace
        reqs = trace.load(path, speed=trace_speed, start_s=trace_start, window_s=trace_window, num=n or None)
        return Prompts(trace.prompts(reqs, tok), source=reqs.source, dropped=reqs.dropped)
    if name == "sharegpt" and multi_turn:
        from .sharegpt import load_conversations
        return load_conversations(path, n, seed=seed, tokenizer=tok, max_out_len=max_out_len)
    if name == "sharegpt":
        from .sharegpt import load as load_sharegpt
        return load_sharegpt(path, n, seed=seed, tokenizer=tok, max_out_len=max_out_len)
    from .synthetic import load as load_synthetic
    if not output_len and max_out_len:
        output_len = f"fixed:{int(max_out_len)}"
    from .synthetic import prefix_length
    shared = prefix_length(input_len, prefix_tokens, prefix_ratio, prefix_groups)
    prompts = load_synthetic(n, input_len, seed, tok, output_len=output_len or None,
                             prefix_tokens=shared, prefix_groups=prefix_groups)
    groups = int(prefix_groups or 1)
    return Prompts(prompts, source=f"synthetic, input {input_len}"
                                   + (f", output {output_len}" if output_len else "")
                                   + (f", shared prefix {shared}" if shared else "")
                                   + (f" ({prefix_ratio:g} of the mean input)" if prefix_ratio else "")
                                   + (f" in {groups} groups" if shared and groups > 1 else ""))


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
