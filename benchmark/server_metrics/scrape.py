"""Scrape a server's Prometheus /metrics at a steady interval, in a process of its own.

Parsing a few hundred KB of text every second must never delay a token read in the load test (one
gevent loop, one GIL), so the scraping runs here, in a child process started once per run; the
parent does nothing per scrape. By hand:

    python -m benchmark.server_metrics.scrape --url http://h:8000/metrics --interval 1 --out m.jsonl

Each result is one JSON line written with a single os.write on an O_APPEND descriptor (as
records.RecordSink does), so a SIGKILL loses nothing already written:

  {"kind": "meta", "url", "interval_s", "timeout_s", "started", "pid"}
  {"kind": "scrape", "t", "dt", "engine", "full", "families": {FAMILY: {"type", "samples": [[NAME, {LABELS}, VALUE]]}}}
      t: epoch s at the middle of the HTTP request, dt: its duration. The first successful scrape
      is full (every family, for reference); later ones keep only the families the recognised
      engine's mapping names (an unknown engine: every family). A NaN or infinite value is null.
  {"kind": "error", "t", "reason"}   only when the state changes: the first failure, or another kind
  {"kind": "recovered", "t"}         of failure; "recovered" when scrapes work again
  {"kind": "end", "t", "scrapes", "errors", "engine"}   errors = failed attempts, not error lines

Behaviour, decided here:
- Ticks sit on an absolute grid (start + n * interval), so the series does not drift; a scrape
  slower than the interval skips the ticks it overran instead of letting them pile up.
- Failures never end the scraper: refused, timeout, HTTP errors, HTML, text the parser rejects, a
  target that disappears and comes back. The next tick simply tries again.
- "No metrics here" (HTTP 404, or 501 as llama.cpp answers without --metrics) before any success
  slows the pace to one try per max(15 s, 10 intervals): the default URL is a guess, and a
  server without metrics should cost nothing; a server that turns them on later is still caught.
- Stopping (SIGTERM or SIGINT): the scrape in flight finishes (bounded by the timeout), then ONE
  final scrape is taken, the end line is written and the process exits 0.
- The child dies with its parent (PR_SET_PDEATHSIG, and a check of its parent pid each tick).
- TLS certificates are not verified (as the load client does not verify them); proxies are ignored.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
from prometheus_client.parser import text_string_to_metric_families

from . import FILE, engines, read  # noqa: F401 - FILE: the run-folder file name, for callers

DEFAULT_INTERVAL_S = 1.0
DEFAULT_TIMEOUT_S = 2.0
NOT_FOUND_PACE_S = 15.0          # at least this between tries while the URL says "no metrics here"
MAX_BYTES = 64 * 1024 * 1024     # a page larger than this is not a metrics page
NOT_FOUND = ("http-404", "http-501")


# ---------------------------------------------------------------- the URL


def metrics_url(host: str | None, option: str | None) -> str | None:
    """Where to scrape. `option` "" / None: the target's own /metrics (http://h:8000/v1 ->
    http://h:8000/metrics); "off": None; a URL: that URL; a port ("9091" or ":9091"): the target's
    host on that port, /metrics (MindIE serves metrics on its own port). Raises ValueError for
    anything else."""
    opt = (option or "").strip()
    if opt.lower() == "off":
        return None
    port = None
    if opt:
        if "://" in opt:
            u = urlsplit(opt)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ValueError(f"server metrics URL must be http(s)://host[:port]/path, not {option!r}")
            return opt
        if not re.fullmatch(r":?\d{1,5}", opt) or not 0 < int(opt.lstrip(":")) < 65536:
            raise ValueError(f"server metrics takes a URL, a port or 'off', not {option!r}")
        port = int(opt.lstrip(":"))
    if not host or not host.strip():
        return None
    h = host.strip()
    u = urlsplit(h if "://" in h else "http://" + h)
    if not u.hostname:
        return None
    netloc = u.netloc
    if port is not None:
        name = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
        netloc = f"{name}:{port}"
    return urlunsplit((u.scheme or "http", netloc, "/metrics", "", ""))


# ---------------------------------------------------------------- one scrape


class ScrapeError(Exception):
    """A failed scrape: `code` is stable per kind of failure (an error line is written only when it
    changes), `reason` is the one line a user reads."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = " ".join(str(reason).split())  # always one line


