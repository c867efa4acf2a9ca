"""int8 exports: onnxruntime's dynamic quantisation of an ONNX graph, and its size/speed/quality
table against torch fp32 and ONNX fp32 (`modelworks export RUN OUT --format int8`).

The weights of every MatMul (the Linear layers) are stored as int8 with one scale per output
channel, activations quantised on the fly per batch; the scheme of torch's `quantize_dynamic`,
whose eager API torch has deprecated, in a file any onnxruntime loads without pickle. The command
measures size, latency and quality (perplexity on the run's validation tokens, or accuracy on its
test images or texts) for torch fp32, ONNX fp32 and ONNX int8, logs the table and writes it to
`quantization.json`. The graph itself is export_onnx.py's.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from modelworks.artifacts import atomic_write_json
from modelworks.export_onnx import (
    _rows,
    is_decoder,
    is_text_classifier,
    max_difference,
    run_onnx,
    run_torch,
    session,
    write_checked,
)

log = logging.getLogger("modelworks")


def write_int8(model: nn.Module, run_dir: Path, tmp: Path, limit: int = 16) -> None:
    """Fill `tmp` with the int8 export of `model`: the checked fp32 graph quantised, its table
    in quantization.json and the log."""
    model = model.eval().cpu()
    checked = write_checked(model, run_dir, tmp, "model.fp32.onnx", limit)
    q8 = tmp / "model.onnx"
    quantize_int8(checked.path, q8)
    sess8 = session(q8)
    info = {**checked.info, "format": "int8"}
    info["int8_max_abs_diff_vs_torch"] = max_difference(model, sess8, checked.check)[0]
    atomic_write_json(tmp / "export.json", info)
    table = measure(model, checked.metric, checked.batches, checked.path, checked.sess, q8, sess8)
    checked.path.unlink()
    atomic_write_json(tmp / "quantization.json", table)
    for line in format_table(table).splitlines():
        log.info(line)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of every MatMul weight, one scale per output channel."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it advises pre-processing at WARNING; not needed for MatMuls
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)


def quality(metric: str, forward, batches: list[tuple]) -> float:
    total, count = 0.0, 0
    for x, y in batches:
        logits = forward(x).float()
        if metric == "perplexity":
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
        else:
            total += (logits.argmax(-1) == y).sum().item()
            count += len(y)
    mean = total / count
    return math.exp(mean) if metric == "perplexity" else mean


def latencies_ms(forwards: list, x, budget_s: float = 1.0) -> list[float]:
    """Median wall time of one forward pass on x for each of `forwards`, after warm-up. The
    variants take turns, so a change in machine load affects them alike."""
    for fwd in forwards:
        for _ in range(2):
            fwd(x)
    times: list[list[float]] = [[] for _ in forwards]
    start = time.perf_counter()
    while len(times[0]) < 5 or (time.perf_counter() - start < budget_s and len(times[0]) < 200):
        for fwd, ts in zip(forwards, times, strict=True):
            t = time.perf_counter()
            fwd(x)
            ts.append(time.perf_counter() - t)
    return [1000 * statistics.median(ts) for ts in times]


def speed_input(model: nn.Module, batches: list[tuple]):
    """A LM: one full-context row (batch 1 latency); a classifier: a batch of up to 64 images
    or texts."""
    return _rows(batches[0][0], 1 if is_decoder(model) else 64)


def measure(model, metric, batches, fp32: Path, sess, q8: Path, sess8) -> dict:
    """Size, latency and held-out quality for torch fp32, ONNX fp32 and ONNX int8."""
    x = speed_input(model, batches)
    # parameters() yields a tied weight once: the size of our model.safetensors, less metadata
    torch_size = sum(p.numel() * p.element_size() for p in model.parameters())
    variants = [
        ("torch fp32", torch_size, lambda inp: run_torch(model, inp)),
        ("onnx fp32", fp32.stat().st_size, lambda inp: run_onnx(sess, inp)),
        ("onnx int8", q8.stat().st_size, lambda inp: run_onnx(sess8, inp)),
    ]
    times = latencies_ms([fwd for _, _, fwd in variants], x)
    first = x[0] if isinstance(x, tuple) else x
    n_items = first.numel() if is_decoder(model) else len(first)
    rows = [
        {
            "variant": name,
            "size_bytes": size,
            "latency_ms": ms,
            "items_per_s": n_items / (ms / 1000),
            metric: quality(metric, fwd, batches),
        }
        for (name, size, fwd), ms in zip(variants, times, strict=True)
    ]
    n_eval = sum(len(y) if metric == "accuracy" else y.numel() for _, y in batches)
    items = "tokens" if is_decoder(model) else "texts" if is_text_classifier(model) else "images"
    return {
        "metric": metric,
        "evaluated_on": f"{n_eval} held-out {items}",
        "speed_input": list(first.shape),
        "items": items,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }


def format_table(table: dict) -> str:
    metric, items = table["metric"], table["items"]
    lines = [
        f"int8 quantisation: {metric} on {table['evaluated_on']}; latency of one forward on "
        f"{table['speed_input']} ({table['threads']} threads)",
        f"| variant | size (MB) | latency (ms) | {items}/s | {metric} |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in table["rows"]:
        q = f"{r[metric]:.3f}" if metric == "perplexity" else f"{r[metric]:.4f}"
        lines.append(
            f"| {r['variant']} | {r['size_bytes'] / 1e6:.3f} | {r['latency_ms']:.2f} | "
            f"{r['items_per_s']:,.0f} | {q} |"
        )
    return "\n".join(lines)
