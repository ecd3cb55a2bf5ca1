"""LLM-Testing entry point: `locust -f locustfile.py [--headless -u N -r N -t 30s] [--host URL]`.

Thin wiring only: options -> target (the built-in simulator when no --host) -> one LLMUser per
concurrent stream -> records -> AISBench-style tables when the test stops.
"""
from __future__ import annotations

import gc
import itertools
import logging
import os
import socket
import sys
from time import perf_counter
from urllib.parse import quote

import gevent
from gevent import GreenletExit
from locust import User, constant, events, task
from locust.exception import StopUser
from locust.runners import STATE_RUNNING, STATE_SPAWNING, MasterRunner, WorkerRunner

from benchmark import arrivals, backends, datasets, distributed, health, idle, load, simulator
from benchmark.server_metrics import scrape
from benchmark.client import ChatClient, ClientError
from benchmark.options import ConfigError, RunConfig, add_arguments, check_output_dir
from benchmark.run import WARMUP, ReportError, Run, build_body, stop_reason
from benchmark import webui

log = logging.getLogger("llm-testing")


class State:
    """What every user of this process shares."""
    cfg: RunConfig | None = None
    sim = None          # the built-in simulator child, when we started one
    sim_args: tuple = ()  # the options it was started with
    model = ""
    prepared_for = None  # the RunConfig (host included) the prompts and bodies were built for
    prompts: list = []
    bodies: list = []
    cursor = itertools.count()
    run: Run | None = None
    active = 0
    peak = 0
    user_numbers = itertools.count()
    pass_done = False
    stage = "total"      # the current step of a --steps ramp
    shard = (0, 1)       # (this worker's index, workers): each takes every n-th prompt
    order: list = []     # prompt indices of this process's shard
    limit = float("inf")  # requests this process sends before it stops
    warmup = 0           # of which the first ones only warm the server up
    arrivals = None      # open loop: scheduled send times (--request-rate)
    collector = None     # master: receives the workers' records
    loaded: dict = {}    # prompt configuration -> prompts
    health = None        # this process's client-health monitor
    post = None          # idle.IdleWorker: parses finished streams when the loop has time
    worker_id = ""       # host:pid of this process (set at test start: --processes forks after import)
    scraper = None       # scrape.ScraperProcess: the server's /metrics, once per run (master or single process)
    armed = None         # the next run's scraper, spawned and imported at prepare time, off the -t clock


def _die(msg: str, code: int = 2) -> None:
    """One line, no traceback, and the simulator stopped."""
    sys.stderr.write(f"llm-testing: error: {msg}\n")
    if State.sim:
        State.sim.stop()
    sys.exit(code)


@events.init_command_line_parser.add_listener
def _add_options(parser, **_):
    add_arguments(parser)


SIM_ANSWERS = "simulator_answers.jsonl"  # in a gsm8k folder: what the built-in simulator answers


def _sim_args(cfg: RunConfig) -> tuple:
    """The built-in simulator's options for this run: timing, slots, and the dataset's answers file."""
    args = ("--ttft-ms", f"{cfg.sim_ttft_ms:g}", "--itl-ms", f"{cfg.sim_itl_ms:g}",
            "--max-concurrency", str(cfg.sim_max_concurrency))
    path = cfg.dataset_path or ""
    answers = os.path.join(os.path.dirname(path) if os.path.isfile(path) else path, SIM_ANSWERS)
    if cfg.dataset == "gsm8k" and path and os.path.isfile(answers):
        args += ("--answers", os.path.abspath(answers))
    return args


def _sim_line(verb: str, args: tuple) -> str:
    o = dict(zip(args[::2], args[1::2]))
    answers = f", answers from {os.path.relpath(o['--answers'])}" if "--answers" in o else ""
    return (f"{verb} the built-in simulator at {State.sim.url} (pid {State.sim.pid}, TTFT {o['--ttft-ms']} ms, "
            f"ITL {o['--itl-ms']} ms{answers})")


