"""GSM8K answer extraction and scoring of collected completions (no Locust, no I/O).

Three rules, each a pure function of (completion, reference):

`accuracy` (the default, AISBench/OpenCompass): as read in OpenCompass `opencompass/datasets/gsm8k.py`
(`gsm8k_postprocess`, `gsm8k_dataset_postprocess`, `Gsm8kEvaluator.is_equal`) and AISBench
`extract_non_reasoning_content` (its chat models' pred_postprocessor):
  1. drop every `<think>...</think>`; when there is a `</think>` but no `<think>`, keep only what
     follows the last `</think>`; the result is stripped;
  2. cut at the first `Question:`;
  3. prediction = last match of `-?\\d+\\.\\d+|-?\\d+`, or the string `NULL` when there is none;
  4. reference = text after `#### ` with commas removed;
  5. correct when pred == ref as strings, or |float(pred) - int(ref)| < 1e-6 (any exception -> wrong).
  Quirk kept for comparability: `1,000` extracts as `000`.

`strict-match` and `flexible-extract` (lm-evaluation-harness `lm_eval/tasks/gsm8k/gsm8k.yaml`, v3,
with `RegexFilter` from `lm_eval/filters/extraction.py` and `exact_match_hf_evaluate`):
  - the same `<think>` removal, then the text is cut at the first of the task's `until` stop sequences
    (`Question:`, `</s>`, `<|im_end|>`): lm-eval never sees text past them because it generates with
    them as stops; our requests don't, so the cut stands in for the stop;
  - strict-match: first match of `#### (\\-?[0-9\\.\\,]+)`; flexible-extract: last match of
    `(-?[$0-9.,]{2,})|(-?[0-9]+)` (first non-empty group); both stripped, `[invalid]` when none;
  - exact match after removing, in this order, `,`  `$`  `(?s).*#### `  a trailing `.` from both the
    prediction and the reference (the reference as stored, e.g. the full GSM8K answer), then lowercasing.
"""
from __future__ import annotations

import re

METRICS = ("accuracy", "strict-match", "flexible-extract")

THINK_START, THINK_END = "<think>", "</think>"
_THINK_RE = re.compile(rf"{THINK_START}(.*?){THINK_END}", re.DOTALL)

# OpenCompass gsm8k_postprocess
OC_NUMBER_RE = re.compile(r"\-?\d+\.\d+|\-?\d+")
OC_NO_ANSWER = "NULL"

# lm-eval gsm8k.yaml
LM_EVAL_UNTIL = ("Question:", "</s>", "<|im_end|>")
STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
LM_EVAL_FALLBACK = "[invalid]"
LM_EVAL_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")


# ---------------------------------------------------------------- shared pre-processing

def strip_reasoning(text: str) -> str:
    """AISBench `extract_non_reasoning_content`: drop `<think>...</think>` blocks; with a lone
    `</think>` (no `<think>`), keep what follows the last one. Stripped."""
    if THINK_START not in text and THINK_END in text:
        return text.split(THINK_END)[-1].strip()
    return _THINK_RE.sub("", text).strip()


_WHITESPACE_RE = re.compile(r"\s")
_TAIL = 256


def last_match(regex: re.Pattern, text: str):
    """`regex.findall(text)[-1]`, or None when there is no match, without scanning a long text whole.

    For the number patterns here (no match contains whitespace, none is empty), a left-to-right scan
    restarted just after any whitespace finds the same matches from there on as the full scan: no match
    can span the whitespace. So try the tail after the first whitespace of the last _TAIL characters,
    and fall back to the whole text when the tail has no match.
    """
    if len(text) > _TAIL:
        ws = _WHITESPACE_RE.search(text, len(text) - _TAIL)
        if ws:
            found = regex.findall(text, ws.end())
            if found:
                return found[-1]
    found = regex.findall(text)
    return found[-1] if found else None


# ---------------------------------------------------------------- accuracy (AISBench/OpenCompass)

