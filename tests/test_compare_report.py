"""The HTML comparison report (`compare BASE NEW --html`): verdict, coloured significant rows only,
overlaid CDFs, both sides' latency-vs-throughput curves, accuracy, offline-ness and escaping."""
from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from test_report import EXTERNAL, XSS, charts, read, synthetic_records

from benchmark import metrics
from benchmark.columns import from_records
from benchmark.compare import BETTER, NA, ROW_COLUMNS, SAME, WORSE, Comparison, Side
from benchmark.report.comparison import CDF_POINTS, ecdf, render

CONFIG = {"host": "http://10.0.0.7:8000", "model": "demo-model", "dataset": "synthetic", "users": 8,
          "metric_profile": "default", "started": "2026-01-01T12:00:00+0000"}


def side(name: str, recs: list[dict], **config) -> Side:
    cols = from_records(recs)
    samples = metrics.request_samples(cols)
    results = metrics.compute(from_records(recs))  # compute uses up a Columns' event arrays
    return Side(runs=[f"/runs/{name}"], configs=[{**CONFIG, **config}], samples=[samples], results=[results])


def rows_for(base: Side, new: Side, verdict_of) -> pd.DataFrame:
    """Comparison rows from both sides' tables; verdict_of(metric, stat, stage) says the verdict."""
    b = base.results[0].perf.set_index(["Performance Parameters", "Stage"])
    n = new.results[0].perf.set_index(["Performance Parameters", "Stage"])
    out = []
    for (metric, stage) in b.index:
        if metric not in ("TTFT", "TPOT", "ITL", "E2EL", "OutputTokenThroughput") or (metric, stage) not in n.index:
            continue
        for stat in ("Median", "P99"):
            bv, nv = float(b.loc[(metric, stage), stat]), float(n.loc[(metric, stage), stat])
            rel = (nv - bv) / bv if bv else np.nan
            out.append({"metric": metric, "statistic": stat, "stage": stage,
                        "unit": "token/s" if metric == "OutputTokenThroughput" else "ms",
                        "base": bv, "new": nv, "diff": nv - bv, "rel": rel, "rel_lo": rel - 0.02,
                        "rel_hi": rel + 0.02, "better": "higher" if metric == "OutputTokenThroughput" else "lower",
                        "verdict": verdict_of(metric, stat, stage)})
    out.append({"metric": "TTFT", "statistic": "Min", "stage": "total", "unit": "ms", "base": np.nan,
                "new": np.nan, "diff": np.nan, "rel": np.nan, "rel_lo": np.nan, "rel_hi": np.nan,
                "better": "lower", "verdict": NA})
    return pd.DataFrame(out, columns=list(ROW_COLUMNS))


def verdicts(metric, stat, stage):
    if metric == "TTFT":
        return WORSE
    if metric == "TPOT" and stat == "Median":
        return BETTER
    return SAME


def comparison(base: Side, new: Side, **kw) -> Comparison:
    return Comparison(base=base, new=new, rows=rows_for(base, new, verdicts),
                      verdict=kw.pop("verdict", "WORSE: TTFT P50 +50 % (significant); TPOT P50 -25 %"), **kw)


@pytest.fixture(scope="module")
def flat():
    base = side("20260101_base", synthetic_records(300, ttft=0.1, itl=0.02, seed=0))
    new = side("20260102_new", synthetic_records(300, ttft=0.15, itl=0.015, seed=1),
               model=f"evil {XSS}<img src=x onerror=alert(1)>")
    return base, new


def cells_with_colour(html: str) -> list[tuple[str, str]]:
    """(row verdict, colour class) of every coloured cell of the comparison tables."""
    out = []
    for verdict, row in re.findall(r'<tr data-verdict="([^"]+)">(.*?)</tr>', html, re.S):
        for cls in re.findall(r'<td class="[^"]*\b(better|worse)\b[^"]*">', row):
            out.append((verdict, cls))
    return out


