"""`python -m benchmark compare`: the bootstrap engine, verdicts on synthetic and real simulator runs,
repeats, the --fail-on gate, refusals, and McNemar's flips on hand-made accuracy records."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.stats import binomtest

from benchmark import compare as cmp
from benchmark.__main__ import main as cli
from benchmark.records import RecordSink, new_record
from conftest import ROOT, RunQueueWait, run_dirs, run_locust

_spec = importlib.util.spec_from_file_location("compare_false_alarms", os.path.join(ROOT, "perf", "compare_false_alarms.py"))
fa = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fa)
synthetic_run = fa.synthetic_run  # the generator the false-alarm figure was measured with


def verdicts(c, metric, stage="total"):
    rows = c.rows[(c.rows["metric"] == metric) & (c.rows["stage"] == stage)]
    return dict(zip(rows["statistic"], rows["verdict"]))


def flagged(c):
    return c.rows[c.rows["verdict"].isin([cmp.BETTER, cmp.WORSE])]


def write_run(path, records, **config):
    os.makedirs(path, exist_ok=True)
    cfg = {**fa.CONFIG, **config}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    sink = RecordSink(os.path.join(path, "records.jsonl"))
    for r in records:
        sink.write(r)
    sink.close()
    return str(path)


def set_config(path, **changes):
    p = os.path.join(path, "config.json")
    cfg = json.load(open(p))
    cfg.update(changes)
    json.dump(cfg, open(p, "w"))


@pytest.fixture(scope="module")
def itl_pair(tmp_path_factory):
    """Two synthetic runs, the new one with a 10 % slower decode."""
    tmp = tmp_path_factory.mktemp("itl")
    rng = np.random.default_rng(123)
    return (synthetic_run(str(tmp / "base"), rng, 300, 4),
            synthetic_run(str(tmp / "new"), rng, 300, 4, itl_factor=1.10))


# ------------------------------------------------------------------------------------------------
# the engine


def test_weighted_replicates_are_percentiles_of_the_repeated_sample():
    rng = np.random.default_rng(1)
    n_req = 60
    counts = rng.integers(0, 40, n_req)
    owner = np.repeat(np.arange(n_req), counts)
    values = rng.lognormal(0, 1, owner.size).round(2)  # ties
    values[::13] = np.nan                               # unmeasured values are left out, as in the tables
    wt = cmp._Weighted(values, owner, n_req, (0.5, 0.9, 0.99))
    w = rng.poisson(1.0, (300, n_req)).astype(float)
    w[0] = 1
    mean, q = wt.replicates(w)
    for b in range(w.shape[0]):
        rep = np.repeat(values, w[b][owner].astype(int))
        rep = rep[np.isfinite(rep)]
        if not rep.size:
            assert np.isnan(mean[b]) and np.isnan(q[b]).all()
            continue
        assert mean[b] == pytest.approx(rep.mean(), rel=1e-12)
        assert q[b] == pytest.approx(np.percentile(rep, [50, 90, 99]), rel=1e-12, abs=1e-12)
    point_mean, point_q = wt.point()
    assert point_mean == pytest.approx(np.nanmean(values))
    assert point_q == pytest.approx(np.nanpercentile(values, [50, 90, 99]))


def test_simultaneous_level_sits_between_bonferroni_and_unadjusted():
    rng = np.random.default_rng(0)
    common = rng.normal(size=(2000, 1))
    correlated = common + 0.01 * rng.normal(size=(2000, 20))   # 20 copies of one row: no adjustment needed
    independent = rng.normal(size=(2000, 20))                  # 20 independent rows: ~Bonferroni (Sidak)
    g_corr = cmp.simultaneous_level(correlated, 0.95)
    g_ind = cmp.simultaneous_level(independent, 0.95)
    assert g_corr > 0.03
    assert 0.0025 <= g_ind < 0.004
    assert cmp.simultaneous_level(independent[:, :1], 0.95) == pytest.approx(0.05)


def test_single_run_values_are_the_tables_values(itl_pair):
    base, new = itl_pair
    c = cmp.compare([base], [new], bootstrap=200)
    for side in (c.base, c.new):
        perf = side.results[0].perf.set_index(["Performance Parameters", "Stage"])
        common = side.results[0].common.set_index(["Common Metric", "Stage"])["Value"]
        col = "base" if side is c.base else "new"
        for _, r in c.rows.iterrows():
            table = common[(r["metric"], r["stage"])] if r["statistic"] == cmp.RUN_STAT else \
                perf.loc[(r["metric"], r["stage"]), r["statistic"]]
            assert r[col] == pytest.approx(table, rel=1e-12), (r["metric"], r["statistic"])
    assert list(c.rows.columns) == list(cmp.ROW_COLUMNS)
    assert len(c.rows) == 20 and c.settings["rows_tested"] == 20


# ------------------------------------------------------------------------------------------------
# verdicts


def test_noise_only_pairs_show_no_significant_change(tmp_path):
    """40 seeded pairs drawn from the same distributions: at most 4 pairs (10 %) may have a row flagged
    (these seeds give 2: E2EL P90 in one pair, TTFT Average in another), every other pair is "no
    significant change" on every row. perf/compare_false_alarms.py measured the family-wise false-alarm
    rate over 200 pairs: 2.5 % (40 requests a run), 5.0 % (200), 4.0 % (1000)."""
    alarms = set()
    for k in range(40):
        rng = np.random.default_rng([k, 0])
        a = synthetic_run(str(tmp_path / f"a{k}"), rng, 200, 4)
        b = synthetic_run(str(tmp_path / f"b{k}"), rng, 200, 4)
        c = cmp.compare([a], [b], seed=k)
        assert (c.rows["verdict"] != cmp.NA).all()
        if len(flagged(c)):
            alarms.add(k)
        else:
            assert (c.rows["verdict"] == cmp.SAME).all()
            assert c.verdict == f"No significant change in {len(c.rows)} rows"
    assert len(alarms) <= 4, alarms


def test_ten_percent_slower_decode_is_worse_on_tpot_and_itl(itl_pair):
    base, new = itl_pair
    c = cmp.compare([base], [new])
    for metric in ("TPOT", "ITL"):
        v = verdicts(c, metric)
        assert v["Average"] == v["Median"] == v["P90"] == cmp.WORSE, (metric, v)
        row = c.rows[(c.rows["metric"] == metric) & (c.rows["statistic"] == "Median")].iloc[0]
        assert 0.07 < row["rel"] < 0.13 and row["rel_lo"] > 0.0 and row["rel_lo"] < row["rel"] < row["rel_hi"]
    assert (c.rows["verdict"] != cmp.BETTER).all()       # nothing improves
    assert set(verdicts(c, "TTFT").values()) == {cmp.SAME}  # TTFT did not change
    assert c.verdict.startswith("NEW is worse on ")
    # the same pair the other way round: better
    back = cmp.compare([new], [base])
    assert verdicts(back, "TPOT")["Median"] == cmp.BETTER


def test_min_effect_and_level(itl_pair):
    base, new = itl_pair
    assert verdicts(cmp.compare([base], [new], min_effect=0.2, bootstrap=200), "TPOT")["Median"] == cmp.SAME
    strict = cmp.compare([base], [new], level=0.999, bootstrap=200)
    assert strict.settings["row_level"] >= 0.999
    assert any("raise --bootstrap" in n for n in strict.notes)  # a 0.05 % tail of 200 replicates


def test_bootstrap_is_seeded(itl_pair):
    base, new = itl_pair
    a = cmp.compare([base], [new], bootstrap=200, seed=7)
    b = cmp.compare([base], [new], bootstrap=200, seed=7)
    c = cmp.compare([base], [new], bootstrap=200, seed=8)
    assert a.rows[["rel_lo", "rel_hi"]].equals(b.rows[["rel_lo", "rel_hi"]])
    assert not a.rows["rel_lo"].equals(c.rows["rel_lo"])


def test_repeats_carry_the_between_run_variance(tmp_path):
    """Runs whose decode speed moves from run to run (+-6 %): three repeats a side whose means differ by
    ~5 % are no significant change, while the same requests as one run per side look significant."""
    def side(name, levels):
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        return [synthetic_run(str(tmp_path / f"{name}{i}"), rng, 150, 4, itl_factor=f) for i, f in enumerate(levels)]

    base = side("b", (1.00, 1.06, 0.94))
    new = side("n", (1.05, 1.00, 1.09))
    c = cmp.compare(base, new, bootstrap=500)
    assert verdicts(c, "ITL")["Median"] == cmp.SAME and verdicts(c, "TPOT")["Median"] == cmp.SAME
    itl = c.rows[(c.rows["metric"] == "ITL") & (c.rows["statistic"] == "Median")].iloc[0]
    assert itl["rel"] > 0.03

    def merged(name, runs):
        out = os.path.join(tmp_path, name)
        os.makedirs(out)
        with open(os.path.join(out, "records.jsonl"), "wb") as f:
            for r in runs:
                f.write(open(os.path.join(r, "records.jsonl"), "rb").read())
        with open(os.path.join(out, "config.json"), "w") as f:
            f.write(open(os.path.join(runs[0], "config.json")).read())
        return out

    pooled = cmp.compare([merged("B", base)], [merged("N", new)], bootstrap=500)
    assert verdicts(pooled, "ITL")["Median"] == cmp.WORSE
    one = pooled.rows[(pooled.rows["metric"] == "ITL") & (pooled.rows["statistic"] == "Median")].iloc[0]
    assert one["rel"] == pytest.approx(itl["rel"])  # same pooled point value
    assert (itl["rel_hi"] - itl["rel_lo"]) > 3 * (one["rel_hi"] - one["rel_lo"])


def test_stages_and_slo_rows(tmp_path):
    def run(name, factor, seed):
        rng = np.random.default_rng(seed)
        path = synthetic_run(str(tmp_path / name), rng, 200, 4, itl_factor=factor)
        lines = open(os.path.join(path, "records.jsonl")).read().splitlines()
        with open(os.path.join(path, "records.jsonl"), "w") as f:
            for i, line in enumerate(lines):
                r = json.loads(line)
                r["stage"] = "step1-4u" if i < 100 else "step2-4u"
                f.write(json.dumps(r) + "\n")
        set_config(path, slo={"tpot": 0.021})
        return path

    c = cmp.compare([run("a", 1.0, 1)], [run("b", 1.1, 2)], bootstrap=300)
    assert list(dict.fromkeys(c.rows["stage"])) == ["total", "step1-4u", "step2-4u"]
    assert len(c.rows) == 3 * 22
    for stage in ("total", "step1-4u", "step2-4u"):
        assert verdicts(c, "TPOT", stage)["Median"] == cmp.WORSE
    # tpot 21 ms: most base requests meet it, almost no new one does
    att = c.rows[(c.rows["metric"] == "SLO Attainment") & (c.rows["stage"] == "total")].iloc[0]
    assert att["base"] > 60 and att["new"] < 20 and att["verdict"] == cmp.WORSE and att["unit"] == "%"
    assert verdicts(c, "Goodput")["Value"] == cmp.WORSE


def test_ten_thousand_requests_compare_quickly(tmp_path):
    rng = np.random.default_rng(5)
    a = synthetic_run(str(tmp_path / "a"), rng, 10_000, 64, out_tokens=128)
    b = synthetic_run(str(tmp_path / "b"), rng, 10_000, 64, out_tokens=128)
    t0 = time.perf_counter()
    c = cmp.compare([a], [b])
    elapsed = time.perf_counter() - t0
    assert elapsed < 20, elapsed
    assert not len(flagged(c))


# ------------------------------------------------------------------------------------------------
# the gate and the command line


def test_gate_exit_codes_and_messages(itl_pair, capsys):
    base, new = itl_pair
    assert cli(["compare", base, new]) == 0            # worse, but no --fail-on: exit 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("NEW is worse on ")
    assert "TPOT" in out and "rel [lo, hi]" in out and cmp.WORSE in out

    assert cli(["compare", base, new, "--fail-on", "tpot.median>+5%,ttft.p99>+10%,itl.avg>+1"]) == 1
    out = capsys.readouterr().out
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 2, fails                       # TTFT did not move
    assert fails[0].startswith("FAIL tpot.median>+5%: TPOT Median +") and "limit >+5 %" in fails[0]
    assert fails[1].startswith("FAIL itl.avg>+1: ITL Average +") and "limit >+1 ms" in fails[1]

    # limits not reached, or on the wrong side, or of the wrong sign: exit 0
    assert cli(["compare", base, new, "--fail-on", "tpot.median>+20%, itl.p50<-5%, throughput<-50%"]) == 0
    assert "FAIL" not in capsys.readouterr().out
    # a significant improvement past a "<" limit fails too (the other way round)
    assert cli(["compare", new, base, "--fail-on", "TPOT.Median<-5%"]) == 1
    assert "FAIL TPOT.Median<-5%" in capsys.readouterr().out
    # a limit on rows that can't be compared is a note, not a failure
    assert cli(["compare", base, new, "--fail-on", "goodput<-5%,accuracy<-1"]) == 0
    out = capsys.readouterr().out
    assert "note: --fail-on goodput<-5%: not checked (the runs had no common --slo)" in out
    assert "note: --fail-on accuracy<-1: not checked (accuracy not compared)" in out


@pytest.mark.parametrize("limits,message", [
    ("ttft>+10%", "ttft needs a statistic"),
    ("ttft.p999>+10%", "unknown statistic 'p999'"),
    ("latency.p99>+10%", "unknown metric 'latency'"),
    ("ttft.p99=10%", "expected METRIC.STAT>+N%"),
    ("ttft.p99>+ten%", "expected METRIC.STAT>+N%"),
    ("accuracy<-1%", "percentage points"),
    ("goodput.p99<-1%", "one value per run"),
    ("throughput.p99<-1%", "avg and median only"),
    (",", "no limit given"),
])
def test_gate_grammar_errors(itl_pair, capsys, limits, message):
    base, new = itl_pair
    assert cli(["compare", base, new, "--fail-on", limits]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --fail-on ") and message in err[0], err


def test_gate_stage_must_exist(itl_pair, capsys):
    base, new = itl_pair
    assert cli(["compare", base, new, "--fail-on", "tpot.median@step9>+5%"]) == 2
    assert "stage 'step9' is not compared" in capsys.readouterr().err
    assert cli(["compare", base, new, "--fail-on", "tpot.median@total>+5%"]) == 1


def test_command_line_usage_errors(itl_pair, capsys):
    base, new = itl_pair
    assert cli(["compare", base]) == 2
    assert capsys.readouterr().err.startswith("error: compare needs BASE NEW")
    assert cli(["compare", base, new, "--base", base]) == 2
    assert cli(["compare", base, new, "--min-effect", "lots"]) == 2
    assert "--min-effect" in capsys.readouterr().err
    assert cli(["compare", "--base", base, base, "--new", new, "--bootstrap", "200", "--min-effect", "5%"]) == 0
    assert "repeats: 2 base and 1 new run(s)" in capsys.readouterr().out


def test_html_is_written_or_says_why_not(itl_pair, tmp_path, capsys):
    base, new = itl_pair
    path = str(tmp_path / "cmp.html")
    assert cli(["compare", base, new, "--bootstrap", "200", "--html", path]) == 0
    out = capsys.readouterr().out
    if importlib.util.find_spec("benchmark.report.comparison") is None:
        assert "note: HTML comparison report not written" in out
    else:
        assert os.path.isfile(path) and "Comparison report written to" in out


# ------------------------------------------------------------------------------------------------
# refusals


def test_refusals(tmp_path, capsys):
    rng = np.random.default_rng(9)
    a = synthetic_run(str(tmp_path / "a"), rng, 40, 4)

    def refused(other, *extra):
        assert cli(["compare", a, other, "--bootstrap", "200", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
        return err[0]

    assert "no such run folder" in refused(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "empty")
    assert "no records.jsonl here" in refused(str(tmp_path / "empty"))
    bad = synthetic_run(str(tmp_path / "bad"), rng, 40, 4)
    open(os.path.join(bad, "config.json"), "w").write("{not json")
    assert "unreadable" in refused(bad)

    def variant(name, **changes):
        path = synthetic_run(str(tmp_path / name), rng, 40, 4)
        set_config(path, **changes)
        return path

    assert "different datasets" in refused(variant("ds", dataset_abbr="sharegpt"))
    assert "different prompt sets" in refused(variant("pc", prompt_config={**fa.CONFIG["prompt_config"],
                                                                          "max_out_len": 64}))
    mp = variant("mp", metric_profile="aisbench")
    assert "different metric profiles" in refused(mp) and "--metric-profile" in refused(mp)
    for profile in ("vllm", "default"):  # both sides recomputed under one profile: comparable
        assert cli(["compare", a, mp, "--bootstrap", "200", "--metric-profile", profile]) == 0
        capsys.readouterr()
        c = cmp.compare([a], [mp], bootstrap=200, profile=profile)
        assert {r.profile for side in (c.base, c.new) for r in side.results} == {profile}
    assert "--metric-profile default" in refused(mp, "--metric-profile", "guidellm")
    hot = variant("hot", client_health={"local": {"cpu_percent": 97.0, "loop_lag_p99_ms": 0.4}})
    line = refused(hot)
    assert "client was saturated" in line and "local CPU 97 %" in line and "--force" in line
    assert cli(["compare", a, hot, "--bootstrap", "200", "--force"]) == 0
    assert "compared anyway: --force" in capsys.readouterr().out
    # event-loop lag alone (the known false alarm of short runs) is a note, not a refusal
    laggy = variant("lag", client_health={"local": {"cpu_percent": 12.0, "loop_lag_p99_ms": 48.0}})
    assert cli(["compare", a, laggy, "--bootstrap", "200"]) == 0
    assert "event-loop lag p99 over 5 ms in 1 of 2 run(s) (max 48.0 ms)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# accuracy: McNemar on hand-made records


def gsm8k_run(path, correct: list[bool], indices=None, stage="total", repeat=1):
    recs, i = [], 0
    indices = list(range(len(correct))) if indices is None else indices
    for _ in range(repeat):
        for idx, ok in zip(indices, correct):
            answer = 10 + idx
            recs.append(new_record(
                id=i, worker="local", user=0, stage=stage, dataset="demo_gsm8k", prompt_index=idx,
                t_send=1.7e9 + i, events=[[0.1, "content", 5]] + [[0.1 + 0.02 * k, "content", 5] for k in range(1, 8)]
                + [[0.26, "usage", 0]], input_tokens=100, output_tokens=8, token_source="usage",
                completion=f"Some steps. The answer is {answer if ok else answer + 1}", finish_reason="stop",
                reference=f"Because.\n#### {answer}", success=True))
            i += 1
    cfg = {"dataset_abbr": "demo_gsm8k", "mode": "all",
           "prompt_config": {"dataset": "gsm8k", "num_prompts": 0, "max_out_len": 512, "subset": "demo"}}
    return write_run(path, recs, **cfg)


def test_accuracy_flips_counted_exactly(tmp_path, capsys):
    base_ok = [True] * 30 + [False] * 10
    new_ok = list(base_ok)
    for i in (0, 3, 7, 11, 12):   # five right -> wrong
        new_ok[i] = False
    for i in (31, 35):            # two wrong -> right
        new_ok[i] = True
    # records in a different order on the new side: pairing is by prompt_index, not position
    order = np.random.default_rng(0).permutation(40)
    base = gsm8k_run(tmp_path / "base", base_ok)
    new = gsm8k_run(tmp_path / "new", [new_ok[i] for i in order], indices=[int(i) for i in order])
    c = cmp.compare([base], [new], bootstrap=200)
    acc = c.accuracy
    assert acc["right_to_wrong"] == 5 and acc["wrong_to_right"] == 2 and acc["prompts"] == 40
    assert acc["base"] == pytest.approx(75.0) and acc["new"] == pytest.approx(67.5)
    assert acc["diff"] == pytest.approx(-7.5)
    assert acc["p_value"] == pytest.approx(binomtest(2, 7, 0.5).pvalue)
    assert acc["verdict"] == cmp.SAME                # 5 vs 2 flips is not significant (p = 0.45)
    assert acc["test"].startswith("McNemar")

    # many flips one way: significant, and the gate fails on it
    worse = [False] * 20 + base_ok[20:]          # 20 right -> wrong, 0 back
    new2 = gsm8k_run(tmp_path / "new2", worse)
    assert cli(["compare", base, new2, "--bootstrap", "200", "--fail-on", "accuracy<-1"]) == 1
    out = capsys.readouterr().out
    assert "Accuracy: base 75.00 %, new 25.00 % (-50.00 pp) over 40 prompts; 20 right->wrong, 0 wrong->right" in out
    (line,) = [x for x in out.splitlines() if x.startswith("FAIL")]
    assert line.startswith("FAIL accuracy<-1: accuracy -50.00 pp") and "p=1.91e-06" in line
    assert cli(["compare", base, new2, "--bootstrap", "200", "--fail-on", "accuracy<-60"]) == 0


def test_accuracy_repeats_and_refusals(tmp_path):
    base = gsm8k_run(tmp_path / "base", [True, False, True, True], repeat=2)
    new = gsm8k_run(tmp_path / "new", [True, True, False, True], repeat=2)
    acc = cmp.compare([base], [new], bootstrap=200).accuracy
    assert (acc["right_to_wrong"], acc["wrong_to_right"], acc["base_samples"]) == (1, 1, 8)
    assert acc["test"].startswith("sign test")

    other = gsm8k_run(tmp_path / "other", [True] * 4, indices=[0, 1, 2, 9])
    c = cmp.compare([base], [other], bootstrap=200)
    assert c.accuracy is None
    assert "accuracy not compared: the runs scored different prompts (1 only in base, 1 only in new)" in c.notes
    # perf runs on both sides: no accuracy, no note about it
    rng = np.random.default_rng(2)
    a, b = (synthetic_run(str(tmp_path / n), rng, 40, 4) for n in "ab")
    c = cmp.compare([a], [b], bootstrap=200)
    assert c.accuracy is None and not any("accuracy" in n for n in c.notes)


# ------------------------------------------------------------------------------------------------
# end to end: real headless Locust runs against the built-in simulator


@pytest.fixture(scope="module")
def sim_runs(tmp_path_factory):
    """Three real runs against the built-in simulator, each of 60 requests (a count, not a duration, so a
    busy machine gives the same sample sizes), and the run-queue wait of their Locust processes."""
    out = {}
    with RunQueueWait() as rq:
        for name, itl in (("a", "20"), ("b", "20"), ("slow", "22")):
            tmp = tmp_path_factory.mktemp(f"sim_{name}")
            res = run_locust(tmp, "--sim-itl-ms", itl, "-u", "4", "-r", "4", "--num-requests", "60", "-t", "60s",
                             "--max-out-len", "16", "--ignore-eos", watch=rq)
            assert res.returncode == 0, res.stderr[-2000:]
            (out[name],) = run_dirs(tmp)
    out["rq_ms"] = rq.ms
    return out


def test_simulator_runs_same_settings_no_change(sim_runs):
    # Two runs of one setup differ only by the machine: on a busy one, each run's TTFT is late by its own
    # few ms. The practical margin grows with the run-queue wait measured during the runs (2 % on a quiet
    # machine), capped at 5 % so that the 10 % change below is still far outside it.
    min_effect = min(0.05, 0.02 + 8 * sim_runs["rq_ms"] / 100)
    c = cmp.compare([sim_runs["a"]], [sim_runs["b"]], min_effect=min_effect)
    # 60 requests a run: a P99 of TTFT/TPOT/E2EL sits between the two largest values and is n/a
    na = c.rows[c.rows["verdict"] == cmp.NA]
    assert set(na["statistic"]) <= {"P99"} and "ITL" not in set(na["metric"]), na.to_string()
    same = c.rows[c.rows["verdict"] != cmp.NA]
    assert (same["verdict"] == cmp.SAME).all(), (min_effect, c.rows[c.rows["verdict"] != cmp.SAME].to_string())
    assert len(same) >= 17
    assert c.verdict == f"No significant change in {len(same)} rows"


def test_simulator_runs_ten_percent_itl_is_worse(sim_runs):
    proc = subprocess.run([sys.executable, "-m", "benchmark", "compare", sim_runs["a"], sim_runs["slow"],
                           "--fail-on", "tpot.median>+5%,itl.median>+5%"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fails = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert [f.split(":")[0] for f in fails] == ["FAIL tpot.median>+5%", "FAIL itl.median>+5%"], proc.stdout
    c = cmp.compare([sim_runs["a"]], [sim_runs["slow"]])
    for metric in ("TPOT", "ITL"):
        v = verdicts(c, metric)
        assert v["Average"] == v["Median"] == cmp.WORSE, (metric, v)
    decode = c.rows[c.rows["metric"].isin(["TPOT", "ITL", "E2EL"])]  # TTFT is the machine's, not the change's
    assert (decode["verdict"] != cmp.BETTER).all(), c.rows.to_string()
