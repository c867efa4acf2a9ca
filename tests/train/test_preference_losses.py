"""DPO and GRPO losses (train/preference.py) against references written here from the papers'
formulas, on fixed logits: values and gradients; the LoRA reference with adapters off."""

from __future__ import annotations

import math

import pytest
import torch

from modelworks.models.gpt import GPT, GPTConfig
from modelworks.train.lora import apply_lora
from modelworks.train.preference import (
    IGNORE,
    adapters_off,
    dpo_loss,
    group_advantages,
    grpo_token_loss,
    token_logps,
)


def _fixed_logits():
    g = torch.Generator().manual_seed(0)
    # 2 pairs: rows 0-1 chosen, 2-3 rejected; 5 positions, vocab 7
    logits = torch.randn(4, 5, 7, generator=g, dtype=torch.float64)
    ref_logits = torch.randn(4, 5, 7, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 7, (4, 5), generator=g)
    targets[:, :2] = IGNORE  # the prompt
    targets[1, 4] = IGNORE  # a shorter reply
    return logits, ref_logits, targets


def _paper_dpo(logits, ref_logits, targets, beta, eps=0.0, ipo=False):
    """Rafailov et al. eq. 7 (and cDPO, IPO) written out term by term, in plain loops."""
    losses = []
    for pair in range(2):
        lp = {}
        for name, lg in (("pi", logits), ("ref", ref_logits)):
            for side, row in (("w", pair), ("l", pair + 2)):
                total, n = 0.0, 0
                for t in range(targets.shape[1]):
                    y = int(targets[row, t])
                    if y == IGNORE:
                        continue
                    total = total + torch.log(torch.softmax(lg[row, t], -1)[y])
                    n += 1
                lp[name, side] = total / n if ipo else total
        h = (lp["pi", "w"] - lp["ref", "w"]) - (lp["pi", "l"] - lp["ref", "l"])
        if ipo:
            losses.append((h - 1 / (2 * beta)) ** 2)
        else:
            sig = 1 / (1 + torch.exp(-beta * h))
            losses.append(-(1 - eps) * torch.log(sig) - eps * torch.log(1 - sig))
    return torch.stack(losses).mean()


def _ours(logits, ref_logits, targets, beta, eps=0.0, kind="sigmoid"):
    lp, ref = token_logps(logits, targets), token_logps(ref_logits, targets)
    n = (targets != IGNORE).sum(-1)
    s, r = lp.sum(-1), ref.sum(-1)
    if kind == "ipo":
        s, r = s / n, r / n
    losses, _, _ = dpo_loss(s[:2], s[2:], r[:2], r[2:], beta, eps, kind)
    return losses.mean()


@pytest.mark.parametrize(
    ("beta", "eps", "kind"), [(0.1, 0.0, "sigmoid"), (0.5, 0.2, "sigmoid"), (0.1, 0.0, "ipo")]
)
def test_dpo_loss_and_gradients_equal_the_papers_formula(beta, eps, kind):
    logits, ref_logits, targets = _fixed_logits()
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    ours = _ours(a, ref_logits, targets, beta, eps, kind)
    paper = _paper_dpo(b, ref_logits, targets, beta, eps, ipo=kind == "ipo")
    ours.backward()
    paper.backward()
    assert abs(ours.item() - paper.item()) < 1e-12
    assert torch.allclose(a.grad, b.grad, atol=1e-12)
    assert a.grad[:, :2].abs().max() == 0  # nothing flows to the prompt's positions
    if kind == "sigmoid" and eps == 0:  # the loss is log 2 where policy == reference
        same = _ours(ref_logits, ref_logits, targets, beta)
        assert abs(float(same) - math.log(2)) < 1e-12


def test_dpo_rewards_and_accuracy_signs():
    chosen, rejected = torch.tensor([-5.0, -9.0]), torch.tensor([-7.0, -6.0])
    ref = torch.tensor([-6.0, -6.0])
    losses, rc, rr = dpo_loss(chosen, rejected, ref, ref, beta=0.5)
    assert rc.tolist() == [0.5, -1.5] and rr.tolist() == [-0.5, 0.0]
    assert losses[0] < math.log(2) < losses[1]  # a pair ranked right costs less than one wrong


def test_group_advantages_normalise_within_each_group():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0])
    a = group_advantages(r, 4)
    g = r[:4]
    expect = (g - g.mean()) / (g.std() + 1e-4)
    assert torch.allclose(a[:4], expect)
    assert a[4:].abs().max() == 0  # a group that all scored the same teaches nothing


def test_grpo_loss_matches_deepseekmath_formula():
    g = torch.Generator().manual_seed(1)
    logps = (torch.randn(4, 6, generator=g, dtype=torch.float64) - 2).requires_grad_(True)
    old = logps.detach() + 0.3 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    ref = logps.detach() + 0.5 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[0, 4:] = False
    loss, kl, _ = grpo_token_loss(logps, old, ref, adv, mask, 0.2, 0.04)
    # eq. 3: 1/G sum_i 1/|o_i| sum_t [min(ratio A, clip(ratio) A) - beta KL_k3], negated
    total = 0.0
    for i in range(4):
        terms = []
        for t in range(6):
            if not mask[i, t]:
                continue
            ratio = torch.exp(logps[i, t] - old[i, t])
            clipped = torch.clamp(ratio, 0.8, 1.2)
            surr = torch.minimum(ratio * adv[i], clipped * adv[i])
            k3 = torch.exp(ref[i, t] - logps[i, t]) - (ref[i, t] - logps[i, t]) - 1
            terms.append(surr - 0.04 * k3)
        total = total + torch.stack(terms).mean()
    paper = -total / 4
    a = torch.autograd.grad(loss, logps, retain_graph=True)[0]
    b = torch.autograd.grad(paper, logps)[0]
    assert abs(loss.item() - paper.item()) < 1e-12
    assert torch.allclose(a, b, atol=1e-12)
    assert kl > 0


def test_lora_with_adapters_off_is_the_base_model():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, context_len=16, n_layer=2, n_head=2, n_kv_head=1,
                          d_model=16))  # fmt: skip
    x = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        before = model(x)
    apply_lora(model, 4, 8.0, 0.0, ["wq", "wv"])
    for name, p in model.named_parameters():
        if "lora_b" in name:
            torch.nn.init.normal_(p, std=0.5)  # as if trained: the adapters change the output
    with torch.no_grad():
        tuned = model(x)
        with adapters_off(model) as had:
            off = model(x)
        again = model(x)
    assert had
    assert (tuned - before).abs().max() > 1e-3
    assert torch.equal(off, before)
    assert torch.equal(again, tuned)  # the adapters come back after the block