def test_verdict_table_colours_cdfs_and_offline(tmp_path, flat):
    base, new = flat
    cmp = comparison(base, new, notes=["2 runs differ in max_out_len", f"note {XSS}"],
                     breaches=["TTFT P99 +48 % > --fail-on ttft_p99=+10%"],
                     accuracy={"base": 75.0, "new": 62.5, "n": 8, "right_to_wrong": 2, "wrong_to_right": 1,
                               "p_value": 0.5, "verdict": SAME, "extra": {"k": [1, 2]}})
    path = render(cmp, str(tmp_path / "out" / "compare.html"))
    assert path == str(tmp_path / "out" / "compare.html")
    html = read(path)
    assert not [p for p in os.listdir(tmp_path / "out") if ".tmp" in p]

    # the verdict at the top, breaches in red, notes, both runs named
    assert html.index('id="verdict"') < html.index('id="table"')
    assert "WORSE: TTFT P50 +50 % (significant); TPOT P50 -25 %" in html.split('id="verdict"')[1][:200]
    assert re.search(r'<ul class="breaches" id="breaches">\s*<li>TTFT P99 \+48 % &gt; --fail-on', html)
    assert "2 runs differ in max_out_len" in html
    assert "20260101_base vs 20260102_new" in html
    assert "/runs/20260101_base" in html and "demo-model" in html
    setup = html.split('id="setup"')[1].split("</table>")[0]
    assert re.findall(r'<tr class="differs"><th>([^<]+)</th>', setup) == ["Model", "Output token/s (per run)"]

    # the table: every row, grouped by stage, coloured only where significant
    rows = cmp.rows
    assert html.count("<tr data-verdict=") == len(rows)
    coloured = cells_with_colour(html)
    assert coloured and all(v in (BETTER, WORSE) and v == cls for v, cls in coloured)
    n_sig = int(rows["verdict"].isin([BETTER, WORSE]).sum())
    assert len(coloured) == 3 * n_sig  # diff, rel and verdict cells of each significant row
    for verdict in (SAME, NA):
        for row in re.findall(rf'<tr data-verdict="{verdict}">(.*?)</tr>', html, re.S):
            assert "better" not in re.findall(r'class="([^"]*)"', row) and "worse" not in row.split("<td")[-1]
            assert not re.search(r'class="[^"]*\b(better|worse)\b', row)
    ttft = rows[(rows.metric == "TTFT") & (rows.statistic == "Median") & (rows.stage == "total")].iloc[0]
    assert f"{ttft.rel * 100:+.1f} % [{(ttft.rel - 0.02) * 100:+.1f}, {(ttft.rel + 0.02) * 100:+.1f}]" in html
    assert re.search(r'<td class="u">token/s</td>', html)
    assert '<tr data-verdict="n/a"><td>TTFT</td><td>Min</td><td>total</td><td class="n">-</td>' in html

    # four overlaid CDFs, each with a base and a new line, downsampled
    c = charts(html)
    for m in ("ttft", "tpot", "itl", "e2el"):
        chart = c[f"cdf-{m}"]
        assert 'class="ln c0"' in chart and 'class="ln c1"' in chart, m
        assert ">base<" in chart and ">new<" in chart, m
        assert re.search(r">base P50 [\d.]+<", chart) and re.search(r">new P50 [\d.]+<", chart)
    assert f">base P50 {ttft.base:.4g}<" in c["cdf-ttft"] and f">new P50 {ttft.new:.4g}<" in c["cdf-ttft"]
    itl_path = re.search(r'class="ln c0" d="([^"]+)"', c["cdf-itl"]).group(1)
    assert itl_path.count("L") < CDF_POINTS  # 300 x 63 gaps drawn through 400 quantiles

    # no stages: one point per run, said so
    for m in ("ttft", "tpot"):
        assert 'class="pt c0"' in c[f"lvt-{m}"] and 'class="pt c1"' in c[f"lvt-{m}"]
    assert "Neither side has load stages" in html

    # accuracy: whatever keys it has
    acc = html.split('<section id="accuracy">')[1].split("</section>")[0]
    for k, v in (("base", "75"), ("new", "62.5"), ("right_to_wrong", "2"), ("p_value", "0.5"),
                 ("verdict", SAME), ("extra", '{&#34;k&#34;: [1, 2]}')):
        assert f"<tr><th>{k}</th><td>{v}</td></tr>" in acc, k

    # offline and escaped
    assert "<script" not in html.lower() and "<img" not in html.lower()
    assert "evil &lt;script&gt;alert(" in html and "note &lt;script&gt;" in html
    assert not EXTERNAL.findall(html), EXTERNAL.findall(html)[:5]
    assert "@font-face" not in html and "<link" not in html.replace('<link rel="icon" href="data:,">', "")
    assert set(re.findall(r"https?://[^\s<\"]+", html)) == {"http://10.0.0.7:8000"}


