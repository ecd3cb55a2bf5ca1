"""Schedule adherence of a run with scheduled send times (a trace replay, open-loop arrivals): how late
requests left the client after they were due, so a replay that could not keep up is visible.

The lag is the tables' QueueDelay (metrics.py: t_send - t_sched, epoch s, over the successful requests,
warm-up left out): the same samples, so the line's p50/p99 are the QueueDelay row's Median/P99. A
request counts as late above LATE_MS. Why it was late: at its due time, were all `-u` users busy (the
records in flight, failed ones included, reached the user count)? Then the cap held it (raise -u);
otherwise the client itself was slow to wake up and send (see the Client health line).
"""
from __future__ import annotations

import numpy as np

LATE_MS = 10.0  # a scheduled request sent later than this is late (the loop wakes within ~1-5 ms when idle)


def _ends(cols) -> np.ndarray:
    """Each request's end (epoch s): its last event, or its send time when it has none."""
    last = np.full(cols.n, 0.0)
    has = cols.counts > 0
    if has.any():
        idx = np.cumsum(cols.counts)[has] - 1
        last[has] = cols.offsets[idx]
    return cols.t_send + last


def adherence(cols, users: int | None = None) -> dict | None:
    """{n, p50_ms, p99_ms, max_ms, late, late_busy} for a run whose records carry t_sched; None else.
    Call before metrics.compute (it consumes cols' event offsets)."""
    if cols.t_sched is None or not cols.n:
        return None
    ok = cols.success & np.isfinite(cols.t_sched) & np.isfinite(cols.t_send)
    lag_ms = (cols.t_send[ok] - cols.t_sched[ok]) * 1000.0
    if not lag_ms.size:
        return None
    late = lag_ms > LATE_MS
    out = {"n": int(lag_ms.size), "p50_ms": float(np.percentile(lag_ms, 50)),
           "p99_ms": float(np.percentile(lag_ms, 99)), "max_ms": float(lag_ms.max()),
           "late": int(late.sum()), "late_busy": None, "late_ms": LATE_MS, "users": users}
    if users and out["late"]:
        sent = np.isfinite(cols.t_send)
        starts, ends = np.sort(cols.t_send[sent]), np.sort(_ends(cols)[sent])
        due = cols.t_sched[ok][late]
        # requests in flight at each late request's due time (it has not started yet: not counted)
        in_flight = np.searchsorted(starts, due, "right") - np.searchsorted(ends, due, "right")
        out["late_busy"] = int((in_flight >= users).sum())
    return out


def line(a: dict | None) -> str:
    """The console line (empty when the run had no scheduled sends)."""
    if not a:
        return ""
    text = (f"Schedule: {a['n']} requests sent after their scheduled time by p50 {a['p50_ms']:.1f} ms, "
            f"p99 {a['p99_ms']:.1f} ms, max {a['max_ms']:.1f} ms; ")
    if not a["late"]:
        return text + f"all within {a['late_ms']:g} ms of their time: the schedule was kept"
    share = 100.0 * a["late"] / a["n"]
    text += f"LATE: {a['late']} ({share:.1f} %) sent more than {a['late_ms']:g} ms late"
    busy = a.get("late_busy")
    if busy is None:
        return text
    if busy:
        who = "the one user" if a["users"] == 1 else f"all {a['users']} users"
        text += f"; {busy} of them found {who} busy (raise -u)"
    if busy < a["late"]:
        text += f"; {a['late'] - busy} with a user free: the client was slow to send (see Client health)"
    return text
