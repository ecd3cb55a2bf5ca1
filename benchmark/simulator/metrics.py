"""GET /metrics in vLLM v1's Prometheus format, computed from what the simulator really did.

Names, types, help texts, labels (model_name, engine) and histogram bucket bounds are vLLM's own, read
from vllm/v1/metrics/loggers.py (PrometheusStatLogger) and vllm/v1/engine/__init__.py (FinishReason) in
vLLM's source (0.12 and later: vllm:inter_token_latency_seconds; the deprecated
vllm:time_per_output_token_seconds is shown only with --show-hidden-metrics-for-version, so it is not here).

Semantics, mirroring where vLLM records each figure (vllm/v1/engine/output_processor.py):
  arrival     the request reaches the engine part (after --hidden-delay-ms, which no figure here sees)
  waiting     arrived, waiting for a --max-concurrency slot (or held by slow-first-byte); running: has a slot
  queue time  arrival -> slot; TTFT: arrival -> first content token written; e2e: arrival -> last byte
  ITL         every gap between token writes (tokens written together: gaps of 0 s)
  prompt tokens  counted at the first output, as vLLM counts them after prefill; generation tokens
              counted as written, so a mid-run scrape sees progress; both equal what `usage` reported
  kv usage    prompt + generated-so-far tokens of running requests / --kv-capacity-tokens (at most 1)
  prefix cache   queries = prompt tokens at scheduling, hits = the prompt tokens its prefix cache found
              then (benchmark/prefix_cache.py; 0 with --no-prefix-cache), as vLLM's PrefixCacheStats
Aborts: vLLM's request_success_total is incremented only in OutputProcessor.process_outputs for a request
the engine finished (_update_stats_from_finished). A request aborted by the frontend (the client went
away: AsyncLLM.abort -> OutputProcessor.abort_requests) is popped without any finished stats, so it is
NOT counted, not even as finished_reason="abort"; the label exists (vLLM creates every FinishReason
series at 0) and stays 0 unless the engine itself finishes a request as aborted. So here too: a stream
the simulator cuts (reset-mid-stream) or whose client went away counts its tokens, TTFT and ITL, but no
finished request and no e2e/queue observation. Requests turned away with an HTTP error before answering
never reach the engine and count nowhere.

Hot path: the ticker adds plain floats to a flat array (a list, or with --workers N this process's slot
of a shared-memory block); prometheus_client is touched only at scrape time, through a custom collector.
With --workers N whichever process answers the scrape sums every process's slot, so /metrics is the whole
server's.
"""

from __future__ import annotations

import bisect
import math
import mmap

LABELS = ["model_name", "engine"]
ENGINE = "0"  # one engine behind every worker, as vLLM's API servers share one engine core

# vllm/v1/metrics/loggers.py, PrometheusStatLogger
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# vllm/v1/engine/__init__.py FINISH_REASON_STRINGS (the simulator finishes with stop or length only)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")

LIE_FIELDS = ("requests", "prompt_tokens", "generation_tokens", "ttft", "e2e")

# One process's figures: a flat array of floats, at these offsets.
RUNNING, WAITING, KV_TOKENS, PROMPT, GEN, PREFIX_QUERIES, PREFIX_HITS, PREEMPTIONS = range(8)
FINISHED = 8  # one per FINISH_REASONS
_REASON = {r: FINISHED + i for i, r in enumerate(FINISH_REASONS)}
# key: (family, help, bucket bounds); each takes len(bounds) + 1 bucket counts (the last is +Inf) and a sum
HISTOGRAMS = {
    "ttft": ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS),
    "itl": ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS),
    "e2e": ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS),
    "queue": ("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
              REQUEST_LATENCY_BUCKETS),
}
# vLLM's other per-request histograms (prefill/decode/inference time, prompt/generation length) are left
# out on purpose: prometheus_client renders ~12 us per sample on the event loop that writes the tokens, and
# each histogram is ~23 samples; --metrics-pad-kb makes a page as large as a full vLLM one.
_BASE = {}
_size = FINISHED + len(FINISH_REASONS)
for _key, (_, _, _bounds) in HISTOGRAMS.items():
    _BASE[_key] = _size
    _size += len(_bounds) + 2
SIZE = _size
TTFT, ITL = _BASE["ttft"], _BASE["itl"]
ITL_SUM = ITL + len(ITL_BUCKETS) + 1


