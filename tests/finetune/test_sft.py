"""Supervised examples (train/sft.py): loader batches are the packed rows cut after their last
trained target, resume where they left off, and padding or packing never changes an example's
loss."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from modelworks.models.gpt import GPT, GPTConfig
from modelworks.train.data import DataError
from modelworks.train.sft import (
    IGNORE,
    ExampleLoader,
    Rows,
    _plain_head,
    example_losses,
    masked_lm_loss,
    pack_rows,
    validation_loss,
)


def _examples(n=30, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        inp = [rng.randrange(1, 50) for _ in range(rng.randint(2, 14))]
        tgt = [t if rng.random() < 0.6 else IGNORE for t in inp[1:] + [rng.randrange(1, 50)]]
        tgt[-1] = IGNORE if rng.random() < 0.3 else tgt[-1]  # some end on an untrained target
        out.append((inp, tgt))
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, context_len=32, n_layer=1, n_head=2, d_model=32)).eval()


@pytest.mark.parametrize("packing", [True, False])
def test_loader_batches_are_trimmed_rows_and_resume_exactly(model, packing):
    examples = _examples()
    x, y = pack_rows(examples, 32, pad_id=0, packing=packing)
    loader = ExampleLoader(examples, 32, 0, batch_size=4, seed=3, packing=packing)
    assert len(loader.rows) == len(x) and loader.rows.trained == int((y != IGNORE).sum())
    for _ in range(len(x) // 4 + 2):  # past an epoch's end
        state = loader.state_dict()
        idx = torch.from_numpy(loader.sampler.next_indices())
        loader.load_state_dict(state)
        bx, by = loader.next_batch()
        width = bx.shape[1]
        assert torch.equal(bx, x[idx, :width]) and torch.equal(by, y[idx, :width])
        assert (y[idx, width:] == IGNORE).all()  # only untrained columns were cut
        with torch.no_grad():  # so the cut costs no loss
            full = masked_lm_loss(model, (x[idx], y[idx]))
            assert torch.allclose(masked_lm_loss(model, (bx, by)), full, atol=1e-5)
    with pytest.raises(DataError, match="fewer than one batch of 64; lower finetune.batch_size"):
        ExampleLoader(examples, 32, 0, batch_size=64, seed=3)


def test_per_example_losses_ignore_padding_and_neighbours(model):
    examples = _examples(12, seed=1)
    nats, counts, correct = example_losses(model, examples, "cpu", batch_size=5, pad_id=7)
    for (inp, tgt), n, c, k in zip(examples, nats, counts, correct, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([inp]))[0]
        t = torch.tensor(tgt)
        want = F.cross_entropy(logits, t, ignore_index=IGNORE, reduction="sum")
        assert n == pytest.approx(float(want), abs=1e-4) and c == int((t != IGNORE).sum())
        assert k == int(((logits.argmax(-1) == t) & (t != IGNORE)).sum())
    got = validation_loss(model, Rows(examples, 32, packing=False), 0, "cpu", 4)
    assert got["val_loss"] == pytest.approx(nats.sum() / counts.sum(), rel=1e-6)
    assert got["val_token_accuracy"] == pytest.approx(correct.sum() / counts.sum())


def test_examples_that_do_not_fit_a_row_are_refused():
    with pytest.raises(DataError, match="does not fit a row of seq_len=4"):
        Rows([([1, 2, 3, 4, 5], [2, 3, 4, 5, 6])], 4)
    with pytest.raises(DataError, match="same length"):
        Rows([([1, 2], [2])], 4)


@pytest.mark.parametrize("lora", [False, True])
def test_fused_output_loss_matches_the_logits_path(lora):
    """masked_lm_loss on a plain GPT goes through train/linear_ce.py (only trained positions,
    no logits tensor): the same loss and the same gradients, for a frozen base with adapters
    and for full training with the tied embedding, as cross-entropy over the full logits."""
    from modelworks.train.lora import apply_lora

    torch.manual_seed(1)
    m = GPT(GPTConfig(vocab_size=300, context_len=32, n_layer=2, n_head=2, d_model=32))
    if lora:
        apply_lora(m, 4, 8.0, 0.0, ["wq", "wv"])
    x = torch.randint(0, 300, (3, 20))
    y = torch.where(torch.rand(3, 20) < 0.6, torch.randint(0, 300, (3, 20)), IGNORE)
    assert _plain_head(m, x) is m.lm_head  # the fused path is the one taken
    fused = masked_lm_loss(m, (x, y))
    fused.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    logits = m(x).float().flatten(0, 1)
    plain = F.cross_entropy(logits, y.flatten(), ignore_index=IGNORE)
    plain.backward()
    assert torch.allclose(fused, plain, atol=1e-5)
    trained = {n for n, p in m.named_parameters() if p.grad is not None}
    assert set(grads) == trained and trained  # the same parameters get gradients
    assert ("tok_emb.weight" in trained) is not lora
    for n, p in m.named_parameters():
        if p.grad is not None:
            assert torch.allclose(grads[n], p.grad, atol=1e-5, rtol=1e-4), n


def test_fused_output_loss_is_refused_to_wrappers_and_hooks():
    """A hooked output layer (Opacus records activations that way) or a wrapped model must see
    its output layer called: the plain path, which the hook observes."""
    m = GPT(GPTConfig(vocab_size=50, context_len=16, n_layer=1, n_head=2, d_model=16))
    x = torch.zeros(1, 4, dtype=torch.long)
    assert _plain_head(m, x) is m.lm_head
    assert _plain_head(torch.nn.Sequential(m), x) is None
    seen = []
    handle = m.lm_head.register_forward_hook(lambda *a: seen.append(1))
    masked_lm_loss(m, (x, torch.ones(1, 4, dtype=torch.long)))
    handle.remove()
    assert seen == [1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _plain_head(m, x) is None
