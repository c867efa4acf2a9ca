"""Supervised examples: token ids with -100-masked targets -> padded or packed rows, a resumable
loader, the masked loss, per-example losses.

An example is (inputs, targets), two equal-length lists of token ids: targets[i] is the token
that follows inputs[i], or IGNORE (-100, cross-entropy's ignore_index) where nothing is trained
(a prompt, a user turn). Each task encodes its own examples (tasks/chat.py renders
conversations with a template, tasks/translation.py writes prompt + target); this module turns
them into batches and scores them the same way for every task.

Rows: with packing, consecutive examples share a row of `seq_len` while they fit, with plain
causal attention (our GPT takes no attention mask: an example sees the ones before it in its
row, as pretraining documents did, and a target never belongs to another example); without, one
example per row. Every example lands whole in exactly one row. Padding has target IGNORE, and a
batch is cut after its last trained position: the columns after it change no trained logit of a
causal model, so padding costs compute but never loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelworks.train.data import DataError, EpochSampler, _Sampled
from modelworks.train.linear_ce import linear_cross_entropy

IGNORE = -100  # F.cross_entropy's ignore_index: positions that are not trained

Example = tuple[Sequence[int], Sequence[int]]  # (input ids, target ids), the same length


class Rows:
    """Examples laid out in rows, held flat (one tensor of inputs, one of targets, and each
    row's [start, end) in them); a batch of rows is padded when it is asked for."""

    def __init__(self, examples: Sequence[Example], seq_len: int, packing: bool = True):
        bounds: list[list[int]] = []
        used, pos = seq_len, 0  # `used` = seq_len forces a first row
        for inp, tgt in examples:
            if len(inp) != len(tgt) or len(inp) > seq_len:
                raise DataError(
                    f"an example of {len(inp)} inputs and {len(tgt)} targets does not fit a row "
                    f"of seq_len={seq_len} (inputs and targets must have the same length)"
                )
            if not packing or used + len(inp) > seq_len:
                bounds.append([pos, pos])
                used = 0
            bounds[-1][1] += len(inp)
            used, pos = used + len(inp), pos + len(inp)
        self.seq_len = seq_len
        self.bounds = np.asarray(bounds, dtype=np.int64).reshape(-1, 2)
        self.inputs = torch.tensor([t for inp, _ in examples for t in inp], dtype=torch.long)
        self.targets = torch.tensor([t for _, tgt in examples for t in tgt], dtype=torch.long)
        self.trained = int((self.targets != IGNORE).sum())  # targets with a loss, all rows

    def __len__(self) -> int:
        return len(self.bounds)

    def batch(self, idx, pad_id: int, width: int | None = None):
        """(inputs, targets) of rows `idx`, padded to `width`; by default cut after the batch's
        last trained position."""
        spans = self.bounds[np.asarray(idx, dtype=np.int64)]
        full = int((spans[:, 1] - spans[:, 0]).max(initial=1)) if width is None else width
        x = torch.full((len(spans), full), pad_id, dtype=torch.long)
        y = torch.full((len(spans), full), IGNORE, dtype=torch.long)
        for r, (start, end) in enumerate(spans.tolist()):
            x[r, : end - start] = self.inputs[start:end]
            y[r, : end - start] = self.targets[start:end]
        return (x, y) if width is not None else trim(x, y)


def trim(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the columns after the last one with a trained target (at least one column)."""
    used = (y != IGNORE).any(0).nonzero()
    width = int(used.max()) + 1 if len(used) else 1
    return x[:, :width], y[:, :width]


def pack_rows(examples: Sequence[Example], seq_len: int, pad_id: int, packing: bool = True):
    """All examples as rows (N, seq_len) of inputs and targets: packed greedily in the given
    order when `packing`, else one per row; padding has target -100."""
    rows = Rows(examples, seq_len, packing)
    return rows.batch(range(len(rows)), pad_id, seq_len)


class ExampleLoader(_Sampled):
    """(inputs, targets) batches of a shuffled epoch over rows of examples (packed or one per
    row), cut after the batch's last trained position; its position is its sampler's."""

    def __init__(
        self,
        examples: Sequence[Example],
        seq_len: int,
        pad_id: int,
        batch_size: int,
        seed: int,
        packing: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.rows, self.pad_id = Rows(examples, seq_len, packing), pad_id
        if len(self.rows) < batch_size * world:
            raise DataError(
                f"{len(examples)} training examples make {len(self.rows)} rows, fewer than one "
                f"batch of {batch_size * world}; lower finetune.batch_size or add data"
            )
        self.sampler = EpochSampler(len(self.rows), batch_size, seed, rank, world)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rows.batch(self.sampler.next_indices(), self.pad_id)


def masked_lm_loss(model: nn.Module, batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the trained targets, in float32.

    On our GPT, unwrapped and without autocast, only the trained positions reach the output
    layer, through train/linear_ce.py (no tokens x vocab logits in memory); any other model
    (a wrapper, a sharded or hooked output layer, Opacus) takes the plain logits path."""
    x, y = batch
    count = (y != IGNORE).sum().clamp(min=1)
    head = _plain_head(model, x)
    if head is not None:
        keep = y != IGNORE
        loss = linear_cross_entropy(model(x, hidden=True)[keep], head.weight, y[keep])
        return loss / count
    logits = model(x).float().flatten(0, 1)
    loss = F.cross_entropy(logits, y.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss / count


def _plain_head(model: nn.Module, x: torch.Tensor) -> nn.Linear | None:
    """The GPT's output layer when the fused loss may bypass it: a plain bias-free nn.Linear
    with no hooks, on a plain (not wrapped, not sharded) GPT, outside autocast."""
    from modelworks.models.gpt import GPT

    head = getattr(model, "lm_head", None)
    if (
        type(model) is not GPT
        or type(head) is not nn.Linear
        or head.bias is not None
        or head._forward_hooks
        or head._forward_pre_hooks
        or type(head.weight.data) is not torch.Tensor
        or torch.is_autocast_enabled(x.device.type)
    ):
        return None
    return head


@torch.no_grad()
def row_losses(model: nn.Module, rows: Rows, pad_id: int, device, batch_size: int = 16):
    """Per row, as numpy arrays: the summed nats of its trained targets, their count, and how
    many of them are the model's argmax."""
    nats, counts, correct = [], [], []
    for i in range(0, len(rows), batch_size):
        x, y = rows.batch(range(i, min(i + batch_size, len(rows))), pad_id)
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        ce = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=IGNORE, reduction="none")
        mask = y != IGNORE
        nats += ce.sum(1).tolist()
        counts += mask.sum(1).tolist()
        correct += ((logits.argmax(-1) == y) & mask).sum(1).tolist()
    return np.asarray(nats), np.asarray(counts), np.asarray(correct)


def example_losses(model: nn.Module, examples, device, batch_size: int = 16, pad_id: int = 0):
    """row_losses of each example on its own (unpacked): (nats, counts, correct) per example."""
    seq_len = max((len(inp) for inp, _ in examples), default=1)
    return row_losses(model, Rows(examples, seq_len, False), pad_id, device, batch_size)


def validation_loss(model: nn.Module, rows: Rows, pad_id: int, device, batch_size: int):
    """{"val_loss": nats per trained target, "val_token_accuracy": share predicted by argmax}."""
    nats, counts, correct = row_losses(model, rows, pad_id, device, batch_size)
    n = max(int(counts.sum()), 1)
    return {"val_loss": float(nats.sum()) / n, "val_token_accuracy": float(correct.sum()) / n}
