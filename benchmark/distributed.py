"""Locust master/worker (`--processes N`, `--master`/`--worker`): workers ship raw records to the master.

Workers send their records in batches with `runner.send_message`; the master writes them to the
run's records.jsonl, so its tables come from every raw sample, exactly as one process would compute
them. When the master's test stops it asks every worker to stop and flush, and waits for each one's
last batch before it makes the tables.
"""
from __future__ import annotations

import gevent

RECORDS = "llm_records"  # worker -> master: a batch of records
DONE = "llm_done"        # worker -> master: last batch sent (data: records sent, client health)
FLUSH = "llm_flush"      # master -> workers: stop your users and send what you have
SHARD = "llm_shard"      # master -> workers: how many workers share the prompts
PASS_DONE = "llm_pass_done"  # worker -> master: this worker's share of a scored pass is answered
STAGE = "llm_stage"      # master -> workers: the step a --steps ramp is in

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


class MasterCollector:
    """The master's side: writes worker batches into the current run and waits for the last ones."""

    def __init__(self, runner, get_run, on_pass_done):
        self.runner = runner
        self.get_run = get_run
        self.done: set[str] = set()
        self.health: dict[str, dict] = {}  # worker -> its client health
        self.passes_done: set[str] = set()
        runner.register_message(RECORDS, self._on_records)
        runner.register_message(DONE, self._on_done)
        runner.register_message(PASS_DONE, self._on_pass_done)
        self._on_pass_done_cb = on_pass_done

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


def install_worker(runner, on_shard, on_stage) -> None:
    runner.register_message(SHARD, lambda environment, msg, **_: on_shard(runner.worker_index,
                                                                          msg.data["workers"]))
    runner.register_message(STAGE, lambda environment, msg, **_: on_stage(msg.data))
    runner.register_message(FLUSH, lambda environment, msg, **_: gevent.spawn(runner.stop))
