"""`tgi`: Hugging Face text-generation-inference's POST /generate_stream (vLLM bench's `tgi`).

Sent: {"inputs": the prompt as text (backends.prompt_text), "parameters": {"max_new_tokens",
"details": true, sampling}} (TGI docs, basic_tutorials/request_parameters.md). TGI has no ignore_eos
(nor min tokens): --ignore-eos is refused rather than sent and silently ignored. --temperature 0 is
sent as greedy decoding (`do_sample: false`, no temperature: TGI requires temperature > 0); top_k -1
(off) is left out (TGI requires top_k > 0).

Events (TGI's StreamResponse): {"index", "token": {"id", "text", "logprob", "special"},
"generated_text": null, "details": null}; the last one has `generated_text` (the whole answer) and
`details` {"finish_reason": "length" | "eos_token" | "stop_sequence", "generated_tokens", "seed",
"input_length" (newer TGI)}. No [DONE]: the event with `generated_text` ends the answer. A token event
counts when its token is not special (an EOS token's text, e.g. "</s>", is not answer text).
Usage: completion tokens = details.generated_tokens; prompt tokens = details.input_length when the
server sends it, else the tokenizer counts the prompt text (records' token_source says which)."""
from __future__ import annotations

from ..records import CONTENT, OTHER
from . import merge_extra, prompt_text, split_sampling, text, text_usage

NAME = "tgi"
CHAT = False
STREAM_ONLY = True
REPORTS_FINISH = True
IGNORE_EOS = None
MODELS_PATH = "/info"
MARKERS = (b'"generated_text":"', b'"generated_text": "', b'"details":{')


def path(model: str) -> str:
    return "/generate_stream"


def model_from(info) -> str | None:
    model = info.get("model_id") if isinstance(info, dict) else None
    return model if isinstance(model, str) and model else None


def parameters(prompt, cfg) -> tuple[dict, dict]:
    """(the `parameters` object shared by TGI and MindIE's native API, --extra-body's other fields)."""
    sampling, extra = split_sampling(cfg.sampling)
    params = {"max_new_tokens": prompt.max_tokens or cfg.max_out_len, "details": True}
    if "temperature" in sampling:
        if sampling["temperature"] == 0:
            params["do_sample"] = False  # greedy: these APIs refuse temperature 0
        else:
            params["temperature"] = sampling["temperature"]
    if "top_p" in sampling:
        params["top_p"] = sampling["top_p"]
    if sampling.get("top_k", -1) != -1:
        params["top_k"] = sampling["top_k"]
    return params, extra


def body(prompt, cfg, model: str) -> dict:
    params, extra = parameters(prompt, cfg)
    return merge_extra({"inputs": prompt_text(prompt.messages), "parameters": params}, extra)


def classify(obj: dict):
    """(kind, content, reasoning, finish_reason, usage) of one StreamResponse."""
    token = obj.get("token") or {}
    content = "" if token.get("special") else text(token.get("text"))
    details = obj.get("details")
    finish = usage = None
    if isinstance(details, dict):
        finish = details.get("finish_reason")
        usage = text_usage(details.get("generated_tokens"), details.get("input_length"))
    return (CONTENT if content else OTHER), content, "", None if finish is None else str(finish), usage


def ends(obj) -> bool:
    return isinstance(obj, dict) and (isinstance(obj.get("generated_text"), str)
                                      or isinstance(obj.get("details"), dict))
