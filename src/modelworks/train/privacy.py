"""Differentially private training (DP-SGD) with Opacus, through the one trainer.

`DPSGD.wrap(model, optimizer)` is the trainer's `TrainSetup.wrap` hook: it returns Opacus's
`GradSampleModule` (per-sample gradients) and `DPOptimizer` (clips each example's gradient to
`max_grad_norm`, adds Gaussian noise of std `noise_multiplier * max_grad_norm`, then steps the
wrapped optimizer). An RDP accountant follows every step; `spent()` gives the epsilon reached at
the configured delta. With `target_epsilon` set, the noise multiplier is solved for so that the
planned steps end at that epsilon.

The accounting assumes each batch is a uniform sample of rate batch_size / n_train. The loader
draws fixed-size batches from a shuffled epoch rather than Poisson samples, the usual practical
approximation (as in most DP-SGD benchmarks); say so when quoting the figures.

Needs the `opacus` package (extra `[privacy]`).
"""

from __future__ import annotations

from torch import nn

from modelworks.errors import PrivacyError


class DPSGD:
    def __init__(
        self,
        *,
        noise_multiplier: float | None,
        target_epsilon: float | None,
        delta: float,
        max_grad_norm: float,
        batch_size: int,
        n_train: int,
        steps: int,
    ) -> None:
        try:
            from opacus.accountants import RDPAccountant
            from opacus.accountants.utils import get_noise_multiplier
        except ImportError:
            raise PrivacyError(
                "finetune.dp=true needs Opacus: pip install 'modelworks[privacy]' (or opacus)"
            ) from None
        if (noise_multiplier is None) == (target_epsilon is None):
            raise PrivacyError(
                "finetune.dp: set exactly one of dp_noise_multiplier and dp_target_epsilon"
            )
        if n_train <= batch_size:
            raise PrivacyError(f"DP-SGD needs more training examples ({n_train}) than a batch")
        self.sample_rate = batch_size / n_train
        self.delta, self.max_grad_norm, self.batch_size = delta, max_grad_norm, batch_size
        if noise_multiplier is None:
            noise_multiplier = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=self.sample_rate,
                steps=steps,
                accountant="rdp",
            )
        self.noise_multiplier = float(noise_multiplier)
        self.accountant = RDPAccountant()

    def wrap(self, model: nn.Module, optimizer):
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer
        from opacus.validators import ModuleValidator

        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise PrivacyError(f"finetune.dp: the model cannot be trained with DP-SGD: {errors[0]}")
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        dp_optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=self.batch_size,
            loss_reduction="mean",
        )
        dp_optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(self.sample_rate))
        return gsm, dp_optimizer

    def spent(self) -> dict:
        steps = sum(n for _, _, n in self.accountant.history) if self.accountant.history else 0
        epsilon = self.accountant.get_epsilon(self.delta) if steps else 0.0
        return {
            "dp_epsilon": round(float(epsilon), 4),
            "dp_delta": self.delta,
            "dp_noise_multiplier": round(self.noise_multiplier, 4),
            "dp_max_grad_norm": self.max_grad_norm,
            "dp_sample_rate": round(self.sample_rate, 6),
            "dp_steps": steps,
        }
