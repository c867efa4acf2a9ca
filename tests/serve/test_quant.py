"""Int8 weight-only serving (serve/quant.py): each path of Int8Linear against F.linear on the
dequantized weight, and a whole GPT served quantized: close logits, a quarter of the bytes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelworks.models.gpt import GPT, GPTConfig
from modelworks.serve.quant import Int8Linear, quantize_int8, weight_bytes


@pytest.mark.parametrize("out_features,rows", [(4096 * 1024 // 512, 1), (8192, 3), (96, 5)])
def test_int8_linear_paths_match_the_dequantized_product(out_features, rows):
    torch.manual_seed(0)
    lin = nn.Linear(512, out_features, bias=False)
    q = Int8Linear(lin)
    x = torch.randn(rows, 512)
    with torch.no_grad():
        got, ref = q(x), F.linear(x, q.dequantized())
        exact = lin(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    # and the quantization itself is close: per-row absmax int8 keeps ~2 decimal digits
    assert (got - exact).abs().max() < 0.02 * exact.abs().max()
    assert q.qweight.dtype == torch.int8 and q.qweight.shape == lin.weight.shape


def test_a_quantized_gpt_keeps_its_logits_and_takes_a_quarter_of_the_bytes():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=300, context_len=64, n_layer=2, n_head=4, n_kv_head=2, d_model=64)
    model = GPT(cfg).eval()
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        ref = model(ids)
        before = weight_bytes(model)
        quantize_int8(model, compile=False)
        got = model(ids)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    # blocks' linear layers a quarter; the tied head gets its own int8 copy; embedding fp32
    assert weight_bytes(model) < 0.5 * before
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
