"""The report's "Server metrics" section: what the server said about itself during the run, beside the
client's own view, and the reconciliation of the two (server_metrics/reconcile.py).

Everything is on the run's clock: seconds from the first send of any request (warm-up included, as the
server saw it). Server gauges are instantaneous at each scrape, so the client's in-flight count is
taken at the same instants; token throughput is per interval between two scrapes on both sides (the
server's counter delta / dt; the client's tokens of each request spread over its content events).
"""
from __future__ import annotations

import math

import numpy as np

from ..server_metrics import reconcile as rc
from ..server_metrics import series
from . import svg
from .data import run_data

WIDE = 1130


def section(run_dir: str, config: dict, computed: tuple | None = None) -> dict | None:
    """The section's context, or None when the run folder has no server_metrics.jsonl.

    computed: (result, ServerMetrics, ClientRun) when the tables step has already reconciled."""
    if computed is None:
        try:
            computed = rc.reconcile_run(run_dir, config)
        except Exception as e:  # noqa: BLE001 - as run.server_metrics: the rest of the report stands
            computed = (rc.failed(f"{type(e).__name__}: {e}"), None, None)
        if computed is None:
            return None
    result, sm, client = computed
    out = {"engine": result.get("engine_label") or "unknown engine: raw families kept", "url": result.get("url"),
           "notes": result.get("notes") or [], "reason": result.get("reason"), "lines": (result.get("lines") or []) + (result.get("details") or []),
           "flags": [f["text"] for f in result.get("flags") or []], "rows": rows(result), "buckets": [],
           "summary": _summary(result),
           "charts": [], "stages": [], "thresholds": result.get("thresholds") or {}}
    for name, label in rc.LATENCIES:
        lat = (result.get("latency") or {}).get(name)
        if lat and lat.get("buckets"):
            out["buckets"].append({"key": name, "label": label, "rows": [
                (_num(b["bound_ms"]), _pct(b["server"]), _pct(b["client"]),
                 f"{_pct(b['client_lo'])}–{_pct(b['client_hi'])}", f"{100 * (b['client'] - b['server']):+.1f}")
                for b in lat["buckets"]]})
    if sm is None or sm.n == 0 or client is None or not client.n:
        return out
    t0 = float(np.nanmin(client.t_send))
    view = _View(sm, client, t0)
    out["charts"] = view.charts()
    out["stages"] = view.stage_rows()
    return out


def _summary(result: dict) -> str:
    """The verdict's last line when nothing was flagged ("no flag: ..."), as a sentence for the page."""
    if result.get("flags") or not result.get("reconciled") or not result.get("lines"):
        return ""
    text = result["lines"][-1].strip().replace("(report.html: why)", "(see below)").replace("stated above", "stated below")
    return text[:1].upper() + text[1:] + "."


def rows(result: dict) -> list[tuple[str, str, str, str]]:
    """The reconciliation table: (what, server, client, verdict)."""
    out = []
    req = result.get("requests") or {}
    if req.get("server"):
        by = req["server"].get("by_reason") or {}
        c = req["client"]
        out.append(("Requests finished", f"{_int(req['server']['finished'])}"
                    + (" (" + ", ".join(f"{k} {_int(v)}" for k, v in by.items()) + ")" if by else ""),
                    f"{c['succeeded']} succeeded, {c['failed']} failed, {c['cancelled']} cancelled",
                    "agree" if req.get("agree") else "DIFFER"))
    tok = result.get("tokens") or {}
    for label in ("prompt", "generation"):
        e = tok.get(label)
        if e and e.get("server") is not None:
            pct = e.get("diff_pct")
            out.append((f"{label.capitalize()} tokens", _int(e["server"]),
                        f"{_int(e['client'])} ({tok.get('source')})",
                        ("agree" if e.get("agree") else "DIFFER") + (f" ({pct:+.1f} %)" if pct is not None else "")))
    for name, label in rc.LATENCIES:
        lat = (result.get("latency") or {}).get(name)
        if not lat or "median" not in lat:
            continue
        med, mean = lat["median"], lat["mean"]
        a, b = med["server_bucket_ms"]
        out.append((f"{label} median, ms", f"in {_num(a)}–{_num(b) if b is not None else '∞'}",
                    f"{_num(med['client_ms'])} ({_num(med['client_ci_ms'][0])}–{_num(med['client_ci_ms'][1])})",
                    f"extra {_span(med['extra_ms'])}; resolution {_num(med['resolution_ms'])} ms"
                    if med.get("resolution_ms") is not None else f"extra {_span(med['extra_ms'])}"))
        out.append((f"{label} mean, ms", _num(mean["server_ms"]), _num(mean["client_ms"]),
                    f"extra {_num(mean['extra_ms'], sign=True)}" + (" (exact: same requests)" if mean["paired"]
                                                                    and not mean.get("server_only") else
                                                                    f" ({_span(mean['extra_ci_ms'])})" if mean["paired"]
                                                                    else " (not the same requests)")))
        verdict = {"agree": "agree", "unresolved": "no disagreement shown; resolution too coarse to agree",
                   "client lag": "no flag: within the client's own event-loop lag",
                   "client slower": "DIFFER: client slower", "server slower": "DIFFER: server slower"}
        out.append((f"{label} verdict", "", "", f"{verdict.get(lat.get('verdict'), '-')}: extra "
                                                 f"{_span(lat.get('extra_ms'))}"))
    q = result.get("queue_time")
    if q:
        out.append(("Server queue time, mean ms", _num(q["server_mean_ms"]), "", ""))
    p = result.get("prefix_cache")
    if p:
        out.append(("Prefix-cache hit rate", _pct(p["hit_rate"]) + " %",
                    f"workload built for {_pct(p['target'])} %" if p.get("target") is not None else "",
                    ""))
    s = result.get("spec_decode")
    if s:
        out.append(("Spec-decode acceptance", f"{_pct(s['acceptance'])} % of {_int(s['drafted'])}", "", ""))
    return out


