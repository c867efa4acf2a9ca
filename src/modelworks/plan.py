"""plan: what a training run needs, before you start it.

For the config's GPT on named hardware and a parallel layout: the exact parameter count (the
model is built on the meta device), FLOPs per token and per step, memory per device (weights,
gradients, optimizer states, activations, logits, buffers, framework overhead), whether it fits
and the largest micro-batch that does, compute-optimal tokens, and the time and cost of a run.

    modelworks plan configs/quickstart.yaml                        # this CPU, measured peak
    modelworks plan configs/quickstart.yaml configs/models/llama-1b.yaml --hardware h100 \\
        --strategy fsdp --dp 8 pretrain.batch_size=64 --json
    python -m modelworks.plan CONFIG --hardware a100-80gb          # the same, standalone

Memory follows what autograd keeps for our exact block (see `activations`); tests/test_plan.py
checks it, and the step time at the trainer's MFU, against the real trainer on CPU. Not modelled:
communication time, the CUDA caching allocator's fragmentation, pipeline parallelism.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelworks.config import Config
from modelworks.errors import ModelworksError, PlanError

GiB = 2**30
STRATEGIES = ("single", "ddp", "fsdp", "tp", "fsdp+tp")
TOKENS_PER_PARAM = 20  # Chinchilla (Hoffmann et al. 2022): ~20 training tokens per parameter
GPU_MFU = 0.4  # a well-tuned dense transformer run; pass --mfu for yours
# what our trainer logs as MFU on CPU (fp32, d_model 128-256, against measure_matmul_flops):
# the matmuls run near the measured peak; norms, RoPE, softmax and AdamW do not
CPU_MFU = 0.6


@dataclass(frozen=True)
class Hardware:
    name: str
    bf16_tflops: float | None = None  # dense bf16/fp16 peak per device; None: measured (cpu)
    fp32_tflops: float | None = None  # dense fp32 peak (TF32 tensor cores where there are any)
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
        half, single = GPU_PEAK_TFLOPS[row]
        table[name] = Hardware(name, half, single, memory, price)
    return table


def load_hardware(extra: Path | None = None) -> dict[str, Hardware]:
    """The built-in table, extended or overridden by name from a YAML file such as
    `my-gpu: {bf16_tflops: 400, fp32_tflops: 200, memory_gib: 48, price_per_hour: 1.5}`."""
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
            if key != "kind" and not isinstance(value, int | float | None):
                raise PlanError(f"hardware file {path}: {name}.{key} (got {value!r}): a number")
        table[str(name)] = dataclasses.replace(table.get(str(name), Hardware(str(name))), **entry)
    return table


# ---------------------------------------------------------------------------------------------
# The model and its memory


def model_of(cfg: Config, vocab_size: int | None = None):
    """(architecture config, the model on the meta device: exact shapes, no memory). A vocabulary
    left at 0 is the tokenizer's: `vocab_size`, else preprocess.vocab_size (what it trains)."""
    import torch

    from modelworks.models.registry import build_model, model_config_from, name_of

    arch = model_config_from(cfg.model)
    if name_of(arch) != "gpt":
        raise PlanError(f"plan models the gpt architecture; model.name is {name_of(arch)!r}")
    if arch.vocab_size == 0:
        arch.vocab_size = vocab_size or cfg.preprocess.vocab_size
    if arch.context_len == 0:
        arch.context_len = cfg.pretrain.seq_len
    elif arch.context_len < cfg.pretrain.seq_len:
        raise PlanError(
            f"model.context_len={arch.context_len} < pretrain.seq_len={cfg.pretrain.seq_len}"
        )
    with torch.device("meta"):
        return arch, build_model(arch)


# what train/parallel.py's tensor-parallel plan splits: q/k/v/o and the SwiGLU matrices
_TP_SHARDED = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def sdpa_saves_scores() -> bool:
    """Whether scaled_dot_product_attention on this CPU keeps (T x T) probabilities for backward
    (the math path) or one log-sum-exp per row (flash; what torch >= 2.2 picks on CPU)."""
    import torch
    import torch.nn.functional as F

    q = torch.zeros(1, 1, 4, 8, requires_grad=True)
    out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    return "Flash" not in type(out.grad_fn).__name__


