"""A run's records as columns: per-request arrays, and every SSE event's offset and kind back to back.

Metrics and plots work on these arrays. They are built one record at a time, straight from the lines
of records.jsonl (orjson: about 4x faster than json), never as a list of record dicts: a million
requests of ~130 events take ~1.2 GB here, and would take over ten times that as Python objects. A
big file is read by several processes (read_columns).
"""
from __future__ import annotations

import json
import math
import os
import pickle
import random
import subprocess
import sys
import tempfile
from array import array
from collections import Counter
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np
import orjson

from .records import CONTENT, OTHER, REASONING, ROLE, USAGE

KINDS = (ROLE, CONTENT, REASONING, USAGE, OTHER)  # event kind codes are indices into this
TOKEN_CODES = (KINDS.index(CONTENT), KINDS.index(REASONING))
_CODE = {k: i for i, k in enumerate(KINDS)}
_OTHER = _CODE[OTHER]
TOTAL = "total"  # the stage of a record without one
WARMUP = "warmup"  # the stage of --warmup requests: sent, kept on disk, left out of the numbers
CANCELLED = "cancelled"  # the error prefix of a request cut short by the test stopping (not a failure)
EXAMPLES = 5  # successful records kept whole (what the model said)
TEXT_SAMPLE = 500  # (text, usage tokens) pairs kept for the tokenizer-vs-usage check


@dataclass
class Columns:
    t_send: np.ndarray         # epoch s (NaN when missing)
    t_sched: np.ndarray | None  # open loop: scheduled epoch s (None when no record has one)
    success: np.ndarray        # bool
    input_tokens: np.ndarray   # float (0 when unknown)
    output_tokens: np.ndarray
    stage: np.ndarray          # int32 codes into stage_names
    stage_names: list
    counts: np.ndarray         # events per request
    offsets: np.ndarray        # every event's offset from its t_send, s, requests back to back
    kinds: np.ndarray          # uint8 code (index into KINDS) of every event
    failed: list = field(default_factory=list)       # {"error", "http_status"} of each failed request
    examples: list = field(default_factory=list)     # the first EXAMPLES successful records, without events
    text_sample: list = field(default_factory=list)  # (generated text, usage output tokens), sampled
    sources: Counter = field(default_factory=Counter)  # token_source of the successful requests
    cancelled: int = 0         # left out: cut short by the test stopping
    cancel_reasons: Counter = field(default_factory=Counter)  # why they were cut short -> how many
    excluded: int = 0          # left out: in an excluded stage (warm-up)
    skipped: int = 0           # unreadable lines or records
    resent: int = 0            # requests sent again at once: the first send never left (record `resends`)
    resends: int = 0
    retried: int = 0           # requests with attempts --retry allowed (record `retries`)
    retries: int = 0
    retried_failed: int = 0    # of those, failed on every attempt
    # event_tokens.py's fields: per request (NaN: the record has none), and per event (None when no record
    # has a list: every content/reasoning event carries one token, the others none)
    reasoning_tokens: np.ndarray | None = None
    answer_tokens: np.ndarray | None = None
    event_tokens: np.ndarray | None = None
    token_split_sources: Counter = field(default_factory=Counter)  # successful: (reasoning_, event_)token_source
    cached_tokens: np.ndarray | None = None  # per request: usage's prefix-cache tokens (NaN: not sent)

    @property
    def n(self) -> int:
        return int(self.success.size)

    def stage_of_each(self) -> np.ndarray:
        """The stage name of every request (object array)."""
        return np.array(self.stage_names, dtype=object)[self.stage] if self.n else np.zeros(0, object)


