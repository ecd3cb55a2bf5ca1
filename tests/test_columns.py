"""Reading records.jsonl into Columns: one process or several, the same result."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from benchmark import metrics
from benchmark.columns import WARMUP, from_records, read_columns
from benchmark.records import new_record


def _records(n: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ok = rng.random() > 0.1
        tokens = rng.randint(1, 12)
        t = [0.05 + 0.02 * k + rng.random() * 1e-3 for k in range(tokens)]
        events = [[t[0], "role", 0]] + [[x, "content", 3] for x in t] + [[t[-1], "usage", 0]] if ok else []
        stage = WARMUP if i < 5 else rng.choice(["step1-2u", "step2-4u", "total"])
        rec = new_record(id=i, stage=stage, t_send=1000.0 + i * 0.01, events=events, success=ok,
                         input_tokens=7, output_tokens=tokens if ok else None, token_source="usage" if ok else None,
                         completion="x " * tokens if ok else "", error="" if ok else f"HTTP 500 number {i % 3}",
                         http_status=200 if ok else 500, t_sched=999.0 + i * 0.01 if i % 2 else None)
        if i % 17 == 3:
            rec["error"] = "cancelled: the test stopped while the request was in flight"
        out.append(rec)
    return out


def _write(path, records, junk_every: int = 13) -> None:
    with open(path, "w") as f:
        for i, r in enumerate(records):
            f.write(json.dumps(r) + "\n")
            if i % junk_every == 5:
                f.write('{"cut short by a cra\n')  # unreadable
            if i % junk_every == 7:
                f.write("\n")  # blank


@pytest.mark.parametrize("processes", [2, 3, 7])
def test_several_processes_read_exactly_what_one_does(tmp_path, processes):
    path = tmp_path / "records.jsonl"
    _write(path, _records(400))
    one, one_sample = read_columns(str(path), exclude_stages=(WARMUP,), sample_requests=50, processes=1)
    many, many_sample = read_columns(str(path), exclude_stages=(WARMUP,), sample_requests=50, processes=processes)
    for name in ("t_send", "t_sched", "success", "input_tokens", "output_tokens", "counts", "offsets", "kinds"):
        np.testing.assert_array_equal(getattr(one, name), getattr(many, name), err_msg=name)
    np.testing.assert_array_equal(one.stage_of_each(), many.stage_of_each())  # each part coded its own stages
    assert (one.failed, one.examples, one.sources) == (many.failed, many.examples, many.sources)
    assert (one.cancelled, one.excluded, one.skipped) == (many.cancelled, many.excluded, many.skipped)
    assert one.excluded == 4 and one.skipped > 0 and one.cancelled > 0  # warm-up #3 was cancelled
    assert len(many.text_sample) == len(one.text_sample)
    assert 0 < many_sample.n <= many.n and abs(many_sample.n - one_sample.n) <= processes
    a = metrics.compute(one, slo={"ttft": 0.1})
    b = metrics.compute(many, slo={"ttft": 0.1})
    assert a.perf.equals(b.perf) and a.common.equals(b.common)


def test_reading_a_file_equals_the_records_in_memory(tmp_path):
    records = _records(200, seed=2)
    path = tmp_path / "records.jsonl"
    _write(path, records, junk_every=10**9)
    kept = [r for r in records if r["stage"] != WARMUP and not r["error"].startswith("cancelled")]
    read, _ = read_columns(str(path), exclude_stages=(WARMUP,))
    a, b = metrics.compute(read), metrics.compute(from_records(kept))
    assert a.perf.equals(b.perf) and a.common.equals(b.common)


def test_a_range_boundary_on_a_line_start_loses_and_repeats_nothing(tmp_path):
    """Cut points that fall exactly after a newline, or inside one, give each line to one reader."""
    path = tmp_path / "records.jsonl"
    lines = [json.dumps(new_record(id=i, t_send=float(i), success=False, error="x")) + "\n" for i in range(9)]
    path.write_text("".join(lines))
    for processes in range(2, 10):
        cols, _ = read_columns(str(path), drop_cancelled=False, processes=processes)
        assert cols.t_send.tolist() == [float(i) for i in range(9)], processes


def test_several_processes_work_inside_locust_gevent_patched_process(tmp_path):
    """The tables are made at test stop inside the Locust process, where gevent has patched
    subprocess and threading: the helper processes must work there too."""
    import subprocess
    import sys
    from pathlib import Path
    path = tmp_path / "records.jsonl"
    _write(path, _records(300))
    code = ("from gevent import monkey; monkey.patch_all()\n"
            "import sys; from benchmark.columns import read_columns\n"
            "one, _ = read_columns(sys.argv[1], processes=1)\n"
            "two, _ = read_columns(sys.argv[1], processes=3)\n"
            "assert (one.offsets == two.offsets).all() and one.n == two.n > 0, (one.n, two.n)\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], cwd=Path(__file__).resolve().parent.parent,
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "ok", r.stderr[-1500:]


def test_sink_writes_every_record_whatever_its_values(tmp_path):
    """The sink's fast writer (orjson) leaves some values to json; no record is ever dropped."""
    from benchmark.records import RecordSink, read_records
    sink = RecordSink(str(tmp_path / "records.jsonl"))
    sink.write(new_record(id=np.int64(7), t_sched=np.float64(1.5), completion="héllo ✓", success=True))
    sink.write(new_record(id=8, completion="half an emoji \ud83d", success=True))
    sink.close()
    first, second = read_records(str(tmp_path / "records.jsonl"))[0]
    assert (first["id"], first["t_sched"], first["completion"]) == (7, 1.5, "héllo ✓")
    assert second["completion"] == "half an emoji \ud83d"


def test_a_helper_that_dies_costs_no_record(tmp_path, monkeypatch):
    """If a reading helper process fails, its byte range is read in this process instead."""
    import subprocess
    import sys

    from benchmark import columns
    path = tmp_path / "records.jsonl"
    _write(path, _records(300))
    one, one_sample = read_columns(str(path), exclude_stages=(WARMUP,), sample_requests=40, processes=1)
    monkeypatch.setattr(columns, "_spawn", lambda *a: subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"]))
    many, many_sample = read_columns(str(path), exclude_stages=(WARMUP,), sample_requests=40, processes=3)
    np.testing.assert_array_equal(one.offsets, many.offsets)
    np.testing.assert_array_equal(one.stage_of_each(), many.stage_of_each())
    assert (one.failed, one.examples, one.sources, one.skipped) == (many.failed, many.examples, many.sources,
                                                                    many.skipped)
    assert 0 < many_sample.n <= many.n