def test_stages_on_both_sides_draw_both_curves(tmp_path):
    stages = ("c4", "c8", "c16")
    base = side("base", synthetic_records(360, stages=stages, seed=0), steps=[4, 8, 16])
    new = side("new", synthetic_records(360, stages=stages, ttft=0.08, seed=2), steps=[4, 8, 16])
    html = read(render(comparison(base, new, verdict="BETTER"), str(tmp_path / "c.html")))
    c = charts(html)
    for m in ("ttft", "tpot", "itl", "e2el"):
        chart = c[f"lvt-{m}"]
        # base and new: a P50 line and a dashed P99 line each, through their stages' points
        for cls in ("c0", "c1"):
            assert re.search(rf'class="ln {cls}" d="M[^"]*L[^"]*L[^"]*"', chart), (m, cls)
            assert f'class="ln {cls} dash"' in chart and f'class="pt {cls}"' in chart
        assert all(chart.count(f">{s}<") == 2 for s in stages), m   # each stage labelled on both lines
        assert ">base<" in chart and ">new<" in chart  # the legend
    assert "One point per load stage" in html
    # the table groups stages, total first, and a stage with a significant change opens
    assert re.findall(r'class="stagegroup" data-stage="([^"]+)"', html) == ["total", *stages]
    assert all(re.search(rf'<details open class="stagegroup" data-stage="{s}">', html) for s in ("total", *stages))


def test_non_streaming_side_says_not_measured(tmp_path, flat):
    base, _ = flat
    new = side("ns", synthetic_records(50, stream=False), stream=False)
    cmp = Comparison(base=base, new=new, rows=pd.DataFrame(columns=list(ROW_COLUMNS)), verdict="n/a")
    html = read(render(cmp, str(tmp_path / "c.html")))
    c = charts(html)
    assert "new (not measured)" in c["cdf-ttft"] and 'class="ln c0"' in c["cdf-ttft"]
    assert 'class="ln c1"' not in c["cdf-ttft"]
    assert 'class="ln c1"' in c["cdf-e2el"]  # E2EL is measured without streaming
    assert "No rows to compare." in html
    # neither side measured: the placeholder
    cmp = Comparison(base=new, new=new, rows=pd.DataFrame(columns=list(ROW_COLUMNS)))
    c = charts(read(render(cmp, str(tmp_path / "d.html"))))
    assert "not measured on either side" in c["cdf-ttft"] and 'class="ln' not in c["cdf-ttft"]


def test_a_million_samples_stay_small(tmp_path, flat):
    base, new = flat
    rng = np.random.default_rng(0)
    n = 1_000_000

    def big(shift):
        values = {m: rng.lognormal(np.log(100 * shift), 0.3, n) for m in ("TTFT", "TPOT", "E2EL")}
        return metrics.RequestSamples(stage=np.full(n, "total", object), t_send=np.zeros(n), values=values,
                                      itl=rng.lognormal(np.log(20 * shift), 0.2, 2 * n),
                                      itl_counts=np.full(n, 2), stream=True)

    cmp = comparison(Side(base.runs, base.configs, [big(1.0)], base.results),
                     Side(new.runs, new.configs, [big(1.1)], new.results))
    path = render(cmp, str(tmp_path / "big.html"))
    assert os.path.getsize(path) < 150_000
    c = charts(read(path))
    for m in ("ttft", "tpot", "itl", "e2el"):
        for cls in ("c0", "c1"):
            d = re.search(rf'class="ln {cls}" d="([^"]+)"', c[f"cdf-{m}"]).group(1)
            assert d.count("L") == CDF_POINTS - 1


