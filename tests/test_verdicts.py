"""Issue 13, "Verdicts people act on": figures and verdicts shown the way a reader can act on them."""
from __future__ import annotations

import csv
import json
import re

from benchmark import metrics, tables
from benchmark.records import new_record


def rec(t_send, events, inp=0, out=0, success=True, **kw):
    return new_record(t_send=t_send, events=[list(e) for e in events], input_tokens=inp, output_tokens=out,
                      success=success, **kw)


# ------------------------------------------------------------------------------------------------
# number formatting

def _noisy_run() -> list[dict]:
    """Token counts whose linear percentiles land on float noise (415.8000000000002 and friends), and
    durations that make Goodput an endless fraction."""
    out = []
    for i, n in enumerate((382, 404, 392, 402, 386, 393, 416, 423, 437, 407, 417, 392)):
        t = 1000.0 + i * 0.37
        out.append(rec(t, [(0.1, "content", 1), (0.1 + 0.013 * (n - 1), "content", 1), (0.2 + 0.013 * n, "usage", 0)],
                       inp=97 + i, out=n))
    return out


NOISE = re.compile(r"\d\.\d{5,}")  # more than 4 decimals anywhere


def _cells(res):
    rows = tables.perf_rows(res)
    common = [str(v) for stages in tables.common_dict(res).values() for v in stages.values()]
    return [c for row in rows for c in row] + common


def test_aisbench_profile_shows_at_most_4_decimals_console_csv_json(tmp_path):
    res = metrics.compute(_noisy_run(), profile="aisbench", slo={"ttft": 1.0})
    goodput = tables.common_dict(res)["Goodput"]["total"]
    assert NOISE.search(str(goodput)) is None, goodput
    assert not [c for c in _cells(res) if NOISE.search(c)], [c for c in _cells(res) if NOISE.search(c)]
    assert NOISE.search(tables.console(res)) is None
    csv_path, json_path = tables.write(res, str(tmp_path), "ds")
    with open(csv_path, newline="") as f:
        flat = [c for row in csv.reader(f) for c in row]
    assert flat and not [c for c in flat if NOISE.search(c)]
    with open(json_path) as f:
        text = f.read()
    assert NOISE.search(text) is None, text
    assert json.loads(text)["Goodput"]["total"].endswith(" req/s")


def test_token_count_percentiles_lose_float_noise_in_default_profile(tmp_path):
    res = metrics.compute(_noisy_run())
    raw = res.perf[(res.perf["Performance Parameters"] == "OutputTokens") & (res.perf["Stage"] == "total")]
    assert any(len(repr(float(v))) > 12 for v in raw.iloc[0, 2:9]), "fixture no longer makes float noise"
    row = next(r for r in tables.perf_rows(res) if r[0] == "OutputTokens" and r[1] == "total")
    assert not [c for c in row if NOISE.search(c)], row
    assert NOISE.search(tables.console(res)) is None
    csv_path, _ = tables.write(res, str(tmp_path), "ds")
    with open(csv_path, newline="") as f:
        out_rows = [r for r in csv.reader(f) if r[0] == "OutputTokens"]
    assert out_rows and not [c for r in out_rows for c in r if NOISE.search(c)]


def test_aisbench_rounded_figures_unchanged():
    assert tables._number(734.7, None) == "734.7"
    assert tables._number(43.555, None) == "43.555"
    assert tables._number(415.8000000000002, None) == "415.8"
