"""Locust master/worker (`--processes N`, `--master`/`--worker`): workers ship raw records to the master.

Workers send their records in batches with `runner.send_message`; the master writes them to the
run's records.jsonl, so its tables come from every raw sample, exactly as one process would compute
them. When the master's test stops it asks every worker to stop and flush, and waits for each one's
last batch before it makes the tables.

Readiness: Locust counts a worker ready as soon as it connects, before the locustfile has loaded the
prompts and tokenizer there, so the master's `-t` clock used to start seconds before the workers could
send (a 10 s run measured 5.8 s). Here the master sends each worker its options and target (PREPARE) and
keeps the worker out of Locust's ready set (state "preparing", shown in the web UI's Workers tab) until
it answers that everything is built (READY); only then do the headless start and the web UI's Start
count it, so the clock starts when every worker can send its first request at once.
"""
from __future__ import annotations

import logging
import time

import gevent

logger = logging.getLogger("llm-testing")

RECORDS = "llm_records"  # worker -> master: a batch of records
DONE = "llm_done"        # worker -> master: last batch sent (data: records sent, client health)
FLUSH = "llm_flush"      # master -> workers: stop your users and send what you have
SHARD = "llm_shard"      # master -> workers: how many workers share the prompts
PASS_DONE = "llm_pass_done"  # worker -> master: this worker's share of a scored pass is answered
STAGE = "llm_stage"      # master -> workers: the step a --steps ramp is in
PREPARE = "llm_prepare"  # master -> workers: build the prompts and bodies for this host and these options
READY = "llm_ready"      # worker -> master: prepared (or why not)
HELLO = "llm_hello"      # worker -> master: its handlers are installed (a PREPARE sent earlier was dropped)
PREPARING = "preparing"  # a worker's state on the master until it is READY (Locust's ready is "ready")
FORWARDED = ("run_time",)  # Locust options a worker needs too (a --ramp-up-strategy spans -t)

BATCH = 200
INTERVAL_S = 0.5


class ShippingSink:
    """The worker's record sink: batches to the master instead of a file."""

    def __init__(self, runner):
        self.runner = runner
        self.buffer: list[dict] = []
        self.count = 0
        self._flusher = gevent.spawn(self._flush_every, INTERVAL_S)

    def write(self, record: dict) -> None:
        self.buffer.append(record)
        self.count += 1
        if len(self.buffer) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            batch, self.buffer = self.buffer, []
            self.runner.send_message(RECORDS, batch)

    def _flush_every(self, seconds: float) -> None:
        while True:
            gevent.sleep(seconds)
            self.flush()

    def close(self, health: dict | None = None) -> None:
        if self._flusher is not None:
            self._flusher.kill(block=False)
            self._flusher = None
            self.flush()
            self.runner.send_message(DONE, {"records": self.count, "health": health or {}})


def custom_options(options) -> dict:
    """The options a worker takes from the master: the locustfile's own (as Locust forwards them with
    every spawn) and FORWARDED."""
    from locust.argument_parser import default_args_dict
    locust_own = set(default_args_dict())
    return {k: v for k, v in vars(options).items() if k not in locust_own or k in FORWARDED}


