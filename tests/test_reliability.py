"""Crash and fault tests: SIGKILL at random moments, a size-limited disk, pickle-bearing weights.

The kill harness starts the real `modelworks` command, kills it with SIGKILL at a moment drawn
from a seeded generator (a random number of new metrics lines, or the instant a checkpoint's
`.tmp` folder appears, that is during a checkpoint write), runs the same command again, and
repeats; then lets it finish and compares the full loss sequence and the final weights with an
uninterrupted run of the same config. Five kills in the default suite, twenty in the slow one.
"""

from __future__ import annotations

import json
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modelworks.config import load_config
from modelworks.pipeline import run, stage_functions
from tests.conftest import ROOT, cli, tiny_overrides


def _start(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "modelworks", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **kw,
    )


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def _kill_at_random(args: list[str], work: Path, rng: random.Random) -> str:
    """Start `modelworks args`, SIGKILL it at a random moment of its work; returns how it died:
    'ckpt-write' (a checkpoint folder was mid-write), 'training', or 'finished'."""
    metrics = work / "pretrain.partial" / "metrics.jsonl"
    ckpts = work / "pretrain.partial" / "checkpoints"
    proc = _start(args)
    during_write = rng.random() < 0.5
    target = _lines(metrics) + rng.randint(1, 30)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if during_write:
                if any(ckpts.glob("step_*.tmp")):
                    break
            elif _lines(metrics) >= target:
                break
            time.sleep(0.0005 if during_write else 0.01)
        if proc.poll() is not None:
            return "finished"
        proc.kill()
        proc.wait()
        return "ckpt-write" if any(ckpts.glob("step_*.tmp")) else "training"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


def _losses(run_dir: Path) -> list:
    lines = (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in map(json.loads, lines)]


def _same_weights(a: Path, b: Path) -> bool:
    x, y = (
        load_file(a / "pretrain" / "model.safetensors"),
        load_file(b / "pretrain" / "model.safetensors"),
    )
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _kill_many(tmp_path: Path, kills: int, steps: int, seed: int) -> dict:
    runs = tmp_path / "runs"
    train = [f"pretrain.steps={steps}", "pretrain.ckpt_every=7", "pretrain.eval_every=20"]
    run(load_config(None, tiny_overrides(runs, "ref") + train))  # uninterrupted reference
    args = ["pretrain", *tiny_overrides(runs, "killed"), *train]
    (runs / "killed").mkdir()
    for stage in ("collect", "preprocess"):
        shutil.copytree(runs / "ref" / stage, runs / "killed" / stage)
    rng = random.Random(seed)
    outcomes = [_kill_at_random(args, runs / "killed", rng) for _ in range(kills)]
    assert outcomes.count("finished") < kills // 2, outcomes  # most kills landed mid-run
    cli(*args)  # the last run goes to the end
    assert _losses(runs / "killed") == _losses(runs / "ref")
    assert _same_weights(runs / "killed", runs / "ref")
    return {o: outcomes.count(o) for o in set(outcomes)}


def test_five_random_kills_then_resume_reproduce_the_uninterrupted_run(tmp_path):
    print(_kill_many(tmp_path, kills=5, steps=80, seed=1))


@pytest.mark.slow
def test_twenty_random_kills_then_resume_reproduce_the_uninterrupted_run(tmp_path):
    counts = _kill_many(tmp_path, kills=20, steps=400, seed=2)
    print(counts)
    assert counts.get("ckpt-write", 0) + counts.get("training", 0) >= 15


