"""plan: what a training run needs, before you start it.

For the config's GPT on named hardware and a parallel layout: the exact parameter count (the
model is built on the meta device), FLOPs per token and per step, memory per device (weights,
gradients, optimizer states, activations, logits, buffers, framework overhead), whether it fits
and the largest micro-batch that does, compute-optimal tokens, and the time and cost of a run.

    modelworks plan configs/quickstart.yaml                        # this CPU, measured peak
    modelworks plan configs/quickstart.yaml configs/models/llama-1b.yaml --hardware h100 \\
        --strategy fsdp --dp 8 pretrain.batch_size=64 --json
    python -m modelworks.plan CONFIG --hardware a100-80gb          # the same, standalone

Memory follows what autograd keeps for our exact block (plan_memory.py); tests/test_plan.py
checks it, and the step time at the trainer's MFU, against the real trainer on CPU. The speed is
the table peak for the precision the trainer's matmuls run in (runtime.matmul_precision: float32
on TF32 tensor cores unless pretrain.tf32 is off; bfloat16 as float16 where a GPU has none). The
run is the configured one when pretrain.steps is set, else compute-optimal (20 tokens/parameter).
Not modelled: communication time, the CUDA caching allocator's fragmentation, pipeline parallelism.
Hardware: plan_hardware.py; the table: plan_report.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

from modelworks.config import Config
from modelworks.errors import ModelworksError
from modelworks.plan_hardware import (  # noqa: F401  (public names, as before the split)
    Hardware,
    PlanError,
    builtin_hardware,
    get_hardware,
    load_hardware,
)
from modelworks.plan_memory import (  # noqa: F401
    TP_SHARDED,
    Job,
    activations,
    largest_batch,
    model_of,
    sdpa_saves_scores,
    step_memory,
)
from modelworks.plan_report import format_table

GiB = 2**30
STRATEGIES = ("single", "ddp", "fsdp", "tp", "fsdp+tp")
TOKENS_PER_PARAM = 20  # Chinchilla (Hoffmann et al. 2022): ~20 training tokens per parameter
GPU_MFU = 0.4  # a well-tuned dense transformer run; pass --mfu for yours
# what our trainer logs as MFU on CPU (fp32, d_model 128-256, against measure_matmul_flops):
# the matmuls run near the measured peak; norms, RoPE, softmax and AdamW do not
CPU_MFU = 0.6


def _layout(cfg: Config, strategy: str | None, dp: int | None, tp: int | None, arch):
    dp = dp if dp is not None else (cfg.parallel.dp or 1)
    tp = tp if tp is not None else cfg.parallel.tp
    if dp < 1 or tp < 1:
        raise PlanError(f"dp={dp} and tp={tp} must be whole numbers >= 1")
    if strategy is None:
        if tp == 1:
            strategy = "single" if dp == 1 else "fsdp" if cfg.parallel.fsdp else "ddp"
        else:
            strategy = "tp" if dp == 1 else "fsdp+tp"
    rules = {
        "single": (dp == 1 and tp == 1, "runs on one device: dp=1, tp=1"),
        "ddp": (dp >= 2 and tp == 1, "replicates over dp >= 2 devices with tp=1"),
        "fsdp": (dp >= 2 and tp == 1, "shards over dp >= 2 devices with tp=1 (or use fsdp+tp)"),
        "tp": (dp == 1 and tp >= 2, "splits over tp >= 2 devices with dp=1 (or use fsdp+tp)"),
        "fsdp+tp": (dp >= 2 and tp >= 2, "needs dp >= 2 and tp >= 2"),
    }
    if strategy not in rules:
        raise PlanError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    ok, rule = rules[strategy]
    if not ok:
        raise PlanError(f"strategy {strategy} {rule}; got dp={dp}, tp={tp}")
    if tp > 1 and (arch.n_head % tp or arch.n_kv_head % tp):
        raise PlanError(
            f"tp={tp} must divide model.n_head={arch.n_head} and model.n_kv_head={arch.n_kv_head}"
        )
    return strategy, dp, tp


# ---------------------------------------------------------------------------------------------
# The plan


def plan(
    cfg: Config,
    hardware: str = "cpu",
    strategy: str | None = None,
    dp: int | None = None,
    tp: int | None = None,
    mfu: float | None = None,
    activation_checkpointing: bool | None = None,
    tokens: int | None = None,
    price_per_hour: float | None = None,
    extra_hardware: Path | None = None,
    vocab_size: int | None = None,
) -> dict:
    """The plan as a JSON-ready dict (bytes, FLOPs, seconds, USD). Arguments left None come from
    the config (dp, tp, fsdp from `parallel:`, checkpointing and tf32 from `pretrain:`; the run
    length from `pretrain.steps` when the config sets it, else compute-optimal) or the table.
    `notes` holds the lines a reader must see: which run length, and a dtype fallback."""
    from modelworks.runtime import GpuPeak, matmul_precision, table_peak_tflops, training_dtype

    hw = get_hardware(hardware, load_hardware(extra_hardware))
    arch, model = model_of(cfg, vocab_size)
    p = cfg.pretrain
    strategy, dp, tp = _layout(cfg, strategy, dp, tp, arch)
    ac = activation_checkpointing
    ckpt = p.activation_checkpointing if ac is None else bool(ac)
    if mfu is not None and not 0 < mfu <= 1:
        raise PlanError(f"mfu={mfu} must be in (0, 1]")
    if tokens is not None and tokens < 1:
        raise PlanError(f"tokens={tokens} must be at least 1")
    gpu, fsdp = hw.kind != "cpu", strategy.startswith("fsdp")
    notes = []
    dtype = training_dtype(p.dtype, hw.bf16 or not gpu)  # as the trainer decides on that GPU
    if dtype != p.dtype:
        notes.append(
            f"{hw.name} has no bfloat16: planned in float16 with loss scaling, which the trainer "
            "falls back to there (set pretrain.dtype=float16 to make it explicit)"
        )
    autocast = dtype != "float32"
    if p.batch_size % dp:  # as the trainer: pretrain.batch_size is global, split over dp ranks
        raise PlanError(
            f"pretrain.batch_size={p.batch_size} does not divide over dp={dp} data-parallel "
            "ranks; make it a multiple of the data-parallel degree"
        )
    micro = p.batch_size // dp

    params = dict(model.named_parameters())  # a tied weight appears once
    n_total = sum(t.numel() for t in params.values())
    n_tp = sum(t.numel() for n, t in params.items() if n.split(".")[-2] in TP_SHARDED)
    n_local = n_total - n_tp + n_tp / tp
    job = Job(
        arch=arch,
        seq=p.seq_len,
        grad_accum=p.grad_accum,
        strategy=strategy,
        tp=tp,
        checkpointing=ckpt,
        autocast=autocast,
        # FSDP gathering weights in the autocast dtype leaves autocast nothing to copy
        autocast_copies=autocast and not (fsdp and cfg.parallel.param_dtype == dtype),
        fsdp_param_bytes=2 if cfg.parallel.param_dtype == "bfloat16" else 4,
        optimizer_states={"adamw": 2, "adam": 2, "sgd": int(p.beta1 > 0)}[p.optimizer],
        scores=False if gpu else sdpa_saves_scores(),  # CUDA: flash or memory-efficient
        gpu=gpu,
        n_local=n_local / dp if fsdp else n_local,
        n_matmul=n_tp / tp + model.lm_head.weight.numel(),
        n_block=n_tp / tp / arch.n_layer + 2 * arch.d_model,
        n_root=n_total - n_tp - 2 * arch.d_model * arch.n_layer,
        largest=max(t.numel() for t in params.values()),
    )
    mem = step_memory(job, micro)
    capacity = (
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if hw.memory_gib is None
        else hw.memory_gib * GiB
    )
    overhead = hw.overhead_gib * GiB
    slack = hw.allocator_slack * mem["peak"]
    total = mem["peak"] + slack + overhead
    budget = (capacity - overhead) / (1 + hw.allocator_slack)

    # FLOPs as GPT.estimate_flops (and so the trainer's MFU) counts them; checkpointing runs the
    # blocks' forward again, counted at the same MFU
    devices = dp * tp
    flops_per_token = model.estimate_flops(p.seq_len)
    attn_fwd = 4 * arch.n_layer * arch.n_head * arch.head_dim * p.seq_len
    recompute = 2 * n_tp + attn_fwd if ckpt else 0
    tokens_per_step = p.batch_size * p.grad_accum * p.seq_len
    precision = matmul_precision("cuda" if gpu else "cpu", dtype, p.tf32)  # as the trainer's
    if gpu:
        if None in (hw.bf16_tflops, hw.fp32_tflops):
            raise PlanError(f"hardware {hw.name}: needs bf16_tflops and fp32_tflops")
        peaks = GpuPeak(hw.bf16_tflops, hw.tf32_tflops, hw.fp32_tflops, hw.bf16)
        peak = table_peak_tflops(peaks, precision) * 1e12
        ran = precision if precision != "tf32" or hw.tf32_tflops else "float32: no TF32 cores"
        peak_source = f"{hw.name} table, {ran}"
    else:
        peak, peak_source = _cpu_peak(cfg)
    mfu = mfu if mfu is not None else GPU_MFU if gpu else CPU_MFU
    step_s = tokens_per_step * (flops_per_token + recompute) / (devices * peak * mfu)

    optimal = TOKENS_PER_PARAM * n_total
    if tokens is not None:
        run_tokens, basis = tokens, f"--tokens {tokens:,}"
    elif "steps" in p.model_fields_set:  # the run the config describes
        run_tokens = p.steps * tokens_per_step
        basis = (
            f"planning the configured run: {p.steps:,} steps x {p.batch_size * p.grad_accum} "
            f"sequences x {p.seq_len} tokens"
        )
    else:
        run_tokens = optimal
        basis = f"no steps configured: Chinchilla {TOKENS_PER_PARAM} tokens/parameter"
    steps = math.ceil(run_tokens / tokens_per_step)
    hours = steps * step_s / 3600
    price = price_per_hour if price_per_hour is not None else hw.price_per_hour
    arch_fields = {k: v for k, v in dataclasses.asdict(arch).items() if k != "init_std"}
    return {
        "model": {
            "name": "gpt",
            **arch_fields,
            "parameters": n_total,
            "parameters_non_embedding": n_total - model.tok_emb.weight.numel(),
        },
        "layout": {
            "hardware": hw.name,
            "strategy": strategy,
            "dp": dp,
            "tp": tp,
            "devices": devices,
            "micro_batch": micro,
            "grad_accum": p.grad_accum,
            "global_batch": p.batch_size * p.grad_accum,
            "seq_len": p.seq_len,
            "tokens_per_step": tokens_per_step,
            "dtype": dtype,
            "matmul_precision": precision,
            "optimizer": p.optimizer,
            "activation_checkpointing": ckpt,
            "attention": "math: keeps T x T scores" if job.scores else "flash: no T x T scores",
        },
        "memory": {
            **{k: round(v) for k, v in mem.items()},
            "allocator_slack": round(slack),
            "overhead": round(overhead),
            "total": round(total),
            "capacity": round(capacity),
            "fits": total <= capacity,
            "max_micro_batch": largest_batch(job, budget),
        },
        "compute": {
            "flops_per_token": flops_per_token,
            "recompute_flops_per_token": recompute,
            "flops_per_step": flops_per_token * tokens_per_step,
            "peak_flops_per_device": peak,
            "peak_source": peak_source,
            "mfu": mfu,
            "step_seconds": step_s,
            "tokens_per_second": tokens_per_step / step_s,
        },
        "run": {
            "basis": basis,
            "compute_optimal_tokens": optimal,
            "tokens_per_parameter": TOKENS_PER_PARAM,
            "tokens": run_tokens,
            "steps": steps,
            "hours": hours,
            "device_hours": hours * devices,
            "price_per_device_hour": price,
            "cost": None if price is None else hours * devices * price,
        },
        "notes": [basis, *notes],
    }


def _cpu_peak(cfg: Config) -> tuple[float, str]:
    """This CPU's matmul peak in the config's dtype and thread count (as the trainer measures)."""
    import torch

    from modelworks.runtime import autocast_dtype, measure_matmul_flops

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(cfg.threads or threads)
        peak = measure_matmul_flops(torch.device("cpu"), autocast_dtype(cfg.pretrain.dtype))
        return peak, f"measured matmul, {torch.get_num_threads()} threads"
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Command line


def _tokens(text: str) -> int:
    """'2e9', '300M', '1.5B' -> a token count."""
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}.get(text[-1:].upper())
    try:
        return int(float(text[:-1]) * scale if scale else float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a count like 2e9 or 300M") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The plan command's flags (CONFIG and KEY=VALUE positionals are the caller's)."""
    g = parser.add_argument_group("plan")
    g.add_argument(
        "--hardware",
        default="cpu",
        help="a name from the hardware table, any case (default cpu; H100, rtx-4090 work)",
    )
    g.add_argument(
        "--hardware-file",
        type=Path,
        metavar="YAML",
        help="more hardware: NAME: {bf16_tflops, fp32_tflops, memory_gib, price_per_hour, ...}",
    )
    g.add_argument("--strategy", choices=STRATEGIES, help="default: from parallel.*, --dp, --tp")
    g.add_argument("--dp", type=int, help="data-parallel degree (default parallel.dp or 1)")
    g.add_argument("--tp", type=int, help="tensor-parallel degree (default parallel.tp)")
    g.add_argument(
        "--mfu",
        type=float,
        help=f"assumed model FLOPs utilisation (default {GPU_MFU} on GPU, {CPU_MFU} on CPU)",
    )
    g.add_argument(
        "--activation-checkpointing",
        action=argparse.BooleanOptionalAction,
        help="default: pretrain.activation_checkpointing",
    )
    g.add_argument(
        "--tokens",
        type=_tokens,
        help="run length, e.g. 2e9 or 300M (default: the configured pretrain.steps when the "
        "config sets them, else compute-optimal)",
    )
    g.add_argument("--price-per-hour", type=float, metavar="USD", help="per device-hour")
    g.add_argument(
        "--vocab-size",
        type=int,
        help="when model.vocab_size is 0 (from the tokenizer); default preprocess.vocab_size",
    )
    g.add_argument("--json", action="store_true", help="print the plan as JSON")


def run_cli(ns: argparse.Namespace, cfg: Config | None = None) -> int:
    """Plan and print; `cfg` defaults to ns.args (CONFIG files, then KEY=VALUE overrides).
    Raises ModelworksError (one line) for the caller to print."""
    if cfg is None:
        from modelworks.config import load_config

        args = getattr(ns, "args", None) or []
        paths = [a for a in args if "=" not in a]
        if not paths and Path("configs/quickstart.yaml").is_file():
            paths = ["configs/quickstart.yaml"]
        cfg = load_config(paths, [a for a in args if "=" in a])
    result = plan(
        cfg,
        ns.hardware,
        ns.strategy,
        ns.dp,
        ns.tp,
        ns.mfu,
        ns.activation_checkpointing,
        ns.tokens,
        ns.price_per_hour,
        ns.hardware_file,
        ns.vocab_size,
    )
    print(json.dumps(result, indent=2) if ns.json else format_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelworks.plan", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("args", nargs="*", metavar="CONFIG | KEY=VALUE")
    add_arguments(parser)
    ns = parser.parse_intermixed_args(argv)
    try:
        return run_cli(ns)
    except ModelworksError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
