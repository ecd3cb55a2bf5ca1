"""One request to an OpenAI-compatible endpoint, timed per SSE event -> record fields.

The receive loop does the least possible work per line: `readline` on the geventhttpclient response
(which returns as soon as a newline has arrived, unlike Locust's fixed 1 KiB `iter_lines`), one
`perf_counter()` and one list append. Decoding, JSON and classification happen after the stream ends.
"""
from __future__ import annotations

import email.utils
import ipaddress
import json
import math
import re
import select
import time
import uuid
from time import perf_counter
from urllib.parse import urlsplit

import gevent
import orjson
from gevent import monkey
from geventhttpclient import HTTPClient
from geventhttpclient.response import HTTPConnectionClosed

from .records import CONTENT, OTHER, REASONING, ROLE, USAGE

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


# Errors that mean the request never reached a server that could answer it: safe to retry.
STALE = (HTTPConnectionClosed, BrokenPipeError)  # a kept-alive socket the server closed (FIN, not RST)
RETRYABLE = (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
             HTTPConnectionClosed)
BACKOFF_S = 0.25  # first wait before retrying a connection error (doubles per attempt, capped)


class ChatClient:
    """A keep-alive connection to one server, used by one Locust user (one request at a time).

    Timeouts: `timeout` bounds connecting plus waiting for the response headers (a timer around the
    request); `read_timeout` bounds every gap between two bytes of the body (the socket timeout while
    the body is read). `retry` is the total number of attempts: only connection-level errors before any
    response byte are retried, and 429/503 answers when `retry_on_overload` (waiting Retry-After, at most
    `retry_max_wait` s). While a request is in flight `t_send` holds its perf_counter send time, so a
    caller whose greenlet is killed can still record it (see `cancelled`)."""

    def __init__(self, host: str, api_key: str | None = None, timeout: float = 60.0,
                 read_timeout: float = 300.0, chat: bool = True, retry: int = 1,
                 retry_on_overload: bool = False, retry_max_wait: float = 30.0):
        origin, prefix = split_base_url(host)
        self._origin = urlsplit(origin)
        self.timeout = float(timeout)
        self.read_timeout = float(read_timeout)
        # the socket timeout while waiting for headers: never shorter than the header timer
        self._header_sock_timeout = max(self.timeout, self.read_timeout)
        self.retry = max(1, int(retry))
        self.retry_on_overload = retry_on_overload
        self.retry_max_wait = float(retry_max_wait)
        self.http = self._connect()
        self._reused = False  # has the pool's connection carried a request already?
        self.prefix = prefix
        self.path = prefix + ("/v1/chat/completions" if chat else "/v1/completions")
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        self._secret = api_key or None
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.t_send: float | None = None  # perf_counter of the current attempt's send
        self.attempts = 0  # attempts of the current request so far
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
        pool._is_socket_alive = _idle_socket_alive  # see there
        pool._resolve = _cached_resolve(pool._resolve, o.hostname, o.port)
        return http

    def _renew(self) -> None:
        """A fresh connection pool: after an interrupted request the old one may hold a dead socket."""
        self._reused = False
        old, self.http = self.http, self._connect()
        try:
            old.close()
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        self.http.close()

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
        t = self.t_send
        return {"t_send": epoch(t) if t is not None else time.time(), "events": [], "http_status": None,
                "success": False, "error": f"cancelled: {why} while the request was in flight",
                "attempts": max(self.attempts, 1), "request_id": self.request_id if t is not None else None}

    def send(self, body: bytes, stream: bool = True, defer: bool = False) -> dict:
        """POST a pre-built body; returns record fields (t_send, events, success, error, attempts, ...).

        t_send and the event offsets are those of the last attempt. With `defer`, a stream's raw lines
        come back unparsed: pass the result to `complete()` later, when the event loop has time, so
        parsing never delays the timestamps of other streams."""
        self.attempts = 0
        self._sent += 1
        self.request_id = f"{self._id_prefix}-{self._sent}"  # the same on every attempt of this request
        headers = {**self.headers, "X-Request-Id": self.request_id}
        while True:  # a GreenletExit anywhere in here leaves t_send/attempts set for `cancelled`
            self.attempts += 1
            out, wait = self._attempt(body, stream, headers)
            if wait is None or self.attempts >= self.retry:
                break
            gevent.sleep(wait)
        self.t_send = None
        out["attempts"] = self.attempts
        out["request_id"] = self.request_id
        return out if defer else self.complete(out)

    def complete(self, out: dict) -> dict:
        """Parse what `send(defer=True)` read and finish the verdict (idempotent)."""
        if "_lines" in out:
            finish_stream(out)
        if out["attempts"] > 1 and not out["success"]:
            out["error"] += f" (after {out['attempts']} attempts)"
        if out["error"]:
            out["error"] = self._mask(out["error"])
        return out

    def _backoff(self) -> float:
        return min(self.retry_max_wait, BACKOFF_S * 2 ** (self.attempts - 1))

    def _attempt(self, body: bytes, stream: bool, headers: dict) -> tuple[dict, float | None]:
        """One try -> (record fields, seconds to wait before retrying or None when it must not be)."""
        t0 = perf_counter()
        self.t_send = t0
        out = {"t_send": epoch(t0), "events": [], "http_status": None, "success": False, "error": ""}
        timer = gevent.Timeout(self.timeout)  # connect + response headers
        timer.start()
        try:
            resp = self.http.request("POST", self.path, body=body, headers=headers)
        except gevent.Timeout as e:
            if e is not timer:
                raise
            self._renew()
            out["error"] = f"timeout: no response headers within {self.timeout:g} s (--timeout)"
            return out, None
        except TimeoutError:  # the socket's own timeout (equal to the timer's): the same thing
            self._renew()
            out["error"] = f"timeout: no response headers within {self.timeout:g} s (--timeout)"
            return out, None
        except Exception as e:  # noqa: BLE001
            reused = self._reused
            self._renew()
            if reused and isinstance(e, STALE):
                # A kept-alive connection the server had already closed (llama.cpp's server does that
                # after every stream despite `Keep-Alive`): resend at once on a fresh one, as curl and
                # urllib3 do, even without --retry; it counts in `attempts`, so it stays visible.
                timer.close()
                self.attempts += 1
                return self._attempt(body, stream, headers)
            why = ("the server closed the connection before answering" if isinstance(e, HTTPConnectionClosed)
                   else _describe(e))
            out["error"] = f"connection error: {why}"
            return out, self._backoff() if isinstance(e, RETRYABLE) else None
        finally:
            timer.close()
        self._reused = True  # the pool keeps this connection for the next request
        status = out["http_status"] = resp.status_code
        if status != 200:
            try:
                text = resp.read()
            except Exception:  # noqa: BLE001 - the status is the reason; the body is a bonus
                text = b""
            _discard(resp)
            retry_after = resp.get("Retry-After")
            out["error"] = _http_error(status, text, retry_after)
            if status in (429, 503) and self.retry_on_overload:
                wait = _retry_after_s(retry_after)
                return out, self._backoff() if wait is None else min(wait, self.retry_max_wait)
            return out, None

        sock = resp._sock  # None when the whole body came with the headers
        if sock is not None and self.read_timeout != self._header_sock_timeout:
            sock.settimeout(self.read_timeout)  # from now on: the gap allowed between two bytes
        try:
            if not stream:
                return _parse_whole(resp, t0, out, self.read_timeout), None
            read_stream(resp, t0, out, self.read_timeout)
            out["_ctype"] = resp.get("Content-Type") or ""
        finally:
            if sock is not None and self.read_timeout != self._header_sock_timeout:
                try:
                    sock.settimeout(self._header_sock_timeout)  # it may go back to the pool
                except OSError:
                    pass
        return out, None


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


