"""ONNX export of the image-generation denoiser: onnxruntime reproduces torch's velocity, and a
sampler looping over the graph draws the same images as models/flow.sample."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("onnxruntime", reason="the [export] extra (onnx, onnxscript, onnxruntime)")
pytest.importorskip("onnxscript", reason="the [export] extra (onnx, onnxscript, onnxruntime)")

from modelworks.export_denoiser import write_denoiser_onnx  # noqa: E402
from modelworks.export_onnx import session  # noqa: E402
from modelworks.models.flow import sample  # noqa: E402
from modelworks.models.registry import build_model  # noqa: E402
from modelworks.models.unet import UNetConfig  # noqa: E402


@pytest.mark.slow  # ~8 s of export on a quiet machine; the default suite stays lean
def test_denoiser_onnx_samples_the_same_images_as_torch(tmp_path):
    torch.manual_seed(0)
    model = build_model(UNetConfig(image_size=8, channels=1, n_classes=3, base_width=16,
                                   blocks_per_level=1))  # fmt: skip
    with torch.no_grad():  # a non-trivial EMA (the output layer starts at zero)
        for b in model.ema.buffers():
            if b.is_floating_point():
                b.add_(0.05 * torch.randn(b.shape))
    pre = tmp_path / "run" / "preprocess"
    pre.mkdir(parents=True)
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    save_file(
        {"test_x": x, "test_y": y, "val_x": x.clone(), "val_y": y.clone()},
        str(pre / "data.safetensors"),
    )
    (pre / "labels.json").write_text(json.dumps({"classes": ["a", "b", "c"], "image_size": 8}))
    out = tmp_path / "out"
    out.mkdir()
    info = write_denoiser_onnx(model, tmp_path / "run", out)
    assert info["fp32_max_abs_diff_vs_torch"] <= info["tolerance"]
    assert [i["name"] for i in info["inputs"]] == ["x", "t", "class_index"]
    sess = session(out / "model.onnx")

    # Euler with guidance w = 2 over the graph, from the same noise flow.sample draws
    labels, steps, w = torch.tensor([2, 0, 1]), 4, 2.0
    noise = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(9)).numpy()
    xs, null = noise, np.full(3, info["no_class_index"])
    for i in range(steps):
        t0 = np.full(3, i / steps, dtype=np.float32)

        def v(cls, xs=xs, t0=t0):
            return sess.run(None, {"x": xs, "t": t0, "class_index": cls})[0]

        cond, uncond = v(labels.numpy()), v(null)
        xs = xs + (1 / steps) * (uncond + w * (cond - uncond))
    expected = sample(model.ema, labels, (1, 8, 8), 3, steps=steps, guidance=w, seed=9)
    assert np.abs(xs - expected.numpy()).max() < 1e-3
