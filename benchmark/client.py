"""One request to an OpenAI-compatible endpoint, timed per SSE event -> record fields.

The receive loop does the least possible work per read: one `recv`, one `perf_counter()`, the HTTP
framing decoded by geventhttpclient's parser, and the body bytes kept with their time. Lines,
events, JSON and classification come after the stream (`finish_stream`), so a read costs the same
however many lines it carries. The loop only looks, with a substring test, whether the answer may
have ended (`data: [DONE]`, or the chunk with the usage), so that nobody waits for a body that a
server or a proxy keeps open.

The standards, each applied where its clause is named:
- WHATWG HTML, Server-sent events, 9.2.6 "Interpreting an event stream": `sse_events`.
- RFC 9110 15.2 (interim 1xx responses), 9.2.2 (idempotent methods: when a request may be sent
  again), 8.4 and 12.5.3 (Content-Encoding, Accept-Encoding); RFC 9112 9.3 (persistent connections),
  6.3 and 7.1 (where a body ends): `ChatClient`.
"""
from __future__ import annotations

import email.utils
import ipaddress
import json
import math
import re
import select
import socket
import time
import uuid
from itertools import chain
from time import perf_counter
from urllib.parse import urlsplit

import gevent
import gevent.select
import orjson
from gevent import monkey
from geventhttpclient import HTTPClient
from geventhttpclient.response import HTTPConnectionClosed, HTTPParseError, HTTPResponse, HTTPSocketPoolResponse

from . import backends
from .backends import openai_chat
from .records import CONTENT, OTHER

# Epoch time of perf_counter()'s zero, so t_send is comparable across processes and machines while
# offsets within the run keep perf_counter's resolution and monotonicity.
_EPOCH_AT_ZERO = time.time() - perf_counter()


def epoch(perf: float) -> float:
    return _EPOCH_AT_ZERO + perf


class ClientError(Exception):
    """A target that can't be used at all (bad URL, unreachable): a one-line message."""


def split_base_url(url: str) -> tuple[str, str]:
    """("http://host:port", "/prefix") from a --host value; a trailing /v1 is accepted and dropped."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"--host {url!r} is not an http(s) URL like http://127.0.0.1:8000")
    prefix = parts.path.rstrip("/")
    if prefix.endswith("/v1"):
        prefix = prefix[:-3]
    return f"{parts.scheme}://{parts.netloc}", prefix


# Connection-level errors before any response byte: --retry may try again (the server may have seen
# the request, so never without --retry; see ChatClient).
RETRYABLE = (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
             HTTPConnectionClosed)
BACKOFF_S = 0.25  # first wait before retrying a connection error (doubles per attempt, capped)
RESEND = -1.0  # _attempt's "send it again now, on a fresh connection: it never left" (not a retry)
# A server that closed a connection this soon after a response ended closes every one (llama.cpp's
# does, despite its Keep-Alive header); an idle-timeout close comes seconds later (uvicorn 5 s). Its
# close follows the end of the body at once, but a request sent in between could not be resent: so
# before a connection to a server is first reused, the client waits up to FIRST_REUSE_WAIT_S (before
# t_send) for such a close. Servers seen closing get a new connection per request; servers seen
# answering on a reused connection are not waited for again. Both sets are shared by all users.
CLOSE_AFTER_RESPONSE_S = 1.0
FIRST_REUSE_WAIT_S = 0.02
# How long the user waits, before its next request's t_send, for the end of a body that went on after
# the answer ended. uvicorn and aiohttp end it in a separate write once the handler returns: behind
# 128 streams on one core the simulator took 1 ms (median), 25 ms (p90), 38 ms (p99, max 43). A
# request on a new connection instead waited 65 ms (mean) between its send and the simulator's handler,
# against 13 ms on a kept one (perf/client_capacity.py --users 128): a connection is worth a wait.
BODY_END_WAIT_S = 0.05
_closes_connections: set[tuple] = set()  # (host, port)
_keeps_connections: set[tuple] = set()


class _NotSent(Exception):
    """The first send() of a request accepted no byte: the request never left this machine."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