def read_stream(resp, t0: float, out: dict, read_timeout: float) -> dict:
    """Read an SSE body line by line as bytes arrive (one perf_counter() per line); keep the raw
    lines in `out` for `finish_stream` (parsing happens after the stream, see ChatClient.send).

    `resp` is a geventhttpclient response whose headers have been read; a gap longer than the socket's
    timeout (`read_timeout`) ends the stream as stalled; a broken connection keeps the events so far."""
    lines = []
    append = lines.append
    readline = resp.readline
    broken = ""
    try:
        while True:
            line = readline(b"\n")
            if not line:
                break
            append((perf_counter(), line))
        tail = bytes(resp._body_buffer)  # a last line without "\n" (private, but the only way)
        if tail:
            append((perf_counter(), tail))
        resp.release()
    except BaseException as e:
        _discard(resp)
        if not isinstance(e, Exception):  # GreenletExit / KeyboardInterrupt: let it through
            raise
        if isinstance(e, TimeoutError):
            broken = f"stalled: no byte for {read_timeout:g} s (--read-timeout)"
        else:
            broken = _describe(e)
    out["_lines"], out["_t0"], out["_broken"] = lines, t0, broken
    return out


def finish_stream(out: dict) -> dict:
    """Parse the raw lines `read_stream` kept and give the stream its verdict."""
    lines, t0, broken = out.pop("_lines"), out.pop("_t0"), out.pop("_broken")
    ctype = out.pop("_ctype", "text/event-stream")
    parse_stream(lines, t0, out)
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
    """The human part of an error body: OpenAI's error.message, FastAPI's detail, or the raw text."""
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


