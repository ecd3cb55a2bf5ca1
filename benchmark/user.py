"""The Locust edge: our options, Locust's events wired to the Session (session.py), the `llm_request`
event, and `LLMUser`, the user a locustfile runs or subclasses.

Importing this module registers everything once per process (a second import, or the same file loaded
again under another name, finds the wiring done), so a user's own locustfile can do

    from benchmark.user import LLMUser
    class MyUser(LLMUser):
        def next_request(self):
            return self.request([{"role": "user", "content": "Hello"}], max_tokens=32)

and get the whole suite (options, records, tables, report, web UI tab) with its own prompts. `LLMUser`
is abstract: only the subclasses a locustfile defines are spawned.

`events.llm_request` fires once per finished request, in the process that sent it (as Locust's own
`request` event), with: record (the records.py dict), ttft_s, tpot_s, itl_s (list of gaps), e2el_s,
input_tokens, output_tokens, stage, conversation, turn, success, error. The same figures (without the
record) are the `context` of Locust's `request` event, so Locust plugins and exporters see them.
"""
from __future__ import annotations

import logging
import sys
from time import perf_counter

import gevent
from gevent import GreenletExit
from locust import User, constant, events, task
from locust.event import EventHook
from locust.exception import StopUser
from locust.runners import STATE_RUNNING, STATE_SPAWNING, MasterRunner, WorkerRunner

from . import datasets, distributed, load, webui
from .client import ChatClient, ClientError
from .datasets import Prompt
from .options import ConfigError, RunConfig, add_arguments
from .records import figures as request_figures
from .run import ReportError, build_body, stop_reason
from .session import Session
from .workloads import Request

log = logging.getLogger("llm-testing")

# this process's one session (kept on Locust's events, so this file loaded twice still shares it)
session = S = getattr(events, "_llm_testing_session", None) or Session()
events._llm_testing_session = S


def _die(msg: str, code: int = 2) -> None:
    """One line, no traceback, and the simulator stopped."""
    sys.stderr.write(f"llm-testing: error: {msg}\n")
    if S.sim:
        S.sim.stop()
    sys.exit(code)


def _config(environment) -> RunConfig:
    cfg = RunConfig.from_options(environment.parsed_options)
    if not environment.host and S.sim:  # the web UI form's host field was cleared
        environment.host = S.sim.url
    cfg.host = environment.host
    return cfg


def _prepare(environment, cfg: RunConfig) -> str:
    return S.prepare(cfg, worker=isinstance(environment.runner, WorkerRunner))


def _set_stage(name: str) -> None:
    if name != S.stage:
        S.stage = name
        if S.collector:
            S.collector.runner.send_message(distributed.STAGE, name)


def _slo_share(stage: str) -> tuple[float, int]:
    """(% of the stage's finished requests meeting every --slo limit, how many finished)."""
    good, n = S.run.slo_tally.get(stage, (0, 0)) if S.run else (0, 0)
    return (100.0 * good / n if n else 0.0), n


def _set_shard(index: int, workers: int) -> None:
    S.shard = (index, max(1, workers))


def _end_scored_pass(environment) -> None:
    runner = environment.runner
    gevent.spawn(runner.quit if environment.parsed_options.headless else runner.stop)


def _add_options(parser, **_):
    add_arguments(parser)


def _on_init(environment, **_):
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        # A worker's own command line is not the run's options: the master sends its options and target
        # (distributed.PREPARE) and counts the worker ready once it has built everything (so a bad option
        # is reported once, by the master, and -t starts when every worker can send at once).
        distributed.install_worker(runner, _set_shard, lambda name: setattr(S, "stage", name),
                                   lambda host, options: _prepare_worker(environment, host, options))
        if getattr(environment.parsed_options, "processes", None):
            distributed.die_with_parent()  # a --processes child: gone with its master, even one that failed
        try:  # warm the cache while the master starts up: usually its options are these very ones
            S.load_prompts(RunConfig.from_options(environment.parsed_options))
        except Exception:  # noqa: BLE001 - whatever is wrong, the master's options decide and it reports
            pass
        return
    if isinstance(runner, MasterRunner):
        S.collector = distributed.MasterCollector(runner, lambda: S.run,
                                                  lambda: _end_scored_pass(environment),
                                                  lambda name, error: _worker_failed(environment, name, error))
    # the live "LLM metrics" tab and the Start check, when the web UI runs
    webui.install(environment, lambda: S.run, check_start=lambda options, host: _check_start(environment, options, host))
    try:
        cfg = RunConfig.from_options(environment.parsed_options)  # option errors before anything starts
        environment.host = S.target(cfg, environment.host)
        print(_prepare(environment, _config(environment)), flush=True)
        if S.collector:
            S.collector.prepare(environment.host, distributed.custom_options(environment.parsed_options))
        cfg = S.cfg
        if cfg.steps:
            environment.shape_class = load.StepShape(cfg.steps, cfg.step_time, _set_stage)
        elif cfg.search:
            environment.shape_class = load.CapacitySearch(
                cfg.step_time, _slo_share, _set_stage, cfg.slo_attainment, cfg.search_max_users,
                report=lambda line: print(line, flush=True))
        if environment.shape_class:
            environment.shape_class.runner = runner
    except (ConfigError, ClientError, datasets.DatasetError) as e:
        _die(str(e))
    except Exception as e:  # noqa: BLE001 - e.g. the simulator could not start: one line, not a traceback
        _die(f"{type(e).__name__}: {e}")


