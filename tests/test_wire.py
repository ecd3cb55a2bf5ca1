"""The wire, by the standards (issue 13): hostile servers that bend SSE and HTTP the ways real gateways,
proxies and engines do. Each variant either succeeds with the exact text, usage and timing, or fails
with a reason a user understands; and the same client's next request works.

The servers are raw sockets on 127.0.0.1 in real OS threads (not greenlets, whatever gevent patched),
so every byte and every pause is the test's. Timing asserts are lower bounds and orderings against
the server's own write times (one clock: perf_counter in this process), never tight upper bounds:
the tests run on a busy 2-core machine.
"""
from __future__ import annotations

import gzip
import json
import socket as _socket_module
import struct
import time

import gevent
import pytest
from gevent import monkey

from benchmark import client as client_module
from benchmark import simulator
from benchmark.client import BOM, ChatClient
from benchmark.records import TOKEN_KINDS

_socket = monkey.get_original("socket", "socket")
_sleep = monkey.get_original("time", "sleep")
_start_thread = monkey.get_original("_thread", "start_new_thread")

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                   "stream": True, "stream_options": {"include_usage": True}}).encode()
USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
END = b"0\r\n\r\n"  # the chunked body's last chunk (RFC 9112 7.1)


def chunked(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def obj(content=None, role=False, finish=None, usage=None, choices=True) -> dict:
    out = {"id": "c1", "object": "chat.completion.chunk", "choices": []}
    if choices:
        delta = {"role": "assistant", "content": ""} if role else {"content": content}
        out["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage:
        out["usage"] = usage
    return out


def event(o: dict, eol: bytes = b"\n") -> bytes:
    return b"data: " + json.dumps(o).encode() + eol + eol


TAIL = event(obj("", finish="stop")) + event(obj(usage=USAGE, choices=False)) + b"data: [DONE]\n\n"


class Request:
    def __init__(self, conn: int, head: bytes, body: bytes):
        self.conn, self.head, self.body, self.t = conn, head, body, time.perf_counter()

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode()
        return None


class Writer:
    """What a handler has: send (each write's start time is kept), pause, drop the connection."""

    def __init__(self, sock, server: Server, i: int):
        self.sock, self.server, self.i = sock, server, i

    def send(self, data: bytes) -> None:
        # the time just before the write: nothing of it can be read earlier, and the test can't see
        # the bytes before their time is kept
        self.server.writes.setdefault(self.i, []).append(time.perf_counter())
        self.sock.sendall(data)

    def sleep(self, s: float) -> None:
        _sleep(s)

    def reset(self) -> None:
        """Abort with a TCP RST."""
        self.sock.setsockopt(_socket_module.SOL_SOCKET, _socket_module.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class Server:
    """A raw HTTP/1.1 server: request i (over all connections) is answered by handlers[min(i, last)],
    which returns True to read the next request on the same connection."""

    def __init__(self, *handlers):
        self.handlers = handlers
        self.requests: list[Request] = []
        self.writes: dict[int, list[float]] = {}
        self.sock = _socket(_socket_module.AF_INET, _socket_module.SOCK_STREAM)
        self.sock.setsockopt(_socket_module.SOL_SOCKET, _socket_module.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.connections = 0
        _start_thread(self._serve, ())

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(_socket_module.IPPROTO_TCP, _socket_module.TCP_NODELAY, 1)
            self.connections += 1
            _start_thread(self._connection, (conn, self.connections - 1))

    def _connection(self, conn, cid: int) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:  # the client closed it
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                req = Request(cid, head, b"")
                length = int(req.header("Content-Length") or 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                req.body, buf = buf[:length], buf[length:]
                i = len(self.requests)
                self.requests.append(req)
                if not self.handlers[min(i, len(self.handlers) - 1)](Writer(conn, self, i), req):
                    return
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def offsets(self, i: int, out: dict) -> list[float]:
        """Request i's write times as offsets from the client's t_send of `out`."""
        t0 = out["t_send"] - client_module._EPOCH_AT_ZERO
        return [w - t0 for w in self.writes[i]]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve():
    started = []

    def start(*handlers) -> Server:
        started.append(Server(*handlers))
        return started[-1]
    yield start
    for s in started:
        s.close()


def good(w: Writer, req: Request) -> bool:
    w.send(HEAD + chunked(event(obj(role=True)) + event(obj("Hello")) + event(obj(" world")) + TAIL) + END)
    return True


def check_good(out: dict) -> None:
    assert out["success"], out["error"]
    assert out["completion"] == "Hello world" and out["finish_reason"] == "stop" and out["usage"] == USAGE
    assert [e[1] for e in out["events"]] == ["role", "content", "content", "other", "usage"]


def tokens(out: dict) -> list[float]:
    return [e[0] for e in out["events"] if e[1] in TOKEN_KINDS]


# ------------------------------------------------------------------ SSE: WHATWG HTML 9.2.6


def test_a_leading_bom_is_skipped_and_ttft_is_the_first_token(serve):
    def bom(w, req):
        w.send(HEAD)
        w.sleep(0.1)
        w.send(chunked(BOM + event(obj("Hello"))))
        w.sleep(0.3)
        w.send(chunked(event(obj(" world")) + TAIL) + END)
        return True
    srv = serve(bom, good)
    c = ChatClient(srv.url)
    out = c.send(BODY)
    assert out["success"], out["error"]
    assert out["completion"] == "Hello world" and out["usage"] == USAGE
    first, second = tokens(out)
    written = srv.offsets(0, out)
    assert written[1] <= first < written[2], (first, written)  # the first token, not the second
    assert first >= 0.1 and second >= written[2]
    check_good(c.send(BODY))


def test_an_event_spread_over_data_lines_is_one_event_timed_at_its_first_line(serve):
    def multiline(w, req):
        w.send(HEAD + chunked(event(obj(role=True))))
        w.send(chunked(b'data: {"choices": [{"index": 0,\n'))  # the event's first line
        w.sleep(0.3)
        w.send(chunked(b'data:  "delta": {"content": "Hel\\nlo"},\ndata: "finish_reason": null}]}\n\n'))
        w.send(chunked(event(obj(" world")) + TAIL) + END)
        return True
    srv = serve(multiline, good)
    c = ChatClient(srv.url)
    out = c.send(BODY)
    assert out["success"], out["error"]
    assert out["completion"] == "Hel\nlo world"
    written = srv.offsets(0, out)
    first = tokens(out)[0]
    assert written[1] <= first < written[2], (first, written)  # the first line's time, not the dispatch's
    check_good(c.send(BODY))


@pytest.mark.parametrize("eol", [b"\r", b"\r\n", b"\n"])
def test_every_line_end_the_spec_allows(serve, eol):
    def lines(w, req):
        body = b"".join(event(o, eol) for o in (obj(role=True), obj("Hello"), obj(" world"), obj("", finish="stop"),
                                                obj(usage=USAGE, choices=False))) + b"data: [DONE]" + eol + eol
        w.send(HEAD)
        cut = body.index(eol) + 1  # split right after the first line end's first byte (a CR of a CRLF)
        w.send(chunked(body[:cut]))
        w.sleep(0.05)
        w.send(chunked(body[cut:]) + END)
        return True
    srv = serve(lines)
    c = ChatClient(srv.url)
    check_good(c.send(BODY))
    check_good(c.send(BODY))


def test_fields_comments_and_named_events(serve):
    def fields(w, req):
        w.send(HEAD + chunked(b": a comment\n\nretry: 3000\nid: 7\n" + event(obj(role=True))
                              + b"event: ping\ndata: not json\n\n"  # not a "message" event: not a chunk
                              + b"id: 8\nevent: message\n" + event(obj("Hello")) + b"data\n\n"  # empty data
                              + event(obj(" world")) + TAIL) + END)
        return True

    def error_event(w, req):
        w.send(HEAD + chunked(event(obj(role=True)) + b'event: error\ndata: {"error": {"message": "overloaded"}}\n\n')
               + END)
        return True
    srv = serve(fields, error_event, good)
    c = ChatClient(srv.url)
    check_good(c.send(BODY))
    out = c.send(BODY)
    assert not out["success"] and out["error"] == "server error in stream (event: error): overloaded"
    check_good(c.send(BODY))


def test_malformed_json_shows_the_bytes_around_the_error(serve):
    def bad_utf8(w, req):
        w.send(HEAD + chunked(event(obj("Hello")) + b'data: {"choices":[{"delta":{"content":"caf\xe9 au lait"}}]}\n\n'
                              + TAIL) + END)
        return True

    def cut(w, req):
        w.send(HEAD + chunked(event(obj("Hello")) + b'data: {"choices":[{"delta":{"content":"wor\n\n' + TAIL) + END)
        return True
    srv = serve(bad_utf8, cut, good)
    c = ChatClient(srv.url)
    out = c.send(BODY)
    assert not out["success"]
    assert out["error"].startswith("malformed JSON in stream: invalid UTF-8 (invalid continuation byte) at byte 36 of")
    assert r"caf\xe9 au" in out["error"], out["error"]
    out = c.send(BODY)
    assert out["error"].startswith("malformed JSON in stream: Unterminated string"), out["error"]
    assert out["error"].endswith(""""content":"wor' (the end)"""), out["error"]
    check_good(c.send(BODY))


# ------------------------------------------------------------------ HTTP: RFC 9110 / 9112


def test_interim_responses_are_skipped_and_the_connection_kept(serve):
    def interim(w, req):
        w.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        w.sleep(0.05)
        w.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        w.sleep(0.05)
        return good(w, req)
    srv = serve(interim)
    c = ChatClient(srv.url)
    check_good(c.send(BODY))
    gevent.sleep(0.1)
    check_good(c.send(BODY))
    assert [r.conn for r in srv.requests] == [0, 0]  # read to its end: the connection carried the next one


def test_a_connection_left_in_an_unknown_state_is_never_reused(serve):
    def interim_then_close(w, req):
        w.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        return False

    def switching(w, req):  # RFC 9110 15.2.2: only after an Upgrade asked for; this client never asks
        w.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nxx")
        return True

    def stray_bytes(w, req):  # RFC 9112 6.3: what follows a complete response is discarded, and closed
        w.send(HEAD + chunked(event(obj(role=True)) + event(obj("Hello")) + event(obj(" world")) + TAIL) + END
               + b"HTTP/1.1 200 OK\r\n\r\n")  # read with the response
        return True

    def stray_bytes_later(w, req):
        good(w, req)
        w.sleep(0.05)
        w.send(b"HTTP/1.1 200 OK\r\n\r\n")  # found on the idle connection before the next send
        return True
    srv = serve(good, interim_then_close, good, switching, stray_bytes, stray_bytes_later, good)
    c = ChatClient(srv.url)
    check_good(c.send(BODY))
    out = c.send(BODY)
    assert not out["success"] and out["error"].startswith("bad HTTP response: HTTPParseError"), out["error"]
    check_good(c.send(BODY))
    out = c.send(BODY)
    assert not out["success"] and out["error"].startswith("bad HTTP response: HTTPParseError"), out["error"]
    check_good(c.send(BODY))
    check_good(c.send(BODY))
    gevent.sleep(0.3)
    check_good(c.send(BODY))
    conns = [r.conn for r in srv.requests]
    assert conns[2] != conns[1] and conns[4] != conns[3] and conns[5] != conns[4] and conns[6] != conns[5], conns


@pytest.mark.parametrize("dialect", ["done", "finish-usage"])
def test_the_answer_ends_at_done_whatever_the_body_does(serve, dialect):
    """The body stays open 3 s after the answer: the request is over at [DONE] (or at the finish chunk
    with the usage, when the stream ends there), not stalled under --read-timeout, and the user does
    not wait."""
    linger = 3.0
    tail = TAIL if dialect == "done" else event(obj("", finish="stop", usage=USAGE))

    def lingering(w, req):
        w.send(HEAD + chunked(event(obj(role=True)) + event(obj("Hello")) + event(obj(" world")) + tail))
        w.sleep(linger)
        w.send(END)
        return True
    srv = serve(lingering, good)
    c = ChatClient(srv.url, read_timeout=0.5)
    t = time.perf_counter()
    out = c.send(BODY)
    took = time.perf_counter() - t
    assert out["success"], out["error"]
    assert out["completion"] == "Hello world" and out["usage"] == USAGE
    assert took < linger, took
    check_good(c.send(BODY))
    assert srv.requests[1].conn != srv.requests[0].conn  # not read to its end: closed, not reused
    assert time.perf_counter() - t < linger
    assert c._lingers  # waited BODY_END_WAIT_S for that body's end once: not again for this server


def test_a_body_that_ends_soon_after_done_keeps_its_connection(serve):
    def prompt(w, req):
        w.send(HEAD + chunked(event(obj(role=True)) + event(obj("Hello")) + event(obj(" world")) + TAIL))
        w.sleep(0.02)
        w.send(END)
        return True
    srv = serve(prompt)
    c = ChatClient(srv.url)
    for _ in range(3):
        check_good(c.send(BODY))  # the next one waits (before its t_send) for the end of this body
    assert [r.conn for r in srv.requests] == [0, 0, 0]
    assert not c._lingers


def test_compressed_answers_fail_naming_content_encoding(serve):
    def gzipped(w, req):
        assert req.header("Accept-Encoding") == "identity"
        body = gzip.compress(event(obj("Hello")) + TAIL)
        w.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return True

    def gzipped_error(w, req):
        body = gzip.compress(b'{"error": {"message": "boom"}}')
        w.send(b"HTTP/1.1 500 Internal Server Error\r\nContent-Encoding: gzip\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return True
    srv = serve(gzipped, gzipped_error, good)
    c = ChatClient(srv.url)
    out = c.send(BODY)
    assert out["error"] == ("HTTP 200 with Content-Encoding: gzip although the request sent Accept-Encoding: "
                            "identity (a compressing proxy?): the body can't be read as it streams")
    out = c.send(BODY)
    assert out["error"] == "HTTP 500: (a body in Content-Encoding gzip, not shown)"
    check_good(c.send(BODY))


# ------------------------------------------------------------------ resends and retries (RFC 9110 9.2.2)


def drop_after_reading(w, req):
    return False  # reads the request, closes without a byte of answer


def test_a_dropped_request_is_a_failure_not_a_silent_resend(serve):
    srv = serve(good, drop_after_reading, good)
    c = ChatClient(srv.url)
    check_good(c.send(BODY))
    out = c.send(BODY)
    assert not out["success"]
    assert out["error"] == ("connection error: the server closed the kept-alive connection before answering "
                            "(it may have read the request: not resent; --retry can retry it)")
    assert (out["attempts"], out["resends"], out["retries"]) == (1, 0, 0)
    assert len(srv.requests) == 2  # the server saw it once
    check_good(c.send(BODY))


def test_retry_allows_another_attempt_and_the_record_says_where_latency_started(serve):
    srv = serve(good, drop_after_reading, good)
    c = ChatClient(srv.url, retry=2, retry_max_wait=0.2)
    check_good(c.send(BODY))
    out = c.send(BODY)
    check_good(out)
    assert (out["attempts"], out["resends"], out["retries"]) == (2, 0, 1)
    assert out["t_first_send"] + 0.2 <= out["t_send"]  # the backoff lies between the two attempts
    ids = [r.header("X-Request-Id") for r in srv.requests]
    assert ids[1] == ids[2] == out["request_id"]  # the same request, twice at the server
    assert srv.offsets(2, out)[0] >= 0  # event times count from the measured attempt's send


def test_a_connection_closed_while_idle_is_replaced_before_the_send(serve):
    def answer_then_close(w, req):
        good(w, req)
        w.sleep(0.05)
        return False  # FIN on the idle connection
    srv = serve(answer_then_close)
    c = ChatClient(srv.url)
    check_good(c.send(BODY))
    gevent.sleep(0.3)
    out = c.send(BODY)
    check_good(out)
    assert (out["attempts"], out["resends"], out["retries"]) == (1, 0, 0)  # never written to the dead one
    assert len(srv.requests) == 2


def test_a_send_that_never_left_is_resent_at_once(serve, monkeypatch):
    def answer_then_reset(w, req):
        good(w, req)
        w.sleep(0.05)
        w.reset()
        return False
    srv = serve(answer_then_reset, good)
    c = ChatClient(srv.url)
    check_good(c.send(BODY))
    gevent.sleep(0.3)
    # the idle check passed just before the reset came in (the race it can't close): the first
    # send() then fails without accepting a byte, so the request never left
    monkeypatch.setattr(client_module, "_idle_socket_alive", lambda sock: True)
    out = c.send(BODY)
    check_good(out)
    assert (out["attempts"], out["resends"], out["retries"]) == (2, 1, 0)
    assert len(srv.requests) == 2  # the server saw it once


@pytest.mark.parametrize("delay", [0.0, 0.005])
def test_a_server_that_closes_after_every_response_gets_fresh_connections(serve, monkeypatch, delay):
    """llama.cpp's server closes each connection right after its answer although it says Keep-Alive. A
    request sent before that close arrives could not be resent: the first reuse waits (before t_send)
    for such a close, and once one is seen, connections to that server are not kept."""
    monkeypatch.setattr(client_module, "_closes_connections", set())
    monkeypatch.setattr(client_module, "_keeps_connections", set())

    def answer_and_close(w, req):
        good(w, req)
        w.sleep(delay)
        return False
    srv = serve(answer_and_close)
    c = ChatClient(srv.url)
    for _ in range(4):  # back to back: the next request goes out as soon as the answer is in
        out = c.send(BODY)
        check_good(out)
        assert out["attempts"] == 1
    assert client_module._closes_connections == {c._server} and not client_module._keeps_connections
    assert len(set(r.conn for r in srv.requests)) == 4


# ------------------------------------------------------------------ failure reasons quote the server


def error_server(status: int, body: dict):
    def handler(w, req):
        data = json.dumps(body).encode()
        w.send(b"HTTP/1.1 %d Error\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
               % (status, len(data)) + data)
        return True
    return handler


def test_fastapi_422_says_missing_and_blames_only_the_option_that_sent_the_field(serve):
    missing = {"detail": [{"type": "missing", "loc": ["body", "messages"], "msg": "Field required",
                           "input": {"model": "m"}}]}
    extra = {"detail": [{"type": "extra_forbidden", "loc": ["body", "seed"], "msg": "Extra inputs are not permitted",
                         "input": 1}]}
    unknown = {"detail": [{"type": "extra_forbidden", "loc": ["body", "foo"], "msg": "Extra inputs are not permitted"}]}
    ours = {"detail": [{"type": "less_than_equal", "loc": ["body", "top_k"], "msg": "Input should be <= 100"}]}
    srv = serve(error_server(422, missing), error_server(422, extra), error_server(422, unknown),
                error_server(422, ours), error_server(400, {"error": {"message": "max context is 4096 tokens",
                                                                      "type": "invalid_request_error"}}), good)
    c = ChatClient(srv.url)
    out = c.send(BODY)
    assert out["error"].startswith("HTTP 422: server says request field 'messages' is missing: "), out["error"]
    assert '"msg": "Field required"' in out["error"] and "--extra-body" not in out["error"]
    with_seed = json.dumps({**json.loads(BODY), "seed": 1, "top_k": 500}).encode()  # as --extra-body sends it
    out = c.send(with_seed)
    assert out["error"].startswith("HTTP 422: server rejected request field 'seed' (sent by --extra-body): ")
    out = c.send(BODY)
    assert out["error"].startswith("HTTP 422: server rejected request field 'foo': "), out["error"]
    out = c.send(with_seed)
    assert out["error"].startswith("HTTP 422: server rejected request field 'top_k' (sent by --top-k): ")
    out = c.send(BODY)
    assert out["error"] == "HTTP 400: max context is 4096 tokens"
    check_good(c.send(BODY))


# ------------------------------------------------------------------ fidelity against the simulator's truth


def test_event_times_against_the_simulators_trace(tmp_path):
    """Client times never precede the simulator's deadlines (it never writes early) and each token is
    read before the next one was written (--trace records a write just after it), over kept-alive and
    replaced connections alike: the first token is the first written."""
    trace = tmp_path / "trace.jsonl"
    sim = simulator.start("--ttft-ms", "50", "--itl-ms", "100", "--trace", str(trace))
    try:
        c = ChatClient(sim.url)
        body = json.dumps({"model": "llm-sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                           "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}).encode()
        outs = [c.send(body) for _ in range(4)]
        deadline = time.monotonic() + 5
        while len(trace.read_text().splitlines()) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sim.stop()
    truth = {d["request_id"]: d for d in map(json.loads, trace.read_text().splitlines())}
    for out in outs:
        assert out["success"] and out["attempts"] == 1, out["error"]
        server = truth[out["request_id"]]
        client = [out["t_send"] + t for t in tokens(out)]
        written = [server["arrival"] + t for t in server["tokens"]]
        assert len(client) == len(written) == 4
        assert server["arrival"] >= out["t_send"] - 1e-3  # sent before it arrived (epoch clocks, 1 ms slack)
        due = [server["arrival"] + 0.050 + 0.100 * i for i in range(4)]
        assert all(c >= d - 1e-3 for c, d in zip(client, due)), (client, due)
        assert all(c < w for c, w in zip(client, written[1:])), (client, written)


# ------------------------------------------------------------------ the records and the console count them


def test_report_counts_resends_and_retries_and_reads_old_records(tmp_path, capsys):
    from benchmark.records import new_record
    from benchmark.run import report

    def rec(i, **kw):
        ok = kw.pop("ok", True)
        return new_record(id=i, t_send=100.0 + i, success=ok, error="" if ok else "connection error: x",
                          events=[[0.1, "content", 3], [0.2, "content", 3]] if ok else [],
                          input_tokens=5, output_tokens=2, finish_reason="stop", **kw)
    old = {k: v for k, v in rec(0, attempts=1).items() if k not in ("resends", "retries", "t_first_send")}
    recs = [old, rec(1, attempts=2, resends=1, retries=0, t_first_send=100.9),
            rec(2, attempts=3, resends=0, retries=2, t_first_send=101.5),
            rec(3, ok=False, attempts=2, resends=0, retries=1, t_first_send=102.5), rec(4, attempts=1)]
    with open(tmp_path / "records.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    report(str(tmp_path), html=False)
    out = capsys.readouterr().out
    assert ("Resends and retries: 1 request(s) resent at once (1 resend(s)): the first send on a kept-alive "
            "connection the server had already closed never left; 2 request(s) retried under --retry (3 retries): "
            "1 then succeeded, 1 failed every attempt") in out
    from benchmark.records import read_records
    records, skipped = read_records(str(tmp_path / "records.jsonl"))
    assert skipped == 0 and records[0]["resends"] is None and records[0]["t_first_send"] is None
