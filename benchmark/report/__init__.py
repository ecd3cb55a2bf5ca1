"""The HTML report of a run folder: one self-contained file (inline CSS and SVG, no script, nothing fetched).

    from benchmark.report import render
    path = render("reports/20260101_120000")          # writes reports/20260101_120000/report.html

Made from records.jsonl, config.json, (when the run was scored) results/<model_abbr>/<dataset>.json and
(when the server was scraped) server_metrics.jsonl.
Tables are metrics.compute()'s, formatted by tables.py exactly as on the console; charts are SVG drawn
in Python (plots.py). Every value from the run, model output included, goes through jinja2 autoescape.
"""
from __future__ import annotations

import glob
import json
import os
import time
from collections import Counter

import numpy as np
from jinja2 import Environment, FileSystemLoader

from .. import __version__, metrics, prefix_hits, stats, tables
from ..columns import WARMUP, Columns, read_columns
from . import plots
from .data import run_data
from .server import section as server_section

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
SAMPLES = 5            # completions shown (columns.EXAMPLES are kept)
PLOT_REQUESTS = 50_000  # plots of a bigger run are drawn from about this many requests taken evenly
TEXT_CHARS = 800       # of each shown completion
ACCURACY_METRICS = ("accuracy", "strict-match", "flexible-extract")

_env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True)


def render(run_dir: str, out_path: str | None = None, *, cols: Columns | None = None,
           plot_sample: Columns | None = None, results: metrics.Results | None = None,
           config: dict | None = None, server: tuple | None = None, schedule: dict | None = None,
           by_turn: list | None = None) -> str:
    """Write the report of `run_dir` to out_path (default run_dir/report.html); returns the path.

    The tables step passes what it has already read: `cols` (the run, its events possibly used up by
    metrics.compute), `plot_sample` (read_columns' sample for the plots), `results`, `config` and
    `server` (server_metrics.reconcile_run's result, when the run was scraped), `schedule`
    (schedule.adherence) and `by_turn` (by_turn.rows); those two are computed here when not given."""
    from .. import by_turn as turns_of, schedule as sched_of
    if config is None:
        config = _json(os.path.join(run_dir, "config.json")) or {}
    if cols is None or plot_sample is None:
        # as run.report reads them: warm-up left out, requests cut short by the test stopping set apart
        cols, plot_sample = read_columns(os.path.join(run_dir, "records.jsonl"), drop_cancelled=True,
                                         exclude_stages=(WARMUP,), sample_requests=PLOT_REQUESTS)
        results = None
        schedule = schedule or sched_of.adherence(cols, None if config.get("steps") or config.get("capacity_search")
                                                  else config.get("max_users") or config.get("users"))
    if by_turn is None:
        by_turn = turns_of.rows(os.path.join(run_dir, "records.jsonl")) if turns_of.applies(config) else []
    if results is None:
        extra = {"slo": config["slo"]} if config.get("slo") else {}
        results = metrics.compute(cols, profile=config.get("metric_profile", "default"),
                                  max_concurrency=config.get("max_users"), stream=config.get("stream", True), **extra)
    ctx = context(run_dir, cols, plot_sample, results, config, server)
    ctx["schedule"] = sched_of.line(schedule)
    ctx["schedule_late"] = bool(schedule and schedule["late"])
    ctx["by_turn"] = {"columns": turns_of.COLUMNS, "rows": [[turns_of.cell(v) for v in r] for r in by_turn]}
    html = _env.get_template("report.html.j2").render(**ctx)
    return write_html(html, out_path or os.path.join(run_dir, "report.html"))