def _prepare_worker(environment, host: str, options: dict) -> str:
    """A worker, told by the master what to prepare (before the test, so before the -t clock)."""
    vars(environment.parsed_options).update(options)  # as Locust does with the options of each spawn
    environment.host = host
    summary = _prepare(environment, _config(environment))
    log.info("prepared for %s: %s", host, summary)
    return summary


def _worker_failed(environment, name: str, error: str) -> None:
    """A worker could not prepare: headless, the run stops with that one line; the web UI's Start shows it."""
    if environment.parsed_options.headless:
        def stop():
            environment.runner.quit()  # the workers quit too
            _die(f"worker {name}: {error}")  # SystemExit reaches the main greenlet: exit 2
        gevent.spawn(stop)


def _check_start(environment, options, host: str) -> str | None:
    """The web UI's Start, before Locust starts anything: the form's values are checked and prepared for
    (the simulator restarted when its options changed, workers prepared too). Returns why it can't start
    (one line, which the form shows) or None."""
    try:
        cfg = RunConfig.from_options(options)
        cfg.host = S.target(cfg, host)
        if cfg != S.prepared_for:
            print(_prepare(environment, cfg), flush=True)
        if S.collector:
            S.collector.prepare(cfg.host, distributed.custom_options(options))
            return S.collector.wait_prepared()
    except (ConfigError, ClientError, datasets.DatasetError) as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - e.g. the simulator could not restart: one line, not a traceback
        return f"{type(e).__name__}: {e}"
    return None


def _on_test_start(environment, **_):
    if environment.parsed_options is None:
        return
    try:
        cfg = _config(environment)
        if cfg != S.prepared_for:  # not prepared for these options (the web UI checks them at Start)
            log.info("llm-testing: %s", _prepare(environment, cfg))
        if S.collector:
            problem = S.collector.wait_prepared()
            if problem:
                raise ConfigError(problem)
    except (ConfigError, ClientError, datasets.DatasetError) as e:
        log.error("llm-testing: %s", e)
        S.run = None
        gevent.spawn(environment.runner.stop)  # after the start that fired this event, not inside it
        return
    worker = isinstance(environment.runner, WorkerRunner)
    S.start(environment.host, environment.parsed_options.num_users, shaped=bool(S.cfg.steps or S.cfg.search),
            sink=distributed.ShippingSink(environment.runner) if worker else None)


def _on_test_stop(environment, **_):
    S.stop()
    if S.collector and S.run:
        if not S.collector.wait_for_workers(environment.runner.worker_count):
            log.error("llm-testing: some workers sent no final records within 30 s; tables may miss them")
    run = S.take_run()
    if run is None:
        return
    own_health = S.health.stop() if S.health else {}
    if isinstance(environment.runner, WorkerRunner):
        run.sink.close(own_health)  # ships the last batch and this worker's health
        run.finish()
        return
    client_health = S.collector.health if S.collector else {"local": own_health}
    shape = environment.shape_class
    extra = {"capacity_search": {"users": shape.result, "steps": shape.steps}} if S.cfg.search else {}
    try:
        run.finish(max_users=_peak_users(environment), client_health=client_health, **extra)
    except ReportError as e:
        log.error("llm-testing: %s", e)


def _peak_users(environment) -> int:
    """The run's Max Concurrency: the largest user count asked for (a master runs no users itself)."""
    cfg, shape = S.cfg, environment.shape_class
    if cfg.steps:
        return max(cfg.steps)
    if cfg.search:
        return max((users for users, *_ in shape.steps), default=1)
    return environment.parsed_options.num_users if S.collector else S.peak


def _on_quit(**_):
    S.quit()


