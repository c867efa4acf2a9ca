"""pretrain: train a model from scratch on the packed token shards.

    modelworks pretrain configs/quickstart.yaml            # one device
    modelworks pretrain configs/quickstart.yaml pretrain.steps=2000 model.n_layer=6

Reads `<run>/preprocess/tokens`; builds in `<run>/pretrain.partial/` (checkpoints, metrics.jsonl)
and, when done, renames it to `<run>/pretrain/` with the final `model.safetensors` + `config.json`.
Killed midway, the same command resumes from the last good checkpoint.
"""

from __future__ import annotations

from modelworks.config import Config, ConfigError
from modelworks.models.registry import build_model, model_config_from
from modelworks.preprocess.pack import TokenShards
from modelworks.progress import Reporter
from modelworks.runtime import resolve_device, setup
from modelworks.tasks.language_modeling import lm_loss
from modelworks.train.checkpoint import save_model
from modelworks.train.data import WindowLoader, sequential_batches
from modelworks.train.trainer import Trainer


def build_lm(cfg: Config, vocab_size: int):
    """The model the config describes, with vocabulary and context filled in from the data."""
    model_cfg = model_config_from(cfg.model)
    if getattr(model_cfg, "vocab_size", None) == 0:
        model_cfg.vocab_size = vocab_size
    elif model_cfg.vocab_size < vocab_size:
        raise ConfigError(
            f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's {vocab_size}"
        )
    if getattr(model_cfg, "context_len", None) == 0:
        model_cfg.context_len = cfg.pretrain.seq_len
    elif model_cfg.context_len < cfg.pretrain.seq_len:
        raise ConfigError(
            f"pretrain.seq_len={cfg.pretrain.seq_len} exceeds model.context_len="
            f"{model_cfg.context_len}"
        )
    return build_model(model_cfg)


def pretrain(cfg: Config, reporter: Reporter | None = None, resume: bool = True) -> dict:
    """Train, checkpoint, and publish `<run>/pretrain/`; returns the manifest."""
    from modelworks.pipeline import stage_writer

    reporter = reporter or Reporter()
    writer = stage_writer(cfg, "pretrain")
    writer.open(resume=resume)
    device = resolve_device(cfg.device)
    setup(cfg.threads, cfg.seed)
    data_dir = cfg.run_dir / "preprocess" / "tokens"
    train, val = TokenShards(data_dir, "train"), TokenShards(data_dir, "val")
    model = build_lm(cfg, train.vocab_size).to(device)
    p = cfg.pretrain
    loader = WindowLoader(train.tokens(), p.batch_size, p.seq_len, cfg.seed)
    val_tokens = val.tokens()
    val_seq = min(p.seq_len, len(val_tokens) - 1)
    reporter.info(
        f"[pretrain] {model.num_params():,} parameters on {device}; {len(train):,} train tokens, "
        f"{p.steps} steps of {p.batch_size * p.seq_len * p.grad_accum:,} tokens"
    )
    trainer = Trainer(
        model,
        lm_loss,
        loader,
        lambda: sequential_batches(val_tokens, p.batch_size, val_seq, p.eval_batches),
        p,
        writer.dir,
        device,
        reporter,
    )
    summary = trainer.fit(resume=resume)
    summary["parameters"] = model.num_params()
    save_model(writer.dir, model)
    writer.summary = summary
    return writer.commit()