def _target(cfg: RunConfig, host: str | None) -> str:
    """The host to test. Empty, or the built-in simulator's URL: the built-in simulator, started, or
    restarted on its port when its options (--sim-*, the answers file) changed, e.g. in the web UI form.
    Any other host is used as given (the --sim-* options do not apply to it)."""
    if host and not (State.sim and host.rstrip("/") == State.sim.url):
        return host
    args = _sim_args(cfg)
    if State.sim is None:
        State.sim, State.sim_args = simulator.start(*args), args
        print(f"No --host given: {_sim_line('started', args)}", flush=True)
    elif args != State.sim_args:
        port = State.sim.url.rsplit(":", 1)[1]
        State.sim.stop()
        State.sim = None
        State.sim, State.sim_args = simulator.start(*args, "--port", port), args
        print(f"Simulator options changed: {_sim_line('restarted', args)}", flush=True)
    return State.sim.url


def _config(environment) -> RunConfig:
    cfg = RunConfig.from_options(environment.parsed_options)
    if not environment.host and State.sim:  # the web UI form's host field was cleared
        environment.host = State.sim.url
    cfg.host = environment.host
    return cfg


def _load_prompts(cfg: RunConfig) -> list:
    """The dataset's prompts, loaded once per prompt configuration (tokenizing takes seconds)."""
    key = repr((cfg.prompt_config, cfg.dataset_path, cfg.tokenizer, cfg.seed))
    if key not in State.loaded:
        State.loaded = {key: datasets.load(
            cfg.dataset, cfg.dataset_path, cfg.num_prompts, seed=cfg.seed,
            max_out_len=cfg.max_out_len if cfg.max_out_len_given else None,
            tokenizer=cfg.tokenizer, **cfg.dataset_options)}
        # now, not at the first answer without usage: loading it holds the loop ~1.5 s, which would
        # timestamp every token in flight late (the synthetic loader has loaded it already)
        datasets.tokenizer_for(cfg.tokenizer)
    return State.loaded[key]


def _prepare(environment, cfg: RunConfig) -> str:
    """Check the output folder and the target (cfg.host), resolve the model, build every request body.
    Raises ConfigError / ClientError / DatasetError with one-line messages; returns the prompts' line."""
    if not isinstance(environment.runner, WorkerRunner):  # a worker writes no folder
        check_output_dir(cfg.output_dir)
    probe = ChatClient(cfg.host, cfg.api_key, timeout=min(cfg.timeout, 10), read_timeout=30)
    dialect = backends.get(cfg.backend)
    check = dialect.MODELS_PATH.format(model=quote(cfg.model, safe=""))  # /v1/models, tgi's /info, ...
    try:
        listed = probe.get_json(check)
    except ClientError as e:
        raise ClientError(f"cannot use --host {cfg.host} (--backend {cfg.backend}): GET {check} failed: {e}") from None
    finally:
        probe.close()
    model = cfg.model
    if not model:
        model = dialect.model_from(listed)
        if not model:
            raise ClientError(f"--model is empty and {cfg.host}{check} names no model; pass --model")
    State.cfg, State.model, State.prompts = cfg, model, _load_prompts(cfg)
    State.bodies = [build_body(p, cfg, model) for p in State.prompts]
    State.prepared_for = cfg
    if not isinstance(environment.runner, WorkerRunner):
        _arm_scraper(cfg)
    gc.collect()  # the long first collection of what was just loaded, here, off the -t clock (test start
    gc.freeze()   # collects again: only what came after, 0.1 s less on a 2-core machine)
    # loading a tokenizer blocks for seconds: refresh gevent's cached clock, or Locust's -t timer,
    # armed right after, would count that time as run time
    gevent.get_hub().loop.update_now()
    return datasets.describe(State.prompts)


def _set_stage(name: str) -> None:
    if name != State.stage:
        State.stage = name
        if State.collector:
            State.collector.runner.send_message(distributed.STAGE, name)


def _slo_share(stage: str) -> tuple[float, int]:
    """(% of the stage's finished requests meeting every --slo limit, how many finished)."""
    good, n = State.run.slo_tally.get(stage, (0, 0)) if State.run else (0, 0)
    return (100.0 * good / n if n else 0.0), n