def activations(
    arch, batch: int, seq: int, act_bytes: int, autocast: bool, tp: int = 1, scores: bool = False
) -> dict[str, float]:
    """Bytes autograd keeps for backward, per device, for one micro-batch of `batch` x `seq`.

    Per block (E = batch*seq tokens, d = d_model, f = ffn_hidden, H = n_head, a = act_bytes):
    - each RMSNorm keeps its fp32 input (the residual stream) and normalised output, and the
      linears after it keep their input: 12 E d per norm in fp32; under autocast each linear
      casts the norm output separately (only leaf weights are cached): 8 E d + a E d per linear;
    - attention: q and k after RoPE, v (repeated to all heads under GQA), the SDPA output and
      its contiguous copy for wo: 5 a E d, plus a fp32 log-sum-exp per head and row (flash); the
      math path keeps scaled q and k and the (T x T) probabilities per head instead, in fp32 on
      CPU whatever the autocast dtype;
    - SwiGLU: gate, silu(gate), up and their product: 4 a E f.
    Tensor parallelism splits attention and SwiGLU terms (heads and f) but not the norms.
    Head: the final norm (8 + a) E d; the loss works in fp32: the log-softmax output, its
    incoming and its outgoing gradient, live together at the start of backward: 12 E V.
    In a block's backward, SwiGLU's two input gradients add 2 a E f for a moment.
    """
    c = arch
    E, d, f, H, a = batch * seq, c.d_model, c.ffn_hidden, c.n_head, act_bytes
    norms = (16 + 5 * a if autocast else 24) * E * d
    attn = (16 * E * d + 4 * batch * H * seq * seq) if scores else (5 * a * E * d + 4 * E * H)
    return {
        "per_layer": norms + (attn + 4 * a * E * f) / tp,
        "checkpointed_per_layer": 4 * E * d,  # only the block's fp32 input is kept
        "head": (8 + a if autocast else 12) * E * d,
        "logits": 12 * E * c.vocab_size,
        "backward_transient": 2 * a * E * f / tp,
    }


@dataclass
class _Job:
    """Everything the memory depends on besides the micro-batch."""

    arch: Any
    seq: int
    grad_accum: int
    strategy: str
    tp: int
    checkpointing: bool
    autocast: bool
    autocast_copies: bool  # autocast's low-precision weight copies, alive until backward
    fsdp_param_bytes: int
    optimizer_states: int  # fp32 tensors per parameter
    scores: bool
    gpu: bool
    n_local: float  # parameters held per device
    n_matmul: float  # matmul weights per device after TP (what autocast copies)
    n_block: float  # one block's parameters after TP
    n_root: float  # parameters outside the blocks
    largest: int  # elements of the largest parameter


def _memory(j: _Job, batch: int) -> dict[str, float]:
    """Peak bytes per device of a training step at micro-batch `batch`.

    Peak = weights + optimizer states + buffers + the largest of four moments: the start of
    backward (all saved activations and the loss's three fp32 logits tensors; gradients too when
    they persist across accumulated micro-batches), inside a block's backward (what the blocks
    keep, the block recomputed under checkpointing, SwiGLU's gradients, all gradients as an upper
    bound), the embedding's backward (all gradients and its dense gradient) and the optimizer step
    (all gradients and its temporaries)."""
    c, L = j.arch, j.arch.n_layer
    act = activations(c, batch, j.seq, 2 if j.autocast else 4, j.autocast, j.tp, j.scores)
    weights = grads = 4 * j.n_local
    buffers = 0.0
    if j.strategy == "ddp":
        buffers = 4 * j.n_local  # DDP's gradient buckets: a flat fp32 copy of the gradients
    elif j.strategy.startswith("fsdp"):  # unsharded root (kept), two blocks (prefetch) + grads
        buffers = j.fsdp_param_bytes * (j.n_root + 2 * j.n_block) + 4 * j.n_block
    copies = 2 * j.n_matmul if j.autocast_copies else 0.0  # bf16/fp16
    blocks = L * act["checkpointed_per_layer" if j.checkpointing else "per_layer"]
    start = blocks + act["head"] + act["logits"] + copies + (grads if j.grad_accum > 1 else 0)
    recomputed = act["per_layer"] if j.checkpointing else 0.0
    in_block = blocks + recomputed + act["backward_transient"] + grads
    embedding = grads + 4 * c.vocab_size * c.d_model
    # foreach AdamW (GPU) makes a temporary as large as all the states; on CPU one per tensor
    step = grads + 4 * (j.n_local if j.gpu else j.largest)
    optimizer = 4 * j.optimizer_states * j.n_local
    return {
        "weights": weights,
        "gradients": grads,
        "optimizer": optimizer,
        "buffers": buffers,
        "autocast_weight_copies": copies,
        "activations": blocks + act["head"],
        "logits": act["logits"],
        "activations_per_layer": act["per_layer"],
        "activations_per_layer_checkpointed": act["checkpointed_per_layer"],
        "peak": weights + optimizer + buffers + max(start, in_block, embedding, step),
    }


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


