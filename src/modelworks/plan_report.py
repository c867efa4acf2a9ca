"""The plan as text: aligned `label  value` lines for the terminal (`modelworks plan`)."""

from __future__ import annotations

GiB = 2**30


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
    """The plan as aligned `label  value` lines, then its notes (which run length it plans, a
    dtype fallback) one per line."""
    m, lay, mem, c, r = (result[k] for k in ("model", "layout", "memory", "compute", "run"))
    precision = {
        "float32": "float32",
        "tf32": "float32 with TF32 matmuls (pretrain.tf32)",
    }.get(lay["matmul_precision"], f"{lay['dtype']} autocast")
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
         f"({r['tokens_per_parameter']} per parameter)"),
        ("run", f"{_count(r['tokens'])} tokens, {r['steps']:,} steps, "
         f"{_duration(r['hours'] * 3600)}, {r['device_hours']:,.1f} device-hours"),
        ("cost", "unknown: pass --price-per-hour" if cost is None
         else f"${cost:,.2f} at ${r['price_per_device_hour']:.2f} per device-hour"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}".rstrip() for k, v in rows]
    return "\n".join([*lines, *result.get("notes", [])])


def _duration(seconds: float) -> str:
    for unit, scale, limit in (("s", 1, 120), ("min", 60, 7200), ("h", 3600, 259200)):
        if seconds < limit:
            return f"{seconds / scale:,.2f} {unit}"
    return f"{seconds / 86400:,.1f} days"