# How servers name a request field they reject (vLLM/FastAPI, pydantic, OpenAI, serde-based servers).
_REJECTED = [re.compile(p) for p in (
    r"""['"]loc['"]\s*:\s*[\[(]\s*['"]body['"]\s*,\s*['"]([A-Za-z_][\w.]*)['"]""",
    r"extra fields not permitted:?\s*['\"`]?([A-Za-z_]\w*)",
    r"[Uu]nrecognized request argument supplied:?\s*['\"`]?([A-Za-z_]\w*)",
    r"[Uu]nknown (?:field|parameter|argument)[:\s]*['\"`]([A-Za-z_]\w*)",
)]
# which of our options puts a field in the body
FIELD_OPTIONS = {"ignore_eos": "--ignore-eos", "temperature": "--temperature", "top_p": "--top-p",
                 "top_k": "--top-k", "max_tokens": "--max-out-len", "stream_options": "(always sent "
                 "when streaming; try --no-stream)"}
_NOT_FIELDS = {"body"}


def rejected_field(text: str) -> str | None:
    """The request field a 400/422 error body says the server rejected, if it names one."""
    for pattern in _REJECTED:
        for m in pattern.finditer(text):
            name = m.group(1)
            if name not in _NOT_FIELDS:
                return name
    return None


def _http_error(status: int, body: bytes, retry_after=None) -> str:
    """One line: HTTP status, which option the server rejected (if it says), Retry-After, message."""
    text = _error_text(body)
    head = f"HTTP {status}"
    if status in (400, 422):
        field = rejected_field(body[:4000].decode("utf-8", "replace"))
        if field:
            via = FIELD_OPTIONS.get(field, "--extra-body")
            via = via if via.startswith("(") else f"(sent by {via})"
            head += f": server rejected request field '{field}' {via}"
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
    """(kind, content, reasoning, finish_reason) of one parsed chunk; TypeError/... when misshapen."""
    choices = obj.get("choices") or []
    if not choices:
        return (USAGE if obj.get("usage") else OTHER), "", "", None
    choice = choices[0] or {}
    delta = choice.get("delta")
    if delta is None:  # /v1/completions chunks carry `text`
        delta = {"content": choice.get("text")}
    content = _text(delta.get("content"))
    reasoning = _text(delta.get("reasoning_content") or delta.get("reasoning"))
    kind = CONTENT if content else REASONING if reasoning else ROLE if "role" in delta else OTHER
    finish = choice.get("finish_reason")
    return kind, content, reasoning, None if finish is None else str(finish)


def _decode_all(payloads: list[bytes]) -> list:
    """Every payload parsed; a broken one becomes its ValueError. One orjson.loads over a joined
    array is ~6x faster than one json.loads per line, which matters when many streams end together;
    anything it refuses (NaN, a broken line, a huge integer) is parsed line by line with json."""
    try:
        objs = orjson.loads(b"[" + b",".join(payloads) + b"]")
        if len(objs) == len(payloads):
            return objs
    except (ValueError, RecursionError):
        pass
    out = []
    for p in payloads:
        try:
            out.append(json.loads(p))
        except ValueError as e:
            out.append(e)
        except RecursionError:  # absurdly deep nesting
            out.append(ValueError("nested too deeply"))
    return out


def parse_stream(lines: list[tuple[float, bytes]], t0: float, out: dict) -> dict:
    """Turn timestamped raw SSE lines into events, text, usage and the success verdict.

    Never raises on malformed data: whatever the server sent becomes a one-line error."""
    times, payloads, done = [], [], False
    for t, raw in lines:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue  # blank separators, `: comment` keep-alives, `event:`/`id:` fields
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            break
        if not payload:
            continue  # an empty data field carries nothing
        times.append(t - t0)
        payloads.append(payload)
    events, content, reasoning = [], [], []
    usage, finish, error = None, None, ""
    for offset, payload, obj in zip(times, payloads, _decode_all(payloads)):
        if isinstance(obj, ValueError):
            error = error or f"malformed JSON in stream: {_snippet(payload, 80)}"
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
            kind, c, r, fin = _classify(obj)
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
        if obj.get("usage") and isinstance(obj["usage"], dict):
            usage = obj["usage"]
    out["events"] = events
    out["completion"] = _clean("".join(content))
    out["reasoning"] = _clean("".join(reasoning))
    out["finish_reason"] = _clean(finish) if finish is not None else None
    out["usage"] = usage
    if not events and not error:
        body = b"".join(raw for _, raw in lines)
        error = f"no SSE data events in the 200 response: {_snippet(body)}"
    elif not error and finish is None:
        error = "truncated: stream ended without a finish_reason" + ("" if done else " or [DONE]")
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
