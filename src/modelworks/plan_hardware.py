"""The planner's hardware catalogue: named GPUs (peaks shared with the trainer's MFU through
runtime.GPU_PEAK_TFLOPS), this CPU, and your own from a YAML file; names match however they are
written (`H100`, `rtx-4090`, `A100 80GB`)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from modelworks.errors import PlanError


@dataclass(frozen=True)
class Hardware:
    name: str
    bf16_tflops: float | None = None  # dense bf16/fp16 peak per device; None: measured (cpu)
    fp32_tflops: float | None = None  # dense plain float32 peak (CUDA cores)
    tf32_tflops: float | None = None  # float32 on TF32 tensor cores; None: no TF32, runs as fp32
    bf16: bool = True  # has bfloat16; False (T4, V100): bfloat16 runs are planned in float16
    memory_gib: float | None = None  # per device; None: this machine's RAM
    price_per_hour: float | None = None  # USD per device-hour, indicative on-demand price
    overhead_gib: float = 1.0  # CUDA context and workspaces; on CPU the torch runtime's own RSS
    allocator_slack: float = 0.0  # share of the tensor peak the allocator keeps on top
    kind: str = "gpu"  # gpu | cpu


# name: (row of runtime.GPU_PEAK_TFLOPS, memory in GiB as nvidia-smi shows it, USD per hour)
_GPUS = {
    "a100-40gb": ("A100", 40.0, 1.29),
    "a100-80gb": ("A100", 80.0, 1.79),
    "h100": ("H100", 79.6, 2.99),
    "h200": ("H200", 140.4, 3.79),
    "l4": ("L4", 22.5, 0.80),
    "l40s": ("L40S", 45.0, 1.49),
    "a10": ("A10", 22.5, 1.00),
    "rtx4090": ("4090", 24.0, 0.69),
    "rtx3090": ("3090", 24.0, 0.44),
    "v100": ("V100", 32.0, 2.48),
    "t4": ("T4", 15.0, 0.35),
}


def builtin_hardware() -> dict[str, Hardware]:
    from modelworks.runtime import GPU_PEAK_TFLOPS  # one table of peaks, shared with MFU logging

    # cpu: ~0.4 GiB is torch imported and warmed up (code pages, lazy imports); glibc keeps
    # freed tensors resident, and RSS ran 0.9x-1.9x the tensor peak in our trainer
    table = {"cpu": Hardware("cpu", overhead_gib=0.4, allocator_slack=0.5, kind="cpu")}
    for name, (row, memory, price) in _GPUS.items():
        peak = GPU_PEAK_TFLOPS[row]
        table[name] = Hardware(name, peak.half, peak.fp32, peak.tf32, peak.bf16, memory, price)
    return table


def load_hardware(extra: Path | None = None) -> dict[str, Hardware]:
    """The built-in table, extended or overridden by name from a YAML file such as
    `my-gpu: {bf16_tflops: 400, tf32_tflops: 200, fp32_tflops: 60, memory_gib: 48,
    price_per_hour: 1.5}`."""
    table = builtin_hardware()
    if extra is None:
        return table
    import yaml

    path = Path(extra)
    if not path.is_file():
        raise PlanError(f"hardware file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise PlanError(f"hardware file {path}: YAML does not parse: {e}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise PlanError(f"hardware file {path}: expected a mapping of name -> fields")
    known = sorted(f.name for f in dataclasses.fields(Hardware) if f.name != "name")
    for name, entry in data.items():
        unknown = sorted(set(entry) - set(known)) if isinstance(entry, dict) else ["(not a map)"]
        if unknown:
            fields = ", ".join(known)
            raise PlanError(f"hardware file {path}: {name}: unexpected {unknown[0]!r}; {fields}")
        for key, value in entry.items():
            if key == "bf16" and not isinstance(value, bool):
                raise PlanError(f"hardware file {path}: {name}.bf16 (got {value!r}): true/false")
            if key not in ("kind", "bf16") and not isinstance(value, int | float | None):
                raise PlanError(f"hardware file {path}: {name}.{key} (got {value!r}): a number")
        existing = get_hardware(str(name), table, strict=False)
        base = existing or Hardware(str(name))
        table[base.name] = dataclasses.replace(base, **entry)
    return table


def _key(name: str) -> str:
    """'H100', 'rtx-4090', 'A100 80GB', 'a100_40gb' -> one spelling: lower case, no separators."""
    return re.sub(r"[\s_\-]+", "", name.lower())


def get_hardware(name: str, table: dict[str, Hardware], strict: bool = True) -> Hardware | None:
    """The entry whose name matches `name` ignoring case, spaces, dashes and underscores; an
    unknown name raises one line listing the known ones (or gives None unless `strict`)."""
    found = {_key(k): v for k, v in table.items()}.get(_key(name))
    if found is None and strict:
        raise PlanError(
            f"unknown hardware {name!r}; known: {', '.join(table)} "
            "(case, spaces and dashes do not matter; add your own with --hardware-file FILE.yaml)"
        )
    return found
