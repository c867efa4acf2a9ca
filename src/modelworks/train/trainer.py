"""The one training loop: every training stage runs through `Trainer.fit`.

It owns: learning-rate schedule, gradient accumulation, clipping, autocast (bfloat16 falls back to
float16 on GPUs without it), TF32 for float32 on CUDA (pretrain.tf32), periodic validation,
early stopping and the best checkpoint, checkpointing with exact resume (model, optimizer, RNG,
data position), metrics JSONL (and TensorBoard), progress with tokens/s, MFU and ETA, and a final
summary. A task plugs in as a `TrainSetup`: model, loss function, loader and validation function.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn

from modelworks.artifacts import atomic_write_text
from modelworks.config import PretrainConfig
from modelworks.errors import TrainingError
from modelworks.progress import Reporter
from modelworks.runtime import (
    MfuMeter,
    autocast_dtype,
    matmul_precision,
    set_tf32,
    training_dtype,
)
from modelworks.train.checkpoint import (
    latest_good,
    load_checkpoint,
    save_checkpoint,
    save_full_model,
)
from modelworks.train.optim import build_optimizer, clip_grad_norm, lr_at
from modelworks.train.parallel import ParallelDims, barrier, parallelize, rank


class Loader(Protocol):
    def next_batch(self) -> tuple[torch.Tensor, ...]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainSetup:
    """What a task hands the trainer."""

    model: nn.Module
    loss_fn: Callable[[nn.Module, tuple], torch.Tensor]  # (model, batch) -> mean loss
    loader: Loader
    validate: Callable[[nn.Module], dict[str, float]]  # -> {"val_loss": ..., other metrics}
    units_per_batch: int  # tokens (language models) or examples per micro-batch
    unit: str = "tok"
    flops_per_unit: float | None = None  # training FLOPs per unit, for MFU
    # (model, optimizer) -> (what runs, what steps): a method that changes how gradients are
    # made, e.g. DP-SGD's per-sample clipping and noise (train/privacy.py); None: unchanged
    wrap: Callable | None = None
    # () -> {name: value}: the task's own numbers about the last step (a DPO step's reward
    # accuracy, a GRPO step's mean reward and KL), merged into each logged metrics line
    step_metrics: Callable[[], dict] | None = None


class Trainer:
    def __init__(
        self,
        setup: TrainSetup,
        cfg: PretrainConfig,
        out_dir: Path,
        device: torch.device,
        reporter: Reporter | None = None,
        parallel=None,
        dims: ParallelDims | None = None,
        mesh=None,
    ) -> None:
        self.setup, self.cfg, self.out_dir, self.device = setup, cfg, out_dir, device
        self.dims = dims or ParallelDims(1, 1, 1)
        self.is_main = rank() == 0
        self.model = setup.model  # the module whose parameters are saved (sharded under FSDP/TP)
        # what runs: checkpointed, tensor-parallel, compiled, FSDP/DDP-wrapped
        self.train_model = parallelize(setup.model, cfg, parallel, dims, mesh)
        self.reporter = (reporter or Reporter()) if self.is_main else _Silent()
        self.optimizer = build_optimizer(self.model, cfg)
        if setup.wrap is not None:
            self.train_model, self.optimizer = setup.wrap(self.train_model, self.optimizer)
        # bfloat16 where the GPU has it (compute capability 8+), else float16 with loss scaling
        cuda = device.type == "cuda"
        has_bf16 = not cuda or torch.cuda.get_device_capability(device)[0] >= 8
        self.dtype_name = training_dtype(cfg.dtype, has_bf16)
        if self.dtype_name != cfg.dtype:
            self.reporter.info(
                "[train] this GPU has no bfloat16: training in float16 with loss scaling "
                "(set pretrain.dtype=float16 to say so)"
            )
        self.dtype = autocast_dtype(self.dtype_name)
        # what the planner assumes too: float32 matmuls on TF32 tensor cores unless tf32=false
        self.precision = matmul_precision(device.type, self.dtype_name, cfg.tf32)
        if cuda:
            set_tf32(cfg.tf32)
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=self.dtype == torch.float16 and device.type == "cuda"
        )
        self.ckpt_root = out_dir / "checkpoints"
        self.metrics_path = out_dir / "metrics.jsonl"
        self.step = 0
        self.units_seen = 0
        self.best: float | None = None
        self.bad_checks = 0
        self.on_log = None  # called with every metrics line written (experiment tracking)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "step": self.step,
            "units_seen": self.units_seen,
            "best": self.best,
            "bad_checks": self.bad_checks,
            "loader": self.setup.loader.state_dict(),
            "rng_cpu": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def resume(self) -> Path | None:
        ckpt = latest_good(self.ckpt_root)
        if ckpt is None:
            self._truncate_metrics(0)
            return None
        state = load_checkpoint(ckpt, self.model, self.optimizer)
        self.setup.loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.units_seen = int(state["step"]), int(state["units_seen"])
        self.best, self.bad_checks = state["best"], int(state["bad_checks"])
        self._truncate_metrics(self.step)
        return ckpt

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines past the checkpoint, so a resumed run's log reads as one run."""
        if not self.is_main:
            return
        lines = []
        if self.metrics_path.is_file():
            for line in self.metrics_path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= step:
                        lines.append(line)
                except (ValueError, KeyError):
                    break  # a torn last line from a kill
        atomic_write_text(self.metrics_path, "".join(f"{x}\n" for x in lines))

    def _log(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.on_log is not None:
            self.on_log(record)
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, record["step"])

    # -- loop ----------------------------------------------------------------------------------
    @property
    def _autocast(self) -> bool:
        return self.dtype != torch.float32

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.model.eval()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self._autocast):
            metrics = self.setup.validate(self.model)
        self.model.train()
        return metrics

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.cfg.best_mode == "min" else value > self.best

    def _check(self, last_ckpt) -> bool:
        """Validate, log, keep the best model; returns True when early stopping says stop."""
        cfg = self.cfg
        metrics = self.validate()
        self._log({"step": self.step, **metrics})
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        self.reporter.info(f"[train] step {self.step}: {shown}")
        if cfg.best_metric not in metrics:
            raise TrainingError(
                f"pretrain.best_metric={cfg.best_metric!r} is not a validation metric of this "
                f"task; it reports {sorted(metrics)}"
            )
        value = metrics[cfg.best_metric]
        if self._improved(value):
            self.best, self.bad_checks = value, 0
            tmp = self.out_dir / "best.tmp"
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            save_full_model(tmp, self.model)  # collective when sharded
            if self.is_main:
                atomic_write_text(tmp / "best.json", json.dumps({"step": self.step, **metrics}))
                shutil.rmtree(self.out_dir / "best", ignore_errors=True)
                tmp.rename(self.out_dir / "best")
            barrier()
        else:
            self.bad_checks += 1
        return bool(cfg.early_stop_patience and self.bad_checks >= cfg.early_stop_patience)

    def fit(self, resume: bool = True) -> dict:
        cfg, setup = self.cfg, self.setup
        self._tb = None
        if cfg.tensorboard and self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise TrainingError(
                    "pretrain.tensorboard=true needs the tensorboard package: "
                    "pip install tensorboard"
                ) from None
            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
        ckpt = self.resume() if resume else None
        if not resume:
            self._truncate_metrics(0)
        if ckpt is not None:
            self.reporter.info(f"[train] resumed from {ckpt} at step {self.step}")
        self.train_model.train()
        units_per_step = setup.units_per_batch * cfg.grad_accum * self.dims.dp
        meter = MfuMeter(self.device, self.dtype, cfg.peak_tflops, cfg.tf32)
        warned = False
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.reporter.start(cfg.steps, "train", initial=self.step, unit="step")
        t_start, step_start = time.perf_counter(), self.step
        last_ckpt, stopped_early, last_metrics = ckpt, False, {}
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            lr = lr_at(self.step, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for _ in range(cfg.grad_accum):
                batch = tuple(t.to(self.device) for t in setup.loader.next_batch())
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self._autocast):
                    loss = setup.loss_fn(self.train_model, batch) / cfg.grad_accum
                self.scaler.scale(loss).backward()
                loss_sum += loss.item()
            if dist.is_initialized():  # the logged loss is the global batch's, as on 1 process
                total = torch.tensor([loss_sum], dtype=torch.float64, device=self.device)
                dist.all_reduce(total)
                loss_sum = total.item() / self.dims.world_size
            if not math.isfinite(loss_sum):
                where = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint yet"
                raise TrainingError(
                    f"loss is {loss_sum} at step {self.step + 1}; stopping ({where}); "
                    "lower pretrain.lr or check the data"
                )
            self.scaler.unscale_(self.optimizer)
            grad_norm = (
                clip_grad_norm(self.model.parameters(), cfg.grad_clip) if cfg.grad_clip else 0.0
            )
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.units_seen += units_per_step
            dt = time.perf_counter() - t0
            rate = units_per_step / dt
            mfu, warning = (
                meter(rate * setup.flops_per_unit) if setup.flops_per_unit else (None, "")
            )
            if warning and not warned:  # over 100%: the peak is wrong, and the user is told
                self.reporter.info(f"[train] warning: {warning}")
                warned = True
            last = self.step == cfg.steps
            if self.step % cfg.log_every == 0 or last:
                record = {
                    "step": self.step,
                    "loss": loss_sum,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    setup.unit: self.units_seen,
                    f"{setup.unit}_per_s": round(rate, 1),
                }
                if setup.step_metrics is not None:
                    record.update(setup.step_metrics())
                if mfu is not None:
                    record["mfu"] = round(mfu, 4)
                    if mfu > 1:
                        record["mfu_above_peak"] = True  # see the warning: the peak is too low
                self._log(record)
            if self.step % cfg.eval_every == 0 or last:
                stopped_early = self._check(last_ckpt)
                last = last or stopped_early
            if self.step % cfg.ckpt_every == 0 or last:
                last_ckpt = save_checkpoint(
                    self.ckpt_root,
                    self.step,
                    self.model,
                    self.optimizer,
                    self.state_dict(),
                    cfg.keep_last,
                )
            postfix = {"loss": f"{loss_sum:.3f}", f"{setup.unit}/s": f"{rate:,.0f}"}
            if mfu is not None:
                postfix["mfu"] = f"{100 * mfu:.1f}%" + (" (above peak!)" if mfu > 1 else "")
            self.reporter.update(1, **postfix)
            if stopped_early:
                self.reporter.info(
                    f"[train] early stop at step {self.step}: {cfg.best_metric} has not improved "
                    f"for {cfg.early_stop_patience} checks (best {self.best:.4f})"
                )
                break
        self.reporter.close()
        if self._tb is not None:
            self._tb.close()
        last_metrics = self._last_validation()
        seconds = time.perf_counter() - t_start
        steps_run = self.step - step_start
        return {
            "steps": self.step,
            "stopped_early": stopped_early,
            setup.unit: self.units_seen,
            "final_validation": last_metrics,
            f"best_{cfg.best_metric}": self.best,
            "seconds_this_process": round(seconds, 2),
            f"{setup.unit}_per_s": round(steps_run * units_per_step / seconds, 1)
            if seconds
            else None,
            "peak_memory_mb": peak_memory_mb(self.device),
            "state_mb_per_rank": round(self._state_bytes() / 2**20, 2),
            "resumed_from_step": None if ckpt is None else step_start,
        }

    def _state_bytes(self) -> int:
        """Parameters + gradients-to-be + optimizer states held by this rank (its shards only)."""

        def local(t):
            return t.to_local() if hasattr(t, "to_local") else t

        n = sum(local(p).numel() * local(p).element_size() for p in self.model.parameters())
        for state in self.optimizer.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    n += local(v).numel() * local(v).element_size()
        return n

    def _last_validation(self) -> dict:
        last = {}
        if not self.is_main:
            return last
        for line in self.metrics_path.read_text().splitlines():
            record = json.loads(line)
            if "val_loss" in record:
                last = {k: v for k, v in record.items() if k != "step"}
        return last


class _Silent(Reporter):
    """Ranks other than 0 say nothing: logging and progress happen once."""

    def info(self, msg: str) -> None:
        pass


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
