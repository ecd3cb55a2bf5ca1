"""How the simulator writes one answer in each API dialect (the client's benchmark/backends).

The schedule (which token leaves when, and what the faults bend) is `Simulator.events`'; a formatter
only turns its steps into bytes: `start()` (the role event, or None), `token(i, texts, kind)` (one
event carrying the tokens `texts`, i = the first one's index; kind "content" or "reasoning"),
`finish()` (the finish event, or None where the dialect has none or puts it on the last token),
`usage()` (a usage event, or None), `end()` (the end marker, or None), `whole()` (a non-streamed
body). Formats, from each server's docs (see benchmark/backends/<dialect>.py):

- openai-chat / openai: vLLM's chunks, `data: [DONE]`;
- tgi: TGI's StreamResponse; a `length` answer's last token carries `generated_text` and `details`,
  a `stop` answer ends with a special EOS token event carrying them (finish_reason "eos_token");
- mindie: the same shape with MindIE's prefill_time/decode_time and no `special`;
- triton: TensorRT-LLM's generate_stream responses, `text_output` only; an answer of 0 tokens is one
  response with empty text. No finish, no usage, no end marker.
Text dialects have no reasoning field: a reasoning token is written as text.

`usage` given to a formatter is None when the no-usage fault hides it; `finish` None when no-finish
drops it. Token JSON strings are cached (the filler words, a canned answer's tokens)."""
from __future__ import annotations

import json
from functools import lru_cache


@lru_cache(maxsize=65536)
def _js(text: str) -> bytes:
    return json.dumps(text).encode()


def _texts_js(texts: list[str]) -> bytes:
    return _js(texts[0] if len(texts) == 1 else "".join(texts))


