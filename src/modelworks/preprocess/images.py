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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from modelworks.artifacts import atomic_write_text
from modelworks.config import Config
from modelworks.errors import ImageDataError
from modelworks.progress import Reporter
from modelworks.splits import SPLITS, describe, drawn_fractions, read_given, split_stats


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


def decoded_rows(
    path: Path,
    image_size: int,
    channels: int,
    val_f: float,
    test_f: float,
    seed: int,
    skipped: Counter,
) -> Iterator[tuple[dict, np.ndarray, str]]:
    """(row, pixels, split) of every readable image of a collected Parquet file: a split the
    source named (val, test), else drawn by id; unreadable images are counted in `skipped` by
    error type."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            try:
                x = decode(row["image"], image_size, channels)
            except Exception as e:  # Pillow raises many types for corrupt input
                skipped[type(e).__name__] += 1
                continue
            g = row.get("split")
            yield row, x, g if g in ("val", "test") else split_of(row["id"], val_f, test_f, seed)


def prepare_images(
    cfg: Config, run_dir: Path, out: Path, reporter: Reporter, image_size: int, channels: int
) -> dict:
    """Decode every collected image at `image_size` x `image_size` with `channels`, split, save."""
    p = cfg.preprocess
    xs: dict[str, list] = {s: [] for s in SPLITS}
    labels: dict[str, list[str]] = {s: [] for s in SPLITS}
    skipped: Counter = Counter()
    path = run_dir / "collect" / "images.parquet"
    val_f, test_f = drawn_fractions(read_given(path), p.val_fraction, p.test_fraction)
    given, sources, parts = [], [], {s: [] for s in SPLITS}  # per kept image, for the stats
    first_source: dict[tuple[str, str], str] = {}
    for row, x, split in decoded_rows(path, image_size, channels, val_f, test_f, cfg.seed, skipped):
        parts[split].append(len(given))
        given.append(row.get("split"))
        sources.append(row["source"])
        first_source.setdefault((split, row["label"]), row["source"])
        xs[split].append(x)
        labels[split].append(row["label"])
    classes = sorted(set(labels["train"]))
    if len(classes) < 2:
        raise ImageDataError(
            f"{run_dir / 'collect' / 'images.parquet'}: the training split has {len(classes)} "
            f"class(es) {classes}; classification needs 2+ (check collect.sources' labels)"
        )
    index = {c: i for i, c in enumerate(classes)}
    for s in ("val", "test"):
        unseen = sorted(set(labels[s]) - set(classes))
        if unseen:
            n = labels[s].count(unseen[0])
            raise ImageDataError(
                f"{first_source[(s, unseen[0])]}: label {unseen[0]!r} ({n} image(s)) is in the "
                f"{s} split but never in train, so the model cannot predict it; check the "
                f"sources' split and label_field (unseen: {unseen})"
            )
    tensors = {}
    for s in SPLITS:
        shape = (0, channels, image_size, image_size)
        x = np.stack(xs[s]) if xs[s] else np.zeros(shape, dtype=np.uint8)
        tensors[f"{s}_x"] = torch.from_numpy(x)
        tensors[f"{s}_y"] = torch.tensor([index[c] for c in labels[s]], dtype=torch.int64)
    if len(tensors["val_y"]) == 0:
        raise ImageDataError("the validation split is empty; raise preprocess.val_fraction")
    save_file(tensors, str(out / "data.safetensors"))
    train_x = tensors["train_x"].float() / 255
    meta = {
        "classes": classes,
        "channels": channels,
        "image_size": image_size,
        "mean": train_x.mean().item(),
        "std": train_x.std().item() or 1.0,
    }
    atomic_write_text(out / "labels.json", json.dumps(meta, indent=2))
    counts = {s: len(labels[s]) for s in SPLITS}
    reporter.info(
        f"[preprocess] {counts['train']} train / {counts['val']} val / {counts['test']} test "
        f"images, {len(classes)} classes, {channels}x{image_size}x{image_size}; "
        f"skipped {sum(skipped.values())} unreadable"
    )
    split_info = split_stats(parts, given, sources, val_f, test_f)
    train_hashes = {hashlib.blake2b(x.tobytes(), digest_size=8).digest() for x in xs["train"]}
    dupes = sum(hashlib.blake2b(x.tobytes(), digest_size=8).digest() in train_hashes
                for x in xs["test"])  # fmt: skip
    reporter.info(f"[preprocess] decontamination: {dupes} test image(s) identical to a train one")
    for line in describe(split_info):
        reporter.info(f"[preprocess] {line}")
    return {
        "images": counts,
        "splits": split_info,
        "test_overlap": {"test_rows": counts["test"], "identical_to_train": dupes},
        "classes": len(classes),
        "skipped": dict(skipped),
        "per_class_train": dict(Counter(labels["train"])),
    }
