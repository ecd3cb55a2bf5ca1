"""A user's own locustfile (tests/test_workloads.py): LLMUser subclassed to see every body it sends, and
listeners on events.llm_request and Locust's request event, each writing what it got to a file."""
import json
import os

from benchmark.user import LLMUser, events


class CaptureUser(LLMUser):
    def send(self, request):
        with open(os.environ["BODIES_FILE"], "a") as f:
            f.write(json.dumps({"conversation": request.conversation, "turn": request.turn,
                                "messages": json.loads(request.body)["messages"]}) + "\n")
        super().send(request)


def _write(line: dict) -> None:
    with open(os.environ["EVENTS_FILE"], "a") as f:
        f.write(json.dumps(line) + "\n")


@events.llm_request.add_listener
def on_llm_request(record, **figures):
    _write({"event": "llm_request", "id": record["id"], **figures})


@events.request.add_listener
def on_request(context, **_):
    _write({"event": "request", **context})
