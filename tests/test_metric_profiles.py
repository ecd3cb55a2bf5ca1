"""Golden tests of the `vllm` and `guidellm` metric profiles: each tool's formulas re-implemented here, loop by
loop, as its source writes them, over hand-made records, must give our profile's numbers; and one
simulator run re-reported under every profile.

Sources (read at vllm-project/vllm 02cfb534 / 009e6d4a and vllm-project/guidellm ee7a7745):
- vLLM: vllm/benchmarks/lib/endpoint_request_func.py `async_request_openai_chat_completions` (what each
  request's RequestFuncOutput holds), vllm/benchmarks/serve.py `calculate_metrics` and `benchmark`.
- GuideLLM: src/guidellm/backends/openai/http.py `_resolve_streaming`, request_handlers.py
  `ChatCompletionsRequestHandler.add_streaming_line` and `_validate_text_response`,
  src/guidellm/schemas/request_stats.py `GenerativeRequestStats`, benchmark/schemas/metrics.py
  `GenerativeMetrics.compile`, src/guidellm/schemas/statistics.py `DistributionSummary`.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from benchmark import metrics
from benchmark.records import new_record
from conftest import ROOT, run_dirs, run_locust

STAT_COLUMNS = ("Average", "Min", "Max", "Median", "P75", "P90", "P99")
TOKEN_KINDS = ("content", "reasoning")


def rec(t_send, events, out, inp=40, success=True, completion="x", error=""):
    return new_record(t_send=t_send, events=events, output_tokens=out, input_tokens=inp, success=success,
                      completion=completion, error=error, token_source="usage")


def hand_made() -> list[dict]:
    """Role chunks, multi-token events, a reasoning chunk, usage-only final chunks, a finish chunk with an
    empty delta ("other"), a failed request, one-token answers, an empty answer; then a seeded batch."""
    recs = [
        # role chunk before the first text; 3 events carrying 7 tokens; finish chunk; usage-only chunk
        rec(100.000, [[.030, "role", 0], [.120, "content", 9], [.150, "content", 8], [.210, "content", 12],
                      [.212, "other", 0], [.230, "usage", 0]], out=7),
        # reasoning first, then content; usage rides alone at the end
        rec(100.013, [[.080, "role", 0], [.090, "reasoning", 20], [.140, "reasoning", 18],
                      [.175, "content", 4], [.260, "content", 6], [.301, "usage", 0]], out=5),
        # a one-token answer: no TPOT for vLLM (output_len <= 1), no ITL for GuideLLM
        rec(100.027, [[.050, "role", 0], [.060, "content", 2], [.061, "other", 0], [.090, "usage", 0]], out=1),
        # no role chunk, the first text event carries 4 tokens
        rec(100.041, [[.140, "content", 16], [.160, "content", 3], [.200, "content", 5], [.250, "usage", 0]],
            out=6),
        # failed: counted, never measured
        rec(100.055, [[.070, "role", 0], [.080, "content", 3]], out=0, success=False, error="HTTP 500"),
        # an empty answer (finish_reason stop, nothing said): a success to us, an error to GuideLLM
        rec(100.069, [[.040, "role", 0], [.041, "other", 0], [.050, "usage", 0]], out=0, completion=""),
    ]
    rng = random.Random(7)
    for i in range(40):
        t, events = 100.1 + 0.0317 * i, [[round(rng.uniform(.01, .05), 6), "role", 0]]
        at = events[0][0] + rng.uniform(.05, .2)
        n = rng.randint(1, 12)
        tokens = 0
        for _ in range(n):
            k = rng.choice((1, 1, 1, 2, 3))  # several tokens in one event now and then
            events.append([round(at, 6), "content" if rng.random() > .2 else "reasoning", 4 * k])
            tokens += k
            at += rng.expovariate(1 / 0.02)
        events.append([round(at + .001, 6), "usage", 0])
        recs.append(rec(t, events, out=tokens, inp=rng.randint(20, 90)))
    return recs


# --------------------------------------------------------------------------------------- vLLM, as written


def vllm_outputs(records):
    """RequestFuncOutput per record, filled as async_request_openai_chat_completions fills it: every chunk
    with `choices` takes a timestamp (first: ttft, then itl), the usage-only chunk (choices empty) does not;
    latency = the last timestamped chunk. output_tokens: the usage's (our records' output_tokens)."""
    outputs = []
    for r in records:
        o = {"success": False, "ttft": 0.0, "itl": [], "latency": 0.0, "output_tokens": r["output_tokens"],
             "prompt_len": r["input_tokens"], "start_time": r["t_send"]}
        if r["success"]:
            st = r["t_send"]
            first_chunk_received, most_recent_timestamp = False, st
            for offset, kind, _ in r["events"]:
                if kind == "usage":
                    continue
                timestamp = st + offset
                if not first_chunk_received:
                    first_chunk_received = True
                    o["ttft"] = timestamp - st
                else:
                    o["itl"].append(timestamp - most_recent_timestamp)
                most_recent_timestamp = timestamp
            o["success"] = first_chunk_received
            o["latency"] = most_recent_timestamp - st
        outputs.append(o)
    return outputs


def vllm_reference(records, goodput=None):
    """calculate_metrics, as serve.py writes it; dur_s: benchmark()'s wall clock, which records give as
    first send to the last event of any request."""
    outputs = vllm_outputs(records)
    dur_s = max(r["t_send"] + (r["events"][-1][0] if r["events"] else 0) for r in records) - \
        min(r["t_send"] for r in records)
    actual_output_lens, total_input, completed, good_completed = [], 0, 0, 0
    itls, tpots, all_tpots, ttfts, e2els = [], [], [], [], []
    for o in outputs:
        if o["success"]:
            output_len = o["output_tokens"]
            actual_output_lens.append(output_len)
            total_input += o["prompt_len"]
            tpot = 0.0
            if output_len > 1:
                tpot = (o["latency"] - o["ttft"]) / (output_len - 1)
                tpots.append(tpot)
            all_tpots.append(tpot)
            itls += o["itl"]
            ttfts.append(o["ttft"])
            e2els.append(o["latency"])
            completed += 1
        else:
            actual_output_lens.append(0)
    if goodput:
        valid, slo = [], []
        for name, values in (("ttft", ttfts), ("tpot", all_tpots), ("e2el", e2els)):
            if name in goodput:
                valid.append(values)
                slo.append(goodput[name] / 1000)
        good_completed = sum(all(s >= r for s, r in zip(slo, req)) for req in zip(*valid))
    ok = [o for o in outputs if o["success"]]
    # peak output tokens/s: token times from start_time, ttft and itl, in 1 s buckets
    min_start = min(o["start_time"] for o in ok)
    max_end = max(o["start_time"] + o["latency"] for o in ok)
    buckets = np.zeros(int(np.ceil(max_end - min_start)) + 1)
    for o in ok:
        times = [o["start_time"] + o["ttft"]]
        for gap in o["itl"]:
            times.append(times[-1] + gap)
        for t in times:
            b = int(t - min_start)
            if 0 <= b < len(buckets):
                buckets[b] += 1
    events = sorted([(o["start_time"], 1) for o in ok] + [(o["start_time"] + o["latency"], -1) for o in ok])
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)

    def dist(x):  # what it prints (mean, median, percentiles; x1000), and the min/max our table adds
        x = x or 0
        return [np.mean(x) * 1000, np.min(x) * 1000, np.max(x) * 1000, np.median(x) * 1000,
                *(np.percentile(x, p) * 1000 for p in (75, 90, 99))]

    return {
        "TTFT": dist(ttfts), "TPOT": dist(tpots), "ITL": dist(itls), "E2EL": dist(e2els),
        "N": {"TTFT": len(ttfts), "TPOT": len(tpots), "E2EL": len(e2els)},
        "Benchmark Duration": dur_s * 1000, "Success Requests": completed,
        "Failed Requests": len(outputs) - completed, "Total Input Tokens": total_input,
        "Total Generated Tokens": sum(actual_output_lens),
        "Request Throughput": completed / dur_s, "Output Token Throughput": sum(actual_output_lens) / dur_s,
        "Total Token Throughput": (total_input + sum(actual_output_lens)) / dur_s,
        "Goodput": good_completed / dur_s, "Peak In-Flight": peak,
        "Peak Output Token Throughput": float(np.max(buckets)),
    }


# ------------------------------------------------------------------------------------ GuideLLM, as written


def from_values(pairs):
    """DistributionSummary.from_values: (value, weight) pairs -> mean, min, max, median, p75, p90, p99."""
    arr = np.array(pairs, dtype=float).reshape(-1, 2)
    if not len(arr):
        return [0.0] * 7
    sort_ind = np.argsort(arr[:, 0])
    values, weights = arr[sort_ind, 0], arr[sort_ind, 1]
    unique_values, inverse = np.unique(values, return_inverse=True)
    combined = np.zeros_like(unique_values, dtype=float)
    np.add.at(combined, inverse, weights)
    keep = combined > 0
    final_values, final_weights = unique_values[keep], combined[keep]
    total = np.sum(final_weights)
    if total <= 1e-6:
        final_weights = np.ones_like(final_values)
        total = np.sum(final_weights)
    probabilities = final_weights / total
    cdf = np.cumsum(probabilities)
    pct = {p: final_values[np.searchsorted(cdf, p, side="left")] for p in (0.5, 0.75, 0.9, 0.99)}
    mean = np.sum(final_values * probabilities)
    return [mean, final_values[0], final_values[-1], pct[0.5], pct[0.75], pct[0.9], pct[0.99]]


def merge(times, weights, threshold=1e-4):
    """_merge_sorted_times_with_weights: pool equal times, then each time within `threshold` after a run's
    first into that first, pass after pass."""
    times, inverse = np.unique(times, return_inverse=True)
    occurrences = np.zeros_like(times)
    np.add.at(occurrences, inverse, weights)
    while len(times) > 1:
        within = np.diff(times) <= threshold
        if not within.any():
            break
        starts = np.where(np.diff(np.insert(within.astype(int), 0, 0)) == 1)[0]
        ends = np.searchsorted(times, times[starts] + threshold, side="right") - 1
        if len(starts) > 1:
            valid = np.concatenate([[True], starts[1:] > ends[:-1]])
            starts, ends = starts[valid], ends[valid]
        cumsum = np.concatenate(([0.0], np.cumsum(occurrences)))
        occurrences[starts] = cumsum[ends + 1] - cumsum[starts]
        drop = np.zeros(len(times), bool)
        for a, b in zip(starts, ends):
            drop[a + 1:b + 1] = True
        times, occurrences = times[~drop], occurrences[~drop]
    return times, occurrences


def rate_mean(timings, start_time=None, end_time=None, epsilon=1e-6):
    """DistributionSummary.rate_distribution_from_timings(...).mean over (time, weight) pairs."""
    wt = np.array(timings, dtype=float).reshape(-1, 2)
    if start_time is not None:
        wt = np.insert(wt[wt[:, 0] >= start_time], 0, [start_time, 0.0], axis=0)
    if end_time is not None:
        wt = np.append(wt[wt[:, 0] <= end_time], [[end_time, 0.0]], axis=0)
    wt = wt[np.argsort(wt[:, 0])]
    times, occurrences = merge(wt[:, 0], wt[:, 1])
    if len(times) <= 1:
        return 0.0
    midpoints = (times[1:] + times[:-1]) / 2
    durations = np.empty_like(times)
    durations[0] = midpoints[0] - times[0]
    durations[1:-1] = midpoints[1:] - midpoints[:-1]
    durations[-1] = np.clip(times[-1] - midpoints[-1], epsilon, None)
    return from_values(np.column_stack((occurrences / durations, durations)))[0]


def guidellm_reference(records):
    """GenerativeMetrics.compile over GenerativeRequestStats built as _resolve_streaming times them."""
    ok, errored = [], 0
    ends = []
    for r in records:
        start = r["t_send"]
        end = start + (r["events"][-1][0] if r["events"] else 0.0)  # request_end: the stream's end
        ends.append(end)
        if not r["success"]:
            errored += 1
            continue
        first = last = None
        iterations = 0
        for offset, kind, _ in r["events"]:
            if kind not in TOKEN_KINDS:  # add_streaming_line: 1 only with reasoning or content text
                continue
            if first is None:
                first, iterations = start + offset, 0
            last = start + offset
            iterations += 1
        out = r["output_tokens"]
        if not r["completion"].strip() and out <= 0:  # _validate_text_response
            errored += 1
            continue
        ok.append({"start": start, "end": end, "first": first, "last": last, "iters": iterations,
                   "out": out, "prompt": r["input_tokens"]})
    rows = {"TTFT": [], "TPOT": [], "ITL": [], "E2EL": [], "Prompt": [], "Output": []}
    prompt_t, output_t = [], []
    for s in ok:
        ttft = 1000 * (s["first"] - s["start"]) if s["first"] is not None else None
        last_token = s["last"] or s["end"]
        tpot = 1000 * (last_token - s["start"]) / s["out"] if s["out"] else None
        itl = (1000 * (s["last"] - s["first"]) / (s["out"] - 1)
               if s["first"] is not None and s["last"] is not None and s["out"] > 1 else None)
        rows["TTFT"].append((ttft or 0.0, 1.0))
        rows["TPOT"].append((tpot or 0.0, s["out"] or 0.0))
        rows["ITL"].append((itl or 0.0, (s["out"] or 1.0) - 1.0))
        rows["E2EL"].append(((s["end"] - s["start"]) * 1000 or 0.0, 1.0))
        rows["Prompt"].append((s["prompt"], 1.0))
        rows["Output"].append((s["out"], 1.0))
        # prompt_tokens_timing and output_tokens_timings
        prompt_t.append((s["first"] if s["first"] is not None else s["end"], s["prompt"]))
        if s["first"] is None or s["last"] is None or s["iters"] <= 1:
            output_t.append((s["last"] if s["last"] is not None else s["end"], s["out"]))
        else:
            output_t.append((s["first"], 1.0 * bool(s["out"])))
            if s["out"] > 1:
                per_iter = (s["out"] - 1.0) / (s["iters"] - 1.0)
                output_t += [(t, per_iter) for t in np.linspace(s["first"], s["last"], num=s["iters"])[1:]]
    measure_start, measure_end = min(r["t_send"] for r in records), max(ends)
    return {
        **{m: from_values(rows[m]) for m in ("TTFT", "TPOT", "ITL", "E2EL")},
        "InputTokens": from_values(rows["Prompt"]), "OutputTokens": from_values(rows["Output"]),
        "N": {"TTFT": len(ok), "TPOT": sum(1 for _, w in rows["TPOT"] if w > 0),
              "ITL": sum(1 for _, w in rows["ITL"] if w > 0)},
        "Success Requests": len(ok), "Failed Requests": errored,
        "Request Throughput": rate_mean([(s["end"], 1.0) for s in ok], measure_start, measure_end),
        "Input Token Throughput": rate_mean(prompt_t),
        "Output Token Throughput": rate_mean(output_t),
        "Total Token Throughput": rate_mean(prompt_t + output_t),
        "Benchmark Duration": (measure_end - measure_start) * 1000,
        "spans": {"Request Throughput": measure_end - measure_start, **{
            name: np.ptp([t for t, _ in timings]) for name, timings in (
                ("Input Token Throughput", prompt_t), ("Output Token Throughput", output_t),
                ("Total Token Throughput", prompt_t + output_t))}},
    }


# ------------------------------------------------------------------------------------------------ checks


def perf(res, metric):
    row = res.perf[(res.perf["Performance Parameters"] == metric) & (res.perf["Stage"] == "total")].iloc[0]
    return [float(row[c]) for c in STAT_COLUMNS], int(row["N"])


def common(res, name):
    c = res.common
    return float(c[(c["Common Metric"] == name) & (c["Stage"] == "total")]["Value"].iloc[0])


def test_vllm_profile_is_vllm_bench_serves_arithmetic():
    records = hand_made()
    slo = {"ttft": 0.15, "tpot": 0.03}  # vLLM's --goodput ttft:150 tpot:30 (ms)
    want = vllm_reference(records, goodput={"ttft": 150, "tpot": 30})
    res = metrics.compute(records, profile="vllm", slo=slo)
    for metric in ("TTFT", "TPOT", "ITL", "E2EL"):
        got, n = perf(res, metric)
        assert got == pytest.approx(want[metric], rel=1e-9, abs=1e-9), metric
        if metric in want["N"]:
            assert n == want["N"][metric], metric
    for name in ("Benchmark Duration", "Success Requests", "Failed Requests", "Total Input Tokens",
                 "Total Generated Tokens", "Request Throughput", "Output Token Throughput", "Total Token Throughput",
                 "Goodput", "Peak In-Flight", "Peak Output Token Throughput"):
        assert common(res, name) == pytest.approx(want[name], rel=1e-9), name
    # what tells it from the default profile on these records: the role and finish chunks are chunks
    one_vllm, one_default = (metrics.compute(records[:1], profile=p) for p in ("vllm", "default"))
    assert perf(one_vllm, "ITL")[0] == pytest.approx([45.5, 2, 90, 45, 67.5, 81, 89.1])  # gaps 90, 30, 60, 2 ms
    assert perf(one_default, "ITL")[0][1:3] == pytest.approx([30, 60])
    assert perf(one_vllm, "TTFT")[0][0] == pytest.approx(30) and perf(one_default, "TTFT")[0][0] == pytest.approx(120)
    assert perf(one_vllm, "E2EL")[0][0] == pytest.approx(212)  # the usage-only chunk does not end it


def test_guidellm_profile_is_guidellms_arithmetic():
    records = hand_made()
    want = guidellm_reference(records)
    res = metrics.compute(records, profile="guidellm")
    for metric in ("TTFT", "TPOT", "ITL", "E2EL", "InputTokens", "OutputTokens"):
        got, n = perf(res, metric)
        assert got == pytest.approx(want[metric], rel=1e-9, abs=1e-9), metric
        if metric in want["N"]:
            assert n == want["N"][metric], metric
    for name in ("Benchmark Duration", "Success Requests", "Failed Requests"):
        assert common(res, name) == pytest.approx(want[name], rel=1e-9), name
    # a rate is the total over the span of its event times; GuideLLM first merges times within 0.1 ms
    # into the earliest of them, which can end its span up to 0.1 ms sooner (we do not merge)
    for name in ("Request Throughput", "Input Token Throughput", "Output Token Throughput", "Total Token Throughput"):
        ours, theirs, span = common(res, name), want[name], want["spans"][name]
        assert theirs * (span - 1e-4) / span - 1e-9 <= ours <= theirs * (1 + 1e-9), name
    assert common(res, "Failed Requests") == 2  # the HTTP 500 and the empty answer
    from benchmark.tables import empty_note
    assert "count as failures" in empty_note(res) and "as successes" in empty_note(metrics.compute(records))
    # GuideLLM's ITL is one average per request (vLLM's TPOT over token iterations); its TPOT counts the
    # first token: both differ from the default's on these records
    default = metrics.compute(records, profile="default")
    assert perf(res, "TPOT")[0][0] > perf(default, "TPOT")[0][0]
    assert perf(res, "ITL")[1] < perf(default, "ITL")[1] or perf(res, "ITL")[0] != perf(default, "ITL")[0]


def test_guidellm_statistics_weight_and_do_not_interpolate():
    from benchmark.profiles import guidellm_stats
    values, weights = np.array([10.0, 20.0, 30.0, 40.0]), np.array([1.0, 1.0, 1.0, 7.0])
    got, n = guidellm_stats(values, weights)
    assert got == pytest.approx(from_values(np.column_stack((values, weights))))
    assert got[3] == 40.0 and n == 4  # the weighted median is the heavy value, not 25
    assert guidellm_stats(values)[0][3] == 20.0  # unweighted: the lower middle value, no interpolation


def test_stages_and_non_stream_runs_under_the_new_profiles():
    records = hand_made()
    for i, r in enumerate(records):
        r["stage"] = "ramp" if i % 2 else "steady"
    for profile in ("vllm", "guidellm"):
        res = metrics.compute(records, profile=profile)
        assert set(res.perf["Stage"]) == {"total", "ramp", "steady"}
        ok_n = {s: int(res.perf[(res.perf["Performance Parameters"] == "E2EL") & (res.perf["Stage"] == s)]["N"]
                       .iloc[0]) for s in ("ramp", "steady", "total")}
        assert ok_n["ramp"] + ok_n["steady"] == ok_n["total"]
    flat = [dict(r, events=r["events"][-1:]) for r in hand_made()]  # one event each: not streamed
    for profile in ("vllm", "guidellm"):
        res = metrics.compute(flat, profile=profile)
        assert np.isnan(perf(res, "TTFT")[0][0]) and perf(res, "ITL")[1] == 0


def _perf_files(run):
    return {os.path.relpath(p, run): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(run, "performances", "*", "*")))}


def _csv_stats(path):
    return {row[0]: row for row in csv.reader(open(path)) if row and row[1] == "total"}


def test_simulator_run_re_reported_under_every_profile(tmp_path, start_sim):
    sim = start_sim("--ttft-ms", "60", "--itl-ms", "10")
    res = run_locust(tmp_path, "--host", sim.url, "-u", "4", "-r", "4", "-t", "3s", "--max-out-len", "12",
                     "--ignore-eos")
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = run_dirs(tmp_path)
    own = _perf_files(run)
    records = [json.loads(line) for line in open(os.path.join(run, "records.jsonl"))]
    records = [r for r in records if r.get("stage") != "warmup" and not str(r.get("error")).startswith("cancelled")]
    assert sum(r["success"] for r in records) >= 8
    report = [sys.executable, "-m", "benchmark", "report", run, "--metric-profile"]
    refs = {"vllm": vllm_reference(records), "guidellm": guidellm_reference(records)}
    for profile in ("vllm", "guidellm", "aisbench"):
        rep = subprocess.run(report + [profile], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert rep.returncode == 0, rep.stderr
        (path,) = glob.glob(os.path.join(run, "profiles", profile, "performances", "*", "synthetic.csv"))
        assert _perf_files(run) == own  # the run's own files stay
        if profile in refs:  # the files hold the tool's numbers (3 decimals in ms)
            table = _csv_stats(path)
            for metric in ("TTFT", "TPOT", "ITL", "E2EL"):
                got = [float(v.split()[0]) for v in table[metric][2:9]]
                assert got == pytest.approx(refs[profile][metric], abs=6e-4), (profile, metric)
    # the simulator writes the role chunk with the first token and a finish chunk with the last: two more
    # gaps of ~0 in each request's vLLM ITL, so its average is lower than the default's; GuideLLM's TPOT
    # counts the 60 ms to the first token, so it is higher than the default's
    tables = {p: _csv_stats(glob.glob(os.path.join(run, *sub, "performances", "*", "synthetic.csv"))[0])
              for p, sub in (("default", ()), ("vllm", ("profiles", "vllm")), ("guidellm", ("profiles", "guidellm")))}

    def average(profile, metric):
        return float(tables[profile][metric][2].split()[0])
    assert average("vllm", "ITL") < average("default", "ITL")
    assert average("guidellm", "TPOT") > average("default", "TPOT") + 2
    # asking for the run's own profile renders in place, byte for byte
    back = subprocess.run(report + ["default"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert back.returncode == 0, back.stderr
    assert _perf_files(run) == own


def test_every_profile_is_offered_where_it_is_chosen(tmp_path):
    from benchmark import options
    assert options.PROFILES == metrics.PROFILES == ("default", "aisbench", "vllm", "guidellm")
    res = subprocess.run([sys.executable, "-m", "benchmark", "report", str(tmp_path), "--metric-profile", "sglang"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2 and "invalid choice: 'sglang'" in res.stderr and "Traceback" not in res.stderr
