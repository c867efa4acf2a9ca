"""Device, threads and seeding: the few process-wide settings every stage shares."""

from __future__ import annotations

from typing import NamedTuple

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


class GpuPeak(NamedTuple):
    """Dense peak TFLOP/s of one GPU, by the precision its matmuls run in."""

    half: float  # bf16/fp16 tensor cores (fp16 only where bf16 is False)
    tf32: float | None  # float32 inputs on TF32 tensor cores; None: no TF32 (pre-Ampere)
    fp32: float  # plain float32 (CUDA cores)
    bf16: bool = True  # whether it has bfloat16 (T4 and V100 do not)


# by GPU name fragment, first match wins (A100 before A10, L40S before L4); NVIDIA data sheets,
# SXM parts, without sparsity
GPU_PEAK_TFLOPS = {
    "H200": GpuPeak(989.0, 494.0, 67.0),
    "H100": GpuPeak(989.0, 494.0, 67.0),
    "A100": GpuPeak(312.0, 156.0, 19.5),
    "L40S": GpuPeak(362.0, 183.0, 91.6),
    "L4": GpuPeak(121.0, 60.0, 30.3),
    "A10": GpuPeak(125.0, 62.5, 31.2),
    "4090": GpuPeak(165.0, 82.6, 82.6),
    "3090": GpuPeak(71.0, 35.6, 35.6),
    "V100": GpuPeak(125.0, None, 15.7, bf16=False),
    "T4": GpuPeak(65.0, None, 8.1, bf16=False),
}


def training_dtype(dtype: str, has_bf16: bool) -> str:
    """The autocast dtype a run trains in: `pretrain.dtype`, except that bfloat16 falls back to
    float16 (with loss scaling) on a GPU without bfloat16 (T4, V100). The trainer and the
    planner both ask this."""
    return "float16" if dtype == "bfloat16" and not has_bf16 else dtype


def matmul_precision(device_type: str, dtype: str, tf32: bool) -> str:
    """What a run's matmuls compute in: the autocast dtype (bfloat16, float16); for float32,
    'tf32' on CUDA when `pretrain.tf32` is on (TF32 tensor cores, as nanoGPT and LitGPT train),
    else 'float32'. The trainer sets this (set_tf32) and the planner plans with it."""
    if dtype != "float32":
        return dtype
    return "tf32" if device_type == "cuda" and tf32 else "float32"


def table_peak_tflops(peak: GpuPeak, precision: str) -> float:
    """The peak for a precision from `matmul_precision`; TF32 on a GPU without it runs (and so
    is planned) as plain float32, as torch does."""
    if precision in ("bfloat16", "float16"):
        return peak.half
    if precision == "tf32" and peak.tf32 is not None:
        return peak.tf32
    return peak.fp32


def gpu_peak(device_name: str) -> GpuPeak | None:
    """The table row for a CUDA device name such as 'NVIDIA A100-SXM4-80GB', or None."""
    return next((row for key, row in GPU_PEAK_TFLOPS.items() if key in device_name), None)


def set_tf32(enabled: bool) -> None:
    """CUDA only: float32 matmuls and convolutions on TF32 tensor cores, or in full float32.
    Not torch.set_float32_matmul_precision: that also changes CPU (oneDNN) matmuls."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9; the old flags are deprecated there
        matmul.fp32_precision = "tf32" if enabled else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if enabled else "ieee"
    else:
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


_measured: dict[tuple, float] = {}


def peak_flops(
    device: torch.device, dtype: torch.dtype, override_tflops: float | None, tf32: bool = True
) -> float:
    """Peak FLOP/s for MFU: the config's value, the GPU table at the precision the matmuls run
    in, else the best of a few matmul measurements."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type == "cuda":
        name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}.get(dtype, "float16")
        peak = gpu_table_peak(torch.cuda.get_device_name(device), name, tf32)
        if peak is not None:
            return peak
    return measure_matmul_flops(device, dtype)


def gpu_table_peak(device_name: str, dtype: str, tf32: bool) -> float | None:
    """FLOP/s the trainer divides by on a CUDA device of this name training in `dtype` (after
    `training_dtype`), or None for a GPU not in the table (then it is measured)."""
    row = gpu_peak(device_name)
    if row is None:
        return None
    return table_peak_tflops(row, matmul_precision("cuda", dtype, tf32)) * 1e12


def measure_matmul_flops(
    device: torch.device,
    dtype: torch.dtype,
    seconds: float = 0.3,
    repeats: int = 5,
    fresh: bool = False,
) -> float:
    """Achieved FLOP/s of a large square matmul, the best of `repeats` timings of `seconds` /
    `repeats` each: the practical peak of this device. The best, because a timing can only be
    slowed (by other processes, frequency ramp-up), never sped up. Cached per device, dtype and
    thread count; `fresh` measures again (and keeps the higher)."""
    import time

    key = (str(device), dtype, torch.get_num_threads())
    if key in _measured and not fresh:
        return _measured[key]
    n = 1024 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm up kernels
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = 0.0
    for _ in range(repeats):
        sync()
        reps, t0 = 0, time.perf_counter()
        while reps == 0 or time.perf_counter() - t0 < seconds / repeats:
            a @ b
            reps += 1
        sync()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    _measured[key] = max(best, _measured.get(key, 0.0))
    return _measured[key]


class MfuMeter:
    """Model FLOPs utilisation of achieved FLOP/s against the device's peak (`peak_flops`). A
    measured peak that a step beats was measured low (the machine busy at the start): it is
    measured again, a few times at most, keeping the best. What still comes out above 100%
    comes with a warning naming the peak's source, for the caller to show."""

    def __init__(
        self,
        device: torch.device,
        dtype: torch.dtype,
        override_tflops: float | None = None,
        tf32: bool = True,
        remeasures: int = 3,
    ) -> None:
        self.device, self.dtype, self.remeasures = device, dtype, remeasures
        self.peak = peak_flops(device, dtype, override_tflops, tf32)
        table = device.type == "cuda" and gpu_peak(torch.cuda.get_device_name(device))
        self.source = (
            "pretrain.peak_tflops" if override_tflops else "GPU table" if table else "measured"
        )

    def __call__(self, flops_per_s: float) -> tuple[float, str]:
        """(MFU, '' or a one-line warning when it is above 100%)."""
        mfu = flops_per_s / self.peak
        while mfu > 1 and self.source == "measured" and self.remeasures > 0:
            self.remeasures -= 1
            self.peak = max(self.peak, measure_matmul_flops(self.device, self.dtype, fresh=True))
            mfu = flops_per_s / self.peak
        if mfu <= 1:
            return mfu, ""
        fix = (
            "lower pretrain.peak_tflops"
            if self.source == "pretrain.peak_tflops"
            else "set pretrain.peak_tflops to this device's peak"
        )
        return mfu, (
            f"MFU {mfu:.1%} is above 100%: the peak it divides by ({self.peak / 1e12:,.3g} "
            f"TFLOP/s, {self.source}) is below what this run reaches; {fix}"
        )
