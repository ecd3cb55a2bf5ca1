"""Schedule adherence of a run with scheduled send times (a trace replay, open-loop arrivals): how late
requests left the client after they were due, so a replay that could not keep up is visible.

The lag is the tables' QueueDelay (metrics.py: t_send - t_sched, epoch s, over the successful requests,
warm-up left out): the same samples, so the line's p50/p99 are the QueueDelay row's Median/P99. A
request counts as late above LATE_MS. Why it was late: at its due time, were all `-u` users busy? (The
requests ahead of it in due order that had not ended by then, failed ones included, held a user or
waited for one: as many as the users, and the cap held it: raise -u.) Otherwise the client itself was slow to wake up and send (see the Client health line). With several
processes the user count is the run's total while each process caps its own shard: an approximation.
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
        # the requests ahead of a late one (due before it, or at the same time and taken first) that had
        # not ended by its due time held a user or waited for one: as many as the users means it had to
        # wait for the cap. Ahead = its rank in due order; ended = those whose end came by its due time.
        sched = np.isfinite(cols.t_sched) & np.isfinite(cols.t_send)
        due_all = cols.t_sched[sched]
        order = np.argsort(due_all, kind="stable")
        rank = np.empty(order.size, np.int64)
        rank[order] = np.arange(order.size)
        late_at = np.flatnonzero(ok[sched])[late]  # the late ones, as indices among the scheduled
        ends = np.sort(_ends(cols)[sched])
        ahead = rank[late_at] - np.searchsorted(ends, due_all[late_at], "right")
        out["late_busy"] = int((ahead >= users).sum())
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