_SSL = ssl.create_default_context()
_SSL.check_hostname = False
_SSL.verify_mode = ssl.CERT_NONE
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=_SSL))
_HEADERS = {"Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1", "User-Agent": "LLM-Testing server-metrics"}


def fetch(url: str, timeout: float) -> tuple[str, str]:
    """GET url: (body text, content type). The timeout bounds the whole answer, not each read, so a
    server that drips its page byte by byte still fails in time. Raises ScrapeError."""
    deadline = time.perf_counter() + timeout
    try:
        with _OPENER.open(urllib.request.Request(url, headers=_HEADERS), timeout=timeout) as resp:
            ctype = resp.headers.get("Content-Type", "") or ""
            chunks, size = [], 0
            while True:
                chunk = resp.read1(256 * 1024) if hasattr(resp, "read1") else resp.read(256 * 1024)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_BYTES:
                    raise ScrapeError("too-big", f"the answer exceeds {MAX_BYTES >> 20} MiB: not a metrics page")
                if time.perf_counter() > deadline:
                    raise ScrapeError("timeout", f"no complete answer within {timeout:g} s")
    except ScrapeError:
        raise
    except urllib.error.HTTPError as e:
        raise _http_error(url, e) from None
    except urllib.error.URLError as e:
        raise _network_error(url, e.reason, timeout) from None
    except (OSError, HTTPException, ValueError) as e:
        raise _network_error(url, e, timeout) from None
    return b"".join(chunks).decode("utf-8", errors="replace"), ctype


def _http_error(url: str, e: urllib.error.HTTPError) -> ScrapeError:
    detail = ""
    try:  # llama.cpp and others explain themselves in a small JSON body
        body = json.loads(e.read(4096) or b"null")
        err = body.get("error") if isinstance(body, dict) else None
        detail = (err.get("message") if isinstance(err, dict) else err or body.get("detail")) or ""
    except Exception:
        pass
    detail = f": {str(detail)[:160]}" if detail else ""
    if e.code == 404:
        return ScrapeError("http-404", f"HTTP 404 at {url}: the server serves no metrics there{detail}")
    if e.code == 501:
        return ScrapeError("http-501", f"HTTP 501 at {url}: metrics are turned off{detail or ' (llama.cpp: --metrics)'}")
    return ScrapeError(f"http-{e.code}", f"HTTP {e.code} {e.reason} at {url}{detail}")


def _network_error(url: str, err, timeout: float) -> ScrapeError:
    if isinstance(err, (TimeoutError, socket.timeout)):
        return ScrapeError("timeout", f"no complete answer within {timeout:g} s")
    if isinstance(err, ConnectionRefusedError):
        return ScrapeError("refused", f"connection refused at {url}: nothing listens there")
    if isinstance(err, socket.gaierror):
        return ScrapeError("dns", f"cannot resolve the host of {url}")
    if isinstance(err, ssl.SSLError):
        return ScrapeError("tls", f"TLS failed at {url}: {err.reason or err}")
    if isinstance(err, (ConnectionError, HTTPException)):
        return ScrapeError("closed", f"the server at {url} closed the connection before a complete answer")
    if isinstance(err, str):
        return ScrapeError("network", f"cannot reach {url}: {err}")
    return ScrapeError("network", f"cannot reach {url}: {getattr(err, 'strerror', None) or err}")


_SAMPLE_NAME = re.compile(r"[^\s{]+")


def _only(text: str, keep: frozenset[str]) -> str:
    """The lines of `text` that belong to the families in `keep`, so the parser reads a fraction of a
    large page. Not a parser: it selects lines by metric name, prometheus_client still parses them."""
    names = {f + s for f in keep for s in ("", "_total", "_bucket", "_sum", "_count")}
    out = []
    for line in text.splitlines():
        if not line:
            continue
        if line[0] == "#":
            parts = line.split(None, 3)  # "# HELP name ..." / "# TYPE name type"
            if len(parts) >= 3 and parts[2] in names:
                out.append(line)
            continue
        m = _SAMPLE_NAME.match(line)
        if m and m.group() in names:
            out.append(line)
    out.append("")
    return "\n".join(out)


