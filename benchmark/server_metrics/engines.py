"""Which Prometheus families each inference engine exports, per canonical quantity.

Family names are written as prometheus_client's text parser names families: a counter exposed as
`x_total` is family `x` (its sample keeps `x_total`; a counter exposed without `_total`, as TGI's
Rust exporter writes them, is also family `x`); a histogram `x` has samples x_bucket{le=..}, x_sum,
x_count. Candidates are in order, newest name first: the first one present on the page wins.

Only what an engine really exports is mapped; a canonical an engine lacks is left out rather than
approximated. Every gauge mapped to kv_usage / prefix_hit_rate is a ratio 0..1 in its own source
(vLLM and MindIE say "1 means 100 percent"), so no unit scaling is needed; `notes` says where an
engine's meaning differs from the canonical one in a way a verdict must take into account.
"""
from __future__ import annotations

from dataclasses import dataclass, field

KINDS: dict[str, str] = {
    # gauges
    "running": "gauge",          # requests being generated
    "waiting": "gauge",          # requests queued
    "kv_usage": "gauge",         # share of the KV cache in use, 0..1
    "prefix_hit_rate": "gauge",  # 0..1, for engines that export a rate instead of counters
    # counters
    "prompt_tokens": "counter",
    "generation_tokens": "counter",
    "requests_finished": "counter",  # every finish reason; labels kept
    "prefix_queries": "counter",     # tokens looked up in the prefix cache
    "prefix_hits": "counter",        # tokens found there
    "spec_draft": "counter",         # speculative tokens drafted
    "spec_accepted": "counter",      # ... and accepted
    # histograms, seconds
    "ttft": "histogram",
    "e2e": "histogram",
    "itl": "histogram",
    "queue_time": "histogram",
}


@dataclass(frozen=True)
class Engine:
    name: str
    label: str
    metrics: dict[str, tuple[str, ...]]
    finished_reason_label: str | None = None
    # detection: a page is this engine's when a family starts with `prefix`; engines without a
    # prefix of their own (MindIE) are recognised when every family in `signature` is present
    prefix: str | None = None
    signature: tuple[str, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)  # canonical -> caveat, for verdicts/report

    def family(self, canonical: str, present_families) -> str | None:
        """The first candidate family for `canonical` that is on the page, else None."""
        for name in self.metrics.get(canonical, ()):
            if name in present_families:
                return name
        return None

    def families(self) -> frozenset[str]:
        """Every candidate family name (what a scrape of this engine keeps)."""
        return frozenset(n for names in self.metrics.values() for n in names)

    def matches(self, present_families) -> bool:
        if self.prefix:
            return any(f.startswith(self.prefix) for f in present_families)
        return bool(self.signature) and all(f in present_families for f in self.signature)


# vLLM v1. Source: github.com/vllm-project/vllm vllm/v1/metrics/loggers.py (commits 005a810, a6f0308),
# vllm/v1/spec_decode/metrics.py (016a858), docs/design/metrics.md (f7e3a08). Renames kept as later
# candidates: gpu_cache_usage_perc -> kv_cache_usage_perc (0.9), gpu_prefix_cache_* -> prefix_cache_*
# (0.9), time_per_output_token_seconds -> inter_token_latency_seconds (both per-token intervals; newer
# releases emit both, identical). gpu_prefix_cache_hit_rate is v0's gauge. request_success carries
# finished_reason = stop | length | abort (| error).
VLLM = Engine(
    name="vllm", label="vLLM", prefix="vllm:", finished_reason_label="finished_reason",
    metrics={
        "running": ("vllm:num_requests_running",),
        "waiting": ("vllm:num_requests_waiting",),
        "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        "prefix_hit_rate": ("vllm:gpu_prefix_cache_hit_rate",),
        "prompt_tokens": ("vllm:prompt_tokens",),
        "generation_tokens": ("vllm:generation_tokens",),
        "requests_finished": ("vllm:request_success",),
        "prefix_queries": ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"),
        "prefix_hits": ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"),
        "spec_draft": ("vllm:spec_decode_num_draft_tokens",),
        "spec_accepted": ("vllm:spec_decode_num_accepted_tokens",),
        "ttft": ("vllm:time_to_first_token_seconds",),
        "e2e": ("vllm:e2e_request_latency_seconds",),
        "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        "queue_time": ("vllm:request_queue_time_seconds",),
    },
    notes={
        "ttft": "from the engine's arrival time, so HTTP parsing and tokenisation are inside it",
        "prefix_queries": "in tokens (before 0.9: in blocks)",
    },
)

# SGLang (--enable-metrics). Source: github.com/sgl-project/sglang python/sglang/srt/metrics/collector.py
# (commit 00ae9c1) and docs.sglang.io/references/production_metrics. token_usage is used/total KV
# tokens (0..1); cache_hit_rate is the radix-cache hit rate (0..1). prompt_tokens, cached_tokens and
# num_requests are all counted when a request finishes (observe_one_finished_request), cached_tokens
# being the part of prompt_tokens found in the cache, so prefix queries = prompt tokens.
# time_per_output_token_seconds is the older name of the inter-token histogram. Spec decoding is
# only exported as gauges (spec_accept_rate / spec_accept_length), so no spec counters.
SGLANG = Engine(
    name="sglang", label="SGLang", prefix="sglang:",
    metrics={
        "running": ("sglang:num_running_reqs",),
        "waiting": ("sglang:num_queue_reqs",),
        "kv_usage": ("sglang:token_usage",),
        "prefix_hit_rate": ("sglang:cache_hit_rate",),
        "prompt_tokens": ("sglang:prompt_tokens",),
        "generation_tokens": ("sglang:generation_tokens",),
        "requests_finished": ("sglang:num_requests",),
        "prefix_queries": ("sglang:prompt_tokens",),
        "prefix_hits": ("sglang:cached_tokens",),
        "ttft": ("sglang:time_to_first_token_seconds",),
        "e2e": ("sglang:e2e_request_latency_seconds",),
        "itl": ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
        "queue_time": ("sglang:queue_time_seconds",),
    },
    notes={
        "prompt_tokens": "counted when a request finishes, not while it runs",
        "generation_tokens": "counted when a request finishes, not while it runs",
    },
)

