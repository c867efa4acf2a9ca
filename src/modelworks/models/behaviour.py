"""A behaviour model: a causal transformer over a user's event tokens, with a propensity head.

SASRec's shape (models/sasrec.py: learned positions, the pre-norm causal blocks of vit.py, tied
output embedding) over event tokens instead of items; a token joins what was touched (category
or item), the event name and the time-gap bucket since the previous event
(tasks/user_behaviour_data.Vocab). Notable choices:
- right-padded sequences ending in a cutoff token (gap from the last event to the cutoff), so the
  hidden state there has seen the whole history and how long ago it ended: the user embedding;
- next-event logits over the token vocabulary from the tied embedding (pretraining);
- the propensity head is a small MLP on the user embedding (one logit: the target event
  happens within the horizon).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from modelworks.models.registry import register
from modelworks.models.vit import Block


@dataclass
class BehaviourConfig:
    vocab_size: int = 0  # 0: from the data (tokens, 0 = padding)
    max_len: int = 128  # events read per user, the cutoff token included
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 2
    mlp_ratio: float = 2.0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")


class BehaviourModel(nn.Module):
    def __init__(self, cfg: BehaviourConfig) -> None:
        super().__init__()
        if cfg.vocab_size < 2:
            raise ValueError("vocab_size must be set before building the model")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, causal=True) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.propensity = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(), nn.Linear(cfg.d_model, 1)
        )
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def embed(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, T) tokens -> (B, T, d) input embeddings (what attributions differentiate)."""
        pos = torch.arange(seq.shape[1], device=seq.device)
        return self.tok_emb(seq) * math.sqrt(self.cfg.d_model) + self.pos_emb(pos)

    def hidden(self, seq: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        x = self.drop(self.embed(seq) if emb is None else emb)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    @staticmethod
    def last(h: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """The hidden state at each sequence's last token (the cutoff token)."""
        n = (seq > 0).sum(1).clamp(min=1) - 1
        return h[torch.arange(len(seq), device=seq.device), n]

    def forward(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(next-token logits (B, T, vocab), propensity logit (B,))."""
        h = self.hidden(seq)
        return h @ self.tok_emb.weight.T, self.propensity(self.last(h, seq)).squeeze(-1)

    def user_embedding(self, seq: torch.Tensor) -> torch.Tensor:
        return self.last(self.hidden(seq), seq)

    def attributions(self, seq: torch.Tensor) -> tuple[float, torch.Tensor]:
        """(propensity, gradient x input summed over features per position) for one (1, T)
        sequence: how much each event's embedding pushed the propensity logit."""
        seq = seq[:, : int((seq > 0).sum())]
        emb = self.embed(seq).detach().requires_grad_(True)
        logit = self.propensity(self.last(self.hidden(seq, emb), seq)).squeeze()
        (grad,) = torch.autograd.grad(logit, emb)
        return float(torch.sigmoid(logit)), (grad * emb).sum(-1)[0].detach().cpu().numpy()


@register("behaviour", BehaviourConfig)
def build_behaviour(cfg: BehaviourConfig) -> BehaviourModel:
    return BehaviourModel(cfg)