def write_html(html: str, out_path: str) -> str:
    """Write a page to out_path at once (a browser refreshing it never sees half a file); returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = f"{out_path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(html)
    os.replace(tmp, out_path)
    return out_path


def _json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def context(run_dir: str, cols: Columns, plot_sample: Columns, results: metrics.Results, config: dict,
            server: tuple | None = None) -> dict:
    perf, common = results.perf, results.common
    stages = plots.stage_names(perf)
    data = run_data(plot_sample, results.profile, results.stream)
    accuracy = load_accuracy(run_dir, config)

    dists = [plots.distribution(m, getattr(data, attr), perf) for m, attr in plots.LAT_METRICS]
    return {
        "title": f"{config.get('model') or 'model'} on {config.get('host') or 'unknown host'}",
        "header": header(run_dir, config, cols, plot_sample, results),
        "tiles": tiles(results, accuracy),
        "stage_rows": stage_rows(results, stages, accuracy),
        "table_sets": table_sets(results, stages),
        "accuracy": accuracy,
        "dists": dists,
        "time_charts": plots.over_time(data, stages),
        "scatters": [plots.scatter(data, "TTFT", data.ttft, stages), plots.scatter(data, "TPOT", data.tpot, stages)],
        "timeline": plots.timeline(data),
        "lvt": plots.latency_vs_throughput(perf, common, stages),
        "failures": failures(cols.failed),
        "attempts": metrics.attempts_note(cols),  # resends and retries, as the console says them
        "prefix_cache": prefix_hits.console_line(results, config),  # achieved vs theoretical, as the console
        "health": client_health(run_dir, config, results),
        "server": server_section(run_dir, config, server),
        "samples": samples(cols.examples),
        "skipped": cols.skipped,
        "profile": results.profile,
        "ci_stats": CI_STATS,
        "level": f"{stats.LEVEL:.0%}",
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "version": __version__,
    }


def _duration_s(results: metrics.Results, stage: str = "total") -> float:
    return plots._common(results.common, "Benchmark Duration", stage) / 1000


def load_text(config: dict) -> str:
    """The load a run applied, from its config: users, open-loop rate, steps, processes ('' when none)."""
    users = config.get("max_users") or config.get("users")
    load = []
    if users:
        load.append(f"{users} users")
    if config.get("request_rate"):
        load.append(f"open loop {config['request_rate']} req/s, burstiness {config.get('burstiness', 1.0)}")
    if config.get("steps"):
        steps = config["steps"]
        steps = ", ".join(map(str, steps)) if isinstance(steps, (list, tuple)) else str(steps)
        load.append(f"steps {steps}" + (f", {config['step_time']} s each" if config.get("step_time") else ""))
    if config.get("processes"):
        load.append(f"{config['processes']} processes")
    return ", ".join(load)


def header(run_dir: str, config: dict, cols: Columns, plot_sample: Columns,
           results: metrics.Results) -> list[tuple[str, str]]:
    sources = Counter(cols.sources)
    sources.pop(None, None)
    token_source = ", ".join(f"{k} ({v})" for k, v in sources.most_common()) or "-"
    if config.get("tokenizer"):
        token_source += f"; tokenizer {config['tokenizer']}"
    out_len = config.get("max_out_len")
    rows = [
        ("Target", (config.get("host") or "-") + f" (--backend {config.get('backend') or 'openai-chat'})"),
        ("Model", f"{config.get('model') or '-'}" + (f" ({config['model_abbr']})" if config.get("model_abbr")
                                                      and config.get("model_abbr") != config.get("model") else "")),
        ("Dataset", f"{config.get('dataset_abbr') or config.get('dataset') or '-'}"
                    + (f", {config['dataset_path']}" if config.get("dataset_path") else "")),
        ("Load", load_text(config) or "-"),
        ("Duration", f"{_duration_s(results):.1f} s (first send to last answer)"
                     + (f"; {config['started']} to {config['finished']}" if config.get("finished") else "")),
        ("Requests", f"{cols.n}" + (f" (plots drawn from {plot_sample.n} of them, taken evenly through the run)"
                                    if plot_sample.n < cols.n else "")),
        ("Output length", f"max_tokens {out_len}" + (", ignore_eos" if config.get("ignore_eos") else "")
                          if out_len else "-"),
        ("Mode / metrics", f"{config.get('mode', 'perf')}, metric profile {results.profile}"
                           + ("" if results.stream else ", non-streaming")),
        ("Token counts", token_source),
        ("Tool", config.get("tool") or f"llm-testing {__version__}"),
        ("Command", config.get("command") or "-"),
        ("Run folder", os.path.abspath(run_dir)),
    ]
    if config.get("sampling"):
        rows.insert(7, ("Sampling", json.dumps(config["sampling"], ensure_ascii=False)))
    return rows


def tiles(results: metrics.Results, accuracy: dict | None) -> list[tuple[str, str]]:
    perf, common = results.perf, results.common

    def c(name):
        return plots._common(common, name, "total")

    def p(metric, col):
        v = plots._stat(perf, metric, "total", col)
        return "-" if np.isnan(v) else f"{v:.4g} ms"

    total, failed = c("Total Requests"), c("Failed Requests")
    out = [("Requests", f"{total:.0f}" + (f" ({failed:.0f} failed)" if failed else "")),
           ("Duration", f"{c('Benchmark Duration') / 1000:.1f} s"),
           ("Request throughput", f"{c('Request Throughput'):.3g} req/s"),
           ("Output throughput", f"{c('Output Token Throughput'):.4g} token/s"),
           ("TTFT P50 / P99", f"{p('TTFT', 'Median')} / {p('TTFT', 'P99')}"),
           ("TPOT P50 / P99", f"{p('TPOT', 'Median')} / {p('TPOT', 'P99')}")]
    slo = c("SLO Attainment")
    if not np.isnan(slo):
        out.append(("SLO attainment / goodput", f"{slo:.1f} % / {c('Goodput'):.3g} req/s"))
    if accuracy:
        out.append(("Accuracy", f"{accuracy['total'].get('accuracy', float('nan')):.2f} %"))
    return out


def stage_rows(results: metrics.Results, stages: list[str], accuracy: dict | None) -> list[dict]:
    """One row per stage (total last; only total when the run has no stages): the load it ran at and
    its headline latencies, accuracy beside."""
    perf, common = results.perf, results.common
    rows = []
    for s in [*stages, "total"]:
        row = {"stage": s,
               "requests": f"{plots._common(common, 'Total Requests', s):.0f}",
               "failed": f"{plots._common(common, 'Failed Requests', s):.0f}",
               "concurrency": f"{plots._common(common, 'Concurrency', s):.2f}",
               "rps": f"{plots._common(common, 'Request Throughput', s):.3f}",
               "tps": f"{plots._common(common, 'Output Token Throughput', s):.1f}"}
        for m in ("TTFT", "TPOT", "E2EL"):
            for col, name in (("Median", "p50"), ("P99", "p99")):
                v = plots._stat(perf, m, s, col)
                row[f"{m.lower()}_{name}"] = "-" if np.isnan(v) else f"{v:.2f}"
        slo = plots._common(common, "SLO Attainment", s)
        row["slo"] = "" if np.isnan(slo) else f"{slo:.1f}"
        acc = (accuracy or {}).get("stages", {}).get(s) if s != "total" else (accuracy or {}).get("total")
        row["accuracy"] = f"{acc['accuracy']:.2f}" if acc and "accuracy" in acc else ""
        rows.append(row)
    return rows


CI_STATS = ("Average", "Median", "P75", "P90", "P99")


def table_sets(results: metrics.Results, stages: list[str]) -> list[dict]:
    """The AISBench tables, one set per stage (total first), values formatted as on the console, with
    each statistic's confidence interval ("ci": metric -> stat -> "lo – hi") and the thin-figure notes."""
    perf_rows = tables.perf_rows(results)
    common = tables.common_dict(results)
    ci_rows = tables.interval_rows(results) if results.intervals is not None else []
    out = []
    for s in ["total", *stages]:
        ci: dict = {}
        for metric, stage, stat, _value, lo, hi, _n, _method, note in ci_rows:
            if stage == s:
                ci.setdefault(metric, {})[stat] = {"range": f"{lo or 'open'} – {hi or 'open'}", "note": note}
        out.append({
            "stage": s,
            "perf": [r for r in perf_rows if r[1] == s],
            "common": [(m, tables._display(v[s])) for m, v in common.items() if s in v],
            "ci": ci,
            "thin": tables.thin_notes(results, s),
            "empty": tables.empty_note(results, s),
        })
    return out


