"""Start llama.cpp's llama-server on a free loopback port, wait until it serves, stop it by its pid.

Used by `scripts/real_server.sh` for the smoke check after a build (load the model, answer one
request) and by `tests/test_realserver.py`. When the server cannot start, the error says how it
ended (exit code or signal) and ends with the tail of its log, so a broken binary reads as one
message, not as a test's connection error.

    python3 scripts/llama_server.py --smoke BINARY MODEL      # exit 0 when it answered, else 1
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


class ServerError(RuntimeError):
    """llama-server did not start or did not answer; the message carries the reason and log tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():  # the server must not outlive a killed parent
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def exit_reason(returncode: int) -> str:
    """'killed by signal SIGSEGV (11)' or 'exited with code 1' (Popen gives -N for signal N)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {name} ({-returncode})"
    return f"exited with code {returncode}"


class LlamaServer:
    """One llama-server process; `stop()` always ends it (SIGTERM, then SIGKILL) by its pid."""

    def __init__(self, binary: str, model: str, log_path: str, extra_args: list[str] = (),
                 timeout: float = 120.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.cmd = [binary, "-m", model, "--host", "127.0.0.1", "--port", str(self.port), *extra_args]
        with open(log_path, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)
        self.pid = self.proc.pid
        try:
            self.startup_s = self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> float:
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise ServerError(self.failure(f"llama-server {exit_reason(self.proc.returncode)} while starting"))
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, 503 while the model loads, or a busy machine's slow answer
            if time.monotonic() - t0 > timeout:
                raise ServerError(self.failure(f"llama-server not ready after {timeout:.0f} s"))
            time.sleep(0.1)

    def failure(self, what: str) -> str:
        """`what`, the command line and the log's tail: one message that says why."""
        return f"{what}\ncommand: {' '.join(self.cmd)}\n--- last lines of {self.log_path}\n{self.log_tail()}"

    def log_tail(self, n: int = 3000) -> str:
        with open(self.log_path, "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def smoke(binary: str, model: str, log_path: str) -> str:
    """Load the model, answer one completion request; returns the text, raises ServerError."""
    with LlamaServer(binary, model, log_path, ["-np", "1", "-c", "512", "-t", "2"]) as srv:
        body = json.dumps({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}).encode()
        req = urllib.request.Request(srv.url + "/v1/completions", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                answer = json.load(r)
        except (urllib.error.URLError, OSError, ValueError) as e:
            if srv.proc.poll() is not None:
                raise ServerError(srv.failure(f"llama-server {exit_reason(srv.proc.returncode)} while answering"))
            raise ServerError(srv.failure(f"the completion request failed: {e}"))
        tokens = answer.get("usage", {}).get("completion_tokens", 0)
        if not tokens:
            raise ServerError(srv.failure(f"the answer has no completion tokens: {answer}"))
        return answer["choices"][0]["text"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", nargs=2, metavar=("BINARY", "MODEL"), required=True)
    args = ap.parse_args(argv)
    log_path = os.path.join(tempfile.mkdtemp(prefix="llama-smoke-"), "llama-server.log")
    try:
        text = smoke(*args.smoke, log_path)
    except ServerError as e:
        print(f"llama_server.py: smoke check failed: {e}", file=sys.stderr)
        return 1
    print(f"llama_server.py: smoke check passed: the model answered {text!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
