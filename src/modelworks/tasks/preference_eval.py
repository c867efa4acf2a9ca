"""Evaluate for the `dpo` and `grpo` tasks: the tuned model against its base on the held-out split.

- Pairs (dpo): the implicit reward beta * (log pi_tuned - log pi_base) of each chosen and rejected
  reply: reward accuracy and mean margin, and each model's own preference accuracy
  (log p(chosen) > log p(rejected)), with 95% bootstrap intervals over pairs.
- Answers (both, where records carry one): greedy replies to the prompts scored by exact match of
  the final answer after `####` (GSM8K's format), base and tuned, with bootstrap intervals, and
  sample replies side by side.
- Training curves from finetune/metrics.jsonl: DPO's reward accuracy and margin, GRPO's mean
  reward, KL and held-out accuracy by step.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from modelworks.artifacts import atomic_write_json
from modelworks.collect.preference import exact_match_reward
from modelworks.config import Config
from modelworks.progress import Reporter
from modelworks.tasks import preference_data as data
from modelworks.tasks.rollout import prompt_ids, sample


def greedy_answers(engine, fmt, records: list[dict], max_new: int) -> list[dict]:
    prompts = [prompt_ids(fmt, r["prompt"]) for r in records]
    outs = sample(engine, prompts, 1, max_new, 0.0, 0)
    rows = []
    for r, (ids, _) in zip(records, outs, strict=True):
        text = engine.decode(ids).strip()
        hit = exact_match_reward(r["prompt"][-1]["content"], text, r.get("answer"))
        rows.append(
            {"prompt": r["prompt"][-1]["content"], "answer": r.get("answer"), "reply": text,
             "hit": bool(hit)}
        )  # fmt: skip
    return rows


def _ci(values: np.ndarray, n_boot: int, seed: int):
    from modelworks.evaluate.metrics import bootstrap

    if not n_boot or len(values) < 2:
        return None
    return list(bootstrap(lambda i: float(values[i].mean()), len(values), n_boot, seed))


@torch.no_grad()
def pair_scores(model, pairs, pad_id: int, device, batch: int = 8) -> np.ndarray:
    """(N, 2) summed log-probs of each pair's chosen and rejected reply."""
    return data.reference_logps(model, pairs, pad_id, device, False, batch).numpy()


