"""evaluate: validation loss and perplexity vs a unigram baseline, sample generations, a report.

    modelworks evaluate configs/quickstart.yaml

Reads `<run>/pretrain/` and `<run>/preprocess/`; writes `<run>/evaluate/`: `metrics.json`,
`generations.json`, `loss.png`, `report.md`, `report.html`.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from modelworks.artifacts import atomic_write_json
from modelworks.config import Config
from modelworks.evaluate.metrics import perplexity, unigram_cross_entropy
from modelworks.evaluate.report import md_table, plot_loss, read_metrics, write_report
from modelworks.preprocess.pack import TokenShards
from modelworks.progress import Reporter
from modelworks.runtime import autocast_dtype, setup
from modelworks.serve.engine import Engine
from modelworks.tasks.language_modeling import lm_eval_loss
from modelworks.train.data import sequential_batches


def evaluate(cfg: Config, reporter: Reporter | None = None) -> dict:
    """Measure the trained model on the validation split and write the report."""
    from modelworks.pipeline import stage_writer

    reporter = reporter or Reporter()
    writer = stage_writer(cfg, "evaluate")
    writer.open()
    out = writer.dir
    try:
        setup(cfg.threads, cfg.seed)
        run = cfg.run_dir
        engine = Engine.from_run(run, cfg.device, cfg.name)
        model, device = engine.model, engine.device
        data = run / "preprocess" / "tokens"
        train, val = TokenShards(data, "train"), TokenShards(data, "val")
        val_tokens = val.tokens()
        seq_len = min(model.cfg.context_len, len(val_tokens) - 1)
        if seq_len < 1:
            raise ValueError(f"{data}: the validation split has too few tokens to evaluate")
        batch = cfg.pretrain.batch_size
        n_batches = cfg.evaluate.batches

        def batches():
            return sequential_batches(val_tokens, batch, seq_len, n_batches)

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
        atomic_write_json(out / "metrics.json", metrics)
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

        records = read_metrics(run / "pretrain" / "metrics.jsonl")
        plot_loss(records, out / "loss.png", baseline=base)
        pre = json.loads((run / "preprocess" / "stats.json").read_text())
        trained = json.loads((run / "pretrain" / "manifest.json").read_text())["summary"]
        write_report(
            out,
            f"modelworks report: {cfg.name}",
            _sections(metrics, pre, trained, generations),
            "loss.png",
        )
    except BaseException:
        writer.discard()
        raise
    writer.summary = metrics
    return writer.commit()


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
    training = md_table(
        [
            ("parameters", f"{trained.get('parameters', 0):,}"),
            ("steps", str(trained.get("steps"))),
            ("tokens seen", f"{trained.get('tokens', 0):,}"),
            ("throughput (tokens/s)", str(trained.get("tok_per_s"))),
            ("peak RSS (MB)", str(trained.get("peak_rss_mb"))),
        ]
    )
    samples = "\n\n".join(
        f"Prompt `{g['prompt']}`\n\n```\n[greedy] {g['prompt']}{g['greedy']}\n\n"
        f"[sampled] {g['prompt']}{g['sampled']}\n```"
        for g in generations
    )
    return [
        ("Results (validation split)", results),
        ("Data funnel", funnel),
        ("Training", training),
        ("Sample generations", samples),
    ]
