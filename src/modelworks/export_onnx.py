"""ONNX and int8 exports of a run's model, checked against onnxruntime at export time.

    modelworks export runs/quickstart out/qs-onnx --format onnx    # decoder: logits for input_ids
    modelworks export runs/mlp-digits out/mlp-onnx --format onnx   # classifier: logits for pixels
    modelworks export runs/quickstart out/qs-int8 --format int8    # + size/speed/quality table

`onnx`: `model.onnx` (fp32, weights inside the file) traced by torch's dynamo exporter with dynamic
batch and sequence axes. A decoder (our GPT) maps `input_ids` int64 (batch, sequence <= context)
to `logits` float32 (batch, sequence, vocab), no KV cache; an image classifier (vit, cnn, mlp)
maps `pixel_values` float32 (batch, channels, height, width), normalised with the `mean`/`std`
of the copied `labels.json`, to `logits` (batch, classes). Before the folder is written, the
ONNX graph runs under onnxruntime on held-out inputs and must match torch within `TOLERANCE`.

`int8`: the same graph with onnxruntime's dynamic quantisation (`quantize_dynamic`): the weights
of every MatMul (the Linear layers) stored as int8 with one scale per output channel, activations
quantised on the fly per batch; the scheme of torch's `quantize_dynamic`, whose eager API torch
has deprecated, in a file any onnxruntime loads without pickle. The command measures size,
latency and quality (perplexity on the run's validation tokens, or accuracy on its test images)
for torch fp32, ONNX fp32 and ONNX int8, logs the table and writes it to `quantization.json`.

Every folder also holds `config.json` (the model), `tokenizer.json` or `labels.json` (the run's),
and `export.json` (inputs, outputs, opset, the measured difference to torch).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import shutil
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from modelworks.artifacts import atomic_write_json
from modelworks.errors import ExportError
from modelworks.models.gpt import GPT

log = logging.getLogger("modelworks")

OPSET = 18
TOLERANCE = 1e-3  # max |onnx - torch| on logits, relative to max(1, max |logit|)


def _require() -> None:
    missing = []
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ExportError(
            f"--format onnx/int8 needs {', '.join(missing)}: pip install 'modelworks[export]'"
        )


class _Logits(nn.Module):
    """forward(input) -> logits only, so the graph has exactly one named input and output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def input_name(model: nn.Module) -> str:
    return "input_ids" if isinstance(model, GPT) else "pixel_values"


def to_onnx(model: nn.Module, path: Path, sample: torch.Tensor) -> None:
    """Trace `model` on `sample` into `path` with dynamic batch (and, for GPT, sequence) axes."""
    _require()
    model = model.eval().cpu()
    if sample.shape[0] < 2 or (isinstance(model, GPT) and sample.shape[1] < 2):
        # torch.export specialises sizes 0 and 1 to constants, so the sample must avoid them
        raise ValueError("the ONNX tracing sample needs batch >= 2 (and sequence >= 2)")
    dims: dict[int, torch.export.Dim] = {0: torch.export.Dim("batch")}
    if isinstance(model, GPT):
        dims[1] = torch.export.Dim("sequence", max=model.cfg.context_len)
    quiet = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [q.level for q in quiet]
    for q in quiet:  # the exporter's optimiser logs every initializer it merges at INFO
        q.setLevel(logging.WARNING)
    # weights inside model.onnx (one file), where this torch's exporter has the switch
    params = inspect.signature(torch.onnx.export).parameters
    extra = {"external_data": False} if "external_data" in params else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and torchvision notices
            torch.onnx.export(
                _Logits(model),
                (sample,),
                str(path),
                input_names=[input_name(model)],
                output_names=["logits"],
                dynamic_shapes={"x": dims},
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
                **extra,
            )
    except Exception as e:  # the exporter raises many kinds; the user needs one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"{type(model).__name__}: torch.onnx.export failed: {first}") from None
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    import onnx

    shape = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape
    fixed = [i for i in dims if not shape.dim[i].dim_param]
    if fixed:
        raise ExportError(
            f"{type(model).__name__}: its forward fixes input axis {fixed[0]} to "
            f"{shape.dim[fixed[0]].dim_value} (len(x) or int(x.shape[...]) in the model), so the "
            "ONNX graph cannot take other sizes; use x.shape[...] there"
        )


