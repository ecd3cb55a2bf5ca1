"""The run's shared state in one process: one Session, used by every user of the process.

Locust-free (Locust is imported only at the edge: benchmark/user.py wires Locust's events to these
methods, webui.py and distributed.py talk to Locust's web UI and runners). Life cycle:

  prepare(cfg, worker)   before the test (at init, at the web UI's Start, or when the master says so):
                         the target's model, the dataset loaded, every request body built, the server
                         scraper armed; off Locust's -t clock. Raises one-line errors.
  start(host, users, ..) at test start: this process's shard, the open-loop arrivals, the client health
                         monitor, the garbage-collection pause, the Run (records sink) and the workload.
  (users)                each user asks `workload.next(user)` for its next Request, sends it, then calls
                         `finish_request` (or `cancel_request`) with the result.
  stop()                 at test stop: queued records written, arrivals stopped; then take_run() hands the
                         Run (scraper stopped, its summary kept) to the edge, which makes the tables (or
                         ships a worker's last records).
  quit()                 at quit: the scraper children and the built-in simulator stopped.

`prepare` may run again between tests (the web UI changes options); `start`/`stop` pair once per test.
"""
from __future__ import annotations

import gc
import itertools
import os
import socket
from urllib.parse import quote

import gevent

from . import arrivals, backends, datasets, health, idle, prefix_hits, simulator, tokens
from .client import ChatClient, ClientError
from .options import RunConfig, check_output_dir
from .run import Run
from .server_metrics import scrape

SIM_ANSWERS = "simulator_answers.jsonl"  # in a gsm8k folder: what the built-in simulator answers


