"""Property tests (hypothesis): malformed or oddly chunked server data can't crash the client or the
post-processing, and TCP chunk boundaries never change what is measured.

The chunking test drives the real receive path: geventhttpclient's response parser and
`client.read_stream` read from a fake socket that hands out the raw HTTP response in arbitrary pieces,
each piece arriving at its own (fake) perf_counter time.
"""
from __future__ import annotations

import json
import os
import tempfile
from unittest import mock

from geventhttpclient.response import HTTPSocketPoolResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark import client, metrics
from benchmark.client import BOM, _error_text, _http_error, finish_stream, parse_stream, read_stream
from benchmark.columns import read_columns
from benchmark.records import FIELDS, new_record, read_records
from benchmark.run import ReportError, report

SETTINGS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ an SSE stream and its HTTP framing


def _chunk(delta=None, finish=None, usage=None, choices=True) -> dict:
    obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": []}
    if choices:
        obj["choices"] = [{"index": 0, "delta": delta if delta is not None else {}, "finish_reason": finish}]
    if usage:
        obj["usage"] = usage
    return obj


@st.composite
def sse_streams(draw) -> tuple[bytes, list[int], str, str]:
    """A server's SSE body: role, reasoning/content chunks, finish (usage on it or apart), [DONE], with
    the dialects servers use and the spec allows (WHATWG 9.2.6): `data:` with or without a space, LF,
    CRLF or CR line ends, comments and pings, a leading byte-order mark, an event's JSON spread over
    several `data:` lines (pretty-printed). -> (body, where each chunk event's first line ends in the
    body, the content and the reasoning the chunks carry)."""
    texts = draw(st.lists(st.tuples(st.sampled_from(["content", "reasoning_content"]),
                                    st.text(min_size=1, max_size=12)), max_size=12))
    usage = {"prompt_tokens": 3, "completion_tokens": len(texts), "total_tokens": 3 + len(texts)}
    usage_on_finish = draw(st.booleans())
    events = [_chunk({"role": "assistant", "content": ""})] if draw(st.booleans()) else []
    events += [_chunk({key: text}) for key, text in texts]
    if draw(st.booleans()):
        events.append(_chunk({}, finish=draw(st.sampled_from(["stop", "length"])),
                             usage=usage if usage_on_finish else None))
    if not usage_on_finish and draw(st.booleans()):
        events.append(_chunk(usage=usage, choices=False))
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    prefix = draw(st.sampled_from([b"data: ", b"data:"]))
    out, marks, size = [BOM] if draw(st.booleans()) else [], [], 0
    for obj in events:
        if draw(st.integers(0, 4)) == 0:
            out.append(b": keep-alive" + eol + eol)
        indent = 1 if draw(st.integers(0, 3)) == 0 else None
        lines = json.dumps(obj, ensure_ascii=draw(st.booleans()), indent=indent).encode().split(b"\n")
        size = sum(map(len, out))
        marks.append(size + len(prefix) + len(lines[0]))
        out.append(b"".join(prefix + line + eol for line in lines) + eol)
    if draw(st.booleans()):
        out.append(prefix + b"[DONE]" + eol + eol)
    body = b"".join(out)
    if body and draw(st.booleans()):  # the last line without its line end
        body = body.rstrip(b"\r\n")
    return (body, marks, "".join(t for k, t in texts if k == "content"),
            "".join(t for k, t in texts if k != "content"))


