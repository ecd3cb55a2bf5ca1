"""server_metrics.jsonl read back: the server's own figures per scrape, by canonical name.

    sm = load("reports/<run>/server_metrics.jsonl")    # None when the file is absent or holds no line
    sm.gauge("running"), sm.counter("generation_tokens"), sm.histogram("ttft"), sm.window(t0, t1)

Each scrape line is reduced on reading to the canonical quantities (engines.KINDS) of the engine it
recognised, so a long run's file (thousands of scrapes of a large page) never sits in memory as dicts.
Counters are cumulative as the server reports them; `increase` turns two scrapes into a delta that
survives a counter reset (the server restarted: the value went down), and says where it happened.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import orjson

from . import engines

# gauges that are shares (0..1): averaged over label sets (several engine processes), not summed
SHARE_GAUGES = frozenset({"kv_usage", "prefix_hit_rate"})


@dataclass
class Histogram:
    """Cumulative bucket counts per scrape: bounds (seconds, ascending, +Inf last), counts[scrape, bound],
    sum and count per scrape (NaN where the scrape lacked the family)."""
    bounds: np.ndarray
    counts: np.ndarray
    sum: np.ndarray
    count: np.ndarray


@dataclass
class ServerMetrics:
    path: str
    url: str | None
    interval_s: float | None
    engine: engines.Engine | None
    engine_name: str | None           # as the scraper wrote it (None: not recognised)
    t: np.ndarray                     # epoch s of each successful scrape (midpoint of its request)
    dt: np.ndarray                    # how long each scrape took, s
    events: list = field(default_factory=list)   # {"kind": "error"|"recovered", "t", "reason"} in file order
    end: dict | None = None           # the scraper's end line (None: it never wrote one)
    skipped: int = 0                  # unreadable lines (a cut last line, ...)
    families: list = field(default_factory=list)  # family names of the first full scrape (the reference)
    _gauges: dict = field(default_factory=dict)      # canonical -> array per scrape
    _counters: dict = field(default_factory=dict)    # canonical -> (total array, {label value: array})
    _hists: dict = field(default_factory=dict)       # canonical -> Histogram
    _names: dict = field(default_factory=dict)       # canonical -> family name used

    @property
    def n(self) -> int:
        return int(self.t.size)

    @property
    def label(self) -> str:
        """The engine as a user names it, or why there is none."""
        if self.engine is not None:
            return self.engine.label
        return f"unknown engine ({self.engine_name})" if self.engine_name else "unknown engine: raw families kept"

    def family(self, canonical: str) -> str | None:
        """The family name this run's scrapes used for `canonical` (None: the engine has none)."""
        return self._names.get(canonical)

    def has(self, canonical: str) -> bool:
        return canonical in self._names

    def gauge(self, name: str) -> np.ndarray:
        """Value per scrape (NaN where the scrape lacked it)."""
        return self._gauges.get(name, np.full(self.n, np.nan))

    def counter(self, name: str, by_label: bool = False):
        """Cumulative value per scrape, summed over label sets; by_label: {label value: values} split on
        the engine's finish-reason label (the only label we split on)."""
        total, parts = self._counters.get(name, (np.full(self.n, np.nan), {}))
        return parts if by_label else total

    def histogram(self, name: str) -> Histogram | None:
        return self._hists.get(name)

    def window(self, t0: float, t1: float) -> tuple[int | None, int | None]:
        """Indices of the scrapes that bracket [t0, t1]: the last that ended at or before t0 and the first
        that began at or after t1 (None where there is none). A scrape's request spans t +- dt/2, and the
        server may have answered at any moment of it, so its edges decide, not its midpoint."""
        if not self.n:
            return None, None
        half = self.dt / 2
        before = np.flatnonzero(self.t + half <= t0)
        after = np.flatnonzero(self.t - half >= t1)
        return (int(before[-1]) if before.size else None), (int(after[0]) if after.size else None)

    def inside(self, t0: float, t1: float) -> np.ndarray:
        """Indices of the scrapes whose midpoint lies in [t0, t1]."""
        return np.flatnonzero((self.t >= t0) & (self.t <= t1))

    def resets(self) -> list[tuple[float, str]]:
        """(epoch s, canonical counter) of every counter that went down between two scrapes."""
        out = []
        for name, (total, _) in self._counters.items():
            out += [(float(self.t[i]), name) for i in _drops(total)]
        for name, h in self._hists.items():
            out += [(float(self.t[i]), name) for i in _drops(h.count)]
        return sorted(out)

    def notes(self, t0: float | None = None) -> list[str]:
        """One line per thing a reader should know: how often it was scraped, when it failed and why
        (once per change, as the scraper writes them), counter resets, a cut file. Times are seconds
        from t0 (the run's first send) when given, else clock times."""
        def when(t):
            if t0 is not None:
                return f"{t - t0:+.1f} s"
            import time
            return time.strftime("%H:%M:%S", time.localtime(t))

        out = []
        if self.n:
            every = f" every {self.interval_s:g} s" if self.interval_s else ""
            took = float(np.nanmedian(self.dt)) * 1000 if self.dt.size else math.nan
            out.append(f"scraped {self.n} time{'s' if self.n != 1 else ''}{every}"
                       + (f" (median {took:.0f} ms per scrape)" if math.isfinite(took) else ""))
        else:
            out.append("no scrape succeeded" + (f" ({self.url})" if self.url else ""))
        down = None
        for e in self.events:
            if e["kind"] == "error":
                out.append(f"scrape failed at {when(e['t'])}: {e['reason']}")
                down = down if down is not None else e["t"]
            elif e["kind"] == "recovered":
                out.append(f"scrapes worked again at {when(e['t'])}"
                           + (f" (after {e['t'] - down:.1f} s)" if down is not None else ""))
                down = None
        for t, name in self.resets():
            out.append(f"counter {self._names.get(name, name)} went down at {when(t)}: the server restarted? "
                       "(counted from zero after it)")
        if self.end is None:
            out.append("no end line: the scraper was stopped before it finished (killed?)")
        if self.skipped:
            out.append(f"{self.skipped} unreadable line(s) skipped (cut short?)")
        return out