def _observe(v, base: int, bounds: tuple, x: float) -> None:
    v[base + bisect.bisect_left(bounds, x)] += 1  # the first bucket whose le >= x
    v[base + len(bounds) + 1] += x


def parse_lie(text: str) -> dict[str, float]:
    """'ttft=0.5,requests=2' -> {'ttft': 0.5, 'requests': 2.0}; raises ValueError naming the problem."""
    out = {}
    for part in text.split(","):
        field, sep, factor = part.strip().partition("=")
        if field not in LIE_FIELDS or not sep:
            raise ValueError(f"need FIELD=FACTOR with FIELD in {', '.join(LIE_FIELDS)}, got {part.strip()!r}")
        try:
            value = float(factor)
        except ValueError:
            value = math.nan
        if not 0 <= value < math.inf:
            raise ValueError(f"{field}: the factor must be a non-negative number, got {factor!r}")
        out[field] = value
    return out


class Shared:
    """A shared-memory block made before the workers fork: one SIZE slot per process, each written only by
    its own process (aligned 8-byte stores, so a reader never sees half a number)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._mm = mmap.mmap(-1, workers * SIZE * 8)  # anonymous: MAP_SHARED, inherited across fork
        self._view = memoryview(self._mm).cast("d")

    def slot(self, worker: int):
        return self._view[worker * SIZE:(worker + 1) * SIZE]

    def totals(self) -> list[float]:
        return [sum(col) for col in zip(*(self.slot(w).tolist() for w in range(self.workers)))]


class Stats:
    """This process's figures, plus what the page needs to show them (model, KV capacity, lies, padding)."""

    def __init__(self, model: str, kv_capacity: int, lie: dict[str, float] | None = None, pad_kb: int = 0,
                 shared: Shared | None = None, worker: int = 0):
        self.model, self.kv_capacity, self.shared = model, kv_capacity, shared
        self.v = shared.slot(worker) if shared is not None else [0.0] * SIZE
        self.lie = {f: 1.0 for f in LIE_FIELDS} | (lie or {})
        self.ttft_factor, self.e2e_factor = self.lie["ttft"], self.lie["e2e"]
        self.pad_kb = pad_kb
        self._registry = self._pad = None

    def request(self, arrival: float, prompt_tokens: int, finish: str) -> Request:
        return Request(self, arrival, prompt_tokens, finish)

    def totals(self) -> list[float]:
        return self.shared.totals() if self.shared is not None else list(self.v)

    def prepare(self) -> None:
        """Import prometheus_client and render the padding before serving: ~40 ms (and ~0.1 s per MB
        of padding) that must not stall the token writes at the first scrape."""
        from prometheus_client import CollectorRegistry
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self))
        self._pad = _padding(self.model, self.pad_kb) if self.pad_kb else b""

    def render(self) -> bytes:
        """The page, in Prometheus text format, rendered by prometheus_client's generate_latest."""
        from prometheus_client import generate_latest
        if self._registry is None:
            self.prepare()
        return generate_latest(self._registry) + self._pad


