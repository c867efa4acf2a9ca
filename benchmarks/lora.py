"""LoRA SFT training throughput on SmolLM2-135M-Instruct: our GPT + train/lora.py against
transformers + PEFT on the same weights (the GGUF dequantized to float32 on both sides).

    modelworks pull smollm2-135m-instruct
    python benchmarks/lora.py                    # both sides, ~2 min on 2 cores
    python benchmarks/lora.py --steps 4          # quicker, noisier

Same batch (4 x 128 tokens), LoRA rank 8, alpha 16, dropout 0.05 on the attention query and value
projections (ours: wq/wv, PEFT: q_proj/v_proj; 460,800 trainable parameters each), AdamW, a plain
loop (forward, loss, backward, step) on both sides: HF Trainer refuses a GGUF-loaded model. Each
side's loss is its own training loss: ours the trainer's SFT loss (train/sft.py, the fused
output-layer cross-entropy of train/linear_ce.py), PEFT's what transformers' causal-LM loss does
(float32 logits, cross-entropy). Each side runs in its own process, so its peak RSS (ru_maxrss)
is its own; the sides take turns `--rounds` times and the median tokens/s of each is reported.
Writes benchmarks/results/lora.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from _common import cpu_model, write_json

BATCH, SEQ, RANK, ALPHA, DROPOUT = 4, 128, 8, 16.0, 0.05


def _gguf_path():
    from modelworks.models.catalogue import resolve_target

    return resolve_target("smollm2-135m-instruct")


def _ours():
    from modelworks.models.gguf import load_gguf
    from modelworks.train.lora import apply_lora
    from modelworks.train.sft import masked_lm_loss

    model = load_gguf(_gguf_path(), SEQ)
    apply_lora(model, RANK, ALPHA, DROPOUT, ["wq", "wv"])
    return model, lambda x, y: masked_lm_loss(model, (x, y))  # the trainer's SFT loss


def _peft():
    import peft
    import transformers

    path = _gguf_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    conf = peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=["q_proj", "v_proj"]
    )
    model = peft.get_peft_model(hf, conf)

    def loss(x, y):  # what transformers' causal-LM loss does: float32 logits, cross-entropy
        logits = model(input_ids=x, use_cache=False).logits.float()
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())

    return model, loss


def run_side(side: str, steps: int, warmup: int) -> dict:
    """Train `steps` timed LoRA steps (after `warmup`) in this process; tokens/s and peak RSS."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, loss_of = _ours() if side == "ours" else _peft()
    load_s = time.perf_counter() - t0
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 49_152, (warmup + steps, BATCH, SEQ + 1), generator=gen)
    times, losses = [], []
    for i in range(warmup + steps):
        t = time.perf_counter()
        x, y = data[i, :, :-1], data[i, :, 1:]
        loss = loss_of(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t)
            losses.append(float(loss))
    return {
        "side": side,
        "trainable_params": sum(p.numel() for p in params),
        "load_s": round(load_s, 2),
        "tokens_per_s": BATCH * SEQ * steps / sum(times),
        "step_s_median": statistics.median(times),
        "first_loss": losses[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per side and round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="turns each side takes")
    ap.add_argument("--side", choices=["ours", "peft"], help=argparse.SUPPRESS)  # a child process
    ap.add_argument("--out", default="benchmarks/results/lora.json")
    a = ap.parse_args()
    if a.side:
        print(json.dumps(run_side(a.side, a.steps, a.warmup)))
        return
    runs: dict[str, list[dict]] = {"ours": [], "peft": []}
    for _ in range(a.rounds):
        for side in runs:
            args = ["--side", side, "--steps", str(a.steps), "--warmup", str(a.warmup)]
            done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
            if done.returncode:  # e.g. peft not installed: its own last line says so
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise SystemExit(f"benchmarks/lora.py: the {side} side failed: {last}")
            runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = runs[side][-1]
            print(f"{side}: {r['tokens_per_s']:.0f} tok/s, peak RSS {r['peak_rss_mb']:.0f} MB")
    med = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    rss = {k: max(r["peak_rss_mb"] for r in v) for k, v in runs.items()}
    ratio = med["ours"] / med["peft"]
    print(
        f"LoRA SFT tokens/s (median of {a.rounds}): ours {med['ours']:.0f}, transformers+PEFT "
        f"{med['peft']:.0f}, ratio {ratio:.2f}x; peak RSS ours {rss['ours']:.0f} MB, "
        f"PEFT {rss['peft']:.0f} MB"
    )
    write_json(
        a.out,
        {
            "what": "LoRA SFT train step, SmolLM2-135M-Instruct dequantized fp32",
            "batch": BATCH, "seq_len": SEQ, "rank": RANK, "alpha": ALPHA,
            "targets": {"ours": ["wq", "wv"], "peft": ["q_proj", "v_proj"]},
            "steps": a.steps, "rounds": a.rounds,
            "tokens_per_s": med, "ratio_ours_over_peft": ratio, "peak_rss_mb": rss, "runs": runs,
            "date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
        },
    )  # fmt: skip


if __name__ == "__main__":
    main()
