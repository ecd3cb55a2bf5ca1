"""Live LLM metrics in Locust's web UI: an "LLM metrics" tab, and the HTML report after stop.

    webui.install(environment, lambda: State.run)     # in the locustfile's init listener

The tab uses Locust's extension points: `extended_tabs` / `extended_tables` in the UI's template args,
and an `extended_stats` entry added to each `/stats/requests` answer (the page polls it every 2 s). Its
numbers come from the raw records of the current run: the run's records.jsonl is read incrementally
(where every process's records land, in --processes and master/worker runs too), never from Locust's
bucketed response times. Percentiles are over the last WINDOW requests; totals are over the whole run.

Routes: `/llm/stats` (the same rows as JSON) and `/llm/report` (report.html of the latest run that has
one; the "Download Data" tab links to it).

Start: a `before_request` hook on `/swarm` (the form's Start) applies the form's values to a copy of the
options, as Locust's own handler will, and asks the locustfile's `check_start(options, host)`; a bad value
or a dead host is refused with Locust's own answer, `{"success": false, "message": ...}`, which the form
shows above its Start button, and no test starts. The tab's first row says which run it shows (running,
or the last one, finished), so an old run's numbers never pass for the current one.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import deque

import numpy as np

from .columns import CANCELLED
from .records import CONTENT, REASONING, TOKEN_KINDS

TAB = "llm"
WINDOW = 20_000          # requests whose latencies the percentiles cover
MAX_GAPS = 2_000_000     # ITL gaps kept (the oldest requests' gaps go first)
READ_CHUNK = 8 << 20     # bytes of records.jsonl read per refresh, so a backlog never stalls the UI
RECENT_S = 10.0          # "last 10 s" throughput window
REFRESH_S = 0.5          # the table is recomputed at most this often
COLUMNS = (("metric", "Metric"), ("p50", "P50"), ("p90", "P90"), ("p99", "P99"), ("avg", "Average"),
           ("n", "N"))
_TOKEN = frozenset(TOKEN_KINDS)


class LiveWindow:
    """Per-request latencies of one run, fed from its records.jsonl as it grows. No Locust in here."""

    def __init__(self, path: str | None = None):
        self.path = path
        self.offset = 0
        self.partial = b""
        self.ttft: deque = deque(maxlen=WINDOW)
        self.tpot: deque = deque(maxlen=WINDOW)
        self.e2el: deque = deque(maxlen=WINDOW)
        self.tps: deque = deque(maxlen=WINDOW)        # per-request output token/s
        self.gaps: deque = deque()                    # one array of ITL gaps per request
        self.n_gaps = 0
        self.recent: deque = deque()                  # (end epoch s, output tokens)
        self.requests = self.failed = 0
        self.tokens = 0.0
        self.first_send = self.last_end = None
        # reasoning and multi-token events (metrics.py REASONING_METRICS): rows once a record has them
        self.ttfo: deque = deque(maxlen=WINDOW)
        self.reasoning_tokens: deque = deque(maxlen=WINDOW)
        self.answer_tokens: deque = deque(maxlen=WINDOW)
        self.tpe: deque = deque(maxlen=WINDOW)        # one array of tokens per decode event per request
        self.itl_tok: deque = deque(maxlen=WINDOW)    # one array of per-token ITL per request
        self.seen_reasoning = self.seen_multi = False

    # ---- reading
    def poll(self, max_bytes: int = READ_CHUNK) -> int:
        """Read what was appended since the last call (up to max_bytes); returns records added."""
        if not self.path:
            return 0
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read(max_bytes)
        except FileNotFoundError:
            return 0
        self.offset += len(chunk)
        data = self.partial + chunk
        lines = data.split(b"\n")
        self.partial = lines.pop()  # an unfinished last line waits for its end
        added = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                self.add(rec)
                added += 1
        return added

    def add(self, rec: dict) -> None:
        """One record, with DESIGN.md's definitions (default profile)."""
        error = rec.get("error")
        if isinstance(error, str) and error.startswith(CANCELLED):
            return  # cut short by the test stopping: not a request the server failed (as in run.report)
        self.requests += 1
        t_send = rec.get("t_send")
        events = rec.get("events") or []
        if isinstance(t_send, (int, float)):
            self.first_send = t_send if self.first_send is None else min(self.first_send, t_send)
        if not rec.get("success"):
            self.failed += 1
            return
        if not events:
            return
        e2el = events[-1][0]
        tok = [e[0] for e in events if e[1] in _TOKEN]
        out = rec.get("output_tokens") or 0
        self.e2el.append(e2el)
        if e2el > 0:
            self.tps.append(out / e2el)
        if len(events) > 1 and tok:  # streaming: TTFT, TPOT, ITL
            ttft = tok[0]
            self.ttft.append(ttft)
            self.tpot.append((e2el - ttft) / (out - 1) if out > 1 else 0.0)
            if len(tok) > 1:
                g = np.diff(tok)
                self.gaps.append(g)
                self.n_gaps += g.size
                while self.n_gaps > MAX_GAPS or len(self.gaps) > WINDOW:
                    self.n_gaps -= self.gaps.popleft().size
        self._add_split(rec, events, out)
        self.tokens += out
        if isinstance(t_send, (int, float)):
            end = t_send + e2el
            self.last_end = end if self.last_end is None else max(self.last_end, end)
            self.recent.append((end, out))

    def _add_split(self, rec: dict, events: list, out) -> None:
        """TTFO, the reasoning/answer tokens and the per-event token samples of one successful record."""
        reasoning = [e for e in events if e[1] == REASONING]
        if reasoning or (rec.get("reasoning_tokens") or 0) > 0:
            self.seen_reasoning = True
        answer = [e[0] for e in events if e[1] == CONTENT]
        self.ttfo.append(answer[0] if answer and len(events) > 1 else np.nan)
        r = rec.get("reasoning_tokens")
        r = r if isinstance(r, (int, float)) else (np.nan if reasoning else 0)
        a = rec.get("answer_tokens")
        self.reasoning_tokens.append(r)
        self.answer_tokens.append(a if isinstance(a, (int, float)) else (np.nan if reasoning else out))
        per_event = rec.get("event_tokens")
        if per_event is None:  # one token per content/reasoning event (event_tokens.py)
            per_event = [int(e[1] in _TOKEN) for e in events]
        if not isinstance(per_event, list) or len(per_event) != len(events):
            return
        carried = [(e[0], k) for e, k in zip(events, per_event) if e[1] in _TOKEN and isinstance(k, int) and k > 0]
        if len(carried) < 2:
            return
        t = np.array([c[0] for c in carried], float)
        k = np.array([c[1] for c in carried][1:], np.int64)
        self.seen_multi |= bool((k > 1).any())
        self.tpe.append(k)
        self.itl_tok.append(np.repeat(np.diff(t) / k, k))

    # ---- the table
    def rows(self, now: float | None = None, report: str | None = None) -> list[dict]:
        now = time.time() if now is None else now
        while self.recent and self.recent[0][0] < now - RECENT_S:
            self.recent.popleft()
        ok = self.requests - self.failed
        window = "" if ok <= WINDOW else f", last {WINDOW}"

        def stat_row(name, values, scale=1000.0, digits=2):
            a = np.asarray(values, float) * scale
            row = {"metric": name + window, "n": int(a.size)}
            if a.size:
                p50, p90, p99 = np.percentile(a, (50, 90, 99))
                row.update(p50=round(p50, digits), p90=round(p90, digits), p99=round(p99, digits),
                           avg=round(float(a.mean()), digits))
            else:
                row.update(p50="", p90="", p99="", avg="")
            return row

        gaps = np.concatenate(list(self.gaps)) if self.gaps else np.zeros(0)
        rows = [stat_row("TTFT (ms)", self.ttft), stat_row("TPOT (ms)", self.tpot), stat_row("ITL (ms)", gaps),
                stat_row("E2EL (ms)", self.e2el),
                stat_row("Output token/s per request", self.tps, scale=1.0, digits=1)]
        if self.seen_reasoning:
            rows += [stat_row("TTFO (ms): first answer token", _finite(self.ttfo)),
                     stat_row("Reasoning tokens per request", _finite(self.reasoning_tokens), 1.0, 1),
                     stat_row("Answer tokens per request", _finite(self.answer_tokens), 1.0, 1)]
        if self.seen_multi:
            rows += [stat_row("Tokens per event (decode)", _joined(self.tpe), 1.0, 2),
                     stat_row("ITL per token (ms)", _joined(self.itl_tok))]
        span = (self.last_end - self.first_send) if self.first_send is not None and self.last_end else 0
        blank = {"p50": "", "p90": "", "p99": ""}
        rows.append({"metric": "Output token/s, whole run", **blank,
                     "avg": round(self.tokens / span, 1) if span > 0 else "", "n": ok})
        recent = sum(t for _, t in self.recent)
        seconds = min(RECENT_S, now - self.first_send) if self.first_send is not None else RECENT_S
        rows.append({"metric": f"Output token/s, last {RECENT_S:g} s", **blank,
                     "avg": round(recent / seconds, 1) if seconds > 0 else "", "n": len(self.recent)})
        rows.append({"metric": "Requests: failed / all", **blank, "avg": self.failed, "n": self.requests})
        rows.append({"metric": "HTML report", "p50": "ready: Download Data tab, or ./llm/report" if report
                     else "written when the test stops",
                     "p90": "", "p99": "", "avg": "", "n": ""})
        return rows