def load_accuracy(run_dir: str, config: dict) -> dict | None:
    """results/<model_abbr>/<dataset>.json as the accuracy scorer writes it, or None when not scored."""
    paths = sorted(p for p in glob.glob(os.path.join(run_dir, "results", "*", "*.json"))
                   if not p.endswith("_details.json"))
    want = os.path.join(run_dir, "results", str(config.get("model_abbr", "")),
                        f"{config.get('dataset_abbr') or config.get('dataset')}.json")
    if want in paths:
        paths.remove(want)
        paths.insert(0, want)
    for path in paths:
        res = _json(path)
        if isinstance(res, dict) and any(m in res for m in ACCURACY_METRICS):
            total = {m: float(res[m]) for m in ACCURACY_METRICS if isinstance(res.get(m), (int, float))}
            stages = {}
            for s, v in (res.get("stages") or {}).items():
                if isinstance(v, dict):
                    stages[s] = {m: float(v[m]) for m in ACCURACY_METRICS if isinstance(v.get(m), (int, float))}
                    stages[s]["counts"] = v.get("counts") or {}
            return {"file": os.path.relpath(path, run_dir), "metrics": [m for m in ACCURACY_METRICS if m in total],
                    "total": total, "counts": res.get("counts") or {}, "stages": stages,
                    "version": res.get("version", "-")}
    return None