def parse(text: str, keep: frozenset[str] | None = None) -> dict:
    """{family: {"type", "samples": [[name, labels, value]]}} for the page (only `keep`'s families
    when given). A family named twice on the page is merged. Raises ValueError for text the
    Prometheus parser rejects."""
    if keep is not None:
        text = _only(text, keep)
    families: dict = {}
    for fam in text_string_to_metric_families(text):
        if keep is not None and fam.name not in keep:
            continue
        entry = families.setdefault(fam.name, {"type": fam.type, "samples": []})
        entry["samples"].extend([s.name, s.labels, s.value] for s in fam.samples)
    return families


def parse_page(text: str, ctype: str, keep: frozenset[str] | None, label: str | None) -> dict:
    """parse(), with the failures a user can act on turned into ScrapeErrors."""
    if "html" in ctype.lower() or text.lstrip()[:1] == "<":
        raise ScrapeError("html", "the answer is an HTML page, not Prometheus metrics (is this the metrics URL?)")
    try:
        families = parse(text, keep)
        if not families and keep is not None:
            # nothing of the engine's: say why (garbage, or another page altogether)
            if parse(text):
                raise ScrapeError("missing", f"the page no longer holds any {label} metrics")
    except ValueError as e:
        raise ScrapeError("garbage", f"the answer is not Prometheus text ({str(e)[:100]})") from None
    if not families:
        raise ScrapeError("empty", "the answer holds no metrics")
    return families


# ---------------------------------------------------------------- the child process


class Scraper:
    """The scraping state of one run: the output file, the engine, the current error state."""

    def __init__(self, url: str, out_path: str, interval_s: float, timeout_s: float):
        self.url, self.interval_s, self.timeout_s = url, interval_s, timeout_s
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        self._fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.engine: engines.Engine | None = None
        self.keep: frozenset[str] | None = None
        self.had_success = False
        self.state: str | None = None  # None before the first attempt, "ok", or an error code
        self.scrapes = self.errors = 0

    def write(self, obj: dict) -> None:
        try:  # orjson writes NaN/inf as null; a full disk must not end the scraper either
            os.write(self._fd, orjson.dumps(obj) + b"\n")
        except OSError:
            pass

    def once(self) -> str:
        """One scrape; returns the new state ("ok" or an error code)."""
        t_wall, t0 = time.time(), time.perf_counter()
        try:
            text, ctype = fetch(self.url, self.timeout_s)
            dt = time.perf_counter() - t0
            families = parse_page(text, ctype, self.keep, self.engine.label if self.engine else None)
        except Exception as e:  # noqa: BLE001 - no failure of a target may end the scraper
            if not isinstance(e, ScrapeError):
                e = ScrapeError("internal", f"scraper error: {type(e).__name__}: {e}")
            self.errors += 1
            if e.code != self.state:
                self.write({"kind": "error", "t": t_wall + (time.perf_counter() - t0) / 2, "reason": e.reason})
            self.state = e.code
            return e.code
        t = t_wall + dt / 2
        if self.state not in (None, "ok"):
            self.write({"kind": "recovered", "t": t})
        full = not self.had_success
        if full:  # the reference scrape keeps everything; it also names the engine
            self.had_success = True
            self.engine = engines.detect(families)
            self.keep = self.engine.families() if self.engine else None
        self.write({"kind": "scrape", "t": t, "dt": dt, "engine": self.engine.name if self.engine else None,
                    "full": full, "families": families})
        self.scrapes += 1
        self.state = "ok"
        return "ok"

    def close(self) -> None:
        self.write({"kind": "end", "t": time.time(), "scrapes": self.scrapes, "errors": self.errors,
                    "engine": self.engine.name if self.engine else None})
        os.close(self._fd)