def _accuracy_pred(clean: str) -> str:
    number = last_match(OC_NUMBER_RE, clean.split("Question:")[0])
    return OC_NO_ANSWER if number is None else number


def extract_accuracy(completion: str) -> str:
    """The default rule's prediction: `<think>` removal, cut at `Question:`, last number; `NULL` if none."""
    return _accuracy_pred(strip_reasoning(completion or ""))


def reference_answer(reference: str) -> str:
    """OpenCompass `gsm8k_dataset_postprocess`: the text after `#### `, commas removed.
    A reference without `#### ` (a loader that stored only the number) is taken whole, stripped."""
    if "#### " in reference:
        return reference.split("#### ")[1].replace(",", "")
    return reference.strip().replace(",", "")


def is_correct(pred: str, ref: str) -> bool:
    """OpenCompass `Gsm8kEvaluator.is_equal`."""
    try:
        return pred == ref or abs(float(pred) - int(ref)) < 1e-6
    except Exception:  # NULL, a decimal reference, overflow...
        return False


# ---------------------------------------------------------------- lm-eval strict-match / flexible-extract

def _cut_until(clean: str) -> str:
    for stop in LM_EVAL_UNTIL:
        clean = clean.split(stop)[0]
    return clean


def lm_eval_text(completion: str) -> str:
    """What lm-eval's filters would see: `<think>` removed, cut at the first `until` stop sequence."""
    return _cut_until(strip_reasoning(completion or ""))


def _strict_pred(text: str) -> str:
    # RegexFilter(group_select=0): the first match; one capture group, so findall gives strings
    m = STRICT_RE.search(text)
    return m.group(1).strip() if m else LM_EVAL_FALLBACK


def _flexible_pred(text: str) -> str:
    # RegexFilter(group_select=-1): the last match; of its tuple of groups, the first non-empty one
    match = last_match(FLEXIBLE_RE, text)
    if match is None:
        return LM_EVAL_FALLBACK
    return [g for g in match if g][0].strip()


def extract_strict(completion: str) -> str:
    """lm-eval `strict-match`: first `#### (\\-?[0-9\\.\\,]+)`, `[invalid]` when none."""
    return _strict_pred(lm_eval_text(completion))


def extract_flexible(completion: str) -> str:
    """lm-eval `flexible-extract`: last `(-?[$0-9.,]{2,})|(-?[0-9]+)`, `[invalid]` when none."""
    return _flexible_pred(lm_eval_text(completion))


_IGNORE_RES = [re.compile(p) for p in LM_EVAL_IGNORE]


def lm_eval_normalize(text: str) -> str:
    """`exact_match` with gsm8k.yaml's regexes_to_ignore (in order) and ignore_case."""
    for regex in _IGNORE_RES:
        text = regex.sub("", text)
    return text.lower()


def lm_eval_match(pred: str, reference: str) -> bool:
    return lm_eval_normalize(pred) == lm_eval_normalize(reference)


# ---------------------------------------------------------------- one sample, all rules

def score_sample(completion: str, reference: str) -> dict:
    """Predictions and verdicts of the three rules for one successful completion.

    Returns {"reference", "reference_lm_eval", "pred": {metric: str}, "correct": {metric: bool}}.
    """
    clean = strip_reasoning(completion or "")
    lm_text = _cut_until(clean)
    ref, ref_lm = reference_answer(reference), lm_eval_normalize(reference)
    acc, strict, flexible = _accuracy_pred(clean), _strict_pred(lm_text), _flexible_pred(lm_text)
    return {
        "reference": ref,
        "reference_lm_eval": ref_lm,
        "pred": {"accuracy": acc, "strict-match": strict, "flexible-extract": flexible},
        "correct": {"accuracy": is_correct(acc, ref), "strict-match": lm_eval_normalize(strict) == ref_lm,
                    "flexible-extract": lm_eval_normalize(flexible) == ref_lm},
    }
