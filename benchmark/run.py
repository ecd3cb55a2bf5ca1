"""A run folder: config.json, the record sink while the test runs, and the tables when it ends.

`report(run_dir)` is the one way tables are made, at test stop and by `python -m benchmark report`,
always from records.jsonl alone, so both give the same numbers.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter

from . import __version__, backends, event_tokens, health, metrics, prefix_hits, stats, tables, tokens
from .datasets import Prompt
from .options import RunConfig
from .columns import CANCELLED, WARMUP, cancel_reason, read_columns
from .records import RecordSink, new_record, read_records


class ReportError(Exception):
    """A run folder that can't be reported on: one line saying what is missing."""


def build_body(prompt: Prompt, cfg: RunConfig, model: str) -> bytes:
    """The request body in the dialect of --backend (benchmark/backends), built once per prompt before
    the test starts."""
    body = backends.get(cfg.backend).body(prompt, cfg, model)
    return json.dumps(body, ensure_ascii=False).encode()


def model_abbr(cfg: RunConfig, model: str) -> str:
    name = cfg.model_abbr or model or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def _new_run_dir(root: str) -> str:
    base = os.path.join(root, time.strftime("%Y%m%d_%H%M%S"))
    path, n = base, 1
    while os.path.exists(path):  # two runs in one second (web UI restarts, tests)
        path, n = f"{base}_{n}", n + 1
    os.makedirs(path)
    return path