def _set_shard(index: int, workers: int) -> None:
    State.shard = (index, max(1, workers))


def _end_scored_pass(environment) -> None:
    runner = environment.runner
    gevent.spawn(runner.quit if environment.parsed_options.headless else runner.stop)


@events.init.add_listener
def _on_init(environment, **_):
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        # A worker's own command line is not the run's options: the master sends its options and target
        # (distributed.PREPARE) and counts the worker ready once it has built everything (so a bad option
        # is reported once, by the master, and -t starts when every worker can send at once).
        distributed.install_worker(runner, _set_shard, lambda name: setattr(State, "stage", name),
                                   lambda host, options: _prepare_worker(environment, host, options))
        if getattr(environment.parsed_options, "processes", None):
            distributed.die_with_parent()  # a --processes child: gone with its master, even one that failed
        try:  # warm the cache while the master starts up: usually its options are these very ones
            _load_prompts(RunConfig.from_options(environment.parsed_options))
        except Exception:  # noqa: BLE001 - whatever is wrong, the master's options decide and it reports
            pass
        return
    if isinstance(runner, MasterRunner):
        State.collector = distributed.MasterCollector(runner, lambda: State.run,
                                                      lambda: _end_scored_pass(environment),
                                                      lambda name, error: _worker_failed(environment, name, error))
    # the live "LLM metrics" tab and the Start check, when the web UI runs
    webui.install(environment, lambda: State.run, check_start=lambda options, host: _check_start(environment, options, host))
    try:
        cfg = RunConfig.from_options(environment.parsed_options)  # option errors before anything starts
        environment.host = _target(cfg, environment.host)
        print(_prepare(environment, _config(environment)), flush=True)
        if State.collector:
            State.collector.prepare(environment.host, distributed.custom_options(environment.parsed_options))
        cfg = State.cfg
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
        cfg.host = _target(cfg, host)
        if cfg != State.prepared_for:
            print(_prepare(environment, cfg), flush=True)
        if State.collector:
            State.collector.prepare(cfg.host, distributed.custom_options(options))
            return State.collector.wait_prepared()
    except (ConfigError, ClientError, datasets.DatasetError) as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - e.g. the simulator could not restart: one line, not a traceback
        return f"{type(e).__name__}: {e}"
    return None


@events.test_start.add_listener
def _on_test_start(environment, **_):
    if environment.parsed_options is None:
        return
    try:
        cfg = _config(environment)
        if cfg != State.prepared_for:  # not prepared for these options (the web UI checks them at Start)
            log.info("llm-testing: %s", _prepare(environment, cfg))
        if State.collector:
            problem = State.collector.wait_prepared()
            if problem:
                raise ConfigError(problem)
    except (ConfigError, ClientError, datasets.DatasetError) as e:
        log.error("llm-testing: %s", e)
        State.run = None
        gevent.spawn(environment.runner.stop)  # after the start that fired this event, not inside it
        return
    cfg = State.cfg
    State.worker_id = f"{socket.gethostname()}:{os.getpid()}"
    State.cursor = itertools.count()
    State.pass_done = False
    State.peak = State.active
    if not (cfg.steps or cfg.search):  # a shape's first tick (before this event) named the stage
        State.stage = "total"
    index, workers = State.shard
    State.order = list(range(index, len(State.prompts), workers)) or [0]
    # requests this process sends: --num-requests shared by the workers, one pass when scored, or no end
    share = lambda total: total // workers + (index < total % workers)  # noqa: E731
    State.limit = (share(cfg.num_requests) + share(cfg.warmup) if cfg.num_requests
                   else len(State.order) + share(cfg.warmup) if cfg.mode != "perf" else float("inf"))
    State.warmup = share(cfg.warmup)
    if State.arrivals:
        State.arrivals.stop()
    State.arrivals = None
    if (cfg.request_rate or cfg.ramp) and not State.collector:  # workers share the rate
        ramp = cfg.ramp and (cfg.ramp["strategy"], cfg.ramp["start_rps"] / workers,
                             cfg.ramp["end_rps"] / workers, cfg.ramp["seconds"])
        State.arrivals = arrivals.Arrivals(cfg.request_rate / workers, cfg.burstiness, cfg.seed + index,
                                           ramp=ramp or None)
        State.arrivals.start()
    users = environment.parsed_options.num_users
    extra = {"users": users, "steps": cfg.steps, "request_rate": cfg.request_rate}
    State.post = State.post or idle.IdleWorker()
    if not State.collector:  # the processes that send requests watch their own health
        State.health = health.HealthMonitor()
        State.health.start()
    # A full garbage collection walks every live object, and the tokenizer, dataset and libraries loaded
    # by now are most of them: at 256 streams each full collection held the loop 85-140 ms, late-reading
    # the tokens due meanwhile. Frozen objects are skipped, so collections only walk what the test makes.
    gc.collect()
    gc.freeze()
    State.post.pause_gc()  # and collect only when the loop is idle (idle.py)
    if isinstance(environment.runner, WorkerRunner):
        State.run = Run(cfg, State.model, environment.host, extra,
                        sink=distributed.ShippingSink(environment.runner))
        return
    State.run = Run(cfg, State.model, environment.host, extra)
    State.run.prefix_theory(State.prompts, State.order, State.limit)  # theoretical prefix-cache hit rates
    if State.collector:
        State.collector.start()
    _start_scraper(cfg, environment.host, State.run.dir)
    print(f"Writing records to {State.run.dir}/records.jsonl", flush=True)


