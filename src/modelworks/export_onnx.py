"""ONNX and int8 exports of a run's model, checked against onnxruntime at export time.

    modelworks export runs/quickstart out/qs-onnx --format onnx    # decoder: logits for input_ids
    modelworks export runs/mlp-digits out/mlp-onnx --format onnx   # classifier: logits for pixels
    modelworks export runs/sentiment out/cls-onnx --format onnx    # text classifier: ids + mask
    modelworks export runs/quickstart out/qs-int8 --format int8    # + size/speed/quality table

`onnx`: `model.onnx` (fp32, weights inside the file) traced by torch's dynamo exporter with dynamic
batch and sequence axes. A decoder (our GPT) maps `input_ids` int64 (batch, sequence <= context)
to `logits` float32 (batch, sequence, vocab), no KV cache; a text classifier (our encoder with a
head, or our GPT with a class head) maps `input_ids` and `attention_mask` int64 (batch, sequence),
right-padded as the copied `tokenizer.json` with padding makes them, to `logits` (batch, classes);
an image classifier (vit, cnn, mlp) maps `pixel_values` float32 (batch, channels, height, width),
normalised with the `mean`/`std` of the copied `labels.json`, to `logits` (batch, classes).
Before the folder is written, the ONNX graph runs under onnxruntime on held-out inputs and must
match torch within `TOLERANCE`.

`int8`: the same graph with onnxruntime's dynamic quantisation, measured against fp32
(export_int8.py, which builds on `write_checked`).

Every folder also holds `config.json` (the model), `tokenizer.json` and/or `labels.json` (the
run's), and `export.json` (inputs, outputs, opset, the measured difference to torch).
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from modelworks.artifacts import atomic_write_json, tokenizer_path
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


def is_text_classifier(model: nn.Module) -> bool:
    """Our encoder with a head, or our GPT with a class head: (ids, mask) -> class logits."""
    from modelworks.models.encoder import Encoder
    from modelworks.models.gpt_classifier import GPTClassifier

    return isinstance(model, GPTClassifier) or (
        isinstance(model, Encoder) and model.head is not None
    )


def is_decoder(model: nn.Module) -> bool:
    return isinstance(model, GPT) and not is_text_classifier(model)


class _Logits(nn.Module):
    """forward(input) -> logits only, so the graph has exactly one named input and output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _TextLogits(_Logits):
    """forward(input_ids, attention_mask) -> class logits."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)


def input_names(model: nn.Module) -> list[str]:
    if is_text_classifier(model):
        return ["input_ids", "attention_mask"]
    return ["input_ids"] if isinstance(model, GPT) else ["pixel_values"]


def _as_tuple(x: torch.Tensor | tuple) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def to_onnx(model: nn.Module, path: Path, sample: torch.Tensor | tuple) -> None:
    """Trace `model` on `sample` (a tensor, or (ids, mask) for a text classifier) into `path`
    with dynamic batch (and, for token inputs, sequence) axes."""
    _require()
    model = model.eval().cpu()
    sample = _as_tuple(sample)
    tokens = isinstance(model, GPT) or is_text_classifier(model)
    if sample[0].shape[0] < 2 or (tokens and sample[0].shape[1] < 2):
        # torch.export specialises sizes 0 and 1 to constants, so the sample must avoid them
        raise ValueError("the ONNX tracing sample needs batch >= 2 (and sequence >= 2)")
    dims: dict[int, torch.export.Dim] = {0: torch.export.Dim("batch")}
    if tokens:
        dims[1] = torch.export.Dim("sequence", max=model.cfg.context_len)
    if is_text_classifier(model):
        wrapper: nn.Module = _TextLogits(model)
        shapes = {"input_ids": dims, "attention_mask": dims}
    else:
        wrapper, shapes = _Logits(model), {"x": dims}
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
                wrapper,
                sample,
                str(path),
                input_names=input_names(model),
                output_names=["logits"],
                dynamic_shapes=shapes,
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

    graph = onnx.load(str(path), load_external_data=False).graph
    for inp in graph.input:
        shape = inp.type.tensor_type.shape
        fixed = [i for i in dims if not shape.dim[i].dim_param]
        if fixed:
            raise ExportError(
                f"{type(model).__name__}: its forward fixes input axis {fixed[0]} to "
                f"{shape.dim[fixed[0]].dim_value} (len(x) or int(x.shape[...]) in the model), so "
                "the ONNX graph cannot take other sizes; use x.shape[...] there"
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


def run_onnx(sess, x: torch.Tensor | tuple) -> torch.Tensor:
    """Logits of the graph for x (a tensor, or a tuple in the graph's input order)."""
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), _as_tuple(x), strict=True)}
    return torch.from_numpy(sess.run(None, feeds)[0])


def run_torch(model: nn.Module, x: torch.Tensor | tuple) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(*_as_tuple(x)).float()


def max_difference(model: nn.Module, sess, x: torch.Tensor | tuple) -> tuple[float, float]:
    """(max |onnx - torch|, allowed) on input x."""
    expected = run_torch(model, x)
    got = run_onnx(sess, x)
    if got.shape != expected.shape:
        raise ExportError(f"ONNX logits have shape {tuple(got.shape)}, torch {expected.shape}")
    allowed = TOLERANCE * max(1.0, expected.abs().max().item())
    return (got - expected).abs().max().item(), allowed


# ---- held-out data -------------------------------------------------------------------------


