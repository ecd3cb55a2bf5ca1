"""Load models (steps, open loop) and Locust's distributed mode, against the simulator."""
from __future__ import annotations

import csv
import json
import os

import numpy as np

from benchmark import metrics, tables
from benchmark.arrivals import Arrivals
from benchmark.records import read_records
from conftest import free_port, perf_csv, run_dirs, run_locust


def test_gamma_arrivals_have_the_asked_rate_and_burstiness():
    for burstiness in (0.5, 1.0, 4.0):
        arrivals = Arrivals(20.0, burstiness, seed=1)
        gaps = arrivals.unit_gaps(20000) / arrivals.rate_at(0)  # as the scheduler spaces them
        assert abs(gaps.mean() - 1 / 20) < 0.002
        cv = gaps.std() / gaps.mean()  # gamma with shape B: coefficient of variation 1/sqrt(B)
        assert abs(cv - 1 / np.sqrt(burstiness)) < 0.05, (burstiness, cv)
    constant = Arrivals(5.0, 0)
    assert np.all(constant.unit_gaps(10) / constant.rate_at(0) == 0.2)


def test_step_ramp_splits_tables_by_stage(tmp_path, start_sim):
    sim = start_sim("--ttft-ms", "10", "--itl-ms", "2")
    res = run_locust(tmp_path, "--host", sim.url, "--steps", "1,3", "--step-time", "2s", "--max-out-len", "8")
    assert res.returncode == 0, res.stderr[-1500:]
    (run,) = run_dirs(tmp_path)
    records, _ = read_records(os.path.join(run, "records.jsonl"))
    assert {r["stage"] for r in records} == {"step1-1u", "step2-3u"}
    rows = list(csv.reader(open(perf_csv(run))))
    assert [r[1] for r in rows if r[0] == "E2EL"] == ["total", "step1-1u", "step2-3u"]
    n = {r[1]: int(r[9]) for r in rows if r[0] == "E2EL"}
    assert n["total"] == len(records) == n["step1-1u"] + n["step2-3u"]
    common = json.load(open(perf_csv(run)[:-4] + ".json"))
    assert common["Peak In-Flight"]["step1-1u"] == 1 and common["Peak In-Flight"]["step2-3u"] == 3
    assert common["Max Concurrency"]["total"] == 3
    # the latency-vs-throughput curve, one row per step
    with open(os.path.join(os.path.dirname(perf_csv(run)), "synthetic_curve.csv")) as f:
        curve = list(csv.DictReader(f))
    assert [c["stage"] for c in curve] == ["step1-1u", "step2-3u"]
    assert float(curve[1]["request_throughput_req_s"]) > 2 * float(curve[0]["request_throughput_req_s"])
    assert float(curve[0]["ttft_median_ms"]) > 10


def test_open_loop_rate_keeps_scheduled_times(tmp_path, start_sim):
    sim = start_sim("--ttft-ms", "10", "--itl-ms", "2")
    res = run_locust(tmp_path, "--host", sim.url, "-u", "8", "-r", "8", "-t", "5s", "--request-rate", "20",
                     "--max-out-len", "8")
    assert res.returncode == 0, res.stderr[-1500:]
    (run,) = run_dirs(tmp_path)
    records, _ = read_records(os.path.join(run, "records.jsonl"))
    sched = np.array(sorted(r["t_sched"] for r in records))
    rate = (len(sched) - 1) / (sched[-1] - sched[0])
    assert 12 < rate < 30, rate  # Poisson at 20/s over a few seconds
    lag = np.array([r["t_send"] - r["t_sched"] for r in records])
    assert lag.min() >= 0 and np.median(lag) < 0.005  # a free user sends at once


