"""Batches for training and evaluation.

Training loaders walk an epoch-seeded permutation of items (token windows or examples), so every
item is seen once per epoch. They are rank-aware (each rank takes its slice of every global batch)
and their position is a small dict that a checkpoint stores, so a resumed run sees exactly the
batches it would have seen.
"""

from __future__ import annotations

import numpy as np
import torch

from modelworks.errors import DataError


class EpochSampler:
    """Indices of the next micro-batch for this rank; state = (epoch, index)."""

    def __init__(self, n_items: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch, self.index = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n_items)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation()

    def next_indices(self) -> np.ndarray:
        global_batch = self.batch_size * self.world
        if self.index + global_batch > self.n_items:  # drop the ragged tail, start a new epoch
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation()
        start = self.index + self.rank * self.batch_size
        self.index += global_batch
        return self._order[start : start + self.batch_size]


class _Sampled:
    """A loader whose whole position is its sampler's."""

    sampler: EpochSampler

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


class WindowLoader(_Sampled):
    """Language modelling: (inputs, targets) from non-overlapping windows of a token stream."""

    def __init__(
        self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, rank=0, world=1
    ) -> None:
        n_windows = (len(tokens) - 1) // seq_len
        if n_windows < batch_size * world:
            raise DataError(
                f"{len(tokens)} training tokens make only {n_windows} windows of "
                f"seq_len={seq_len}, fewer than one batch of {batch_size * world}; "
                "lower pretrain.seq_len or pretrain.batch_size, or add data"
            )
        self.tokens = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
        self.seq_len = seq_len
        self.sampler = EpochSampler(n_windows, batch_size, seed, rank, world)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = torch.from_numpy(self.sampler.next_indices() * self.seq_len)
        chunk = self.tokens[offsets[:, None] + torch.arange(self.seq_len + 1)]
        return chunk[:, :-1], chunk[:, 1:]


class ExampleLoader(_Sampled):
    """Supervised examples: (x[i], y[i]) for a shuffled batch of indices."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, rank=0, world=1
    ) -> None:
        if len(x) < batch_size * world:
            raise DataError(
                f"{len(x)} training examples are fewer than one batch of {batch_size * world}; "
                "lower pretrain.batch_size or add data"
            )
        self.x, self.y = x, y
        self.sampler = EpochSampler(len(x), batch_size, seed, rank, world)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(self.sampler.next_indices())
        return self.x[idx], self.y[idx]


def sequential_batches(tokens: np.ndarray, batch_size: int, seq_len: int, max_batches: int = 0):
    """Non-overlapping windows in order, for evaluation: every target token counted once."""
    data = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    n_windows = (len(data) - 1) // seq_len
    if n_windows == 0:
        raise DataError(f"{len(data)} tokens are fewer than one window of seq_len={seq_len}")
    starts = torch.arange(n_windows) * seq_len
    for n, i in enumerate(range(0, n_windows, batch_size), 1):
        rows = starts[i : i + batch_size, None] + torch.arange(seq_len + 1)
        chunk = data[rows]
        yield chunk[:, :-1], chunk[:, 1:]
        if max_batches and n >= max_batches:
            return
