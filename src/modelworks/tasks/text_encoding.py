"""Texts to a text classifier's inputs and probabilities: the one path that evaluate,
`/v1/classify`, `/v1/explain`, the report's sample attributions and the exports share, so an
explanation or an exported model sees exactly the tokens, mask and length cut that classification
does. The tokenizer's own special tokens ([CLS]/[SEP] for BERT-family ones) are kept; its fixed
padding, if it has one (MiniLM's tokenizer.json pads to 128), is not used: a batch is right-padded
to its longest text and masked.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from modelworks.artifacts import final_model_dir


def encode(
    tok: Tokenizer, texts: list[str], max_len: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Token ids and a 1/0 mask (N, L), right-padded to the longest (<= max_len); and how many
    texts were longer than max_len and were truncated."""
    tok = Tokenizer.from_str(tok.to_str())  # a copy: leave the caller's settings alone
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    encs = tok.encode_batch(texts)
    n_truncated = sum(1 for e in encs if e.overflowing)
    width = max((len(e.ids) for e in encs), default=1)
    ids = torch.zeros(len(encs), width, dtype=torch.long)
    mask = torch.zeros(len(encs), width, dtype=torch.long)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
        mask[i, : len(e.ids)] = 1
    return ids, mask, n_truncated


def _trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns no row of this batch uses (short sentences train much faster)."""
    width = max(1, int(mask.sum(1).max()))
    return ids[:, :width], mask[:, :width]


@torch.no_grad()
def predict(model: nn.Module, ids, mask, device, batch_size: int = 256) -> torch.Tensor:
    """Logits (N, n_classes), float32 on the CPU."""
    outs = []
    for i in range(0, len(ids), batch_size):
        b_ids, b_mask = _trim(ids[i : i + batch_size], mask[i : i + batch_size])
        outs.append(model(b_ids.to(device), b_mask.to(device)).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0)


def classify_texts(
    model: nn.Module, tok: Tokenizer, texts: list[str], max_len: int, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The one way texts are classified (evaluate, /v1/classify, and /v1/explain and the report's
    samples, which explain exactly this input): (probabilities (N, n_classes), the ids and mask
    the model saw, texts truncated to max_len)."""
    ids, mask, n_truncated = encode(tok, texts, max_len)
    probs = torch.softmax(predict(model, ids, mask, device), dim=-1)
    return probs, ids, mask, n_truncated


def max_tokens(run_dir: Path, model: nn.Module) -> int:
    """How many tokens of a text the run's final model classifies (/v1/classify, /v1/explain,
    exports): the seq_len it was trained with, at most its context."""
    import yaml

    stage = final_model_dir(run_dir).name
    run_cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    seq_len = (run_cfg.get(stage) or {}).get("seq_len") or model.cfg.context_len
    return min(int(seq_len), model.cfg.context_len)
