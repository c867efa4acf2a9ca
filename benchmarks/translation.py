"""Translation (Tatoeba English -> Chinese): a small GPT pretrained on the corpus' train split, then
fine-tuned on prompt -> target, against a word-by-word dictionary from the same train split.

Runs configs/translation.yaml through the whole pipeline (collect, preprocess, pretrain,
finetune, evaluate) into a scratch runs folder, pointed at the Tatoeba pairs (20,133 lines of
`english<TAB>chinese`, CC BY 2.0 FR, see ../shared/data/README.md). The split is by distinct
English sentence (seeded): 85% train / 5% val / 10% test; scores are on the held-out test split:
corpus BLEU (sacrebleu, tokenize=zh) and chrF, greedy and beam search, with bootstrap 95% CIs.
Without the Tatoeba file it runs the built-in synthetic numbers corpus instead (and says so).

    python benchmarks/translation.py --quick --threads 1   # ~15 min on 2 busy CPU cores
    python benchmarks/translation.py --quick --set tasks.translation.pretrain_text=pairs
    python benchmarks/translation.py                       # longer training, whole test split
    python benchmarks/translation.py --device cuda --pretrain-steps 4000 --finetune-steps 4000
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
TATOEBA = ROOT.parent / "shared" / "data" / "tatoeba-cmn-eng" / "cmn.txt"


def load() -> str:
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "load average unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(TATOEBA), help="english<TAB>chinese pairs")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda...")
    ap.add_argument("--quick", action="store_true", help="short training, 300 test pairs")
    ap.add_argument("--pretrain-steps", type=int, default=None)
    ap.add_argument("--finetune-steps", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="test pairs translated (0 = all)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--runs", default=None, help="runs folder (default: a temporary one)")
    ap.add_argument(
        "--set", action="append", default=[], help="extra config override KEY=VALUE (repeatable)"
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "translation.json"))
    args = ap.parse_args()
    quick = args.quick
    pre_steps = args.pretrain_steps or (400 if quick else 1500)
    ft_steps = args.finetune_steps or (600 if quick else 2000)
    limit = args.limit if args.limit is not None else (300 if quick else 0)
    data = Path(args.data)
    real = data.is_file()
    overrides = [
        f"device={args.device}",
        f"threads={args.threads}",
        f"pretrain.steps={pre_steps}",
        f"finetune.steps={ft_steps}",
        f"evaluate.limit={limit}",
        f"pretrain.eval_every={max(pre_steps // 4, 1)}",
        f"finetune.eval_every={max(ft_steps // 4, 1)}",
    ]
    if real:
        overrides += [
            "name=tatoeba-en-zh",
            "collect.sources.0.dataset=",
            f"collect.sources.0.paths=[{data.resolve()}]",
            "collect.sources.0.columns=[en, zh]",
            "collect.sources.0.source_field=en",
            "collect.sources.0.target_field=zh",
            "preprocess.vocab_size=4096",
            "evaluate.max_new_tokens=40",
        ]
    else:
        print(f"{data} not found: running the built-in synthetic numbers corpus instead")
    overrides += args.set
    before = load()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            ROOT / "configs" / "translation.yaml", [f"runs_dir={args.runs or tmp}"] + overrides
        )
        wall = time.perf_counter()
        run(cfg)
        wall = time.perf_counter() - wall
        m = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
        pre = json.loads((cfg.run_dir / "preprocess" / "manifest.json").read_text())["summary"]
        trained = {
            s: json.loads((cfg.run_dir / s / "manifest.json").read_text())["summary"]
            for s in ("pretrain", "finetune")
        }
        samples = [
            json.loads(line)
            for line in (cfg.run_dir / "evaluate" / "translations.jsonl")
            .read_text()
            .splitlines()[:8]
        ]
    rows = []
    for key, label in (
        ("greedy", "GPT pretrain+finetune, greedy"),
        ("beam", f"GPT pretrain+finetune, beam {m['beam_size']}"),
        ("baseline", "word-by-word dictionary (train split)"),
    ):
        rows.append(
            {
                "system": label,
                "bleu": round(m[f"{key}_bleu"], 2),
                "bleu_ci": [round(v, 2) for v in m.get(f"{key}_bleu_ci", [])],
                "chrf": round(m[f"{key}_chrf"], 2),
                "chrf_ci": [round(v, 2) for v in m.get(f"{key}_chrf_ci", [])],
            }
        )
    lines = ["| system | BLEU [95% CI] | chrF [95% CI] |", "|---|---|---|"]
    for r in rows:
        bci = "[{}, {}]".format(*r["bleu_ci"]) if r["bleu_ci"] else ""
        cci = "[{}, {}]".format(*r["chrf_ci"]) if r["chrf_ci"] else ""
        lines.append(f"| {r['system']} | {r['bleu']} {bci} | {r['chrf']} {cci} |")
    base = rows[2]
    ratios = {
        "beam_chrf_over_dictionary": round(rows[1]["chrf"] / max(base["chrf"], 1e-9), 3),
        "greedy_chrf_over_dictionary": round(rows[0]["chrf"] / max(base["chrf"], 1e-9), 3),
        "beam_bleu_over_dictionary": round(rows[1]["bleu"] / max(base["bleu"], 1e-9), 3),
    }
    text = "\n".join(lines)
    print(text)
    print(
        f"chrF ratio model(beam)/dictionary: {ratios['beam_chrf_over_dictionary']}; "
        f"BLEU ratio: {ratios['beam_bleu_over_dictionary']}; {m['examples']} test pairs, "
        f"BLEU tokenize={m['bleu_tokenize']}; pipeline {wall:.0f} s"
    )
    result = {
        "benchmark": "translation",
        "data": str(data) if real else "built-in numbers corpus (Tatoeba file not found)",
        "direction": "en->zh" if real else "digits->English words",
        "split": "seeded, by distinct source sentence; 85% train / 5% val / 10% test (held out)",
        "quick": quick,
        "overrides": overrides,
        "date": time.strftime("%Y-%m-%d"),
        "hardware": cpu_model() if cfg.device in ("auto", "cpu") else cfg.device,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_load_before": before,
        "cpu_load_after": load(),
        "pipeline_seconds": round(wall, 1),
        "pairs": pre,
        "pretrain": {
            k: trained["pretrain"].get(k)
            for k in ("steps", "parameters", "seconds_this_process", "best_val_loss")
        },
        "finetune": {
            k: trained["finetune"].get(k)
            for k in ("steps", "seconds_this_process", "best_val_loss", "train_truncated")
        },
        "evaluate": {
            k: m[k]
            for k in (
                "examples",
                "bleu_tokenize",
                "beam_size",
                "length_penalty",
                "max_new_tokens",
                "prompts_truncated",
                "seconds",
            )
        },
        "rows": rows,
        "ratios": ratios,
        "samples": samples,
        "table": text,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