def frame(body: bytes, how: str, chunk_sizes: list[int]) -> tuple[bytes, list[int]]:
    """The raw HTTP/1.1 response carrying `body`, and where each body byte sits in it."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    if how == "length":
        raw = head + b"Content-Length: %d\r\n\r\n" % len(body)
        return raw + body, [len(raw) + i for i in range(len(body))]
    if how == "close":
        raw = head + b"Connection: close\r\n\r\n"
        return raw + body, [len(raw) + i for i in range(len(body))]
    raw, where, i, sizes = bytearray(head + b"Transfer-Encoding: chunked\r\n\r\n"), [], 0, chunk_sizes or [7]
    while i < len(body):
        part = body[i:i + sizes[len(where) % len(sizes)]]
        raw += b"%x\r\n" % len(part)
        where += range(len(raw), len(raw) + len(part))
        raw += part + b"\r\n"
        i += len(part)
    raw += b"0\r\n\r\n"
    return bytes(raw), where


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class PieceSocket:
    """recv() hands out the pieces in order (at most n bytes at a time), moving the clock to each one's time."""

    def __init__(self, pieces: list[tuple[float, bytes]], clock: Clock):
        self.pieces, self.clock = list(pieces), clock

    def recv(self, n: int) -> bytes:
        if not self.pieces:
            return b""  # EOF
        t, data = self.pieces[0]
        self.clock.now = t
        if len(data) > n:
            self.pieces[0] = (t, data[n:])
            return data[:n]
        self.pieces.pop(0)
        return data

    def close(self):
        pass


class NoPool:
    def release_socket(self, sock):
        pass

    def return_socket(self, sock):
        pass


def receive(raw: bytes, cuts: list[int], block_size: int) -> tuple[dict, list[float]]:
    """Feed `raw` cut at `cuts` (piece k arrives at time k+1) through the client's reader."""
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(raw))), len(raw)]
    pieces = [(k + 1.0, raw[a:b]) for k, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    clock = Clock()
    with mock.patch.object(client, "perf_counter", clock):
        resp = HTTPSocketPoolResponse(PieceSocket(pieces, clock), NoPool(), block_size=block_size, method="POST")
        out = finish_stream(read_stream(resp, 0.0, {"events": [], "success": False, "error": ""}, 300.0))
    starts = [a for a, _ in zip(bounds, bounds[1:])]
    return out, starts


def piece_time(starts: list[int], pos: int) -> float:
    k = max(i for i, s in enumerate(starts) if s <= pos)
    return k + 1.0


SAME = ("events_kinds", "completion", "reasoning", "finish_reason", "usage", "success", "error")


def summary(out: dict) -> dict:
    return {"events_kinds": [(e[1], e[2]) for e in out["events"]], **{k: out[k] for k in SAME[1:]}}


@SETTINGS
@given(stream=sse_streams(), how=st.sampled_from(["length", "chunked", "close"]),
       cuts=st.lists(st.integers(0, 4000), max_size=40), chunk_sizes=st.lists(st.integers(1, 50), max_size=5),
       block_size=st.sampled_from([1, 3, 64, 4096]))
def test_any_chunking_gives_the_same_events_and_ordered_times(stream, how, cuts, chunk_sizes, block_size):
    body, marks, content, reasoning = stream
    raw, where = frame(body, how, chunk_sizes)
    whole, _ = receive(raw, [], 4096)
    split, starts = receive(raw, cuts, block_size)
    assert summary(split) == summary(whole)
    assert (split["completion"], split["reasoning"]) == (content, reasoning)
    times = [e[0] for e in split["events"]]
    assert times == sorted(times)
    # each event is stamped when the piece with the end of its first line arrived (the first byte of
    # that line end: a CR ends a line, whether an LF follows or not); a last line without its line
    # end is taken when the message ends: the last piece
    expected = [piece_time(starts, where[m]) if m < len(body) else float(len(starts)) for m in marks]
    assert times == expected


# ------------------------------------------------------------------ garbage never raises

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
chunk_like = st.fixed_dictionaries({}, optional={
    "choices": st.one_of(json_values, st.lists(st.fixed_dictionaries({}, optional={
        "delta": json_values | st.dictionaries(st.sampled_from(["content", "reasoning_content", "role", "text"]),
                                               json_values),
        "text": json_values, "finish_reason": json_values}), max_size=2)),
    "usage": json_values, "error": json_values})
lines = st.one_of(
    st.binary(max_size=60),
    st.builds(lambda b: b"data: " + b, st.binary(max_size=60)),
    st.builds(lambda v: b"data: " + json.dumps(v).encode() + b"\n", json_values),
    st.builds(lambda v: b"data:" + json.dumps(v).encode() + b"\r\n", chunk_like),
    st.just(b"data: [DONE]\n"), st.just(b"data: \n"), st.just(b": ping\n"),
    st.just(b'data: {"choices":[{"delta":{"content":"\\ud800"},"finish_reason":"stop"}]}\n'),
    st.just(b"data: " + b"[" * 5000 + b"\n"),
)


@SETTINGS
@given(st.lists(st.tuples(st.floats(0, 100), lines), max_size=20))
def test_garbage_lines_never_raise(timed_lines):
    timed_lines.sort(key=lambda x: x[0])
    out = parse_stream(timed_lines, 0.0, {})
    # whatever came in, the record can be written as UTF-8 JSON and says one line
    json.dumps(out, ensure_ascii=False).encode()
    assert "\n" not in out["error"]
    assert out["success"] == (not out["error"])
    if out["success"]:
        assert isinstance(out["finish_reason"], str) and out["events"]
        assert isinstance(out["completion"], str) and isinstance(out["reasoning"], str)
    assert out["usage"] is None or isinstance(out["usage"], dict)


@SETTINGS
@given(status=st.integers(100, 599), body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()),
       retry_after=st.none() | st.text(max_size=30))