def _die_with_parent() -> None:
    """Get SIGTERM when the parent dies, even by SIGKILL (Linux), as the simulator's child does."""
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def run(url: str, out_path: str, interval_s: float = DEFAULT_INTERVAL_S, timeout_s: float = DEFAULT_TIMEOUT_S,
        parent_pid: int | None = None) -> int:
    """The scraper's main loop, until SIGTERM/SIGINT (or the parent's death): see the module doc."""
    stop = []
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)  # a signal wakes the select() below at once
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    _die_with_parent()

    def orphaned() -> bool:
        return parent_pid is not None and os.getppid() != parent_pid

    s = Scraper(url, out_path, interval_s, timeout_s)
    s.write({"kind": "meta", "url": url, "interval_s": interval_s, "timeout_s": timeout_s,
             "started": time.time(), "pid": os.getpid()})
    start, n = time.monotonic(), 0
    while not stop and not orphaned():
        state = s.once()
        if stop:
            break
        pace = interval_s
        if state in NOT_FOUND and not s.had_success:
            pace = max(NOT_FOUND_PACE_S, 10 * interval_s)
        # the next grid point at least `pace` after this tick, and not already past
        n = max(n + max(1, round(pace / interval_s)), math.floor((time.monotonic() - start) / interval_s) + 1)
        while not stop and not orphaned():
            wait = start + n * interval_s - time.monotonic()
            if wait <= 0:
                break
            if select.select([wake_r], [], [], min(wait, 1.0))[0]:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
    s.once()  # the final scrape: counters as they stand after the load
    s.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmark.server_metrics.scrape",
                                 description="Scrape a Prometheus /metrics page into a JSONL file until SIGTERM.")
    ap.add_argument("--url", required=True, help="the metrics URL, e.g. http://localhost:8000/metrics")
    ap.add_argument("--out", required=True, help="the JSONL file to append to ('-': read its path from "
                    "the first line of stdin, so a child started early waits, imported, for its run's folder)")
    ap.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, help="seconds between scrapes (default 1)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds one scrape may take (default 2)")
    ap.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if not a.interval > 0 or not a.timeout > 0:
        ap.error("--interval and --timeout must be positive")
    try:  # yield the CPU to the load test: on a shared core a token read never waits behind a parse
        os.nice(10)
    except OSError:
        pass
    out = a.out
    if out == "-":
        out = sys.stdin.readline().strip()
        if not out:  # the parent closed stdin without a run: it stopped, or died
            return 0
    return run(a.url, out, max(a.interval, 0.05), a.timeout, a.parent_pid)


# ---------------------------------------------------------------- the handle in the load test


def summarize(lines: list[dict], pid: int | None = None) -> dict:
    """What a scraper run amounts to, from its lines (those after the last meta line, or after the
    meta line of child `pid`): scrapes, errors (failed attempts; when the end line is missing, the
    error lines), the last error's reason (None if it never failed), the engine recognised, and
    whether the run ended cleanly."""
    metas = [i for i, x in enumerate(lines) if x.get("kind") == "meta" and (pid is None or x.get("pid") == pid)]
    lines = lines[metas[-1] + 1:] if metas else ([] if pid is not None else lines)
    end = next((x for x in reversed(lines) if x.get("kind") == "end"), None)
    scrape_lines = [x for x in lines if x.get("kind") == "scrape"]
    error_lines = [x for x in lines if x.get("kind") == "error"]
    return {
        "scrapes": end["scrapes"] if end else len(scrape_lines),
        "errors": end["errors"] if end else len(error_lines),
        "last_error": error_lines[-1].get("reason") if error_lines else None,
        "engine": scrape_lines[0].get("engine") if scrape_lines else None,
        "ended": end is not None,
    }


