"""Work the event loop does only when nothing else is waiting: parsing finished streams.

When many equal-length streams end together, parsing them all at once would hold the loop for
tens of milliseconds while other streams' bytes wait, adding that to their measured TTFT/ITL. The
idle worker runs one job per loop iteration, and only when no I/O is pending, so timestamps keep
their precision. If jobs pile up (the client is saturated and the loop never idles) they run inline,
so memory stays bounded and records are not held back indefinitely.
"""
from __future__ import annotations

import logging
from collections import deque

import gevent
from gevent.event import Event

log = logging.getLogger(__name__)


class IdleWorker:
    def __init__(self, backlog: int = 256):
        self.jobs: deque = deque()
        self.backlog = backlog
        self._wake = Event()
        self._greenlet = gevent.spawn(self._run)

    def submit(self, job) -> None:
        if len(self.jobs) >= self.backlog:
            self._call(job)  # the loop is not idling: do it now rather than queue without bound
            return
        self.jobs.append(job)
        self._wake.set()

    def _run(self) -> None:
        while True:
            if not self.jobs:
                self._wake.clear()
                self._wake.wait()
            gevent.idle()  # after every pending I/O callback of this loop iteration
            if self.jobs:
                self._call(self.jobs.popleft())

    @staticmethod
    def _call(job) -> None:
        try:
            job()
        except Exception:  # noqa: BLE001 - one bad job must not stop the others
            log.exception("post-processing a request failed")

    def drain(self) -> None:
        """Run every queued job now (at test stop, before the tables are made)."""
        while self.jobs:
            self._call(self.jobs.popleft())
