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


@dataclass
class CacheSlots:
    """A batch whose rows sit at their own positions in their own KV-cache slots (the serving
    engine's continuous batching): row b's T tokens are at positions `pos[b]` and read and write
    cache slot `rows[b]`; `mask` (B, 1, T, S) lets each query see its own row's keys up to
    itself. Built by `GPT.forward(..., slots=..., starts=...)`."""

    rows: torch.Tensor  # (B,) cache slot of each row
    pos: torch.Tensor  # (B, T) absolute positions
    mask: torch.Tensor  # (B, 1, T, S) bool
    contiguous: bool  # rows are slots 0..B-1: cache views, no gather

    @classmethod
    def of(cls, slots: list[int], starts: list[int], T: int, device) -> CacheSlots:
        start = torch.tensor(starts, device=device)
        pos = start[:, None] + torch.arange(T, device=device)
        S = max(starts) + T
        mask = torch.arange(S, device=device)[None, None, None, :] <= pos[:, None, :, None]
        rows = torch.tensor(slots, device=device)
        return cls(rows, pos, mask, slots == list(range(len(slots))))


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        hd = cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_head * hd, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_head * hd, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_head * hd, bias=False)
        self.wo = nn.Linear(cfg.n_head * hd, cfg.d_model, bias=False)

    def _qkv(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        hd = self.cfg.head_dim
        # -1 heads, not cfg.n_head: under tensor parallelism each rank holds a slice of the heads
        q = self.wq(x).view(B, T, -1, hd).transpose(1, 2)
        k = self.wk(x).view(B, T, -1, hd).transpose(1, 2)
        v = self.wv(x).view(B, T, -1, hd).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(
        self, x, cos, sin, cache: KVCache | None, start_pos: int, slots: CacheSlots | None = None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        if slots is not None:
            return self._slotted(q, k, v, cache, slots)
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

    def _slotted(self, q, k, v, cache: KVCache, slots: CacheSlots) -> torch.Tensor:
        """Rows at their own positions, each in its own cache slot (see CacheSlots)."""
        B, _, T, _ = q.shape
        S = slots.mask.shape[-1]
        ck, cv = cache.k[self.layer], cache.v[self.layer]  # (slots, kv heads, context, head dim)
        ck[slots.rows[:, None], :, slots.pos] = k.transpose(1, 2)
        cv[slots.rows[:, None], :, slots.pos] = v.transpose(1, 2)
        if slots.contiguous:  # slots 0..B-1: a view, no gather
            k, v = ck[:B, :, :S], cv[:B, :, :S]
        else:
            k, v = ck[slots.rows, :, :S], cv[slots.rows, :, :S]
        if T == 1:  # a decode step
            y = grouped_attention(q, k, v, slots.mask)
        else:
            if k.shape[1] != q.shape[1]:
                rep = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=slots.mask)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))

    def attention_weights(self, x, cos, sin, *_) -> torch.Tensor:
        """(B, heads, T, T) causal attention probabilities for the inputs of an uncached
        forward (what explain/attention maps show)."""
        q, k, _ = self._qkv(x.float(), cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        T = q.shape[2]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        return scores.masked_fill(~causal, float("-inf")).softmax(-1)


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

    def forward(self, x, cos, sin, cache, start_pos, slots: CacheSlots | None = None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, start_pos, slots)
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
        *,
        slots: list[int] | None = None,
        starts: list[int] | None = None,
        hidden: bool = False,
    ) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, vocab); (B, 1, vocab) with `last_only` (generation
        needs no other position's logits, and the output projection is the widest matmul).

        The one forward of every user (training, the serving engine, embeddings, explain,
        export): `cache` + `start_pos` continue all rows at one position; `slots` + `starts`
        (with a cache) put row b at position starts[b] in cache slot slots[b] (continuous
        batching); `hidden` returns the final normed hidden states (B, T, d_model) instead of
        logits. Attention maps: each block's `attn.attention_weights`."""
        T = idx.shape[1]
        end = start_pos + T if starts is None else max(starts) + T
        if end > self.cfg.context_len:
            raise ValueError(
                f"sequence of {end} tokens exceeds the context of {self.cfg.context_len}"
            )
        x = self.tok_emb(idx)
        row_slots = None
        if starts is not None and not (slots == list(range(len(starts))) and len(set(starts)) == 1):
            row_slots = CacheSlots.of(slots or list(range(len(starts))), starts, T, idx.device)
            cos = self.rope_cos[row_slots.pos].unsqueeze(1)  # (B, 1, T, D)
            sin = self.rope_sin[row_slots.pos].unsqueeze(1)
        else:  # one position for every row (rows in slots 0..B-1): the plain cached path
            start_pos = start_pos if starts is None else starts[0]
            cos = self.rope_cos[start_pos : start_pos + T]
            sin = self.rope_sin[start_pos : start_pos + T]
        for block in self.blocks:
            x = block(x, cos, sin, cache, start_pos, row_slots)
        x = self.norm(x[:, -1:] if last_only else x)
        return x if hidden else self.lm_head(x)

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
