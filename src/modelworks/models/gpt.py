"""A Llama-style decoder-only transformer.

Notable choices (as in Llama 2/3 and nanochat):
- pre-norm RMSNorm, no biases anywhere, SwiGLU feed-forward;
- rotary position embeddings (RoPE) in Hugging Face's rotate-half layout, so Llama weights map 1:1;
- grouped-query attention (`n_kv_head < n_head`), computed with `scaled_dot_product_attention`
  (flash/memory-efficient kernels on GPU);
- an optional preallocated KV cache: `forward(idx, cache=cache, start_pos=p)` writes keys/values
  for positions p.. and attends over everything cached so far;
- tied input/output embeddings by default (small models spend most parameters on the vocabulary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modelworks.models.registry import register


@dataclass
class GPTConfig:
    vocab_size: int = 0  # 0: taken from the tokenizer at pretrain time
    context_len: int = 0  # longest sequence (RoPE table); 0: taken from pretrain.seq_len
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 2  # < n_head: grouped-query attention; == n_head: plain multi-head
    d_model: int = 128
    ffn_hidden: int = 0  # 0: 8/3 * d_model rounded up to a multiple of 32 (Llama's rule)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError("head size d_model/n_head must be even for RoPE")
        if self.ffn_hidden == 0:
            self.ffn_hidden = 32 * math.ceil(8 * self.d_model / 3 / 32)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused op
        # normalise in float32 whatever the autocast dtype: the mean of squares overflows in fp16
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_tables(cfg: GPTConfig, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
    angles = torch.outer(torch.arange(length).float(), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # rotate-half layout: (T, head_dim)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, D); cos/sin: (T, D)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).type_as(x)


def grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of one query position per row, q (B, H, 1, D), over keys/values with H or
    fewer (grouped) heads, k/v (B, KV, S, D); `mask` (B, 1, 1, S) or None. The H / KV query heads
    that share a key head become that head's rows of queries, so grouped keys are never
    repeated (the same numbers as repeating them)."""
    B, H, _, D = q.shape
    y = F.scaled_dot_product_attention(q.reshape(B, k.shape[1], H // k.shape[1], D), k, v, mask)
    return y.reshape(B, H, 1, D)


class KVCache:
    """Preallocated keys/values for every layer: (layers, B, n_kv_head, max_len, head_dim)."""

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int, device, dtype) -> None:
        shape = (cfg.n_layer, batch, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        hd = cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_head * hd, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_head * hd, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_head * hd, bias=False)
        self.wo = nn.Linear(cfg.n_head * hd, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None, start_pos: int) -> torch.Tensor:
        B, T, _ = x.shape
        cfg = self.cfg
        # -1 heads, not cfg.n_head: under tensor parallelism each rank holds a slice of the heads
        q = self.wq(x).view(B, T, -1, cfg.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, -1, cfg.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, -1, cfg.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            end = start_pos + T
            cache.k[self.layer, :B, :, start_pos:end] = k
            cache.v[self.layer, :B, :, start_pos:end] = v
            k, v = cache.k[self.layer, :B, :, :end], cache.v[self.layer, :B, :, :end]
        S = k.shape[2]
        if T == 1:  # one new token sees every key: no mask, and no repeat for grouped heads
            y = grouped_attention(q, k, v)
            return self.wo(y.transpose(1, 2).reshape(B, T, -1))
        if k.shape[1] != q.shape[1]:
            # explicit repeat rather than SDPA's enable_gqa: it takes every backend and torch>=2.6
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if S == T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # a chunk appended after cached positions: query i sees keys <= start_pos + i
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.w_gate = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.w_up = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.w_down = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin, cache, start_pos):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, start_pos)
        return x + self.mlp(self.mlp_norm(x))


@register("gpt", GPTConfig)
class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0 or cfg.context_len <= 0:
            raise ValueError("GPTConfig needs vocab_size and context_len set (> 0)")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        cos, sin = rope_tables(cfg, cfg.context_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)  # norm gains
            elif name.endswith(("wo.weight", "w_down.weight")):
                # GPT-2's scaled init: keeps the residual stream's variance flat with depth
                nn.init.normal_(p, std=std / math.sqrt(2 * self.cfg.n_layer))
            else:
                nn.init.normal_(p, std=std)

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        start_pos: int = 0,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, vocab); (B, 1, vocab) with `last_only` (generation
        needs no other position's logits, and the output projection is the widest matmul)."""
        T = idx.shape[1]
        if start_pos + T > self.cfg.context_len:
            raise ValueError(
                f"sequence of {start_pos + T} tokens exceeds the context of {self.cfg.context_len}"
            )
        cos = self.rope_cos[start_pos : start_pos + T]
        sin = self.rope_sin[start_pos : start_pos + T]
        x = self.tok_emb(idx)
        for block in self.blocks:
            x = block(x, cos, sin, cache, start_pos)
        return self.lm_head(self.norm(x[:, -1:] if last_only else x))

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        p = self.tok_emb.weight
        return KVCache(self.cfg, batch, max_len or self.cfg.context_len, p.device, p.dtype)

    def estimate_flops(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6 per parameter-multiply, plus attention
        scores and values over `seq_len` (PaLM appendix B, as nanoGPT/nanochat count it)."""
        c = self.cfg
        # the embedding lookup costs nothing; the output projection is a full matmul
        matmul_params = self.num_params(non_embedding=True)
        if c.tie_embeddings:
            matmul_params += self.lm_head.weight.numel()
        return 6 * matmul_params + 12 * c.n_layer * c.n_head * c.head_dim * seq_len

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_emb.weight.numel() if non_embedding else n
