"""Built-in OpenAI-compatible streaming server with known timing, injectable faults and vLLM-format /metrics.

Run it with `python -m benchmark.simulator --ttft-ms 100 --itl-ms 20` (or `python -m benchmark simulate`).
It answers like vLLM: a role chunk and the first token at TTFT, one token every ITL after it, a finish
chunk, a usage chunk when `stream_options.include_usage` asks for one, then `data: [DONE]`; GET /metrics
reports what it did in vLLM v1's Prometheus format.

Tests and the locustfile start it as a child process with `start(...)` (see `SimulatorProcess`).

    server.py   the aiohttp app: endpoints, what each request gets (Plan), its event bytes, and the one
                ticker that writes every stream's due events on time
    faults.py   the injectable faults and how they are named
    metrics.py  the /metrics figures (plain floats on the hot path) and their vLLM families
    cli.py      options -> Config, the listening socket, the worker processes
    process.py  the simulator as a child process (start, SimulatorProcess)
"""

from __future__ import annotations

from .cli import PROG, main, parse_args
from .faults import ABORT, FAULT_NAMES, FAULT_USAGE, FEW, HTTP_ERRORS, STREAM_FAULTS, parse_fault
from .metrics import parse_lie
from .process import SimulatorProcess, start
from .server import (BATCH_BYTES, EARLY_S, HIGH_WATER, BadRequest, Config, Plan, Simulator, load_answers, serve,
                     split_tokens)

__all__ = ["ABORT", "BATCH_BYTES", "EARLY_S", "FAULT_NAMES", "FAULT_USAGE", "FEW", "HIGH_WATER", "HTTP_ERRORS",
           "PROG", "STREAM_FAULTS", "BadRequest", "Config", "Plan", "Simulator", "SimulatorProcess",
           "load_answers", "main", "parse_args", "parse_fault", "parse_lie", "serve", "split_tokens", "start"]
