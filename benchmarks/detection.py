"""Object detection: training throughput (images/s) and detection latency at batch 1 and 16.

The detector is configs/detection.yaml's (models/detector.py) on 64x64 built-in digit scenes
(collect/detection.py), randomly initialised: speed does not depend on the weights. Training is
the task's own step (augmentation, CenterNet loss, backward, AdamW) on real batches from its
loader; latency is `Detector.detect` (forward, peak decoding, NMS) on held-out scenes. The
baseline in the same run is the sliding-window detector (tasks/object_detection_baseline.py),
fitted on the same training scenes; its latency is measured alternating with the detector's.
Prints a table, the load average before and after, and writes JSON.

    python benchmarks/detection.py                      # about 1-2 minutes on 2 CPU cores
    python benchmarks/detection.py --device cuda --train-steps 50
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _common import cpu_model, write_json  # benchmarks/ is on sys.path when a script runs
from PIL import Image

from modelworks.collect.detection import digit_scenes
from modelworks.models.detector import Detector, DetectorConfig, detection_loss
from modelworks.tasks import object_detection_baseline as baseline
from modelworks.tasks.detection_augment import BoxAugment
from modelworks.tasks.object_detection_data import DetectionLoader, normalise

ROOT = Path(__file__).resolve().parents[1]


def scenes(n: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs, boxes = [], []
    for rec in digit_scenes(count=n * 12):
        if rec["split"] != split and not (split == "eval" and rec["split"] != "train"):
            continue
        i = len(xs)
        xs.append(np.asarray(Image.open(io.BytesIO(rec["image"])))[None])
        for b in json.loads(rec["boxes"]):
            x, y, w, h = b["bbox"]
            boxes.append([i, int(b["label"]), x, y, x + w, y + h])
        if len(xs) == n:
            break
    return torch.from_numpy(np.stack(xs)), torch.tensor(boxes, dtype=torch.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32, help="training batch")
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=20, help="latency repeats per batch size")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "detection.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    x, boxes = scenes(400, "train")
    tx, _ = scenes(16, "eval")
    meta = {"mean": float(x.float().mean() / 255), "std": float(x.float().std() / 255)}
    cfg = DetectorConfig(
        image_size=64, channels=1, n_classes=10, widths=[16, 32, 64], head_width=48
    )  # fmt: skip  (configs/detection.yaml's)
    model = Detector(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DetectionLoader(x, boxes, meta, args.batch_size, 0, BoxAugment(0.25, 0.15, jitter=0.2))

    def step() -> None:
        xb, t = loader.next_batch()
        loss = detection_loss(model(xb.to(device)), t, 10)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.train_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    train_ips = args.train_steps * args.batch_size / wall
    model.eval()
    clf = baseline.fit(x, boxes, 10)
    lat: dict[str, dict[int, list[float]]] = {
        "detector": {1: [], 16: []},
        "baseline": {1: [], 16: []},
    }
    for bs in (1, 16):
        xb = normalise(tx[:bs], meta).to(device)
        model.detect(xb)
        for _ in range(args.repeats):  # alternate the two, so load hits both alike
            t0 = time.perf_counter()
            model.detect(xb)
            if device.type == "cuda":
                torch.cuda.synchronize()
            lat["detector"][bs].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            baseline.detect(clf, tx[:bs], 10)
            lat["baseline"][bs].append(time.perf_counter() - t0)
    med = {k: {bs: statistics.median(v) * 1000 for bs, v in d.items()} for k, d in lat.items()}
    load_after = os.getloadavg()
    print(f"device {device}, {args.threads} threads, CPU {cpu_model()}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"training: {train_ips:.1f} images/s (batch {args.batch_size}, "
          f"{args.train_steps} steps, {cpu / args.train_steps:.2f} CPU-s per step)")  # fmt: skip
    print("| detector | batch 1 ms | batch 16 ms | batch 16 images/s |")
    print("|---|---|---|---|")
    for name in ("detector", "baseline"):
        print(f"| {name} | {med[name][1]:.1f} | {med[name][16]:.1f} | "
              f"{16000 / med[name][16]:.0f} |")  # fmt: skip
    ratio = med["baseline"][16] / med["detector"][16]
    print(f"detector vs sliding-window baseline at batch 16: {ratio:.1f}x faster")
    write_json(args.out, {
        "date": time.strftime("%Y-%m-%d"), "device": str(device), "threads": args.threads,
        "cpu": cpu_model(), "load_before": load_before, "load_after": load_after,
        "train_images_per_s": train_ips, "train_cpu_s_per_step": cpu / args.train_steps,
        "batch_size": args.batch_size, "latency_ms_median": med,
        "parameters": sum(p.numel() for p in model.parameters()),
    })  # fmt: skip


if __name__ == "__main__":
    main()
