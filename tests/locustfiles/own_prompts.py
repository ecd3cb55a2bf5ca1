"""A user's own locustfile (tests/test_workloads.py): LLMUser with its own prompt source."""
import itertools

from benchmark.user import LLMUser

_next = itertools.count()


class OwnUser(LLMUser):
    def next_request(self):
        i = next(_next)
        if i >= 6:
            return None  # nothing more: this user stops (and the run ends when all have)
        return self.request([{"role": "user", "content": " ".join(["say", str(i)] * (i + 1))}], index=i)
