"""Prompt sources: GSM8K (against AISBench's request body), synthetic exact lengths, custom files,
ShareGPT, and the dataset options API."""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import time

import numpy as np
import pytest

from benchmark import datasets
from benchmark.datasets import DATASETS, DatasetError, Prompt, add_arguments, load, parse_options
from benchmark.datasets import gsm8k, synthetic
from benchmark.tokens import count_input, encode_lens, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
GSM8K = os.path.join(SHARED, "datasets", "gsm8k")
BODY = os.path.join(SHARED, "reference", "aisbench", "gsm8k_4shot_chat_request_body_example.json")
DEMO = os.path.join(ROOT, "datasets", "demo_gsm8k")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def body_messages():
    with open(BODY) as f:
        return json.load(f)["messages"]


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


def content(p: Prompt) -> str:
    return p.messages[-1]["content"]


# ------------------------------------------------------------------------------------------ gsm8k

def test_gsm8k_first_prompt_equals_aisbench_request_body(body_messages):
    prompts = load("gsm8k", GSM8K)
    assert len(prompts) == 1319
    assert prompts[0].messages == body_messages
    assert len(prompts[0].messages) == 9
    assert [m["role"] for m in prompts[0].messages] == ["user", "assistant"] * 4 + ["user"]
    assert prompts[0].reference == "18"
    assert [p.index for p in prompts[:3]] == [0, 1, 2]
    # the same 8 exemplars in every prompt, then that prompt's question
    assert all(p.messages[:8] == body_messages[:8] for p in prompts[::100])
    assert content(prompts[1]).startswith("Question: A robe takes 2 bolts of blue fiber")


def test_gsm8k_exemplars_follow_the_rules(body_messages):
    shots = gsm8k.few_shot_messages(GSM8K)
    with open(os.path.join(GSM8K, "train.jsonl")) as f:
        train = [json.loads(line) for line in f]
    for k, line in enumerate(gsm8k.EXEMPLAR_LINES):
        q, a = train[line]["question"], train[line]["answer"]
        assert shots[2 * k]["content"] == f"Question: {q}\nLet's think step by step\nAnswer:"
        expected = re.sub(r"<<.*?>>", "", a).replace("\n#### ", "\nThe answer is ") + "\n"
        assert shots[2 * k + 1]["content"] == expected == body_messages[2 * k + 1]["content"]
        assert "<<" not in expected and "####" not in expected


