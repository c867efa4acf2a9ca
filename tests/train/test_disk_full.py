"""A really full disk: the run folder on a small tmpfs, filled to a few kilobytes, then a stage.

tests/test_reliability.py stands a file size limit in for a full disk; here the filesystem itself
answers ENOSPC ("No space left on device"), from wherever the write happens (Python, safetensors,
torch.save). Mounting needs root or CAP_SYS_ADMIN: without it the test is skipped, with the mount
error as the reason. Slow suite: `python -m pytest -m slow tests/train/test_disk_full.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelworks.artifacts import sha256_file
from modelworks.config import load_config
from modelworks.pipeline import stage_functions
from modelworks.train.checkpoint import list_checkpoints, verify
from tests.conftest import ROOT, cli, tiny_overrides

SIZE_MB = 48


@pytest.fixture
def small_disk(tmp_path):
    """A SIZE_MB tmpfs mounted on a fresh folder, unmounted after the test."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        why = proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else proc.returncode
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {why}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """Write a file that leaves about `leave` bytes free on `disk`."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    filler = disk / "filler.bin"
    with filler.open("wb") as f:
        left = free - leave
        while left > 0:
            n = f.write(b"\0" * min(left, 1 << 20))
            left -= n
    return filler


def _outputs_verify(stage_dir: Path) -> dict:
    """Every output the stage's manifest lists is there with its recorded sha256."""
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    for out in manifest["outputs"]:
        assert sha256_file(stage_dir / out["path"]) == out["sha256"], out["path"]
    return manifest


@pytest.mark.slow  # ~25 s idle, 80 s on a loaded machine: three stages and two CLI runs
def test_a_full_tmpfs_is_one_line_and_keeps_earlier_artifacts(small_disk):
    runs = small_disk / "runs"
    args = tiny_overrides(runs)
    cfg = load_config(None, [*args, "pretrain.steps=8"])
    for stage in ("collect", "preprocess", "pretrain"):
        stage_functions()[stage](cfg)
    run_dir = runs / "tiny"
    pre = _outputs_verify(run_dir / "preprocess")
    model = _outputs_verify(run_dir / "pretrain")
    ckpts = list_checkpoints(run_dir / "pretrain" / "checkpoints")
    assert ckpts and all(verify(c) for c in ckpts)
    # a bigger model's first checkpoint (megabytes) cannot fit in what is left
    filler = fill(small_disk, leave=128 * 1024)
    bigger = ["pretrain", *args, "pretrain.steps=8", "model.d_model=64"]
    proc = subprocess.run(
        [sys.executable, "-m", "modelworks", *bigger],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    print(errors[0])
    assert "No space left on device" in errors[0] and str(run_dir) in errors[0], errors[0]
    assert proc.stderr.rstrip().endswith(errors[0]) and "Traceback" not in proc.stderr
    # what was finished before is whole: every output matches its manifest, checkpoints verify
    assert _outputs_verify(run_dir / "preprocess") == pre
    assert _outputs_verify(run_dir / "pretrain") == model
    assert list_checkpoints(run_dir / "pretrain" / "checkpoints") == ckpts
    assert all(verify(c) for c in ckpts)
    # with room again, the same command finishes (resuming what it had done) and replaces the model
    filler.unlink()
    cli(*bigger)
    after = _outputs_verify(run_dir / "pretrain")
    assert after["digest"] != model["digest"] and after["config"]["model"]["d_model"] == 64
    assert not (run_dir / "pretrain.partial").exists()
