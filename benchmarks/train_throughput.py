"""Training throughput: modelworks' Trainer against a minimal nanoGPT-style loop.

The same GPT (shape, seed, batch, seq_len, dtype) is trained on random tokens by
  (a) modelworks: `Trainer.fit` on a `TrainSetup` (GPT, the language-modelling loss, a
      `WindowLoader`, a one-batch validation) with the default `pretrain:` settings: AdamW with
      decay groups, LR schedule, grad clipping at 1.0 (`--grad-clip` changes it), a metrics line
      every 10 steps; validation and checkpoint only on an extra last step, left out of the timing;
  (b) reference: a bare loop written here - `torch.optim.AdamW`, forward, cross-entropy,
      backward, step, zero_grad - and nothing else (no clipping, no schedule, no logging).
The two alternate step by step: after each trainer step, inside the trainer's progress callback,
one reference step runs, and each is timed on its own (device synced at both ends). So both see
the same machine load, which matters on a shared machine. `--warmup` steps are not timed, then
`--steps` are, in each of `--repeats` runs with fresh models.

Printed per dtype (fp32, and bf16 autocast where the device has it): ms/step and tokens/s from
the median step (the mean next to it), median CPU time per step, MFU against
`measure_matmul_flops` (a large matmul timed on the same device and dtype) using
`GPT.estimate_flops(seq_len)` - and against `F.linear` timed on the same shape where that is much
faster - and the ratio modelworks / reference: the median over paired steps of the speed ratio
(the goal is >= 1.0), also by CPU time and from the means.

    python benchmarks/train_throughput.py                                  # CPU, preset small
    python benchmarks/train_throughput.py --preset tiny --dtypes float32   # seconds
    python benchmarks/train_throughput.py --device cuda --preset 124m      # GPT-2-small shape
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelworks.config import PretrainConfig
from modelworks.models.gpt import GPTConfig
from modelworks.models.registry import build_model
from modelworks.progress import Reporter
from modelworks.runtime import measure_matmul_flops
from modelworks.tasks.language_modeling import lm_loss
from modelworks.train.data import WindowLoader
from modelworks.train.trainer import Trainer, TrainSetup

# model shape and batch per preset; 124m is GPT-2 small (as nanoGPT trains it), for a GPU
PRESETS = {
    "tiny": dict(n_layer=2, d_model=64, n_head=4, vocab_size=512, seq_len=64, batch_size=8,
                 warmup=3, steps=20),
    "small": dict(n_layer=4, d_model=128, n_head=4, vocab_size=1024, seq_len=128, batch_size=4,
                  warmup=2, steps=10),
    "124m": dict(n_layer=12, d_model=768, n_head=12, vocab_size=50304, seq_len=1024,
                 batch_size=16, warmup=5, steps=30),
}  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now() -> tuple[float, float]:
    """Wall clock and this process's CPU time (the latter is steadier on a busy machine)."""
    return time.perf_counter(), time.process_time()


def new_gpt(args, device: torch.device) -> nn.Module:
    torch.manual_seed(args.seed)  # both loops start from identical weights
    cfg = GPTConfig(
        vocab_size=args.vocab_size,
        context_len=args.seq_len,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_kv_head=args.n_head,  # plain multi-head attention, as GPT-2
        d_model=args.d_model,
    )
    return build_model(cfg).to(device)  # the registry's builder: what the pretrain stage uses


def reference_step(args, tokens: np.ndarray, device: torch.device, dtype: str):
    """One step of a bare nanoGPT-style loop per call: random windows, forward, cross-entropy,
    backward, AdamW step, zero_grad. Same lr, betas and weight decay as the trainer's defaults."""
    model = new_gpt(args, device).train()
    cfg = PretrainConfig()
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay
    )
    data = torch.from_numpy(tokens)
    gen = torch.Generator().manual_seed(args.seed)
    B, T = args.batch_size, args.seq_len

    def step() -> None:
        ix = torch.randint(len(data) - T - 1, (B,), generator=gen)
        x = torch.stack([data[i : i + T] for i in ix]).to(device)
        y = torch.stack([data[i + 1 : i + 1 + T] for i in ix]).to(device)
        with torch.autocast(device.type, dtype=getattr(torch, dtype), enabled=dtype != "float32"):
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