class Session:
    """What every user of this process shares, for the life of the process."""

    def __init__(self):
        self.cfg: RunConfig | None = None
        self.sim = None          # the built-in simulator child, when we started one
        self.sim_args: tuple = ()  # the options it was started with
        self.model = ""
        self.prepared_for = None  # the RunConfig (host included) the prompts and bodies were built for
        self.prompts: list = []
        self.prefix_theory = None  # prefix_hits.plan's figures, from prepare to the run's config.json
        self.bodies: list = []
        self.conversations: list = []  # a conversation workload's datasets.conversations.Conversation list
        self.loaded: dict = {}    # prompt configuration -> prompts (or conversations)
        self.run: Run | None = None
        self.workload = None      # workloads.Workload: what each user sends next, made at start
        self.active = 0           # users running now
        self.peak = 0
        self.user_numbers = itertools.count()
        self.pass_done = False    # the workload has nothing more to send (a scored pass, --num-requests)
        self.stage = "total"      # the current step of a --steps ramp
        self.shard = (0, 1)       # (this worker's index, workers): each takes every n-th prompt
        self.arrivals = None      # open loop: scheduled send times (--request-rate)
        self.collector = None     # master: receives the workers' records (distributed.MasterCollector)
        self.health = None        # this process's client-health monitor
        self.post = None          # idle.IdleWorker: parses finished streams when the loop has time
        self.worker_id = ""       # host:pid of this process (set at start: --processes forks after import)
        self.scraper = None       # scrape.ScraperProcess: the server's /metrics, once per run
        self.armed = None         # the next run's scraper, spawned at prepare time, off the -t clock
        self.worker = False       # prepared as a distributed worker (the master prints the lines)

    # -- the target -------------------------------------------------------------------------------------
    def sim_args_for(self, cfg: RunConfig) -> tuple:
        """The built-in simulator's options for this run: timing, slots, and the dataset's answers file."""
        args = ("--ttft-ms", f"{cfg.sim_ttft_ms:g}", "--itl-ms", f"{cfg.sim_itl_ms:g}",
                "--max-concurrency", str(cfg.sim_max_concurrency))
        path = cfg.dataset_path or ""
        answers = os.path.join(os.path.dirname(path) if os.path.isfile(path) else path, SIM_ANSWERS)
        if cfg.dataset == "gsm8k" and path and os.path.isfile(answers):
            args += ("--answers", os.path.abspath(answers))
        return args

    def _sim_line(self, verb: str, args: tuple) -> str:
        o = dict(zip(args[::2], args[1::2]))
        answers = f", answers from {os.path.relpath(o['--answers'])}" if "--answers" in o else ""
        return (f"{verb} the built-in simulator at {self.sim.url} (pid {self.sim.pid}, TTFT {o['--ttft-ms']} ms, "
                f"ITL {o['--itl-ms']} ms{answers})")

    def target(self, cfg: RunConfig, host: str | None) -> str:
        """The host to test. Empty, or the built-in simulator's URL: the built-in simulator, started, or
        restarted on its port when its options (--sim-*, the answers file) changed, e.g. in the web UI form.
        Any other host is used as given (the --sim-* options do not apply to it)."""
        if host and not (self.sim and host.rstrip("/") == self.sim.url):
            return host
        args = self.sim_args_for(cfg)
        if self.sim is None:
            self.sim, self.sim_args = simulator.start(*args), args
            print(f"No --host given: {self._sim_line('started', args)}", flush=True)
        elif args != self.sim_args:
            port = self.sim.url.rsplit(":", 1)[1]
            self.sim.stop()
            self.sim = None
            self.sim, self.sim_args = simulator.start(*args, "--port", port), args
            print(f"Simulator options changed: {self._sim_line('restarted', args)}", flush=True)
        return self.sim.url

    # -- prepare ----------------------------------------------------------------------------------------
    def load_prompts(self, cfg: RunConfig) -> list:
        """The dataset's prompts (or conversations), loaded once per prompt configuration (tokenizing
        takes seconds)."""
        from . import workloads
        key = repr((cfg.prompt_config, cfg.dataset_path, cfg.tokenizer, cfg.seed, workloads.kind(cfg)))
        if key not in self.loaded:
            self.loaded = {key: workloads.load(cfg)}
            # now, not at the first answer without usage: loading it holds the loop ~1.5 s, which would
            # timestamp every token in flight late (the synthetic loader has loaded it already)
            datasets.tokenizer_for(cfg.tokenizer)
        return self.loaded[key]

    def prepare(self, cfg: RunConfig, worker: bool = False) -> str:
        """Check the output folder and the target (cfg.host), resolve the model, build every request body.
        Raises ConfigError / ClientError / DatasetError with one-line messages; returns the prompts' line."""
        from . import workloads
        if not worker:  # a worker writes no folder
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
        self.cfg, self.model = cfg, model
        self.worker = worker  # a worker's prepare line is only logged: it skips what is only printed
        line = workloads.prepare(self, self.load_prompts(cfg))
        # the prompts' theoretical prefix-cache hit rate, kept in config.json at test start
        self.prefix_theory = None if worker else prefix_hits.plan(
            self.prompts, cfg, model, lambda: tokens.load_tokenizer(cfg.tokenizer))
        opts = cfg.dataset_options
        shared = cfg.dataset == "trace" or bool(opts.get("prefix_tokens") or opts.get("prefix_ratio"))
        line = "\n".join(filter(None, [line, prefix_hits.prepare_line(self.prefix_theory, shared)]))
        self.prepared_for = cfg
        if not worker:
            self.arm_scraper(cfg)
        gc.collect()  # the long first collection of what was just loaded, here, off the -t clock (test start
        gc.freeze()   # collects again: only what came after, 0.1 s less on a 2-core machine)
        # loading a tokenizer blocks for seconds: refresh gevent's cached clock, or Locust's -t timer,
        # armed right after, would count that time as run time
        gevent.get_hub().loop.update_now()
        return line

    def arm_scraper(self, cfg: RunConfig) -> None:
        """Spawn the scraper child for cfg's target before the test (Locust's -t clock runs from the test's
        start, and a child's start-up on a busy machine can take a whole short run)."""
        url = scrape.metrics_url(cfg.host, cfg.server_metrics)
        armed = self.armed
        if armed and (armed.url, armed.interval_s) == (url, cfg.server_metrics_interval):
            return
        if armed:
            armed.stop()
        self.armed = scrape.ScraperProcess(url, interval_s=cfg.server_metrics_interval) if url else None
        if self.armed:
            self.armed.arm()

    # -- start ------------------------------------------------------------------------------------------
    def start(self, host: str, users: int, shaped: bool, sink=None) -> None:
        """The test starts: shard, arrivals, health, GC pause, the Run and the workload.
        shaped: a load shape names the stages; sink: a distributed worker's shipping sink (no folder)."""
        from . import workloads
        cfg = self.cfg
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.pass_done = False
        self.peak = self.active
        if not shaped:  # a shape's first tick (before this event) named the stage
            self.stage = "total"
        index, workers = self.shard
        if self.arrivals:
            self.arrivals.stop()
        self.arrivals = None
        if (cfg.request_rate or cfg.ramp) and not self.collector:  # workers share the rate
            ramp = cfg.ramp and (cfg.ramp["strategy"], cfg.ramp["start_rps"] / workers,
                                 cfg.ramp["end_rps"] / workers, cfg.ramp["seconds"])
            self.arrivals = arrivals.Arrivals(cfg.request_rate / workers, cfg.burstiness, cfg.seed + index,
                                              ramp=ramp or None)
            self.arrivals.start()
        self.workload = workloads.make(self)
        extra = {"users": users, "steps": cfg.steps, "request_rate": cfg.request_rate}
        self.post = self.post or idle.IdleWorker()
        if not self.collector:  # the processes that send requests watch their own health
            self.health = health.HealthMonitor()
            self.health.start()
        # A full garbage collection walks every live object, and the tokenizer, dataset and libraries loaded
        # by now are most of them: at 256 streams each full collection held the loop 85-140 ms, late-reading
        # the tokens due meanwhile. Frozen objects are skipped, so collections only walk what the test makes.
        gc.collect()
        gc.freeze()
        self.post.pause_gc()  # and collect only when the loop is idle (idle.py)
        self.run = Run(cfg, self.model, host, extra, sink=sink)
        if sink is not None:
            return
        prefix_hits.keep(self.run, self.prefix_theory)
        if self.collector:
            self.collector.start()
        self._start_scraper(cfg, host, self.run.dir)
        print(f"Writing records to {self.run.dir}/records.jsonl", flush=True)

    def _start_scraper(self, cfg: RunConfig, host: str, run_dir: str) -> None:
        """Scrape the server's /metrics in a child process (its parsing never holds this loop), and wait for
        the first scrape before users start, so counter deltas cover the run's first request."""
        url = scrape.metrics_url(host, cfg.server_metrics)
        armed, self.armed = self.armed, None
        if armed and (armed.url, armed.interval_s) != (url, cfg.server_metrics_interval):
            armed.stop()
            armed = None
        if not url:
            return
        self.scraper = armed or scrape.ScraperProcess(url, interval_s=cfg.server_metrics_interval)
        self.scraper.start(os.path.join(run_dir, scrape.FILE))
        self.scraper.wait_first()
        gevent.get_hub().loop.update_now()  # the wait is not run time

    # -- one request ------------------------------------------------------------------------------------
    def user_started(self) -> int:
        """A user starts; its number."""
        self.active += 1
        self.peak = max(self.peak, self.active)
        return next(self.user_numbers)

    def user_stopped(self) -> bool:
        """A user stops; True when it was the last one of a finished pass (the edge ends the test)."""
        self.active -= 1
        return self.pass_done and self.active == 0

    def finish_request(self, run: Run, client, result: dict, request, user: int) -> dict:
        """Parse a finished request (client.send's raw result) into its record and write it."""
        rec = run.record(client.complete(result), request.prompt, worker=self.worker_id, user=user,
                         stage=request.stage, conversation=request.conversation, turn=request.turn)
        if self.health and rec["events"]:
            self.health.ended(rec["t_send"] + rec["events"][-1][0])
        return rec

    # -- stop and quit ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """The test stops: every queued record written (before the tables), arrivals stopped."""
        if self.post:
            self.post.drain()  # every finished request recorded before the tables
            self.post.resume_gc()
        if self.arrivals:
            self.arrivals.stop()

    def take_run(self) -> Run | None:
        """The finished test's Run, with the scraper's summary in its config; the session holds none after."""
        run, self.run = self.run, None
        scraper, self.scraper = self.scraper, None
        if scraper:  # its final scrape comes after the last answer, so the counters cover every request
            summary = {"url": scraper.url, "interval_s": scraper.interval_s, **scraper.stop()}
            if run is not None:
                run.config["server_metrics_scrape"] = summary
        return run

    def quit(self) -> None:
        for scraper in (self.scraper, self.armed):  # a run that never reached test stop, or never started
            if scraper:
                scraper.stop()
        self.scraper = self.armed = None
        if self.sim:
            self.sim.stop()
            self.sim = None
