"""Run folders, manifests and atomic writes.

A stage lives in `runs/<name>/<stage>/`. It is built in `runs/<name>/<stage>.partial/` and renamed
into place only when complete, with a `manifest.json` recording: the stage, its resolved config and
hash, the input artifacts and their digests, every output file with sha256 and size, package
versions, start/end and status. A crash therefore never leaves a half-written `<stage>/` folder;
a partial folder is either resumed (pretrain) or discarded (everything else).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelworks.errors import ArtifactError

MANIFEST = "manifest.json"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def staged_folder(out_dir: str | Path):
    """Build a folder in a hidden temp sibling and swap it into place only when the block ends
    without an error: a crash leaves the old folder or the new one, never a mix; the temp folder
    is removed on failure. Yields the temp folder's path."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates it 0o700
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("modelworks", "torch", "numpy", "tokenizers", "pyarrow", "safetensors"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def read_manifest(stage_dir: str | Path) -> dict | None:
    p = Path(stage_dir) / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def require_stage(run_dir: Path, stage: str, needed_by: str) -> dict:
    """The manifest of a finished upstream stage, or a clear error saying what to run first."""
    manifest = read_manifest(run_dir / stage)
    if manifest is None or manifest.get("status") != "complete":
        raise ArtifactError(
            f"{needed_by} needs {run_dir / stage}, which does not exist or is incomplete: "
            f"run `modelworks {stage}` (or `modelworks run`) with the same config first"
        )
    return manifest


def final_model_dir(run_dir: str | Path) -> Path:
    """The folder of the model a run ends with: `finetune/` when it has weights, else
    `pretrain/`."""
    run_dir = Path(run_dir)
    tuned = run_dir / "finetune"
    return tuned if (tuned / "model.safetensors").is_file() else run_dir / "pretrain"


def checkpoint_folder(stage_dir: str | Path, name: str) -> Path:
    """Where the weights `name` names in a trained stage folder: `final` the stage itself, `best`
    its best-validation copy, a path (with a '/') itself, else a `checkpoints/` entry (step_000200).
    The one way evaluate, serve and export find a run's model."""
    stage_dir = Path(stage_dir)
    if name == "final":
        return stage_dir
    if name == "best":
        return stage_dir / "best"
    if "/" in name or Path(name).is_absolute():  # a path, never a bare name found in the cwd
        return Path(name)
    return stage_dir / "checkpoints" / name


def best_or_final(stage_dir: str | Path) -> Path:
    """The best-validation weights when training kept them, else the final ones."""
    best = checkpoint_folder(stage_dir, "best")
    return best if (best / "model.safetensors").is_file() else Path(stage_dir)


def tokenizer_path(run_dir: str | Path, model_dir: str | Path | None = None) -> Path:
    """The tokenizer that goes with a run's model: saved next to the weights (a fine-tune keeps
    its base's), else the run's own from preprocess."""
    model_dir = Path(model_dir) if model_dir is not None else final_model_dir(run_dir)
    own = model_dir / "tokenizer.json"
    return own if own.is_file() else Path(run_dir) / "preprocess" / "tokenizer.json"


def input_ref(run_dir: Path, stage: str, manifest: dict) -> dict:
    return {"stage": stage, "path": str(run_dir / stage), "digest": manifest["digest"]}


@dataclass
class StageWriter:
    """Builds one stage folder: write into `.partial`, then `commit()` renames it into place."""

    run_dir: Path
    stage: str
    config: dict
    config_hash: str
    inputs: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @property
    def final_dir(self) -> Path:
        return self.run_dir / self.stage

    @property
    def dir(self) -> Path:
        return self.run_dir / f"{self.stage}.partial"

    def fingerprint(self) -> dict:
        return {"config_hash": self.config_hash, "inputs": [i["digest"] for i in self.inputs]}

    def open(self, resume: bool = False) -> bool:
        """Prepare the partial folder. With resume=True keep a partial built for the same config
        and inputs (returns True); a partial of another config is an error, never silently lost."""
        stamp = self.dir / "partial.json"
        if self.dir.exists():
            old = None
            with contextlib.suppress(OSError, json.JSONDecodeError):
                old = json.loads(stamp.read_text())
            if resume and old == self.fingerprint():
                return True
            if resume and old is not None and old != self.fingerprint():
                raise ArtifactError(
                    f"{self.dir} holds an unfinished {self.stage} of another config or input; "
                    f"resume it with that config, or pass --force {self.stage} to discard it"
                )
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        atomic_write_json(stamp, self.fingerprint())
        return False

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def commit(self) -> dict:
        """Hash every output, write the manifest, and swap the folder into place."""
        (self.dir / "partial.json").unlink(missing_ok=True)
        outputs = []
        for p in sorted(self.dir.rglob("*")):
            if p.is_file() and p.name != MANIFEST:
                rel = p.relative_to(self.dir).as_posix()
                outputs.append({"path": rel, "sha256": sha256_file(p), "bytes": p.stat().st_size})
        digest = hashlib.sha256(
            json.dumps([self.config_hash, outputs], sort_keys=True).encode()
        ).hexdigest()[:16]
        manifest = {
            "stage": self.stage,
            "status": "complete",
            "config": self.config,
            "config_hash": self.config_hash,
            "inputs": self.inputs,
            "outputs": outputs,
            "digest": digest,
            "summary": self.summary,
            "versions": package_versions(),
            "started": _iso(self.started),
            "ended": _iso(time.time()),
            "seconds": round(time.time() - self.started, 3),
        }
        atomic_write_json(self.dir / MANIFEST, manifest)
        old = self.run_dir / f"{self.stage}.old"
        if old.exists():
            shutil.rmtree(old)
        if self.final_dir.exists():
            os.replace(self.final_dir, old)
        os.replace(self.dir, self.final_dir)
        shutil.rmtree(old, ignore_errors=True)
        return manifest


def recover(run_dir: Path, stage: str) -> None:
    """Finish a swap that a crash interrupted: `<stage>.old` is complete but `<stage>` is gone."""
    old, final = run_dir / f"{stage}.old", run_dir / stage
    if old.exists() and not final.exists():
        os.replace(old, final)
    elif old.exists():
        shutil.rmtree(old, ignore_errors=True)


def is_up_to_date(run_dir: Path, stage: str, config_hash: str, inputs: list[dict]) -> bool:
    manifest = read_manifest(run_dir / stage)
    return (
        manifest is not None
        and manifest.get("status") == "complete"
        and manifest.get("config_hash") == config_hash
        and [i.get("digest") for i in manifest.get("inputs", [])] == [i["digest"] for i in inputs]
    )


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))
