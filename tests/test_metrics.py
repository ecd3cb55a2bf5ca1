"""Metric maths and table output: AISBench golden files, and hand-computed values for the default profile."""
from __future__ import annotations

import csv
import json
import os
import random
import warnings

import numpy as np
import pytest

from benchmark import metrics, tables
from benchmark.records import new_record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(os.path.dirname(ROOT), "shared", "reference", "aisbench")
BOX_CHARS = tuple("╒│╞├╘")


# ------------------------------------------------------------------------------------------------
# helpers


def aisbench_records(run: str) -> list[dict]:
    """AISBench's per-request time points as records: t_send = first point, one event per later point."""
    out = []
    with open(os.path.join(REFERENCE, f"{run}_requests.jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            tp, kinds = r["time_points_s"], r["event_kinds"]
            out.append(new_record(
                id=r["id"], t_send=tp[0], events=[[t - tp[0], k, 1] for t, k in zip(tp[1:], kinds[1:])],
                input_tokens=r["input_tokens"], output_tokens=r["output_tokens"], token_source="usage",
                success=r["success"], error=r["error"]))
    return out


def rec(t_send, events, inp=0, out=0, success=True, **kw):
    return new_record(t_send=t_send, events=[list(e) for e in events], input_tokens=inp, output_tokens=out,
                      success=success, **kw)


def perf_row(res, metric, stage="total"):
    df = res.perf
    row = df[(df["Performance Parameters"] == metric) & (df["Stage"] == stage)]
    assert len(row) == 1, (metric, stage)
    return row.iloc[0]


def common(res, metric, stage="total"):
    df = res.common
    row = df[(df["Common Metric"] == metric) & (df["Stage"] == stage)]
    assert len(row) == 1, (metric, stage)
    return row.iloc[0]["Value"]


def assert_stats(res, metric, expected, n, stage="total"):
    """expected: Average, Min, Max, Median, P75, P90, P99 in display units."""
    row = perf_row(res, metric, stage)
    assert [row[s] for s in metrics.STATS] == pytest.approx(expected, abs=1e-9), metric
    assert row["N"] == n, metric


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(BOX_CHARS)]


# ------------------------------------------------------------------------------------------------
# golden: AISBench's own tables from the same time points


@pytest.mark.parametrize("run", ["run3", "run5"])
def test_aisbench_golden_files(run, tmp_path):
    res = metrics.compute(aisbench_records(run), profile="aisbench", max_concurrency=4)
    csv_path, json_path = tables.write(res, str(tmp_path / "perf"), "gsm8k")
    assert csv_path == str(tmp_path / "perf" / "gsm8k.csv")
    assert json_path == str(tmp_path / "perf" / "gsm8k.json")

    with open(os.path.join(REFERENCE, f"{run}_aisbench_table.csv"), newline="", encoding="utf-8") as f:
        want_csv = list(csv.reader(f))
    with open(csv_path, newline="", encoding="utf-8") as f:
        got_csv = list(csv.reader(f))
    assert got_csv == want_csv
    with open(os.path.join(REFERENCE, f"{run}_aisbench_table.csv"), "rb") as f:
        want_bytes = f.read()
    with open(csv_path, "rb") as f:
        assert f.read() == want_bytes  # \r\n line ends included

    with open(os.path.join(REFERENCE, f"{run}_aisbench_table.json"), encoding="utf-8") as f:
        want = json.load(f)
    with open(json_path, encoding="utf-8") as f:
        got = json.load(f)
    for key, stages in want.items():
        for stage, value in stages.items():
            assert got[key][stage] == value and type(got[key][stage]) is type(value), (key, got[key][stage])
    # same keys in the same order, plus our measured Peak In-Flight right after Max Concurrency
    keys = list(want)
    keys.insert(keys.index("Max Concurrency") + 1, "Peak In-Flight")
    assert list(got) == keys
    assert got["Peak In-Flight"] == {"total": 4}


def test_aisbench_golden_console():
    res = metrics.compute(aisbench_records("run3"), profile="aisbench", max_concurrency=4)
    with open(os.path.join(REFERENCE, "run3_aisbench_console.txt"), encoding="utf-8") as f:
        want = table_lines(f.read())
    got = tables.console(res).splitlines()
    # AISBench has no Peak In-Flight row: drop it and the rule under it, the rest must match exactly
    at = next(i for i, line in enumerate(got) if line.startswith("│ Peak In-Flight "))
    assert got[at + 1].startswith("├")
    del got[at:at + 2]
    assert got == want


def test_aisbench_rounding_is_on_statistics_not_samples():
    # run3's E2EL P75 is 737.8 ms from the raw samples; rounding each sample to 0.1 ms first gives 737.9
    recs = aisbench_records("run3")
    res = metrics.compute(recs, profile="aisbench")
    e2el = np.array([r["events"][-1][0] for r in recs])
    assert perf_row(res, "E2EL")["P75"] == 737.8
    assert round(round(np.percentile(np.round(e2el, 4), 75), 4) * 1000, 4) == 737.9
    # without max_concurrency, Max Concurrency is the measured peak
    assert common(res, "Max Concurrency") == 4


# ------------------------------------------------------------------------------------------------
# default profile, values worked out by hand from DESIGN.md's definitions
#
#   A: t_send 100.00  role .10, content .15 .20 .30, usage .31    in 10, out 6 (multi-token chunks)
#      TTFT .15  E2EL .31  ITL .05 .10 (usage and role not gaps)  TPOT (.31-.15)/5 = .032
#   B: t_send 100.05  role .05, reasoning .20 .26, content .40, usage .45   in 20, out 4
#      TTFT .20  E2EL .45  ITL .06 .14   TPOT (.45-.20)/3 = .083333..
#   C: t_send 100.20  role .10, content .30, usage .35   in 30, out 1  (1 token: TPOT 0, not in N)
#      TTFT .30  E2EL .35  no ITL gap
#   D: t_send 100.30  failed before any event (HTTP 500)
#   E: t_send 100.10  failed after events: role .10, content .90 (counts for Peak In-Flight only)
#
# Successes span 100.00 .. 100.55 (C ends at 100.20 + .35): D = 0.55 s.
# At 100.20 A, B, E and C are all open: peak in-flight 4.

A = rec(100.00, [(.10, "role", 0), (.15, "content", 3), (.20, "content", 4), (.30, "content", 2),
                 (.31, "usage", 0)], inp=10, out=6)
B = rec(100.05, [(.05, "role", 0), (.20, "reasoning", 5), (.26, "reasoning", 5), (.40, "content", 1),
                 (.45, "usage", 0)], inp=20, out=4)
C = rec(100.20, [(.10, "role", 0), (.30, "content", 1), (.35, "usage", 0)], inp=30, out=1)
D = rec(100.30, [], success=False, error="Injected Failure", http_status=500)
E = rec(100.10, [(.10, "role", 0), (.90, "content", 3)], success=False, error="stream ended early")
HAND = [A, B, C, D, E]


def test_default_profile_per_request_metrics():
    res = metrics.compute(HAND)
    assert res.profile == "default" and res.stream
    # E2EL ms, sorted 310 350 450: P75 at index 1.5 -> 400, P90 at 1.8 -> 430, P99 at 1.98 -> 448
    assert_stats(res, "E2EL", [370, 310, 450, 350, 400, 430, 448], 3)
    # TTFT ms, sorted 150 200 300: P75 250, P90 280, P99 298
    assert_stats(res, "TTFT", [650 / 3, 150, 300, 200, 250, 280, 298], 3)
    # TPOT ms 32, 83.333, 0 (the 1-token request is a 0 sample, and not counted in N)
    tpot_b = 250 / 3
    s = sorted([32, tpot_b, 0])
    assert_stats(res, "TPOT", [(32 + tpot_b) / 3, 0, tpot_b, 32,
                               s[1] + .5 * (s[2] - s[1]), s[1] + .8 * (s[2] - s[1]), s[1] + .98 * (s[2] - s[1])], 2)
    # ITL ms pooled 50 100 60 140, sorted 50 60 100 140: median 80, P75 (2.25) 110, P90 (2.7) 128, P99 (2.97) 138.8
    assert_stats(res, "ITL", [87.5, 50, 140, 80, 110, 128, 138.8], 2)
    assert_stats(res, "InputTokens", [20, 10, 30, 20, 25, 28, 29.8], 3)
    assert_stats(res, "OutputTokens", [11 / 3, 1, 6, 4, 5, 5.6, 5.96], 3)
    otp = sorted([6 / .31, 4 / .45, 1 / .35])
    assert_stats(res, "OutputTokenThroughput",
                 [sum(otp) / 3, otp[0], otp[2], otp[1], otp[1] + .5 * (otp[2] - otp[1]),
                  otp[1] + .8 * (otp[2] - otp[1]), otp[1] + .98 * (otp[2] - otp[1])], 3)
    pre = sorted([10 / .15, 20 / .20, 30 / .30])  # 66.67, 100, 100
    assert_stats(res, "PrefillTokenThroughput", [sum(pre) / 3, pre[0], 100, 100, 100, 100, 100], 3)
    # B has reasoning events: TTFO and the token split follow (tests/test_reasoning_multitoken.py)
    assert list(res.perf["Performance Parameters"]) == [m for m in metrics.PERF_METRICS
                                                        if m not in metrics.SCHED_METRICS] + list(metrics.REASONING_METRICS)
    assert list(res.perf.columns) == list(metrics.PERF_COLUMNS)


def test_default_profile_common_metrics():
    res = metrics.compute(HAND)
    d = 0.55
    want = {
        "Benchmark Duration": 550.0,
        "Total Requests": 5, "Failed Requests": 2, "Success Requests": 3,
        "Concurrency": (.31 + .45 + .35) / d,
        "Max Concurrency": 4, "Peak In-Flight": 4,
        "Request Throughput": 3 / d,
        "Total Input Tokens": 60,
        "Prefill Token Throughput": 60 / (.15 + .20 + .30),
        "Total Generated Tokens": 11,
        "Input Token Throughput": 60 / d, "Output Token Throughput": 11 / d, "Total Token Throughput": 71 / d,
    }
    # B's reasoning events: the split's totals follow; B has no count, so they are unknown (NaN, "-")
    assert list(res.common["Common Metric"]) == list(want) + [m for m, _ in metrics.REASONING_COMMON]
    assert np.isnan(common(res, "Total Reasoning Tokens")) and np.isnan(common(res, "Total Answer Tokens"))
    for name, value in want.items():
        assert common(res, name) == pytest.approx(value, rel=1e-9), name
    units = dict(zip(res.common["Common Metric"], res.common["Unit"]))
    assert units["Benchmark Duration"] == "ms" and units["Request Throughput"] == "req/s"
    assert units["Output Token Throughput"] == "token/s" and units["Concurrency"] == ""
    # a configured max concurrency wins over the measured peak, which stays in its own row
    res = metrics.compute(HAND, max_concurrency=8)
    assert common(res, "Max Concurrency") == 8 and common(res, "Peak In-Flight") == 4


def test_default_profile_display():
    res = metrics.compute(HAND)
    rows = {r[0]: r for r in tables.perf_rows(res)}
    assert rows["E2EL"][2:] == ["370.000 ms", "310.000 ms", "450.000 ms", "350.000 ms", "400.000 ms",
                                "430.000 ms", "448.000 ms", "3"]
    assert rows["InputTokens"][2] == "20.0"
    assert rows["PrefillTokenThroughput"][3] == f"{10 / .15:.4f} token/s"
    values = tables.common_dict(res)
    assert values["Benchmark Duration"] == {"total": "550.000 ms"}
    assert values["Concurrency"] == {"total": round(1.11 / .55, 4)}
    assert values["Request Throughput"] == {"total": f"{3 / .55:.4f} req/s"}
    assert values["Total Input Tokens"] == {"total": 60}
    text = tables.console(res)
    assert "│ PrefillTokenThroughput   │ total   │" in text
    assert "│ Peak In-Flight           │ total   │ 4" in text


def test_aisbench_profile_counts_every_event():
    # A alone: TTFT at the role chunk (.10); ITL over all gaps .05 .05 .10 .01 (usage included)
    res = metrics.compute([A], profile="aisbench")
    assert perf_row(res, "TTFT")["Average"] == 100.0
    assert perf_row(res, "ITL")["Average"] == 52.5  # (.05+.05+.10+.01)/4 = .0525 s
    assert perf_row(res, "ITL")["Min"] == 10.0
    assert perf_row(res, "TPOT")["Average"] == 42.0  # (.31-.10)/5
    assert "PrefillTokenThroughput" not in set(res.perf["Performance Parameters"])
    assert common(res, "Prefill Token Throughput") == 100.0  # 10 / .10


def test_zero_gaps_do_not_count_as_decoding():
    # every gap is zero (one burst): the request is not counted in TPOT/ITL N, its zero gaps still pool
    burst = rec(0.0, [(.1, "content", 1), (.1, "content", 1), (.1, "content", 1)], inp=1, out=3)
    res = metrics.compute([burst, A])
    assert perf_row(res, "ITL")["N"] == 1
    assert perf_row(res, "ITL")["Min"] == 0.0
    assert perf_row(res, "TPOT")["N"] == 1


def test_stages():
    recs = [
        rec(0.0, [(.1, "role", 0), (.2, "content", 1), (.5, "content", 1)], inp=5, out=2, stage="ramp"),
        rec(0.1, [(.3, "content", 1), (.4, "content", 1), (.6, "usage", 0)], inp=7, out=2, stage="steady"),
        rec(1.0, [(.2, "content", 1), (.3, "content", 1)], inp=9, out=2, stage="steady"),
        rec(1.1, [], success=False, error="x", stage="ramp"),
    ]
    res = metrics.compute(recs)
    assert list(res.perf["Stage"][:3]) == ["total", "ramp", "steady"]
    assert list(res.perf["Performance Parameters"][:3]) == ["E2EL"] * 3
    assert list(res.common["Stage"].unique()) == ["total", "ramp", "steady"]
    # ramp: one success, gap .3; steady: gaps .1 and .1
    assert_stats(res, "ITL", [300] * 7, 1, stage="ramp")
    assert_stats(res, "ITL", [100] * 7, 2, stage="steady")
    assert perf_row(res, "ITL")["N"] == 3
    assert_stats(res, "TTFT", [250, 200, 300, 250, 275, 290, 299], 2, stage="steady")
    assert common(res, "Total Requests", "ramp") == 2 and common(res, "Failed Requests", "ramp") == 1
    assert common(res, "Total Requests", "steady") == 2
    # steady spans 0.1 .. 1.3 (1.0 + .3): 1.2 s
    assert common(res, "Benchmark Duration", "steady") == pytest.approx(1200)
    assert common(res, "Benchmark Duration", "total") == pytest.approx(1300)
    written = tables.common_dict(res)["Total Requests"]
    assert written == {"total": 4, "ramp": 2, "steady": 2}
    # a single stage named "total" gives no extra row set
    assert set(metrics.compute([A, B]).perf["Stage"]) == {"total"}


@pytest.mark.parametrize("records", [[], [D, rec(1.0, [], success=False, error="y")], [E]],
                         ids=["empty", "all-failed", "failed-with-events"])
@pytest.mark.parametrize("profile", ["default", "aisbench"])
def test_all_failed_gives_zeros(records, profile, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division warnings either
        res = metrics.compute(records, profile=profile)
        text = tables.console(res)
        tables.write(res, str(tmp_path), "d")
    assert (res.perf["N"] == 0).all()
    assert (res.perf[list(metrics.STATS)] == 0).all().all()
    values = dict(zip(res.common["Common Metric"], res.common["Value"]))
    assert values["Total Requests"] == len(records) and values["Failed Requests"] == len(records)
    assert values["Success Requests"] == 0 and values["Benchmark Duration"] == 0
    assert values["Request Throughput"] == 0 and values["Concurrency"] == 0
    assert values["Prefill Token Throughput"] == 0
    assert values["Peak In-Flight"] == (1 if records == [E] else 0)
    assert "Benchmark Duration" in text


def test_non_stream():
    # one event per request: the whole answer at once, no TTFT
    recs = [rec(0.0, [(.5, "content", 10)], inp=4, out=8), rec(0.2, [(.7, "content", 10)], inp=6, out=8)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = metrics.compute(recs)
        forced = metrics.compute([A, B, C], stream=False)
    assert not res.stream
    for metric in ("TTFT", "TPOT", "ITL", "PrefillTokenThroughput"):
        row = perf_row(res, metric)
        assert row["N"] == 0 and all(np.isnan(row[s]) for s in metrics.STATS)
        assert perf_row(forced, metric)["N"] == 0
    assert_stats(res, "E2EL", [600, 500, 700, 600, 650, 680, 698], 2)
    assert_stats(forced, "E2EL", [370, 310, 450, 350, 400, 430, 448], 3)
    assert np.isnan(common(res, "Prefill Token Throughput"))
    assert common(res, "Output Token Throughput") == pytest.approx(16 / .9)  # D = 0.2 + .7 - 0
    rows = {r[0]: r for r in tables.perf_rows(res)}
    assert rows["TTFT"][2:] == ["-"] * 7 + ["0"]
    assert tables.common_dict(res)["Prefill Token Throughput"] == {"total": None}
    assert "│ Prefill Token Throughput │ total   │ -" in tables.console(res)


def test_vectorised_matches_per_request_loop():
    # random records (some without events, some without token events) against a plain per-request loop
    rnd = random.Random(7)
    kinds = ["role", "content", "reasoning", "usage", "other"]
    recs = []
    for i in range(300):
        t, events = 0.0, []
        for _ in range(rnd.choice([0, 1, 2, 3, 8, 20])):
            t += rnd.choice([0.0, rnd.random() / 10])
            events.append([t, rnd.choice(kinds), 1])
        recs.append(rec(i * 0.05, events, inp=rnd.randint(1, 50), out=rnd.randint(0, 30),
                        success=rnd.random() > 0.1, stage=rnd.choice(["a", "b"])))
    res = metrics.compute(recs, stream=True)
    ttft, e2el, itl, decoding = [], [], [], 0
    for r in recs:
        if not r["success"] or not r["events"]:
            continue
        e2el.append(r["events"][-1][0])
        tok = [e[0] for e in r["events"] if e[1] in ("content", "reasoning")]
        if tok:
            ttft.append(tok[0])
        gaps = np.diff(tok)
        itl.extend(gaps)
        decoding += bool(np.any(gaps != 0))
    for metric, samples, n in (("E2EL", e2el, len(e2el)), ("TTFT", ttft, len(ttft)), ("ITL", itl, decoding)):
        a = np.array(samples) * 1000
        want = [a.mean(), a.min(), a.max(), *np.percentile(a, [50, 75, 90, 99])]
        assert_stats(res, metric, want, n)


def test_plain_dicts_with_missing_fields():
    # not built by new_record(): absent stage/tokens/events fall back to defaults
    recs = [{"t_send": 0.0, "events": [[.1, "content", 1], [.3, "content", 1]], "success": True, "output_tokens": 2},
            {"t_send": 0.5, "success": False}]
    res = metrics.compute(recs)
    assert_stats(res, "ITL", [200] * 7, 1)
    assert common(res, "Total Requests") == 2 and common(res, "Total Input Tokens") == 0
    assert set(res.perf["Stage"]) == {"total"}


def test_unknown_profile():
    with pytest.raises(ValueError, match="profile"):
        metrics.compute([A], profile="lmdeploy")


def test_failure_summary():
    recs = [
        A,
        rec(1, [], success=False, error="Injected Failure", http_status=500),
        rec(2, [], success=False, error="Read timed out after 30.12 s"),
        rec(3, [], success=False, error="Injected Failure", http_status=500),
        rec(4, [], success=False, error="Read timed out after 31.5 s"),
        rec(5, [], success=False, error="", http_status=429),
        rec(6, [], success=False, error="x" * 300),
    ]
    df = metrics.failure_summary(recs)
    assert list(df.columns) == ["reason", "count", "first_example"]
    assert list(df["count"]) == [2, 2, 1, 1]
    assert df.iloc[0].tolist() == ["Injected Failure", 2, "Injected Failure (HTTP 500)"]
    assert df.iloc[1]["reason"] == "Read timed out after <n> s"
    assert df.iloc[1]["first_example"] == "Read timed out after 30.12 s"
    assert df.iloc[2].tolist() == ["HTTP 429", 1, "HTTP 429"]
    assert len(df.iloc[3]["reason"]) == 120
    assert metrics.failure_summary([A]).empty
    assert list(metrics.failure_summary([]).columns) == ["reason", "count", "first_example"]


def test_open_loop_rows_count_the_wait_at_the_client():
    """Records with a scheduled time get QueueDelay and the queue-inclusive E2EL (vLLM's)."""
    recs = [new_record(t_send=10.0 + i, t_sched=10.0 + i - d, success=True, output_tokens=2, input_tokens=4,
                       events=[[0.1, "content", 1], [0.3, "content", 1]])
            for i, d in enumerate((0.0, 0.02, 0.04))]
    res = metrics.compute(recs)
    rows = {r[0]: r for r in res.perf.itertuples(index=False)}
    assert rows["QueueDelay"][2] == pytest.approx(20.0)       # Average, ms
    assert rows["QueueDelay"][4] == pytest.approx(40.0)       # Max
    assert rows["E2ELFromSched"][2] == pytest.approx(320.0)   # 300 ms E2EL + 20 ms average wait
    assert "QueueDelay" not in set(metrics.compute([dict(r, t_sched=None) for r in recs]).perf.iloc[:, 0])
