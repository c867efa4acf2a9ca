"""Object-detection data: preprocess (decode, resize, split, store) and the training loader.

Reads `<run>/collect/detection_images.parquet` (collect/detection.py); writes `data.safetensors`
with `{split}_x` (N, C, S, S) uint8 images resized to `tasks.object_detection.image_size` square,
`{split}_boxes` (M, 6) float32 rows [image index, class, x1, y1, x2, y2] in resized pixels and
`{split}_sizes` (N, 2) the original width and height; and `labels.json` (classes, image size,
channels, the training split's mean/std). Images of mixed sizes are resized, their boxes scaled
with them, and counted; undecodable images are skipped and counted.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from modelworks.artifacts import atomic_write_text
from modelworks.errors import ImageDataError
from modelworks.preprocess.images import decoded_rows
from modelworks.splits import SPLITS, drawn_fractions, read_given, split_stats
from modelworks.train.data import EpochSampler

PARQUET = "detection_images.parquet"


def prepare(cfg, run_dir: Path, out: Path, reporter, image_size: int, channels: int) -> dict:
    """Images resized to `image_size` square with `channels`, their boxes scaled with them."""
    p = cfg.preprocess
    path = run_dir / "collect" / PARQUET
    if not path.is_file():
        raise ImageDataError(f"{path}: missing; object_detection needs a detection source "
                             "(collect.sources type digit_scenes, coco or yolo)")  # fmt: skip
    val_f, test_f = drawn_fractions(read_given(path), p.val_fraction, p.test_fraction)
    rows: dict[str, list] = {s: [] for s in SPLITS}
    skipped: Counter = Counter()
    sizes: Counter = Counter()
    given, sources, parts = [], [], {s: [] for s in SPLITS}  # per kept image, for split_stats
    for row, x, split in decoded_rows(path, image_size, channels, val_f, test_f, cfg.seed, skipped):
        sizes[(row["width"], row["height"])] += 1
        parts[split].append(len(given))
        given.append(row.get("split"))
        sources.append(row["source"])
        rows[split].append((x, json.loads(row["boxes"]), row["width"], row["height"]))
    classes = sorted({b["label"] for s in SPLITS for _, boxes, _, _ in rows[s] for b in boxes})
    if not rows["train"] or not classes:
        raise ImageDataError(f"{path}: no training images with boxes; check collect.sources")
    index = {c: i for i, c in enumerate(classes)}
    tensors, counts = {}, {}
    s = image_size
    for split in SPLITS:
        items = rows[split]
        xs = np.stack([x for x, *_ in items]) if items else np.zeros((0, channels, s, s))
        boxes = [
            [i, index[b["label"]], bx * s / w, by * s / h, (bx + bw) * s / w, (by + bh) * s / h]
            for i, (_, bs, w, h) in enumerate(items)
            for b in bs
            for bx, by, bw, bh in [b["bbox"]]
        ]
        tensors[f"{split}_x"] = torch.from_numpy(xs.astype(np.uint8))
        tensors[f"{split}_boxes"] = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 6)
        tensors[f"{split}_sizes"] = torch.tensor([[w, h] for *_, w, h in items]).reshape(-1, 2)
        counts[split] = {"images": len(items), "boxes": len(boxes)}
    train = tensors["train_x"].float() / 255
    meta = {
        "classes": classes,
        "image_size": s,
        "channels": channels,
        "mean": float(train.mean()),
        "std": float(train.std().clamp(min=1e-6)),
    }
    save_file(tensors, str(out / "data.safetensors"))
    atomic_write_text(out / "labels.json", json.dumps(meta, indent=1))
    common, n_common = sizes.most_common(1)[0]
    resized = sum(sizes.values()) - n_common
    splits = split_stats(parts, given, sources, p.val_fraction, p.test_fraction)
    stats = {"splits": splits, "counts": counts, "classes": classes, "skipped": dict(skipped),
             "image_sizes": {f"{w}x{h}": n for (w, h), n in sizes.most_common()},
             "other_sizes": resized}  # fmt: skip
    reporter.info(
        "[preprocess] object_detection: "
        + ", ".join(f"{k} {v['images']} images / {v['boxes']} boxes" for k, v in counts.items())
        + f"; {len(classes)} classes"
    )
    if resized:
        reporter.info(
            f"[preprocess] {resized} image(s) differ from the most common size "
            f"{common[0]}x{common[1]}; all resized to {s}x{s} with their boxes"
        )
    if skipped:
        reporter.info(f"[preprocess] skipped {sum(skipped.values())} undecodable image(s)")
    return stats


def load_split(run_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """uint8 images (N, C, S, S), boxes (M, 6) and labels.json."""
    pre = run_dir / "preprocess"
    data = load_file(str(pre / "data.safetensors"))
    meta = json.loads((pre / "labels.json").read_text())
    return data[f"{split}_x"], data[f"{split}_boxes"], meta


def normalise(x: torch.Tensor, meta: dict) -> torch.Tensor:
    """uint8 or [0, 1] float images -> the model's input."""
    if x.dtype == torch.uint8:
        x = x.float() / 255
    return (x - meta["mean"]) / meta["std"]


def batch_targets(boxes: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The rows of `boxes` for images `idx`, renumbered 0..len(idx)-1 in batch order."""
    pos = torch.full((int(boxes[:, 0].max().item()) + 1 if len(boxes) else 1,), -1)
    pos[idx[idx < len(pos)]] = torch.arange(len(idx))[idx < len(pos)]
    rows = boxes[pos[boxes[:, 0].long()] >= 0]
    return torch.cat([pos[rows[:, 0].long()][:, None].float(), rows[:, 1:]], 1)


class DetectionLoader:
    """Training batches (normalised images, targets (N, 6)), augmented with `augment` (a
    tasks/detection_augment.BoxAugment or None); state = the sampler's position."""

    def __init__(self, x, boxes, meta, batch_size: int, seed: int, augment=None, rank=0, world=1):
        if len(x) < batch_size * world:
            raise ImageDataError(f"{len(x)} training images are fewer than one batch of "
                                 f"{batch_size * world}; lower pretrain.batch_size")  # fmt: skip
        self.x, self.boxes, self.meta, self.augment, self.rank = x, boxes, meta, augment, rank
        self.sampler = EpochSampler(len(x), batch_size, seed, rank, world)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment is not None:
            self.augment.reseed(self.rank, self.sampler.state_dict())
        idx = torch.from_numpy(self.sampler.next_indices())
        x, t = self.x[idx].float() / 255, batch_targets(self.boxes, idx)
        if self.augment is not None:
            x, t = self.augment(x, t)
        return normalise(x, self.meta), t

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
