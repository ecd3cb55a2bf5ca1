"""AISBench-style accuracy outputs: the summary table (console, summary/summary.{txt,csv,md}),
results/<model_abbr>/<dataset>.json and the per-sample details file. Formatting only: the numbers
come from `score.py`.

summary.txt follows AISBench's `DefaultSummarizer._output_to_file` (ais_bench/benchmark/summarizers/
default.py): time string, `tabulate format`, 128 `^`, tabulate(headers='firstrow', floatfmt='.2f'),
128 `$`, then the csv, markdown and raw sections with the same rules and dividers.
"""
from __future__ import annotations

import csv
import io
import json
import os

import tabulate

from .gsm8k import METRICS

RULE_TOP, RULE_BOTTOM = "^" * 128, "$" * 128
DIVIDER = "-" * 128 + " THIS IS A DIVIDER " + "-" * 128
MODE = "gen"


def row_label(dataset: str, stage: str | None) -> str:
    """The dataset column: `gsm8k` for the whole run, `gsm8k@<stage>` for one load stage."""
    return dataset if stage is None else f"{dataset}@{stage}"


def summary_rows(scores: dict[str | None, dict[str, float]], dataset: str, version: str,
                 model_abbr: str) -> list[list[str]]:
    """AISBench's table as rows of strings, header first; values formatted '{:.02f}' as AISBench does.

    `scores` maps stage (None = the whole run) -> {metric: percent}, in display order.
    """
    table = [["dataset", "version", "metric", "mode", model_abbr]]
    for stage, values in scores.items():
        for metric in METRICS:
            table.append([row_label(dataset, stage), version, metric, MODE, "{:.02f}".format(values[metric])])
    return table


def format_tabulate(table: list[list[str]]) -> str:
    # columns 0-3 are labels: never parse them as numbers (a version like "1e5432" would print as inf)
    return tabulate.tabulate(table, headers="firstrow", floatfmt=".2f", disable_numparse=[0, 1, 2, 3])


def format_csv(table: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(table)  # plain `a,b,c` unless a value needs quoting
    return buf.getvalue()


def format_md(table: list[list[str]]) -> str:
    """AISBench `_format_md_table`, byte for byte."""
    text = "| " + " | ".join(table[0]) + " |\n"
    text += "|" + " | ".join("-----" for _ in table[0]) + "|\n"
    for row in table[1:]:
        text += "| " + " | ".join(row) + " |\n"
    return text


def format_raw(raw: dict[str, dict], model_abbr: str) -> str:
    lines = ["-------------------------------", f"Model: {model_abbr}"]
    lines += [f"{label}: {values}" for label, values in raw.items()]
    return "\n".join(lines)


def console_block(table: list[list[str]], time_str: str) -> str:
    """The first section of summary.txt: what is printed at the end of a run."""
    return f"{time_str}\ntabulate format\n{RULE_TOP}\n{format_tabulate(table)}\n{RULE_BOTTOM}\n"


def format_summary_txt(table: list[list[str]], time_str: str, raw_txt: str) -> str:
    csv_txt = "\n".join(",".join(row) for row in table)  # AISBench joins with ',' here
    return (console_block(table, time_str) + "\n"
            + DIVIDER + "\n\n"
            + "csv format\n" + RULE_TOP + "\n" + csv_txt + "\n" + RULE_BOTTOM + "\n\n"
            + "markdown format\n" + RULE_TOP + "\n" + format_md(table) + "\n" + RULE_BOTTOM + "\n"
            + DIVIDER + "\n\n"
            + "raw format\n" + RULE_TOP + "\n" + raw_txt + "\n" + RULE_BOTTOM + "\n")


def write_text(path: str, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=4, ensure_ascii=False) + "\n")


def write_jsonl(path: str, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_summary(summary_dir: str, table: list[list[str]], time_str: str, raw_txt: str) -> dict[str, str]:
    paths = {ext: os.path.join(summary_dir, f"summary.{ext}") for ext in ("txt", "csv", "md")}
    write_text(paths["txt"], format_summary_txt(table, time_str, raw_txt))
    write_text(paths["csv"], format_csv(table))
    write_text(paths["md"], format_md(table))
    return paths