def failures(failed: list[dict]) -> list[dict]:
    df = metrics.failure_summary(failed)
    return df.to_dict("records")


def client_health(run_dir: str, config: dict, results: metrics.Results | None = None):
    """What the run recorded about the load generator itself (config `client_health`: process -> its
    CPU %, event-loop lag, ...; or a client_health.json beside it), with the verdict; None when absent."""
    health = config.get("client_health")
    if health is None:
        health = _json(os.path.join(run_dir, "client_health.json"))
    if not health:
        return None

    def cell(v):
        return v if isinstance(v, (str, int, float)) or v is None else json.dumps(v)

    out = {"verdict": "", "bound": False, "extra": []}
    if isinstance(health, dict) and all(isinstance(v, dict) for v in health.values()):
        cols = list(dict.fromkeys(k for v in health.values() for k in v))
        out.update(kind="table", cols=["process", *cols],
                   rows=[[name, *(cell(v.get(c, "")) for c in cols)] for name, v in health.items()])
        try:
            from ..health import sched_lag_ms, verdict
            out["bound"], out["verdict"] = verdict(health)
            out["extra"] = list(sched_lag_ms(results).items()) if results is not None else []
        except Exception:  # noqa: BLE001 - the verdict is a nicety; the numbers are shown regardless
            pass
    elif isinstance(health, dict):
        out.update(kind="kv", rows=[(k, cell(v)) for k, v in health.items()])
    elif isinstance(health, list) and all(isinstance(x, dict) for x in health):
        cols = list(dict.fromkeys(k for x in health for k in x))
        out.update(kind="table", cols=cols, rows=[[cell(x.get(c, "")) for c in cols] for x in health[:200]])
    else:
        out.update(kind="kv", rows=[("client health", cell(health))])
    return out


def samples(examples: list[dict]) -> list[dict]:
    """A few successful completions, cut to TEXT_CHARS: what the model actually said."""
    picked = examples[:SAMPLES]
    out = []
    for r in picked:
        text = r.get("completion") or ""
        reasoning = r.get("reasoning") or ""
        out.append({"id": r.get("id"), "stage": r.get("stage") or "total", "prompt_index": r.get("prompt_index"),
                    "tokens": r.get("output_tokens"), "finish": r.get("finish_reason") or "-",
                    "text": text[:TEXT_CHARS] + ("…" if len(text) > TEXT_CHARS else ""),
                    "reasoning": reasoning[:TEXT_CHARS // 2] + ("…" if len(reasoning) > TEXT_CHARS // 2 else ""),
                    "reference": r.get("reference") or ""})
    return out
