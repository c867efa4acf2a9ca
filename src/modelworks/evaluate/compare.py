"""Compare finished runs: the config keys that differ and the metrics side by side.

    modelworks compare runs/a runs/b [runs/c ...] [--out compare/]

Prints one Markdown table (config keys whose values differ, then every scalar metric of
evaluate/metrics.json, with its 95% interval when there is one). A section counts only for runs
that ran its stage (have its manifest): runs of different tasks show what each ran and set, not
the defaults of stages it never ran; keys are spelled as in a config file (`finetune.from`).
With --out, also writes `compare.md`, `compare.json` and `loss_curves.png` (training and
validation loss of every run, overlaid) into that folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from modelworks.artifacts import atomic_write_json, atomic_write_text
from modelworks.evaluate.report import EvaluateError, read_metrics, save_png


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and d and all(isinstance(v, dict) for v in d):
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


# the stages whose manifest says a config section was used; other sections are every run's
_SECTION_STAGES = {
    "collect": ("collect",),
    "preprocess": ("preprocess",),
    "model": ("pretrain",),  # a run fine-tuning another model does not build this one
    "pretrain": ("pretrain",),
    "parallel": ("pretrain", "finetune"),
    "finetune": ("finetune",),
    "evaluate": ("evaluate",),
}
_NOT_COMPARED = ("name", "runs_dir", "serve")  # where a run lives, how it is served


def _defaults() -> dict:
    """Every key's built-in default, flattened (the finetune section's too)."""
    from modelworks.config import FinetuneConfig, load_config

    data = load_config(None).model_dump(mode="json", by_alias=True)
    data["finetune"] = FinetuneConfig().model_dump(mode="json", by_alias=True)
    return _flatten(_user_keys(data))


def _user_keys(config: dict) -> dict:
    """A stored config.yaml with its keys as a user writes them: finetune.from, not from_; each
    collect source with its type and the options set away from that type's defaults (two
    sources of different types do not differ in options one of them does not have)."""
    finetune = config.get("finetune")
    if isinstance(finetune, dict) and "from_" in finetune:
        config["finetune"] = {("from" if k == "from_" else k): v for k, v in finetune.items()}
    collect = config.get("collect")
    if isinstance(collect, dict) and isinstance(collect.get("sources"), list):
        collect["sources"] = [_set_options(s) for s in collect["sources"]]
    return config


def _set_options(src):
    from modelworks.config import parse_source

    try:
        parsed = parse_source(src)
    except ValueError:  # an invalid stored source: shown as it is
        return src
    return {"type": parsed.type, **parsed.model_dump(mode="json", exclude_defaults=True)}


def _config_rows(configs: list[dict], ran: list[set[str]]) -> dict:
    """{key: [value per run, None where the run did not run the key's stage]} for the keys that
    differ between the runs that ran their stage, or, when not every run ran it, that a run set
    away from its default."""
    flat = [_flatten(c) for c in configs]
    defaults = _defaults()
    rows = {}
    for key in sorted(set().union(*flat)):
        top = key.split(".")[0]
        if top in _NOT_COMPARED:
            continue
        stages = _SECTION_STAGES.get(top)
        used = [stages is None or any(s in r for s in stages) for r in ran]
        values = [f.get(key) if u else None for f, u in zip(flat, used, strict=True)]
        seen = [json.dumps(v) for v, u in zip(values, used, strict=True) if u]
        differ = len(set(seen)) > 1
        default = json.dumps(defaults.get(key))
        if differ or (seen and not all(used) and any(v != default for v in seen)):
            rows[key] = values
    return rows


def _load_run(run: Path) -> tuple[dict, dict, list[dict]]:
    if not run.is_dir():
        raise EvaluateError(f"{run}: no such run folder")
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise EvaluateError(f"{cfg_path} does not exist: not a modelworks run")
    config = _user_keys(yaml.safe_load(cfg_path.read_text()) or {})
    metrics_path = run / "evaluate" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    stage = "finetune" if (run / "finetune" / "metrics.jsonl").is_file() else "pretrain"
    return config, metrics, read_metrics(run / stage / "metrics.jsonl")


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return json.dumps(v)[:40]
    return "—" if v is None else str(v)


def compare(runs: list[str | Path]) -> dict:
    """{"runs": [names], "config": {key: [values]}, "metrics": {name: [values]}, ...}"""
    runs = [Path(r) for r in runs]
    if len(runs) < 2:
        raise EvaluateError("compare: give two runs or more")
    loaded = [_load_run(r) for r in runs]
    ran = [{s.parent.name for s in r.glob("*/manifest.json")} for r in runs]
    differ = _config_rows([c for c, _, _ in loaded], ran)
    metric_names: list[str] = []
    for _, m, _ in loaded:
        for k, v in m.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in metric_names:
                metric_names.append(k)
            if isinstance(v, dict):  # harness tasks: {task: {acc: ...}}
                for sub, r in v.items():
                    for mk, mv in r.items() if isinstance(r, dict) else ():
                        name = f"{k}.{sub}.{mk}"
                        if isinstance(mv, float) and name not in metric_names:
                            metric_names.append(name)
    metrics = {
        name: [{"value": _get(m, name), "ci": _get(m, name + "_ci")} for _, m, _ in loaded]
        for name in metric_names
        if not name.endswith("_ci")
    }
    return {
        "runs": [r.name for r in runs],
        "paths": [str(r) for r in runs],
        "stages": [sorted(r) for r in ran],
        "config": differ,
        "metrics": metrics,
        "curves": [
            {
                "train": [(r["step"], r["loss"]) for r in rec if "loss" in r],
                "val": [(r["step"], r["val_loss"]) for r in rec if "val_loss" in r],
            }
            for _, _, rec in loaded
        ],
    }


def to_markdown(result: dict) -> str:
    head = "| | " + " | ".join(result["runs"]) + " |"
    sep = "|---" * (len(result["runs"]) + 1) + "|"
    lines = ["### Config (keys that differ or were set; — : a stage that run did not run)", ""]
    lines += [head, sep]
    if not result["config"]:
        lines.append("| (identical but for the name) |" + " |" * len(result["runs"]))
    for k, vals in result["config"].items():
        lines.append(f"| {k} | " + " | ".join(_fmt(v) for v in vals) + " |")
    lines += ["", "### Metrics (evaluate/metrics.json; [95% CI])", "", head, sep]
    for name, row in result["metrics"].items():
        cells = []
        for c in row:
            v, ci = c["value"], c["ci"]
            text = _fmt(v)
            if ci and isinstance(ci, list) and len(ci) == 2:
                text += f" [{ci[0]:.4g}, {ci[1]:.4g}]"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_loss_curves(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for i, (name, c) in enumerate(zip(result["runs"], result["curves"], strict=True)):
        color = f"C{i % 10}"
        if c["train"]:
            ax.plot(
                *zip(*c["train"], strict=True), color=color, lw=1, alpha=0.7, label=f"{name} train"
            )
        if c["val"]:
            ax.plot(
                *zip(*c["val"], strict=True), "o--", color=color, lw=1.5, label=f"{name} validation"
            )
    ax.set_title("Loss curves")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def run_cli(runs: list[str], out: str | None) -> str:
    """The `modelworks compare` command: returns the table to print; writes files with --out."""
    result = compare(runs)
    md = to_markdown(result)
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "compare.md", md + "\n\n![loss curves](loss_curves.png)\n")
        atomic_write_json(folder / "compare.json", result)
        plot_loss_curves(result, folder / "loss_curves.png")
        md += f"\n\nwrote {folder / 'compare.md'}, compare.json, loss_curves.png"
    return md
