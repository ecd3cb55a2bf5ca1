"""GSM8K in the OpenCompass/AISBench layout: a folder with `test.jsonl` and `train.jsonl`, one
{"question", "answer"} object per line, each answer ending `#### N`.

Prompt styles:
- `4shot`: AISBench's `gsm8k_gen_4_shot_cot_chat_prompt`, 9 messages alternating user/assistant, no
  system message. The exemplars are train lines 7364, 1708, 669, 6724 (0-based); their answers lose every
  `<<...>>` calculator note and the final `\\n#### N` becomes `\\nThe answer is N\\n`. When train.jsonl
  is shorter than that (a small demo folder), its first 4 lines are the exemplars instead.
- `0shot`: one user message, the same turn as the last one of the 4-shot prompt.
Every user turn is `Question: {question}\\nLet's think step by step\\nAnswer:`.

Subsets: `test` (all of test.jsonl) and `demo` (its first 8 questions). The reference answer of each
prompt is the text after `#### ` with commas removed (AISBench's gsm8k_dataset_postprocess).
"""
from __future__ import annotations

import json
import os
import re

from . import DatasetError, Prompt

EXEMPLAR_LINES = (7364, 1708, 669, 6724)
DEMO_SIZE = 8
USER_TURN = "Question: {question}\nLet's think step by step\nAnswer:"
_CALC = re.compile(r"<<.*?>>")
_FINAL = re.compile(r"\n#### (.*)$", re.S)


def reference(answer: str) -> str:
    return answer.split("#### ", 1)[1].replace(",", "").strip()


def exemplar_answer(answer: str) -> str:
    text = _CALC.sub("", answer)
    return _FINAL.sub(lambda m: f"\nThe answer is {m.group(1)}\n", text)


def user_turn(question: str) -> str:
    return USER_TURN.format(question=question)


def read_jsonl(path: str, limit: int | None = None) -> list[dict]:
    """{"question", "answer"} rows; one-line DatasetError naming the file and line when malformed."""
    rows = []
    try:
        f = open(path, encoding="utf-8-sig")
    except OSError as e:
        raise DatasetError(f"--dataset-path: cannot read {path} ({e.strerror})") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DatasetError(f"{path}:{lineno}: not valid JSON ({getattr(e, 'msg', e)})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object with question and answer")
            for key in ("question", "answer"):
                if not isinstance(row.get(key), str):
                    raise DatasetError(f"{path}:{lineno}: missing {key!r} (a string)")
            if "#### " not in row["answer"]:
                raise DatasetError(f"{path}:{lineno}: the answer does not end with '#### N'")
            rows.append(row)
    return rows


def _folder(path: str) -> str:
    if os.path.isfile(path):  # test.jsonl itself given: use its folder
        return os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(path):
        raise DatasetError(f"--dataset-path {path}: no such folder (expected the GSM8K folder with "
                           "test.jsonl and train.jsonl)")
    return path


def few_shot_messages(folder: str) -> list[dict]:
    """The 8 exemplar messages of the 4-shot prompt."""
    train = os.path.join(folder, "train.jsonl")
    if not os.path.isfile(train):
        raise DatasetError(f"--dataset-path {folder}: no train.jsonl (the 4-shot prompt takes its "
                           "exemplars from it; or use --prompt-style 0shot)")
    rows = read_jsonl(train, limit=max(EXEMPLAR_LINES) + 1)
    if len(rows) > max(EXEMPLAR_LINES):
        shots = [rows[i] for i in EXEMPLAR_LINES]
    elif len(rows) >= len(EXEMPLAR_LINES):
        shots = rows[:len(EXEMPLAR_LINES)]   # a short (demo) train file: its first 4 lines
    else:
        raise DatasetError(f"{train}: needs at least {len(EXEMPLAR_LINES)} lines for the 4-shot "
                           f"exemplars, has {len(rows)}")
    messages = []
    for row in shots:
        messages.append({"role": "user", "content": user_turn(row["question"])})
        messages.append({"role": "assistant", "content": exemplar_answer(row["answer"])})
    return messages


def load(path: str, num_prompts: int = 0, prompt_style: str = "4shot", subset: str = "test") -> list[Prompt]:
    folder = _folder(path)
    test = os.path.join(folder, "test.jsonl")
    if not os.path.isfile(test):
        raise DatasetError(f"--dataset-path {path}: no test.jsonl (expected the GSM8K folder with "
                           "test.jsonl and train.jsonl)")
    if prompt_style not in ("4shot", "0shot"):
        raise DatasetError(f"--prompt-style: expected one of 4shot, 0shot; got {prompt_style!r}")
    if subset not in ("test", "demo"):
        raise DatasetError(f"--subset: expected one of test, demo; got {subset!r}")
    limit = DEMO_SIZE if subset == "demo" else None
    if num_prompts:
        limit = min(limit, num_prompts) if limit else num_prompts
    rows = read_jsonl(test, limit=limit)
    if not rows:
        raise DatasetError(f"{test}: no questions")
    shots = few_shot_messages(folder) if prompt_style == "4shot" else []
    return [Prompt(index=i, reference=reference(r["answer"]),
                   messages=[dict(m) for m in shots] + [{"role": "user",
                                                         "content": user_turn(r["question"])}])
            for i, r in enumerate(rows)]