class Request:
    """One request's figures, from its arrival at the engine part to its end (done or abort)."""

    __slots__ = ("v", "stats", "arrival", "prompt", "finish", "sched", "first", "last", "n", "state")

    def __init__(self, stats: Stats, arrival: float, prompt_tokens: int, finish: str):
        self.v, self.stats, self.arrival, self.prompt, self.finish = stats.v, stats, arrival, prompt_tokens, finish
        self.sched = self.first = self.last = None
        self.n = 0
        self.state = 0  # 0 waiting, 1 running, 2 ended
        self.v[WAITING] += 1

    def schedule(self, now: float, cached: int = 0) -> None:
        """It got its slot: the engine runs it from now (vLLM allocates its KV blocks and looks up the
        prefix cache here)."""
        if self.state != 0:
            return
        v = self.v
        v[WAITING] -= 1
        v[RUNNING] += 1
        v[KV_TOKENS] += self.prompt
        v[PREFIX_QUERIES] += self.prompt
        v[PREFIX_HITS] += cached
        self.sched, self.state = now, 1

    def wrote(self, k: int, now: float) -> None:
        """k content tokens were just written (the ticker's hot path: a few additions)."""
        v = self.v
        if self.first is None:  # the first output: prefill is done
            self.first = now
            v[PROMPT] += self.prompt
            _observe(v, TTFT, TTFT_BUCKETS, (now - self.arrival) * self.stats.ttft_factor)
        else:  # _observe, inlined: this runs once per write of every stream
            gap = now - self.last
            v[ITL + bisect.bisect_left(ITL_BUCKETS, gap)] += 1
            v[ITL_SUM] += gap
        if k > 1:
            v[ITL] += k - 1  # written together: gaps of 0 s, in the first bucket (sum unchanged)
        v[GEN] += k
        v[KV_TOKENS] += k
        self.n += k
        self.last = now

    def done(self, now: float) -> None:
        """The engine finished it (stop or length); `now` is when its last byte was written."""
        if self.state == 2:
            return
        if self.state == 0:
            self.schedule(now)
        v = self.v
        if self.first is None:  # nothing generated (empty completion): the finish is the first output
            self.first = self.last = now
            v[PROMPT] += self.prompt
            _observe(v, TTFT, TTFT_BUCKETS, (now - self.arrival) * self.stats.ttft_factor)
        v[RUNNING] -= 1
        v[KV_TOKENS] -= self.prompt + self.n
        v[_REASON[self.finish]] += 1
        base = _BASE
        _observe(v, base["e2e"], REQUEST_LATENCY_BUCKETS, (now - self.arrival) * self.stats.e2e_factor)
        _observe(v, base["queue"], REQUEST_LATENCY_BUCKETS, self.sched - self.arrival)
        self.state = 2

    def abort(self) -> None:
        """Cut or abandoned: what it generated stays counted; it never counts as finished (see the top)."""
        if self.state == 0:
            self.v[WAITING] -= 1
        elif self.state == 1:
            self.v[RUNNING] -= 1
            self.v[KV_TOKENS] -= self.prompt + self.n
        self.state = 2


class _Collector:
    """Turns the summed plain figures into vLLM's families at scrape time."""

    def __init__(self, stats: Stats):
        self.stats = stats

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString
        s, v = self.stats, self.stats.totals()
        lv = [s.model, ENGINE]
        lie = s.lie

        def gauge(name, doc, value):
            g = GaugeMetricFamily(name, doc, labels=LABELS)
            g.add_metric(lv, value)
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(name, doc, labels=LABELS)
            c.add_metric(lv, value)
            return c

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                    max(0.0, v[RUNNING]))
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                    max(0.0, v[WAITING]))
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                    min(1.0, max(0.0, v[KV_TOKENS]) / s.kv_capacity))
        yield counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
                      v[PREFIX_QUERIES])
        yield counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
                      v[PREFIX_HITS])
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", v[PREEMPTIONS])
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                      round(v[PROMPT] * lie["prompt_tokens"]))
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.",
                      round(v[GEN] * lie["generation_tokens"]))
        success = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                      labels=LABELS + ["finished_reason"])
        for reason in FINISH_REASONS:
            success.add_metric(lv + [reason], round(v[_REASON[reason]] * lie["requests"]))
        yield success
        for key, (name, doc, bounds) in HISTOGRAMS.items():
            base, cum, buckets = _BASE[key], 0.0, []
            for i, le in enumerate(bounds):
                cum += v[base + i]
                buckets.append((floatToGoString(float(le)), cum))
            cum += v[base + len(bounds)]
            buckets.append(("+Inf", cum))
            h = HistogramMetricFamily(name, doc, labels=LABELS)
            h.add_metric(lv, buckets, sum_value=v[base + len(bounds) + 1])
            yield h


def _padding(model: str, kb: int) -> bytes:
    """About kb KB of valid, vLLM-shaped series (per-engine histograms with vLLM's latency buckets, all 0)
    under a family no engine map uses, so a scrape page is as large as a busy vLLM's."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    class Pad:
        def __init__(self, n):
            self.n = n

        def collect(self):
            h = HistogramMetricFamily("vllm:sim_pad_seconds", "Padding for scrape-cost measurements "
                                      "(simulator --metrics-pad-kb); not a vLLM metric.",
                                      labels=LABELS + ["pad"])
            empty = [(floatToGoString(b), 0.0) for b in REQUEST_LATENCY_BUCKETS] + [("+Inf", 0.0)]
            for i in range(self.n):
                h.add_metric([model, ENGINE, f"{i:05d}"], empty, sum_value=0.0)
            yield h

    def render(n):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Pad(n))
        return generate_latest(registry)

    one, two = len(render(1)), len(render(2))
    per_series, head = two - one, 2 * one - two
    return render(max(1, math.ceil((kb * 1024 - head) / per_series)))
