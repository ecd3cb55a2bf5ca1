"""API dialects (`--backend`): one module per way of asking a server for a streamed answer.

A dialect says only what differs between servers; transport, timing, retries, SSE framing, records
and verdicts stay in client.py and run.py, the same for all. Names follow vLLM's benchmark
(`benchmarks/backend_request_func.py`). Each module has:

- `NAME`; `CHAT`: True when it sends `messages`, False when it sends the prompt as text
  (`prompt_text` renders a message list, see there);
- `path(model) -> str`: the POST path (after the --host prefix); `MODELS_PATH`: the GET that checks
  the target before the test (`model_from(obj)`: the model it names, None when it names none);
- `body(prompt, cfg, model) -> dict`: the request body, from the same prompt and options the chat
  body uses (max tokens, --ignore-eos where the dialect has a field for it, sampling, --extra-body);
- `classify(obj) -> (kind, content, reasoning, finish_reason, usage)` of ONE parsed SSE event
  (records.ROLE/CONTENT/REASONING/USAGE/OTHER; usage as {"prompt_tokens", "completion_tokens"} with
  what the dialect reports, or None); raises TypeError/AttributeError/KeyError on a misshapen event;
- `ends(obj) -> bool`: nothing the answer needs comes after this event (read no further); after the
  stream it is asked only of events that carry a finish reason or a usage (the others can't end one);
- `MARKERS`: three byte strings; a read that contains none of them cannot end the answer, so the
  receive loop parses nothing (the hot path tests exactly three substrings, as it always did);
- `REPORTS_FINISH`: False when the dialect never names a finish reason (then a body that ended
  cleanly is the success, see triton.py); `STREAM_ONLY`: --no-stream is refused;
- `IGNORE_EOS`: the field --ignore-eos sets, or None when the dialect has none (refused).
A new dialect is one new module listed in NAMES.
"""
from __future__ import annotations

import importlib

NAMES = ("openai-chat", "openai", "tgi", "triton", "mindie")
DEFAULT = "openai-chat"
_MODULES = {"openai-chat": "openai_chat", "openai": "openai_completions", "tgi": "tgi", "triton": "triton",
            "mindie": "mindie"}


class BackendError(ValueError):
    """An unknown backend, or an option the backend can't honour: one line."""


def get(name: str | None):
    """The module of dialect `name` (None or "": the default)."""
    name = name or DEFAULT
    if name not in _MODULES:
        raise BackendError(f"--backend: expected one of {', '.join(NAMES)}, got {name!r}")
    return importlib.import_module(f".{_MODULES[name]}", __name__)


def prompt_text(messages: list[dict]) -> str:
    """A message list as one text prompt, for the text dialects: the contents joined with a line
    break, as AISBench renders a multi-round prompt template for a completions-style API without a
    meta template (ais_bench/benchmark/models/local_models/base.py, LMTemplateParser.parse_template:
    `prompt += last_sep + item['prompt']`, last_sep "\\n"). GSM8K's 4-shot prompt becomes the five
    questions and four answers in order, one after the other."""
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: their text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if content:
            parts.append(str(content))
    return "\n".join(parts)


SAMPLING = ("temperature", "top_p", "top_k")  # --temperature/--top-p/--top-k (the rest of cfg.sampling: --extra-body)


def split_sampling(sampling: dict) -> tuple[dict, dict]:
    """(the sampling options, the rest: --extra-body's other fields) of RunConfig.sampling."""
    return ({k: v for k, v in sampling.items() if k in SAMPLING},
            {k: v for k, v in sampling.items() if k not in SAMPLING})


def merge_extra(body: dict, extra: dict) -> dict:
    """--extra-body merged at the top level; a `parameters` object in it is merged into the body's own
    (the TGI and MindIE dialects keep their generation options there)."""
    for k, v in extra.items():
        if k == "parameters" and isinstance(v, dict) and isinstance(body.get(k), dict):
            body[k].update(v)
        else:
            body[k] = v
    return body


def text_usage(completion_tokens, prompt_tokens=None) -> dict | None:
    """The usage of a dialect that reports counts elsewhere (TGI's details), in OpenAI's names."""
    usage = {}
    if type(completion_tokens) is int:
        usage["completion_tokens"] = completion_tokens
    if type(prompt_tokens) is int:
        usage["prompt_tokens"] = prompt_tokens
    return usage or None


def text(value) -> str:
    """A text field: "" for null/empty; TypeError for anything not a string (a misshapen event)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise TypeError("text field is not a string")
    return value