def test_error_bodies_never_raise(status, body, retry_after):
    text = _http_error(status, body, retry_after)
    assert text.startswith(f"HTTP {status}") and "\n" not in text
    text.encode()
    _error_text(body).encode()


# ------------------------------------------------------------------ the record reader and the report


def _valid_records(n: int) -> bytes:
    out = []
    for i in range(n):
        ok = i % 3 != 2
        rec = new_record(id=i, t_send=1000.0 + i * 0.1, success=ok, error="" if ok else f"HTTP 500: x{i}",
                         events=[[0.1, "role", 0], [0.2, "content", 4], [0.25, "content", 5], [0.3, "usage", 0]]
                         if ok else [], input_tokens=7 if ok else None, output_tokens=2 if ok else None,
                         completion="héllo ✓" if ok else "", finish_reason="stop" if ok else None)
        out.append(json.dumps(rec, ensure_ascii=False).encode() + b"\n")
    return b"".join(out)


@SETTINGS
@given(data=st.binary(max_size=2000))
def test_read_records_never_raises_on_random_bytes(data):
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as f:
        f.write(data)
        f.flush()
        records, skipped = read_records(f.name)
    assert skipped >= 0 and all(isinstance(r, dict) for r in records)


VALID = _valid_records(12)


@settings(deadline=None, max_examples=40)
@given(cut=st.integers(0, len(VALID)), junk=st.binary(max_size=40))
def test_a_truncated_records_file_keeps_every_whole_record_and_reports(cut, junk):
    whole = read_records_bytes(VALID)[0]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "records.jsonl")
        with open(path, "wb") as f:
            f.write(VALID[:cut] + junk)  # a crash mid-line, then anything
        records, skipped = read_records(path)
        complete = VALID[:cut].count(b"\n")
        assert records[:complete] == whole[:complete]
        with mock.patch("builtins.print"):
            try:
                results = report(d, html=False)  # never a traceback, whatever the tail holds
            except ReportError as e:  # no whole record and only junk: the one line saying so
                assert complete == 0 and "readable record" in str(e), e
                return
        assert len(results.common)


def read_records_bytes(data: bytes):
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as f:
        f.write(data)
        f.flush()
        return read_records(f.name)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=6)
                     | st.floats(allow_nan=False, allow_infinity=False),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                     max_leaves=12)


@SETTINGS
@given(recs=st.lists(st.dictionaries(st.sampled_from(FIELDS), _JSON, max_size=8), max_size=8))
def test_columns_keep_or_skip_every_record_whatever_its_fields(recs):
    """A record with fields of the wrong type is counted as skipped, never a traceback, and the
    tables are made from the rest."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "records.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
        cols, sample = read_columns(path, drop_cancelled=False, sample_requests=3)
        assert cols.n + cols.skipped == len(recs)
        assert cols.offsets.size == cols.counts.sum() == cols.kinds.size
        assert sample.n <= cols.n
        results = metrics.compute(cols)
        common = results.common[results.common["Stage"] == "total"].set_index("Common Metric")
        assert int(common.loc["Total Requests", "Value"]) == cols.n