def test_processes_ship_every_record_to_the_master(tmp_path, start_sim):
    sim = start_sim("--ttft-ms", "10", "--itl-ms", "2")
    port = str(free_port())  # its own master port: never another run's workers
    res = run_locust(tmp_path, "--host", sim.url, "--processes", "2", "--master-bind-port", port, "--master-port", port,
                     "-u", "4", "-r", "4", "-t", "4s",
                     "--max-out-len", "8", "--num-prompts", "5000", timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = run_dirs(tmp_path)
    records, skipped = read_records(os.path.join(run, "records.jsonl"))
    assert skipped == 0 and len(records) > 50
    assert len({r["worker"] for r in records}) == 2
    # each worker takes its own shard: within a pass no prompt is sent twice
    indices = [r["prompt_index"] for r in records]
    assert len(indices) == len(set(indices))
    # the master's tables are a single computation over all the raw records
    expected = tables.perf_rows(metrics.compute(records, max_concurrency=4))
    written = [row for row in csv.reader(open(perf_csv(run)))][1:]
    assert written == expected


def make_record(ttft, itl, n, stage="total", t_send=100.0, success=True):
    from benchmark.records import new_record
    events = [[ttft + i * itl, "content", 1] for i in range(n)]
    return new_record(t_send=t_send, events=events, success=success, output_tokens=n, input_tokens=10,
                      stage=stage, error="" if success else "HTTP 500: x")


def test_slo_goodput_counts_requests_meeting_every_limit():
    # TPOT = (E2EL - TTFT) / (n - 1) = itl here
    recs = [make_record(0.1, 0.02, 11), make_record(0.6, 0.02, 11),   # TTFT too slow
            make_record(0.1, 0.08, 11), make_record(0.2, 0.03, 11),   # TPOT too slow / both fine
            make_record(0.1, 0.02, 11, success=False)]
    res = metrics.compute(recs, slo={"ttft": 0.5, "tpot": 0.05})
    common = {r[0]: r[2] for r in res.common.itertuples(index=False) if r[1] == "total"}
    assert common["SLO Attainment"] == 40.0  # 2 of all 5 requests
    duration = common["Benchmark Duration"] / 1000
    assert abs(common["Goodput"] - 2 / duration) < 1e-9
    assert abs(common["Good Output Token Throughput"] - 22 / duration) < 1e-9
    assert "SLO Attainment" not in set(metrics.compute(recs).common["Common Metric"])


def test_slo_option_parsing():
    from benchmark.options import ConfigError, _slo
    assert _slo("ttft=500ms, tpot=0.05s,e2el=2") == {"ttft": 0.5, "tpot": 0.05, "e2el": 2.0}
    for bad in ("ttft", "itl=5ms", "ttft=-1ms", "ttft=fast"):
        try:
            _slo(bad)
        except ConfigError as e:
            assert "--slo" in str(e)
        else:
            raise AssertionError(bad)


def test_client_health_verdict():
    from benchmark.health import verdict
    bound, line = verdict({"local": {"cpu_percent": 97.0, "loop_lag_p99_ms": 1.0}})
    assert bound and "CPU 97 %" in line and "--processes" in line
    # a whole-run p99 alone (a run folder from before the measured window) is one late tick, not a verdict
    assert not verdict({"worker 0": {"cpu_percent": 40.0, "loop_lag_p99_ms": 12.0}})[0]
    sustained = {"cpu_percent": 40.0, "loop_lag_p99_ms": 12.0, "ticks": 100, "loop_lag_over_ticks": 30,
                 "loop_lag_over_share": 0.3, "others_cpu_percent": 80.0, "cpus": 2}
    bound, line = verdict({"worker 0": sustained})
    assert bound and "p99 12.0 ms" in line and "the machine is busy" in line
    bound, line = verdict({"local": {"cpu_percent": 30.0, "loop_lag_p99_ms": 0.8}})
    assert not bound and line.startswith("Client healthy")


def test_run_reports_health_and_goodput(tmp_path, start_sim):
    sim = start_sim("--ttft-ms", "10", "--itl-ms", "2")
    res = run_locust(tmp_path, "--host", sim.url, "-u", "2", "-r", "2", "-t", "3s", "--max-out-len", "8",
                     "--slo", "ttft=1s,tpot=1s")
    assert res.returncode == 0, res.stderr[-1500:]
    (run,) = run_dirs(tmp_path)
    health = json.load(open(os.path.join(run, "config.json")))["client_health"]["local"]
    assert 0 < health["cpu_percent"] < 200 and health["loop_lag_p99_ms"] >= 0
    assert "Client healthy" in res.stdout or "CLIENT-" in res.stdout
    common = json.load(open(perf_csv(run)[:-4] + ".json"))
    assert common["SLO Attainment"]["total"] == "100.0000 %"


def test_num_requests_and_warmup(tmp_path, start_sim):
    sim = start_sim("--ttft-ms", "10", "--itl-ms", "2")
    res = run_locust(tmp_path, "--host", sim.url, "-u", "3", "-r", "3", "-t", "60s", "--max-out-len", "8",
                     "--num-requests", "20", "--warmup", "4")
    assert res.returncode == 0, res.stderr[-1500:]
    (run,) = run_dirs(tmp_path)
    records, _ = read_records(os.path.join(run, "records.jsonl"))
    assert len(records) == 24  # the run ended by itself, long before -t
    assert sum(r["stage"] == "warmup" for r in records) == 4
    common = json.load(open(perf_csv(run)[:-4] + ".json"))
    assert common["Total Requests"] == {"total": 20}  # warm-up requests are not measured


def test_rate_ramp_shapes():
    lin = Arrivals(0, 1, ramp=("linear", 2.0, 10.0, 8.0))
    assert [lin.rate_at(t) for t in (0, 4, 8, 20)] == [2.0, 6.0, 10.0, 10.0]
    exp = Arrivals(0, 1, ramp=("exponential", 1.0, 16.0, 4.0))
    assert [round(exp.rate_at(t), 9) for t in (0, 1, 2, 4)] == [1.0, 2.0, 4.0, 16.0]


def test_linear_rate_ramp_run(tmp_path, start_sim):
    sim = start_sim("--ttft-ms", "5", "--itl-ms", "1")
    res = run_locust(tmp_path, "--host", sim.url, "-u", "8", "-r", "8", "-t", "4s", "--max-out-len", "4",
                     "--ramp-up-strategy", "linear", "--ramp-up-start-rps", "5", "--ramp-up-end-rps", "25",
                     "--burstiness", "0")
    assert res.returncode == 0, res.stderr[-1500:]
    (run,) = run_dirs(tmp_path)
    records, _ = read_records(os.path.join(run, "records.jsonl"))
    sched = np.array(sorted(r["t_sched"] for r in records))
    first, second = np.sum(sched < sched[0] + 2), np.sum(sched >= sched[0] + 2)
    assert 15 <= first <= 25 and 30 <= second <= 45, (first, second)  # 5->15 req/s, then 15->25


def test_rate_ramp_needs_a_run_time(tmp_path):
    res = run_locust(tmp_path, "-u", "1", "--ramp-up-strategy", "linear", "--ramp-up-start-rps", "1",
                     "--ramp-up-end-rps", "2", timeout=60)
    assert res.returncode != 0 and "--run-time" in res.stderr.strip().splitlines()[-1]


def test_capacity_search_finds_the_largest_load_meeting_the_slo(tmp_path, start_sim):
    """6 answer slots, 170 ms per answer: up to 6 users TTFT is 100 ms; beyond, some queue a whole answer
    (TTFT ~270 ms). The SLO sits 85 ms from both, so a busy machine's lateness cannot move the verdict."""
    sim = start_sim("--ttft-ms", "100", "--itl-ms", "10", "--max-concurrency", "6")
    res = run_locust(tmp_path, "--host", sim.url, "--capacity-search", "--slo", "ttft=185ms", "--step-time", "2s",
                     "--max-out-len", "8", "--ignore-eos", timeout=120)
    assert res.returncode == 0, res.stderr[-1500:]
    (run,) = run_dirs(tmp_path)
    search = json.load(open(os.path.join(run, "config.json")))["capacity_search"]
    users = [s[0] for s in search["steps"]]
    passed = {s[0]: s[3] for s in search["steps"]}
    first_fail = next(i for i, s in enumerate(search["steps"]) if not s[3])
    assert users[:first_fail + 1] == [2 ** i for i in range(first_fail + 1)]  # doubling up to a failure
    best = search["users"]
    assert passed[best] and passed.get(best + 1) is False  # bisected down to neighbours
    assert 6 <= best < 12  # 6 slots: 6 users never queue; 12 users always queue a whole answer
    assert f"largest load meeting the SLO in >= 90 % of requests: {best} users ({best + 1} users failed)" in res.stdout
