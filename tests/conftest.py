import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def load_benchmark(name: str):
    """Import `benchmarks/<name>.py` the way `python benchmarks/<name>.py` sees the world: with its
    own folder first on sys.path, so its `from _common import ...` resolves as in a script run."""
    folder = str(BENCHMARKS)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(
            f"benchmark_{name}", BENCHMARKS / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if added:
            sys.path.remove(folder)
    return module


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


@contextlib.contextmanager
def served(target, *overrides: str, timeout: float = 120):
    """`modelworks serve TARGET` on a free loopback port; yields (base URL, process) once
    /health says 200, and stops the server after. Its log goes to a file, never a pipe that a
    chatty server could fill."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "modelworks", "serve", str(target), f"serve.port={port}"]
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen([*cmd, *overrides], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise AssertionError(f"server exited:\n{log.read()[-3000:]}")
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.time() < deadline, f"server did not become healthy in {timeout} s"
                time.sleep(0.2)
            yield base, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