def _largest_batch(j: _Job, budget: float) -> int:
    """The largest micro-batch whose peak fits in `budget` bytes (0: not even one)."""
    lo, hi = 0, 1
    while hi <= 2**24 and _memory(j, hi)["peak"] <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _memory(j, mid)["peak"] <= budget else (lo, mid)
    return lo


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
    the config (dp, tp, fsdp from `parallel:`, checkpointing from `pretrain:`) or the table."""
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
    gpu, fsdp, autocast = hw.kind != "cpu", strategy.startswith("fsdp"), p.dtype != "float32"
    if p.batch_size % dp:  # as the trainer: pretrain.batch_size is global, split over dp ranks
        raise PlanError(
            f"pretrain.batch_size={p.batch_size} does not divide over dp={dp} data-parallel "
            "ranks; make it a multiple of the data-parallel degree"
        )
    micro = p.batch_size // dp

    params = dict(model.named_parameters())  # a tied weight appears once
    n_total = sum(t.numel() for t in params.values())
    n_tp = sum(t.numel() for n, t in params.items() if n.split(".")[-2] in _TP_SHARDED)
    n_local = n_total - n_tp + n_tp / tp
    job = _Job(
        arch=arch,
        seq=p.seq_len,
        grad_accum=p.grad_accum,
        strategy=strategy,
        tp=tp,
        checkpointing=ckpt,
        autocast=autocast,
        # FSDP gathering weights in the autocast dtype leaves autocast nothing to copy
        autocast_copies=autocast and not (fsdp and cfg.parallel.param_dtype == p.dtype),
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
    mem = _memory(job, micro)
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
    if gpu:
        peak = (hw.bf16_tflops if autocast else hw.fp32_tflops) * 1e12
        peak_source = f"{hardware} table, {p.dtype}"
    else:
        peak, peak_source = _cpu_peak(cfg)
    mfu = mfu if mfu is not None else GPU_MFU if gpu else CPU_MFU
    step_s = tokens_per_step * (flops_per_token + recompute) / (devices * peak * mfu)

    optimal = TOKENS_PER_PARAM * n_total
    run_tokens = tokens if tokens is not None else optimal
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
            "hardware": hardware,
            "strategy": strategy,
            "dp": dp,
            "tp": tp,
            "devices": devices,
            "micro_batch": micro,
            "grad_accum": p.grad_accum,
            "global_batch": p.batch_size * p.grad_accum,
            "seq_len": p.seq_len,
            "tokens_per_step": tokens_per_step,
            "dtype": p.dtype,
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
            "max_micro_batch": _largest_batch(job, budget),
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
            "compute_optimal_tokens": optimal,
            "tokens": run_tokens,
            "steps": steps,
            "hours": hours,
            "device_hours": hours * devices,
            "price_per_device_hour": price,
            "cost": None if price is None else hours * devices * price,
        },
    }


def get_hardware(name: str, table: dict[str, Hardware]) -> Hardware:
    if name not in table:
        raise PlanError(
            f"unknown hardware {name!r}; known: {', '.join(table)} "
            "(add your own with --hardware-file FILE.yaml)"
        )
    return table[name]


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
# Output and command line


def _scaled(n: float, units: tuple, fmt: str, unit: str = "") -> str:
    for name, scale in units:
        if abs(n) >= scale:
            return f"{n / scale:{fmt}}{name}"
    return f"{n:{fmt}}{unit}"


def _size(n: float) -> str:
    return _scaled(n, ((" GiB", GiB), (" MiB", 2**20), (" KiB", 2**10)), ",.2f", " B")


def _count(n: float) -> str:
    return _scaled(n, (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)), ",.2f")


# (label, key in the memory dict, shown when zero)
_MEMORY_ROWS = [
    ("weights", "weights", True),
    ("gradients", "gradients", True),
    ("optimizer states", "optimizer", True),
    ("DDP/FSDP buffers", "buffers", False),
    ("autocast weight copies", "autocast_weight_copies", False),
    ("activations", "activations", True),
    ("  per layer, no checkpointing", "activations_per_layer", True),
    ("  per layer, checkpointed", "activations_per_layer_checkpointed", True),
    ("logits and loss (fp32)", "logits", True),
    ("tensor peak", "peak", True),
    ("allocator slack", "allocator_slack", False),
    ("framework overhead", "overhead", True),
]


def format_table(result: dict) -> str:
    """The plan as aligned `label  value` lines."""
    m, lay, mem, c, r = (result[k] for k in ("model", "layout", "memory", "compute", "run"))
    precision = "float32" if lay["dtype"] == "float32" else f"{lay['dtype']} autocast"
    fits = "fits" if mem["fits"] else "DOES NOT FIT"
    cost = r["cost"]
    rows = [
        ("model", f"gpt, {m['n_layer']} layers, d_model {m['d_model']}, {m['n_head']} heads "
         f"({m['n_kv_head']} kv), ffn {m['ffn_hidden']}, vocab {m['vocab_size']:,}"),
        ("parameters", f"{m['parameters']:,} ({m['parameters_non_embedding']:,} non-embedding)"),
        ("layout", f"{lay['strategy']} on {lay['devices']} x {lay['hardware']} "
         f"(dp={lay['dp']}, tp={lay['tp']})"),
        ("batch", f"{lay['micro_batch']} x {lay['seq_len']} per device, grad_accum "
         f"{lay['grad_accum']}: {lay['tokens_per_step']:,} tokens/step"),
        ("precision", f"{precision}, fp32 weights and {lay['optimizer']} states"),
        ("attention", lay["attention"]),
        ("activation checkpointing", "on" if lay["activation_checkpointing"] else "off"),
        ("memory per device", ""),
        *[(f"  {label}", _size(mem[key])) for label, key, always in _MEMORY_ROWS
          if always or mem[key]],
        ("  total", f"{_size(mem['total'])} of {_size(mem['capacity'])}: {fits}"),
        ("  largest micro-batch", str(mem["max_micro_batch"])),
        ("FLOPs per token / step", f"{_count(c['flops_per_token'])} / "
         f"{_count(c['flops_per_step'])}"),
        ("peak per device", f"{c['peak_flops_per_device'] / 1e12:,.2f} TFLOP/s "
         f"({c['peak_source']})"),
        ("assumed MFU", f"{c['mfu']:.0%}"),
        ("step time", f"{_duration(c['step_seconds'])} ({c['tokens_per_second']:,.0f} tok/s)"),
        ("compute-optimal tokens", f"{_count(r['compute_optimal_tokens'])} "
         f"({TOKENS_PER_PARAM} per parameter)"),
        ("run", f"{_count(r['tokens'])} tokens, {r['steps']:,} steps, "
         f"{_duration(r['hours'] * 3600)}, {r['device_hours']:,.1f} device-hours"),
        ("cost", "unknown: pass --price-per-hour" if cost is None
         else f"${cost:,.2f} at ${r['price_per_device_hour']:.2f} per device-hour"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}".rstrip() for k, v in rows)


def _duration(seconds: float) -> str:
    for unit, scale, limit in (("s", 1, 120), ("min", 60, 7200), ("h", 3600, 259200)):
        if seconds < limit:
            return f"{seconds / scale:,.2f} {unit}"
    return f"{seconds / 86400:,.1f} days"


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
    g.add_argument("--hardware", default="cpu", help="a name from the hardware table (default cpu)")
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
        "--tokens", type=_tokens, help="run length, e.g. 2e9 or 300M (default compute-optimal)"
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
