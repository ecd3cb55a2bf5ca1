"""The per-turn split of a conversation run: one row per turn index (1-based, records' `turn`), so TTFT by
turn shows the prefix cache at work (turn k's prompt repeats turns 1..k-1).

Written to performances/<model_abbr>/<dataset>_by_turn.csv and .json beside AISBench's files (which stay
as they are), printed after the tables and shown in report.html. Rows: Requests and Failed per turn, then
TTFT, E2EL (ms) and InputTokens/OutputTokens averages and TTFT median over that turn's successful
requests (the default definitions, records.figures: TTFT = the first token's offset, E2EL = the last
event's; TTFT only for streamed answers). Warm-up and requests cut short by the test stopping are left
out, as in the tables. Runs without conversations (config.json: not --dataset conversations nor
--multi-turn, or no record has a turn) get no table and no file.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import orjson

from .columns import CANCELLED, WARMUP
from .records import figures

COLUMNS = ("Turn", "Requests", "Failed", "TTFT Average (ms)", "TTFT Median (ms)", "E2EL Average (ms)",
           "InputTokens Average", "OutputTokens Average")


def applies(config: dict) -> bool:
    """A conversation run (config.json): only then is records.jsonl read again (a 1 M-request run of
    single prompts is not read twice for a table it cannot have)."""
    return config.get("dataset") == "conversations" or bool(config.get("multi_turn"))


def rows(records_path: str) -> list[list]:
    """The table's rows from a records.jsonl; [] when no record carries a turn."""
    by: dict[int, list[dict]] = {}
    with open(records_path, "rb") as f:
        for line in f:
            if b'"turn":null' in line or b'"turn"' not in line:
                continue  # single-turn records (the fast path: no parse)
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # an unreadable line: the tables' reader counts it
            turn = rec.get("turn")
            if not isinstance(turn, int) or rec.get("stage") == WARMUP:
                continue
            if not rec.get("success") and str(rec.get("error") or "").startswith(CANCELLED):
                continue
            by.setdefault(turn, []).append(rec)
    out = []
    for turn in sorted(by):
        recs = by[turn]
        ok = [r for r in recs if r.get("success")]
        figs = [figures(r) for r in ok]

        def mean(values):
            v = [x for x in values if x is not None]
            return float(np.mean(v)) if v else math.nan

        ttft = [f["ttft_s"] * 1000 for f in figs if f["ttft_s"] is not None]
        out.append([turn, len(recs), len(recs) - len(ok), mean(ttft),
                    float(np.median(ttft)) if ttft else math.nan,
                    mean(f["e2el_s"] * 1000 for f in figs if f["e2el_s"] is not None),
                    mean(r.get("input_tokens") for r in ok), mean(r.get("output_tokens") for r in ok)])
    return out


def cell(v) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def console(table: list[list]) -> str:
    """A plain aligned table for the console (after the AISBench tables)."""
    cells = [list(COLUMNS)] + [[cell(v) for v in r] for r in table]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["By turn (conversations: each turn's prompt holds the turns before it):"]
    for k, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if k and i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def write(table: list[list], perf_dir: str, dataset: str) -> tuple[str, str] | None:
    """<dataset>_by_turn.csv and .json under perf_dir; None when there is no table."""
    if not table:
        return None
    import pandas as pd
    os.makedirs(perf_dir, exist_ok=True)
    csv_path = os.path.join(perf_dir, f"{dataset}_by_turn.csv")
    json_path = os.path.join(perf_dir, f"{dataset}_by_turn.json")
    pd.DataFrame(table, columns=COLUMNS).to_csv(csv_path, index=False, float_format="%.4f")
    with open(json_path, "w") as f:
        json.dump([{c: (None if isinstance(v, float) and math.isnan(v) else v) for c, v in zip(COLUMNS, r)}
                   for r in table], f, indent=2)
    return csv_path, json_path