class OpenAIChat:
    """vLLM's /v1/chat/completions chunks."""
    name = "openai-chat"
    has_start = True  # the role chunk comes before the first token
    object = b"chat.completion.chunk"

    def __init__(self, rid: str, created: int, model_json: bytes, crlf: bool, n: int, finish: str | None,
                 usage: dict | None, include_usage: bool, usage_on_finish: bool, text, model: str = "",
                 reasoning_field: str = "reasoning_content", continuous_usage: bool = False, prompt_tokens: int = 0):
        self.sse, self.nl = (b"data:", b"\r\n\r\n") if crlf else (b"data: ", b"\n\n")
        self.n, self.finish_reason, self.usage_obj, self.text = n, finish, usage, text
        self.include_usage, self.usage_on_finish = include_usage, usage_on_finish
        self.usage_json = json.dumps(usage, separators=(",", ":")).encode() if usage else b""
        self.head = b'%s{"id":"%s","object":"%s","created":%d,"model":%s,' % (
            self.sse, rid.encode(), self.object, created, model_json)
        self.model, self.model_json, self.rid, self.created = model, model_json, rid, created
        self.made: dict[str, bytes] = {}  # token text -> its content event (see token)
        self.reasoning_field = reasoning_field.encode()
        # vLLM's stream_options.continuous_usage_stats: the running usage on every token chunk
        self.continuous, self.prompt_tokens = continuous_usage, prompt_tokens
        self.setup()

    def setup(self) -> None:
        self.pre = self.head + b'"choices":[{"index":0,"delta":{"content":'
        self.pre_reasoning = self.head + b'"choices":[{"index":0,"delta":{"%s":' % self.reasoning_field
        self.close = b"}"  # of the delta
        self.post = self.close + b',"logprobs":null,"finish_reason":null}]}' + self.nl

    def start(self) -> bytes | None:
        return (self.head + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
                b'"logprobs":null,"finish_reason":null}]}' + self.nl)

    def token(self, i: int, texts: list[str], kind: str = "content") -> bytes:
        pre = self.pre if kind == "content" else self.pre_reasoning
        if self.continuous:
            sent = i + len(texts)  # tokens so far, reasoning ones included
            usage = b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (
                self.prompt_tokens, sent, self.prompt_tokens + sent)
            return pre + _texts_js(texts) + self.close + (
                b',"logprobs":null,"finish_reason":null}],"usage":%s}' % usage) + self.nl
        # the simulator's hot path: the filler words repeat, so one content token's event is made once
        if kind == "content" and len(texts) == 1:
            event = self.made.get(texts[0])
            if event is None:
                event = self.made[texts[0]] = self.pre + _js(texts[0]) + self.post
            return event
        return pre + _js("".join(texts)) + self.post

    def finish(self) -> bytes | None:
        if self.finish_reason is None:
            return None
        usage_here = b',"usage":' + self.usage_json if self.usage_on_finish and self.usage_json else b""
        return self.pre + b'""},"logprobs":null,"finish_reason":"%s"}]%s}%s' % (
            self.finish_reason.encode(), usage_here, self.nl)

    def usage(self) -> bytes | None:
        if not (self.include_usage and self.usage_json) or self.usage_on_finish:
            return None
        return self.head + b'"choices":[],"usage":' + self.usage_json + b"}" + self.nl

    def end(self) -> bytes | None:
        return self.sse + b"[DONE]" + self.nl

    def whole(self, text: str, finish: str) -> dict:
        return {"id": self.rid, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": finish}], **self._usage_field()}

    def _usage_field(self) -> dict:
        return {"usage": self.usage_obj} if self.usage_obj else {}


class OpenAICompletions(OpenAIChat):
    """vLLM's /v1/completions chunks: `text`, no role chunk."""
    name = "openai"
    has_start = False
    object = b"text_completion"

    def setup(self) -> None:
        self.pre = self.pre_reasoning = self.head + b'"choices":[{"index":0,"text":'
        self.close = b""
        self.post = b',"logprobs":null,"finish_reason":null}]}' + self.nl

    def start(self) -> bytes | None:
        return None

    def finish(self) -> bytes | None:
        if self.finish_reason is None:
            return None
        usage_here = b',"usage":' + self.usage_json if self.usage_on_finish and self.usage_json else b""
        return self.pre + b'"","logprobs":null,"finish_reason":"%s"}]%s}%s' % (
            self.finish_reason.encode(), usage_here, self.nl)

    def whole(self, text: str, finish: str) -> dict:
        return {"id": self.rid, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
                **self._usage_field()}


class TGI(OpenAIChat):
    """TGI's /generate_stream StreamResponses."""
    name = "tgi"
    has_start = False
    finish_names = {"stop": "eos_token", "length": "length"}
    eos = b'{"id":2,"text":"</s>","logprob":0.0,"special":true}'

    def setup(self) -> None:
        self.finish_name = self.finish_names.get(self.finish_reason, self.finish_reason)
        # length: the last token carries the end; stop: an EOS token after it does (finish())
        self.last = self.n - 1 if self.finish_reason == "length" else -1

    def _token_obj(self, i: int, js: bytes) -> bytes:
        return b'{"id":%d,"text":%s,"logprob":0.0,"special":false}' % (100 + i, js)

    def _event(self, i: int, token: bytes, final: bool) -> bytes:
        tail = (b',"generated_text":%s,"details":%s' % (_js(self.text()), self._details())
                if final else b',"generated_text":null,"details":null')
        return self.sse + b'{"index":%d,"token":%s%s,"top_tokens":null}' % (i, token, tail) + self.nl

    def _details(self) -> bytes:
        details = {"finish_reason": self.finish_name}
        if self.usage_obj:
            details["generated_tokens"] = self.usage_obj["completion_tokens"]
        details["seed"] = None
        if self.usage_obj:
            details["input_length"] = self.usage_obj["prompt_tokens"]
        return json.dumps(details, separators=(",", ":")).encode()

    def start(self) -> bytes | None:
        return None

    def token(self, i: int, texts: list[str], kind: str = "content") -> bytes:
        final = self.last >= 0 and i + len(texts) > self.last
        return self._event(i, self._token_obj(i, _texts_js(texts)), final)

    def finish(self) -> bytes | None:
        if self.finish_reason is None or self.last >= 0:
            return None
        return self._event(self.n, self.eos, True)

    def usage(self) -> bytes | None:
        return None

    def end(self) -> bytes | None:
        return None

    def whole(self, text: str, finish: str) -> dict:
        return {"generated_text": text, "details": json.loads(self._details())}


class MindIE(TGI):
    """MindIE's native /infer stream: TGI-like events with its timing fields."""
    name = "mindie"
    eos = b'{"id":2,"text":""}'

    def _token_obj(self, i: int, js: bytes) -> bytes:
        return b'{"id":%d,"text":%s}' % (100 + i, js)

    def _event(self, i: int, token: bytes, final: bool) -> bytes:
        times = b'"prefill_time":12.5,"decode_time":null' if i == 0 else b'"prefill_time":null,"decode_time":8.0'
        tail = b',"generated_text":%s,"details":%s' % (_js(self.text()), self._details()) if final else b""
        return self.sse + b'{%s,"token":%s%s}' % (times, token, tail) + self.nl

    def _details(self) -> bytes:
        details = {"finish_reason": self.finish_name}
        if self.usage_obj:
            details["generated_tokens"] = self.usage_obj["completion_tokens"]
        details["seed"] = 846930886
        return json.dumps(details, separators=(",", ":")).encode()


class Triton(OpenAIChat):
    """Triton's generate extension with TensorRT-LLM: `text_output` per response, nothing else."""
    name = "triton"
    has_start = False

    def setup(self) -> None:
        self.pre = self.sse + (b'{"model_name":%s,"model_version":"1","sequence_end":false,"sequence_id":0,'
                               b'"sequence_start":false,"text_output":' % self.model_json)
        self.post = b"}" + self.nl

    def start(self) -> bytes | None:
        return None

    def token(self, i: int, texts: list[str], kind: str = "content") -> bytes:
        return self.pre + _texts_js(texts) + self.post

    def finish(self) -> bytes | None:
        return self.pre + b'""' + self.post if self.n == 0 else None  # the one (empty) response

    def usage(self) -> bytes | None:
        return None

    def end(self) -> bytes | None:
        return None

    def whole(self, text: str, finish: str) -> dict:
        return {"model_name": self.model, "model_version": "1", "text_output": text}


FORMATTERS = {f.name: f for f in (OpenAIChat, OpenAICompletions, TGI, MindIE, Triton)}
