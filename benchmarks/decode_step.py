"""One decode step of the serving engine, with and without oneDNN-packed weights.

Times `Engine._forward` for B sequences at one new token each (rows at different positions, as
in continuous batching) for two engines over the same weights, one with its linear layers on
`F.linear` and one on `serve/packing.py`'s packed weights (layers of at least MIN_NUMEL weights,
as `modelworks serve` packs), interleaved in one process (median of `--repeats`), so both see the
same machine. Also times the attention of a decode step at 16 rows
with grouped keys repeated (`repeat_interleave`) against `grouped_attention`. Random weights: speed
does not depend on what a model learned. Prints a table and writes
benchmarks/results/decode_step.json.

    python benchmarks/decode_step.py                    # presets tiny, small, 124m; ~2 minutes
    python benchmarks/decode_step.py --presets 124m --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _common import cpu_model, write_json  # noqa: E402

from modelworks.models.gpt import GPT, GPTConfig, grouped_attention  # noqa: E402
from modelworks.serve.engine import Engine  # noqa: E402
from modelworks.serve.packing import MIN_NUMEL, PackedLinear  # noqa: E402

PRESETS = {  # (d_model, n_layer, n_head, n_kv_head, vocab), as benchmarks/serve.py
    "tiny": (64, 2, 4, 2, 512),
    "small": (256, 4, 4, 2, 2048),
    "124m": (768, 12, 12, 12, 6144),
}


def step_tokens_per_s(engine: Engine, batch: int, steps: int) -> float:
    vocab = engine.model.cfg.vocab_size
    ids = torch.randint(0, vocab, (batch, 1), device=engine.device)
    slots, starts = list(range(batch)), [100 + 3 * b for b in range(batch)]  # rows apart
    with torch.no_grad():
        for _ in range(2):
            engine._forward(ids, slots, starts)
        sync(engine.device)
        t = time.perf_counter()
        for i in range(steps):
            engine._forward(ids, slots, [s + i for s in starts])
        sync(engine.device)
    return batch * steps / (time.perf_counter() - t)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def attention_us(device: torch.device, repeats: int) -> dict:
    B, H, KV, D, S = 16, 12, 4, 64, 256
    q = torch.randn(B, H, 1, D, device=device)
    k, v = torch.randn(B, KV, S, D, device=device), torch.randn(B, KV, S, D, device=device)
    pos = torch.randint(S // 2, S, (B,), device=device)
    mask = torch.arange(S, device=device)[None, None, None, :] <= pos[:, None, None, None]

    def repeated():
        rep = H // KV
        kk, vv = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)

    def grouped():
        return grouped_attention(q, k, v, mask)

    torch.testing.assert_close(grouped(), repeated(), rtol=1e-4, atol=1e-5)
    out = {}
    for name, fn in [("repeat_interleave", repeated), ("grouped_attention", grouped)]:
        times = []
        for _ in range(repeats):
            fn()
            sync(device)
            t = time.perf_counter()
            for _ in range(200):
                fn()
            sync(device)
            times.append((time.perf_counter() - t) / 200 * 1e6)
        out[name] = statistics.median(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,small,124m")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decode_step.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = [os.getloadavg()[0]]
    rows = []
    print(f"decode step, tokens/s (median of {args.repeats}), packed: layers >= {MIN_NUMEL:,}")
    print(f"{'preset':8} {'B':>3} {'F.linear':>10} {'packed':>10} {'ratio':>7}  packed layers")
    for preset in args.presets.split(","):
        d, n_layer, n_head, n_kv, vocab = PRESETS[preset]
        cfg = GPTConfig(vocab_size=vocab, context_len=1024, n_layer=n_layer, n_head=n_head,
                        n_kv_head=n_kv, d_model=d, init_std=0.1)  # fmt: skip
        engines = {}
        for name in ("F.linear", "packed"):  # the same weights twice (same seed)
            torch.manual_seed(0)
            model = GPT(cfg).to(device).eval()
            engines[name] = Engine(model, None, bos=0, pack_weights=name == "packed")  # type: ignore[arg-type]
            engines[name]._cache = model.new_cache(16, 1024)
        n_packed = sum(isinstance(m, PackedLinear) for m in engines["packed"].model.modules())
        for batch in [int(b) for b in args.batches.split(",")]:
            runs = {name: [] for name in engines}
            for _ in range(args.repeats):  # interleaved: both see the same machine
                for name, engine in engines.items():
                    runs[name].append(step_tokens_per_s(engine, batch, args.steps))
            med = {k: statistics.median(v) for k, v in runs.items()}
            ratio = med["packed"] / med["F.linear"]
            rows.append({"preset": preset, "batch": batch, "tokens_per_s": med, "ratio": ratio,
                         "packed_layers": n_packed})  # fmt: skip
            print(f"{preset:8} {batch:3d} {med['F.linear']:10.1f} {med['packed']:10.1f} "
                  f"{ratio:6.2f}x  {n_packed}")  # fmt: skip
    att = attention_us(device, args.repeats)
    ratio = att["repeat_interleave"] / att["grouped_attention"]
    print(
        f"decode attention, 16 rows, 12 query / 4 key heads, 256 keys: repeat_interleave "
        f"{att['repeat_interleave']:.0f} us, grouped_attention {att['grouped_attention']:.0f} us "
        f"({ratio:.2f}x)"
    )
    load.append(os.getloadavg()[0])
    result = {
        "args": vars(args),
        "decode_step": rows,
        "attention_us": att,
        "torch": torch.__version__,
        "machine": cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpus": os.cpu_count(),
        "load_average": load,
        "date": time.strftime("%Y-%m-%d"),
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