class ChatClient:
    """One connection to one server, used by one Locust user (one request at a time).

    Timeouts: `timeout` bounds connecting, sending and waiting for the response headers (a timer around
    them); `read_timeout` bounds every gap between two bytes of the body (the socket timeout while the
    body is read). `retry` is the total number of attempts allowed by --retry: only connection-level
    errors before any response byte are retried, and 429/503 answers when `retry_on_overload` (waiting
    Retry-After, at most `retry_max_wait` s). While a request is in flight `t_send` holds its
    perf_counter send time, so a caller whose greenlet is killed can still record it (see `cancelled`).

    The connection (RFC 9112 9.3, persistence): it carries the next request only when the previous
    response was read to its end and the idle socket shows nothing to read just before the send; any
    other state (an error or a timeout mid-response, bytes after the response, a body the answer ended
    before) closes it and the next request opens a fresh one. Interim 1xx responses are read and
    skipped (RFC 9110 15.2). A request is sent again without --retry only when it provably never
    reached the server: its first send() on a kept-alive connection accepted no byte. A server that
    closes the connection after reading the request may have acted on it; POST is not idempotent
    (RFC 9110 9.2.2), so that is a failure, or an attempt --retry allows.

    This object is also the "pool" geventhttpclient's response hands its socket back to
    (`return_socket` when the response was read to its end, `release_socket` otherwise)."""

    def __init__(self, host: str, api_key: str | None = None, timeout: float = 60.0,
                 read_timeout: float = 300.0, chat: bool = True, retry: int = 1,
                 retry_on_overload: bool = False, retry_max_wait: float = 30.0, backend: str | None = None,
                 model: str = ""):
        origin, prefix = split_base_url(host)
        self._origin = urlsplit(origin)
        self._server = (self._origin.hostname, self._origin.port)
        self.timeout = float(timeout)
        self.read_timeout = float(read_timeout)
        # the socket timeout while waiting for headers: never shorter than the header timer
        self._header_sock_timeout = max(self.timeout, self.read_timeout)
        self.retry = max(1, int(retry))
        self.retry_on_overload = retry_on_overload
        self.retry_max_wait = float(retry_max_wait)
        self.http = self._connect()  # builds requests, opens sockets (DNS, TLS); GET requests
        self._idle = None  # the kept-alive socket, its last response read to the end
        self._t_idle = 0.0  # when it became idle
        self._parked = None  # a response whose answer ended before its body did (see _settle)
        self._lingers = False  # its last such body outlasted BODY_END_WAIT_S
        self._out = None  # the current attempt's record fields (see cancelled)
        self.prefix = prefix
        # the API dialect (--backend): its path, and how its events are read (benchmark/backends)
        self.backend = backends.get(backend or (backends.DEFAULT if chat else "openai"))
        self.path = prefix + self.backend.path(model)
        # identity: a compressed stream can't be timed per event (RFC 9110 12.5.3)
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
                        "Accept-Encoding": "identity"}
        self._secret = api_key or None
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.t_send: float | None = None  # perf_counter of the current attempt's send
        self._t_first: float | None = None  # perf_counter of the current request's first attempt
        self.attempts = 0  # attempts of the current request so far: 1 + resends + retries
        self.resends = 0  # sent again at once because the first send never left (see above)
        self.retries = 0  # attempts --retry allowed after a failed one
        # X-Request-Id of every request (vLLM, SGLang and TGI log it): a record can be found in the
        # server's logs. A random prefix per client keeps ids unique across users, processes and runs.
        self._id_prefix = uuid.uuid4().hex[:12]
        self._sent = 0
        self.request_id: str | None = None  # of the request in flight (or the last one)

    def _connect(self) -> HTTPClient:
        o = self._origin
        http = HTTPClient(o.hostname, o.port, ssl=o.scheme == "https", connection_timeout=self.timeout,
                          network_timeout=self._header_sock_timeout, concurrency=1, insecure=True)
        pool = http._connection_pool
        pool._is_socket_alive = _idle_socket_alive  # see there (GET requests use the pool)
        pool._resolve = _cached_resolve(pool._resolve, o.hostname, o.port)
        return http

    def close(self) -> None:
        if self._parked is not None:
            _discard(self._parked)
            self._parked = None
        if self._idle is not None:
            _close(self._idle)
            self._idle = None
        self.http.close()

    # geventhttpclient's response gives its socket back through these two
    def return_socket(self, sock) -> None:
        if self._server in _closes_connections:
            _close(sock)  # it would close it anyway, maybe just as the next request goes in
        else:
            self._idle, self._t_idle = sock, perf_counter()

    def release_socket(self, sock) -> None:
        _close(sock)

    def _mask(self, text: str) -> str:
        """Never let the API key into a record, even when a server echoes it back."""
        return text.replace(self._secret, "***") if self._secret and self._secret in text else text

    def get_json(self, path: str):
        """GET prefix+path -> parsed JSON; raises ClientError with a one-line reason."""
        try:
            resp = self.http.get(self.prefix + path, headers=self.headers)
            body = resp.read()
            resp.release()
        except Exception as e:  # noqa: BLE001 - any transport error is one line for the user
            raise ClientError(self._mask(_describe(e))) from None
        if resp.status_code != 200:
            raise ClientError(self._mask(f"HTTP {resp.status_code}: {_error_text(body)}"))
        try:
            return json.loads(body)
        except ValueError:
            raise ClientError(self._mask(f"not JSON: {_snippet(body)}")) from None

    def cancelled(self, why: str = "the test stopped") -> dict:
        """Record fields for the request in flight when the caller was stopped (not a server failure)."""
        t, first = self.t_send, self._t_first
        events, status = [], None
        if t is not None and self._out is not None:
            partial = dict(self._out)
            if "_pieces" in partial:  # cut mid-stream: the events it had, parsed now (the test is over)
                partial["_pieces"] = list(partial["_pieces"])
                finish_stream(partial, self.backend)
            events, status = partial["events"], partial.get("http_status")
        return {"t_send": epoch(t) if t is not None else time.time(), "events": events, "http_status": status,
                "success": False, "error": f"cancelled: {why} while the request was in flight",
                "attempts": max(self.attempts, 1), "resends": self.resends, "retries": self.retries,
                "t_first_send": epoch(first) if t is not None and first is not None else None,
                "request_id": self.request_id if t is not None else None}

    def send(self, body: bytes, stream: bool = True, defer: bool = False) -> dict:
        """POST a pre-built body; returns record fields (t_send, events, success, error, attempts, ...).

        t_send and the event offsets are those of the last attempt (the one whose answer is recorded);
        t_first_send is the first attempt's send time, resends and retries count the others. With
        `defer`, a stream's raw body comes back unparsed: pass the result to `complete()` later, when
        the event loop has time, so parsing never delays the timestamps of other streams."""
        self._settle()  # the previous answer's connection: reusable or closed, before this t_send
        if self._idle is not None and self._server not in _keeps_connections:
            gevent.select.select([self._idle], [], [], FIRST_REUSE_WAIT_S)  # a close on its way? (see above)
        self.attempts = self.resends = self.retries = 0
        self._t_first = None
        self._sent += 1
        self.request_id = f"{self._id_prefix}-{self._sent}"  # the same on every attempt of this request
        headers = {**self.headers, "X-Request-Id": self.request_id}
        request = self.http._build_request("POST", self.path, body=body, headers=headers).encode("latin-1") + body
        while True:  # a GreenletExit anywhere in here leaves t_send/attempts set for `cancelled`
            self.attempts += 1
            out, wait = self._attempt(request, body, stream)
            if wait == RESEND:
                self.resends += 1
                continue
            if wait is None or 1 + self.retries >= self.retry:
                break
            self.retries += 1
            gevent.sleep(wait)
        self.t_send = None
        out.update(attempts=self.attempts, resends=self.resends, retries=self.retries,
                   t_first_send=epoch(self._t_first), request_id=self.request_id)
        return out if defer else self.complete(out)

    def complete(self, out: dict) -> dict:
        """Parse what `send(defer=True)` read and finish the verdict (idempotent)."""
        if "_pieces" in out:
            finish_stream(out, self.backend)
        if out["attempts"] > 1 and not out["success"]:
            out["error"] += f" (after {out['attempts']} attempts)"
        if out["error"]:
            out["error"] = self._mask(out["error"])
        return out

    def _backoff(self) -> float:
        return min(self.retry_max_wait, BACKOFF_S * 2 ** self.retries)

    def _socket(self):
        """(socket, reused): the kept-alive one if the server has not closed it, else a new one."""
        sock, self._idle = self._idle, None
        if sock is not None:
            if _idle_socket_alive(sock):
                sock.settimeout(self._header_sock_timeout)
                return sock, True
            # closed by the server while idle (or it holds stray bytes): never written to
            if perf_counter() - self._t_idle < CLOSE_AFTER_RESPONSE_S and _at_eof(sock):
                _closes_connections.add(self._server)  # it closed right after the response
            _close(sock)
        return self.http._connection_pool._create_socket(), False

    def _settle(self) -> None:
        """The connection of an answer that ended before its body (send() returned at `data: [DONE]`,
        not waiting for the server to end the body): it carries the next request only once the body
        has been read to its end (RFC 9112 9.3), else its state is unknown and it is closed.

        Called before the next request's t_send, so waiting here measures nothing: up to
        BODY_END_WAIT_S for the end of the body, then the connection is closed. A server whose body
        outlasted that wait is not waited for again (only what has arrived is read) until one of its
        bodies is found ended."""
        resp, self._parked = self._parked, None
        if resp is None:
            return
        sock = resp._sock
        deadline = perf_counter() + (0.0 if self._lingers else BODY_END_WAIT_S)
        try:
            while not resp.message_complete:
                left = deadline - perf_counter()
                if left <= 0 and _idle_socket_alive(sock):
                    break  # nothing more has arrived
                sock.settimeout(max(left, 0.0))
                resp.feed(sock.recv(65536))  # b"": EOF ends a close-delimited body, else raises
        except (OSError, HTTPParseError):
            pass
        except BaseException:
            _discard(resp)
            raise
        self._lingers = not resp.message_complete
        if resp.message_complete:
            resp.release()
        else:
            _discard(resp)

    def _attempt(self, request: bytes, body: bytes, stream: bool) -> tuple[dict, float | None]:
        """One try -> (record fields, seconds to wait before retrying, RESEND, or None when it must not be)."""
        t0 = perf_counter()
        self.t_send = t0
        if self._t_first is None:
            self._t_first = t0
        out = {"t_send": epoch(t0), "events": [], "http_status": None, "success": False, "error": ""}
        self._out = out  # what this attempt has read so far, should it be cancelled
        timer = gevent.Timeout(self.timeout)  # connect + send + response headers
        timer.start()
        reused = False
        try:
            sock, reused = self._socket()
            try:
                _send(sock, request)
            except BaseException:
                _close(sock)
                raise
            # reads the headers, skipping interim 1xx responses (RFC 9110 15.2)
            resp = _Response(sock, self, block_size=self.http.block_size, method="POST")
        except gevent.Timeout as e:
            if e is not timer:
                raise
            out["error"] = f"timeout: no response headers within {self.timeout:g} s (--timeout)"
            return out, None
        except TimeoutError:  # the socket's own timeout (equal to the timer's): the same thing
            out["error"] = f"timeout: no response headers within {self.timeout:g} s (--timeout)"
            return out, None
        except _NotSent as e:
            if reused:  # the kept-alive connection was dead and nothing left: send it again, now
                return out, RESEND
            out["error"] = f"connection error: {_describe(e.error)}"
            return out, self._backoff()
        except HTTPConnectionClosed:
            out["error"] = ("connection error: the server closed the kept-alive connection before answering "
                            "(it may have read the request: not resent; --retry can retry it)" if reused
                            else "connection error: the server closed the connection before answering")
            return out, self._backoff()
        except HTTPParseError as e:  # e.g. 101 Switching Protocols although no upgrade was asked for
            out["error"] = f"bad HTTP response: {_describe(e)}"
            return out, None
        except Exception as e:  # noqa: BLE001
            out["error"] = f"connection error: {_describe(e)}"
            return out, self._backoff() if isinstance(e, RETRYABLE) else None
        finally:
            timer.close()
        status = out["http_status"] = resp.status_code
        if reused:
            _keeps_connections.add(self._server)
        coding = _content_coding(resp)
        if status != 200:
            try:
                text = resp.read()
                resp.release()  # read to its end: the connection may carry the next request
            except Exception:  # noqa: BLE001 - the status is the reason; the body is a bonus
                text = b""
                _discard(resp)
            retry_after = resp.get("Retry-After")
            if coding:
                text = f"(a body in Content-Encoding {coding}, not shown)".encode()
            out["error"] = _http_error(status, text, retry_after, sent=body)
            if status in (429, 503) and self.retry_on_overload:
                wait = _retry_after_s(retry_after)
                return out, self._backoff() if wait is None else min(wait, self.retry_max_wait)
            return out, None
        if coding:  # RFC 9110 8.4: the body is in that coding, although we asked for identity only
            _discard(resp)
            out["error"] = (f"HTTP 200 with Content-Encoding: {coding} although the request sent "
                            "Accept-Encoding: identity (a compressing proxy?): the body can't be read as it streams")
            return out, None
        if resp._sock is not None:
            resp._sock.settimeout(self.read_timeout)  # from now on: the gap allowed between two bytes
        if not stream:
            return _parse_whole(resp, t0, out, self.read_timeout), None
        read_stream(resp, t0, out, self.read_timeout, self.backend)
        out["_ctype"] = resp.get("Content-Type") or ""
        if resp._sock is not None:  # the answer ended, the body did not (yet): see _settle
            self._parked = resp
        return out, None


