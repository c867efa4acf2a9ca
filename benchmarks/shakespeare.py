"""Quality at a fixed compute budget: a GPT trained on Tiny Shakespeare through modelworks' Trainer.

The text (`--data`, 1.1 MB) is split 90/10 by position; characters (default) or a byte-level BPE
trained on the training part (`--tokenizer bpe`, `train_bpe`) become tokens. A short calibration
run through the same `Trainer` times one step and one validation check; the step count that fills
`--minutes` of training follows from it (the LR schedule needs it fixed in advance), and a fresh
model is trained for that many steps (AdamW, warmup + cosine decay, grad clipping). Reported:
validation loss over the whole validation part in nats/token and bits per character (so char-level
and BPE runs compare), the baseline in the same run - add-one-smoothed unigram frequencies of the
training tokens, scored on the same validation tokens - and their ratio, steps, tokens seen,
wall-clock time, the validation curve, and greedy and sampled continuations of a few prompts
(KV-cache generation).

    python benchmarks/shakespeare.py                          # char-level, 5 minutes, CPU
    python benchmarks/shakespeare.py --minutes 0.5            # smoke run
    python benchmarks/shakespeare.py --tokenizer bpe --vocab-size 1024
    python benchmarks/shakespeare.py --device cuda --minutes 5 --n-layer 6 --d-model 384 \\
        --n-head 6 --seq-len 256 --batch-size 64 --lr 1e-3      # nanoGPT's shakespeare-char shape
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from modelworks.config import PretrainConfig
from modelworks.evaluate.metrics import unigram_cross_entropy
from modelworks.models.gpt import GPTConfig
from modelworks.models.registry import build_model
from modelworks.preprocess.tokenizer import train_bpe
from modelworks.progress import Reporter
from modelworks.serve.engine import sample_next
from modelworks.tasks.language_modeling import lm_eval_loss, lm_loss
from modelworks.train.data import WindowLoader, sequential_batches
from modelworks.train.trainer import Trainer, TrainSetup

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "../shared/data/tinyshakespeare/input.txt"  # relative to the repository root
PROMPTS = ["ROMEO:\n", "First Citizen:\nWe are", "KING HENRY VI:\nO God,"]


class CharTokenizer:
    """One token per character of the training text (nanoGPT's shakespeare_char)."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        missing = sorted(set(text) - set(self.index))
        if missing:
            sys.exit(f"characters {missing} do not occur in the training part; cannot encode them")
        return [self.index[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


class BPETokenizer:
    """modelworks' byte-level BPE (`train_bpe`), trained on the training part only."""

    def __init__(self, text: str, vocab_size: int) -> None:
        self.tok = train_bpe([text], vocab_size)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


class StepClock(Reporter):
    """The trainer calls `update` once at the end of every step (after any validation)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def start(self, total: int, desc: str, initial: int = 0, unit: str = "it") -> None:
        self.times.append(time.perf_counter())

    def update(self, n: int = 1, **stats) -> None:
        self.times.append(time.perf_counter())

    def info(self, msg: str) -> None:
        print(f"    {msg}", flush=True)


def train(args, steps: int, train_tokens, val_tokens, vocab: int, device, out_dir: Path):
    """A fresh model trained by modelworks' Trainer for `steps`; returns (model, summary, clock)."""
    torch.manual_seed(args.seed)
    model_cfg = GPTConfig(
        vocab_size=vocab,
        context_len=args.seq_len,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_kv_head=args.n_head,
        d_model=args.d_model,
    )
    model = build_model(model_cfg).to(device)
    loader = WindowLoader(train_tokens, args.batch_size, args.seq_len, args.seed)

    def validate(m):
        batches = sequential_batches(val_tokens, args.batch_size, args.seq_len, args.eval_batches)
        return {"val_loss": lm_eval_loss(m, batches, device)[0]}

    evals = max(1, args.evals)
    cfg = PretrainConfig(
        steps=steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        min_lr=args.lr / 10,
        warmup_steps=min(100, steps // 10),
        dtype=args.dtype,
        eval_every=max(1, steps // evals),
        eval_batches=args.eval_batches,
        ckpt_every=steps,  # one checkpoint, at the end
        log_every=max(1, steps // 50),
        peak_tflops=1.0,  # MFU is not reported here; skip the trainer's matmul measurement
    )
    setup = TrainSetup(model, lm_loss, loader, validate, args.batch_size * args.seq_len, "tok")
    clock = StepClock()
    summary = Trainer(setup, cfg, out_dir, device, clock).fit(resume=False)
    return model, summary, clock


@torch.no_grad()
def generate(model, ids: list[int], n: int, temperature: float, seed: int) -> list[int]:
    """`n` tokens after `ids` with the KV cache; when the context fills up, the last half is
    re-read into a fresh cache, so positions stay within the trained range."""
    model.eval()
    device = next(model.parameters()).device
    ctx = model.cfg.context_len
    gen = torch.Generator().manual_seed(seed)

    def prefill(window: list[int]):
        cache = model.new_cache(1, ctx)
        logits = model(torch.tensor([window], device=device), cache=cache, start_pos=0)[0, -1]
        return cache, len(window), logits

    cache, pos, logits = prefill(ids[-ctx:])
    out: list[int] = []
    for _ in range(n):
        nxt = sample_next(logits, temperature, 0.95, 0, gen)
        out.append(nxt)
        if pos == ctx:
            cache, pos, logits = prefill((ids + out)[-(ctx // 2) :])
        else:
            step = torch.tensor([[nxt]], device=device)
            logits = model(step, cache=cache, start_pos=pos)[0, -1]
            pos += 1
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help=f"Tiny Shakespeare text (default: <repo>/{DEFAULT_DATA})")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--minutes", type=float, default=5.0, help="training budget (wall clock)")
    p.add_argument("--tokenizer", default="char", choices=["char", "bpe"])
    p.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--evals", type=int, default=10, help="validation checks during training")
    p.add_argument("--eval-batches", type=int, default=4, help="batches per check in training")
    p.add_argument("--calibration-steps", type=int, default=12)
    p.add_argument("--sample-len", type=int, help="tokens per sample (default: 240 chars' worth)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0: torch's default")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", default="benchmarks/results/shakespeare.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available on this machine")
    data = Path(args.data) if args.data else REPO / DEFAULT_DATA
    if not data.is_file():
        sys.exit(f"{data} does not exist; pass --data PATH to Tiny Shakespeare's input.txt")
    busy = os.getloadavg()[0]
    if busy >= 1.0:
        print(
            f"note: load average {busy:.1f} on {os.cpu_count()} CPUs before starting: other "
            "processes are running, so timings will be slower and noisier (--threads 1 suffers "
            "least)"
        )
    load_before = os.getloadavg()

    text = data.read_text(encoding="utf-8")
    cut = int(0.9 * len(text))
    train_text, val_text = text[:cut], text[cut:]
    if args.tokenizer == "char":
        tok = CharTokenizer(train_text)
    else:
        tok = BPETokenizer(train_text, args.vocab_size)
    train_tokens = np.array(tok.encode(train_text), dtype=np.int64)
    val_tokens = np.array(tok.encode(val_text), dtype=np.int64)
    vocab = tok.vocab_size
    print(
        f"{data.name}: {len(train_text):,} / {len(val_text):,} characters -> {len(train_tokens):,}"
        f" / {len(val_tokens):,} {args.tokenizer} tokens (vocabulary {vocab}); "
        f"{device}, {torch.get_num_threads()} threads, {args.dtype}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        # calibration: the same trainer, a few steps with one validation check at the end
        n_cal = args.calibration_steps
        cal_args = argparse.Namespace(**{**vars(args), "evals": 1})
        t0 = time.perf_counter()
        _, _, clock = train(cal_args, n_cal, train_tokens, val_tokens, vocab, device, Path(tmp))
        step_times = np.diff(clock.times)
        step_s = statistics.median(step_times[2:-1])  # skip warm-up steps and the checked one
        check_s = max(0.0, step_times[-1] - step_s)  # validation + checkpoint
        calibration_s = time.perf_counter() - t0
    budget_s = 60 * args.minutes
    steps = max(1, int((budget_s - args.evals * check_s) / step_s))
    print(
        f"calibration ({calibration_s:.0f} s): {1000 * step_s:.0f} ms/step, "
        f"{check_s:.2f} s per validation check -> {steps} steps for {args.minutes:g} minutes"
    )

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model, summary, _ = train(args, steps, train_tokens, val_tokens, vocab, device, Path(tmp))
        train_s = time.perf_counter() - t0
        records = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    train_losses = [r["loss"] for r in records if "loss" in r]

    # final validation: every full window of the validation part, with the last-step model
    model.eval()
    amp = torch.autocast(
        device.type, dtype=getattr(torch, args.dtype), enabled=args.dtype != "float32"
    )
    with amp:
        val_loss, n_val = lm_eval_loss(
            model, sequential_batches(val_tokens, args.batch_size, args.seq_len), device
        )
    targets = val_tokens[1 : n_val + 1]  # the windows' targets, in order
    chars = len(tok.decode(targets.tolist()))  # exact for this ASCII text
    unigram = unigram_cross_entropy(train_tokens, targets, vocab)

    def bpc(nats_per_token: float) -> float:
        return nats_per_token * n_val / chars / math.log(2)

    n_sample = args.sample_len or (240 if args.tokenizer == "char" else 100)
    samples = []
    for i, prompt in enumerate(PROMPTS):
        ids = tok.encode(prompt)
        greedy = tok.decode(generate(model, ids, n_sample, 0.0, args.seed))
        sampled = tok.decode(generate(model, ids, n_sample, 0.8, args.seed + i))
        samples.append({"prompt": prompt, "greedy": greedy, "sampled": sampled})

    params = sum(p.numel() for p in model.parameters())
    tokens_seen = summary["tok"]
    rows = [
        ("model", f"{args.n_layer} layers, d_model {args.d_model}, {params / 1e6:.2f}M params"),
        ("tokenizer", f"{args.tokenizer}, vocabulary {vocab}"),
        ("batch x seq_len", f"{args.batch_size} x {args.seq_len}, lr {args.lr:g}"),
        ("budget / training wall time", f"{budget_s:.0f} s / {train_s:.0f} s"),
        ("steps", f"{summary['steps']:,}"),
        ("tokens seen", f"{tokens_seen:,} ({tokens_seen / len(train_tokens):.1f} epochs)"),
        ("throughput", f"{summary['tok_per_s']:,.0f} tok/s"),
        ("last train loss", f"{train_losses[-1]:.4f} nats/token"),
        ("validation tokens / characters", f"{n_val:,} / {chars:,}"),
        ("validation loss", f"{val_loss:.4f} nats/token, {bpc(val_loss):.3f} bits/char"),
        ("unigram baseline", f"{unigram:.4f} nats/token, {bpc(unigram):.3f} bits/char"),
        ("model / unigram (bits/char)", f"{bpc(val_loss) / bpc(unigram):.3f}"),
    ]
    print()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("validation curve (step: nats/token on the first eval batches): " + ", ".join(
        f"{s}: {v:.3f}" for s, v in curve
    ))  # fmt: skip
    for s in samples:
        for kind in ("greedy", "sampled"):
            body = (s["prompt"] + s[kind]).replace("\n", "\n    | ")
            print(f"\n[{kind}]\n    | {body}")
    print(f"\nload average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "shakespeare",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "args": {**vars(args), "data": str(data)},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_before_after": [load_before, os.getloadavg()],
        "vocab_size": vocab,
        "params": params,
        "train_tokens": len(train_tokens),
        "calibration": {"seconds": calibration_s, "step_s": step_s, "check_s": check_s},
        "budget_s": budget_s,
        "train_wall_s": train_s,
        "steps": summary["steps"],
        "tokens_seen": tokens_seen,
        "tok_per_s": summary["tok_per_s"],
        "val_tokens": n_val,
        "val_chars": chars,
        "val_loss_nats_per_token": val_loss,
        "val_bits_per_char": bpc(val_loss),
        "unigram_nats_per_token": unigram,
        "unigram_bits_per_char": bpc(unigram),
        "ratio_bits_per_char_vs_unigram": bpc(val_loss) / bpc(unigram),
        "val_curve": curve,
        "train_losses": train_losses,
        "samples": samples,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