@pytest.mark.slow
def test_killed_run_command_completes_to_the_same_result(tmp_path):
    """`modelworks run` killed in collect, preprocess and pretrain, then re-run to the end."""
    runs = tmp_path / "runs"
    base = tiny_overrides(runs, "ref") + ["pretrain.steps=40"]
    run(load_config(None, base))
    args = ["run", *tiny_overrides(runs, "killed"), "pretrain.steps=40"]
    rng = random.Random(3)
    for delay in (1.5, 3.0, 5.0):  # import + collect, preprocess, pretrain, roughly
        proc = _start(args)
        time.sleep(delay + rng.random())
        proc.kill()
        proc.wait()
        proc.stderr.close()
    cli(*args)
    assert _losses(runs / "killed") == _losses(runs / "ref")
    assert _same_weights(runs / "killed", runs / "ref")
    for stage in ("collect", "preprocess", "pretrain", "evaluate"):
        manifest = json.loads((runs / "killed" / stage / "manifest.json").read_text())
        assert manifest["status"] == "complete"
    for name in (
        "tokenizer.json",
        "tokens/meta.json",
        "tokens/train_000.bin",
        "tokens/val_000.idx",
    ):
        ref = (runs / "ref" / "preprocess" / name).read_bytes()
        assert (runs / "killed" / "preprocess" / name).read_bytes() == ref, name


def _limit_file_size(limit: int):
    def apply() -> None:  # in the child: writes past `limit` bytes fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_is_one_line_and_keeps_earlier_artifacts(tmp_path):
    runs = tmp_path / "runs"
    args = tiny_overrides(runs)
    run(load_config(None, args + ["pretrain.steps=4"]))
    before = {p: p.read_bytes() for p in (runs / "tiny" / "preprocess").rglob("*") if p.is_file()}
    model = (runs / "tiny" / "pretrain" / "model.safetensors").read_bytes()
    # a longer run of a bigger model cannot write its first checkpoint (the file size limit
    # stands in for a full disk: the same OSError path as ENOSPC)
    proc = subprocess.run(
        [sys.executable, "-m", "modelworks", "run", *args, "pretrain.steps=8", "model.d_model=64",
         "--force", "pretrain"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        preexec_fn=_limit_file_size(len(model) + 4096),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "File too large" in errors[0], proc.stderr
    assert proc.stderr.rstrip().endswith(errors[0]) and "Traceback" not in proc.stderr
    after = {p: p.read_bytes() for p in (runs / "tiny" / "preprocess").rglob("*") if p.is_file()}
    assert after == before  # the preprocess artifacts are untouched
    # the finished pretrain stage it was replacing is still there, whole
    assert (runs / "tiny" / "pretrain" / "model.safetensors").read_bytes() == model
    # and with room again, the same command finishes
    cli("run", *args, "pretrain.steps=8", "model.d_model=64", "--force", "pretrain")


def test_a_pickle_bearing_checkpoint_is_refused_with_an_explanation(tmp_path):
    runs = tmp_path / "runs"
    args = ["pretrain", *tiny_overrides(runs), "pretrain.steps=200", "pretrain.ckpt_every=5"]
    cfg = load_config(None, tiny_overrides(runs))
    for stage in ("collect", "preprocess"):
        stage_functions()[stage](cfg)
    # an unfinished run, killed after its first checkpoints
    proc = _start(args)
    ckpts = runs / "tiny" / "pretrain.partial" / "checkpoints"
    deadline = time.time() + 120
    while len([p for p in ckpts.glob("step_*") if p.suffix != ".tmp"]) < 2:
        assert proc.poll() is None and time.time() < deadline, "no checkpoint before the end"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    proc.stderr.close()
    # its newest checkpoint's state.pt now carries an object whose unpickling runs code, with
    # checksums recomputed to match: only the loader's refusal can stop it
    ckpt = sorted(p for p in ckpts.glob("step_*") if p.suffix != ".tmp")[-1]
    state = torch.load(ckpt / "state.pt", weights_only=True)
    state["payload"] = _Evil(tmp_path / "pwned")
    torch.save(state, ckpt / "state.pt")
    from modelworks.artifacts import sha256_file

    sums = json.loads((ckpt / "checksums.json").read_text())
    sums["sha256"]["state.pt"] = sha256_file(ckpt / "state.pt")
    (ckpt / "checksums.json").write_text(json.dumps(sums))
    proc = cli(*args, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "pickled" in proc.stderr and ckpt.name in proc.stderr
    assert not (tmp_path / "pwned").exists()


class _Evil:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))
