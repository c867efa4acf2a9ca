"""SASRec: a self-attentive sequential recommender (Kang & McAuley, 2018).

A causal transformer over a user's item history; the hidden state at position t scores every
item as the next one (position t+1). Notable choices:
- item ids start at 1; 0 is padding. Histories are right-padded, so with the causal mask a real
  position never sees padding and no extra key mask is needed; the next-item prediction for a
  history of length n is read at position n-1;
- learned absolute positions counted from the oldest kept item (histories are cut to `max_len`,
  keeping the most recent);
- pre-norm blocks (LayerNorm, GELU MLP) through `scaled_dot_product_attention(is_causal=True)`
  and a final LayerNorm;
- the output layer is the item embedding itself (scores = h . e_item), as in SASRec: one table,
  and a sampled loss touches only the rows it samples;
- `forward(seq, candidates)` scores the given candidates per position, or every item when
  `candidates` is None, so DDP sees one forward whatever the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from modelworks.models.registry import register
from modelworks.models.vit import Block  # the same pre-norm block, with a causal mask


@dataclass
class SASRecConfig:
    n_items: int = 0  # 0: from the data; item ids are 1..n_items, 0 is padding
    max_len: int = 50  # most recent items of a history the model reads
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 2
    mlp_ratio: float = 2.0  # MLP hidden width = mlp_ratio * d_model
    dropout: float = 0.2  # on embeddings, attention weights and after each residual branch

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.max_len < 1 or self.n_layer < 1 or self.mlp_ratio <= 0:
            raise ValueError("max_len and n_layer must be >= 1 and mlp_ratio > 0")


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        if cfg.n_items < 1:
            raise ValueError("n_items must be set (>= 1) before building the model")
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, causal=True) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, T) item ids, right-padded with 0 -> (B, T, d_model)."""
        length = seq.shape[1]
        if length > self.cfg.max_len:
            raise ValueError(f"history of {length} items exceeds max_len={self.cfg.max_len}")
        pos = torch.arange(length, device=seq.device)
        x = self.item_emb(seq) * math.sqrt(self.cfg.d_model) + self.pos_emb(pos)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, seq: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, T, C) of candidate ids: every item when None (C = n_items + 1, column 0
        is padding), one shared set when (C,), a set per position when (B, T, C)."""
        h = self.hidden(seq)
        if candidates is None:
            return h @ self.item_emb.weight.T
        if candidates.dim() == 1:
            return h @ self.item_emb(candidates).T
        return torch.einsum("btd,btcd->btc", h, self.item_emb(candidates))

    @torch.no_grad()
    def next_item_scores(self, histories: list, batch_size: int = 256) -> torch.Tensor:
        """(users, n_items + 1) float32 CPU scores of the next item after each history (item-id
        arrays, oldest first; the last max_len items count)."""
        device = self.item_emb.weight.device
        out = []
        for start in range(0, len(histories), batch_size):
            chunk = [h[-self.cfg.max_len :] for h in histories[start : start + batch_size]]
            lengths = torch.tensor([len(h) for h in chunk])
            seq = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.long)
            for i, h in enumerate(chunk):
                seq[i, : len(h)] = torch.as_tensor(h)
            hidden = self.hidden(seq.to(device))
            last = hidden[torch.arange(len(chunk)), lengths.to(device) - 1]
            out.append((last @ self.item_emb.weight.T).float().cpu())
        return torch.cat(out)


@register("sasrec", SASRecConfig)
def build_sasrec(cfg: SASRecConfig) -> SASRec:
    return SASRec(cfg)