def _wire() -> None:
    """Our listeners on Locust's events, and the llm_request event: once per process."""
    if getattr(events, "_llm_testing_wired", False):
        return
    events._llm_testing_wired = True
    events.llm_request = EventHook()
    events.init_command_line_parser.add_listener(_add_options)
    events.init.add_listener(_on_init)
    events.test_start.add_listener(_on_test_start)
    events.test_stop.add_listener(_on_test_stop)
    events.quit.add_listener(_on_quit)  # not `quitting`: that fires before the users stop


_wire()


class LLMUser(User):
    """One concurrent stream: sends the workload's next request as soon as its previous answer ended.

    Subclass it to change what is sent: override `next_request` (return `self.request(messages)`, or
    None to stop this user), or add your own @task methods that call `self.send(self.request(...))`."""
    abstract = True
    wait_time = constant(0)

    def on_start(self):
        cfg = S.cfg
        self.client = ChatClient(self.environment.host, cfg.api_key, cfg.timeout, cfg.read_timeout,
                                 retry=cfg.retry, retry_on_overload=cfg.retry_on_overload,
                                 retry_max_wait=cfg.retry_max_wait, backend=cfg.backend, model=S.model)
        self.state: dict = {}  # the workload's per-user state (a conversation in progress)
        self.number = S.user_started()

    def on_stop(self):
        self.client.close()
        if S.user_stopped():  # the last answer of a finished pass is in
            if isinstance(self.environment.runner, WorkerRunner):
                self.environment.runner.send_message(distributed.PASS_DONE)
            else:
                _end_scored_pass(self.environment)

    def next_request(self) -> Request | None:
        """The next request to send (the run's workload: --dataset, --multi-turn); None: stop this user."""
        return S.workload.next(self)

    def request(self, messages: list[dict], max_tokens: int | None = None, index: int = -1,
                reference: str | None = None) -> Request:
        """A request of your own messages, with the run's options (model, stream, sampling, max tokens)."""
        prompt = Prompt(index, messages, reference, max_tokens)
        return Request(prompt, build_body(prompt, S.cfg, S.model), None, S.stage)

    @task
    def chat(self):
        if S.run is None:  # options were rejected at test start: stop, don't spin
            raise StopUser()
        request = self.next_request()
        if request is None:
            S.pass_done = True  # the asked number of requests, or one scored pass, has been sent
            raise StopUser()
        self.send(request)

    def send(self, request: Request) -> None:
        """Send one request and record it (now, or when the loop is idle: the workload's `defer`)."""
        run = S.run
        if run is None:
            raise StopUser()
        t0 = perf_counter()
        if S.health:
            S.health.sent()  # the health verdict judges from the first send to the last end
        try:
            result = self.client.send(request.body, stream=S.cfg.stream, defer=True)
        except GreenletExit:  # the test stopped (Ctrl-C, SIGTERM, UI stop, -t), or a load shape removed
            # this user at a stage change: not a server failure
            runner = self.environment.runner
            why = stop_reason(self.environment.shape_class if (S.cfg.steps or S.cfg.search) else None,
                              runner.state in (STATE_RUNNING, STATE_SPAWNING), request.stage, S.stage)
            result = self.client.cancelled(why)
            result["t_sched"] = request.t_sched  # open loop: when it was due, as for a finished request
            run.cancelled(result, request.prompt, worker=S.worker_id, user=self.number, stage=request.stage,
                          conversation=request.conversation, turn=request.turn)
            raise
        elapsed_ms = (perf_counter() - t0) * 1000
        result["t_sched"] = request.t_sched
        workload = S.workload
        if workload is None or workload.defer:
            # parse, record and count it when the loop is idle; this user sends its next request now
            S.post.submit(lambda: self._record(run, workload, result, request, elapsed_ms))
        else:  # the workload's next request needs this record (a conversation's answer)
            self._record(run, workload, result, request, elapsed_ms)

    def _record(self, run, workload, result, request, elapsed_ms):
        rec = S.finish_request(run, self.client, result, request, self.number)
        if workload is not None:
            workload.finished(self, request, rec)
        figures = request_figures(rec)
        hook = getattr(self.environment.events, "llm_request", None) or events.llm_request
        hook.fire(record=rec, **figures)
        # Locust's own stats count the request (E2EL as its response time); our tables use records.
        e2el_ms = rec["events"][-1][0] * 1000 if rec["success"] else elapsed_ms
        self.environment.events.request.fire(
            request_type="POST", name=self.client.path, response_time=e2el_ms,
            response_length=len(rec["completion"]), context=figures,
            exception=None if rec["success"] else RuntimeError(rec["error"]))
