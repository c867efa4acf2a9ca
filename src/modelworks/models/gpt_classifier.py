"""A decoder-only (gpt.py, Llama-style) backbone with a classification head.

The body is exactly `GPT`'s (same parameter names, so a language model's weights load into it);
the language-model head is replaced by `head`, applied to the hidden state of each sequence's
last real token. Attention is causal, so with right padding that token has seen the whole text
and none of the padding: no attention mask is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modelworks.models.gpt import GPT, GPTConfig
from modelworks.models.registry import register


@dataclass
class GPTClassifierConfig(GPTConfig):
    n_classes: int = 2  # labels the head predicts


class GPTClassifier(GPT):
    def __init__(self, cfg: GPTClassifierConfig) -> None:
        super().__init__(cfg)
        del self.lm_head  # unused here; keeping it would tie a dead copy of the embedding
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)
        nn.init.normal_(self.head.weight, std=cfg.init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Token ids (B, T), right-padded, and a 1/0 mask (B, T) -> logits (B, n_classes)."""
        T = idx.shape[1]
        if self.cfg.context_len < T:
            raise ValueError(f"{T} tokens exceed the context of {self.cfg.context_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.tok_emb(idx)
        for block in self.blocks:
            x = block(x, cos, sin, None, 0)
        x = self.norm(x)
        if attention_mask is None:
            last = torch.full((idx.shape[0],), T - 1, device=idx.device)
        else:
            last = (attention_mask.sum(1) - 1).clamp(min=0)
        return self.head(x[torch.arange(idx.shape[0], device=idx.device), last])


@register("gpt_classifier", GPTClassifierConfig)
def build_gpt_classifier(cfg: GPTClassifierConfig) -> GPTClassifier:
    return GPTClassifier(cfg)