class _Response(HTTPSocketPoolResponse):
    """geventhttpclient's response, with the connection released only by the client.

    Its own gives the socket back to the pool as soon as any message ends, an interim 1xx included,
    while the final response is still to be read from that socket: the next request then went into
    a connection in use. Bytes after the final response (RFC 9112 6.3: the recipient discards them
    and closes) stop the parser and mark the connection for closing."""

    def _on_message_complete(self) -> None:
        HTTPResponse._on_message_complete(self)

    def _on_message_begin(self) -> None:
        if self.message_complete and self.get_code() >= 200:
            raise _Trailing
        super()._on_message_begin()

    def feed(self, data) -> None:
        try:
            super().feed(data)
        except _Trailing:  # the parser stops in error: should_close() is true from now on
            pass


class _Trailing(Exception):
    """Bytes after a complete final response."""


def _send(sock, data: bytes) -> None:
    """Send the whole request; _NotSent when the first send() accepted no byte (the connection was
    already reset: the request never left, so it may be sent again on a fresh one)."""
    try:
        n = sock.send(data)
    except ConnectionError as e:
        raise _NotSent(e) from None
    if n < len(data):
        sock.sendall(memoryview(data)[n:])


def _at_eof(sock) -> bool:
    """Has the peer closed this (readable) socket? EOF or a reset, rather than stray bytes."""
    try:
        return not sock.recv(1, socket.MSG_PEEK)
    except OSError:
        return True


