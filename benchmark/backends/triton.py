"""`triton`: Triton Inference Server's generate extension, POST /v2/models/<model>/generate_stream,
for a TensorRT-LLM model (vLLM bench's `tensorrt-llm`, `async_request_trt_llm`; AISBench's triton_api).

Sent (the generate extension maps top-level fields to the model's inputs; tensorrtllm_backend
docs/model_config.md names them): {"text_input": the prompt as text (backends.prompt_text),
"max_tokens", "stream": true}, with --ignore-eos `min_tokens` = max_tokens (so exactly max_tokens
come out), --temperature/--top-p/--top-k as `temperature`/`top_p`/`top_k`, --extra-body merged in.
The URL names the model: --model is required (the check before the test is GET /v2/models/<model>,
its metadata).

Events: {"model_name", "model_version", "text_output", ...}: each `text_output` is the text of the
tokens of that response (not accumulated: `accumulate_tokens` is not sent). What Triton cannot say
and what is done instead:
- no finish reason: the answer is a success when its body ended cleanly (the chunked body's last
  chunk) after at least one event and no error event; finish_reason is recorded as null, never made up;
  a connection cut mid-answer is "stream broken", as for every dialect;
- no end marker: the body's end is the end of the answer (nothing ends it earlier);
- no token counts: the tokenizer counts the answer and the prompt text (token_source "tokenizer")."""
from __future__ import annotations

from urllib.parse import quote

from ..records import CONTENT, OTHER
from . import merge_extra, prompt_text, split_sampling, text

NAME = "triton"
CHAT = False
STREAM_ONLY = True
REPORTS_FINISH = False
IGNORE_EOS = "min_tokens"
NEEDS_MODEL = True
MODELS_PATH = "/v2/models/{model}"
MARKERS = (b"\x00", b"\x00", b"\x00")  # never in JSON text: no event ends the answer before the body


def path(model: str) -> str:
    return f"/v2/models/{quote(model, safe='')}/generate_stream"


def model_from(meta) -> str | None:
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) and name else None


def body(prompt, cfg, model: str) -> dict:
    sampling, extra = split_sampling(cfg.sampling)
    max_tokens = prompt.max_tokens or cfg.max_out_len
    out = {"text_input": prompt_text(prompt.messages), "max_tokens": max_tokens, "stream": True}
    if cfg.ignore_eos:
        out["min_tokens"] = max_tokens
    out.update(sampling)
    return merge_extra(out, extra)


def classify(obj: dict):
    content = text(obj.get("text_output"))
    return (CONTENT if content else OTHER), content, "", None, None


def ends(obj) -> bool:
    return False
