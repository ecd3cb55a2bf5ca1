"""Custom prompt files: `.jsonl` (one JSON object a line) or `.csv` (a header row), AISBench's custom
dataset format unchanged.

Columns:
- `question`: the prompt, sent as one user message (AISBench's qa template `{question}`), or
- `messages`: a full chat, a list of {"role", "content"} (in a CSV cell: that list as JSON);
- `answer` (optional): the reference answer, kept as text for scoring;
- `max_tokens` (optional): this prompt's output length (AISBench's per-line `max_tokens`).
Multiple-choice files as AISBench detects them (option columns `A`, `B`, ... consecutive from `A`, at
least two, in the first row) get AISBench's mcq layout: `Question: {question}\nA. {A}\nB. {B}...`
then `\nAnswer:` (its gen template with the answer cut; the exact trailing whitespace is not checked
against AISBench). Other columns are ignored, and so is a `.meta.json`.
Errors are one line naming the file and, for a bad line, its line number.
"""
from __future__ import annotations

import csv
import json
import os

from . import DatasetError, Prompt, jsonl_objects

ROLES = ("system", "user", "assistant", "tool", "developer")


def load(path: str, num_prompts: int = 0) -> list[Prompt]:
    if not os.path.exists(path):
        raise DatasetError(f"--dataset-path {path}: no such file")
    if os.path.isdir(path):
        raise DatasetError(f"--dataset-path {path}: is a folder; the custom dataset is a .jsonl or .csv file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".csv"):
        raise DatasetError(f"--dataset-path {path}: expected a .jsonl or .csv file")
    rows = _read_csv(path) if ext == ".csv" else jsonl_objects(path)
    prompts = []
    options = None
    for lineno, row in rows:
        if options is None:
            options = _options(row)
        prompts.append(_prompt(path, lineno, row, len(prompts), options))
        if num_prompts and len(prompts) >= num_prompts:
            break
    if not prompts:
        raise DatasetError(f"{path}: no prompts in the file")
    return prompts


def _open(path: str):
    try:
        return open(path, encoding="utf-8-sig", newline="")
    except OSError as e:
        raise DatasetError(f"--dataset-path {path}: cannot read it ({e.strerror})") from None


def _read_csv(path: str):
    with _open(path) as f:
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{path}: empty file (expected a header row with a question column)")
            header = [h.strip() for h in header]
            if "question" not in header and "messages" not in header:
                raise DatasetError(f"{path}: missing column 'question' (or 'messages'); "
                                   f"columns: {', '.join(header)}")
            while True:
                try:
                    values = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    raise DatasetError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
                if not any(v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    raise DatasetError(f"{path}:{reader.line_num}: expected {len(header)} fields "
                                       f"({', '.join(header)}), got {len(values)}")
                yield reader.line_num, dict(zip(header, values))
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: not UTF-8 text") from None


def _options(first_row: dict) -> list[str]:
    """AISBench's rule: option columns are the consecutive letters from A; mcq when 2 or more."""
    letters = []
    for k in range(26):
        letter = chr(ord("A") + k)
        if letter not in first_row:
            break
        letters.append(letter)
    return letters if len(letters) > 1 else []


def _prompt(path: str, lineno: int, row: dict, index: int, options: list[str]) -> Prompt:
    where = f"{path}:{lineno}"
    if row.get("messages") not in (None, ""):
        messages = _messages(where, row["messages"])
    elif row.get("question") not in (None, ""):
        q = row["question"]
        if not isinstance(q, (str, int, float)) or isinstance(q, bool):
            raise DatasetError(f"{where}: 'question' must be text, got {type(q).__name__}")
        text = str(q)
        if options:
            text = "Question: " + text + "".join(f"\n{o}. {row.get(o, '')}" for o in options) + "\nAnswer:"
        messages = [{"role": "user", "content": text}]
    else:
        raise DatasetError(f"{where}: missing column 'question' (or 'messages')")
    answer = row.get("answer")
    reference = None if answer in (None, "") else (answer if isinstance(answer, str) else json.dumps(answer))
    return Prompt(index=index, messages=messages, reference=reference,
                  max_tokens=_max_tokens(where, row.get("max_tokens")))


def _messages(where: str, value) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise DatasetError(f"{where}: 'messages' is not a JSON list of {{role, content}}") from None
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or "content" not in m:
            raise DatasetError(f"{where}: messages[{k}] must be {{\"role\": one of {', '.join(ROLES)}, "
                               "\"content\": ...}")
        out.append(m)
    return out


def _max_tokens(where: str, value) -> int | None:
    if value in (None, ""):
        return None
    try:
        n = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        n = None
    if isinstance(value, bool) or n is None or n < 1:
        raise DatasetError(f"{where}: max_tokens must be a positive integer, got {value!r}")
    return n