class ColumnBuilder:
    """Appends records one by one; `build()` gives the Columns.

    drop_cancelled: cancelled requests are counted, not kept. exclude_stages: records of these stages
    are counted, not kept. A record whose fields have the wrong types is counted as skipped."""

    def __init__(self, drop_cancelled: bool = False, exclude_stages: tuple = (), seed: int = 0):
        self.drop_cancelled, self.exclude = drop_cancelled, frozenset(exclude_stages)
        self.t_send, self.t_sched = array("d"), array("d")
        self.input_tokens, self.output_tokens = array("d"), array("d")
        self.success, self.stage, self.counts = bytearray(), array("i"), array("q")
        self.offsets, self.kinds = array("d"), bytearray()
        self.reasoning_tokens, self.answer_tokens = array("d"), array("d")
        self.et_counts, self.et_values = array("q"), array("I")  # per request: its event_tokens list, if any
        self.cached_tokens = array("d")
        self.split_sources: Counter = Counter()
        self.stage_codes: dict[str, int] = {}
        self.any_sched = False
        self.failed, self.examples, self.text_sample = [], [], []
        self.sources: Counter = Counter()
        self.cancelled = self.excluded = self.skipped = 0
        self.resent = self.resends = self.retried = self.retries = self.retried_failed = 0
        self.cancel_reasons: Counter = Counter()
        self._usage_seen = 0
        self._kinds_seen: dict[str, bytes] = {}
        self._rng = random.Random(seed)

    def add(self, rec) -> None:
        if not isinstance(rec, dict):
            self.skipped += 1
            return
        error = rec.get("error") or ""
        if self.drop_cancelled and isinstance(error, str) and error.startswith(CANCELLED):
            self.cancelled += 1
            self.cancel_reasons[cancel_reason(error)] += 1
            return
        stage = rec.get("stage") or TOTAL
        if not isinstance(stage, str):
            self.skipped += 1
            return
        if stage in self.exclude:
            self.excluded += 1
            return
        try:  # convert everything first, so a bad record leaves nothing half-appended
            events = rec.get("events") or ()
            if events:
                columns = tuple(zip(*events))  # (offsets, kinds, n_chars): one C-level pass
                offsets = array("d", columns[0])
                kinds = self._kind_codes(columns[1])
            else:
                offsets, kinds = _NO_OFFSETS, b""
            t_send, t_sched = _float(rec.get("t_send")), _float(rec.get("t_sched"))
            tokens_in, tokens_out = _count(rec.get("input_tokens")), _count(rec.get("output_tokens"))
            resends, retries = int(_count(rec.get("resends"))), int(_count(rec.get("retries")))
            reasoning_tokens, answer_tokens = _float(rec.get("reasoning_tokens")), _float(rec.get("answer_tokens"))
            cached = _float(rec.get("cached_tokens"))
            per_event = rec.get("event_tokens")
            per_event = array("I", per_event) if per_event is not None else _NO_COUNTS
            code = self.stage_codes.setdefault(stage, len(self.stage_codes))
        except (TypeError, ValueError, IndexError, KeyError, OverflowError):
            self.skipped += 1
            return
        if len(kinds) != len(offsets) or len(offsets) != len(events):  # an event of fewer than 2 fields
            self.skipped += 1
            return
        if per_event and len(per_event) != len(events):
            per_event = _NO_COUNTS  # not this record's events: unknown, as without the field
        ok = bool(rec.get("success"))
        self.t_send.append(t_send)
        self.t_sched.append(t_sched)
        self.any_sched |= not math.isnan(t_sched)
        self.input_tokens.append(tokens_in)
        self.output_tokens.append(tokens_out)
        self.success.append(ok)
        self.stage.append(code)
        self.counts.append(len(offsets))
        self.offsets += offsets
        self.kinds += kinds
        self.reasoning_tokens.append(reasoning_tokens)
        self.answer_tokens.append(answer_tokens)
        self.cached_tokens.append(cached)
        self.et_counts.append(len(per_event))
        self.et_values += per_event
        if ok:
            self._keep_success(rec, tokens_out)
        else:
            self.failed.append({"error": error, "http_status": rec.get("http_status")})
        if resends:
            self.resent += 1
            self.resends += resends
        if retries:
            self.retried += 1
            self.retries += retries
            self.retried_failed += not ok

    def _kind_codes(self, kinds: tuple) -> bytes:
        # most requests of a run share a few kind sequences (role, n x content, other, usage): looking
        # the joined sequence up is ~2x cheaper than coding every event again
        key = "\0".join(kinds)
        codes = self._kinds_seen.get(key)
        if codes is None:
            codes = bytes(map(_CODE.get, kinds, repeat(_OTHER)))
            if len(self._kinds_seen) > 4096:
                self._kinds_seen.clear()
            self._kinds_seen[key] = codes
        return codes

    def _keep_success(self, rec: dict, tokens_out: float) -> None:
        source = rec.get("token_source")
        self.sources[source if isinstance(source, str) else None] += 1
        for name in ("reasoning_token_source", "event_token_source"):  # "reasoning_token:usage", ...
            if isinstance(rec.get(name), str):
                self.split_sources[f"{name[:-7]}:{rec[name]}"] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append({k: v for k, v in rec.items() if k != "events"})
        text = _str(rec.get("reasoning")) + _str(rec.get("completion"))
        if source == "usage" and tokens_out and text:  # reservoir sample: uniform over the run
            self._usage_seen += 1
            if len(self.text_sample) < TEXT_SAMPLE:
                self.text_sample.append((text, int(tokens_out)))
            else:
                j = self._rng.randrange(self._usage_seen)
                if j < TEXT_SAMPLE:
                    self.text_sample[j] = (text, int(tokens_out))

    # buffers in file order for dump/merge; `stage` is re-coded on merge (each part numbers its own)
    _BUFFERS = ("t_send", "t_sched", "input_tokens", "output_tokens", "success", "counts", "offsets", "kinds",
                "reasoning_tokens", "answer_tokens", "et_counts", "et_values", "cached_tokens")

    def dump(self, f) -> None:
        """Write everything to `f` (a helper process's part): a pickle of the small things, then the
        raw buffers."""
        meta = {**self._small(), "stage": self.stage.tobytes(),
                "sizes": [len(getattr(self, name)) for name in self._BUFFERS]}
        pickle.dump(meta, f, protocol=pickle.HIGHEST_PROTOCOL)
        for name in self._BUFFERS:
            f.write(getattr(self, name))

    def merge(self, f) -> None:
        """Append a part written by `dump` (the records after this builder's, in file order). The
        buffers are read straight into this builder's, so a part costs no second copy in memory."""
        meta = pickle.load(f)
        for name, n in zip(self._BUFFERS, meta["sizes"]):
            buf = getattr(self, name)
            if isinstance(buf, bytearray):
                buf += f.read(n)
            else:
                buf.fromfile(f, n)
        part_stage = array("i")
        part_stage.frombytes(meta["stage"])
        self._merge_small(meta, part_stage)

    def merge_builder(self, other: ColumnBuilder) -> None:
        """Append another builder's records (read in this process)."""
        for name in self._BUFFERS:
            getattr(self, name).extend(getattr(other, name))
        self._merge_small(other._small(), other.stage)

    def _small(self) -> dict:
        """Everything but the buffers and the stage codes: what `_merge_small` joins."""
        return {"stage_names": list(self.stage_codes), "any_sched": self.any_sched, "failed": self.failed,
                "examples": self.examples, "text_sample": self.text_sample, "usage_seen": self._usage_seen,
                "sources": dict(self.sources), "cancelled": self.cancelled,
                "cancel_reasons": dict(self.cancel_reasons), "excluded": self.excluded,
                "skipped": self.skipped, "split_sources": dict(self.split_sources),
                **{k: getattr(self, k) for k in _ATTEMPTS}}

    def _merge_small(self, meta: dict, part_stage: array) -> None:
        recode = [self.stage_codes.setdefault(name, len(self.stage_codes)) for name in meta["stage_names"]]
        self.stage.extend(map(recode.__getitem__, part_stage))
        self.any_sched |= meta["any_sched"]
        self.failed += meta["failed"]
        self.examples += meta["examples"][:EXAMPLES - len(self.examples)]
        self.sources.update(meta["sources"])
        self.cancelled += meta["cancelled"]
        self.cancel_reasons.update(meta.get("cancel_reasons") or {})
        self.excluded += meta["excluded"]
        self.skipped += meta["skipped"]
        self.split_sources.update(meta.get("split_sources") or {})
        for k in _ATTEMPTS:
            setattr(self, k, getattr(self, k) + meta[k])
        # two uniform samples -> one: each side keeps a share in proportion to what it saw
        seen = self._usage_seen + meta["usage_seen"]
        if len(self.text_sample) + len(meta["text_sample"]) > TEXT_SAMPLE:
            mine = min(len(self.text_sample), round(TEXT_SAMPLE * self._usage_seen / seen))
            theirs = min(len(meta["text_sample"]), TEXT_SAMPLE - mine)
            self.text_sample = (self._rng.sample(self.text_sample, mine)
                                + self._rng.sample(meta["text_sample"], theirs))
        else:
            self.text_sample += meta["text_sample"]
        self._usage_seen = seen

    def build(self) -> Columns:
        names = list(self.stage_codes)
        return Columns(
            t_send=_np(self.t_send, np.float64), t_sched=_np(self.t_sched, np.float64) if self.any_sched else None,
            success=_np(self.success, np.bool_), input_tokens=_np(self.input_tokens, np.float64),
            output_tokens=_np(self.output_tokens, np.float64), stage=_np(self.stage, np.int32), stage_names=names,
            counts=_np(self.counts, np.int64), offsets=_np(self.offsets, np.float64), kinds=_np(self.kinds, np.uint8),
            failed=self.failed, examples=self.examples, text_sample=self.text_sample, sources=self.sources,
            cancelled=self.cancelled, cancel_reasons=self.cancel_reasons, excluded=self.excluded,
            skipped=self.skipped, **{k: getattr(self, k) for k in _ATTEMPTS},
            reasoning_tokens=_np(self.reasoning_tokens, np.float64), answer_tokens=_np(self.answer_tokens, np.float64),
            event_tokens=self._event_tokens(), token_split_sources=self.split_sources,
            cached_tokens=_np(self.cached_tokens, np.float64))

    def _event_tokens(self) -> np.ndarray | None:
        """Tokens of every event: the records' lists where they have one, else 1 per content/reasoning
        event and 0 for the others; None when no record has a list."""
        if not len(self.et_values):
            return None
        kinds = _np(self.kinds, np.uint8)
        out = token_mask(kinds).astype(np.int32)  # 4 bytes an event, only in a run that has lists
        listed = np.repeat(_np(self.et_counts, np.int64) > 0, _np(self.counts, np.int64))
        out[listed] = _np(self.et_values, np.uint32)
        return out