def heldout(model: nn.Module, run_dir: Path, limit: int) -> tuple[str, list[tuple]]:
    """Quality data from the run: (metric name, batches of (inputs, targets)); a text
    classifier's inputs are (ids, mask), encoded as /v1/classify encodes them."""
    if is_text_classifier(model):
        from modelworks.tasks import text_classification as tc

        split = run_dir / "preprocess" / "test.parquet"
        if not split.is_file():
            raise ExportError(f"{split}: no held-out texts to check against")
        texts, y = tc.load_split(run_dir, "test")
        if len(y) < 2:
            texts, y = tc.load_split(run_dir, "val")
        if len(y) < 2:
            raise ExportError(f"{run_dir}/preprocess: too few held-out texts")
        tok = tc._tokenizer(tokenizer_path(run_dir))
        ids, mask, _ = tc.encode(tok, texts, tc.max_tokens(run_dir, model))
        batches = []
        for i in range(0, min(len(y), 64 * limit), 64):
            b_ids, b_mask = tc._trim(ids[i : i + 64], mask[i : i + 64])
            batches.append(((b_ids, b_mask), y[i : i + 64]))
        return "accuracy", batches
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
    from modelworks.models.detector import Detector

    if isinstance(model, Detector):  # raw maps (heatmap logits, offsets, log sizes) are checked
        from modelworks.tasks.object_detection_data import load_split as detection_split
        from modelworks.tasks.object_detection_data import normalise

        x, _, meta = detection_split(run_dir, "test")
        x = normalise(x if len(x) >= 4 else detection_split(run_dir, "train")[0], meta)
        return "detection", [
            (x[i : i + 64], torch.zeros(len(x[i : i + 64])))
            for i in range(0, 64 * limit, 64)
            if i < len(x)
        ]
    from modelworks.tasks.image_classification import load_split

    if not (run_dir / "preprocess" / "data.safetensors").is_file():
        raise ExportError(f"{run_dir}/preprocess/data.safetensors: no held-out images to check")
    x, y, _ = load_split(run_dir, "test")
    if len(y) == 0:
        x, y, _ = load_split(run_dir, "val")
    if len(y) < 2:
        raise ExportError(f"{run_dir}/preprocess/data.safetensors: too few held-out images")
    return "accuracy", [(x[i : i + 256], y[i : i + 256]) for i in range(0, len(y), 256)]


def _rows(x: torch.Tensor | tuple, n: int, seq: int | None = None) -> torch.Tensor | tuple:
    """The first n rows of x (each input), and the first `seq` positions when given."""
    cut = tuple(t[:n] if seq is None else t[:n, :seq] for t in _as_tuple(x))
    return cut if isinstance(x, tuple) else cut[0]


# ---- the export ----------------------------------------------------------------------------


class Checked(NamedTuple):
    """An fp32 graph written and checked against torch, with what int8 measures it on."""

    path: Path
    sess: Any  # its onnxruntime session
    info: dict  # export.json's content
    metric: str
    batches: list[tuple]
    check: torch.Tensor | tuple  # the held-out inputs it was checked on


def write_checked(
    model: nn.Module, run_dir: Path, tmp: Path, name: str = "model.onnx", limit: int = 16
) -> Checked:
    """Trace `model` into `tmp/name`, check it against torch on the run's held-out inputs, and
    put config.json and the run's tokenizer.json / labels.json next to it."""
    _require()
    from modelworks.train.checkpoint import _config_json

    model = model.eval().cpu()
    metric, batches = heldout(model, run_dir, limit)
    first = batches[0][0]
    seq = max(2, min(8, first.shape[1])) if is_decoder(model) else None
    path = tmp / name
    to_onnx(model, path, _rows(first, 2, seq))
    sess = session(path)
    check = _rows(first, 4)
    diff, allowed = max_difference(model, sess, check)
    if not diff <= allowed:
        raise ExportError(
            f"ONNX logits differ from torch by {diff:.3g} (> {allowed:.3g}) on held-out inputs"
        )
    atomic_write_json(tmp / "config.json", _config_json(model))
    for src in (tokenizer_path(run_dir), run_dir / "preprocess" / "labels.json"):
        if src.is_file():
            shutil.copyfile(src, tmp / src.name)
    tokens = isinstance(model, GPT) or is_text_classifier(model)
    inputs = [
        {
            "name": input_name,
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": ["batch", "sequence"] if tokens else ["batch", *t.shape[1:]],
        }
        for input_name, t in zip(input_names(model), _as_tuple(check), strict=True)
    ]
    info = {
        "format": "onnx",
        "file": "model.onnx",
        "opset": OPSET,
        "input": inputs[0],
        "inputs": inputs,
        "output": {"name": "logits", "dtype": "float32"},
        "fp32_max_abs_diff_vs_torch": diff,
        "tolerance": allowed,
        "checked_on": list(_as_tuple(check)[0].shape),
    }
    if tokens:
        info["context_len"] = model.cfg.context_len
    return Checked(path, sess, info, metric, batches, check)


def write_onnx(model: nn.Module, run_dir: Path, tmp: Path, limit: int = 16) -> None:
    """Fill `tmp` with the ONNX export of `model`, checked against torch."""
    checked = write_checked(model, run_dir, tmp, "model.onnx", limit)
    atomic_write_json(tmp / "export.json", checked.info)
    diff, allowed = checked.info["fp32_max_abs_diff_vs_torch"], checked.info["tolerance"]
    log.info(f"[export] ONNX logits match torch: max |diff| {diff:.2e} (allowed {allowed:.1e})")


def load_onnx(folder: str | Path):
    """(onnxruntime session, export.json) for an exported folder."""
    folder = Path(folder)
    if not (folder / "model.onnx").is_file():
        raise ExportError(f"{folder}: no model.onnx here")
    return session(folder / "model.onnx"), json.loads((folder / "export.json").read_text())
