"""`openai-chat`: OpenAI's POST /v1/chat/completions, streamed (the default; vLLM, SGLang, llama.cpp,
MindIE's OpenAI front end, ...).

Sent: model, messages, max_tokens, stream, stream_options.include_usage, ignore_eos (only with
--ignore-eos: some servers answer 422 to fields they don't know), then the sampling options and
--extra-body. Events: `choices[0].delta` (content, reasoning_content or reasoning, role) and
`finish_reason`; the usage in a chunk of its own (or on the finish chunk). The answer ends at
`data: [DONE]` or at the chunk that carries the usage (`ends`)."""
from __future__ import annotations

from ..records import CONTENT, OTHER, REASONING, ROLE, USAGE
from . import text

NAME = "openai-chat"
CHAT = True
STREAM_ONLY = False
REPORTS_FINISH = True
IGNORE_EOS = "ignore_eos"
MODELS_PATH = "/v1/models"
# a read holding none of these can't end the answer ([DONE], or the chunk with the usage)
MARKERS = (b"[DONE]", b'"usage":{', b'"usage": {')


def path(model: str) -> str:
    return "/v1/chat/completions"


def model_from(listed) -> str | None:
    try:
        return listed["data"][0]["id"]
    except (KeyError, IndexError, TypeError):
        return None


def body(prompt, cfg, model: str) -> dict:
    out = {"model": model, "messages": prompt.messages, "max_tokens": prompt.max_tokens or cfg.max_out_len,
           "stream": cfg.stream}
    if cfg.stream:
        out["stream_options"] = {"include_usage": True}
        if cfg.continuous_usage:  # opt-in: a server with a strict schema answers 400 to the field
            out["stream_options"]["continuous_usage_stats"] = True
    if cfg.ignore_eos:
        out["ignore_eos"] = True
    out.update(cfg.sampling)
    return out


def classify(obj: dict):
    """(kind, content, reasoning, finish_reason, usage) of one chunk."""
    usage = obj.get("usage")
    usage = usage if usage and isinstance(usage, dict) else None
    choices = obj.get("choices") or []
    if not choices:
        return (USAGE if obj.get("usage") else OTHER), "", "", None, usage
    choice = choices[0] or {}
    delta = choice.get("delta")
    if delta is None:  # /v1/completions chunks carry `text` (a server answering the other dialect)
        delta = {"content": choice.get("text")}
    content = text(delta.get("content"))
    reasoning = text(delta.get("reasoning_content") or delta.get("reasoning"))
    kind = CONTENT if content else REASONING if reasoning else ROLE if "role" in delta else OTHER
    finish = choice.get("finish_reason")
    return kind, content, reasoning, None if finish is None else str(finish), usage


def ends(obj) -> bool:
    """A chunk after which an OpenAI-style stream has nothing more to say: it carries the usage
    (stream_options.include_usage is always asked for) and either no choices (OpenAI's and vLLM's
    separate usage chunk, which comes last) or only finished ones (usage on the finish chunk, as
    llama-cpp-python sends it). A usage on every chunk (vLLM's continuous_usage_stats) ends nothing
    until the finish."""
    if not isinstance(obj, dict):
        return False
    usage = obj.get("usage")
    if not isinstance(usage, dict) or not usage:
        return False
    choices = obj.get("choices")
    if not choices:
        return True
    return isinstance(choices, list) and all(isinstance(c, dict) and c.get("finish_reason") is not None
                                             for c in choices)