def _finite(values) -> np.ndarray:
    a = np.asarray(values, float)
    return a[np.isfinite(a)]


def _joined(arrays) -> np.ndarray:
    return np.concatenate(list(arrays)).astype(float) if arrays else np.zeros(0)


class Live:
    """Which run the tab shows: the current one, else the last one (its final numbers and report)."""

    def __init__(self, get_run):
        self.get_run = get_run
        self.dir: str | None = None
        self.previous: str | None = None
        self.running = False
        self.refused = ""  # why the last Start was refused (until the next start)
        self.window = LiveWindow()
        self._rows: list[dict] = []
        self._at = 0.0

    def follow(self) -> None:
        run = self.get_run()
        run_dir = getattr(run, "dir", None) if run is not None else None
        if run_dir and run_dir != self.dir:
            self.previous = self.report_path() or self.previous
            self.dir = run_dir
            self.window = LiveWindow(os.path.join(run_dir, "records.jsonl"))
            self._at = 0.0

    def own_report(self) -> str | None:
        """report.html of the run the tab shows, once written."""
        if self.dir:
            # absolute: Flask's send_file resolves a relative path against Locust's package folder
            path = os.path.abspath(os.path.join(self.dir, "report.html"))
            if os.path.isfile(path):
                return path
        return None

    def report_path(self) -> str | None:
        return self.own_report() or self.previous  # while a new run goes on, the last finished one's

    def status_rows(self) -> list[dict]:
        blank = {"p90": "", "p99": "", "avg": "", "n": ""}
        name = os.path.basename(self.dir) if self.dir else ""
        state = (f"running: {name}" if self.running and name else
                 f"last run, finished: {name}" if name else "no run yet")
        rows = [{"metric": "Run", "p50": state, **blank}]
        if self.refused:
            rows.append({"metric": "Start refused", "p50": self.refused, **blank})
        return rows

    def rows(self) -> list[dict]:
        if time.monotonic() - self._at >= REFRESH_S:
            self.follow()
            self.window.poll()
            self._rows = (self.status_rows() + self.window.rows(report=self.own_report())
                          + server_rows(self.dir))
            self._at = time.monotonic()
        return self._rows


