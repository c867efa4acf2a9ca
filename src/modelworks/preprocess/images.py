"""Image preprocessing for classification: decode, convert, resize, split, store as uint8.

Reads `<run>/collect/images.parquet`; writes `data.safetensors` with `{split}_x` (N, C, H, W)
uint8 and `{split}_y` int64 for train/val/test, and `labels.json` (class names, normalisation
mean/std from the training split). Undecodable files are skipped and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from modelworks.artifacts import atomic_write_text
from modelworks.config import Config
from modelworks.errors import ImageDataError
from modelworks.progress import Reporter

SPLITS = ("train", "val", "test")


def split_of(item_id: str, val_fraction: float, test_fraction: float, seed: int) -> str:
    """Deterministic three-way split by id (independent of order and of the other items)."""
    h = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def decode(data: bytes, size: int, channels: int) -> np.ndarray:
    """Encoded image -> (C, size, size) uint8; any mode or size is converted."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def prepare_images(cfg: Config, run_dir: Path, out: Path, reporter: Reporter) -> dict:
    p = cfg.preprocess
    xs: dict[str, list] = {s: [] for s in SPLITS}
    labels: dict[str, list[str]] = {s: [] for s in SPLITS}
    skipped: Counter = Counter()
    table = pq.ParquetFile(run_dir / "collect" / "images.parquet")
    for batch in table.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            try:
                x = decode(row["image"], p.image_size, p.channels)
            except Exception as e:  # Pillow raises many types for corrupt input
                skipped[type(e).__name__] += 1
                continue
            split = split_of(row["id"], p.val_fraction, p.test_fraction, cfg.seed)
            xs[split].append(x)
            labels[split].append(row["label"])
    classes = sorted(set(labels["train"]))
    if len(classes) < 2:
        raise ImageDataError(
            f"{run_dir / 'collect' / 'images.parquet'}: the training split has {len(classes)} "
            f"class(es) {classes}; classification needs 2+ (check collect.sources' labels)"
        )
    index = {c: i for i, c in enumerate(classes)}
    unseen = {c for s in ("val", "test") for c in labels[s]} - set(classes)
    if unseen:
        raise ImageDataError(f"labels {sorted(unseen)} appear outside the training split only")
    tensors = {}
    for s in SPLITS:
        shape = (0, p.channels, p.image_size, p.image_size)
        x = np.stack(xs[s]) if xs[s] else np.zeros(shape, dtype=np.uint8)
        tensors[f"{s}_x"] = torch.from_numpy(x)
        tensors[f"{s}_y"] = torch.tensor([index[c] for c in labels[s]], dtype=torch.int64)
    if len(tensors["val_y"]) == 0:
        raise ImageDataError("the validation split is empty; raise preprocess.val_fraction")
    save_file(tensors, str(out / "data.safetensors"))
    train_x = tensors["train_x"].float() / 255
    meta = {
        "classes": classes,
        "channels": p.channels,
        "image_size": p.image_size,
        "mean": train_x.mean().item(),
        "std": train_x.std().item() or 1.0,
    }
    atomic_write_text(out / "labels.json", json.dumps(meta, indent=2))
    counts = {s: len(labels[s]) for s in SPLITS}
    reporter.info(
        f"[preprocess] {counts['train']} train / {counts['val']} val / {counts['test']} test "
        f"images, {len(classes)} classes, {p.channels}x{p.image_size}x{p.image_size}; "
        f"skipped {sum(skipped.values())} unreadable"
    )
    return {
        "images": counts,
        "classes": len(classes),
        "skipped": dict(skipped),
        "per_class_train": dict(Counter(labels["train"])),
    }
