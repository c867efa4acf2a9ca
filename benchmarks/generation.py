"""Image generation speed: training images/s of the U-Net denoiser and sampling latency.

The model is configs/generation.yaml's (models/unet.py) on scikit-learn's 8x8 digits scaled to
[-1, 1]. Training: images/s of `Trainer.fit` (the one loop: schedule, clipping, EMA hook, logs,
one validation and one checkpoint at the end) against a bare loop (AdamW + the same
rectified-flow loss + EMA) on the same model and batches, the two alternated, medians reported.
Sampling: milliseconds per call of the EMA network's sampler with classifier-free guidance (two
network rows per image and step) at batch 1 and 16, Euler at 1, 4 and 8 steps and Heun at 4.
Prints tables and the load average; writes JSON.

    python benchmarks/generation.py                   # ~2 min on 2 idle cores
    python benchmarks/generation.py --device cuda --steps 100
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import cpu_model, write_json  # benchmarks/ is on sys.path when a script runs

from modelworks import load_config
from modelworks.config import PretrainConfig
from modelworks.models.flow import flow_loss, sample
from modelworks.models.registry import build_model, fill_from_data, model_config_from
from modelworks.train.data import ExampleLoader
from modelworks.train.trainer import Trainer, TrainSetup

ROOT = Path(__file__).resolve().parents[1]


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8 - 1  # 0..16 -> [-1, 1]
    return x, torch.tensor(d.target)


def build(device: torch.device):
    cfg = load_config(ROOT / "configs" / "generation.yaml", [])
    model_cfg = model_config_from(cfg.model)
    fill_from_data(model_cfg, n_classes=10, image_size=8, channels=1)
    torch.manual_seed(0)
    return build_model(model_cfg).to(device), cfg.pretrain.batch_size


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(model, x, y, batch: int, steps: int, device) -> float:
    opt = torch.optim.AdamW(model.net.parameters(), lr=1e-3)
    loader = ExampleLoader(x, y, batch, 0)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        xb, yb = (t.to(device) for t in loader.next_batch())
        loss = flow_loss(model, xb, yb, 10, 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.update_ema(0.999)
    sync(device)
    return steps * batch / (time.perf_counter() - t0)


def trainer_loop(model, x, y, batch: int, steps: int, device) -> float:
    def wrap(m, opt):
        opt.register_step_post_hook(lambda *a: model.update_ema(0.999))
        return m, opt

    setup = TrainSetup(
        model, lambda m, b: flow_loss(m, b[0], b[1], 10, 0.1), ExampleLoader(x, y, batch, 0),
        lambda m: {"val_loss": 0.0}, batch, "img", wrap=wrap,
    )  # fmt: skip
    recipe = PretrainConfig(steps=steps, batch_size=batch, warmup_steps=0, eval_every=steps,
                            ckpt_every=steps, log_every=max(1, steps // 5))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        sync(device)
        t0 = time.perf_counter()
        Trainer(setup, recipe, Path(tmp), device).fit(resume=False)
        sync(device)
        return steps * batch / (time.perf_counter() - t0)


def latency_ms(net, batch: int, steps: int, sampler: str, device, repeats: int) -> float:
    labels = torch.arange(batch, device=device) % 10
    times = []
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        sample(net, labels, (1, 8, 8), 10, steps=steps, guidance=2.0, sampler=sampler, seed=i)
        sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times[1:])  # the first call warms up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=30, help="training steps per timed run")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of bare / Trainer")
    ap.add_argument("--repeats", type=int, default=10, help="timed sampling calls per cell")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least noisy)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generation.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    x, y = digits()
    model, batch = build(device)
    bare, ours = [], []
    for _ in range(args.rounds):
        bare.append(bare_loop(model, x, y, batch, args.steps, device))
        ours.append(trainer_loop(model, x, y, batch, args.steps, device))
    train = {"batch": batch, "bare_img_per_s": statistics.median(bare),
             "trainer_img_per_s": statistics.median(ours)}  # fmt: skip
    train["trainer_over_bare"] = train["trainer_img_per_s"] / train["bare_img_per_s"]
    print(
        f"training, batch {batch}: Trainer {train['trainer_img_per_s']:.0f} img/s, bare loop "
        f"{train['bare_img_per_s']:.0f} img/s (ratio {train['trainer_over_bare']:.2f})"
    )
    net = model.ema.eval()
    rows = []
    print("| sampler | steps | batch | ms / call | ms / image |\n|---|---|---|---|---|")
    for sampler, steps in (("euler", 1), ("euler", 4), ("euler", 8), ("heun", 4)):
        for b in (1, 16):
            ms = latency_ms(net, b, steps, sampler, device, args.repeats)
            rows.append({"sampler": sampler, "steps": steps, "batch": b, "ms": ms})
            print(f"| {sampler} | {steps} | {b} | {ms:.1f} | {ms / b:.2f} |")
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"({os.cpu_count()} CPUs); threads {args.threads}")  # fmt: skip
    write_json(args.out, {
        "device": args.device, "cpu": cpu_model(), "threads": args.threads,
        "parameters": model.num_params(), "train": train, "sampling": rows,
        "load_before": load_before, "load_after": load_after,
    })  # fmt: skip


if __name__ == "__main__":
    main()
