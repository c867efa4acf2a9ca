"""Tokens/s and memory per rank for 1 vs N processes, DDP vs FSDP, through `modelworks pretrain`.

    python benchmarks/parallel_scaling.py                      # CPU, gloo, 1 and 2 processes
    python benchmarks/parallel_scaling.py --device cuda --nproc 1 8 --preset gpt-124m

Each configuration is a real `modelworks pretrain --nproc N` run on the same data (a copy of one
preprocess artifact) with the same global batch; figures come from the run's manifest: tokens/s
over the whole run, peak memory of rank 0 (RSS on CPU, allocated on GPU), and the parameter +
optimizer-state bytes rank 0 holds. FSDP should cut the latter by about the world size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modelworks", *args], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(f"modelworks {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--preset", default="gpt-small", help="a configs/models/ preset")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8, help="global micro-batch")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/parallel_scaling.json"))
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mw-scaling-"))
    base = [
        str(ROOT / "configs/quickstart.yaml"),
        str(ROOT / f"configs/models/{a.preset}.yaml"),
        f"runs_dir={work}",
        f"device={a.device}",
        "collect.sources.0.limit=200",
        f"pretrain.steps={a.steps}",
        f"pretrain.batch_size={a.batch_size}",
        f"pretrain.seq_len={a.seq_len}",
        "pretrain.eval_every=1000000",
        "pretrain.ckpt_every=1000000",
        "pretrain.warmup_steps=2",
    ]
    run(["collect", *base, "name=data"])
    run(["preprocess", *base, "name=data"])
    rows = []
    for nproc in a.nproc:
        for mode in ["ddp", "fsdp"] if nproc > 1 else ["single"]:
            name = f"{mode}{nproc}"
            (work / name).mkdir()
            for stage in ("collect", "preprocess"):
                shutil.copytree(work / "data" / stage, work / name / stage)
            extra = [
                f"name={name}",
                f"parallel.fsdp={mode == 'fsdp'}",
                f"threads={max(1, 2 // nproc) if a.device == 'cpu' else 0}",
            ]
            run(["pretrain", *base, *extra, "--nproc", str(nproc)])
            s = json.loads((work / name / "pretrain" / "manifest.json").read_text())["summary"]
            rows.append(
                {
                    "mode": mode,
                    "processes": nproc,
                    "tok_per_s": s["tok_per_s"],
                    "peak_memory_mb_rank0": s["peak_memory_mb"],
                    "state_mb_rank0": s["state_mb_per_rank"],
                    "parameters": s["parameters"],
                }
            )
    base_row = rows[0]
    print(
        f"{'mode':<8}{'procs':>6}{'tok/s':>10}{'vs 1':>7}{'peak MB r0':>12}{'state MB r0':>13}"
        f"{'vs 1':>7}"
    )
    for r in rows:
        r["speedup"] = r["tok_per_s"] / base_row["tok_per_s"]
        r["state_ratio"] = r["state_mb_rank0"] / base_row["state_mb_rank0"]
        print(
            f"{r['mode']:<8}{r['processes']:>6}{r['tok_per_s']:>10.0f}{r['speedup']:>7.2f}"
            f"{r['peak_memory_mb_rank0']:>12.0f}{r['state_mb_rank0']:>13.1f}"
            f"{r['state_ratio']:>7.2f}"
        )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": a.device, "preset": a.preset, "rows": rows}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
