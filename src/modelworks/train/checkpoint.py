"""Checkpoints that verify themselves, and model folders that load without pickle.

A model folder holds `model.safetensors` and `config.json` ({"name": arch, "config": {...}}).
A training checkpoint `checkpoints/step_NNNNNN/` adds `state.pt` (optimizer, RNG, data position;
tensors and plain containers only, read with `torch.load(weights_only=True)`) and `checksums.json`
with the sha256 of each file. It is written as `step_NNNNNN.tmp` and renamed when complete; on
load, a checkpoint whose checksums fail is skipped for the previous good one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model
from torch import nn

from modelworks.artifacts import atomic_write_json, sha256_file
from modelworks.errors import CheckpointError, ModelworksError
from modelworks.models.registry import build_model, lookup, name_of

log = logging.getLogger("modelworks")


def save_model(out_dir: Path, model: nn.Module) -> None:
    """model.safetensors + config.json for a plain (unsharded) model."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # safetensors' save_model drops the tied copy of shared tensors; load_model restores the tie
    path = out_dir / "model.safetensors"
    try:
        st_save_model(model, str(path))
    except SafetensorError as e:  # a full disk arrives as this, not as OSError
        raise CheckpointError(f"{path}: cannot write ({str(e).splitlines()[0]})") from None
    atomic_write_json(out_dir / "config.json", _config_json(model))


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    model_dir = Path(model_dir)
    cfg_path, weights = model_dir / "config.json", model_dir / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{model_dir}: no model here (needs config.json + model.safetensors)")
    meta = json.loads(cfg_path.read_text())
    try:
        _, config_cls = lookup(meta["name"])
        model = build_model(config_cls(**meta["config"]))
    except ModelworksError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: not a usable model config ({e})") from None
    try:
        missing, unexpected = st_load_model(model, str(weights), strict=False)
    except (SafetensorError, RuntimeError, OSError) as e:
        msg = str(e).splitlines()[0]
        raise CheckpointError(f"{weights}: cannot load weights ({msg})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: does not match {meta['name']} (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    return model.to(device)


def _is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU; collective (every rank calls) when sharded."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=_is_sharded(model))
    return get_model_state_dict(model, options=options)


def save_full_model(out_dir: Path, model: nn.Module) -> None:
    """`save_model` for a model that may be sharded (FSDP/TP): gathered, written by rank 0."""
    from modelworks.train.parallel import rank

    if not _is_sharded(model):
        if rank() == 0:
            save_model(out_dir, model)
        return
    state = full_model_state(model)
    if rank() == 0:
        plain = build_model(model.modelworks_config)
        plain.load_state_dict(state)
        save_model(out_dir, plain)


def save_checkpoint(
    root: Path, step: int, model: nn.Module, optimizer, state: dict, keep_last: int
) -> Path:
    """Plain checkpoints (single process, DDP) are written by rank 0 as safetensors + state.pt;
    sharded ones (FSDP/TP) by every rank with torch.distributed.checkpoint, plus state.pt."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from modelworks.train.parallel import barrier, rank

    final = root / f"step_{step:06d}"
    tmp = root / f"step_{step:06d}.tmp"
    sharded = _is_sharded(model)
    if rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    else:
        optim = get_optimizer_state_dict(model, optimizer, options=StateDictOptions())
        state = {**state, "optimizer": optim}
    if rank() == 0:
        if not sharded:
            save_model(tmp, model)
        atomic_write_json(tmp / "config.json", _config_json(model))
        torch.save(state, tmp / "state.pt")
        sums = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        atomic_write_json(tmp / "checksums.json", {"step": step, "sha256": sums})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_state(path: Path) -> dict:
    """The trainer state (step, RNG, data position, optimizer) with `weights_only=True`: tensors
    and plain containers only. Anything else pickled in it is refused, never executed."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused: it holds pickled Python objects other than tensors and plain data, "
            "and unpickling them could run arbitrary code; modelworks loads weights_only "
            "checkpoints only (delete this checkpoint to resume from the previous one)"
        ) from None


def load_checkpoint(ckpt: Path, model: nn.Module, optimizer) -> dict:
    """Restore model and optimizer from either format, whatever the current world size (DCP
    reshards; plain checkpoints are full). Returns the trainer state (step, RNG, data position)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = load_state(ckpt / "state.pt")
    if (ckpt / ".metadata").is_file():
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(ckpt))
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
        return state
    from safetensors.torch import load_file

    weights = load_file(str(ckpt / "model.safetensors"))
    full = StateDictOptions(full_state_dict=True, strict=False)
    if _is_sharded(model):
        set_model_state_dict(model, weights, options=full)
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=full)
    else:
        device = next(model.parameters()).device
        st_load_model(model, str(ckpt / "model.safetensors"), device=str(device))
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
    return state


def _config_json(model: nn.Module) -> dict:
    cfg = model.modelworks_config  # set by models.registry.build_model
    return {"name": name_of(cfg), "config": dataclasses.asdict(cfg)}


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".tmp"))


def verify(ckpt: Path) -> bool:
    try:
        sums = json.loads((ckpt / "checksums.json").read_text())["sha256"]
        return all(sha256_file(ckpt / name) == digest for name, digest in sums.items())
    except (OSError, KeyError, ValueError):
        return False


def latest_good(root: Path) -> Path | None:
    """The newest checkpoint whose checksums verify; corrupt ones are logged and skipped."""
    for ckpt in reversed(list_checkpoints(root)):
        if verify(ckpt):
            return ckpt
        log.warning("checkpoint %s fails verification; trying the previous one", ckpt)
    return None