class _View:
    """The time series of one run, server and client on the scrape grid."""

    def __init__(self, sm: series.ServerMetrics, client: rc.ClientRun, t0: float):
        self.sm, self.client, self.t0 = sm, client, t0
        self.x = sm.t - t0
        end = float(np.nanmax(client.end)) - t0
        self.xrange = (min(0.0, float(self.x.min())), max(end, float(self.x.max()), 1e-3))
        self.xlabel = "seconds since the first request was sent"
        data = run_data(client.cols, "default", client.stream)
        self.tok_time = data.tok_time + data.t0 - t0
        self.tok_weight = data.tok_weight
        # stages in time order, by their first send (warm-up included)
        names = [s for s in dict.fromkeys(client.stage[np.argsort(client.t_send, kind="stable")]) if s != "total"]
        self.stages = [(s, float(np.nanmin(client.t_send[client.stage == s])) - t0) for s in names]

    def _chart(self, title, ylabel, ymax, key, height=200, percent=False):
        c = svg.Chart(title, self.xlabel, ylabel, width=WIDE, height=height, xrange=self.xrange, xtight=True,
                      yrange=(0, 100) if percent else (0, max(ymax, 1e-9) * 1.08), ytight=percent, key=key)
        for i, (name, x) in enumerate(self.stages):
            c.vline(x, str(name), cls="stg", row=i % 3)
        return c

    def in_flight(self) -> np.ndarray:
        """The client's requests open at each scrape instant (sent, last event not yet read). A request cut
        short at the stop kept no event: it was in flight until the test stopped (the run's last end)."""
        c = self.client
        end = np.where(c.cancelled & (c.end <= c.t_send), np.nanmax(c.end), c.end)
        s = np.sort(c.t_send[np.isfinite(c.t_send)])
        e = np.sort(end[np.isfinite(end)])
        return (np.searchsorted(s, self.sm.t, "right") - np.searchsorted(e, self.sm.t, "right")).astype(float)

    def charts(self) -> list[dict]:
        sm, x, out = self.sm, self.x, []
        running, waiting, flight = sm.gauge("running"), sm.gauge("waiting"), self.in_flight()
        top = np.nanmax(np.concatenate([running, waiting, flight, [1]]))
        c = self._chart("Requests: server running and waiting, client in flight (at each scrape)", "requests",
                        top, "sm-requests", 220)
        c.line(x, running, "c0", label="server running")
        c.line(x, waiting, "c1", label="server waiting")
        c.line(x, flight, "c2", label="client in flight", dash=True)
        out.append({"key": "sm-requests", "svg": c.svg(), "note": "" if sm.has("running") else
                    f"{sm.label} exports no running/waiting gauges: client only."})

        kv = sm.gauge("kv_usage") * 100
        if np.isfinite(kv).any():
            c = self._chart("KV-cache usage, %", "%", max(np.nanmax(kv), 10), "sm-kv")
            c.line(x, kv, "c4", label="KV cache in use")
            out.append({"key": "sm-kv", "svg": c.svg(), "note": ""})

        edges = sm.t
        if edges.size >= 2:
            dt = np.diff(edges)
            client_rate = np.histogram(self.tok_time + self.t0, bins=edges, weights=self.tok_weight)[0] / dt
            server_rate = series.steps(sm.counter("generation_tokens")) / dt if sm.has("generation_tokens") else None
            top = np.nanmax(np.concatenate([client_rate, server_rate if server_rate is not None else [], [1]]))
            c = self._chart("Generated tokens per second, per interval between scrapes", "token/s", top, "sm-tokens", 220)
            xs = np.append(x[:-1], x[-1])
            if server_rate is not None:
                c.line(xs, np.append(server_rate, server_rate[-1]), "c0", step=True, label="server")
            c.line(xs, np.append(client_rate, client_rate[-1]), "c2", step=True, label="client", dash=True)
            out.append({"key": "sm-tokens", "svg": c.svg(), "note": "" if server_rate is not None else
                        f"{sm.label} exports no generation-token counter: client only."})
            rates = self._rates(dt)
            if rates:
                title = " and ".join(label for label, _ in rates)
                c = self._chart(f"{title[0].upper()}{title[1:]}, % per interval between scrapes", "%", 100,
                                "sm-cache", percent=True)
                for (label, values), cls in zip(rates, ("c5", "c6")):
                    c.line(xs, np.append(values, values[-1]) * 100, cls, step=True, label=label)
                out.append({"key": "sm-cache", "svg": c.svg(), "note": ""})
        return out

    def _rates(self, dt) -> list[tuple[str, np.ndarray]]:
        sm, out = self.sm, []
        if sm.has("prefix_hits") and sm.has("prefix_queries"):
            q = series.steps(sm.counter("prefix_queries"))
            out.append(("prefix-cache hit rate", np.where(q > 0, series.steps(sm.counter("prefix_hits")) / np.where(
                q > 0, q, 1), np.nan)))
        elif sm.has("prefix_hit_rate"):
            out.append(("prefix-cache hit rate", sm.gauge("prefix_hit_rate")[1:]))
        if sm.has("spec_draft") and sm.has("spec_accepted"):
            d = series.steps(sm.counter("spec_draft"))
            out.append(("spec-decode acceptance", np.where(d > 0, series.steps(sm.counter("spec_accepted")) / np.where(
                d > 0, d, 1), np.nan)))
        return [(label, v) for label, v in out if np.nan_to_num(v).any()]  # an all-zero rate: the table says it

    def stage_rows(self) -> list[dict]:
        """Per stage (only for staged runs): mean running/waiting/KV over the scrapes inside it, and server
        vs client token throughput over the same span (first to last scrape inside the stage)."""
        if len(self.stages) < 2:
            return []
        sm, rows = self.sm, []
        ends = [x for _, x in self.stages[1:]] + [self.xrange[1]]
        for (name, a), b in zip(self.stages, ends):
            idx = sm.inside(self.t0 + a, self.t0 + b)
            row = {"stage": name, "scrapes": int(idx.size), "running": "-", "waiting": "-", "kv": "-",
                   "server_tps": "-", "client_tps": "-"}
            if idx.size:
                for key, canonical, scale in (("running", "running", 1), ("waiting", "waiting", 1),
                                              ("kv", "kv_usage", 100)):
                    v = sm.gauge(canonical)[idx]
                    if np.isfinite(v).any():
                        row[key] = f"{np.nanmean(v) * scale:.1f}"
            if idx.size >= 2:
                i0, i1 = int(idx[0]), int(idx[-1])
                span = float(sm.t[i1] - sm.t[i0])
                if sm.has("generation_tokens"):
                    gen, _ = series.increase(sm.counter("generation_tokens"), i0, i1)
                    row["server_tps"] = f"{gen / span:.1f}" if math.isfinite(gen) else "-"
                t = self.tok_time + self.t0
                sel = (t > sm.t[i0]) & (t <= sm.t[i1])
                row["client_tps"] = f"{float(self.tok_weight[sel].sum()) / span:.1f}"
            rows.append(row)
        return rows


def _num(v, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:+.1f}" if sign else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"


def _span(r) -> str:
    if not r:
        return "-"
    lo, hi = r
    lo = "-∞" if lo is None else _num(lo, sign=True)
    hi = "+∞" if hi is None else _num(hi, sign=True)
    return f"{lo} ms" if lo == hi else f"{lo} to {hi} ms"


def _int(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"
