"""Token shards: flat `.bin` token arrays + `.idx` document offsets + `meta.json`.

<dir>/train_000.bin   uint16 (vocab <= 65536) or uint32 tokens, documents back to back,
                      each followed by the end-of-text token
<dir>/train_000.idx   int64 offsets: document i is tokens[idx[i]:idx[i+1]]
<dir>/meta.json       dtype, vocab size, eot id, and per split the shards with their counts
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from modelworks.artifacts import atomic_write_json
from modelworks.errors import ShardError


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


class ShardWriter:
    """Appends documents to `<split>_NNN.bin`, starting a new shard past `shard_tokens`."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.out_dir, self.split, self.dtype, self.shard_tokens = (
            out_dir,
            split,
            dtype,
            shard_tokens,
        )
        self.shards: list[dict] = []
        self._file = None

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):03d}"
        self._file = open(self.out_dir / f"{name}.bin", "wb")  # noqa: SIM115 (closed in _flush)
        self._offsets = [0]
        self.shards.append({"name": name, "tokens": 0, "documents": 0})

    def add(self, tokens: list[int]) -> None:
        if self._file is None or self.shards[-1]["tokens"] >= self.shard_tokens:
            self._flush()
            self._open()
        arr = np.asarray(tokens, dtype=self.dtype)
        self._file.write(arr.tobytes())
        self._offsets.append(self._offsets[-1] + len(arr))
        self.shards[-1]["tokens"] += len(arr)
        self.shards[-1]["documents"] += 1

    def _flush(self) -> None:
        if self._file is None:
            return
        self._file.close()
        idx = np.asarray(self._offsets, dtype=np.int64)
        idx.tofile(self.out_dir / f"{self.shards[-1]['name']}.idx")
        self._file = None

    def close(self) -> list[dict]:
        self._flush()
        return self.shards


def write_meta(out_dir: Path, dtype: np.dtype, vocab_size: int, eot: int, splits: dict) -> None:
    meta = {"dtype": dtype.name, "vocab_size": vocab_size, "eot_id": eot, "splits": splits}
    atomic_write_json(out_dir / "meta.json", meta)


class TokenShards:
    """Reads one split of a packed token folder."""

    def __init__(self, data_dir: str | Path, split: str) -> None:
        self.dir = Path(data_dir)
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            raise ShardError(f"{meta_path} does not exist: not a token-shard folder")
        self.meta = json.loads(meta_path.read_text())
        if split not in self.meta["splits"]:
            raise ShardError(f"{self.dir}: no split {split!r}; has {list(self.meta['splits'])}")
        self.split = split
        self.dtype = np.dtype(self.meta["dtype"])
        self.shards = self.meta["splits"][split]

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    @property
    def eot_id(self) -> int:
        return self.meta["eot_id"]

    def __len__(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    def _bin(self, shard: dict) -> np.ndarray:
        return np.memmap(self.dir / f"{shard['name']}.bin", dtype=self.dtype, mode="r")

    def tokens(self) -> np.ndarray:
        """All tokens of the split, in order, as one int64 array."""
        parts = [np.asarray(self._bin(s), dtype=np.int64) for s in self.shards]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def documents(self) -> Iterator[np.ndarray]:
        for shard in self.shards:
            data = self._bin(shard)
            idx = np.fromfile(self.dir / f"{shard['name']}.idx", dtype=np.int64)
            for a, b in zip(idx[:-1], idx[1:], strict=True):
                yield np.asarray(data[a:b])
