"""`mindie`: Huawei MindIE Service's native POST /infer, streamed (AISBench's mindie_stream_api).

Sent: {"inputs": the prompt as text (backends.prompt_text), "stream": true, "parameters":
{"max_new_tokens", "details": true, sampling}} (MindIE docs, "MindIE原生文本/流式推理接口";
AISBench ais_bench/benchmark/models/api_models/mindie_stream_api.py). Its documented parameters
have no ignore_eos: --ignore-eos is refused. --temperature 0 becomes `do_sample: false` (MindIE
requires temperature > 0), as for TGI.

Events, TGI-like: {"prefill_time", "decode_time", "token": {"id", "text"}}; the last one carries
`generated_text` and `details` {"finish_reason", "generated_tokens", "seed"}. No [DONE]. So the
TGI dialect's `classify` and `ends` serve. Usage: details.generated_tokens; the stream gives no prompt
token count, so the tokenizer counts the prompt text. The check before the test asks GET /v1/models
(MindIE's OpenAI-compatible listing)."""
from __future__ import annotations

from . import merge_extra, prompt_text
from .openai_chat import model_from  # noqa: F401 - GET /v1/models
from .tgi import MARKERS, classify, ends, parameters  # noqa: F401 - the same events

NAME = "mindie"
CHAT = False
STREAM_ONLY = True
REPORTS_FINISH = True
IGNORE_EOS = None
MODELS_PATH = "/v1/models"


def path(model: str) -> str:
    return "/infer"


def body(prompt, cfg, model: str) -> dict:
    params, extra = parameters(prompt, cfg)
    return merge_extra({"inputs": prompt_text(prompt.messages), "stream": True, "parameters": params}, extra)
