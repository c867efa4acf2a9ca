"""oneDNN-packed linear layers (serve/packing.py): the same numbers as nn.Linear, the original
parameters untouched, no stale weights after training, and the engine generating the same text."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from torch import nn

from modelworks.serve.engine import Engine, SamplingParams
from modelworks.serve.packing import PackedLinear, can_pack, pack_linears
from tests.serve.test_serve import make_gpt, make_tokenizer

pytestmark = pytest.mark.skipif(not can_pack(), reason="this torch build has no oneDNN")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 48), (5, 48), (2, 3, 48)])
def test_packed_linear_equals_linear(bias, shape):
    torch.manual_seed(0)
    lin = nn.Linear(48, 80, bias=bias)
    packed = PackedLinear(lin)
    x = torch.randn(shape)
    with torch.no_grad():
        want, got = lin(x), packed(x)
    assert packed._packed is not None  # the oneDNN path ran
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gradients_use_the_original_weight_and_updates_repack():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    packed = PackedLinear(lin)
    assert packed.weight is lin.weight and packed.bias is lin.bias
    x = torch.randn(4, 32)
    packed(x).sum().backward()  # grad mode: plain F.linear, never the packed copy
    assert packed._packed is None and lin.weight.grad is not None
    with torch.no_grad():
        before = packed(x)
    torch.optim.SGD(lin.parameters(), lr=0.5).step()  # an in-place update
    with torch.no_grad():
        after, want = packed(x), nn.functional.linear(x, lin.weight, lin.bias)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, want, rtol=1e-5, atol=1e-5)


def test_deepcopy_and_state_dict_are_those_of_a_linear():
    torch.manual_seed(0)
    model = make_gpt(300)
    keys = list(model.state_dict())
    assert pack_linears(model, min_numel=0) == 15  # 7 per layer x 2 layers + lm_head
    assert pack_linears(model, min_numel=0) == 0  # already packed
    assert list(model.state_dict()) == keys
    assert isinstance(model.lm_head, PackedLinear)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    clone = copy.deepcopy(model)
    assert type(clone.lm_head) is nn.Linear
    assert torch.equal(clone.lm_head.weight, model.lm_head.weight)
    assert clone.lm_head.weight.data_ptr() != model.lm_head.weight.data_ptr()


def test_min_numel_leaves_small_layers_alone():
    model = make_gpt(300)  # d_model 64: every weight is far below the default threshold
    assert pack_linears(model) == 0
    assert pack_linears(model, min_numel=64 * 300) == 1  # only lm_head (300 x 64)


def test_small_layers_take_the_packed_path_only_for_many_rows():
    if not can_pack():
        pytest.skip("this torch build has no oneDNN packed linear")
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    small = PackedLinear(lin, min_rows=8)
    with torch.no_grad():
        few = torch.randn(2, 1, 64)
        torch.testing.assert_close(small(few), nn.functional.linear(few, lin.weight, lin.bias))
        assert small._packed is None  # 2 rows: plain F.linear
        many = torch.randn(16, 1, 64)
        got = small(many)
    assert small._packed is not None
    torch.testing.assert_close(got, nn.functional.linear(many, lin.weight, lin.bias))
    model = make_gpt(300)
    n = pack_linears(model, min_numel=64 * 300, small_numel=64 * 64, small_min_rows=8)
    rows = sorted({m.min_rows for m in model.modules() if isinstance(m, PackedLinear)})
    assert n > 1 and rows == [1, 8] and model.lm_head.min_rows == 1


def _generate_batch(engine: Engine, prompts: list[list[int]], n: int) -> list[list[int]]:
    outs: list[list[int]] = [[] for _ in prompts]
    left = threading.Semaphore(0)

    def on(i):
        def cb(ev):
            if ev.token_id is not None:
                outs[i].append(ev.token_id)
            if ev.finish_reason:
                left.release()

        return cb

    for i, ids in enumerate(prompts):  # different lengths: rows at different positions
        engine.submit(ids, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True), on(i))
    for _ in prompts:
        assert left.acquire(timeout=60)
    return outs


def test_packed_engine_generates_what_the_unpacked_one_does():
    tok = make_tokenizer()
    vocab = tok.get_vocab_size()
    plain = Engine(make_gpt(vocab), tok, pack_weights=False)
    packed_model = make_gpt(vocab)
    assert pack_linears(packed_model, min_numel=0) == 15
    packed = Engine(packed_model, tok, pack_weights=False)
    prompts = [plain.encode(p) for p in ("def", "Return the list of", "The default value is")]
    try:
        assert _generate_batch(packed, prompts, 24) == _generate_batch(plain, prompts, 24)
        one = packed.generate(prompts[1], 24, temperature=0).token_ids
        assert one == plain.generate(prompts[1], 24, temperature=0).token_ids
    finally:
        plain.close()
        packed.close()