def _arm_scraper(cfg: RunConfig) -> None:
    """Spawn the scraper child for cfg's target before the test (Locust's -t clock runs from the test's
    start, and a child's start-up on a busy machine can take a whole short run)."""
    url = scrape.metrics_url(cfg.host, cfg.server_metrics)
    armed = State.armed
    if armed and (armed.url, armed.interval_s) == (url, cfg.server_metrics_interval):
        return
    if armed:
        armed.stop()
    State.armed = scrape.ScraperProcess(url, interval_s=cfg.server_metrics_interval) if url else None
    if State.armed:
        State.armed.arm()


def _start_scraper(cfg: RunConfig, host: str, run_dir: str) -> None:
    """Scrape the server's /metrics in a child process (its parsing never holds this loop), and wait for
    the first scrape before users start, so counter deltas cover the run's first request."""
    url = scrape.metrics_url(host, cfg.server_metrics)
    armed, State.armed = State.armed, None
    if armed and (armed.url, armed.interval_s) != (url, cfg.server_metrics_interval):
        armed.stop()
        armed = None
    if not url:
        return
    State.scraper = armed or scrape.ScraperProcess(url, interval_s=cfg.server_metrics_interval)
    State.scraper.start(os.path.join(run_dir, scrape.FILE))
    State.scraper.wait_first()
    gevent.get_hub().loop.update_now()  # the wait is not run time


@events.test_stop.add_listener
def _on_test_stop(environment, **_):
    if State.post:
        State.post.drain()  # every finished request recorded before the tables
        State.post.resume_gc()
    if State.arrivals:
        State.arrivals.stop()
    if State.collector and State.run:
        if not State.collector.wait_for_workers(environment.runner.worker_count):
            log.error("llm-testing: some workers sent no final records within 30 s; tables may miss them")
    run, State.run = State.run, None
    scraper, State.scraper = State.scraper, None
    if scraper:  # its final scrape comes after the last answer, so the counters cover every request
        summary = {"url": scraper.url, "interval_s": scraper.interval_s, **scraper.stop()}
        if run is not None:
            run.config["server_metrics_scrape"] = summary
    if run is None:
        return
    own_health = State.health.stop() if State.health else {}
    if isinstance(environment.runner, WorkerRunner):
        run.sink.close(own_health)  # ships the last batch and this worker's health
        run.finish()
        return
    client_health = State.collector.health if State.collector else {"local": own_health}
    shape = environment.shape_class
    extra = {"capacity_search": {"users": shape.result, "steps": shape.steps}} if State.cfg.search else {}
    try:
        run.finish(max_users=_peak_users(environment), client_health=client_health, **extra)
    except ReportError as e:
        log.error("llm-testing: %s", e)