class MasterCollector:
    """The master's side: writes worker batches into the current run and waits for the last ones;
    prepares every worker before Locust may count it ready."""

    def __init__(self, runner, get_run, on_pass_done, on_worker_failed=None):
        self.runner = runner
        self.get_run = get_run
        self.done: set[str] = set()
        self.health: dict[str, dict] = {}  # worker -> its client health
        self.passes_done: set[str] = set()
        self.target: dict | None = None     # {"serial", "host", "options"}: what workers must prepare
        self.prepared: dict[str, int] = {}  # worker -> the serial it is prepared for
        self.failed: dict[str, str] = {}    # worker -> why it could not prepare the current target
        self._on_worker_failed = on_worker_failed
        runner.register_message(RECORDS, self._on_records)
        runner.register_message(DONE, self._on_done)
        runner.register_message(PASS_DONE, self._on_pass_done)
        runner.register_message(READY, self._on_ready)
        # Locust drops a message whose type a worker has not registered yet: the PREPARE sent when a worker
        # connects can arrive before its init listener installed the handler, so it says when it is listening
        runner.register_message(HELLO, lambda environment, msg, **_: self._send_target(msg.node_id))
        runner.environment.events.worker_connect.add_listener(self._on_connect)
        runner.environment.events.heartbeat_sent.add_listener(self._hold)
        self._on_pass_done_cb = on_pass_done

    # ---- readiness
    def prepare(self, host: str, options: dict) -> None:
        """Every worker, connected now or later, builds its prompts for `host` and `options` before it
        counts as ready."""
        serial = (self.target or {}).get("serial", 0) + 1
        self.target = {"serial": serial, "host": host, "options": options}
        self.failed.clear()
        for node_id in list(self.runner.clients):
            self._send_target(node_id)

    def _send_target(self, node_id: str) -> None:
        if self.target is None:
            return
        self._hold(node_id)
        self.runner.send_message(PREPARE, self.target, client_id=node_id)

    def _on_connect(self, client_id, **_):
        # Locust fires worker_connect before it makes the worker's node: act once the handler is done
        gevent.spawn(self._send_target if self.target else self._hold, client_id)

    def _hold(self, client_id, **_):
        """Keep a worker that is not prepared for the current target out of Locust's ready set (a
        heartbeat sets the node's state back to the worker's own)."""
        from locust.runners import STATE_INIT
        node = self.runner.clients.get(client_id)
        if node is not None and node.state == STATE_INIT and not self.is_prepared(client_id):
            node.state = PREPARING

    def is_prepared(self, node_id: str) -> bool:
        return self.target is not None and self.prepared.get(node_id) == self.target["serial"]

    def _on_ready(self, environment, msg, **_):
        from locust.runners import STATE_INIT
        data = msg.data or {}
        if self.target is None or data.get("serial") != self.target["serial"]:
            return  # the answer to an older target
        if data.get("error"):
            self.failed[msg.node_id] = data["error"]
            if self._on_worker_failed:
                self._on_worker_failed(self.worker_name(msg.node_id), data["error"])
            return
        self.prepared[msg.node_id] = data["serial"]
        node = self.runner.clients.get(msg.node_id)
        if node is not None and node.state == PREPARING:
            node.state = STATE_INIT
        logger.info("worker %s ready: %s", self.worker_name(msg.node_id), data.get("summary", ""))

    def worker_name(self, node_id: str) -> str:
        return f"{self.runner.get_worker_index(node_id)} ({node_id})"

    def wait_prepared(self, timeout: float = 120.0) -> str | None:
        """Until every connected worker is prepared for the current target: None, or why not (one line)."""
        from locust.runners import STATE_MISSING
        deadline = time.monotonic() + timeout
        while True:
            if self.failed:
                node_id, error = next(iter(self.failed.items()))
                return f"worker {self.worker_name(node_id)}: {error}"
            waiting = [n for n, node in self.runner.clients.items()
                       if node.state != STATE_MISSING and not self.is_prepared(n)]
            if not waiting:
                return None
            if time.monotonic() > deadline:
                return (f"worker {self.worker_name(waiting[0])} did not finish preparing its prompts "
                        f"within {timeout:g} s")
            gevent.sleep(0.05)

    def start(self) -> None:
        """At test start: reset, and tell the workers how many share the prompts."""
        self.done.clear()
        self.health.clear()
        self.passes_done.clear()
        self.runner.send_message(SHARD, {"workers": self.runner.worker_count})

    def _on_records(self, environment, msg, **_):
        run = self.get_run()
        if run is None:
            return  # a batch after the run ended: impossible once wait_for_workers returned
        for rec in msg.data:
            run.keep(rec)

    def _on_done(self, environment, msg, **_):
        self.done.add(msg.node_id)
        if msg.data.get("health"):
            self.health[f"worker {self.runner.get_worker_index(msg.node_id)}"] = msg.data["health"]

    def _on_pass_done(self, environment, msg, **_):
        self.passes_done.add(msg.node_id)
        if len(self.passes_done) >= self.runner.worker_count:
            self._on_pass_done_cb()

    def wait_for_workers(self, expected: int, timeout: float = 30.0) -> bool:
        """Ask every worker to stop and flush; True when all `expected` sent their last batch."""
        self.runner.send_message(FLUSH)
        with gevent.Timeout(timeout, False):
            while len(self.done) < expected:
                gevent.sleep(0.05)
        return len(self.done) >= expected


def die_with_parent() -> None:
    """In a `--processes` child: SIGTERM (Locust's clean shutdown) when the master process exits. Locust's
    own clean-up of its children misreads a running child as exited (os.waitpid WNOHANG returns (0, 0)) and
    leaves it waiting 60 s for the heartbeat of a master that stopped at start (a bad option)."""
    import ctypes
    import os
    import signal
    import sys
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the master was gone before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def install_worker(runner, on_shard, on_stage, on_prepare) -> None:
    """on_prepare(host, options) builds this worker's prompts; returns a one-line summary or raises
    ValueError-like errors whose text goes back to the master."""
    seen = set()  # serials prepared or being prepared: the master may send one twice (see HELLO)

    def prepare(environment, msg, **_):
        if msg.data["serial"] in seen:
            return
        seen.add(msg.data["serial"])

        def work():
            data = msg.data
            try:
                reply = {"serial": data["serial"], "summary": on_prepare(data["host"], data["options"])}
            except Exception as e:  # noqa: BLE001 - the master shows it, in one line
                reply = {"serial": data["serial"], "error": str(e) or type(e).__name__}
            runner.send_message(READY, reply)
        gevent.spawn(work)

    runner.register_message(PREPARE, prepare)
    runner.register_message(SHARD, lambda environment, msg, **_: on_shard(runner.worker_index,
                                                                          msg.data["workers"]))
    runner.register_message(STAGE, lambda environment, msg, **_: on_stage(msg.data))
    runner.register_message(FLUSH, lambda environment, msg, **_: gevent.spawn(runner.stop))
    runner.send_message(HELLO)
