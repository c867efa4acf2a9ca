"""Device, threads and seeding: the few process-wide settings every stage shares."""

from __future__ import annotations

import torch

from modelworks.errors import DeviceError


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


# Dense peak TFLOP/s by GPU name fragment: (bf16/fp16 tensor cores, fp32 incl. TF32 tensor cores).
GPU_PEAK_TFLOPS = {
    "H200": (989.0, 494.0),
    "H100": (989.0, 494.0),
    "A100": (312.0, 156.0),
    "L40S": (362.0, 183.0),
    "L4": (121.0, 60.0),
    "A10": (125.0, 62.5),
    "4090": (165.0, 82.6),
    "3090": (71.0, 35.6),
    "V100": (125.0, 15.7),
    "T4": (65.0, 8.1),
}

_measured: dict[tuple, float] = {}


def peak_flops(device: torch.device, dtype: torch.dtype, override_tflops: float | None) -> float:
    """Peak FLOP/s for MFU: the config's value, the GPU table, else a short matmul measurement."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (half, single) in GPU_PEAK_TFLOPS.items():
            if key in name:
                return (single if dtype == torch.float32 else half) * 1e12
    return measure_matmul_flops(device, dtype)


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.3) -> float:
    """Achieved FLOP/s of a large square matmul: the practical peak of this device."""
    import time

    key = (str(device), dtype, torch.get_num_threads())
    if key in _measured:
        return _measured[key]
    n = 1024 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm up kernels
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    sync()
    _measured[key] = 2 * n**3 * reps / (time.perf_counter() - t0)
    return _measured[key]
