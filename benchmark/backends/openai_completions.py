"""`openai`: OpenAI's POST /v1/completions, streamed (vLLM bench's `openai` backend).

Sent: model, `prompt` (the message list as text: backends.prompt_text), max_tokens, stream,
stream_options.include_usage, ignore_eos (with --ignore-eos), sampling, --extra-body. Events:
`choices[0].text` and `finish_reason`, the usage chunk, `data: [DONE]`: the chat dialect's framing
and end, so its `classify` and `ends` serve (a completions chunk has no `delta`, so its `text` is read)."""
from __future__ import annotations

from . import prompt_text
from .openai_chat import MARKERS, MODELS_PATH, classify, ends, model_from  # noqa: F401 - the same stream

NAME = "openai"
CHAT = False
STREAM_ONLY = False
REPORTS_FINISH = True
IGNORE_EOS = "ignore_eos"


def path(model: str) -> str:
    return "/v1/completions"


def body(prompt, cfg, model: str) -> dict:
    out = {"model": model, "prompt": prompt_text(prompt.messages),
           "max_tokens": prompt.max_tokens or cfg.max_out_len, "stream": cfg.stream}
    if cfg.stream:
        out["stream_options"] = {"include_usage": True}
        if cfg.continuous_usage:  # opt-in: a server with a strict schema answers 400 to the field
            out["stream_options"]["continuous_usage_stats"] = True
    if cfg.ignore_eos:
        out["ignore_eos"] = True
    out.update(cfg.sampling)
    return out
