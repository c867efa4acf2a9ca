"""Preference and RL losses for language models, on plain tensors: DPO and GRPO.

- `sequence_logps`: the summed log-probability of each row's trained tokens (targets -100
  elsewhere, train/sft.py's convention) and how many there are.
- `dpo_loss`: Direct Preference Optimization (Rafailov et al. 2023, eq. 7):
  -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), with conservative label smoothing
  (cDPO: eps * the flipped pair's loss) and the IPO variant (Azar et al. 2023:
  (h - 1/(2 beta))^2 on per-token mean log-probs, as TRL computes it).
- `group_advantages`, `grpo_token_loss`: GRPO (Shao et al. 2024, DeepSeekMath, eq. 3): rewards
  normalised within each prompt's group of G samples, the PPO-clipped ratio to the policy that
  sampled, and the k3 estimate of KL(pi || ref) = ref/pi - log(ref/pi) - 1 per token.
- `adapters_off(model)`: the LoRA model with its adapters switched off is the base model: the
  reference without a second copy of the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position, in float32 at least; 0 where the target is IGNORE."""
    mask = targets != IGNORE
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask


def sequence_logps(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """(sum of log p over each row's trained targets, their count), both (B,)."""
    per_token = token_logps(model(x), y)
    return per_token.sum(-1), (y != IGNORE).sum(-1)


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
):
    """(per-pair losses, chosen rewards, rejected rewards) from sequence log-probabilities
    (sums for sigmoid; per-token means for ipo). Rewards are beta * (policy - reference)."""
    h = (chosen - rejected) - (ref_chosen - ref_rejected)
    if loss_type == "sigmoid":
        losses = (
            -F.logsigmoid(beta * h) * (1 - label_smoothing)
            - F.logsigmoid(-beta * h) * label_smoothing
        )
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type={loss_type!r}: sigmoid or ipo")
    return losses, beta * (chosen - ref_chosen).detach(), beta * (rejected - ref_rejected).detach()


def group_advantages(rewards: torch.Tensor, group: int, eps: float = 1e-4) -> torch.Tensor:
    """(r - mean of its group) / (std of its group + eps); rows are prompt-major, `group` each.
    A group whose samples all score the same gets advantage 0: it teaches nothing."""
    r = rewards.view(-1, group)
    std = r.std(-1, keepdim=True) if group > 1 else torch.zeros_like(r[:, :1])
    return ((r - r.mean(-1, keepdim=True)) / (std + eps)).flatten()


def grpo_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    kl_coef: float,
):
    """(loss, mean k3 KL per token, share of tokens clipped): the GRPO objective's negation,
    averaged over each sequence's tokens and then over sequences (DeepSeekMath eq. 3)."""
    mask = mask.float()
    ratio = torch.exp(logps - old_logps)
    a = advantages.unsqueeze(-1)
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
    diff = ref_logps - logps
    kl = torch.exp(diff) - diff - 1  # k3: unbiased, always >= 0
    per_token = -(surrogate - kl_coef * kl)
    n = mask.sum(-1).clamp(min=1)
    loss = ((per_token * mask).sum(-1) / n).mean()
    total = mask.sum().clamp(min=1)
    with torch.no_grad():
        clipped = ((ratio - ratio.clamp(1 - clip_eps, 1 + clip_eps)).abs() > 0).float()
        return loss, float((kl * mask).sum() / total), float((clipped * mask).sum() / total)


@contextlib.contextmanager
def adapters_off(model: nn.Module) -> Iterator[bool]:
    """Within the block every LoRA adapter of `model` adds nothing (its scale is 0), so the
    model computes its base; yields whether it has adapters at all."""
    from modelworks.train.lora import LoRALinear

    lora = [m for m in model.modules() if isinstance(m, LoRALinear)]
    scales = [m.scale for m in lora]
    for m in lora:
        m.scale = 0.0
    try:
        yield bool(lora)
    finally:
        for m, s in zip(lora, scales, strict=True):
            m.scale = s


def has_adapters(model: nn.Module) -> bool:
    from modelworks.train.lora import LoRALinear

    return any(isinstance(m, LoRALinear) for m in model.modules())
