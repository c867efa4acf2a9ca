"""A pretrain killed with SIGKILL resumes and reproduces the uninterrupted run exactly."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from modelworks.config import load_config
from modelworks.pipeline import run
from tests.conftest import ROOT, cli, tiny_overrides

STEPS = ["pretrain.steps=150", "pretrain.ckpt_every=10", "pretrain.eval_every=25"]


def _losses(run_dir):
    lines = (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in map(json.loads, lines)]


@pytest.mark.slow  # the default suite kills and resumes 5 times in test_reliability.py
def test_killed_pretrain_resumes_with_identical_losses_and_weights(tmp_path):
    runs = tmp_path / "runs"
    ref = load_config(None, tiny_overrides(runs, "ref") + STEPS)
    run(ref)  # uninterrupted reference, all stages

    killed = tiny_overrides(runs, "killed") + STEPS
    (runs / "killed").mkdir(parents=True)
    for stage in ("collect", "preprocess"):
        shutil.copytree(runs / "ref" / stage, runs / "killed" / stage)
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelworks", "pretrain", *killed],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpts = runs / "killed" / "pretrain.partial" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.suffix != ".tmp" for p in ckpts.glob("step_*")):
        assert proc.poll() is None, "pretrain finished or failed before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # killed midway: no finished stage folder, only the resumable partial one
    assert not (runs / "killed" / "pretrain").exists()
    assert (runs / "killed" / "pretrain.partial").is_dir()

    # the partial run belongs to its config: another config must not silently discard it
    other = cli("pretrain", *killed, "pretrain.lr=0.01", check=False)
    assert other.returncode == 2
    assert "holds an unfinished pretrain of another config" in other.stderr

    resumed = cli("pretrain", *killed)
    assert "resumed from" in resumed.stderr + resumed.stdout
    assert _losses(runs / "killed") == _losses(runs / "ref")
    a = load_file(runs / "ref" / "pretrain" / "model.safetensors")
    b = load_file(runs / "killed" / "pretrain" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
    from modelworks.train.checkpoint import latest_good, list_checkpoints

    runs = tmp_path / "runs"
    cfg = load_config(None, tiny_overrides(runs) + ["pretrain.keep_last=3"])
    run(cfg)
    root = cfg.run_dir / "pretrain" / "checkpoints"
    ckpts = list_checkpoints(root)
    assert [c.name for c in ckpts] == ["step_000008", "step_000012", "step_000016"]
    with open(ckpts[-1] / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\xff\xff\xff\xff")
    assert latest_good(root) == ckpts[-2]