class Run:
    """One test, start to stop. A distributed worker passes its shipping `sink` and has no folder."""

    def __init__(self, cfg: RunConfig, model: str, host: str, extra: dict | None = None, sink=None):
        self.cfg = cfg
        self.dir = None
        self.config = {
            **cfg.public(), "host": host, "model": model, "model_abbr": model_abbr(cfg, model),
            "tool": f"llm-testing {__version__}", "command": redact_command(sys.argv, cfg.api_key),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {}),
        }
        if sink is None:
            self.dir = _new_run_dir(cfg.output_dir)
            self._write_config()
            sink = RecordSink(os.path.join(self.dir, "records.jsonl"))
        self.sink = sink
        self.seq = 0
        self._input_counts: dict[int, int] = {}
        self.slo_tally: dict[str, list[int]] = {}  # stage -> [requests meeting every SLO, finished]
        self._cancel_sink = None  # cancelled.jsonl, opened at the first cancelled request
        self.cancelled_count = 0

    def _write_config(self) -> None:
        with open(os.path.join(self.dir, "config.json"), "w") as f:
            json.dump(self.config, f, indent=2)

    def record(self, result: dict, prompt: Prompt, worker: str, user: int, stage: str = "total",
               conversation: str | None = None, turn: int | None = None) -> dict:
        """Complete one request's fields into a record, write it, and return it."""
        usage = result.pop("usage", None) or {}
        chunk_usage = result.pop("chunk_usage", None)
        rec = new_record(id=self.seq, worker=worker, user=user, stage=stage, dataset=self.cfg.dataset_abbr,
                         prompt_index=prompt.index, reference=prompt.reference, conversation=conversation,
                         turn=turn, **result)
        self.seq += 1
        if rec["success"]:
            self._count_tokens(rec, usage, prompt)
            event_tokens.annotate(rec, usage, chunk_usage, lambda: self.tokenizer)
        self.keep(rec)
        return rec

    def keep(self, rec: dict) -> None:
        """Write a finished record (this process's or a worker's) and tally it against --slo."""
        self.sink.write(rec)
        if self.cfg.slo and not rec["error"].startswith(CANCELLED):
            tally = self.slo_tally.setdefault(rec["stage"], [0, 0])
            tally[0] += metrics.record_meets_slo(rec, self.cfg.slo)
            tally[1] += 1

    def cancelled(self, result: dict, prompt: Prompt, worker: str, user: int, stage: str = "total",
                  conversation: str | None = None, turn: int | None = None) -> dict:
        """A request cut short by the test stopping: kept in cancelled.jsonl, never counted as a failure.

        (A distributed worker ships it with its records; `report` sets such records apart as well.)"""
        result.pop("usage", None)
        result.pop("chunk_usage", None)
        rec = new_record(id=self.seq, worker=worker, user=user, stage=stage, dataset=self.cfg.dataset_abbr,
                         prompt_index=prompt.index, reference=prompt.reference, conversation=conversation,
                         turn=turn, **result)
        self.seq += 1
        self.cancelled_count += 1
        try:
            if self.dir is None:
                self.sink.write(rec)
            else:
                if self._cancel_sink is None:
                    self._cancel_sink = RecordSink(os.path.join(self.dir, CANCELLED_FILE))
                self._cancel_sink.write(rec)
        except (OSError, TypeError, ValueError):  # the run was already finished: nothing to keep it in
            pass
        return rec

    def _count_tokens(self, rec: dict, usage: dict, prompt: Prompt) -> None:
        """Server usage when it reports > 0, else the tokenizer (after the stream, never inside it)."""
        out_tokens = _count(usage.get("completion_tokens"))
        in_tokens = _count(usage.get("prompt_tokens"))
        rec["token_source"] = "usage" if out_tokens > 0 else "tokenizer"
        if not out_tokens:
            text = rec["completion"] + rec["reasoning"]
            # an empty answer is 0 tokens: no need to load a tokenizer to say so
            out_tokens = tokens.count_output(self.tokenizer, text) if text else 0
        if not in_tokens and rec["conversation"] is not None:  # a turn: its history differs turn by turn
            in_tokens = tokens.count_input(self.tokenizer, prompt.messages)
        elif not in_tokens:
            if prompt.index not in self._input_counts:
                if backends.get(self.cfg.backend).CHAT:
                    n = tokens.count_input(self.tokenizer, prompt.messages)
                else:  # a text dialect sent the prompt as text: that text, as the server encodes it
                    n = tokens.count_text_input(self.tokenizer, backends.prompt_text(prompt.messages))
                self._input_counts[prompt.index] = n
            in_tokens = self._input_counts[prompt.index]
        rec["output_tokens"], rec["input_tokens"] = out_tokens, in_tokens
        rec["cached_tokens"] = _cached(usage)

    @property
    def tokenizer(self):
        return tokens.load_tokenizer(self.cfg.tokenizer)  # cached per path

    def finish(self, **extra) -> metrics.Results | None:
        self.sink.close()
        if self._cancel_sink is not None:
            self._cancel_sink.close()
        if self.cancelled_count:
            extra["cancelled_requests"] = self.cancelled_count
        if self.dir is None:
            return None  # a worker: the master makes the tables
        self.config.update(extra, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self._write_config()
        scored = self.cfg.mode in ("accuracy", "all")
        results = report(self.dir, html=not scored)  # a scored run's report waits for its accuracy
        if scored:
            if self.cfg.mode == "all":
                print("Note: --mode all: latencies above are for natural-length outputs (no ignore_eos).")
            from .accuracy import AccuracyError, score_run
            try:
                score_run(self.dir)
            except AccuracyError as e:
                print(f"error: {e}")
            from .report import render
            print(f"Report written to {render(self.dir)}")
        return results


def stop_reason(shape, running: bool, stage: str, now_stage: str) -> str:
    """Why a user was stopped mid-request: `shape` (or None) removed it at a stage change while the run
    goes on (`running`), the shape's last stage ended, or the test stopped (Ctrl-C, -t, the UI's stop).
    The words complete "cancelled: ... while the request was in flight"."""
    if shape is not None and running and now_stage != stage:
        return f"the load shape removed users going from stage {stage} to {now_stage}"
    if shape is not None and running:
        return f"the load shape removed users in stage {stage}"
    if shape is not None and getattr(shape, "ended", False):
        return f"the load shape ended after its last stage {stage}"
    return "the test stopped"


def cancelled_line(cancelled: int, reasons: Counter) -> str:
    """'Cancelled: N request(s) in flight when ...': what cut them short (the test stopping, or a load
    shape removing users at a stage change), most frequent first."""
    if set(reasons) <= {"the test stopped"}:
        return f"Cancelled: {cancelled} request(s) in flight when the test stopped (not counted as failures)"
    why = "; ".join(f"{n} when {reason}" for reason, n in reasons.most_common())
    return f"Cancelled: {cancelled} request(s) in flight, not counted as failures: {why}"


def health_line(config: dict, results: metrics.Results) -> str:
    """Whether the client itself was the bottleneck (CPU, event-loop lag, open-loop send lag)."""
    processes = config.get("client_health") or {}
    if not processes:
        return "Client health: not measured (run made before the test stopped cleanly)"
    client_bound, line = health.verdict(processes)
    lag = health.sched_lag_ms(results)
    if lag:
        line += f"; open-loop send lag p50 {lag['sched_lag_p50_ms']:.1f} ms, p99 {lag['sched_lag_p99_ms']:.1f} ms"
    return line


def report(run_dir: str, profile: str | None = None, echo: bool = True,
           html: str | bool = True, out_dir: str | None = None) -> metrics.Results:
    """Tables from records.jsonl (+ config.json): printed and written under performances/.
    html: True writes report.html, a path writes it there, False skips it.
    out_dir: where performances/ and report.html go (default run_dir; another profile's, profiles/P)."""
    records_path = os.path.join(run_dir, "records.jsonl")
    if not os.path.isfile(records_path):
        raise ReportError(f"{run_dir}: no records.jsonl here; pass a run folder like reports/20260101_120000")
    config = {}
    config_path = os.path.join(run_dir, "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            config = json.load(f)
    # warm-up requests (--warmup) are kept on disk and left out of the numbers; cancelled ones are not
    # failures of the server. The plots get their own sample; the tables use every record.
    from .report import PLOT_REQUESTS
    cols, plot_sample = read_columns(records_path, drop_cancelled=True, exclude_stages=(WARMUP,),
                                     sample_requests=PLOT_REQUESTS if html else 0)
    if not cols.n and cols.skipped and not (cols.cancelled or cols.excluded):
        raise ReportError(f"{records_path}: none of its {cols.skipped} line(s) is a readable record "
                          "(not this tool's records.jsonl, or damaged)")
    cancelled, reasons = cols.cancelled, Counter(cols.cancel_reasons)
    cancelled_path = os.path.join(run_dir, CANCELLED_FILE)
    if os.path.isfile(cancelled_path):
        kept = read_records(cancelled_path)[0]
        cancelled += len(kept)
        reasons.update(cancel_reason(str(r.get("error") or "")) for r in kept)
    profile = profile or config.get("metric_profile", "default")
    n, failed, skipped = cols.n, cols.failed, cols.skipped
    from . import by_turn, schedule
    # before metrics.compute, which uses the events up; the user cap only when it was one number
    sched = schedule.adherence(cols, None if config.get("steps") or config.get("capacity_search")
                               else config.get("max_users") or config.get("users"))
    results = metrics.compute(cols, profile=profile, max_concurrency=config.get("max_users"),
                              stream=config.get("stream", True), slo=config.get("slo") or None)
    out_dir = out_dir or run_dir
    perf_dir = os.path.join(out_dir, "performances", config.get("model_abbr", "model"))
    csv_path, json_path = tables.write(results, perf_dir, config.get("dataset_abbr", "dataset"))
    curve_path = tables.write_curve(results, perf_dir, config.get("dataset_abbr", "dataset"))
    ci_paths = tables.write_intervals(results, perf_dir, config.get("dataset_abbr", "dataset"))
    turns = by_turn.rows(records_path) if by_turn.applies(config) else []  # [] (and no file) else
    turn_paths = by_turn.write(turns, perf_dir, config.get("dataset_abbr", "dataset"))
    if echo:
        print(tables.console(results))
        if turns:
            print(by_turn.console(turns))
        if sched:
            print(schedule.line(sched))
        failures = failure_text(failed, n)
        if failures:
            print(failures)
        note = metrics.attempts_note(cols)  # resends and retries
        if note:
            print(note)
        note = metrics.split_note(cols, results)  # reasoning / tokens per event: where the counts came from
        if note:
            print(note)
        note = prefix_hits.console_line(results, config)  # achieved vs theoretical prefix-cache hits
        if note:
            print(note)
        empty = tables.empty_note(results)
        if empty:
            print(empty)
        if cancelled:
            print(cancelled_line(cancelled, reasons))
        verdict = outcome_line(failed, n, cancelled)
        if verdict:
            print(verdict)
    server = server_metrics(run_dir, config)  # the server's own account, when it was scraped
    if echo:
        print(health_line(config, results))
        if server is not None:
            print("\n".join(server[0]["lines"]))
        print(tokens.source_summary(cols.sources, cols.text_sample, config.get("tokenizer")))
        if skipped:
            print(f"note: {skipped} unreadable line(s) in records.jsonl skipped (cut short by a crash?)")
        thin = tables.thin_notes(results)
        if thin:
            print(f"Thin figures ({len(thin)}): " + "; ".join(thin[:6]) + ("; ..." if len(thin) > 6 else ""))
        print(f"Results written to {csv_path} and {json_path}")
        if ci_paths:
            print(f"{stats.LEVEL:.0%} confidence intervals written to {ci_paths[0]} and {ci_paths[1]}")
        if curve_path:
            print(f"Latency vs throughput per stage written to {curve_path}")
        if turn_paths:
            print(f"By turn written to {turn_paths[0]} and {turn_paths[1]}")
    if html:
        from .report import render
        path = render(run_dir, html if isinstance(html, str) else os.path.join(out_dir, "report.html"),
                      cols=cols, plot_sample=plot_sample,
                      results=results, config=config, server=server, schedule=sched, by_turn=turns)
        if echo:
            print(f"Report written to {path}")
    return results


CANCELLED_FILE = "cancelled.jsonl"


def server_metrics(run_dir: str, config: dict):
    """When the server was scraped (server_metrics.jsonl): reconcile its account with the records and
    write server_metrics_reconcile.json; (result, ServerMetrics, ClientRun), else None."""
    from .server_metrics import reconcile
    try:
        done = reconcile.reconcile_run(run_dir, config)
    except Exception as e:  # noqa: BLE001 - the server's account is a second witness: never lose the tables to it
        done = (reconcile.failed(f"{type(e).__name__}: {e}"), None, None)
    if done is not None:
        with open(os.path.join(run_dir, reconcile.RESULT_FILE), "w") as f:
            json.dump(done[0], f, indent=1, allow_nan=False)
    return done


def failure_text(failed: list[dict], total: int) -> str:
    """Failures grouped by reason, most frequent first: count, reason, and the first example when it
    says more than the reason. Empty when nothing failed. `failed`: the failed records (or their
    error and http_status), `total`: requests in all."""
    failures = metrics.failure_summary(failed)
    if not len(failures):
        return ""
    lines = [f"Failures by reason ({int(failures['count'].sum())} of {total} requests):"]
    width = len(str(int(failures["count"].max())))
    for reason, count, example in failures.itertuples(index=False):
        lines.append(f"  {int(count):>{width}} x {reason}")
        example = _example(example)
        if example != reason:
            lines.append(f"  {'':>{width}}   first: {example[:300]}")
    return "\n".join(lines)


def outcome_line(failed: list[dict], total: int, cancelled: int) -> str:
    """One line when no request succeeded (all `total` are in `failed`), saying why; empty otherwise."""
    if len(failed) < total:
        return ""
    if not total:
        if cancelled:
            return (f"No request finished: all {cancelled} were still in flight when the test stopped "
                    "(run longer, or lower --max-out-len)")
        return "No request was sent: the test stopped before any user sent one"
    top = metrics.failure_summary(failed).iloc[0]
    return (f"All {total} requests failed: most common reason ({int(top['count'])} of them): "
            f"{_example(top['first_example'])[:300]}")


def _example(text: str) -> str:
    """A failure's first example without the status failure_summary appends when the text has it already."""
    return re.sub(r" \(HTTP \d+\)$", "", text) if text.startswith("HTTP ") else text


def _count(value) -> int:
    """A token count from a server's usage block: a non-negative int, anything else is 0."""
    return value if type(value) is int and value > 0 else 0


def _cached(usage: dict) -> int | None:
    """usage.prompt_tokens_details.cached_tokens (vLLM, SGLang, llama.cpp), None when not sent."""
    details = usage.get("prompt_tokens_details")
    value = details.get("cached_tokens") if isinstance(details, dict) else None
    return value if type(value) is int and value >= 0 else None


def redact_command(argv: list[str], secret: str | None) -> str:
    """The command line as run, without the API key (`--api-key KEY`, `--api-key=KEY`, or the key itself)."""
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
        elif arg == "--api-key":
            out.append(arg)
            hide_next = True
        elif arg.startswith("--api-key="):
            out.append("--api-key=***")
        else:
            out.append(arg.replace(secret, "***") if secret else arg)
    return " ".join(out)
