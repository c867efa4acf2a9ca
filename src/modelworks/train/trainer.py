"""The one training loop: pretraining and (later) fine-tuning both run through `Trainer.fit`.

It owns: learning-rate schedule, gradient accumulation, clipping, autocast, periodic validation,
checkpointing with exact resume (model, optimizer, RNG, data position), metrics JSONL, progress.
Tasks plug in as a loss function `loss_fn(model, inputs, targets) -> scalar`.
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors.torch import load_model as st_load_model
from torch import nn

from modelworks.artifacts import atomic_write_text
from modelworks.config import PretrainConfig
from modelworks.errors import ModelworksError
from modelworks.progress import Reporter
from modelworks.runtime import autocast_dtype
from modelworks.tasks.language_modeling import lm_eval_loss
from modelworks.train.checkpoint import latest_good, load_state, save_checkpoint
from modelworks.train.data import WindowLoader
from modelworks.train.optim import build_adamw, cosine_lr


class TrainingError(ModelworksError, RuntimeError):
    pass


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        loader: WindowLoader,
        val_batches: Callable[[], Iterable],
        cfg: PretrainConfig,
        out_dir: Path,
        device: torch.device,
        reporter: Reporter | None = None,
    ) -> None:
        self.model, self.loss_fn, self.loader = model, loss_fn, loader
        self.val_batches = val_batches
        self.cfg, self.out_dir, self.device = cfg, out_dir, device
        self.reporter = reporter or Reporter()
        self.optimizer = build_adamw(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
        self.dtype = autocast_dtype(cfg.dtype)
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=self.dtype == torch.float16 and device.type == "cuda"
        )
        self.ckpt_root = out_dir / "checkpoints"
        self.metrics_path = out_dir / "metrics.jsonl"
        self.step = 0
        self.tokens_seen = 0

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "optimizer": self.optimizer.state_dict(),
            "loader": self.loader.state_dict(),
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
        st_load_model(self.model, str(ckpt / "model.safetensors"), device=str(self.device))
        state = load_state(ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        self.loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self._truncate_metrics(self.step)
        return ckpt

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines past the checkpoint, so a resumed run's log reads as one run."""
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
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- loop ----------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float:
        self.model.eval()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self._autocast):
            loss, _ = lm_eval_loss(self.model, self.val_batches(), self.device)
        self.model.train()
        return loss

    @property
    def _autocast(self) -> bool:
        return self.dtype != torch.float32

    def fit(self, resume: bool = True) -> dict:
        cfg = self.cfg
        ckpt = self.resume() if resume else None
        if not resume:
            self._truncate_metrics(0)
        if ckpt is not None:
            self.reporter.info(f"[pretrain] resumed from {ckpt} at step {self.step}")
        self.model.train()
        tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum
        self.reporter.start(cfg.steps, "pretrain", initial=self.step, unit="step")
        t_start, step_start = time.perf_counter(), self.step
        last_ckpt, val_loss, best_val = ckpt, None, math.inf
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            lr = cosine_lr(self.step, cfg.steps, cfg.lr, cfg.min_lr, cfg.warmup_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for _ in range(cfg.grad_accum):
                x, y = self.loader.next_batch()
                x, y = x.to(self.device), y.to(self.device)
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self._autocast):
                    loss = self.loss_fn(self.model, x, y) / cfg.grad_accum
                self.scaler.scale(loss).backward()
                loss_sum += loss.item()
            if not math.isfinite(loss_sum):
                where = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint yet"
                raise TrainingError(
                    f"loss is {loss_sum} at step {self.step + 1}; stopping ({where}); "
                    "lower pretrain.lr or check the data"
                )
            self.scaler.unscale_(self.optimizer)
            grad_norm = (
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip).item()
                if cfg.grad_clip
                else 0.0
            )
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.tokens_seen += tokens_per_step
            dt = time.perf_counter() - t0
            last = self.step == cfg.steps
            if self.step % cfg.log_every == 0 or last:
                self._log(
                    {
                        "step": self.step,
                        "loss": loss_sum,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens": self.tokens_seen,
                        "tok_per_s": round(tokens_per_step / dt, 1),
                    }
                )
            if self.step % cfg.eval_every == 0 or last:
                val_loss = self.validate()
                best_val = min(best_val, val_loss)
                self._log({"step": self.step, "val_loss": val_loss})
                self.reporter.info(
                    f"[pretrain] step {self.step}: train loss {loss_sum:.4f}, "
                    f"val loss {val_loss:.4f}"
                )
            if self.step % cfg.ckpt_every == 0 or last:
                last_ckpt = save_checkpoint(
                    self.ckpt_root, self.step, self.model, self.state_dict(), cfg.keep_last
                )
            self.reporter.update(1, loss=f"{loss_sum:.3f}", tok_s=f"{tokens_per_step / dt:,.0f}")
        self.reporter.close()
        seconds = time.perf_counter() - t_start
        steps_run = self.step - step_start
        return {
            "steps": self.step,
            "tokens": self.tokens_seen,
            "final_val_loss": val_loss,
            "best_val_loss": None if best_val == math.inf else best_val,
            "seconds_this_process": round(seconds, 2),
            "tok_per_s": round(steps_run * tokens_per_step / seconds, 1) if seconds else None,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "resumed_from_step": None if ckpt is None else step_start,
        }
