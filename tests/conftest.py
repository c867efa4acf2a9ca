import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_torch_state():
    """Each test starts with torch's defaults, whatever the previous one changed."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


def tiny_overrides(runs_dir: Path, name: str = "tiny") -> list[str]:
    """A config that runs every stage in seconds on real built-in data."""
    return [
        f"runs_dir={runs_dir}",
        f"name={name}",
        "collect.sources.0.limit=120",
        "preprocess.vocab_size=512",
        "model.d_model=32",
        "model.n_layer=2",
        "model.n_head=4",
        "model.n_kv_head=2",
        "pretrain.steps=16",
        "pretrain.batch_size=4",
        "pretrain.seq_len=32",
        "pretrain.warmup_steps=2",
        "pretrain.eval_every=8",
        "pretrain.ckpt_every=4",
        "pretrain.log_every=1",
        "pretrain.eval_batches=2",
        "evaluate.batches=4",
        "evaluate.max_new_tokens=8",
        "threads=1",
    ]


@pytest.fixture
def tiny(tmp_path) -> list[str]:
    return tiny_overrides(tmp_path / "runs")


def cli(*args: str, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real `modelworks` command in a fresh process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "modelworks", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"modelworks {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
