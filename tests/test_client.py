"""The SSE parser on streams shaped like real servers send them (vLLM, llama.cpp, SGLang...)."""
import json

import pytest

from benchmark.client import ClientError, parse_stream, split_base_url


def chunk(delta=None, finish=None, usage=None, choices=True):
    obj = {"id": "x", "object": "chat.completion.chunk", "choices": []}
    if choices:
        obj["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    if usage:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj).encode() + b"\n"


def timed(*lines, step=0.01):
    """Each line arrives `step` s after the previous, blank separators at the same moment."""
    out = []
    for i, line in enumerate(lines):
        out.append((1.0 + i * step, line))
        out.append((1.0 + i * step, b"\n"))
    return out


def parse(lines):
    return parse_stream(lines, 1.0, {})


USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_vllm_shape_role_content_finish_usage_done():
    out = parse(timed(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
                      chunk({"content": "lo"}), chunk({}, finish="length"),
                      chunk(usage=USAGE, choices=False), b"data: [DONE]\n"))
    assert out["success"] and out["error"] == ""
    assert [e[1] for e in out["events"]] == ["role", "content", "content", "other", "usage"]
    assert [e[2] for e in out["events"]] == [0, 3, 2, 0, 0]
    assert out["events"][1][0] == pytest.approx(0.01)
    assert out["completion"] == "Hello"
    assert out["finish_reason"] == "length"
    assert out["usage"] == USAGE


def test_usage_on_finish_chunk_no_done_crlf_nospace_and_comments():
    lines = [(1.1, b": keep-alive\r\n"), (1.2, b'data:{"choices":[{"delta":{"content":"a"}}]}\r\n'),
             (1.2, b"\r\n"),
             (1.3, b"data:" + json.dumps({"choices": [{"delta": {"content": "b"}, "finish_reason": "stop"}],
                                          "usage": USAGE}).encode() + b"\r\n")]
    out = parse(lines)
    assert out["success"], out["error"]
    assert out["completion"] == "ab"
    assert out["usage"] == USAGE
    assert [e[1] for e in out["events"]] == ["content", "content"]
    assert out["events"][0][0] == pytest.approx(0.2)


def test_reasoning_content_is_its_own_kind():
    out = parse(timed(chunk({"reasoning_content": "hmm"}), chunk({"content": "42"}, finish="stop"),
                      b"data: [DONE]\n"))
    assert [e[1] for e in out["events"]] == ["reasoning", "content"]
    assert out["reasoning"] == "hmm" and out["completion"] == "42"


def test_completions_endpoint_text_chunks():
    obj = {"choices": [{"index": 0, "text": " hi", "finish_reason": "stop"}]}
    out = parse(timed(b"data: " + json.dumps(obj).encode() + b"\n", b"data: [DONE]\n"))
    assert out["success"] and out["completion"] == " hi"


def test_no_finish_reason_is_truncated():
    out = parse(timed(chunk({"content": "a"}), b"data: [DONE]\n"))
    assert not out["success"]
    assert out["error"].startswith("truncated")
    out = parse(timed(chunk({"content": "a"})))
    assert "[DONE]" in out["error"]


def test_malformed_json_line_fails_with_reason_and_keeps_events():
    out = parse(timed(chunk({"content": "a"}), b"data: {not json\n", chunk({"content": "b"}, finish="stop")))
    assert not out["success"]
    assert out["error"].startswith("malformed JSON in stream")
    assert out["completion"] == "ab"


def test_error_object_in_stream():
    out = parse(timed(b'data: {"error": {"message": "out of memory", "code": 500}}\n'))
    assert not out["success"] and "out of memory" in out["error"]


def test_non_sse_200_body():
    out = parse(timed(b'{"choices": [{"message": {"content": "x"}}]}'))
    assert not out["success"] and out["error"].startswith("no SSE data events")


@pytest.mark.parametrize("url,expected", [
    ("http://127.0.0.1:8000", ("http://127.0.0.1:8000", "")),
    ("http://127.0.0.1:8000/v1/", ("http://127.0.0.1:8000", "")),
    ("127.0.0.1:8000/openai/v1", ("http://127.0.0.1:8000", "/openai")),
])
def test_split_base_url(url, expected):
    assert split_base_url(url) == expected


def test_split_base_url_rejects_other_schemes():
    with pytest.raises(ClientError, match="--host"):
        split_base_url("ftp://x")


def test_idle_connection_check_answers_without_yielding():
    """Reusing a kept-alive connection must not switch greenlets between t_send and the send: the
    check asks the kernel directly (gevent's select(timeout=0) yields, and so delayed every request)."""
    import gevent
    from gevent import socket

    from benchmark.client import _idle_socket_alive

    ours, server = socket.socketpair()
    ran = []
    gevent.spawn(ran.append, True)  # runs at the first switch to the hub
    assert _idle_socket_alive(ours)  # idle, nothing to read: reusable
    assert not ran, "the check yielded to the hub"
    server.sendall(b"x")
    assert not _idle_socket_alive(ours)  # stray bytes: dirty
    ours.recv(1)
    server.close()
    assert not _idle_socket_alive(ours)  # EOF: the server closed it
    ours.close()
    assert not _idle_socket_alive(ours)  # closed here
    gevent.sleep(0)
    assert ran


def test_host_is_resolved_once_not_per_connection(monkeypatch):
    """A new connection (llama.cpp's server closes every one) must not wait for a DNS lookup in
    gevent's thread pool after t_send: answers are shared by the users and kept (an IP for good)."""
    from geventhttpclient.connectionpool import ConnectionPool

    from benchmark import client

    calls = []
    real = ConnectionPool._resolve
    monkeypatch.setattr(ConnectionPool, "_resolve", lambda self: calls.append(1) or real(self))
    monkeypatch.setattr(client, "_resolved", {})
    a, b = client.ChatClient("http://127.0.0.1:9"), client.ChatClient("http://127.0.0.1:9")
    for c in (a, b, a):
        assert c.http._connection_pool._resolve()[0][-1] == ("127.0.0.1", 9)
    assert len(calls) == 1
    monkeypatch.setattr(client, "DNS_TTL_S", 0.0)  # a name is looked up again once its answer expires
    named = client.ChatClient("http://localhost:9")
    named.http._connection_pool._resolve()
    named.http._connection_pool._resolve()
    assert len(calls) == 3


def test_garbage_is_collected_only_in_idle_time_while_a_test_runs(monkeypatch):
    """While paused, the cyclic collector never runs by itself; the idle worker runs it every
    GC_EVERY_S, so cycles are still freed; resuming gives the interpreter its collector back."""
    import gc
    import weakref

    import gevent

    from benchmark import idle

    monkeypatch.setattr(idle, "GC_EVERY_S", 0.05)
    worker = idle.IdleWorker()
    try:
        worker.pause_gc()
        assert not gc.isenabled()

        class Node:
            pass
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only the cyclic collector frees it
        alive = weakref.ref(a)
        del a, b
        assert alive() is not None
        gevent.sleep(0.2)  # the loop is idle: the queued collection runs
        assert alive() is None
    finally:
        worker.resume_gc()
    assert gc.isenabled()
