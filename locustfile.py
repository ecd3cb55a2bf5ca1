"""LLM-Testing entry point: `locust -f locustfile.py [--headless -u N -r N -t 30s] [--host URL]`.

Thin wiring only: options -> target (the built-in simulator when no --host) -> one LLMUser per
concurrent stream -> records -> AISBench-style tables when the test stops.
"""
from __future__ import annotations

import itertools
import logging
import os
import socket
import sys
from time import perf_counter

import gevent
from locust import User, constant, events, task
from locust.exception import StopUser
from locust.runners import WorkerRunner

from benchmark import datasets, simulator
from benchmark.client import ChatClient, ClientError
from benchmark.options import ConfigError, RunConfig, add_arguments
from benchmark.run import ReportError, Run, build_body

log = logging.getLogger("llm-testing")


class State:
    """What every user of this process shares."""
    cfg: RunConfig | None = None
    sim = None          # the built-in simulator child, when we started one
    model = ""
    prepared_for = None  # (host, options) the prompts and bodies were built for
    prompts: list = []
    bodies: list = []
    cursor = itertools.count()
    run: Run | None = None
    active = 0
    peak = 0
    user_numbers = itertools.count()
    pass_done = False


def _die(msg: str, code: int = 2) -> None:
    """One line, no traceback, and the simulator stopped."""
    sys.stderr.write(f"llm-testing: error: {msg}\n")
    if State.sim:
        State.sim.stop()
    sys.exit(code)


@events.init_command_line_parser.add_listener
def _add_options(parser, **_):
    add_arguments(parser)


def _prepare(environment) -> None:
    """Validate options, check the target, resolve the model, build every request body.
    Raises ConfigError / ClientError / DatasetError with one-line messages."""
    cfg = RunConfig.from_options(environment.parsed_options)
    cfg.host = environment.host
    probe = ChatClient(cfg.host, cfg.api_key, timeout=min(cfg.timeout, 10), read_timeout=30)
    try:
        listed = probe.get_json("/v1/models")
    except ClientError as e:
        raise ClientError(f"cannot use --host {cfg.host}: GET /v1/models failed: {e}") from None
    finally:
        probe.close()
    model = cfg.model
    if not model:
        try:
            model = listed["data"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise ClientError(f"--model is empty and {cfg.host}/v1/models lists no model; pass --model") from None
    prompts = datasets.load(cfg.dataset, cfg.dataset_path, cfg.num_prompts, seed=cfg.seed,
                            max_out_len=cfg.max_out_len if cfg.max_out_len_given else None,
                            tokenizer=cfg.tokenizer, **cfg.dataset_options)
    State.cfg, State.model, State.prompts = cfg, model, prompts
    State.bodies = [build_body(p, cfg, model) for p in prompts]
    State.prepared_for = (environment.host, repr(vars(environment.parsed_options)))
    # loading a tokenizer blocks for seconds: refresh gevent's cached clock, or Locust's -t timer,
    # armed right after, would count that time as run time
    gevent.get_hub().loop.update_now()


@events.init.add_listener
def _on_init(environment, **_):
    if isinstance(environment.runner, WorkerRunner):
        return  # the master checks the target; workers prepare when the test starts
    try:
        RunConfig.from_options(environment.parsed_options)  # option errors before anything starts
        if not environment.host:
            o = environment.parsed_options
            State.sim = simulator.start("--ttft-ms", str(o.sim_ttft_ms), "--itl-ms", str(o.sim_itl_ms))
            environment.host = State.sim.url
            print(f"No --host given: started the built-in simulator at {State.sim.url} "
                  f"(pid {State.sim.pid}, TTFT {o.sim_ttft_ms} ms, ITL {o.sim_itl_ms} ms)", flush=True)
        _prepare(environment)
    except (ConfigError, ClientError, datasets.DatasetError) as e:
        _die(str(e))
    except Exception as e:  # noqa: BLE001 - e.g. the simulator could not start: one line, not a traceback
        _die(f"{type(e).__name__}: {e}")


@events.test_start.add_listener
def _on_test_start(environment, **_):
    if environment.parsed_options is None:
        return
    try:
        if State.prepared_for != (environment.host, repr(vars(environment.parsed_options))):
            _prepare(environment)  # host or options changed in the web UI form
    except (ConfigError, ClientError, datasets.DatasetError) as e:
        log.error("llm-testing: %s", e)
        environment.runner.stop()
        return
    State.cursor = itertools.count()
    State.pass_done = False
    State.peak = State.active
    users = environment.parsed_options.num_users
    State.run = Run(State.cfg, State.model, environment.host, extra={"users": users})
    print(f"Writing records to {State.run.dir}/records.jsonl", flush=True)


@events.test_stop.add_listener
def _on_test_stop(environment, **_):
    run, State.run = State.run, None
    if run is None:
        return
    try:
        run.finish(max_users=State.peak)
    except ReportError as e:
        log.error("llm-testing: %s", e)


@events.quit.add_listener  # not `quitting`: that fires before the users stop
def _on_quit(**_):
    if State.sim:
        State.sim.stop()
        State.sim = None


class LLMUser(User):
    """One concurrent stream: sends the next prompt as soon as its previous answer ended."""
    wait_time = constant(0)

    def on_start(self):
        cfg = State.cfg
        self.client = ChatClient(self.environment.host, cfg.api_key, cfg.timeout, cfg.read_timeout)
        self.number = next(State.user_numbers)
        State.active += 1
        State.peak = max(State.peak, State.active)

    def on_stop(self):
        State.active -= 1
        self.client.close()
        if State.pass_done and State.active == 0:  # the last answer of a scored pass is in
            runner = self.environment.runner
            gevent.spawn(runner.quit if self.environment.parsed_options.headless else runner.stop)

    @task
    def chat(self):
        run = State.run
        if run is None:  # options were rejected at test start
            return
        i = next(State.cursor)
        if State.cfg.mode != "perf" and i >= len(State.prompts):
            State.pass_done = True  # scored runs send each prompt once, as AISBench does
            raise StopUser()
        i %= len(State.prompts)
        t0 = perf_counter()
        result = self.client.send(State.bodies[i], stream=State.cfg.stream)
        elapsed_ms = (perf_counter() - t0) * 1000
        rec = run.record(result, State.prompts[i], worker=WORKER, user=self.number)
        # Locust's own stats count the request (E2EL as its response time); our tables use records.
        e2el_ms = rec["events"][-1][0] * 1000 if rec["success"] else elapsed_ms
        self.environment.events.request.fire(
            request_type="POST", name=self.client.path, response_time=e2el_ms,
            response_length=len(rec["completion"]), context={},
            exception=None if rec["success"] else RuntimeError(rec["error"]))


WORKER = f"{socket.gethostname()}:{os.getpid()}"
