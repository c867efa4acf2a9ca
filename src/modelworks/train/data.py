"""Batches of token windows for language modelling.

The loader walks an epoch-seeded permutation of non-overlapping windows, so every token is seen
once per epoch. It is rank-aware (each rank takes its slice of every global batch) and its position
is a small dict that a checkpoint stores, so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import numpy as np
import torch

from modelworks.errors import ModelworksError


class DataError(ModelworksError, ValueError):
    pass


class WindowLoader:
    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.n_windows = (len(tokens) - 1) // seq_len
        if self.n_windows < batch_size * world_size:
            raise DataError(
                f"{len(tokens)} training tokens make only {self.n_windows} windows of "
                f"seq_len={seq_len}, fewer than one batch of {batch_size * world_size}; "
                "lower pretrain.seq_len or pretrain.batch_size, or add data"
            )
        self.tokens = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.index = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n_windows)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        global_batch = self.batch_size * self.world_size
        if self.index + global_batch > self.n_windows:  # drop the ragged tail, start a new epoch
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation()
        start = self.index + self.rank * self.batch_size
        picks = self._order[start : start + self.batch_size]
        self.index += global_batch
        offsets = torch.from_numpy(picks * self.seq_len)
        rows = offsets[:, None] + torch.arange(self.seq_len + 1)
        chunk = self.tokens[rows]
        return chunk[:, :-1], chunk[:, 1:]


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