_ATTEMPTS = ("resent", "resends", "retried", "retries", "retried_failed")  # counters of ColumnBuilder


def cancel_reason(error: str) -> str:
    """'cancelled: the test stopped while the request was in flight' -> 'the test stopped'."""
    why = error[len(CANCELLED):].lstrip(": ")
    return why.removesuffix(" while the request was in flight") or "the test stopped"


def token_mask(kinds: np.ndarray) -> np.ndarray:
    """Which events carry generated text (content or reasoning); one bool per event and no bigger
    temporary (np.isin builds an index array the size of the events)."""
    mask = kinds == TOKEN_CODES[0]
    mask |= kinds == TOKEN_CODES[1]
    return mask


def from_records(records: list[dict]) -> Columns:
    """Columns of in-memory records, all kept as given."""
    b = ColumnBuilder()
    for r in records:
        b.add(r)
    return b.build()


PARALLEL_BYTES = 256 << 20  # a records file bigger than this is read by several processes at once
MAX_PROCESSES = 8


def read_columns(path: str, drop_cancelled: bool = True, exclude_stages: tuple = (),
                 sample_requests: int = 0, processes: int | None = None) -> tuple[Columns, Columns | None]:
    """Columns of every readable record in `path`, and (sample_requests > 0) a second, independent
    Columns of about that many records taken evenly through the file, for plots.

    Unreadable lines (e.g. one cut short by a crash) are counted in `skipped`. A file bigger than
    PARALLEL_BYTES is cut into byte ranges at line ends, read by `processes` processes (default: one
    per CPU, at most MAX_PROCESSES) and joined in file order: the same Columns as one reader's."""
    size = os.path.getsize(path)
    if processes is None:
        processes = min(os.cpu_count() or 1, MAX_PROCESSES) if size > PARALLEL_BYTES else 1
    # the sample: the line that holds each multiple of `every` bytes, so the same records whichever
    # ranges the file is cut into
    every = max(1, size // sample_requests) if sample_requests else 0
    bounds = [size * i // processes for i in range(processes + 1)]
    args = (drop_cancelled, tuple(exclude_stages), every)
    with tempfile.TemporaryDirectory(prefix="llm-testing-columns-") as tmp:
        parts = [(a, b, os.path.join(tmp, str(i)), _spawn(path, a, b, args, os.path.join(tmp, str(i))))
                 for i, (a, b) in enumerate(zip(bounds[1:-1], bounds[2:]))]
        full, sample = _read_range(path, bounds[0], bounds[1], *args)  # this process reads the first part
        for a, b, out, proc in parts:
            if proc.wait() == 0:
                with open(out, "rb") as f:
                    full.merge(f)
                    if sample is not None:
                        sample.merge(f)
            else:  # the helper died (out of memory?): read its part here rather than lose it
                more, more_sample = _read_range(path, a, b, *args)
                full.merge_builder(more)
                if sample is not None:
                    sample.merge_builder(more_sample)
    return full.build(), sample.build() if sample is not None else None


def _spawn(path: str, start: int, end: int, args: tuple, out: str) -> subprocess.Popen:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds the benchmark package
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-m", "benchmark.columns", path, str(start), str(end),
                             json.dumps(args), out], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _read_range(path: str, start: int, end: int, drop_cancelled: bool, exclude_stages: tuple,
                every: int) -> tuple[ColumnBuilder, ColumnBuilder | None]:
    """The records of the lines that start in [start, end) (every: sample the line holding each
    multiple of `every` bytes, 0 = none)."""
    full = ColumnBuilder(drop_cancelled, exclude_stages)
    sample = ColumnBuilder(drop_cancelled, exclude_stages) if every else None
    with open(path, "rb") as f:  # bytes: a line of broken UTF-8 is skipped like any unreadable line
        if start:
            f.seek(start - 1)
            f.readline()  # the end of a line that started before `start`: the previous range's
        pos = f.tell()
        loads, add = orjson.loads, full.add
        for line in f:
            if pos >= end:
                break
            first, pos = pos, pos + len(line)
            try:
                rec = loads(line)
            except orjson.JSONDecodeError:
                rec = _parse_slowly(line)
                if rec is _BLANK:
                    continue
                if rec is None:
                    full.skipped += 1
                    continue
            add(rec)
            if sample is not None and -(-first // every) * every < pos:
                sample.add(rec)
    return full, sample


def _main(argv: list[str]) -> None:
    """A helper process: read one byte range, write its builders for the parent to merge."""
    path, start, end, args, out = argv
    full, sample = _read_range(path, int(start), int(end), *json.loads(args))
    with open(out, "wb") as f:
        full.dump(f)
        if sample is not None:
            sample.dump(f)


_BLANK = object()
_NO_OFFSETS = array("d")
_NO_COUNTS = array("I")


def _parse_slowly(line: bytes):
    """A line orjson refused: blank (_BLANK), JSON with NaN/Infinity (json.dumps writes them), or
    unreadable (None)."""
    if not line.strip():
        return _BLANK
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def _file_size(f) -> int:
    return os.fstat(f.fileno()).st_size


def _str(value) -> str:
    return value if isinstance(value, str) else ""


def _float(value) -> float:
    return math.nan if value is None else float(value)


def _count(value) -> float:
    v = 0.0 if value is None else float(value)
    return v if v == v else 0.0  # NaN: unknown


def _np(buf, dtype) -> np.ndarray:
    """A numpy array over the builder's buffer (no copy)."""
    return np.frombuffer(buf, dtype=dtype) if len(buf) else np.zeros(0, dtype)


if __name__ == "__main__":
    _main(sys.argv[1:])
