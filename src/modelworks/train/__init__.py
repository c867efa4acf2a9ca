"""pretrain: train a model from scratch on the preprocessed data, through the one trainer.

    modelworks pretrain configs/quickstart.yaml                       # one process
    modelworks pretrain configs/quickstart.yaml --nproc 2             # DDP, 2 processes
    modelworks pretrain configs/quickstart.yaml --nproc 4 parallel.fsdp=true parallel.tp=2
    torchrun --nnodes 2 --node-rank 0 --rdzv-endpoint HOST:29500 --nproc-per-node 8 \\
        -m modelworks pretrain configs/quickstart.yaml parallel.fsdp=true

Builds in `<run>/pretrain.partial/` (checkpoints/, best/, metrics.jsonl) and, when done, renames
it to `<run>/pretrain/` with the final `model.safetensors` + `config.json` (consolidated from the
shards when sharded). Killed midway, the same command resumes from the last good checkpoint,
with the same or a different number of processes.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from modelworks.config import Config
from modelworks.progress import Reporter
from modelworks.runtime import resolve_device, setup
from modelworks.tasks import get_task, stage_options
from modelworks.train.checkpoint import save_full_model
from modelworks.train.parallel import barrier, init_distributed, rank
from modelworks.train.tracking import open_tracker, track_stage
from modelworks.train.trainer import Trainer


def pretrain(cfg: Config, reporter: Reporter | None = None, resume: bool = True) -> dict | None:
    """Train, checkpoint, and publish `<run>/pretrain/`; returns the manifest (on rank 0)."""
    from modelworks.lifecycle import stage_writer

    reporter = reporter or Reporter()
    dims, mesh = init_distributed(cfg.parallel)
    try:
        writer = stage_writer(cfg, "pretrain", stage_options(cfg, "pretrain"))
        if rank() == 0:
            writer.open(resume=resume)
        barrier()
        device = resolve_device(cfg.device)
        if device.type == "cuda" and dims.distributed:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        setup(cfg.threads, cfg.seed)
        dims.local_batch(cfg.pretrain.batch_size)  # fails early, on every rank, if it won't split
        dp_rank = mesh["dp"].get_local_rank() if mesh is not None else 0
        train = get_task(cfg.task).setup_training(
            cfg, cfg.run_dir, device, rank=dp_rank, world=dims.dp
        )
        model = train.model
        n_params = sum(p.numel() for p in model.parameters())
        reporter.info(
            f"[pretrain] {type(model).__name__}, {n_params:,} parameters on {device} "
            f"x {dims.world_size} process(es) (dp={dims.dp}, tp={dims.tp}, "
            f"{'fsdp' if dims.fsdp else 'ddp' if dims.dp > 1 else 'single'}); "
            f"{cfg.pretrain.steps} steps of "
            f"{train.units_per_batch * cfg.pretrain.grad_accum * dims.dp:,} {train.unit}"
        )
        trainer = Trainer(
            train, cfg.pretrain, writer.dir, device, reporter, cfg.parallel, dims, mesh
        )
        tracker = open_tracker(cfg) if rank() == 0 else None
        if tracker is not None:
            trainer.on_log = lambda record: tracker.log_metrics(record, "pretrain")
        summary = trainer.fit(resume=resume)
        summary["parameters"] = n_params
        summary["processes"] = dims.world_size
        save_full_model(writer.dir, model)
        if rank() != 0:
            barrier()
            return None
        reporter.info(
            f"[pretrain] done: {n_params:,} parameters, {summary['steps']} steps, "
            f"{summary[train.unit]:,} {train.unit}, {summary['seconds_this_process']:.0f} s, "
            f"{summary[f'{train.unit}_per_s']} {train.unit}/s, peak memory "
            f"{summary['peak_memory_mb']:.0f} MB"
        )
        writer.summary = summary
        manifest = writer.commit()
        if tracker is not None:
            track_stage(cfg, "pretrain", tracker)
            tracker.close()
        barrier()
        return manifest
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
