"""Language modelling: next-token prediction with cross-entropy.

Data: the token shards of preprocess/text.py. Metrics: loss and perplexity on the validation
split, next to a unigram baseline on the same tokens; sample generations from fixed prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelworks.artifacts import atomic_write_json
from modelworks.config import Config
from modelworks.evaluate.metrics import perplexity, unigram_cross_entropy
from modelworks.evaluate.report import md_table, training_table
from modelworks.models.registry import build_model, model_config_from
from modelworks.preprocess.pack import TokenShards
from modelworks.preprocess.text import prepare_text
from modelworks.progress import Reporter
from modelworks.runtime import autocast_dtype
from modelworks.tasks import fill_from_data
from modelworks.train.data import WindowLoader, sequential_batches
from modelworks.train.trainer import TrainSetup

prepare = prepare_text


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy in float32 (logits may come out of autocast in bf16)."""
    inputs, targets = batch
    logits = model(inputs)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


@torch.no_grad()
def lm_eval_loss(model: nn.Module, batches, device) -> tuple[float, int]:
    """Token-weighted mean loss over `batches` and the number of target tokens."""
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        total += loss.item()
        count += y.numel()
    return total / max(count, 1), count


def build_lm(cfg: Config, vocab_size: int) -> nn.Module:
    """The model the config describes, with vocabulary and context filled in from the data."""
    model_cfg = model_config_from(cfg.model)
    fill_from_data(model_cfg, vocab_size=vocab_size, context_len=cfg.pretrain.seq_len)
    return build_model(model_cfg)


def setup_training(
    cfg: Config, run_dir: Path, device: torch.device, rank: int = 0, world: int = 1
) -> TrainSetup:
    data_dir = run_dir / "preprocess" / "tokens"
    train, val = TokenShards(data_dir, "train"), TokenShards(data_dir, "val")
    model = build_lm(cfg, train.vocab_size).to(device)
    p = cfg.pretrain
    loader = WindowLoader(train.tokens(), p.batch_size // world, p.seq_len, cfg.seed, rank, world)
    val_tokens = val.tokens()
    val_seq = min(p.seq_len, len(val_tokens) - 1)

    def validate(m: nn.Module) -> dict[str, float]:
        batches = sequential_batches(val_tokens, p.batch_size, val_seq, p.eval_batches)
        return {"val_loss": lm_eval_loss(m, batches, device)[0]}

    flops = model.estimate_flops(p.seq_len) if hasattr(model, "estimate_flops") else None
    return TrainSetup(
        model, lm_loss, loader, validate, p.batch_size // world * p.seq_len, "tok", flops
    )


def evaluate(cfg: Config, run_dir: Path, out: Path, reporter: Reporter):
    """Validation loss/perplexity vs unigram, and sample generations."""
    import json

    from modelworks.serve.engine import Engine

    engine = Engine.from_run(run_dir, cfg.device, cfg.name)
    model, device = engine.model, engine.device
    data = run_dir / "preprocess" / "tokens"
    train, val = TokenShards(data, "train"), TokenShards(data, "val")
    val_tokens = val.tokens()
    seq_len = min(model.cfg.context_len, len(val_tokens) - 1)
    if seq_len < 1:
        raise ValueError(f"{data}: the validation split has too few tokens to evaluate")

    def batches():
        return sequential_batches(
            val_tokens, cfg.pretrain.batch_size, seq_len, cfg.evaluate.batches
        )

    dtype = autocast_dtype(cfg.pretrain.dtype)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss, n_tokens = lm_eval_loss(model, batches(), device)
    targets = np.concatenate([y.flatten().numpy() for _, y in batches()])
    base = unigram_cross_entropy(train.tokens(), targets, train.vocab_size)
    metrics = {
        "split": "val",
        "tokens": n_tokens,
        "loss": loss,
        "perplexity": perplexity(loss),
        "unigram_loss": base,
        "unigram_perplexity": perplexity(base),
        "perplexity_ratio_vs_unigram": perplexity(loss) / perplexity(base),
    }
    reporter.info(
        f"[evaluate] val loss {loss:.4f} (perplexity {metrics['perplexity']:.1f}) vs unigram "
        f"{base:.4f} (perplexity {metrics['unigram_perplexity']:.1f}) on {n_tokens:,} tokens"
    )
    e = cfg.evaluate
    generations = []
    for i, prompt in enumerate(e.prompts):
        max_new = min(e.max_new_tokens, engine.context_len - 1 - len(engine.encode(prompt)))
        greedy = engine.generate(prompt, max_new, temperature=0.0)
        sampled = engine.generate(prompt, max_new, e.temperature, e.top_p, seed=cfg.seed + i)
        generations.append({"prompt": prompt, "greedy": greedy.text, "sampled": sampled.text})
    atomic_write_json(out / "generations.json", generations)

    pre = json.loads((run_dir / "preprocess" / "stats.json").read_text())
    trained = json.loads((run_dir / "pretrain" / "manifest.json").read_text())["summary"]
    return metrics, _sections(metrics, pre, trained, generations), []


def _sections(metrics: dict, pre: dict, trained: dict, generations: list[dict]):
    m = metrics
    results = md_table(
        [
            ("validation tokens", f"{m['tokens']:,}"),
            ("validation loss (nats/token)", f"{m['loss']:.4f}"),
            ("validation perplexity", f"{m['perplexity']:.2f}"),
            ("unigram baseline loss", f"{m['unigram_loss']:.4f}"),
            ("unigram baseline perplexity", f"{m['unigram_perplexity']:.2f}"),
            ("perplexity / unigram perplexity", f"{m['perplexity_ratio_vs_unigram']:.3f}"),
        ]
    )
    funnel = "\n".join(
        ["| step | documents in | documents out |", "|---|---|---|"]
        + [f"| {r['step']} | {r.get('in', 0)} | {r.get('out', 0)} |" for r in pre["funnel"]]
    )
    funnel += (
        f"\n\nTokens: {pre['tokens']['train']:,} train, {pre['tokens']['val']:,} validation; "
        f"vocabulary {pre['vocab_size']}."
    )
    samples = "\n\n".join(
        f"Prompt `{g['prompt']}`\n\n```\n[greedy] {g['prompt']}{g['greedy']}\n\n"
        f"[sampled] {g['prompt']}{g['sampled']}\n```"
        for g in generations
    )
    return [
        ("Results (validation split)", results),
        ("Data funnel", funnel),
        ("Training", training_table(trained)),
        ("Sample generations", samples),
    ]