class ScraperProcess:
    """The scraper child of one run, started once by the master (or the single local process).

    Start it from the main thread (greenlets are fine): Linux sends the parent-death signal when
    the *thread* that spawned the child ends, so a short-lived worker thread would end the scraper.
    """

    def __init__(self, url: str, out_path: str | None = None, interval_s: float = DEFAULT_INTERVAL_S,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        self.url, self.out_path = url, out_path
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.pid: int | None = None
        self.error: str | None = None  # why it could not start, or how it died
        self._proc: subprocess.Popen | None = None
        self._stderr = None
        self._offset = 0  # where this run's lines begin in the file
        self._summary: dict | None = None

    def arm(self) -> None:
        """Spawn the child, which imports and then waits for its file's path (start()). Arming before
        the test keeps the child's start-up (0.15 s quiet, over a second on a busy 2-core machine) out
        of Locust's -t clock, which runs from the test's start. Never raises: a failure to spawn is
        kept in .error and in stop()'s summary."""
        if self._proc is not None or self.error:
            return
        try:
            # import this very package whatever the cwd (as SimulatorProcess does)
            root = str(Path(__file__).resolve().parents[2])
            env = dict(os.environ, PYTHONSAFEPATH="1")
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
            self._stderr = tempfile.TemporaryFile()  # a file never fills up and blocks the child
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "benchmark.server_metrics.scrape", "--url", self.url, "--out", "-",
                 "--interval", repr(float(self.interval_s)), "--timeout", repr(float(self.timeout_s)),
                 "--parent-pid", str(os.getpid())],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr,
                start_new_session=True)  # Ctrl-C in the terminal is the parent's to handle; stop() ends us
            self.pid = self._proc.pid
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            self.error = f"could not start the metrics scraper: {e}"

    def start(self, out_path: str | None = None) -> None:
        """Arm the child if not yet armed, and tell it where to write: it scrapes at once. Never raises."""
        self.out_path = out_path or self.out_path
        self.arm()
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.closed:
            return
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.out_path)), exist_ok=True)
            self._offset = os.path.getsize(self.out_path) if os.path.exists(self.out_path) else 0
            proc.stdin.write(os.fsencode(self.out_path) + b"\n")
            proc.stdin.close()
        except (OSError, ValueError) as e:
            self.error = f"could not start the metrics scraper: {e}"

    def wait_first(self, timeout_s: float = 3.0) -> bool:
        """True once the first scrape (ok or error) is written; False on timeout or a dead child."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._first_written():
                return True
            if self._proc is None or self._proc.poll() is not None or time.monotonic() >= deadline:
                return self._first_written()
            time.sleep(0.05)

    def _first_written(self) -> bool:
        try:
            with open(self.out_path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return False
        first = data.find(b"\n")  # the meta line, then anything complete after it
        return first >= 0 and data.find(b"\n", first + 1) > first

    def stop(self, timeout_s: float = 5.0) -> dict:
        """Ask for one final scrape and the end line (SIGTERM), wait up to timeout_s, then kill the
        child by pid. Returns {"scrapes", "errors", "last_error", "engine", "ended"} read from the file."""
        if self._summary is not None:
            return self._summary
        proc = self._proc
        if proc is not None and proc.stdin is not None and not proc.stdin.closed:
            try:  # armed, never started: EOF ends it, nothing was written
                proc.stdin.close()
            except OSError:
                pass
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout_s)
                except ProcessLookupError:
                    pass
                except subprocess.TimeoutExpired:
                    proc.kill()
                    try:
                        proc.wait(2.0)
                    except subprocess.TimeoutExpired:
                        pass
        summary = summarize(read(self.out_path), self.pid) if self.out_path else None
        if proc is None or summary is None:
            summary = {"scrapes": 0, "errors": 0, "last_error": self.error, "engine": None, "ended": False}
        elif proc.returncode not in (0, None, -signal.SIGKILL, -signal.SIGTERM) and not summary["ended"]:
            # (SIGTERM/SIGKILL: ours, e.g. a stop() before the child had set up its handlers)
            self.error = f"the metrics scraper exited with code {proc.returncode}: {self._stderr_tail()}"
            summary["last_error"] = summary["last_error"] or self.error
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._summary = summary
        return summary

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError, AttributeError):
            return "(no stderr)"
        return text.splitlines()[-1] if text else "(no stderr)"

    def __enter__(self) -> "ScraperProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
