"""The simulator's command line: options -> Config, the listening socket, and the worker processes."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import sys

from .server import load_answers
from .faults import FAULT_USAGE, parse_fault
from .metrics import LIE_FIELDS, Shared, parse_lie
from .process import _die_with_parent
from .server import Config, serve

try:  # optional: a faster event loop when installed
    import uvloop
except ImportError:  # pragma: no cover - depends on the environment
    uvloop = None

PROG = "benchmark simulate"



class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _non_negative(kind):
    def parse(text: str):
        value = kind(text)
        if not 0 <= value < math.inf:  # also rejects NaN
            raise ValueError(text)
        return value

    parse.__name__ = f"non-negative {kind.__name__}"
    return parse


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


_positive_int.__name__ = "positive int"


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(text)
    return value


_port.__name__ = "port"


def _token_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        lo, hi = int(lo), int(hi) if sep else int(lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K or MIN-MAX (positive ints), got {text!r}") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return lo, hi


def _fault(text: str):
    try:
        return parse_fault(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _lie(text: str) -> dict[str, float]:
    try:
        return parse_lie(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None) -> Config:
    p = _Parser(prog=PROG, description="OpenAI-compatible streaming LLM simulator with known timing.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--ttft-ms", type=_non_negative(float), default=100.0,
                   help="time to first token, ms (default 100)")
    p.add_argument("--itl-ms", type=_non_negative(float), default=20.0,
                   help="gap between tokens, ms (default 20; 0: as fast as possible)")
    p.add_argument("--output-len", type=_positive_int, default=128,
                   help="tokens in an answer when the request does not force a length (default 128)")
    p.add_argument("--model", default="llm-sim", help="model id served (default llm-sim)")
    p.add_argument("--max-concurrency", type=int, default=0, metavar="N",
                   help="answer at most N requests at once and queue the rest, as a real server's slots "
                        "do (default 0: unlimited)")
    p.add_argument("--answers", metavar="FILE",
                   help='jsonl of {"question", "completion"}: stream the completion of a matching question')
    p.add_argument("--fault", type=_fault, metavar="NAME[:ARG]", help=f"inject a fault: {FAULT_USAGE}")
    p.add_argument("--fault-every", type=_positive_int, default=1, metavar="N",
                   help="apply --fault to every Nth request (default 1: all)")
    p.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="serve from N processes sharing the port, one event loop each, for clients of "
                        "more than one core (default 1; --max-concurrency and --fault-every then count "
                        "per process; /metrics sums all of them)")
    p.add_argument("--trace", metavar="FILE",
                   help="append a JSON line per streamed answer: its X-Request-Id and when each content "
                        "token was really written, s after the request arrived (server-side truth)")
    r = p.add_argument_group("reasoning models and multi-token events (speculative decoding)")
    r.add_argument("--reasoning-tokens", type=_non_negative(int), default=0, metavar="N",
                   help="the first N tokens of every answer are reasoning (they count toward max_tokens and "
                        "usage; usage.completion_tokens_details.reasoning_tokens says N) (default 0)")
    r.add_argument("--reasoning-field", choices=("reasoning_content", "reasoning", "think"),
                   default="reasoning_content",
                   help="how reasoning is sent: in the delta field reasoning_content (vLLM, DeepSeek) or "
                        "reasoning, or as <think>...</think> text in the content (default reasoning_content; "
                        "/v1/completions always uses think)")
    r.add_argument("--tokens-per-event", type=_token_range, default=(1, 1), metavar="K|MIN-MAX",
                   help="tokens in each streamed event: K, or drawn uniformly from MIN-MAX per event "
                        "(default 1); --itl-ms is then the gap between events. A request asking "
                        "stream_options.continuous_usage_stats gets usage on every token event, as vLLM sends it")
    r.add_argument("--seed", type=_non_negative(int), default=0,
                   help="seed of the --tokens-per-event draws (each request's from the seed and its number)")
    m = p.add_argument_group("GET /metrics (vLLM's Prometheus format, from what the simulator did)")
    m.add_argument("--kv-capacity-tokens", type=_positive_int, default=131072, metavar="N",
                   help="KV cache size in tokens: vllm:kv_cache_usage_perc = prompt + generated tokens of the "
                        "running requests / N (default 131072, a mid-size model on one large GPU)")
    m.add_argument("--metrics-lie", type=_lie, default={}, metavar="FIELD=FACTOR[,FIELD=FACTOR]",
                   help=f"multiply what /metrics reports, FIELD in {', '.join(LIE_FIELDS)} (counts rounded, "
                        "times scaled inside the histograms), to test a reconciliation that should object")
    m.add_argument("--hidden-delay-ms", type=_non_negative(float), default=0.0, metavar="MS",
                   help="every request waits MS in front of the engine part, as behind a gateway: the client "
                        "sees it in TTFT and E2EL, /metrics does not (default 0)")
    m.add_argument("--metrics-pad-kb", type=_non_negative(int), default=0, metavar="N",
                   help="add about N KB of valid, vLLM-shaped padding series to /metrics, to mimic a large "
                        "vLLM page for scrape-cost measurements (default 0)")
    c = p.add_argument_group("prefix cache (vLLM's automatic prefix caching, on by default as in vLLM V1)")
    c.add_argument("--no-prefix-cache", action="store_true",
                   help="no prefix cache: /metrics counts no hits, usage has no prompt_tokens_details")
    c.add_argument("--block-size", type=_positive_int, default=16, metavar="N",
                   help="tokens (whitespace words) per cache block; only full blocks are cached (default 16)")
    c.add_argument("--prefill-ms-per-token", type=_non_negative(float), default=0.0, metavar="MS",
                   help="TTFT = --ttft-ms + MS x the prompt tokens not found in the cache (default 0: TTFT is "
                        "--ttft-ms whatever the cache finds). The cache holds --kv-capacity-tokens tokens, "
                        "least recently used blocks evicted first")
    a = p.parse_args(argv)
    answers = None
    if a.answers:
        try:
            answers = load_answers(a.answers)
        except (OSError, ValueError) as exc:
            p.error(f"argument --answers: {exc}")
    return Config(host=a.host, port=a.port, ttft=a.ttft_ms / 1000, itl=a.itl_ms / 1000,
                  output_len=a.output_len, model=a.model, answers=answers, fault=a.fault,
                  fault_every=a.fault_every, max_concurrency=max(0, a.max_concurrency), trace=a.trace,
                  workers=a.workers, hidden_delay=a.hidden_delay_ms / 1000, kv_capacity=a.kv_capacity_tokens,
                  metrics_lie=a.metrics_lie, metrics_pad_kb=a.metrics_pad_kb,
                  reasoning_tokens=a.reasoning_tokens, reasoning_field=a.reasoning_field,
                  tokens_per_event=a.tokens_per_event, seed=a.seed, prefix_cache=not a.no_prefix_cache,
                  block_size=a.block_size, prefill_per_token=a.prefill_ms_per_token / 1000)


def _listen(cfg: Config) -> socket.socket:
    """The listening socket (made before any worker starts, so they all accept on it)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(4096)
    except OSError as exc:
        sys.stderr.write(f"{PROG}: error: argument --port: cannot listen on {cfg.host}:{cfg.port}: "
                         f"{exc.strerror or exc}\n")
        raise SystemExit(2) from None
    sock.setblocking(False)
    return sock


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    sock = _listen(cfg)
    # /metrics for the whole server: each worker adds into its own slot of one block, the answerer sums
    shared = Shared(cfg.workers) if cfg.workers > 1 else None
    announce, worker = True, 0
    for i in range(1, cfg.workers):  # forked before any event loop exists; each worker makes its own
        if os.fork() == 0:
            _die_with_parent()  # stopping the first process stops them all
            announce, worker = False, i
            break
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop if uvloop else None) as runner:
            runner.run(serve(cfg, sock, announce, shared, worker))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        pass
    return 0