def evaluate_tuned(
    cfg: Config,
    run_dir: Path,
    out: Path,
    reporter: Reporter,
    ckpt,
    max_new_tokens: int,
    beta: float | None = None,
):
    """Metrics, report sections and images; pairs are scored when `beta` is given (dpo)."""
    from modelworks.base_model import load_base
    from modelworks.evaluate.checkpoint import choose_checkpoint
    from modelworks.evaluate.metrics import fmt_ci
    from modelworks.evaluate.report import EvaluateError, md_cell, md_table, training_table
    from modelworks.serve.engine import Engine
    from modelworks.tasks.chat import ChatFormat, load_chat_engine

    pairs = beta is not None
    ckpt = ckpt or choose_checkpoint(cfg)
    has_test = (Path(run_dir) / "preprocess" / "test.jsonl").is_file()
    split = cfg.evaluate.split or ("test" if has_test else "val")
    records = data.load_split(run_dir, split)[: cfg.evaluate.limit or None]
    if not records:
        raise EvaluateError(f"{run_dir}/preprocess/{split}.jsonl: no records to evaluate on")
    engine = load_chat_engine(run_dir, cfg.device, cfg.name, weights=ckpt.folder)
    fmt = ChatFormat(engine.tokenizer, engine.chat_template, engine.eot, engine.eos)
    base = load_base(cfg)
    base_model = base.model.to(engine.device).eval()
    n_boot, seed = cfg.evaluate.bootstrap, cfg.seed
    metrics: dict = {"split": split, "rows": len(records)}
    rows: list[tuple[str, str]] = [(f"{split} records", str(len(records)))]
    if pairs:
        max_len = min(cfg.finetune.seq_len, engine.context_len)
        enc, n_trunc = data.encode_pairs(fmt, records, max_len)
        tuned = pair_scores(engine.model, enc, fmt.bos, engine.device)
        ref = pair_scores(base_model, enc, fmt.bos, engine.device)
        rc, rr = beta * (tuned[:, 0] - ref[:, 0]), beta * (tuned[:, 1] - ref[:, 1])
        acc = (rc > rr).astype(float)
        pref_t = (tuned[:, 0] > tuned[:, 1]).astype(float)
        pref_b = (ref[:, 0] > ref[:, 1]).astype(float)
        metrics.update(
            reward_accuracy=float(acc.mean()),
            reward_accuracy_ci=_ci(acc, n_boot, seed),
            margin=float((rc - rr).mean()),
            margin_ci=_ci(rc - rr, n_boot, seed),
            chosen_logps=float(tuned[:, 0].mean()),
            rejected_logps=float(tuned[:, 1].mean()),
            base_chosen_logps=float(ref[:, 0].mean()),
            base_rejected_logps=float(ref[:, 1].mean()),
            preference_accuracy=float(pref_t.mean()),
            preference_accuracy_ci=_ci(pref_t, n_boot, seed),
            base_preference_accuracy=float(pref_b.mean()),
            base_preference_accuracy_ci=_ci(pref_b, n_boot, seed),
            truncated=n_trunc,
        )
        m = metrics
        rows += [
            (
                "reward accuracy (implicit reward, chosen > rejected)",
                fmt_ci(m["reward_accuracy"], m["reward_accuracy_ci"], 3),
            ),
            ("mean reward margin", fmt_ci(m["margin"], m["margin_ci"], 3)),
            (
                "log p(chosen) > log p(rejected): tuned",
                fmt_ci(m["preference_accuracy"], m["preference_accuracy_ci"], 3),
            ),
            (
                "log p(chosen) > log p(rejected): base",
                fmt_ci(m["base_preference_accuracy"], m["base_preference_accuracy_ci"], 3),
            ),
            (
                "chosen / rejected log-prob: tuned",
                f"{m['chosen_logps']:.2f} / {m['rejected_logps']:.2f}",
            ),
            (
                "chosen / rejected log-prob: base",
                f"{m['base_chosen_logps']:.2f} / {m['base_rejected_logps']:.2f}",
            ),
            ("pairs truncated to the context", str(n_trunc)),
        ]
    answerable = [r for r in records if r.get("answer") is not None]
    samples = ""
    if answerable:
        base_engine = Engine(base_model, engine.tokenizer, "base", engine.eot, engine.eos,
                             engine.chat_template, pack_weights=False)  # fmt: skip
        max_new = max_new_tokens
        after = greedy_answers(engine, fmt, answerable, max_new)
        before = greedy_answers(base_engine, fmt, answerable, max_new)
        hits_a = np.array([a["hit"] for a in after], float)
        hits_b = np.array([b["hit"] for b in before], float)
        diff = hits_a - hits_b
        metrics.update(
            exact_match=float(hits_a.mean()), exact_match_ci=_ci(hits_a, n_boot, seed),
            base_exact_match=float(hits_b.mean()), base_exact_match_ci=_ci(hits_b, n_boot, seed),
            exact_match_gain=float(diff.mean()), exact_match_gain_ci=_ci(diff, n_boot, seed),
            answered=len(after),
        )  # fmt: skip
        m = metrics
        rows += [
            (f"exact match after #### ({len(after)} greedy answers): tuned",
             fmt_ci(m["exact_match"], m["exact_match_ci"], 3)),
            ("exact match: base", fmt_ci(m["base_exact_match"], m["base_exact_match_ci"], 3)),
            ("gain (tuned - base, paired bootstrap)",
             fmt_ci(m["exact_match_gain"], m["exact_match_gain_ci"], 3)),
        ]  # fmt: skip
        atomic_write_json(out / "generations.json", {"tuned": after, "base": before})
        lines = ["| prompt | answer | base reply | tuned reply |", "|---|---|---|---|"]
        for a, b in list(zip(after, before, strict=True))[:8]:
            lines.append(
                f"| {md_cell(a['prompt'], 120)} | {a['answer']} | {md_cell(b['reply'], 120)} "
                f"| {md_cell(a['reply'], 120)} |"
            )
        samples = "\n".join(lines)
    trained = json.loads((run_dir / "finetune" / "manifest.json").read_text())["summary"]
    sections = [(f"Results ({split} split, tuned vs base; [95% bootstrap CI])", md_table(rows))]
    if samples:
        sections.append((f"Sample replies before / after ({split}, greedy)", samples))
    sections.append(("Training (finetune)", training_table(trained)))
    images = []
    if plot_training(run_dir / "finetune" / "metrics.jsonl", out / "preference_curves.png"):
        images.append(("preference_curves.png", "Training curves (per step and validation)"))
    reporter.info(
        f"[evaluate] {cfg.task} on {split}: "
        + (f"reward accuracy {metrics['reward_accuracy']:.3f}, " if pairs else "")
        + (
            f"exact match {metrics['exact_match']:.3f} (base {metrics['base_exact_match']:.3f})"
            if "exact_match" in metrics
            else ""
        )
    )
    return metrics, sections, images


CURVES = [
    ("train_reward_accuracy", "val_reward_accuracy", "DPO reward accuracy"),
    ("train_margin", "val_margin", "DPO reward margin"),
    ("train_reward", "val_mean_reward", "GRPO mean reward"),
    ("train_kl", None, "GRPO KL to the reference (k3)"),
    ("train_response_tokens", None, "GRPO response length (tokens)"),
]


def plot_training(metrics_path: Path, out: Path) -> bool:
    from modelworks.evaluate.report import plt, read_metrics, save_png

    records = read_metrics(metrics_path)
    panels = [c for c in CURVES if any(c[0] in r or (c[1] and c[1] in r) for r in records)]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), dpi=110)
    for ax, (train_key, val_key, title) in zip(np.atleast_1d(axes), panels, strict=True):
        for key, style, label in ((train_key, "-", "train step"), (val_key, "o-", "validation")):
            pts = [(r["step"], r[key]) for r in records if key and key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=label, linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_png(fig, out)
    return True