def _peak_users(environment) -> int:
    """The run's Max Concurrency: the largest user count asked for (a master runs no users itself)."""
    cfg, shape = State.cfg, environment.shape_class
    if cfg.steps:
        return max(cfg.steps)
    if cfg.search:
        return max((users for users, *_ in shape.steps), default=1)
    return environment.parsed_options.num_users if State.collector else State.peak


@events.quit.add_listener  # not `quitting`: that fires before the users stop
def _on_quit(**_):
    for scraper in (State.scraper, State.armed):  # a run that never reached test_stop, or never started
        if scraper:
            scraper.stop()
    State.scraper = State.armed = None
    if State.sim:
        State.sim.stop()
        State.sim = None


class LLMUser(User):
    """One concurrent stream: sends the next prompt as soon as its previous answer ended."""
    wait_time = constant(0)

    def on_start(self):
        cfg = State.cfg
        self.client = ChatClient(self.environment.host, cfg.api_key, cfg.timeout, cfg.read_timeout,
                                 retry=cfg.retry, retry_on_overload=cfg.retry_on_overload,
                                 retry_max_wait=cfg.retry_max_wait, backend=cfg.backend, model=State.model)
        self.number = next(State.user_numbers)
        State.active += 1
        State.peak = max(State.peak, State.active)

    def on_stop(self):
        State.active -= 1
        self.client.close()
        if State.pass_done and State.active == 0:  # the last answer of a scored pass is in
            if isinstance(self.environment.runner, WorkerRunner):
                self.environment.runner.send_message(distributed.PASS_DONE)
            else:
                _end_scored_pass(self.environment)

    @task
    def chat(self):
        run = State.run
        if run is None:  # options were rejected at test start: stop, don't spin
            raise StopUser()
        n = next(State.cursor)
        if n >= State.limit:
            State.pass_done = True  # the asked number of requests, or one scored pass, has been sent
            raise StopUser()
        i = State.order[n % len(State.order)]
        t_sched = State.arrivals.next() if State.arrivals else None  # open loop: wait for an arrival
        stage = WARMUP if n < State.warmup else State.stage
        t0 = perf_counter()
        prompt = State.prompts[i]
        if State.health:
            State.health.sent()  # the health verdict judges from the first send to the last end
        try:
            result = self.client.send(State.bodies[i], stream=State.cfg.stream, defer=True)
        except GreenletExit:  # the test stopped (Ctrl-C, SIGTERM, UI stop, -t), or a load shape removed
            # this user at a stage change: not a server failure
            runner = self.environment.runner
            why = stop_reason(self.environment.shape_class if (State.cfg.steps or State.cfg.search) else None,
                                     runner.state in (STATE_RUNNING, STATE_SPAWNING), stage, State.stage)
            result = self.client.cancelled(why)
            result["t_sched"] = t_sched  # open loop: when it was due, as for a finished request
            run.cancelled(result, prompt, worker=State.worker_id, user=self.number, stage=stage)
            raise
        elapsed_ms = (perf_counter() - t0) * 1000
        result["t_sched"] = t_sched
        # parse, record and count it when the loop is idle; this user sends its next request now
        State.post.submit(lambda: self._record(run, result, prompt, stage, elapsed_ms))

    def _record(self, run, result, prompt, stage, elapsed_ms):
        rec = run.record(self.client.complete(result), prompt, worker=State.worker_id, user=self.number,
                         stage=stage)
        if State.health and rec["events"]:
            State.health.ended(rec["t_send"] + rec["events"][-1][0])
        # Locust's own stats count the request (E2EL as its response time); our tables use records.
        e2el_ms = rec["events"][-1][0] * 1000 if rec["success"] else elapsed_ms
        self.environment.events.request.fire(
            request_type="POST", name=self.client.path, response_time=e2el_ms,
            response_length=len(rec["completion"]), context={},
            exception=None if rec["success"] else RuntimeError(rec["error"]))