def session(path: Path):
    """An onnxruntime CPU session using as many threads as torch does (fair timings)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # idle worker threads must not spin: they would steal the cores torch is timed on
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(sess, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def max_difference(model: nn.Module, sess, x: torch.Tensor) -> tuple[float, float]:
    """(max |onnx - torch|, allowed) on input x."""
    with torch.no_grad():
        expected = model.eval()(x).float()
    got = run_onnx(sess, x)
    if got.shape != expected.shape:
        raise ExportError(f"ONNX logits have shape {tuple(got.shape)}, torch {expected.shape}")
    allowed = TOLERANCE * max(1.0, expected.abs().max().item())
    return (got - expected).abs().max().item(), allowed


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


# ---- held-out data and measurements -------------------------------------------------------


def heldout(model: nn.Module, run_dir: Path, limit: int) -> tuple[str, list[tuple]]:
    """Quality data from the run: (metric name, batches of (inputs, targets))."""
    if isinstance(model, GPT):
        from modelworks.preprocess.pack import TokenShards
        from modelworks.train.data import sequential_batches

        if not (run_dir / "preprocess" / "tokens" / "meta.json").is_file():
            raise ExportError(f"{run_dir}/preprocess/tokens: no token shards to check against")
        tokens = TokenShards(run_dir / "preprocess" / "tokens", "val").tokens()
        seq = min(model.cfg.context_len, len(tokens) - 1)
        if seq < 2:
            raise ExportError(f"{run_dir}/preprocess/tokens: too few validation tokens")
        return "perplexity", list(sequential_batches(tokens, 8, seq, limit))
    from modelworks.tasks.image_classification import load_split

    if not (run_dir / "preprocess" / "data.safetensors").is_file():
        raise ExportError(
            f"{run_dir}: --format onnx/int8 exports our GPT decoder and image classifiers (vit, "
            f"cnn, mlp) with their held-out data; this run's model is {type(model).__name__}"
        )
    x, y, _ = load_split(run_dir, "test")
    if len(y) == 0:
        x, y, _ = load_split(run_dir, "val")
    if len(y) < 2:
        raise ExportError(f"{run_dir}/preprocess/data.safetensors: too few held-out images")
    return "accuracy", [(x[i : i + 256], y[i : i + 256]) for i in range(0, len(y), 256)]


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


def latencies_ms(forwards: list, x: torch.Tensor, budget_s: float = 1.0) -> list[float]:
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


def speed_input(model: nn.Module, batches: list[tuple]) -> torch.Tensor:
    """A LM: one full-context row (batch 1 latency); a classifier: a batch of 64 images."""
    x = batches[0][0]
    return x[:1] if isinstance(model, GPT) else x[:64]


# ---- the export ----------------------------------------------------------------------------


def write_onnx(model: nn.Module, run_dir: Path, tmp: Path, int8: bool, limit: int = 16) -> None:
    """Fill `tmp` with the ONNX (or int8 ONNX) export of `model`, checked and measured."""
    _require()
    from modelworks.train.checkpoint import _config_json

    model = model.eval().cpu()
    metric, batches = heldout(model, run_dir, limit)
    sample = batches[0][0][:2]
    if isinstance(model, GPT):
        sample = sample[:, : max(2, min(8, sample.shape[1]))]
    fp32 = tmp / ("model.fp32.onnx" if int8 else "model.onnx")
    to_onnx(model, fp32, sample)
    sess = session(fp32)
    check = batches[0][0][:4]
    diff, allowed = max_difference(model, sess, check)
    if not diff <= allowed:
        raise ExportError(
            f"ONNX logits differ from torch by {diff:.3g} (> {allowed:.3g}) on held-out inputs"
        )
    atomic_write_json(tmp / "config.json", _config_json(model))
    for name in ("tokenizer.json", "labels.json"):
        if (run_dir / "preprocess" / name).is_file():
            shutil.copyfile(run_dir / "preprocess" / name, tmp / name)
    info = {
        "format": "int8" if int8 else "onnx",
        "file": "model.onnx",
        "opset": OPSET,
        "input": {
            "name": input_name(model),
            "dtype": str(check.dtype).removeprefix("torch."),
            "shape": ["batch", "sequence"]
            if isinstance(model, GPT)
            else ["batch", *check.shape[1:]],
        },
        "output": {"name": "logits", "dtype": "float32"},
        "fp32_max_abs_diff_vs_torch": diff,
        "tolerance": allowed,
        "checked_on": list(check.shape),
    }
    if isinstance(model, GPT):
        info["context_len"] = model.cfg.context_len
    if not int8:
        atomic_write_json(tmp / "export.json", info)
        log.info(f"[export] ONNX logits match torch: max |diff| {diff:.2e} (allowed {allowed:.1e})")
        return
    q8 = tmp / "model.onnx"
    quantize_int8(fp32, q8)
    sess8 = session(q8)
    info["int8_max_abs_diff_vs_torch"] = max_difference(model, sess8, check)[0]
    atomic_write_json(tmp / "export.json", info)
    table = measure(model, metric, batches, fp32, sess, q8, sess8)
    fp32.unlink()
    atomic_write_json(tmp / "quantization.json", table)
    for line in format_table(table).splitlines():
        log.info(line)


def measure(model, metric, batches, fp32: Path, sess, q8: Path, sess8) -> dict:
    """Size, latency and held-out quality for torch fp32, ONNX fp32 and ONNX int8."""
    x = speed_input(model, batches)
    # parameters() yields a tied weight once: the size of our model.safetensors, less metadata
    torch_size = sum(p.numel() * p.element_size() for p in model.parameters())

    def torch_fwd(inp):
        with torch.no_grad():
            return model(inp)

    variants = [
        ("torch fp32", torch_size, torch_fwd),
        ("onnx fp32", fp32.stat().st_size, lambda inp: run_onnx(sess, inp)),
        ("onnx int8", q8.stat().st_size, lambda inp: run_onnx(sess8, inp)),
    ]
    times = latencies_ms([fwd for _, _, fwd in variants], x)
    n_items = x.numel() if isinstance(model, GPT) else len(x)
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
    return {
        "metric": metric,
        "evaluated_on": f"{n_eval} held-out {'tokens' if metric == 'perplexity' else 'images'}",
        "speed_input": list(x.shape),
        "items": "tokens" if isinstance(model, GPT) else "images",
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


def load_onnx(folder: str | Path):
    """(onnxruntime session, export.json) for an exported folder."""
    folder = Path(folder)
    if not (folder / "model.onnx").is_file():
        raise ExportError(f"{folder}: no model.onnx here")
    return session(folder / "model.onnx"), json.loads((folder / "export.json").read_text())
