"""The simulator as a child process: what tests, the locustfile and perf scripts start and stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, even by SIGKILL, so no simulator is orphaned."""
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class SimulatorProcess:
    """The simulator as a child process on a free loopback port; stop it with .stop() or `with`."""

    def __init__(self, args: tuple[str, ...] | list[str] = (), timeout: float = 10.0):
        # Import this very package whatever the caller's cwd, yet keep that cwd so relative paths in
        # args (--answers) still work: PYTHONPATH names our root, PYTHONSAFEPATH keeps cwd off sys.path.
        root = str(Path(__file__).resolve().parents[2])  # the folder that holds the benchmark package
        env = dict(os.environ, PYTHONSAFEPATH="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self._stderr = tempfile.TemporaryFile()  # a file never fills up and blocks the child, as a pipe can
        self._stderr_text: str | None = None  # kept when stopped
        self._proc = subprocess.Popen([sys.executable, "-m", "benchmark.simulator", "--port", "0", *args],
                                      env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=self._stderr, preexec_fn=_die_with_parent)
        self.pid = self._proc.pid
        self.url: str | None = None
        self.banner: str | None = None  # the startup line
        self._ready = threading.Event()
        threading.Thread(target=self._drain, name=f"simulator-{self.pid}-stdout", daemon=True).start()
        if not self._ready.wait(timeout) or self.url is None:
            why = "exited" if self._proc.poll() is not None else f"did not start within {timeout:g} s"
            self.stop()
            raise RuntimeError(f"LLM simulator {why}: {self.stderr().strip() or '(no stderr)'}")

    def _drain(self) -> None:
        # Read the startup line, then keep reading so the child never blocks on a full stdout pipe.
        with self._proc.stdout:
            for line in self._proc.stdout:
                if self.url is None:
                    m = re.search(rb"listening on (http://\S+)", line)
                    if m:
                        self.url, self.banner = m.group(1).decode(), line.decode().strip()
                        self._ready.set()
        self._ready.set()

    def stderr(self) -> str:
        """What the child wrote to stderr (so far, or in all once stopped)."""
        if self._stderr_text is None:
            self._stderr.seek(0)
            return self._stderr.read().decode(errors="replace")
        return self._stderr_text

    def poll(self) -> int | None:
        return self._proc.poll()

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait, SIGKILL if it hangs; safe to call twice. Returns the exit code."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._stderr_text is None:
            self._stderr_text = self.stderr()
            self._stderr.close()
        return self._proc.returncode

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start(*args: str, timeout: float = 10.0) -> SimulatorProcess:
    """Start the simulator with these extra options on a free port; raise RuntimeError if it fails."""
    return SimulatorProcess(args, timeout)
