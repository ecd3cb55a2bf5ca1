"""Load shapes: a step ramp as a Locust LoadTestShape (open-loop arrivals are in arrivals.py).

Closed loop (the default): `-u N` users, each sending its next request when the last one ended.
Steps: `--steps 8,16,32 --step-time 60s` holds each user count for step-time; every record carries
its step as `stage`, so tables and accuracy split by step.
"""
from __future__ import annotations

from locust import LoadTestShape
from locust.util.timespan import parse_timespan

from .options import ConfigError


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        steps = []
    if not steps or min(steps) < 1:
        raise ConfigError(f"--steps: expected user counts like 8,16,32; got {text!r}")
    return steps


def parse_step_time(text: str) -> float:
    try:
        seconds = parse_timespan(text)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise ConfigError(f"--step-time: expected a duration like 60s or 2m; got {text!r}")
    return float(seconds)


def stage_name(i: int, users: int) -> str:
    return f"step{i + 1}-{users}u"


class StepShape(LoadTestShape):
    """Hold each user count of `steps` for `step_time` seconds, then stop."""

    def __init__(self, steps: list[int], step_time: float, on_stage):
        super().__init__()
        self.steps, self.step_time, self.on_stage = steps, step_time, on_stage

    def tick(self):
        i = int(self.get_run_time() // self.step_time)
        if i >= len(self.steps):
            return None
        users = self.steps[i]
        self.on_stage(stage_name(i, users))
        return users, users  # all of a step's users at once
