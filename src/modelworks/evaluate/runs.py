"""`modelworks runs`: every run under a runs folder, one line each.

    modelworks runs [RUNS_DIR]          # default: runs/

Name, task, the stages done (complete manifests), the key metric of evaluate/metrics.json
(accuracy, then BLEU, NDCG@10, perplexity...), and the size on disk. `modelworks compare A B`
then sets two of them side by side (names are looked up under the same folder).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

STAGES = ("collect", "preprocess", "pretrain", "finetune", "evaluate")
KEY_METRICS = ("accuracy", "bleu", "ndcg@10", "hr@10", "perplexity", "loss")


def run_row(run: Path) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    done = []
    for stage in STAGES:
        manifest = run / stage / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text()).get("status") == "complete":
            done.append(stage)
    metric = None
    metrics = run / "evaluate" / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        flat = {k.lower(): v for k, v in m.items() if isinstance(v, int | float)}
        key = next((k for k in KEY_METRICS if k in flat), None)
        metric = (key, flat[key]) if key else None
    size = sum(p.stat().st_size for p in run.rglob("*") if p.is_file() and not p.is_symlink())
    return {"name": run.name, "task": cfg.get("task", "?"), "stages": done, "metric": metric,
            "bytes": size}  # fmt: skip


def list_runs(runs_dir: str | Path = "runs") -> list[dict]:
    root = Path(runs_dir)
    runs = (
        sorted(p for p in root.iterdir() if (p / "config.yaml").is_file()) if root.is_dir() else []
    )
    return [run_row(r) for r in runs]


def format_runs(rows: list[dict], runs_dir: str | Path = "runs") -> str:
    if not rows:
        return f"no runs under {runs_dir}/ (start one with `modelworks run`)"
    lines = ["| run | task | stages done | key metric | size |", "|---|---|---|---|---|"]
    for r in rows:
        metric = f"{r['metric'][0]} {r['metric'][1]:.4g}" if r["metric"] else "-"
        lines.append(
            f"| {r['name']} | {r['task']} | {', '.join(r['stages']) or '-'} | {metric} | "
            f"{r['bytes'] / 2**20:.1f} MB |"
        )
    return "\n".join(lines)
