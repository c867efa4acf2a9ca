"""Peak training memory with and without activation checkpointing.

A deep, narrow GPT (16 layers, d_model 128 by default) is trained for a few steps through
modelworks' `Trainer` with `pretrain.activation_checkpointing` false (the baseline) and true
(`apply_activation_checkpointing` from train/parallel.py: each block's activations recomputed in
backward). Batch x seq_len is large next to the model, so activations dominate. Each variant runs
in a fresh subprocess; on CPU it reports the child's peak resident set size (ru_maxrss) before
training (torch, model, data, trainer) and over the training steps, on CUDA
`torch.cuda.max_memory_allocated`.
Printed: peak memory, the growth during training (mostly activations), the AC/baseline ratio of
both, and the median step time of each (AC recomputes the forward, so it is slower).
On CPU, glibc's heap keeps much of the freed memory resident, which inflates both peaks;
`--mmap-threshold 65536` makes RSS follow the live tensors more closely (and steps slower).

    python benchmarks/memory.py                                     # CPU
    python benchmarks/memory.py --mmap-threshold 65536              # RSS closer to live tensors
    python benchmarks/memory.py --n-layer 24 --batch-size 32        # deeper, more activations
    python benchmarks/memory.py --device cuda --d-model 512 --seq-len 2048
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(spec: dict) -> dict:
    """One training run in this (fresh) process; returns its memory and step times."""
    import numpy as np
    import torch

    from modelworks.config import PretrainConfig
    from modelworks.models.gpt import GPTConfig
    from modelworks.models.registry import build_model
    from modelworks.progress import Reporter
    from modelworks.tasks.language_modeling import lm_loss
    from modelworks.train.data import WindowLoader
    from modelworks.train.trainer import Trainer, TrainSetup

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"

    def peak_mb() -> float:
        if cuda:
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    class Probe(Reporter):
        """The trainer calls `update` at the end of every step: note time and peak memory."""

        def __init__(self) -> None:
            self.times, self.peaks = [], []

        def start(self, total: int, desc: str, initial: int = 0, unit: str = "it") -> None:
            self.times.append(time.perf_counter())

        def update(self, n: int = 1, **stats) -> None:
            self.peaks.append(peak_mb())
            self.times.append(time.perf_counter())

    torch.manual_seed(spec["seed"])
    B, T, steps = spec["batch_size"], spec["seq_len"], spec["steps"]
    model_cfg = GPTConfig(
        vocab_size=spec["vocab_size"],
        context_len=T,
        n_layer=spec["n_layer"],
        n_head=spec["n_head"],
        n_kv_head=spec["n_head"],
        d_model=spec["d_model"],
    )
    model = build_model(model_cfg).to(device)
    rng = np.random.default_rng(spec["seed"])
    tokens = rng.integers(0, spec["vocab_size"], B * T * (steps + 2) + 1, dtype=np.int64)
    loader = WindowLoader(tokens, B, T, spec["seed"])
    val_batch = tuple(t.to(device) for t in loader.next_batch())

    def validate(m):
        return {"val_loss": lm_loss(m, val_batch).item()}

    total = steps + 1  # +1: the trainer validates and checkpoints on the last step; not measured
    cfg = PretrainConfig(
        steps=total,
        batch_size=B,
        seq_len=T,
        dtype=spec["dtype"],
        activation_checkpointing=spec["activation_checkpointing"],
        eval_every=total,
        ckpt_every=total,
        peak_tflops=1.0,  # MFU is not reported here; skip the trainer's matmul measurement
    )
    setup = TrainSetup(model, lm_loss, loader, validate, B * T, "tok")
    probe = Probe()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(setup, cfg, Path(tmp), device, probe)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        before = peak_mb()  # torch, model, data, optimizer (its state comes in the first step)
        trainer.fit(resume=False)
    step_s = [b - a for a, b in zip(probe.times, probe.times[1:], strict=False)][1:steps]
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "before_mb": before,
        "peak_mb": probe.peaks[steps - 1],  # after the last measured step, before eval/ckpt
        "median_step_s": statistics.median(step_s),
        "step_s": step_s,
    }


def run_variant(spec: dict, mmap_threshold: int) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    env = dict(os.environ)
    if mmap_threshold:
        # a fixed threshold turns off glibc's dynamic one: big blocks are mmapped and returned to
        # the OS when freed, so RSS follows live tensors instead of what the heap kept
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"child failed ({' '.join(cmd)}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--n-layer", type=int, default=16)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="measured steps (the first included)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0: torch's default")
    p.add_argument(
        "--mmap-threshold",
        type=int,
        default=0,
        help="CPU: set glibc's MALLOC_MMAP_THRESHOLD_ (bytes) in the children, e.g. 65536; "
        "0: glibc's default, whose heap keeps freed activations resident",
    )
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", default="benchmarks/results/memory.json")
    args = p.parse_args()
    if args.steps < 2:
        sys.exit("--steps must be at least 2 (the first step is not timed)")
    spec = {k: v for k, v in vars(args).items() if k not in ("out", "mmap_threshold")}
    unit = "max allocated" if args.device == "cuda" else "peak RSS"
    print(
        f"GPT {args.n_layer} layers x d_model {args.d_model}, vocab {args.vocab_size}; batch "
        f"{args.batch_size} x seq {args.seq_len}; {args.steps} steps, {args.dtype}, "
        f"{args.device}; {unit} of a fresh process per variant"
        + (f"; MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}" if args.mmap_threshold else "")
    )
    busy = os.getloadavg()[0]
    if busy >= 1.0:
        print(
            f"note: load average {busy:.1f} on {os.cpu_count()} CPUs before starting: other "
            "processes are running, so timings will be slower and noisier (--threads 1 suffers "
            "least)"
        )
    load_before = os.getloadavg()
    rows = []
    for ac in (False, True):
        r = run_variant({**spec, "activation_checkpointing": ac}, args.mmap_threshold)
        r["variant"] = "activation checkpointing" if ac else "baseline"
        r["training_mb"] = r["peak_mb"] - r["before_mb"]
        rows.append(r)
        print(f"  {r['variant']}: {unit} {r['peak_mb']:,.0f} MB", flush=True)
    base, ac = rows
    ratios = {
        "peak": ac["peak_mb"] / base["peak_mb"],
        "training": ac["training_mb"] / base["training_mb"],
        "step_time": ac["median_step_s"] / base["median_step_s"],
    }

    print()
    print(f"{'variant':<26} {'before MB':>10} {'peak MB':>10} {'training MB':>12} {'step s':>8}")
    for r in rows:
        print(
            f"{r['variant']:<26} {r['before_mb']:>10,.0f} {r['peak_mb']:>10,.0f} "
            f"{r['training_mb']:>12,.0f} {r['median_step_s']:>8.3f}"
        )
    print(
        f"AC / baseline: peak {ratios['peak']:.3f}, growth during training "
        f"{ratios['training']:.3f}, step time {ratios['step_time']:.3f}"
    )
    print(
        f"({unit}; 'before' = after building model and data, 'training MB' = peak - before; "
        f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after)"
    )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "memory",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "measure": unit,
        "args": vars(args),
        "load_average_before_after": [load_before, os.getloadavg()],
        "rows": rows,
        "ratios_ac_over_baseline": ratios,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