def test_ecdf_is_exact_for_small_samples():
    xs, ys, step = ecdf(np.array([3.0, 1.0, 2.0]))
    assert step and list(xs) == [1, 1, 2, 3] and np.allclose(ys, [0, 100 / 3, 200 / 3, 100])
    xs, ys, step = ecdf(np.arange(10_001, dtype=float))
    assert not step and xs.size == CDF_POINTS and xs[0] == 0 and xs[-1] == 10_000 and ys[-1] == 100


def test_layout_in_a_real_browser(tmp_path):
    """Optional: a screenshot of the page in Debian's chromium (skipped where it is absent)."""
    chromium = os.environ.get("LLM_TESTING_CHROMIUM", "/usr/bin/chromium")
    if not os.path.isfile(chromium):
        pytest.skip(f"{chromium} not found")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    stages = ("c4", "c8", "c16")
    base = side("20260101_base", synthetic_records(360, stages=stages, seed=0))
    new = side("20260102_new", synthetic_records(360, stages=stages, ttft=0.15, itl=0.015, seed=2))
    path = render(comparison(base, new, breaches=["TTFT P50 +50 % > +10 %"], notes=["same host"],
                             accuracy={"base": 75.0, "new": 62.5, "p_value": 0.5, "verdict": SAME}),
                  str(tmp_path / "compare.html"))
    from test_browser import FLAGS
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1320, "height": 900})
            errors, requests = [], []
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))

            def only_the_file(route):
                requests.append(route.request.url)
                route.continue_() if route.request.url.startswith("file://") else route.abort()
            page.route("**/*", only_the_file)
            page.goto(f"file://{path}")
            page.wait_for_load_state("load")
            assert requests == [f"file://{path}"] and errors == []
            drawn = page.evaluate("""() => Array.from(document.querySelectorAll('svg.chart')).map(svg => {
                const r = svg.getBoundingClientRect();
                return [svg.dataset.chart, Math.round(r.width), Math.round(r.height)];
            })""")
            keys = {k for k, w, h in drawn if w > 300 and h > 150}
            assert {f"{k}-{m}" for k in ("cdf", "lvt") for m in ("ttft", "tpot", "itl", "e2el")} <= keys, drawn
            worse = page.locator("td.worse").first
            assert worse.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(254, 226, 226)"
            os.makedirs(os.path.join(ROOT, "test-artifacts"), exist_ok=True)
            page.screenshot(path=os.path.join(ROOT, "test-artifacts", "compare.png"), full_page=True)
        finally:
            browser.close()


def test_repeats_are_pooled(tmp_path, flat):
    _, new = flat
    stages = ("c4", "c8")
    r1, r2 = (side(f"rep{i}", synthetic_records(200, stages=stages, seed=i)) for i in (1, 2))
    repeats = Side(r1.runs + r2.runs, r1.configs + r2.configs, r1.samples + r2.samples, r1.results + r2.results)
    html = read(render(comparison(repeats, new), str(tmp_path / "c.html")))
    assert "Comparison: rep1, rep2 vs 20260102_new" in html
    c = charts(html)
    assert "base: 400 requests; new: 300 requests" in html
    chart = c["lvt-ttft"]
    assert len(re.findall(r'class="ln c0" d="M[^"]* L[^"]*"', chart)) == 2   # one P50 line per repeat
    assert chart.count(">c4<") == 1 and ">20260102_new<" not in chart and ">new<" in chart