def _close(sock) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _content_coding(resp) -> str:
    """The response's Content-Encoding when it is not identity (RFC 9110 8.4), else ""."""
    coding = resp.get("Content-Encoding")
    if isinstance(coding, list):
        coding = ", ".join(coding)
    coding = (coding or "").strip()
    return "" if coding.lower() in ("", "identity") else coding


_poll = monkey.get_original("select", "poll")
DNS_TTL_S = 10.0  # as aiohttp's DNS cache
_resolved: dict[tuple, tuple[float, list]] = {}  # (host, port) -> (expires, getaddrinfo answer)


def _cached_resolve(resolve, host: str, port: int | None):
    """geventhttpclient resolves the host for every new connection, in gevent's thread pool: the
    answer comes back only when the event loop next comes round (21 ms with 50 busy greenlets, measured)
    and it is after t_send, so it was in the TTFT of every request to a server that closes each
    connection (llama.cpp's does). Answers are shared by all users and kept DNS_TTL_S seconds (an IP
    address for good)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        ttl = math.inf
    except ValueError:
        ttl = DNS_TTL_S

    def cached():
        key = (host, port)
        hit = _resolved.get(key)
        now = time.monotonic()
        if hit is None or hit[0] < now:
            hit = _resolved[key] = (now + ttl, resolve())
        return hit[1]
    return cached


def _idle_socket_alive(sock) -> bool:
    """geventhttpclient's check of a kept-alive connection before reusing it, without its yield.

    Its own check calls gevent's select(), which switches to the hub even with timeout 0: every request
    then waited, between its t_send and its actual send, behind all other ready work, and that wait was
    in the measured TTFT (at 128 streams the send leg's p99 fell from 19.4 to 14.9 ms without it,
    perf/client_capacity.py). This asks the kernel directly (poll, so
    descriptors past 1024 work): an idle connection must have nothing to read; EOF or stray bytes mean
    the server closed it or it is dirty."""
    try:
        fd = sock.fileno()
        if fd < 0:
            return False
        p = _poll()
        p.register(fd, select.POLLIN)
        return not p.poll(0)
    except (OSError, ValueError, AttributeError):
        return False


def read_stream(resp, t0: float, out: dict, read_timeout: float, backend=openai_chat) -> dict:
    """Read an SSE body as bytes arrive: each read's body bytes are kept with the perf_counter() of
    their arrival, in `out` for `finish_stream` (parsing happens after the stream, see ChatClient.send).

    Reading stops at the end of the body or of the answer (`data: [DONE]`, or the event the dialect
    says ends it, `backend.ends`: see `_answer_over`), whichever comes first; then `resp` still holds its socket when the
    body went on. `resp` is a geventhttpclient response whose headers have been read; a gap longer
    than the socket's timeout (`read_timeout`) ends the stream as stalled; a broken connection keeps
    the events so far."""
    pieces = []
    append = pieces.append
    # kept in `out` from the start: a request cancelled mid-stream keeps the events it had (the server
    # timed its first token too, so the reconciliation can pair it)
    out["_pieces"], out["_t0"], out["_broken"], out["_ended"] = pieces, t0, "", False
    buf = resp._body_buffer  # where geventhttpclient's parser puts the body (private, but the only way)
    sock, feed, block = resp._sock, resp.feed, resp.block_size
    # the dialect's three substrings a read must hold to maybe end the answer: three `in` tests, as
    # the chat dialect's three constants always were (openai-chat: [DONE], "usage":{, "usage": {)
    m1, m2, m3 = backend.MARKERS
    ends = backend.ends
    t = perf_counter()
    ended = check = False
    broken = ""
    try:
        while True:
            if buf:
                body = bytes(buf)
                del buf[:]
                append((t, body))
                if check or m1 in body or m2 in body or m3 in body:
                    over = _answer_over(pieces, ends)
                    if over:
                        break
                    check = over is None  # that event is not complete yet: look again at the next read
            if resp.message_complete:
                break
            data = sock.recv(block)
            t = perf_counter()
            feed(data)  # b"" at EOF: ends a body that ends with the connection, else raises
        if resp.message_complete:
            ended = True
            append((t, b""))  # when the body ended: the time of a last line without its line end
            resp.release()
    except BaseException as e:
        _discard(resp)
        if not isinstance(e, Exception):  # GreenletExit / KeyboardInterrupt: let it through
            raise
        if isinstance(e, TimeoutError):
            broken = f"stalled: no byte for {read_timeout:g} s (--read-timeout)"
        elif isinstance(e, HTTPParseError) and "Incomplete" in str(e):
            broken = "the server closed the connection before the end of the body"
        else:
            broken = _describe(e)
    out["_pieces"], out["_t0"], out["_broken"], out["_ended"] = pieces, t0, broken, ended
    return out


def _answer_over(pieces: list, ends=openai_chat.ends) -> bool | None:
    """Did the answer end with the last piece? True, False, or None when the event that may end it
    is not complete yet (ask again with the next piece).

    Only the last pieces are parsed: back to the last one that ends with a blank line (an event
    boundary), at most 64 back (beyond that: False, and the body is read to its end)."""
    i = len(pieces) - 1
    while i and not _ends_event(pieces[i - 1][1]):
        i -= 1
        if len(pieces) - i > 64:
            return False
    events, open_ = sse_events(pieces[i:], at_start=not i)
    if open_:
        return None
    if not events:
        return False
    _, kind, data = events[-1]
    if kind and kind != b"message":
        return False
    if len(data) < 16 and data.strip() == b"[DONE]":
        return True
    try:
        return ends(orjson.loads(data))
    except (orjson.JSONDecodeError, RecursionError):
        return False


def _ends_event(piece: bytes) -> bool:
    """Does `piece` end with a blank line (a line end right after a line end)?"""
    if piece.endswith(b"\r\n"):
        piece = piece[:-2]
    elif piece.endswith((b"\n", b"\r")):
        piece = piece[:-1]
    else:
        return False
    return piece.endswith((b"\n", b"\r"))


_final_chunk = openai_chat.ends  # the chat dialect's end of an answer (kept under its old name)


BOM = b"\xef\xbb\xbf"  # U+FEFF in UTF-8
_COLON = 58


def sse_events(pieces, at_start: bool = True) -> tuple[list, bool]:
    """WHATWG HTML 9.2.6 "Interpreting an event stream", over timestamped pieces of a body.

    -> ([(t, type, data), ...], open). `t` of an event: when its first line was complete (the
    arrival of that line's end). `type`: b"" when no `event` field named one (the spec's "message").
    `open`: the pieces end inside a line or an event (the spec discards those at the end of the
    stream; `parse_stream` says when the HTTP body ended, which completes them).

    - one leading U+FEFF BYTE ORDER MARK is ignored (the UTF-8 decode step);
    - lines end in CRLF, a lone LF or a lone CR (bytes.splitlines splits at exactly these); a CR
      that ends one piece and an LF that opens the next are one line end;
    - a blank line dispatches the event: its data buffer (the `data` lines joined with LF; nothing
      is dispatched when there were none) and its type (the last `event` line), then both reset;
    - a line starting with ":" is a comment; otherwise the field name is up to the first colon and
      the value after it, one leading space removed (no colon: the whole line names the field, the
      value is empty);
    - `id` and `retry` (last event ID, reconnection time) only serve an EventSource that reconnects,
      and the answer to a POST is not resumed: read and ignored, as the spec ignores unknown fields.
    The bytes stay bytes: JSON decodes them later, strictly (the spec's decoder would turn invalid
    UTF-8 into U+FFFD silently; here it fails the event, showing the bytes)."""
    events = []
    data, kind, t_first = [], b"", None
    carry, cr = b"", False  # a line not ended yet; the last piece ended in CR
    for t, piece in pieces:
        if cr and piece[:1] == b"\n":
            piece = piece[1:]  # the LF of a CRLF split between two pieces
        text = carry + piece if carry else piece
        if at_start:
            if len(text) < 3 and BOM.startswith(text):
                carry, cr = text, False  # maybe a BOM still arriving
                continue
            at_start = False
            if text[:3] == BOM:
                text = text[3:]
        if not text:
            carry, cr = b"", False
            continue
        last = text[-1]
        cr = last == 13
        lines = text.splitlines()
        carry = b"" if cr or last == 10 else lines.pop()
        for line in lines:
            if not line:  # dispatch
                if data:
                    events.append((t_first, kind, data[0] if len(data) == 1 else b"\n".join(data)))
                    data = []
                kind, t_first = b"", None
            elif line.startswith(b"data:"):  # the common line first
                if t_first is None:
                    t_first = t
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line[0] != _COLON:
                if t_first is None:
                    t_first = t
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"event":
                    kind = value
                elif name == b"data":  # "data" alone
                    data.append(value)
    return events, bool(carry) or t_first is not None


def finish_stream(out: dict, backend=openai_chat) -> dict:
    """Parse the body `read_stream` kept and give the stream its verdict (events read as `backend`'s)."""
    pieces, t0, broken, ended = out.pop("_pieces"), out.pop("_t0"), out.pop("_broken"), out.pop("_ended")
    ctype = out.pop("_ctype", "text/event-stream")
    parse_stream(pieces, t0, out, ended=ended, backend=backend)
    if broken:
        out["success"] = False
        n = len(out["events"])
        out["error"] = (f"{broken} after {n} events" if broken.startswith("stalled")
                        else f"stream broken after {n} events: {broken}")
    elif not out["success"] and not out["events"]:
        if "text/event-stream" not in ctype and out["error"].startswith("no SSE data"):
            out["error"] = (f"not an SSE stream: HTTP 200 with Content-Type {ctype or '(none)'}: "
                            f"{out['error'].partition(': ')[2][:120]}")
    return out


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _retry_after_s(value) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value or not isinstance(value, str):
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _error_text(body: bytes) -> str:
    """The human part of an error body, quoted: OpenAI's error.message, FastAPI's detail, or the raw text."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return _snippet(body)
    msg = None
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
        elif isinstance(err, str):
            msg = err
        msg = msg or obj.get("message") or obj.get("detail")
    if msg is None or msg == "":
        return _snippet(body)
    if not isinstance(msg, str):
        msg = json.dumps(msg, ensure_ascii=False)
    return _snippet(_clean(msg).encode())


# How servers name a request field they reject, in text (vLLM's stringified pydantic errors, OpenAI,
# serde-based servers); group 1: pydantic's error type when it comes first, group 2: the field.
_Q = r"""['"]"""
_REJECTED = [re.compile(p) for p in (
    rf"""(?:{_Q}type{_Q}\s*:\s*{_Q}(\w+){_Q}\s*,\s*)?{_Q}loc{_Q}\s*:\s*[\[(]\s*{_Q}body{_Q}\s*,\s*{_Q}([A-Za-z_][\w.]*){_Q}""",
    r"()extra fields not permitted:?\s*['\"`]?([A-Za-z_]\w*)",
    r"()[Uu]nrecognized request argument supplied:?\s*['\"`]?([A-Za-z_]\w*)",
    r"()[Uu]nknown (?:field|parameter|argument)[:\s]*['\"`]([A-Za-z_]\w*)",
)]
# which of our options puts a field in the body (run.build_body); --extra-body can add any other
FIELD_OPTIONS = {"model": "--model", "messages": "(the prompt)", "prompt": "(the prompt)",
                 "inputs": "(the prompt)", "text_input": "(the prompt)", "max_new_tokens": "--max-out-len",
                 "min_tokens": "--ignore-eos", "details": "(always sent: --backend tgi/mindie)",
                 "max_tokens": "--max-out-len", "stream": "(always sent; --no-stream sets it false)",
                 "ignore_eos": "--ignore-eos", "temperature": "--temperature", "top_p": "--top-p",
                 "top_k": "--top-k", "stream_options": "(always sent when streaming; try --no-stream)"}
_NOT_FIELDS = {"body"}


def rejected_field(text: str) -> str | None:
    """The request field a 400/422 error body says the server rejected, if it names one."""
    found = _field_error(text)
    return found[1] if found else None


def _field_error(text: str) -> tuple[str, str] | None:
    """(pydantic error type or "", field) of the first request field a 400/422 body names."""
    for pattern in _REJECTED:
        for m in pattern.finditer(text):
            if m.group(2) not in _NOT_FIELDS:
                return m.group(1) or "", m.group(2)
    return None


def _detail_error(body: bytes) -> tuple[str, str] | None:
    """(type, field path) of FastAPI's own 422 body: {"detail": [{"type": "missing", "loc": ["body",
    "messages"], "msg": "Field required"}]}; None for any other body."""
    try:
        detail = json.loads(body).get("detail")
        first = detail[0]
        loc = [str(part) for part in first["loc"]]
    except (ValueError, RecursionError, AttributeError, TypeError, KeyError, IndexError):
        return None
    if loc[:1] == ["body"]:
        loc = loc[1:]
    return (str(first.get("type") or ""), ".".join(loc)) if loc else None


def _sent_by(field: str, sent: bytes) -> str:
    """Which option put `field` in the body we sent: one of ours, else --extra-body (the only other
    source of fields); "" when the body did not have it (the server names a field we never sent)."""
    try:
        fields = json.loads(sent) if sent else {}
    except (ValueError, RecursionError):
        fields = {}
    if not isinstance(fields, dict) or field.split(".")[0] not in fields:
        return ""
    via = FIELD_OPTIONS.get(field.split(".")[0], "--extra-body")
    return via if via.startswith("(") else f"(sent by {via})"


def _http_error(status: int, body: bytes, retry_after=None, sent: bytes = b"") -> str:
    """One line: HTTP status, the request field the server objects to and which option sent it (if it
    says), Retry-After, and the server's message. `sent`: the request body."""
    text = _error_text(body)
    head = f"HTTP {status}"
    if status in (400, 422):
        found = _detail_error(body) or _field_error(body[:4000].decode("utf-8", "replace"))
        if found:
            kind, field = found
            if kind == "missing":  # pydantic: a required field is not in the body
                head += f": server says request field '{field}' is missing"
            else:
                via = _sent_by(field, sent)
                head += f": server rejected request field '{field}'" + (f" {via}" if via else "")
    if status in (429, 503):
        head += f" (Retry-After: {retry_after})" if retry_after else " (no Retry-After)"
    return f"{head}: {text}" if text else head


def _discard(resp) -> None:
    """Close the socket instead of returning it to the pool: the response may be unread."""
    if resp._sock is not None and resp._pool is not None:
        resp._pool.release_socket(resp._sock)
    resp._sock = resp._pool = None


def _snippet(body: bytes, n: int = 200) -> str:
    return " ".join(body[:n].decode("utf-8", "replace").split())


def _clean(text: str) -> str:
    """Text that can be written as UTF-8: JSON may decode to lone surrogates ("\\ud800")."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode()


def _text(value) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise TypeError("text field is not a string")
    return value


def _classify(obj: dict) -> tuple[str, str, str, str | None]:
    """(kind, content, reasoning, finish_reason) of one chat chunk (the openai-chat dialect's classify)."""
    return openai_chat.classify(obj)[:4]


class _BadJSON(ValueError):
    """A payload that is not JSON; str(): what is wrong, where, and the bytes around that place."""

    def __init__(self, what: str, payload: bytes, at: int):
        a, b = max(0, at - 24), min(len(payload), at + 24)
        near = ("..." if a else "") + repr(payload[a:b]) + ("..." if b < len(payload) else " (the end)")
        super().__init__(f"{what} at byte {at} of {len(payload)}: {near}")


def _decode_all(payloads: list[bytes]) -> list:
    """Every payload parsed; a broken one becomes its _BadJSON. One orjson.loads over a joined
    array is ~6x faster than one json.loads per line, which matters when many streams end together;
    anything it refuses (NaN, a broken line, a huge integer) is parsed line by line with json, as
    UTF-8 strictly (invalid bytes are an error to show, not a character to replace)."""
    try:
        objs = orjson.loads(b"[" + b",".join(payloads) + b"]")
        if len(objs) == len(payloads):
            return objs
    except (ValueError, RecursionError):
        pass
    out = []
    for p in payloads:
        try:
            text = p.decode()
            out.append(json.loads(text))
        except UnicodeDecodeError as e:
            out.append(_BadJSON(f"invalid UTF-8 ({e.reason})", p, e.start))
        except json.JSONDecodeError as e:
            out.append(_BadJSON(e.msg, p, len(text[:e.pos].encode("utf-8", "surrogatepass"))))
        except (ValueError, RecursionError) as e:  # absurdly deep nesting, a huge number
            out.append(_BadJSON(str(e) or "nested too deeply", p, 0))
    return out


def parse_stream(pieces: list[tuple[float, bytes]], t0: float, out: dict, ended: bool = True,
                 backend=openai_chat) -> dict:
    """Turn timestamped pieces of an SSE body into events, text, usage and the success verdict.

    `ended`: the HTTP body ended where the pieces do (its framing said so), which also ends its last
    line and event (the spec drops an event the stream ends inside of; here the body is complete, and
    the last piece's time is that end). The answer ends at `data: [DONE]` or at the event that
    `backend.ends` (the chat dialect: the chunk with the usage): what follows is not read. Each event
    is read by `backend.classify`; a dialect that never names a finish reason (REPORTS_FINISH False)
    succeeds when its body ended cleanly. Events typed by an `event` field
    are not chunks: type `error` fails the request with its data as the reason, others are ignored
    (an EventSource gives only "message" events to onmessage). Never raises on malformed data:
    whatever the server sent becomes a one-line error."""
    body = pieces
    if ended and pieces:
        pieces = chain(pieces, ((pieces[-1][0], b"\n\n"),))
    found, _ = sse_events(pieces)
    times, payloads, error = [], [], ""
    done = False  # the server said the answer is over ([DONE], or the final chunk)
    ignored: dict[bytes, int] = {}
    for t, kind, data in found:
        if kind and kind != b"message":
            if kind == b"error":
                error = error or f"server error in stream (event: error): {_error_text(data)}"
            else:
                ignored[kind] = ignored.get(kind, 0) + 1
            continue
        if not data:
            continue  # an empty data field carries nothing
        if len(data) < 16 and data.strip() == b"[DONE]":
            done = True
            break
        times.append(t - t0)
        payloads.append(data)
    events, content, reasoning, chunk_usage = [], [], [], []
    usage, finish = None, None
    classify, ends = backend.classify, backend.ends
    for offset, payload, obj in zip(times, payloads, _decode_all(payloads)):
        if isinstance(obj, ValueError):
            error = error or f"malformed JSON in stream: {obj}"
            events.append([offset, OTHER, 0])
            continue
        if not isinstance(obj, dict):
            error = error or f"unexpected SSE data: {_snippet(payload, 80)}"
            continue
        if obj.get("error"):
            err = obj["error"]
            msg = err.get("message", err) if isinstance(err, dict) else err
            error = error or f"server error in stream: {_snippet(_clean(str(msg)).encode())}"
            continue
        try:
            kind, c, r, fin, use = classify(obj)
        except (TypeError, AttributeError, KeyError, IndexError):
            error = error or f"unexpected SSE data: {_snippet(payload, 80)}"
            events.append([offset, OTHER, 0])
            continue
        events.append([offset, kind, len(c) + len(r)])
        if c:
            content.append(c)
        if r:
            reasoning.append(r)
        if fin:
            finish = fin
        if use:
            usage = use
            chunk_usage.append((len(events) - 1, use.get("completion_tokens")))  # event_tokens.py
        if (use or fin) and ends(obj):  # only an event with a usage or a finish can end an answer
            done = True
            break
    out["events"] = events
    out["completion"] = _clean("".join(content))
    out["reasoning"] = _clean("".join(reasoning))
    out["finish_reason"] = _clean(finish) if finish is not None else None
    out["usage"] = usage
    out["chunk_usage"] = chunk_usage if len(chunk_usage) > 1 else None  # usage on every chunk
    if not events and not error:
        error = f"no SSE data events in the 200 response: {_snippet(b''.join(piece for _, piece in body))}"
        if ignored:
            named = ", ".join(f"{n} of type {k.decode('utf-8', 'replace')!r}" for k, n in ignored.items())
            error += f" (ignored: {named}; only events without an `event` type, or type 'message', carry chunks)"
    elif not error and not backend.REPORTS_FINISH:
        if not ended:  # its end is the body's end, and the body did not end
            error = "truncated: the body did not end (this dialect has no finish reason)"
    elif not error and finish is None:
        error = "truncated: stream ended without a finish_reason" + (
            "" if done else " or [DONE]" if backend.MARKERS[0] == b"[DONE]" else " or final event")
    out["error"] = error
    out["success"] = not error
    return out


def _parse_whole(resp, t0: float, out: dict, read_timeout: float) -> dict:
    """A non-streaming answer: one event at the time the whole body arrived."""
    try:
        body = resp.read()
        t = perf_counter()
        resp.release()
    except Exception as e:  # noqa: BLE001
        _discard(resp)
        out["error"] = (f"stalled: no byte for {read_timeout:g} s (--read-timeout)" if isinstance(e, TimeoutError)
                        else f"body broken: {_describe(e)}")
        return out
    try:
        obj = json.loads(body)
        choice = obj["choices"][0]
        msg = choice.get("message") or {"content": choice.get("text")}
        completion = _text(msg.get("content"))
        reasoning = _text(msg.get("reasoning_content") or msg.get("reasoning"))
        finish = choice.get("finish_reason")
        usage = obj.get("usage")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
        out["error"] = f"unexpected response body: {_snippet(body)}"
        return out
    out["completion"] = _clean(completion)
    out["reasoning"] = _clean(reasoning)
    out["finish_reason"] = None if finish is None else _clean(str(finish))
    out["usage"] = usage if isinstance(usage, dict) else None
    out["events"] = [[t - t0, CONTENT, len(out["completion"]) + len(out["reasoning"])]]
    out["success"] = True
    return out