# llama.cpp server (llama-server --metrics; without it /metrics answers HTTP 501). Source:
# github.com/ggml-org/llama.cpp tools/server/server-context.cpp / server.cpp (metrics handler,
# "llamacpp:" + name) and, in newer builds, tools/server/server-task.cpp
# server_task_result_metrics::to_metrics (b10621, c1d0e7a): that one adds prompt_tokens_cached and
# the spec_decode_* counters. kv_cache_usage_ratio (0..1) exists in older builds only. No request
# counter and no histograms. prompt_tokens counts prompt tokens evaluated, not those reused from the
# cache, so server prompt tokens < client prompt tokens whenever the prompt cache hits.
LLAMACPP = Engine(
    name="llamacpp", label="llama.cpp server", prefix="llamacpp:",
    metrics={
        "running": ("llamacpp:requests_processing",),
        "waiting": ("llamacpp:requests_deferred",),
        "kv_usage": ("llamacpp:kv_cache_usage_ratio",),
        "prompt_tokens": ("llamacpp:prompt_tokens",),
        "generation_tokens": ("llamacpp:tokens_predicted",),
        "prefix_hits": ("llamacpp:prompt_tokens_cached",),
        "spec_draft": ("llamacpp:spec_decode_num_draft_tokens",),
        "spec_accepted": ("llamacpp:spec_decode_num_accepted_tokens",),
    },
    notes={
        "prompt_tokens": "evaluated prompt tokens only: tokens reused from the prompt cache are not "
                         "counted (newer builds count them in prefix_hits)",
    },
)

# Text Generation Inference. Source: github.com/huggingface/text-generation-inference (db931fc)
# docs/source/reference/metrics.md, router/src/server.rs, backends/v3/src/{backend,queue}.rs. Counters
# are written without `_total` (metrics-exporter-prometheus). No TTFT histogram and no token
# counters: token totals exist only as the _sum of the per-request histograms
# tgi_request_input_length / tgi_request_generated_tokens, which are not mapped here.
# tgi_request_mean_time_per_token_duration is a per-request mean, not an inter-token histogram, so
# itl is left out. A metric appears only once TGI has touched it.
TGI = Engine(
    name="tgi", label="TGI", prefix="tgi_",
    metrics={
        "running": ("tgi_batch_current_size",),
        "waiting": ("tgi_queue_size",),
        "requests_finished": ("tgi_request_success",),
        "e2e": ("tgi_request_duration",),
        "queue_time": ("tgi_request_queue_duration",),
    },
    notes={"requests_finished": "successful requests only (failures are tgi_request_failure{err})"},
)

# MindIE Service (export MIES_SERVICE_MONITOR_MODE=1; GET https://{managementIp}:{metricsPort}/metrics).
# Source: hiascend.com/document/detail/zh/mindie/21RC1/mindieservice/servicedev/mindie_service0103.html
# (the page's sample and table, as mirrored in MindIE's coordinator docs). Names carry no prefix, so
# the engine is recognised by its NPU-specific gauge. npu_cache_usage_perc and
# npu_prefix_cache_hit_rate: "1 means 100%". time_per_output_token_seconds is the gap between two
# consecutive tokens. Not verified against MindIE source (not public); no queue-time histogram.
MINDIE = Engine(
    name="mindie", label="MindIE", signature=("npu_cache_usage_perc", "num_requests_running"),
    metrics={
        "running": ("num_requests_running",),
        "waiting": ("num_requests_waiting",),
        "kv_usage": ("npu_cache_usage_perc",),
        "prefix_hit_rate": ("npu_prefix_cache_hit_rate",),
        "prompt_tokens": ("prompt_tokens",),
        "generation_tokens": ("generation_tokens",),
        "requests_finished": ("request_success",),
        "ttft": ("time_to_first_token_seconds",),
        "e2e": ("e2e_request_latency_seconds",),
        "itl": ("time_per_output_token_seconds",),
    },
    notes={
        "ttft": "pure inference time: excludes HTTP, tokenisation and PD KV-cache transfer",
        "itl": "pure inference time: excludes HTTP and PD KV-cache transfer",
        "prefix_hit_rate": "a block hit rate",
    },
)

ENGINES: tuple[Engine, ...] = (VLLM, SGLANG, LLAMACPP, TGI, MINDIE)


def detect(family_names) -> Engine | None:
    """The engine whose families are on the page, or None. Where more than one matches (a gateway
    re-exporting an engine's page among its own), the one with the most mapped families present."""
    present = set(family_names)
    found = [e for e in ENGINES if e.matches(present)]
    if not found:
        return None
    return max(found, key=lambda e: len(e.families() & present))


def get(name: str | None) -> Engine | None:
    return next((e for e in ENGINES if e.name == name), None)
