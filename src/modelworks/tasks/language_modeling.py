"""Language modelling: next-token prediction with cross-entropy.

Data: the token shards of preprocess/text.py. Metrics: loss and perplexity on the validation
split, next to a unigram baseline on the same tokens; sample generations from fixed prompts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelworks.artifacts import atomic_write_json
from modelworks.config import Config, ConfigError
from modelworks.errors import EvaluateError
from modelworks.evaluate.metrics import fmt_ci, perplexity, unigram_cross_entropy
from modelworks.evaluate.report import funnel_section, md_table, training_table
from modelworks.models.registry import build_model, fill_from_data, model_config_from
from modelworks.preprocess.pack import ShardError, TokenShards
from modelworks.preprocess.text import prepare_text
from modelworks.preprocess.tokenizer import load_tokenizer
from modelworks.progress import Reporter
from modelworks.runtime import autocast_dtype
from modelworks.tasks.base import Task, TestData
from modelworks.train.data import WindowLoader, sequential_batches
from modelworks.train.trainer import TrainSetup

if TYPE_CHECKING:
    from modelworks.evaluate.checkpoint import Checkpoint

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
    p, seed = cfg.pretrain, cfg.seed
    return window_setup(model, train.tokens(), val.tokens(), p, seed, device, rank, world)


def window_setup(
    model: nn.Module, train_tokens, val_tokens, p, seed: int, device, rank: int = 0, world: int = 1
) -> TrainSetup:
    """Next-token training on random windows of `train_tokens`, validated on the first
    `p.eval_batches` sequential windows of `val_tokens` (`p`: the pretrain or finetune section)."""
    loader = WindowLoader(train_tokens, p.batch_size // world, p.seq_len, seed, rank, world)
    val_seq = min(p.seq_len, len(val_tokens) - 1)

    def validate(m: nn.Module) -> dict[str, float]:
        batches = sequential_batches(val_tokens, p.batch_size, val_seq, p.eval_batches)
        return {"val_loss": lm_eval_loss(m, batches, device)[0]}

    flops = model.estimate_flops(p.seq_len) if hasattr(model, "estimate_flops") else None
    return TrainSetup(
        model, lm_loss, loader, validate, p.batch_size // world * p.seq_len, "tok", flops
    )


def setup_finetune(cfg: Config, run_dir: Path, device: torch.device, base) -> tuple:
    """Continued pretraining (domain adaptation): the base decoder trained further, by next-token
    prediction, on this run's token shards, which must use the base's tokenizer
    (`preprocess.tokenizer: <the base>`)."""
    from modelworks.models.gpt import GPT

    spec = cfg.finetune.from_
    if not isinstance(base.model, GPT):
        raise ConfigError(
            f"finetune.from={spec!r} is a {type(base.model).__name__}; language_modeling "
            "continues a decoder (a gpt run or model folder, or a Llama-family folder)"
        )
    own = load_tokenizer(run_dir / "preprocess" / "tokenizer.json")
    if base.tokenizer is None or base.tokenizer.get_vocab() != own.get_vocab():
        raise ConfigError(
            f"finetune.from={spec!r}: this run's token shards were made with another "
            f"tokenizer than the base's; set preprocess.tokenizer: {spec} and preprocess again"
        )
    model, ft = base.model, cfg.finetune
    if ft.seq_len > model.cfg.context_len:
        raise ConfigError(
            f"finetune.seq_len={ft.seq_len} exceeds the base's context of {model.cfg.context_len}"
        )
    data_dir = run_dir / "preprocess" / "tokens"
    train, val = TokenShards(data_dir, "train"), TokenShards(data_dir, "val")
    setup = window_setup(model.to(device), train.tokens(), val.tokens(), ft, cfg.seed, device)
    was_training = model.training
    base_val = setup.validate(model.eval())["val_loss"]  # the base on the new domain, before
    model.train(was_training)
    return setup, {"base_val_loss": base_val, "base_val_perplexity": perplexity(base_val)}


def evaluate(
    cfg: Config, run_dir: Path, out: Path, reporter: Reporter, ckpt: Checkpoint | None = None
):
    """Loss, perplexity and bits-per-byte of `ckpt` (evaluate/checkpoint.py; default: the one it
    chooses) on `evaluate.split` (default test when the run has one, else val) with bootstrap
    CIs over documents, next to a unigram baseline; harness tasks; sample generations;
    attention maps."""
    import json

    from modelworks.evaluate.checkpoint import choose_checkpoint
    from modelworks.evaluate.harness import run_tasks, tasks_section
    from modelworks.evaluate.lm import LMScorer, document_scores
    from modelworks.evaluate.metrics import bits_per_byte, ratio_ci
    from modelworks.evaluate.report import EvaluateError
    from modelworks.serve.engine import Engine

    ckpt = ckpt or choose_checkpoint(cfg)
    engine = Engine.from_run(run_dir, cfg.device, cfg.name, weights=ckpt.folder)
    model = engine.model
    data = run_dir / "preprocess" / "tokens"
    split = cfg.evaluate.split or ("test" if _has_tokens(data, "test") else "val")
    train, held = TokenShards(data, "train"), TokenShards(data, split)
    if len(held) == 0:
        raise EvaluateError(f"{data}: the {split!r} split is empty; nothing to evaluate on")
    e = cfg.evaluate
    max_tokens = e.batches * cfg.pretrain.batch_size * cfg.pretrain.seq_len
    scorer = LMScorer(
        model,
        engine.tokenizer,
        held.eot_id,
        cfg.pretrain.batch_size,
        autocast_dtype(cfg.pretrain.dtype),
    )
    nats, n_tok, n_bytes, targets = document_scores(
        scorer, list(held.documents()), held.eot_id, max_tokens
    )
    if n_tok.sum() == 0:
        raise EvaluateError(f"{data}: the {split!r} split has no tokens to evaluate on")
    loss = float(nats.sum() / n_tok.sum())
    boot = {"n_boot": e.bootstrap, "seed": cfg.seed}
    loss_ci = ratio_ci(nats, n_tok, **boot) if e.bootstrap else None
    bpb_ci = ratio_ci(nats / np.log(2), n_bytes, **boot) if e.bootstrap else None
    base = unigram_cross_entropy(train.tokens(), targets, train.vocab_size)
    metrics = {
        "split": split,
        "rows": len(nats),
        "documents": len(nats),
        "tokens": int(n_tok.sum()),
        "bytes": int(n_bytes.sum()),
        "loss": loss,
        "perplexity": perplexity(loss),
        "bits_per_byte": bits_per_byte(float(nats.sum()), int(n_bytes.sum())),
        "unigram_loss": base,
        "unigram_perplexity": perplexity(base),
        "perplexity_ratio_vs_unigram": perplexity(loss) / perplexity(base),
    }
    if loss_ci is not None:
        metrics["loss_ci"] = list(loss_ci)
        metrics["perplexity_ci"] = [perplexity(v) for v in loss_ci]
        metrics["bits_per_byte_ci"] = list(bpb_ci)
        metrics["ci_level"] = 0.95
    reporter.info(
        f"[evaluate] {split} loss {loss:.4f} (perplexity {metrics['perplexity']:.1f}, "
        f"{metrics['bits_per_byte']:.3f} bits/byte) vs unigram {base:.4f} (perplexity "
        f"{metrics['unigram_perplexity']:.1f}) on {metrics['tokens']:,} tokens"
    )
    sections_extra = []
    if e.tasks:
        task_metrics = run_tasks(scorer, e.tasks, e.bootstrap, cfg.seed, out)
        metrics["tasks"] = task_metrics
        sections_extra.append(("Tasks", tasks_section(task_metrics)))
    generations = []
    for i, prompt in enumerate(e.prompts):
        max_new = min(e.max_new_tokens, engine.context_len - 1 - len(engine.encode(prompt)))
        greedy = engine.generate(prompt, max_new, temperature=0.0)
        sampled = engine.generate(prompt, max_new, e.temperature, e.top_p, seed=cfg.seed + i)
        generations.append({"prompt": prompt, "greedy": greedy.text, "sampled": sampled.text})
    atomic_write_json(out / "generations.json", generations)

    pre = json.loads((run_dir / "preprocess" / "stats.json").read_text())
    trained = json.loads((ckpt.stage_dir / "manifest.json").read_text())["summary"]
    if "base_val_loss" in trained:  # a fine-tune: how the base did on this data before it
        metrics["base_val_loss"] = trained["base_val_loss"]
        metrics["base_val_perplexity"] = trained["base_val_perplexity"]
    sections = _sections(metrics, pre, trained, generations) + sections_extra
    images = []
    if e.prompts:
        from modelworks.evaluate.explain import report_section

        section, images = report_section(model, engine.tokenizer, e.prompts[0], out, engine.eot)
        sections.append(section)
    return metrics, sections, images


def _has_tokens(data: Path, split: str) -> bool:
    try:
        return len(TokenShards(data, split)) > 0
    except ShardError:  # the run has no such split
        return False


def _sections(metrics: dict, pre: dict, trained: dict, generations: list[dict]):
    m = metrics
    results = md_table(
        [
            (
                f"{m['split']} documents / tokens / bytes",
                f"{m['documents']:,} / {m['tokens']:,} / {m['bytes']:,}",
            ),
            ("loss (nats/token)", fmt_ci(m["loss"], m.get("loss_ci"))),
            ("perplexity", fmt_ci(m["perplexity"], m.get("perplexity_ci"), 2)),
            ("bits per byte", fmt_ci(m["bits_per_byte"], m.get("bits_per_byte_ci"))),
            ("unigram baseline loss", f"{m['unigram_loss']:.4f}"),
            ("unigram baseline perplexity", f"{m['unigram_perplexity']:.2f}"),
            ("perplexity / unigram perplexity", f"{m['perplexity_ratio_vs_unigram']:.3f}"),
        ]
        + (
            [("base model before fine-tuning: validation perplexity", f"{base_ppl:.2f}")]
            if (base_ppl := m.get("base_val_perplexity")) is not None
            else []
        )
    )
    funnel = funnel_section(pre)
    samples = "\n\n".join(
        f"Prompt `{g['prompt']}`\n\n```\n[greedy] {g['prompt']}{g['greedy']}\n\n"
        f"[sampled] {g['prompt']}{g['sampled']}\n```"
        for g in generations
    )
    return [
        (f"Results ({m['split']} split; [95% bootstrap CI over documents])", results),
        ("Data funnel", funnel),
        ("Training", training_table(trained)),
        ("Sample generations", samples),
    ]


def serve_routes(app, run_dir: Path, cfg, device: str) -> None:
    """The OpenAI endpoints (completions, chat, embeddings, tokenize...) for the run's model,
    with the chat template stored with it."""
    from modelworks.chat_template import run_chat_template
    from modelworks.serve.engine import Engine, engine_options
    from modelworks.serve.lm_routes import add_lm_routes

    def load():
        engine = Engine.from_run(run_dir, device, cfg.model_name, **engine_options(cfg))
        engine.chat_template = run_chat_template(run_dir)
        return engine

    add_lm_routes(app, load)


def prepare_test(run: Config, run_dir: Path, shadow: Path, pre: Path) -> dict:
    """Language models: the run's cleaning steps, then its tokenizer, into `test` shards."""
    import pyarrow.parquet as pq

    from modelworks.preprocess.pack import ShardWriter, token_dtype, write_meta
    from modelworks.preprocess.runner import finish, run_steps
    from modelworks.preprocess.text import build_steps
    from modelworks.preprocess.tokenizer import load_tokenizer

    own = run_dir / "preprocess" / "tokens"
    meta = json.loads((own / "meta.json").read_text())
    tokens = pre / "tokens"
    tokens.mkdir()
    for f in own.iterdir():  # the train (baseline) and val shards, read-only
        if f.name != "meta.json" and not f.name.startswith("test_"):
            os.symlink(f.resolve(), tokens / f.name)
    steps = [s for s in build_steps(run) if s.name != "decontaminate"]
    source = shadow / "collect" / "documents.parquet"

    def docs():
        for batch in pq.ParquetFile(source).iter_batches(batch_size=1024):
            yield from batch.to_pylist()

    work = shadow / "steps"
    work.mkdir()
    kept = list(run_steps(steps, docs, work, work / "_work"))
    funnel = finish(steps, work / "_work")
    tok = load_tokenizer(pre / "tokenizer.json")
    eot = meta["eot_id"]
    sw = ShardWriter(tokens, "test", token_dtype(tok.get_vocab_size()), run.preprocess.shard_tokens)
    for enc in tok.encode_batch([d["text"] for d in kept], add_special_tokens=False):
        sw.add([*enc.ids, eot])
    splits = {**{k: v for k, v in meta["splits"].items() if k != "test"}, "test": sw.close()}
    write_meta(tokens, token_dtype(tok.get_vocab_size()), meta["vocab_size"], eot, splits)
    if not kept:
        raise EvaluateError(f"--data: no document is left after the run's cleaning steps {funnel}")
    return {"rows": 0, "labels": {}, "documents": len(kept), "funnel": funnel}


TASK = Task(
    name="language_modeling",
    prepare=prepare,
    setup_training=setup_training,
    evaluate=evaluate,
    setup_finetune=setup_finetune,
    serve_routes=serve_routes,
    test_data=TestData("documents", "a text source (files, python_docs, hf...)", prepare_test),
)