SERVER_TAIL = 1 << 20  # bytes read from the end of server_metrics.jsonl: more than one scrape line


def server_rows(run_dir: str | None) -> list[dict]:
    """The server's own running / waiting / KV-cache figures from its newest scrape (none when not scraped)."""
    from .server_metrics import scrape, series
    path = os.path.join(run_dir, scrape.FILE) if run_dir else ""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - SERVER_TAIL))
            lines = f.read().splitlines()
    except OSError:
        return []
    latest = None
    for line in reversed(lines):
        try:
            obj = json.loads(line)
        except ValueError:  # the cut first line of the tail, or a line being written
            continue
        if obj.get("kind") in ("scrape", "error"):
            latest = obj
            break
    if latest is None:
        return []
    blank = {"p50": "", "p90": "", "p99": "", "n": ""}
    if latest["kind"] == "error":
        return [{"metric": "Server metrics", **blank, "p50": f"not scraped: {latest.get('reason', '')}",
                 "avg": ""}]
    age = max(0.0, time.time() - latest.get("t", 0))
    snap = series.snapshot(latest)
    rows = []
    for key, name, scale in (("running", "Server: running requests", 1), ("waiting", "Server: waiting requests", 1),
                             ("kv_usage", "Server: KV-cache usage (%)", 100)):
        value = snap.get(key)
        if value is not None and value == value:  # NaN: the engine does not export it
            rows.append({"metric": name, **blank, "avg": round(value * scale, 1), "n": f"{age:.0f} s ago"})
    return rows