def _drops(values: np.ndarray) -> list[int]:
    """Scrape indices where a cumulative series is lower than at the previous scrape that had it."""
    idx = np.flatnonzero(np.isfinite(values))
    v = values[idx]
    return [int(idx[i + 1]) for i in np.flatnonzero(np.diff(v) < 0)]


def increase(values: np.ndarray, i0: int, i1: int) -> tuple[float, list[int]]:
    """How much a cumulative series grew from scrape i0 to i1, and the scrapes where it was reset.

    Prometheus' rule: where a value is below the one before, the counter restarted from zero, so the
    increase over that step is the new value itself (what was counted between the last scrape before the
    restart and the restart is lost: the caller says so). NaN scrapes are stepped over."""
    seg = values[i0:i1 + 1]
    idx = np.flatnonzero(np.isfinite(seg))
    if idx.size < 2:
        return math.nan, []
    v = seg[idx]
    d = np.diff(v)
    drop = d < 0
    d[drop] = v[1:][drop]
    return float(d.sum()), [int(i0 + idx[i + 1]) for i in np.flatnonzero(drop)]


def steps(values: np.ndarray) -> np.ndarray:
    """Per-interval increase between consecutive scrapes (n-1 values; a reset counts from zero; NaN
    where either scrape lacks the value)."""
    d = np.diff(values)
    drop = d < 0
    d[drop] = values[1:][drop]
    return d


