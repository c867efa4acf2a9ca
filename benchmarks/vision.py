"""Image classification on scikit-learn's digits: MLP, CNN and ViT against logistic regression.

Each network runs its ready config (configs/mlp.yaml, cnn.yaml, vit.yaml) through the whole
pipeline (collect, preprocess, pretrain, evaluate) into a scratch runs folder. The baseline is
scikit-learn's LogisticRegression on the raw 8x8 pixels of the same preprocess stage (same
`preprocess.images.split_of` split: same seed and fractions), fitted on the training split and
scored on the same held-out test images. Prints a table and writes JSON.

    python benchmarks/vision.py                       # all three, about 3 minutes on 2 cores
    python benchmarks/vision.py --models cnn,vit --out /tmp/vision.json
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

from modelworks import collect, load_config, preprocess, run
from modelworks.tasks import task_options
from modelworks.tasks.image_classification import load_split

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("mlp", "cnn", "vit")


def run_config(name: str, runs_dir: Path, extra: list[str]) -> dict:
    threads = torch.get_num_threads()  # restored after: `threads: 1` in one config must not leak
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", [f"runs_dir={runs_dir}", *extra])
    wall, cpu = time.perf_counter(), time.process_time()
    run(cfg)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    used_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    metrics = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    trained = json.loads((cfg.run_dir / "pretrain" / "manifest.json").read_text())
    _, test_y, _ = load_split(cfg.run_dir, "test")
    return {
        "model": name,
        "config": f"configs/{name}.yaml",
        "image_size": task_options(cfg).image_size,
        "parameters": trained["summary"].get("parameters"),
        "steps": trained["summary"]["steps"],
        "threads": used_threads,
        "test_accuracy": metrics["accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        "test_examples": metrics["examples"],
        "train_seconds": round(trained["seconds"], 1),
        "pipeline_seconds": round(wall, 1),
        "pipeline_cpu_seconds": round(cpu, 1),
        "_test_y": test_y,
    }


def logistic_regression(runs_dir: Path, extra: list[str]) -> dict:
    """The baseline on the raw 8x8 pixels, normalised as the networks see them."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    cfg = load_config(
        ROOT / "configs" / "cnn.yaml",
        [
            f"runs_dir={runs_dir}",
            "name=logreg-digits",
            "tasks.image_classification.image_size=8",
            *extra,
        ],
    )
    collect(cfg)
    preprocess(cfg)
    x, y, _ = load_split(cfg.run_dir, "train")
    tx, ty, _ = load_split(cfg.run_dir, "test")
    clf = LogisticRegression(max_iter=5000)
    t0, c0 = time.perf_counter(), time.process_time()
    # one BLAS thread: on a busy 2-core machine two spinning OpenBLAS threads made this fit 70x
    # slower (8 s instead of 0.1 s), which says nothing about the method
    with threadpool_limits(limits=1):
        clf.fit(x.flatten(1).numpy(), y.numpy())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    pred = clf.predict(tx.flatten(1).numpy())
    return {
        "model": "logreg",
        "config": "sklearn LogisticRegression(max_iter=5000) on 8x8 pixels",
        "image_size": 8,
        "parameters": int(clf.coef_.size + clf.intercept_.size),
        "steps": int(clf.n_iter_.max()),
        "threads": 1,
        "test_accuracy": float((pred == ty.numpy()).mean()),
        "test_examples": len(ty),
        "train_seconds": round(wall, 2),  # the fit alone
        "train_cpu_seconds": round(cpu, 2),
        "pipeline_seconds": None,
        "pipeline_cpu_seconds": None,
        "_test_y": ty,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| model | image | params | steps | test acc | train s | pipeline s (wall / cpu) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pipe = "-" if r["pipeline_seconds"] is None else f"{r['pipeline_seconds']}"
        pipe_cpu = "-" if r["pipeline_cpu_seconds"] is None else f"{r['pipeline_cpu_seconds']}"
        lines.append(
            f"| {r['model']} | {r['image_size']}x{r['image_size']} | {r['parameters']:,} | "
            f"{r['steps']} | {r['test_accuracy']:.4f} | {r['train_seconds']} | "
            f"{pipe} / {pipe_cpu} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: mlp,cnn,vit")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vision.json"))
    ap.add_argument("--runs-dir", default=None, help="where runs go (default: a temp folder)")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. seed=1")
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - set(MODELS)
    if unknown:
        ap.error(f"--models: unknown {sorted(unknown)}; choose from {list(MODELS)}")
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(args.runs_dir or tmp)
        rows = [logistic_regression(runs_dir, args.overrides)]
        rows += [run_config(m, runs_dir, args.overrides) for m in models]
    same_split = all(torch.equal(r["_test_y"], rows[0]["_test_y"]) for r in rows)
    if not same_split:
        raise SystemExit("the runs' test splits differ; the comparison would not be fair")
    for r in rows:
        del r["_test_y"]
    print(table(rows))
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "overrides": args.overrides,
        "same_test_split": same_split,
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
