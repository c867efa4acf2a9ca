"""Sequential recommendation on the built-in stdlib data: SASRec against popularity and item-kNN.

Runs configs/recsys.yaml through the whole pipeline (collect: `stdlib_calls`, preprocess,
pretrain, evaluate) into a scratch runs folder, once per seed and training variant. The
evaluate stage scores the two baselines on the same test users in the same run (both learn from
the same training interactions as SASRec and read the same histories); this script collects
HR@K / NDCG@K for K = 5, 10, 20 under both protocols (full ranking over every item; 100 sampled
negatives), prints a table and writes JSON.

    python benchmarks/recsys.py                          # one seed, ~4 minutes on 2 cores
    python benchmarks/recsys.py --seeds 1337,1,2 --variants sampled_softmax,bce,full_softmax
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from _common import cpu_model  # benchmarks/ is on sys.path when a script runs

from modelworks import load_config, run

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "sampled_softmax": [],  # the config as shipped: 256 shared negatives + in-batch targets
    "full_softmax": ["tasks.recommendation.negatives=0"],
    "bce": ["tasks.recommendation.loss=bce"],
}
METHODS = {"sasrec": "SASRec", "popularity": "popularity", "item_knn": "item-kNN"}


def run_variant(variant: str, seed: int, runs_dir: Path, extra: list[str]) -> dict:
    threads = torch.get_num_threads()
    overrides = [f"runs_dir={runs_dir}", f"name=recsys-{variant}-{seed}", f"seed={seed}"]
    cfg = load_config(ROOT / "configs" / "recsys.yaml", overrides + VARIANTS[variant] + extra)
    wall = time.perf_counter()
    run(cfg)
    wall = time.perf_counter() - wall
    torch.set_num_threads(threads)
    metrics = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    stats = json.loads((cfg.run_dir / "preprocess" / "stats.json").read_text())
    trained = json.loads((cfg.run_dir / "pretrain" / "manifest.json").read_text())["summary"]
    sampled_key = next(k for k in metrics if k.startswith("sampled_"))
    return {
        "variant": variant,
        "seed": seed,
        "overrides": VARIANTS[variant] + extra,
        "data": {k: stats[k] for k in ("users", "items", "interactions", "mean_history")},
        "full": metrics["full"],
        sampled_key: metrics[sampled_key],
        "checkpoint": metrics["checkpoint"],
        "sasrec_parameters": trained.get("parameters"),
        "train_seconds": trained["seconds_this_process"],
        "wall_seconds": round(wall, 1),
    }


def table(rows: list[dict], ks=(5, 10, 20)) -> str:
    head = ["variant", "seed", "protocol", "method"]
    head += [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shown: set[tuple] = set()
    for r in rows:
        for protocol in [k for k in r if k == "full" or k.startswith("sampled_")]:
            for m, name in METHODS.items():
                if m != "sasrec" and (r["seed"], protocol, m) in shown:
                    continue  # the baselines do not depend on the SASRec variant
                shown.add((r["seed"], protocol, m))
                v = r[protocol][m]
                cells = [r["variant"] if m == "sasrec" else "-", str(r["seed"]), protocol, name]
                cells += [f"{v[f'hr@{k}']:.4f}" for k in ks] + [f"{v[f'ndcg@{k}']:.4f}" for k in ks]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1337", help="comma-separated seeds")
    ap.add_argument("--variants", default="sampled_softmax", help=",".join(VARIANTS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs-dir", default=None, help="keep the runs here (default: a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "recsys.json"))
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variant(s) {sorted(unknown)}; known: {sorted(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = [f"device={args.device}"]
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(args.runs_dir or tmp)
        rows = [run_variant(v, s, runs_dir, extra) for s in seeds for v in variants]
    print(table(rows))
    key = "ndcg@10"
    for r in rows:
        f = r["full"]
        wins = all(f["sasrec"][key] > f[b][key] for b in ("popularity", "item_knn"))
        print(
            f"{r['variant']} seed {r['seed']}: full-ranking NDCG@10 SASRec {f['sasrec'][key]:.4f}"
            f" vs popularity {f['popularity'][key]:.4f}, item-kNN {f['item_knn'][key]:.4f}: "
            f"{'SASRec beats both' if wins else 'SASRec does NOT beat both'}"
        )
    result = {
        "benchmark": "recsys",
        "config": "configs/recsys.yaml",
        "dataset": "stdlib_calls (Python stdlib functions -> called names), leave-one-out",
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "device": args.device,
        "torch": torch.__version__,
        "loadavg_before": [round(x, 2) for x in load],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "runs": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