class Interleave(Reporter):
    """The trainer calls `update` once at the end of each of its steps (after any logging,
    validation or checkpoint). There the trainer's step is timed and one reference step is run
    and timed, so the two loops alternate step by step and see the same machine load."""

    def __init__(self, device: torch.device, other_step) -> None:
        self.device, self.other_step = device, other_step
        self.trainer: list[list[float]] = []  # [wall, cpu] seconds per step
        self.reference: list[list[float]] = []

    def start(self, total: int, desc: str, initial: int = 0, unit: str = "it") -> None:
        sync(self.device)
        self.last = now()

    def update(self, n: int = 1, **stats) -> None:
        sync(self.device)
        t = now()
        self.trainer.append([t[0] - self.last[0], t[1] - self.last[1]])
        self.other_step()
        sync(self.device)
        self.last = now()
        self.reference.append([self.last[0] - t[0], self.last[1] - t[1]])


def run_pair(args, tokens: np.ndarray, device: torch.device, dtype: str) -> dict:
    """`Trainer.fit` for warmup + steps + 1 steps, a reference step after each; returns the
    [wall, cpu] seconds of the timed steps of both (the last step, which validates and saves a
    checkpoint, is left out)."""
    model = new_gpt(args, device)
    loader = WindowLoader(tokens, args.batch_size, args.seq_len, args.seed)
    val_batch = tuple(t.to(device) for t in loader.next_batch())

    def validate(m):  # cheap: it runs once, on the extra last step, outside the timing
        return {"val_loss": lm_loss(m, val_batch).item()}

    total = args.warmup + args.steps + 1
    overrides = {} if args.grad_clip is None else {"grad_clip": args.grad_clip}
    cfg = PretrainConfig(
        steps=total,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        dtype=dtype,
        eval_every=total,
        ckpt_every=total,
        **overrides,
    )
    setup = TrainSetup(
        model, lm_loss, loader, validate, args.batch_size * args.seq_len, "tok",
        model.estimate_flops(args.seq_len),
    )  # fmt: skip
    clock = Interleave(device, reference_step(args, tokens, device, dtype))
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(setup, cfg, Path(tmp), device, clock).fit(resume=False)
    timed = slice(args.warmup, args.warmup + args.steps)
    return {"modelworks": clock.trainer[timed], "reference": clock.reference[timed]}


def supported_dtypes(device: torch.device, wanted: list[str]) -> list[str]:
    out = []
    for d in wanted:
        if d not in ("float32", "bfloat16"):
            sys.exit(f"--dtypes: {d!r} is not float32 or bfloat16")
        if d == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            print(f"skipping bfloat16: {torch.cuda.get_device_name(device)} lacks it")
            continue
        out.append(d)
    return out


