"""The simulator's HTTP server: a streaming LLM endpoint with known timing, in every API dialect.

It answers like vLLM: a role chunk and the first token at TTFT, one token every ITL after it, a finish
chunk, a usage chunk when `stream_options.include_usage` asks for one, then `data: [DONE]`. The same
schedule is written in each dialect of benchmark/backends at its path (dialects.py formats the events):
/v1/chat/completions, /v1/completions, TGI's /generate_stream, Triton's
/v2/models/<model>/generate_stream, MindIE's /infer; GET /info (TGI) and /v2/models/<model> (Triton)
answer the client's check. GET /metrics shows what it did in vLLM's Prometheus format (metrics.py).
A prefix cache (benchmark/prefix_cache.py's block rule, keyed on whitespace words) finds each prompt's
cached blocks when it is scheduled: usage says cached_tokens, /metrics counts the hits, and with
--prefill-ms-per-token the uncached tokens lengthen TTFT.

Timing: every event has an absolute deadline counted from the request's arrival, so errors never add
up, and no event leaves before its deadline (event-loop timers have a 1 ms grain, so up to ~1 ms after).
One shared ticker (a heap of streams keyed by their next deadline, one event-loop timer) writes the
prepared bytes of every stream that is due straight to its socket: at 512 streams x ITL 20 ms that took
~35% less CPU than a coroutine sleeping per token, and kept lateness far lower. Event bytes are cut from
per-request templates, not json.dumps. uvloop is used when installed (~25% more events/s at ITL 0).
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import itertools
import json
import math
import os
import random
import re
import signal
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from ..prefix_cache import PrefixCache, block_keys, chat_word_tokens, max_hit_blocks, message_text, word_tokens
from .dialects import FORMATTERS
from .faults import ABORT, FEW, HTTP_ERRORS, parse_fault
from .metrics import Shared, Stats

# Filler tokens: the first has no leading space, the rest do, so the text reads "the quick brown ...".
_WORDS = "the quick brown fox jumps over the lazy dog".split()
_FIRST_TOKEN = _WORDS[0]
_TOKENS = [" " + w for w in _WORDS]
_TOKENS_JSON = [json.dumps(t).encode() for t in _TOKENS]
_FIRST_TOKEN_JSON = json.dumps(_FIRST_TOKEN).encode()


def _filler(j: int) -> str:
    """The j-th filler token (the reasoning tokens, and the answer's when no --answers match)."""
    return _TOKENS[j % len(_TOKENS)] if j else _FIRST_TOKEN


def split_tokens(text: str) -> list[str]:
    """Whitespace tokens that keep their leading whitespace, so they join back to exactly `text`."""
    pieces = re.findall(r"\s*\S+", text)
    tail = text[sum(map(len, pieces)):]
    if tail:  # trailing whitespace rides on the last token
        pieces = pieces[:-1] + [pieces[-1] + tail] if pieces else [tail]
    return pieces


def load_answers(path: str) -> list[tuple[str, list[str], list[bytes]]]:
    """jsonl {"question", "completion"} -> (question, tokens, JSON-encoded tokens), longest question first."""
    answers = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question, completion = str(row["question"]), str(row["completion"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: need a JSON object with question and completion ({exc})")
            tokens = split_tokens(completion)
            answers.append((question, tokens, [json.dumps(t).encode() for t in tokens]))
    answers.sort(key=lambda a: -len(a[0]))  # a question that contains another one wins
    return answers


_text = message_text  # message content as text: a string, or the text parts of a multimodal list


BATCH_BYTES = 64 * 1024  # most bytes written to one stream per tick (matters at ITL 0)
HIGH_WATER = 1024 * 1024  # a client this far behind is not written to until it catches up
EARLY_S = 1e-4  # events due this close count as due now (a uvloop timer can fire a little early)

# The clock of every deadline: asyncio's loop.time() is this clock too, uvloop's is whole milliseconds.
_now = time.monotonic


def _delay(when: float) -> float:
    """Seconds until `when`, rounded up to the event loops' millisecond timer grain so no timer fires early."""
    return max(0.0, math.ceil((when - _now()) * 1000) / 1000)


def _reset(transport) -> None:
    """Abort with a TCP RST, the way a crashed server or proxy drops a connection."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (OSError, AttributeError):
        pass
    transport.abort()


class _Stream:
    """One streaming answer: its socket, its start time and the iterator of (offset_s, bytes, tokens) events.

    `acct` (metrics.Request) hears of the content tokens as they are written and of the end; the stream
    counts per write, not per token, so the hot path stays a few additions.
    """

    __slots__ = ("transport", "t0", "events", "pending", "chunked", "done", "written", "acct", "last_write")

    def __init__(self, transport, t0: float, events, chunked: bool, done: asyncio.Future, traced: bool = False,
                 acct=None):
        self.transport, self.t0, self.events, self.chunked, self.done = transport, t0, events, chunked, done
        self.pending = next(events, None)
        self.written = [] if traced else None  # --trace: when each event really left
        self.acct = acct
        self.last_write: float | None = None

    def first_deadline(self) -> float | None:
        if self.pending is None:
            self.finish()
            return None
        return self.t0 + self.pending[0]

    def finish(self, aborted: bool = False) -> None:
        if self.acct is not None:
            if aborted:
                self.acct.abort()
            else:
                self.acct.done(self.last_write if self.last_write is not None else _now())
        if not self.done.done():
            self.done.set_result(None)

    def step(self, limit: float) -> float | None:
        """Write every event due by `limit` in one send; return the next deadline, None when finished."""
        transport = self.transport
        if transport is None or transport.is_closing():  # the client went away
            self.finish(aborted=True)
            return None
        if transport.get_write_buffer_size() > HIGH_WATER:  # slow reader: let it catch up
            return limit + 0.001
        parts, size, ntok, ev, t0 = [], 0, 0, self.pending, self.t0
        while ev is not None and t0 + ev[0] <= limit and size < BATCH_BYTES:
            if ev[1] is ABORT:
                if parts:
                    self._write(parts, size, ntok)
                _reset(transport)
                self.finish(aborted=True)
                return None
            parts.append(ev[1])
            size += len(ev[1])
            ntok += ev[2]
            ev = next(self.events, None)
        self.pending = ev
        if parts:
            self._write(parts, size, ntok)
        if ev is None:
            self.finish()
            return None
        return t0 + ev[0]

    def _write(self, parts: list[bytes], size: int, ntok: int) -> None:
        # Events due together go out as one HTTP chunk in one send (TCP_NODELAY is on in asyncio).
        body = b"".join(parts)
        self.transport.write(b"%x\r\n%b\r\n" % (size, body) if self.chunked else body)
        now = self.last_write = _now()
        if self.written is not None:
            self.written += [now] * ntok  # one time per token
        if ntok and self.acct is not None:
            self.acct.wrote(ntok, now)


class _Ticker:
    """Wakes once per due time and writes to every stream due then (one timer for all streams)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.heap: list[tuple[float, int, _Stream]] = []
        self.seq = itertools.count()  # tie-breaker so streams are never compared
        self.timer: asyncio.Handle | None = None
        self.armed = float("inf")  # when the timer fires (uvloop handles have no .when())

    def add(self, stream: _Stream) -> None:
        when = stream.first_deadline()
        if when is None:
            return
        heapq.heappush(self.heap, (when, next(self.seq), stream))
        if when < self.armed:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer, self.armed = self.loop.call_later(_delay(when), self._tick), when

    def _tick(self) -> None:
        self.timer, self.armed = None, float("inf")
        heap = self.heap
        limit = _now() + EARLY_S  # a timer that fired early finds nothing due and re-arms
        due = []
        while heap and heap[0][0] <= limit:
            due.append(heapq.heappop(heap)[2])
        for stream in due:
            try:
                when = stream.step(limit)
            except Exception as exc:  # fail this answer, keep the ticker alive for the others
                if not stream.done.done():
                    stream.done.set_exception(exc)
                continue
            if when is not None:
                heapq.heappush(heap, (when, next(self.seq), stream))
        if heap:
            self._arm(heap[0][0])


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8000
    ttft: float = 0.1  # seconds
    itl: float = 0.02
    output_len: int = 128
    model: str = "llm-sim"
    answers: list | None = None
    fault: tuple | None = None
    fault_every: int = 1
    max_concurrency: int = 0  # answer slots, as a real server's batch; 0 = unlimited
    trace: str | None = None  # file to append each streamed answer's real write times to
    workers: int = 1  # processes sharing the listening socket
    hidden_delay: float = 0.0  # seconds every request waits in front of the engine part (unseen by /metrics)
    kv_capacity: int = 131072  # tokens of KV cache behind vllm:kv_cache_usage_perc
    metrics_lie: dict = field(default_factory=dict)  # FIELD -> factor on what /metrics reports
    metrics_pad_kb: int = 0  # extra KB of padding series on /metrics
    reasoning_tokens: int = 0  # of each answer's tokens, this many reasoning ones come first
    reasoning_field: str = "reasoning_content"  # or "reasoning", or "think" (<think> text in the content)
    tokens_per_event: tuple = (1, 1)  # tokens in each event: drawn uniformly from this range (inclusive)
    seed: int = 0  # of the per-request draws of tokens_per_event
    prefix_cache: bool = True  # vLLM V1's automatic prefix caching (benchmark/prefix_cache.py's rule)
    block_size: int = 16  # tokens (whitespace words) per cache block
    prefill_per_token: float = 0.0  # s of TTFT per prompt token not found in the cache


@dataclass
class Plan:
    """What one request will get back."""

    dialect: str  # a name in dialects.FORMATTERS
    stream: bool
    include_usage: bool
    n: int  # content tokens
    finish: str
    prompt_tokens: int
    canned: tuple[list[str], list[bytes]] | None
    fault: str | None
    arg: float | int | None
    reasoning: int = 0  # the first `reasoning` of the n tokens are reasoning
    groups: list = field(default_factory=list)  # tokens in each token event, summing to n
    continuous_usage: bool = False  # stream_options.continuous_usage_stats: usage on every token event
    words: list | None = None  # the prompt's tokens as the prefix cache keys them (None: no cache)
    cached: int | None = None  # prompt tokens found in the prefix cache (None: no cache)
    ttft: float = 0.0  # s: --ttft-ms + --prefill-ms-per-token x uncached prompt tokens

    def token(self, i: int) -> str:
        if self.canned and i < len(self.canned[0]):
            return self.canned[0][i]
        return _TOKENS[i % len(_TOKENS)] if i else _FIRST_TOKEN

    @property
    def chat(self) -> bool:
        return self.dialect == "openai-chat"

    def usage(self, n: int) -> dict:
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": n,
                 "total_tokens": self.prompt_tokens + n}
        if self.reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": min(self.reasoning, n)}
        if self.cached is not None:  # as vLLM sends it (with --enable-prompt-tokens-details), SGLang, llama.cpp
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached}
        return usage


class BadRequest(ValueError):
    pass


class Simulator:
    def __init__(self, cfg: Config, shared: Shared | None = None, worker: int = 0):
        self.cfg = cfg
        self.stats = Stats(cfg.model, cfg.kv_capacity, cfg.metrics_lie, cfg.metrics_pad_kb, shared, worker)
        self.requests = 0
        self.model_json = json.dumps(cfg.model).encode()
        self.ticker: _Ticker | None = None
        self.slots = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
        # one cache per process: with --workers N a request's hits depend on the process that took it
        self.cache = PrefixCache(cfg.kv_capacity // cfg.block_size) if cfg.prefix_cache else None
        self.trace_fd = os.open(cfg.trace, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if cfg.trace else None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/generate_stream", self.tgi)
        app.router.add_post("/infer", self.mindie)
        app.router.add_post("/v2/models/{model}/generate_stream", self.triton)
        app.router.add_get("/info", self.info)
        app.router.add_get("/v2/models/{model}", self.triton_model)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.cfg.model, "object": "model", "created": int(time.time()), "owned_by": "llm-sim",
             "root": self.cfg.model, "parent": None}]})

    async def metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST
        return web.Response(body=self.stats.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def info(self, request: web.Request) -> web.Response:
        """TGI's GET /info (the fields a client reads)."""
        return web.json_response({"model_id": self.cfg.model, "model_dtype": "torch.float16",
                                  "max_input_tokens": 4095, "max_total_tokens": 4096, "version": "llm-sim"})

    async def triton_model(self, request: web.Request) -> web.Response:
        """Triton's model metadata, GET /v2/models/<model>; an unknown model is Triton's 400."""
        name = request.match_info["model"]
        if name != self.cfg.model:
            return web.json_response({"error": f"Request for unknown model: '{name}' is not found"}, status=400)
        return web.json_response({"name": name, "versions": ["1"], "platform": "ensemble",
                                  "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}],
                                  "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self.answer(request, "openai-chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self.answer(request, "openai")

    async def tgi(self, request: web.Request) -> web.StreamResponse:
        return await self.answer(request, "tgi")

    async def mindie(self, request: web.Request) -> web.StreamResponse:
        return await self.answer(request, "mindie")

    async def triton(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["model"] != self.cfg.model:
            return web.json_response({"error": f"Request for unknown model: '{request.match_info['model']}' "
                                               "is not found"}, status=400)
        return await self.answer(request, "triton")

    def pick_fault(self, request: web.Request) -> tuple | None:
        self.requests += 1
        header = request.headers.get("X-Sim-Fault")
        if header is not None:  # the header overrides the command line
            return None if header.strip().lower() in ("", "none") else parse_fault(header)
        if self.cfg.fault and self.requests % self.cfg.fault_every == 0:
            return self.cfg.fault
        return None

    def plan(self, body, dialect: str, fault: tuple | None) -> Plan:
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        cfg = self.cfg
        ignore_eos, min_tokens, stream, include_usage = body.get("ignore_eos"), 0, bool(body.get("stream")), False
        if dialect == "openai-chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("messages: a non-empty list is required")
            if not all(isinstance(m, dict) for m in messages):
                raise BadRequest("messages: each message must be an object")
            prompt_tokens = sum(len(_text(m.get("content")).split()) for m in messages)
            # the cache keys the messages' words in order, each message's first word marked with its role
            words = chat_word_tokens(messages) if self.cache is not None else None
            users = [m for m in messages if m.get("role") == "user"]
            question_text = _text(users[-1].get("content")) if users else ""
        elif dialect == "openai":
            question_text = _prompt_text(body.get("prompt"), "prompt")
            prompt_tokens = len(question_text.split())
            words = word_tokens(question_text) if self.cache is not None else None
        else:  # the text dialects: TGI/MindIE `inputs` + `parameters`, Triton `text_input` + top-level inputs
            field = "text_input" if dialect == "triton" else "inputs"
            question_text = _prompt_text(body.get(field), field)
            prompt_tokens = len(question_text.split())
            words = word_tokens(question_text) if self.cache is not None else None
        if dialect in ("tgi", "mindie"):
            params = body.get("parameters") or {}
            if not isinstance(params, dict):
                raise BadRequest("parameters: an object is required")
            max_tokens = params.get("max_new_tokens")
            stream = dialect == "tgi" or bool(body.get("stream"))  # /generate_stream always streams
            include_usage = bool(params.get("details"))  # details carry generated_tokens
            ignore_eos = False  # neither has such a parameter
        elif dialect == "triton":
            max_tokens = body.get("max_tokens")
            min_tokens = body.get("min_tokens") or 0
            stream = True  # generate_stream
        else:
            max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
            raise BadRequest(f"max_tokens must be at least 1, got {max_tokens!r}")
        canned = None
        if cfg.answers and question_text:
            canned = next(((toks, js) for q, toks, js in cfg.answers if q in question_text), None)
        natural = len(canned[0]) if canned else cfg.output_len
        if type(min_tokens) is int and min_tokens > natural:  # Triton's min_tokens: no EOS before it
            natural = min_tokens
        name, arg = fault or (None, None)
        if name == "huge":
            n, finish = arg, "length"
        elif name == "empty-completion":
            n, finish = 0, "stop"
        elif ignore_eos:
            n, finish = (max_tokens if max_tokens is not None else cfg.output_len), "length"
        elif max_tokens is not None and max_tokens <= natural and (min_tokens or max_tokens < natural):
            n, finish = max_tokens, "length"
        else:
            n, finish = natural, "stop"
        options = body.get("stream_options") if dialect in ("openai-chat", "openai") else None
        options = options if isinstance(options, dict) else {}
        lo, hi = cfg.tokens_per_event
        draw = random.Random(cfg.seed * 1_000_003 + self.requests)  # one sequence per request number
        reasoning, groups = min(cfg.reasoning_tokens, n), []
        for left in (reasoning, n - reasoning):  # an event never mixes reasoning and answer tokens
            while left > 0:
                groups.append(min(left, draw.randint(lo, hi)))
                left -= groups[-1]
        return Plan(dialect=dialect, stream=stream, include_usage=include_usage,
                    n=n, finish=finish, prompt_tokens=prompt_tokens, canned=canned, fault=name, arg=arg,
                    reasoning=reasoning, groups=groups, words=words, ttft=cfg.ttft,
                    continuous_usage=bool(options.get("continuous_usage_stats")) and name != "no-usage")

    async def answer(self, request: web.Request, dialect: str) -> web.StreamResponse:
        t0 = request["arrival"] = _now()  # every deadline of this answer counts from here; --trace too
        if self.cfg.hidden_delay:  # a gateway in front of the engine part: the client waits, /metrics never
            when = t0 + self.cfg.hidden_delay
            while (wait := _delay(when)) > 0:
                await asyncio.sleep(wait)
            t0 = _now()  # the engine part's arrival
        try:
            fault = self.pick_fault(request)
            plan = self.plan(await request.json(), dialect, fault)
        except ValueError as exc:  # BadRequest, a bad X-Sim-Fault, or a body that is not JSON
            return _error(400, str(exc))
        name = plan.fault
        if name in HTTP_ERRORS:
            status, body, headers = HTTP_ERRORS[name]
            return web.json_response(body, status=status, headers=headers)
        if name == "reset-before-headers":
            _reset(request.transport)
            return web.Response()  # aiohttp finds the socket closed and drops this quietly
        acct = self.stats.request(t0, plan.prompt_tokens, plan.finish)  # waiting for the engine from now
        try:
            if name == "slow-first-byte":  # the server was busy: everything moves back
                await asyncio.sleep(plan.arg)
                t0 += plan.arg

            if self.slots is None:
                return await self.respond(request, plan, t0, acct)
            async with self.slots:  # a full server queues the request: its TTFT includes the wait
                return await self.respond(request, plan, max(t0, _now()), acct)
        finally:
            acct.abort()  # nothing once it ended; else it was cut short (client gone, server stopping)

    async def respond(self, request: web.Request, plan: Plan, t0: float, acct) -> web.StreamResponse:
        name = plan.fault
        cfg = self.cfg
        if self.cache is not None:  # it has its slot: vLLM looks its prefix up as it schedules it
            bs = cfg.block_size
            hits = self.cache.lookup_and_insert(block_keys(plan.words, bs), max_hit_blocks(len(plan.words), bs))
            plan.cached = hits * bs
        plan.ttft = cfg.ttft + cfg.prefill_per_token * (plan.prompt_tokens - (plan.cached or 0))
        acct.schedule(t0, plan.cached or 0)  # running from now
        rid = ("chatcmpl-" if plan.chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if not plan.stream or name == "non-sse":
            when = t0 + plan.ttft + max(plan.n - 1, 0) * cfg.itl
            while (wait := _delay(when)) > 0:  # again if an event loop's timer woke us early
                await asyncio.sleep(wait)
            for i in range(plan.n):  # one body, all at once: the tokens count now, at the times they were due
                acct.wrote(1, t0 + plan.ttft + i * cfg.itl)
            acct.done(_now())
            return web.json_response(self.full_body(plan, rid, created))

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        try:
            writer = await resp.prepare(request)  # headers go out now, before the first token, as in vLLM
        except ConnectionError:  # the client gave up while we waited
            return resp
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        if self.ticker is None:
            self.ticker = _Ticker(loop)
        stream = _Stream(request.transport, t0, self.events(plan, rid, created), writer.chunked, done,
                         traced=self.trace_fd is not None, acct=acct)
        self.ticker.add(stream)
        await done
        if self.trace_fd is not None:
            self.write_trace(request, plan, stream.written)
        return resp  # aiohttp ends the chunked body (or notices the reset) after we return

    def write_trace(self, request: web.Request, plan: Plan, written: list[float]) -> None:
        """One line of server-side truth: arrival (epoch s) and when each token was written (one time per
        token, reasoning ones first), s after arrival; with reasoning tokens or several tokens per event,
        also how many were reasoning and the tokens of each token event."""
        arrival = request["arrival"]
        line = {"request_id": request.headers.get("X-Request-Id"), "arrival": time.time() - (_now() - arrival),
                "tokens": [round(t - arrival, 7) for t in written[:plan.n]]}
        if plan.reasoning or any(k != 1 for k in plan.groups):
            line.update(reasoning=plan.reasoning, per_event=plan.groups)
        if plan.cached is not None:
            line.update(prompt_tokens=plan.prompt_tokens, cached_tokens=plan.cached)
        os.write(self.trace_fd, (json.dumps(line) + "\n").encode())

    def formatter(self, plan: Plan, rid: str, created: int):
        """The dialect's event writer for this answer (the faults that change what it says applied)."""
        fault = plan.fault
        return FORMATTERS[plan.dialect](
            rid, created, self.model_json, crlf=fault == "nospace-crlf", n=plan.n,
            finish=None if fault == "no-finish" else plan.finish,
            usage=None if fault == "no-usage" else plan.usage(plan.n), include_usage=plan.include_usage,
            usage_on_finish=fault == "usage-on-finish",
            text=lambda: self.answer_text(plan), model=self.cfg.model,
            reasoning_field=self.reasoning_field(plan) or "reasoning_content",
            continuous_usage=plan.continuous_usage, prompt_tokens=plan.prompt_tokens)

    def full_body(self, plan: Plan, rid: str, created: int) -> dict:
        field = self.reasoning_field(plan)
        body = self.formatter(plan, rid, created).whole(self.answer_text(plan, with_thought=not field), plan.finish)
        if field and plan.reasoning:  # the thought in a field of its own, as vLLM's reasoning parsers do
            body["choices"][0]["message"][field] = "".join(_filler(j) for j in range(plan.reasoning))
        return body

    def reasoning_field(self, plan: Plan) -> str | None:
        """The delta field reasoning tokens go in; None: `<think>` text in the content (--reasoning-field
        think, and the text dialects, which have no reasoning field)."""
        return self.cfg.reasoning_field if plan.chat and self.cfg.reasoning_field != "think" else None

    def answer_text(self, plan: Plan, with_thought: bool = True) -> str:
        """The whole answer's text as streamed (the thought in `<think>` text unless it has a field)."""
        text = "".join(plan.token(i) for i in range(plan.n - plan.reasoning))
        if not (with_thought and plan.reasoning):
            return text
        thought = "".join(_filler(j) for j in range(plan.reasoning))
        return f"<think>{thought}" + ("</think>" if text else "") + text

    def events(self, plan: Plan, rid: str, created: int):
        """Yield (offset from arrival in s, event bytes, content tokens in it) in order; faults bend the
        sequence. The bytes come from the dialect's formatter (dialects.py)."""
        cfg, fault, n = self.cfg, plan.fault, plan.n
        fmt = self.formatter(plan, rid, created)
        keepalive = b": keep-alive\r\n\r\n" if fault == "nospace-crlf" else b""
        ahead = b""  # what goes before an event: nothing before the very first one

        t = plan.ttft
        start = fmt.start()
        if start is not None:
            yield t, start, 0
            ahead = keepalive
        groups = plan.groups or [1] * n
        cut = min(FEW, len(groups)) if fault == "reset-mid-stream" else -1
        bad = len(groups) // 2 if fault == "malformed-json" else -1
        shift, first = 0.0, 0  # first: index of the event's first token (reasoning ones count)
        think = self.reasoning_field(plan) is None
        token, text, r = fmt.token, plan.token, plan.reasoning
        for i, k in enumerate(groups):
            if i == cut:
                yield t, ABORT, 0
                return
            if fault == "stall" and i == FEW:
                shift = plan.arg
            t = plan.ttft + i * cfg.itl + shift
            if first < r:
                texts = [_filler(j) for j in range(first, first + k)]
                if think and first == 0:
                    texts[0] = "<think>" + texts[0]
                if think and first + k == r < n:  # closed when an answer follows
                    texts[-1] += "</think>"
                event = token(first, texts, "content" if think else "reasoning")
            elif k == 1:
                event = token(first, [text(first - r)], "content")
            else:
                event = token(first, [text(j - r) for j in range(first, first + k)], "content")
            first += k
            if i == bad:
                event = event[: len(event) // 2] + fmt.nl
            yield t, ahead + event, k
            ahead = keepalive
        if cut == len(groups):
            yield t, ABORT, 0
            return
        for event in (fmt.finish(), fmt.usage(), None if fault == "no-done" else fmt.end()):
            if event is not None:
                yield t, ahead + event, 0
                ahead = keepalive


def _prompt_text(prompt, field: str) -> str:
    """A text prompt (a string; a list of strings or of token ids, as /v1/completions takes)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return " ".join(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return " ".join(map(str, prompt))  # token ids: one word each
    raise BadRequest(f"{field}: a string is required")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"object": "error", "message": message, "type": "BadRequestError",
                              "param": None, "code": status}, status=status)


async def serve(cfg: Config, sock: socket.socket, announce: bool = True, shared: Shared | None = None,
                worker: int = 0) -> None:
    sim = Simulator(cfg, shared, worker)
    sim.stats.prepare()
    runner = web.AppRunner(sim.app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        # full garbage collections would walk aiohttp's start-up objects mid-test and delay due tokens
        gc.collect()
        gc.freeze()
        port = sock.getsockname()[1]
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        if announce:
            workers = f", {cfg.workers} processes" if cfg.workers > 1 else ""
            print(f"LLM simulator listening on http://{host}:{port} (model {cfg.model}, "
                  f"TTFT {cfg.ttft * 1000:g} ms, ITL {cfg.itl * 1000:g} ms{workers})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
