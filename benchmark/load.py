"""Load shapes: a step ramp as a Locust LoadTestShape (open-loop arrivals are in arrivals.py).

Closed loop (the default): `-u N` users, each sending its next request when the last one ended.
Steps: `--steps 8,16,32 --step-time 60s` holds each user count for step-time; every record carries
its step as `stage`, so tables and accuracy split by step.
"""
from __future__ import annotations

from locust import LoadTestShape


def stage_name(i: int, users: int) -> str:
    return f"step{i + 1}-{users}u"


class StepShape(LoadTestShape):
    """Hold each user count of `steps` for `step_time` seconds, then stop."""

    def __init__(self, steps: list[int], step_time: float, on_stage):
        super().__init__()
        self.steps, self.step_time, self.on_stage = steps, step_time, on_stage
        self.ended = False  # the last step is over: the users still running are stopped with the test

    def reset_time(self):
        super().reset_time()
        self.ended = False

    def tick(self):
        i = int(self.get_run_time() // self.step_time)
        if i >= len(self.steps):
            self.ended = True
            return None
        users = self.steps[i]
        self.on_stage(stage_name(i, users))
        return users, users  # all of a step's users at once


class CapacitySearch(LoadTestShape):
    """Find the most users whose requests still meet the SLO: double the users each step until a step
    fails, then bisect between the last passing and the first failing count.

    A step passes when at least `attainment` % of its finished requests meet every --slo limit
    (`judge(stage)` gives that share and the number of requests). Each step is a stage of its own.
    """

    def __init__(self, step_time: float, judge, on_stage, attainment: float, max_users: int,
                 report=print):
        super().__init__()
        self.step_time, self.judge, self.on_stage = step_time, judge, on_stage
        self.attainment, self.max_users, self.report = attainment, max_users, report
        self.reset()

    def reset(self) -> None:
        self.users, self.good, self.bad, self.steps, self.result = 1, 0, None, [], None
        self.ended = False

    def reset_time(self):
        super().reset_time()
        self.reset()

    def stage(self) -> str:
        return f"search{len(self.steps) + 1}-{self.users}u"

    def tick(self):
        if self.result is not None:
            self.ended = True
            return None
        if self.get_run_time() >= (len(self.steps) + 1) * self.step_time:
            self._next()
            if self.result is not None:
                self.ended = True
                return None
        self.on_stage(self.stage())
        return self.users, self.users

    def _next(self) -> None:
        share, n = self.judge(self.stage())
        passed = n > 0 and share >= self.attainment
        self.steps.append((self.users, share, n, passed))
        if passed:
            self.good = self.users
        else:
            self.bad = self.users
        if self.bad is None:
            nxt = self.users * 2
            if nxt > self.max_users:
                return self._finish("still meeting the SLO at the --search-max-users cap")
        else:
            nxt = (self.good + self.bad) // 2
            if nxt <= self.good:
                return self._finish(f"{self.bad} users failed")
        self.users = nxt

    def _finish(self, why: str) -> None:
        self.result = self.good
        tried = ", ".join(f"{u}u {s:.0f}% of {n}{'' if ok else ' FAIL'}" for u, s, n, ok in self.steps)
        self.report(f"Capacity search: largest load meeting the SLO in >= {self.attainment:g} % of "
                    f"requests: {self.good} users ({why}). Steps: {tried}")