def form_options(options, form) -> argparse.Namespace | None:
    """The options a /swarm form will leave in environment.parsed_options, applied to a copy as Locust's
    handler applies them (same keys, same type conversions); None for a form Locust itself refuses."""
    from locust.util.timespan import parse_timespan
    values = dict(vars(options)) if options is not None else {}
    try:
        for key, value in form.items():
            if key == "user_count":
                values["num_users"] = int(value)
            elif key == "spawn_rate":
                values["spawn_rate"] = float(value)
            elif key == "run_time":
                if value:
                    values["run_time"] = parse_timespan(value)
            elif key in ("host", "user_classes", "profile", "shape_class"):
                continue
            elif key in values:
                old = values[key]
                values[key] = (value == "true" if isinstance(old, bool) else value if old is None
                               else form.getlist(key) if isinstance(old, list) else type(old)(value))
    except (TypeError, ValueError):
        return None
    return argparse.Namespace(**values)


def install(environment, get_run, check_start=None) -> Live | None:
    """Add the LLM tab and routes to environment.web_ui (nothing when running headless / as a worker).

    get_run() returns the current run (an object with `.dir`, the run folder) or None between tests.
    check_start(options, host) -> None, or why the form's values can't start a test (one line)."""
    web_ui = getattr(environment, "web_ui", None)
    if web_ui is None:
        return None
    from flask import Response, jsonify, request, send_file
    from locust.runners import STATE_RUNNING, STATE_SPAWNING

    live = Live(get_run)
    args = web_ui.template_args
    args["extended_tabs"] = [*args.get("extended_tabs", []), {"title": "LLM metrics", "key": TAB}]
    args["extended_tables"] = [*args.get("extended_tables", []),
                               {"key": TAB, "structure": [{"key": k, "title": t} for k, t in COLUMNS]}]
    args["extended_csv_files"] = [*args.get("extended_csv_files", []),
                                  {"href": "./llm/report", "title": "LLM report of the last run (HTML)"}]

    def on_test_start(**_):
        live.follow()
        live.running = get_run() is not None  # None: the locustfile refused these options
        live.refused = ""
        live._at = 0.0

    def on_test_stop(**_):  # runs after the locustfile's listener wrote the tables and report
        live.running = False
        live._at = 0.0

    environment.events.test_start.add_listener(on_test_start)
    environment.events.test_stop.add_listener(on_test_stop)

    app = web_ui.app

    @app.before_request
    def _check_start():
        if check_start is None or request.method != "POST" or not request.path.rstrip("/").endswith("/swarm"):
            return None
        runner = environment.runner
        if runner is not None and runner.state in (STATE_RUNNING, STATE_SPAWNING):
            return None  # a running test's users changed: not a new start
        options = form_options(environment.parsed_options, request.form)
        if options is None:
            return None  # Locust answers a malformed user count or run time itself
        host = str(request.form.get("host", environment.host or "")).replace("<", "").replace(">", "")
        message = check_start(options, host)
        if not message:
            return None
        live.refused = message
        live._at = 0.0
        return jsonify({"success": False, "message": message, "host": environment.host})

    @app.after_request
    def _llm_stats(response):
        if request.path.rstrip("/").endswith("/stats/requests") and response.is_json:
            body = response.get_json()
            body["extended_stats"] = [*body.get("extended_stats", []), {"key": TAB, "data": live.rows()}]
            response.set_data(json.dumps(body))
        return response

    @app.route("/llm/stats")
    @web_ui.auth_required_if_enabled
    def _llm_stats_json():
        return jsonify({"run_dir": live.dir, "report": bool(live.report_path()), "rows": live.rows()})

    @app.route("/llm/report")
    @web_ui.auth_required_if_enabled
    def _llm_report():
        live.follow()
        path = live.report_path()
        if not path:
            return Response("No HTML report yet: it is written when the test stops.\n", 404,
                            mimetype="text/plain")
        return send_file(path, mimetype="text/html", max_age=0)

    return live