def test_gsm8k_references_counts_and_subsets():
    with open(os.path.join(GSM8K, "test.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    prompts = load("gsm8k", GSM8K)
    assert [p.reference for p in prompts] == [r["answer"].split("#### ")[1].replace(",", "") for r in rows]
    assert all("," not in p.reference for p in prompts)
    assert gsm8k.reference("so 1,000 + 250 = 1,250\n#### 1,250") == "1250"
    assert len(load("gsm8k", GSM8K, 5)) == 5
    demo = load("gsm8k", GSM8K, subset="demo")
    assert len(demo) == 8 and [content(p) for p in demo] == [content(p) for p in prompts[:8]]
    assert len(load("gsm8k", GSM8K, 3, subset="demo")) == 3
    assert len(load("gsm8k", GSM8K, 50, subset="demo")) == 8
    assert load("gsm8k", os.path.join(GSM8K, "test.jsonl"), 2)[1].messages == prompts[1].messages


def test_gsm8k_zero_shot(body_messages):
    prompts = load("gsm8k", GSM8K, 4, prompt_style="0shot")
    assert prompts[0].messages == [body_messages[-1]]
    assert all(len(p.messages) == 1 and p.messages[0]["role"] == "user" for p in prompts)
    assert prompts[0].reference == "18"


def test_demo_folder_is_valid_gsm8k_and_falls_back_to_the_first_train_lines():
    for name in ("test.jsonl", "train.jsonl"):
        with open(os.path.join(DEMO, name)) as f:
            for line in f:
                row = json.loads(line)
                assert re.search(r"\n#### \d+$", row["answer"])
                for expr, value in re.findall(r"<<([^=]+)=([^>]+)>>", row["answer"]):
                    assert abs(eval(expr) - float(value)) < 1e-9  # the worked steps are right
    prompts = load("gsm8k", DEMO, subset="demo")
    assert len(prompts) == 8 and len(load("gsm8k", DEMO)) == 10
    assert len(prompts[0].messages) == 9
    with open(os.path.join(DEMO, "train.jsonl")) as f:
        first = json.loads(f.readline())
    assert prompts[0].messages[0]["content"] == gsm8k.user_turn(first["question"])
    assert prompts[0].messages[1]["content"].endswith("\nThe answer is 26\n")
    assert prompts[0].reference == "27"


def test_gsm8k_errors(tmp_path):
    with pytest.raises(DatasetError) as e:
        load("gsm8k", str(tmp_path / "missing"))
    assert "no such folder" in one_line(e)
    with pytest.raises(DatasetError) as e:
        load("gsm8k", str(tmp_path))
    assert "no test.jsonl" in one_line(e)
    (tmp_path / "test.jsonl").write_text('{"question": "1+1?", "answer": "2\\n#### 2"}\n{"question": "x"\n')
    with pytest.raises(DatasetError) as e:
        load("gsm8k", str(tmp_path), prompt_style="0shot")
    assert one_line(e).startswith(f"{tmp_path / 'test.jsonl'}:2: not valid JSON")
    (tmp_path / "test.jsonl").write_text('{"question": "1+1?", "answer": "2\\n#### 2"}\n')
    assert load("gsm8k", str(tmp_path), prompt_style="0shot")[0].reference == "2"
    with pytest.raises(DatasetError) as e:
        load("gsm8k", str(tmp_path))
    assert "no train.jsonl" in one_line(e) and "0shot" in str(e.value)
    (tmp_path / "train.jsonl").write_text('{"question": "1+1?", "answer": "2\\n#### 2"}\n' * 2)
    with pytest.raises(DatasetError) as e:
        load("gsm8k", str(tmp_path))
    assert "needs at least 4 lines" in one_line(e)
    (tmp_path / "test.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n')
    with pytest.raises(DatasetError) as e:
        load("gsm8k", str(tmp_path), prompt_style="0shot")
    assert one_line(e) == f"{tmp_path / 'test.jsonl'}:1: the answer does not end with '#### N'"


# ------------------------------------------------------------------------------------------ synthetic

@pytest.mark.parametrize("spec", ["fixed:100", "uniform:16:256", "gaussian:64:40:32:256", "zipf:1.5:32:256"])
def test_synthetic_lengths_are_exact_and_follow_the_distribution(tok, spec):
    dist = synthetic.parse_dist(spec)
    prompts = load("synthetic", None, 1000, spec, seed=0, max_out_len=None, tokenizer=tok,
                   output_len="uniform:1:64")
    assert len(prompts) == 1000
    lens = np.array(encode_lens(tok, [content(p) for p in prompts]))
    words = np.array([len(content(p).split(" ")) for p in prompts])
    assert (lens == words).all()                       # one token per word: exact by construction
    expected = dist.sample(np.random.default_rng(0), 1000)
    assert (lens == expected).all()                    # exactly the sampled length, prompt by prompt
    assert lens.min() >= dist.lo and lens.max() <= dist.hi
    assert abs(lens.mean() / dist.mean() - 1) < 0.05, (lens.mean(), dist.mean())
    if dist.kind != "fixed":
        assert lens.min() < lens.max()
    if spec.startswith("gaussian"):
        assert lens.min() == 32                        # clipped, the lower tail lands on MIN
    outs = np.array([p.max_tokens for p in prompts])
    assert outs.min() >= 1 and outs.max() <= 64 and abs(outs.mean() / 32.5 - 1) < 0.05
    assert count_input(tok, prompts[0].messages) == lens[0]   # no chat template: content only


def test_synthetic_prompts_differ_from_the_first_token_and_are_seeded(tok):
    prompts = load("synthetic", None, 2000, "fixed:8", seed=3, tokenizer=tok)
    firsts = [tok.encode(content(p), add_special_tokens=False)[0] for p in prompts]
    assert len(set(firsts)) == len(prompts)
    assert len({content(p) for p in prompts}) == len(prompts)
    again = load("synthetic", None, 2000, "fixed:8", seed=3, tokenizer=tok)
    assert [content(p) for p in again] == [content(p) for p in prompts]
    other = load("synthetic", None, 2000, "fixed:8", seed=4, tokenizer=tok)
    assert [content(p) for p in other] != [content(p) for p in prompts]
    synthetic.word_table(tok, need=100_000)   # the whole vocabulary checked: same prompts still
    assert [content(p) for p in load("synthetic", None, 2000, "fixed:8", seed=3, tokenizer=tok)] == \
        [content(p) for p in prompts]
    assert all(p.max_tokens is None for p in prompts)  # no output length asked: --max-out-len applies
    assert [p.index for p in prompts[:3]] == [0, 1, 2]
    assert all(p.messages[0]["role"] == "user" and len(p.messages) == 1 for p in prompts)


def test_synthetic_shared_prefix(tok):
    prompts = load("synthetic", None, 300, "uniform:40:80", seed=1, tokenizer=tok, prefix_tokens=32)
    ids = [tok.encode(content(p), add_special_tokens=False) for p in prompts]
    assert all(40 <= len(x) <= 80 for x in ids)
    assert len({tuple(x[:32]) for x in ids}) == 1      # the same first 32 tokens everywhere
    assert len({x[32] for x in ids}) == len(prompts)   # and different from the next token on
    assert len({content(p).split(" ")[32] for p in prompts}) == len(prompts)


def test_synthetic_default_output_len_is_max_out_len_and_legacy_call(tok):
    prompts = load("synthetic", None, 10, "fixed:20", 0, 64, tok)
    assert [p.max_tokens for p in prompts] == [64] * 10
    legacy = datasets.load("synthetic", None, 10, 32, 0)   # the seed's call: (name, path, n, input_len, seed)
    assert len(legacy) == 10 and all(len(content(p).split()) == 32 for p in legacy)
    assert len(datasets.load("synthetic")) == 1000          # default --num-prompts


def test_synthetic_exact_with_another_kind_of_tokenizer():
    """A sentencepiece-style (Metaspace) BPE, trained here on GSM8K text: lengths still exact."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    with open(os.path.join(GSM8K, "train.jsonl")) as f:
        corpus = [json.loads(line)["answer"] for _, line in zip(range(2000), f)]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Metaspace()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=2000, special_tokens=["[UNK]", "<s>"],
                                                        show_progress=False))
    other = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", unk_token="[UNK]")
    prompts = load("synthetic", None, 300, "uniform:5:120", seed=0, tokenizer=other, prefix_tokens=4)
    lens = encode_lens(other, [content(p) for p in prompts])
    assert lens == synthetic.parse_dist("uniform:5:120").sample(np.random.default_rng(0), 300).tolist()


def test_synthetic_repairs_prompts_the_construction_got_wrong(tok, monkeypatch):
    """Filler words that are really 2-3 tokens: the bulk check finds the prompts that are off (also
    when only a sample is checked) and fixes them."""
    table = synthetic.word_table(tok)
    bad = [w for w in ("xqzjv", "kwyzzb", "qqpfx") if len(tok.encode(" " + w, add_special_tokens=False)) > 1]
    assert bad
    fake = synthetic.WordTable(table.first, table.mid, table.pool[:200] + bad)
    monkeypatch.setattr(synthetic, "word_table", lambda _tok, need=0: fake)
    monkeypatch.setattr(synthetic, "VERIFY_ALL_TOKENS", 5000)   # 200 x 64 tokens: sample first
    prompts = load("synthetic", None, 200, "fixed:64", seed=0, tokenizer=tok)
    assert any(w in content(p).split(" ") for p in prompts for w in bad)  # some kept, counted right
    assert encode_lens(tok, [content(p) for p in prompts]) == [64] * 200


def test_ten_thousand_synthetic_prompts_build_in_seconds(tok):
    synthetic.word_table(tok)
    t = time.perf_counter()
    prompts = load("synthetic", None, 10_000, "fixed:128", seed=7, max_out_len=128, tokenizer=tok)
    elapsed = time.perf_counter() - t
    assert len(prompts) == 10_000 and elapsed < 20, elapsed


@pytest.mark.parametrize("spec, message", [
    ("x", "--input-len: expected fixed:N, uniform:MIN:MAX, gaussian:MEAN:STD:MIN:MAX or zipf:A:MIN:MAX; got 'x'"),
    ("uniform:5", "--input-len: expected fixed:N, uniform:MIN:MAX, gaussian:MEAN:STD:MIN:MAX or zipf:A:MIN:MAX; "
                  "got 'uniform:5'"),
    ("fixed:1.5", "--input-len: expected fixed:N, uniform:MIN:MAX, gaussian:MEAN:STD:MIN:MAX or zipf:A:MIN:MAX; "
                  "got 'fixed:1.5'"),
    ("fixed:0", "--input-len: lengths must be at least 1 token; got 'fixed:0'"),
    ("uniform:9:3", "--input-len: MIN must not exceed MAX; got 'uniform:9:3'"),
    ("gaussian:10:-1:1:20", "--input-len: STD must not be negative; got 'gaussian:10:-1:1:20'"),
    ("zipf:0:1:20", "--input-len: the zipf exponent A must be positive; got 'zipf:0:1:20'"),
    ("gaussian:nan:1:1:20", "--input-len: expected fixed:N, uniform:MIN:MAX, gaussian:MEAN:STD:MIN:MAX or "
                            "zipf:A:MIN:MAX; got 'gaussian:nan:1:1:20'"),
])
def test_length_spec_errors(spec, message):
    with pytest.raises(DatasetError) as e:
        synthetic.parse_dist(spec)
    assert one_line(e) == message


def test_length_specs_parse():
    assert synthetic.parse_dist("128").spec == "fixed:128"
    assert synthetic.parse_dist(" Uniform:1:10 ").spec == "uniform:1:10"
    assert synthetic.parse_dist("gaussian:100:20.5:1:300").spec == "gaussian:100:20.5:1:300"
    assert synthetic.parse_dist("zipf:1.1:16:4096").spec == "zipf:1.1:16:4096"
    d = synthetic.parse_dist("gaussian:50:0:1:40")
    assert (d.sample(np.random.default_rng(0), 5) == 40).all() and d.mean() == 40


# ------------------------------------------------------------------------------------------ custom

def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_custom_jsonl_aisbench_format(tmp_path):
    f = write(tmp_path / "qa.jsonl",
              '{"question": "165+833+650+615=", "answer": "2263"}\n'
              '\n'
              '{"question": "Say hi", "max_tokens": 16}\n'
              '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],'
              ' "answer": 7, "max_tokens": "32"}\n')
    prompts = load("custom", f)
    assert [p.messages for p in prompts] == [
        [{"role": "user", "content": "165+833+650+615="}],
        [{"role": "user", "content": "Say hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]]
    assert [p.reference for p in prompts] == ["2263", None, "7"]
    assert [p.max_tokens for p in prompts] == [None, 16, 32]
    assert [p.index for p in prompts] == [0, 1, 2]
    assert len(load("custom", f, 2)) == 2


def test_custom_csv(tmp_path):
    path = tmp_path / "qa.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer", "max_tokens", "A"])
        w.writerow(["What is 2+2?\nThink.", "4", "8", "x"])
        w.writerow(["Name a colour", "", "", ""])
    prompts = load("custom", str(path))
    assert [content(p) for p in prompts] == ["What is 2+2?\nThink.", "Name a colour"]
    assert [p.reference for p in prompts] == ["4", None]
    assert [p.max_tokens for p in prompts] == [8, None]
    mcq = write(tmp_path / "mcq.jsonl", '{"question": "165+833+650+615=", "A": "2258", "B": "2263", '
                                        '"C": "2281", "answer": "B"}\n')
    (p,) = load("custom", mcq)
    assert content(p) == "Question: 165+833+650+615=\nA. 2258\nB. 2263\nC. 2281\nAnswer:"
    assert p.reference == "B"
    msgs = write(tmp_path / "chat.csv", 'messages\n"[{""role"": ""user"", ""content"": ""hi""}]"\n')
    assert load("custom", msgs)[0].messages == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("name, text, message", [
    ("a.jsonl", '{"question": "ok"}\n{"question": "x",\n', "{f}:2: not valid JSON (Expecting property name "
                                                             "enclosed in double quotes)"),
    ("b.jsonl", '{"question": "ok"}\n\n{"answer": "3"}\n', "{f}:3: missing column 'question' (or 'messages')"),
    ("c.jsonl", '["question"]\n', "{f}:1: expected a JSON object, got list"),
    ("d.jsonl", '{"question": "ok", "max_tokens": "many"}\n', "{f}:1: max_tokens must be a positive integer, "
                                                               "got 'many'"),
    ("e.jsonl", '{"question": "ok", "max_tokens": 0}\n', "{f}:1: max_tokens must be a positive integer, got 0"),
    ("f.jsonl", '{"messages": [{"role": "user"}]}\n', '{f}:1: messages[0] must be {"role": one of system, user, '
                                                       'assistant, tool, developer, "content": ...}'),
    ("g.jsonl", '{"messages": "hello"}\n', "{f}:1: 'messages' is not a JSON list of {role, content}"),
    ("h.jsonl", "\n\n", "{f}: no prompts in the file"),
    ("i.csv", "prompt,answer\nhi,1\n", "{f}: missing column 'question' (or 'messages'); columns: prompt, answer"),
    ("j.csv", "question,answer\nhi,1\nho,2,extra\n", "{f}:3: expected 2 fields (question, answer), got 3"),
    ("k.csv", "question,answer\nhi,1\n,2\n", "{f}:3: missing column 'question' (or 'messages')"),
    ("l.csv", 'question,answer\n"hi"x,1\n', '{f}:2: malformed CSV (\',\' expected after \'"\')'),
    ("m.csv", "question,max_tokens\nhi,1.5\n", "{f}:2: max_tokens must be a positive integer, got '1.5'"),
    ("n.csv", "", "{f}: empty file (expected a header row with a question column)"),
    ("o.txt", "question\nhi\n", "--dataset-path {f}: expected a .jsonl or .csv file"),
])
def test_custom_errors_are_one_line_with_line_numbers(tmp_path, name, text, message):
    f = write(tmp_path / name, text)
    with pytest.raises(DatasetError) as e:
        load("custom", f)
    assert one_line(e) == message.replace("{f}", f)


def test_custom_missing_file(tmp_path):
    with pytest.raises(DatasetError) as e:
        load("custom", str(tmp_path / "nope.jsonl"))
    assert one_line(e) == f"--dataset-path {tmp_path / 'nope.jsonl'}: no such file"
    with pytest.raises(DatasetError) as e:
        load("custom", str(tmp_path))
    assert "is a folder" in one_line(e)


# ------------------------------------------------------------------------------------------ sharegpt

def conv(*turns):
    return {"id": "x", "conversations": [{"from": who, "value": text} for who, text in turns]}


def words(n: int, tok) -> str:
    """A text of exactly n tokens."""
    table = synthetic.word_table(tok)
    text = " ".join([table.first[n]] + [table.pool[(n + i) % len(table.pool)] for i in range(n - 1)])
    assert len(tok.encode(text)) == n
    return text


@pytest.fixture
def sharegpt_file(tmp_path, tok):
    data = [
        conv(("human", words(10, tok)), ("gpt", words(20, tok))),                  # kept
        conv(("human", words(3, tok)), ("gpt", words(20, tok))),                   # prompt < 4
        conv(("human", words(10, tok)), ("gpt", words(3, tok))),                   # reply < 4
        conv(("human", words(1025, tok)), ("gpt", words(10, tok))),                # prompt > 1024
        conv(("human", words(1000, tok)), ("gpt", words(1049, tok))),              # total > 2048
        conv(("gpt", "Hello! How can I help?"), ("human", words(12, tok)), ("gpt", words(30, tok)),
             ("human", "more"), ("gpt", "sure")),                                  # first human turn
        conv(("human", words(5, tok))),                                            # no reply
        {"id": "y", "conversations": []},
        {"id": "z"},
        conv(("human", words(1000, tok)), ("gpt", words(1048, tok))),              # total = 2048: kept
    ]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_sharegpt_prompts_and_vllm_filters(sharegpt_file, tok):
    prompts = load("sharegpt", sharegpt_file, 0, seed=0, tokenizer=tok)
    got = sorted((len(tok.encode(content(p))), p.max_tokens) for p in prompts)
    assert got == [(10, 20), (12, 30), (1000, 1048)]
    assert all(len(p.messages) == 1 and p.messages[0]["role"] == "user" for p in prompts)
    assert [p.index for p in prompts] == [0, 1, 2]
    again = load("sharegpt", sharegpt_file, 0, seed=0, tokenizer=tok)
    assert [content(p) for p in again] == [content(p) for p in prompts]
    assert len(load("sharegpt", sharegpt_file, 2, seed=5, tokenizer=tok)) == 2


def test_sharegpt_fixed_output_len(sharegpt_file, tok):
    prompts = load("sharegpt", sharegpt_file, 0, seed=0, max_out_len=100, tokenizer=tok)
    got = sorted((len(tok.encode(content(p))), p.max_tokens) for p in prompts)
    # the short reply no longer matters; 1000 + 100 fits; 1025-token prompt still too long
    assert got == [(10, 100), (10, 100), (12, 100), (1000, 100), (1000, 100)]


def test_sharegpt_errors(tmp_path, tok):
    with pytest.raises(DatasetError) as e:
        load("sharegpt", str(tmp_path / "nope.json"), tokenizer=tok)
    assert one_line(e) == f"--dataset-path {tmp_path / 'nope.json'}: no such file"
    bad = write(tmp_path / "bad.json", '[{"conversations": [\n  {"from": "human"\n')
    with pytest.raises(DatasetError) as e:
        load("sharegpt", bad, tokenizer=tok)
    assert one_line(e).startswith(f"{bad}: not valid JSON (") and "at line 3)" in str(e.value)
    obj = write(tmp_path / "obj.json", '{"conversations": []}')
    with pytest.raises(DatasetError) as e:
        load("sharegpt", obj, tokenizer=tok)
    assert "expected a JSON list" in one_line(e)
    short = write(tmp_path / "short.json", json.dumps([conv(("human", "hi"), ("gpt", "hello there friend"))]))
    with pytest.raises(DatasetError) as e:
        load("sharegpt", short, tokenizer=tok)
    assert "no conversation passed the length filters" in one_line(e)
    none = write(tmp_path / "none.json", json.dumps([conv(("gpt", "hi"))]))
    with pytest.raises(DatasetError) as e:
        load("sharegpt", none, tokenizer=tok)
    assert "no conversation with a human turn" in one_line(e)


# ------------------------------------------------------------------------------------------ options API

def parser_with_options():
    p = argparse.ArgumentParser()
    calls = []

    def add(flag, **kw):
        calls.append((flag, kw))
        p.add_argument(flag, **kw)

    add_arguments(add)
    return p, calls


def test_add_arguments_registers_string_options():
    p, calls = parser_with_options()
    flags = [c[0] for c in calls]
    assert flags == ["--prompt-style", "--subset", "--input-len", "--output-len", "--prefix-tokens",
                     "--prefix-ratio", "--prefix-groups", "--trace-speed", "--trace-start", "--trace-window",
                     "--multi-turn"]
    assert all((isinstance(kw["default"], str) or kw.get("action") == "store_true") and kw.get("help")
               for _, kw in calls)
    o = p.parse_args([])
    assert parse_options(o) == {"prompt_style": "4shot", "subset": "test", "input_len": "fixed:128",
                                "output_len": "", "prefix_tokens": 0}
    o = p.parse_args(["--prompt-style", "0shot", "--subset", "demo", "--input-len", "uniform:10:20",
                      "--output-len", "64", "--prefix-tokens", "5"])
    assert parse_options(o) == {"prompt_style": "0shot", "subset": "demo", "input_len": "uniform:10:20",
                                "output_len": "fixed:64", "prefix_tokens": 5}
    assert DATASETS == ("synthetic", "gsm8k", "custom", "sharegpt", "trace", "conversations")


@pytest.mark.parametrize("args, message", [
    (["--prompt-style", "8shot"], "--prompt-style: expected one of 4shot, 0shot; got '8shot'"),
    (["--subset", "train"], "--subset: expected one of test, demo; got 'train'"),
    (["--input-len", "lots"], "--input-len: expected fixed:N, uniform:MIN:MAX, gaussian:MEAN:STD:MIN:MAX or "
                              "zipf:A:MIN:MAX; got 'lots'"),
    (["--output-len", "uniform:0:5"], "--output-len: lengths must be at least 1 token; got 'uniform:0:5'"),
    (["--prefix-tokens", "x"], "--prefix-tokens: expected an integer; got 'x'"),
    (["--prefix-tokens", "-1"], "--prefix-tokens: must not be negative; got '-1'"),
    (["--input-len", "uniform:64:128", "--prefix-tokens", "64"],
     "--prefix-tokens: must be smaller than the shortest --input-len (64 in uniform:64:128); got '64'"),
])
def test_parse_options_errors_name_the_option(args, message):
    p, _ = parser_with_options()
    with pytest.raises(DatasetError) as e:
        parse_options(p.parse_args(args))
    assert one_line(e) == message


def test_load_by_name_with_parsed_options(tok):
    p, _ = parser_with_options()
    opts = parse_options(p.parse_args(["--input-len", "gaussian:30:5:20:40", "--output-len", "uniform:5:9",
                                       "--prefix-tokens", "10"]))
    prompts = load("synthetic", None, 50, seed=2, max_out_len=128, tokenizer=tok, **opts)
    assert all(20 <= len(tok.encode(content(p))) <= 40 and 5 <= p.max_tokens <= 9 for p in prompts)
    gsm = load("gsm8k", GSM8K, 0, seed=0, max_out_len=512, tokenizer=tok,
               **parse_options(p.parse_args(["--subset", "demo", "--prompt-style", "0shot"])))
    assert len(gsm) == 8 and len(gsm[0].messages) == 1 and gsm[0].max_tokens is None


def test_load_errors():
    with pytest.raises(DatasetError) as e:
        load("mmlu")
    assert one_line(e) == ("--dataset: unknown dataset 'mmlu'; choose from: synthetic, gsm8k, custom, sharegpt, "
                           "trace, conversations")
    for name in ("gsm8k", "custom", "sharegpt", "trace", "conversations"):
        with pytest.raises(DatasetError) as e:
            load(name, None)
        assert one_line(e).startswith(f"--dataset {name} needs --dataset-path")
    with pytest.raises(DatasetError) as e:
        load("synthetic", None, 5, tokenizer="/nonexistent/tokenizer")
    assert one_line(e) == "--tokenizer /nonexistent/tokenizer: no such directory"
    with pytest.raises(DatasetError) as e:
        load("synthetic", None, 5, "fixed:10", prefix_tokens=10)
    assert "--prefix-tokens: must be smaller" in one_line(e)
