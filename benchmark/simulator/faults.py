"""Injectable faults: what each one does to an answer, and how `--fault` / `X-Sim-Fault` name them.

How /metrics counts each (see metrics.py): the HTTP errors and reset-before-headers are turned away in
front of the engine and counted nowhere; reset-mid-stream is an abort (its tokens count, no finished
request); every other fault bends only what the frontend sends, so the engine finished the request
normally (stop or length) and it counts as finished.

Every fault applies in every API dialect (dialects.py) except where the dialect has nothing to bend:
no-done and usage-on-finish are about OpenAI's `[DONE]` and usage chunk; Triton has no finish reason
for no-finish to drop (there the answer comes out whole). no-usage hides TGI's/MindIE's token counts.
"""

from __future__ import annotations

import math

FEW = 3  # content chunks sent before reset-mid-stream / stall strike

# HTTP errors are answered at once, like a server that rejects the request.
HTTP_ERRORS: dict[str, tuple[int, dict, dict[str, str]]] = {
    "http-400": (400, {"object": "error", "message": "Injected bad request", "type": "BadRequestError",
                       "param": None, "code": 400}, {}),
    "http-401": (401, {"error": "Unauthorized"}, {}),
    "http-404": (404, {"object": "error", "message": "The model does not exist.", "type": "NotFoundError",
                       "param": None, "code": 404}, {}),
    "http-422": (422, {"object": "error", "type": "BadRequestError", "param": None, "code": 422,
                       "message": "[{'type': 'extra_forbidden', 'loc': ('body', 'ignore_eos'), "
                                  "'msg': 'Extra inputs are not permitted', 'input': True}] "
                                  "(extra fields not permitted: ignore_eos)"}, {}),
    "http-429": (429, {"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": 429}},
                 {"Retry-After": "1"}),
    "http-429-noretry": (429, {"error": {"message": "Rate limit reached", "type": "rate_limit_error",
                                         "code": 429}}, {}),
    "http-500": (500, {"error": {"message": "Injected Failure"}}, {}),
    "http-503": (503, {"error": {"message": "Service Unavailable", "type": "server_error", "code": 503}}, {}),
}
# The others change the answer; value = type of the argument after "name:" (None: takes none).
STREAM_FAULTS: dict[str, type | None] = {
    "reset-before-headers": None,  # close the socket without answering
    "reset-mid-stream": None,  # abort the connection after FEW content chunks
    "no-done": None,  # end the body without data: [DONE]
    "no-finish": None,  # no chunk carries finish_reason
    "malformed-json": None,  # the middle content event is cut in half
    "non-sse": None,  # a plain JSON body although stream was asked
    "nospace-crlf": None,  # "data:{json}\r\n\r\n" with ": keep-alive" comments between events
    "empty-completion": None,  # role, finish, usage, [DONE]; no content
    "usage-on-finish": None,  # usage rides on the finish chunk, as some servers send it
    "no-usage": None,  # never send usage
    "slow-first-byte": float,  # hold the headers back this many seconds
    "stall": float,  # after FEW chunks, pause this many seconds
    "huge": int,  # this many tokens whatever max_tokens says
}
FAULT_NAMES = [*HTTP_ERRORS, *STREAM_FAULTS]
FAULT_USAGE = ", ".join(n + {float: ":SECONDS", int: ":N"}.get(STREAM_FAULTS.get(n), "") for n in FAULT_NAMES)

ABORT = object()  # an event that resets the connection instead of writing


def parse_fault(text: str) -> tuple[str, float | int | None]:
    """'stall:2.5' -> ('stall', 2.5); raises ValueError naming the problem."""
    name, _, arg = text.strip().partition(":")
    if name not in FAULT_NAMES:
        raise ValueError(f"unknown fault {name!r} (choose from {FAULT_USAGE})")
    kind = STREAM_FAULTS.get(name)
    if kind is None:
        if arg:
            raise ValueError(f"fault {name!r} takes no argument")
        return name, None
    try:
        value = kind(arg)
        if not 0 <= value < math.inf:
            raise ValueError(arg)
    except ValueError:
        raise ValueError(f"fault {name!r} needs a non-negative {kind.__name__} argument, "
                         f"as in {name}:{kind(2)}") from None
    return name, value

