"""Device, threads and seeding: the few process-wide settings every stage shares."""

from __future__ import annotations

import torch

from modelworks.errors import ModelworksError


class DeviceError(ModelworksError, ValueError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r}: CUDA is not available on this machine")
    return dev


def setup(threads: int, seed: int) -> None:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)


def autocast_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
