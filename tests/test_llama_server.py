"""scripts/llama_server.py: a server that cannot start is one readable message (how it ended, its log).

Real processes stand in for a broken llama-server: a program that dies by SIGSEGV while "loading",
one that exits with an error, one that never listens. The real binary is checked by
`scripts/real_server.sh`'s smoke check and the `realserver` stage.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT, pid_alive

sys.path.insert(0, os.path.join(ROOT, "scripts"))
from llama_server import LlamaServer, ServerError, exit_reason  # noqa: E402

SCRIPT = os.path.join(ROOT, "scripts", "llama_server.py")


def fake_server(tmp_path, body: str) -> str:
    path = tmp_path / "fake-llama-server"
    path.write_text("#!/bin/sh\necho 'load_tensors: loading model'\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_exit_reason_names_the_signal_or_the_code():
    assert exit_reason(-11) == "killed by signal SIGSEGV (11)"
    assert exit_reason(-9) == "killed by signal SIGKILL (9)"
    assert exit_reason(1) == "exited with code 1"


def test_a_server_killed_by_a_signal_says_so_with_its_log(tmp_path):
    binary = fake_server(tmp_path, "echo 'ggml_backend_amx_mul_mat: oops'; kill -SEGV $$")
    with pytest.raises(ServerError) as e:
        LlamaServer(binary, "model.gguf", str(tmp_path / "log"), timeout=30)
    msg = str(e.value)
    assert msg.startswith("llama-server killed by signal SIGSEGV (11) while starting"), msg
    assert "ggml_backend_amx_mul_mat: oops" in msg and "load_tensors: loading model" in msg
    assert f"command: {binary} -m model.gguf --host 127.0.0.1" in msg


def test_a_server_that_never_listens_is_stopped_after_the_deadline(tmp_path):
    pid_file = tmp_path / "pid"
    binary = fake_server(tmp_path, f"echo $$ > {pid_file}; exec sleep 60")
    with pytest.raises(ServerError) as e:
        LlamaServer(binary, "model.gguf", str(tmp_path / "log"), timeout=1)
    assert str(e.value).startswith("llama-server not ready after 1 s"), str(e.value)
    assert "load_tensors: loading model" in str(e.value)
    assert not pid_alive(int(pid_file.read_text()))  # stopped by its pid on the error path too


def test_smoke_check_fails_with_one_message_and_exit_1(tmp_path):
    binary = fake_server(tmp_path, "echo 'error: failed to load model'; exit 3")
    res = subprocess.run([sys.executable, SCRIPT, "--smoke", binary, "model.gguf"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.startswith("llama_server.py: smoke check failed: llama-server exited with code 3 while starting")
    assert "error: failed to load model" in res.stderr and "Traceback" not in res.stderr
