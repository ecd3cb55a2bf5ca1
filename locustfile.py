"""LLM-Testing entry point: `locust -f locustfile.py [--headless -u N -r N -t 30s] [--host URL]`.

Thin wiring only: importing benchmark.user registers our options and Locust event listeners, which drive
the run's Session (benchmark/session.py): options -> target (the built-in simulator when no --host) ->
one user per concurrent stream, each sending its workload's next request (benchmark/workloads/) ->
records -> AISBench-style tables when the test stops.

Your own locustfile can do the same with its own user: `from benchmark.user import LLMUser` and subclass
it (README "Your own locustfile").
"""
from benchmark.user import LLMUser


class ChatUser(LLMUser):
    """Our user: the run's workload (--dataset, --multi-turn), as fast as answers end (or at --request-rate)."""