def linear_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.3) -> float:
    """FLOP/s of `F.linear` (what nn.Linear runs) on the same 1024/8192-square shape that
    `measure_matmul_flops` times with `a @ b`; the two differ on CPUs without native bf16."""
    n = 1024 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    F.linear(a, b)
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        F.linear(a, b)
        reps += 1
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    for key in ("n_layer", "d_model", "n_head", "vocab_size", "seq_len", "batch_size"):
        p.add_argument(f"--{key.replace('_', '-')}", type=int, help="override the preset")
    p.add_argument("--warmup", type=int, help="untimed steps first (preset's by default)")
    p.add_argument("--steps", type=int, help="timed steps per run (preset's by default)")
    p.add_argument("--repeats", type=int, default=2, help="runs, each with fresh models")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated")
    p.add_argument(
        "--grad-clip", type=float, help="the trainer's pretrain.grad_clip (default: its 1.0)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0: torch's default")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available on this machine")
    dtypes = supported_dtypes(device, args.dtypes.split(","))
    busy = os.getloadavg()[0]
    if busy >= 1.0:
        print(
            f"note: load average {busy:.1f} on {os.cpu_count()} CPUs before starting: other "
            "processes are running, so timings will be slower and noisier (--threads 1 suffers "
            "least)"
        )

    rng = np.random.default_rng(args.seed)
    n_tokens = args.batch_size * args.seq_len * (args.warmup + args.steps + 2) + 1
    tokens = rng.integers(0, args.vocab_size, n_tokens, dtype=np.int64)
    probe = new_gpt(args, device)
    flops_per_token = probe.estimate_flops(args.seq_len)
    n_params = probe.num_params()
    del probe
    tok_per_step = args.batch_size * args.seq_len
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    name = name or platform.machine()
    print(
        f"{args.preset}: {args.n_layer} layers, d_model {args.d_model}, {args.n_head} heads, "
        f"vocab {args.vocab_size}, {n_params / 1e6:.2f}M params; batch {args.batch_size} x "
        f"seq {args.seq_len}; {args.warmup} warmup + {args.steps} timed steps x {args.repeats} "
        f"runs; {device} ({name}), threads={torch.get_num_threads()}, torch {torch.__version__}"
    )

    load_before = os.getloadavg()
    rows = []
    for dtype in dtypes:
        torch_dtype = getattr(torch, dtype)
        peak = measure_matmul_flops(device, torch_dtype)
        peak_linear = linear_flops(device, torch_dtype)
        steps: dict[str, list[list[float]]] = {"modelworks": [], "reference": []}
        for r in range(args.repeats):
            for loop, times in run_pair(args, tokens, device, dtype).items():
                steps[loop] += times
                median = statistics.median(t[0] for t in times)
                print(f"  {dtype:<9} run {r + 1} {loop:<11} median step {1000 * median:,.1f} ms")
        for loop, times in steps.items():
            wall = [t[0] for t in times]
            rate = tok_per_step / statistics.median(wall)
            rows.append(
                {
                    "dtype": dtype,
                    "loop": loop,
                    "ms_per_step": 1000 * statistics.median(wall),
                    "tok_per_s": rate,  # from the median step: robust to a busy machine
                    "tok_per_s_mean": tok_per_step * len(wall) / sum(wall),
                    "cpu_ms_per_step": 1000 * statistics.median(t[1] for t in times),
                    "mfu": rate * flops_per_token / peak,
                    "peak_tflops": peak / 1e12,
                    "mfu_vs_linear_peak": rate * flops_per_token / peak_linear,
                    "linear_peak_tflops": peak_linear / 1e12,
                    "step_wall_cpu_seconds": times,
                }
            )
        mw, ref = rows[-2], rows[-1]
        pairs = list(zip(mw["step_wall_cpu_seconds"], ref["step_wall_cpu_seconds"], strict=True))
        # each trainer step is paired with the reference step that ran right after it
        mw["ratio"] = statistics.median(b[0] / a[0] for a, b in pairs)
        mw["ratio_cpu_time"] = statistics.median(b[1] / a[1] for a, b in pairs)
        mw["ratio_of_means"] = mw["tok_per_s_mean"] / ref["tok_per_s_mean"]
    load_after = os.getloadavg()

    print()
    print(
        f"{'dtype':<9} {'loop':<11} {'ms/step':>9} {'tok/s':>9} {'(mean)':>9} {'cpu ms':>8} "
        f"{'MFU':>7} {'ratio':>6}"
    )
    for row in rows:
        ratio = f"{row['ratio']:.3f}" if "ratio" in row else ""
        print(
            f"{row['dtype']:<9} {row['loop']:<11} {row['ms_per_step']:>9.1f} "
            f"{row['tok_per_s']:>9,.0f} {row['tok_per_s_mean']:>9,.0f} "
            f"{row['cpu_ms_per_step']:>8.1f} {100 * row['mfu']:>6.2f}% {ratio:>6}"
        )
    print(
        "ms/step, tok/s: median step (mean: over all steps); cpu ms: median CPU time per step; "
        "ratio: modelworks / reference speed, median over paired steps"
    )
    for row in rows:
        if "ratio" in row:
            print(
                f"{row['dtype']}: modelworks / reference = {row['ratio']:.3f} (paired wall "
                f"time), {row['ratio_cpu_time']:.3f} (paired CPU time), "
                f"{row['ratio_of_means']:.3f} (mean tok/s)"
            )
    for dtype in dtypes:
        row = next(r for r in rows if r["dtype"] == dtype)
        line = f"{dtype} peak: measure_matmul_flops {row['peak_tflops'] * 1e3:,.1f} GFLOP/s"
        if row["linear_peak_tflops"] > 1.5 * row["peak_tflops"]:
            line += (
                f", but F.linear reaches {row['linear_peak_tflops'] * 1e3:,.1f} GFLOP/s on the "
                "same shape; MFU against that: "
                + ", ".join(
                    f"{r['loop']} {100 * r['mfu_vs_linear_peak']:.1f}%"
                    for r in rows
                    if r["dtype"] == dtype
                )
            )
        print(line)
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "train_throughput",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "args": vars(args),
        "params": n_params,
        "flops_per_token": flops_per_token,
        "load_average_before_after": [load_before, load_after],
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