def hist_increase(h: Histogram, i0: int, i1: int) -> tuple[np.ndarray, float, float, list[int]]:
    """(bucket counts, sum, count) observed between scrapes i0 and i1, and the reset scrapes.

    A reset is read off the count (every bucket restarts with it), and then the whole row is the increase."""
    rows = np.arange(i0, i1 + 1)
    ok = rows[np.isfinite(h.count[rows])]
    if ok.size < 2:
        return np.full(h.bounds.size, np.nan), math.nan, math.nan, []
    cum, s, c = h.counts[ok], h.sum[ok], h.count[ok]
    reset = np.diff(c) < 0
    dc, ds, dn = np.diff(cum, axis=0), np.diff(s), np.diff(c)
    dc[reset], ds[reset], dn[reset] = cum[1:][reset], s[1:][reset], c[1:][reset]
    return dc.sum(axis=0), float(ds.sum()), float(dn.sum()), [int(ok[i + 1]) for i in np.flatnonzero(reset)]


# ---------------------------------------------------------------------------------------------
# reading


def load(path: str) -> ServerMetrics | None:
    """The scrapes of a server_metrics.jsonl (None: no file, or not one readable line in it)."""
    if not os.path.isfile(path):
        return None
    meta, end, events, scrapes, skipped = None, None, [], [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                skipped += 1
                continue
            kind = obj.get("kind") if isinstance(obj, dict) else None
            if kind == "scrape" and isinstance(obj.get("families"), dict) and _num(obj.get("t")) is not None:
                scrapes.append(obj)
            elif kind == "meta":
                meta = obj
            elif kind in ("error", "recovered") and _num(obj.get("t")) is not None:
                events.append({"kind": kind, "t": float(obj["t"]),
                               "reason": " ".join(str(obj.get("reason") or "").split())[:300]})
            elif kind == "end":
                end = obj
            else:
                skipped += 1
    if meta is None and end is None and not scrapes and not events:
        return None
    meta = meta or {}
    name = next((s.get("engine") for s in scrapes if s.get("engine")), None)
    engine = engines.get(name) if name else None
    if engine is None and scrapes:  # the scraper did not say: try the reference scrape's families
        engine = engines.detect(list(scrapes[0]["families"]))
    sm = ServerMetrics(path=path, url=meta.get("url"), interval_s=_num(meta.get("interval_s")), engine=engine,
                       engine_name=name, t=np.array([float(s["t"]) for s in scrapes]),
                       dt=np.array([_num(s.get("dt")) or 0.0 for s in scrapes]), events=events, end=end,
                       skipped=skipped, families=sorted(scrapes[0]["families"]) if scrapes else [])
    if engine is not None:
        _reduce(sm, engine, scrapes)
    return sm


def _reduce(sm: ServerMetrics, engine: engines.Engine, scrapes: list[dict]) -> None:
    """Fill the canonical series from the scrape lines (then dropped)."""
    n = len(scrapes)
    scale = getattr(engine, "scale", None) or {}  # canonical -> factor to our units, where an engine needs one
    reason_label = engine.finished_reason_label
    gauges: dict = {}
    counters: dict = {}
    hists: dict = {}
    for i, s in enumerate(scrapes):
        fams = s["families"]
        for canonical, kind in engines.KINDS.items():
            fam = engine.family(canonical, fams)
            if fam is None:
                continue
            sm._names.setdefault(canonical, fam)
            samples = (fams[fam] or {}).get("samples") or []
            factor = scale.get(canonical, 1.0)
            if kind == "gauge":
                vals = [v for v in _values(samples, (fam,)) if v is not None]
                if vals:
                    v = sum(vals) / len(vals) if canonical in SHARE_GAUGES else sum(vals)
                    gauges.setdefault(canonical, np.full(n, np.nan))[i] = v * factor
            elif kind == "counter":
                total, parts = counters.setdefault(canonical, (np.full(n, np.nan), {}))
                total[i] = 0.0  # on the page without a sample yet (a labelled counter no request touched)
                got = False
                for sname, labels, v in _samples(samples):
                    if sname not in (f"{fam}_total", fam) or v is None:
                        continue
                    total[i] = (0.0 if not got else total[i]) + v
                    got = True
                    if reason_label and isinstance(labels, dict) and reason_label in labels:
                        part = parts.setdefault(str(labels[reason_label]), np.full(n, np.nan))
                        part[i] = (0.0 if math.isnan(part[i]) else part[i]) + v
            elif kind == "histogram":
                _hist_row(hists.setdefault(canonical, {}), i, fam, samples)
    for total, parts in counters.values():
        for part in parts.values():  # a label value not yet on the page has counted nothing
            part[np.isfinite(total) & np.isnan(part)] = 0.0
    sm._gauges = gauges
    sm._counters = counters
    sm._hists = {name: _hist_arrays(rows, n, scale.get(name, 1.0)) for name, rows in hists.items()
                 if any(b for b, _, _ in rows.values())}


def _hist_row(rows: dict, i: int, fam: str, samples) -> None:
    """One scrape's histogram summed over label sets: {le: count}, sum, count -> rows[i]."""
    buckets: dict = {}
    total_sum = total_count = None
    for sname, labels, v in _samples(samples):
        if v is None:
            continue
        if sname == f"{fam}_bucket" and isinstance(labels, dict) and "le" in labels:
            le = _le(labels["le"])
            if le is not None:
                buckets[le] = buckets.get(le, 0.0) + v
        elif sname == f"{fam}_sum":
            total_sum = (total_sum or 0.0) + v
        elif sname == f"{fam}_count":
            total_count = (total_count or 0.0) + v
    if buckets:
        if total_count is None:
            total_count = buckets.get(math.inf)
        rows[i] = (buckets, total_sum, total_count)
    elif total_count is None:  # on the page with no sample yet: nothing observed
        rows[i] = ({}, 0.0, 0.0)


def _hist_arrays(rows: dict, n: int, factor: float) -> Histogram:
    bounds = sorted({le for b, _, _ in rows.values() for le in b})
    if not bounds or bounds[-1] != math.inf:
        bounds.append(math.inf)
    col = {b: j for j, b in enumerate(bounds)}
    counts = np.full((n, len(bounds)), np.nan)
    s, c = np.full(n, np.nan), np.full(n, np.nan)
    for i, (b, total_sum, total_count) in rows.items():
        if not b and total_count == 0:
            counts[i] = 0.0
        for le, v in b.items():
            counts[i, col[le]] = v
        if math.isnan(counts[i, -1]) and total_count is not None:
            counts[i, -1] = total_count
        s[i] = np.nan if total_sum is None else total_sum * factor
        c[i] = np.nan if total_count is None else total_count
    return Histogram(np.array(bounds) * factor, counts, s, c)


def _samples(samples):
    for smp in samples:
        if isinstance(smp, (list, tuple)) and len(smp) >= 3:
            yield smp[0], smp[1], _num(smp[2])


def _values(samples, names: tuple) -> list:
    return [v for sname, _, v in _samples(samples) if sname in names]


def _le(raw) -> float | None:
    try:
        return float(raw)  # "+Inf" -> inf
    except (TypeError, ValueError):
        return None


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# ---------------------------------------------------------------------------------------------
# the web UI's live figures


def snapshot(scrape_line: dict, engine=None) -> dict:
    """{running, waiting, kv_usage} of one scrape line (None where the engine has no such family or the
    line is not a scrape). engine: an engines.Engine, its name, or None (the line's, else detected)."""
    out = {"running": None, "waiting": None, "kv_usage": None}
    if not isinstance(scrape_line, dict) or not isinstance(scrape_line.get("families"), dict):
        return out
    fams = scrape_line["families"]
    if not isinstance(engine, engines.Engine):
        engine = engines.get(engine or scrape_line.get("engine") or "") or engines.detect(list(fams))
    if engine is None:
        return out
    scale = getattr(engine, "scale", None) or {}
    for canonical in out:
        fam = engine.family(canonical, fams)
        if fam is None:
            continue
        vals = [v for v in _values((fams[fam] or {}).get("samples") or [], (fam,)) if v is not None]
        if vals:
            v = sum(vals) / len(vals) if canonical in SHARE_GAUGES else sum(vals)
            out[canonical] = v * scale.get(canonical, 1.0)
    return out
