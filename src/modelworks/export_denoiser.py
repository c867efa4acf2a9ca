"""ONNX export of an image-generation run's denoiser: the EMA U-Net, checked against torch.

    modelworks export runs/generation-digits out/gen-onnx --format onnx

`model.onnx` maps `x` float32 (batch, channels, height, width), `t` float32 (batch,) in [0, 1]
and `class_index` int64 (batch,) (the number of classes = "no class", for classifier-free
guidance) to `velocity` float32, same shape as x; the batch axis is dynamic. A sampler is a
loop over this graph: start from Gaussian noise at t = 0 and step x += dt * v up to t = 1,
with v = v_uncond + w (v_cond - v_uncond) for guidance w (models/flow.py). Pixels: x in [-1, 1]
maps to (x + 1) * 127.5. Before the folder is written the graph runs under onnxruntime on
held-out images at random t and must match torch within `export_onnx.TOLERANCE`. The folder
also holds config.json, labels.json (class names, image size) and export.json.
"""

from __future__ import annotations

import inspect
import logging
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from modelworks.artifacts import atomic_write_json
from modelworks.errors import ExportError

INPUTS = ("x", "t", "class_index")


def write_denoiser_onnx(model: nn.Module, run_dir: Path, tmp: Path) -> dict:
    from modelworks.export_onnx import OPSET, TOLERANCE, _require, session
    from modelworks.models.flow import from_uint8
    from modelworks.train.checkpoint import _config_json

    _require()
    net = model.ema.eval().cpu()
    data = run_dir / "preprocess" / "data.safetensors"
    if not data.is_file():
        raise ExportError(f"{data}: no held-out images to check the graph on")
    from safetensors.torch import load_file

    tensors = load_file(str(data))
    split = "test" if len(tensors["test_y"]) >= 4 else "val"
    x = from_uint8(tensors[f"{split}_x"][:8])
    g = torch.Generator().manual_seed(0)
    t = torch.rand(len(x), generator=g)
    y = tensors[f"{split}_y"][: len(x)].clone()
    y[-1] = net.class_emb.num_embeddings - 1  # one row without a class, as guidance asks
    tt = t[:, None, None, None]
    noisy = (1 - tt) * torch.randn(x.shape, generator=g) + tt * x
    path = tmp / "model.onnx"
    batch = torch.export.Dim("batch")
    params = inspect.signature(torch.onnx.export).parameters
    extra = {"external_data": False} if "external_data" in params else {}
    quiet = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net, (noisy[:2], t[:2], y[:2]), str(path), input_names=list(INPUTS),
                output_names=["velocity"], dynamic_shapes=({0: batch}, {0: batch}, {0: batch}),
                opset_version=OPSET, dynamo=True, verbose=False, **extra,
            )  # fmt: skip
    except Exception as e:  # the exporter raises many kinds; the user needs one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"U-Net denoiser: torch.onnx.export failed: {first}") from None
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    sess = session(path)
    got = sess.run(None, {"x": noisy.numpy(), "t": t.numpy(), "class_index": y.numpy()})[0]
    with torch.no_grad():
        expected = net(noisy, t, y).float()
    diff = (torch.from_numpy(got) - expected).abs().max().item()
    allowed = TOLERANCE * max(1.0, expected.abs().max().item())
    if not diff <= allowed:
        raise ExportError(f"ONNX velocity differs from torch by {diff:.3g} (> {allowed:.3g})")
    atomic_write_json(tmp / "config.json", _config_json(model))
    shutil.copyfile(run_dir / "preprocess" / "labels.json", tmp / "labels.json")
    shape = ["batch", *x.shape[1:]]
    info = {
        "format": "onnx",
        "file": "model.onnx",
        "opset": OPSET,
        "inputs": [
            {"name": "x", "dtype": "float32", "shape": shape},
            {"name": "t", "dtype": "float32", "shape": ["batch"]},
            {"name": "class_index", "dtype": "int64", "shape": ["batch"]},
        ],
        "output": {"name": "velocity", "dtype": "float32", "shape": shape},
        "no_class_index": net.class_emb.num_embeddings - 1,
        "fp32_max_abs_diff_vs_torch": diff,
        "tolerance": allowed,
        "checked_on": list(noisy.shape),
    }
    atomic_write_json(tmp / "export.json", info)
    return info
