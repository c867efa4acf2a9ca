"""Parallelism applied from outside the model, torchtitan-style.

`parallelize(model, cfg, dims)` applies, in order: activation checkpointing, tensor parallelism
(column-wise q/k/v and gate/up, row-wise o and down, over the `tp` mesh dimension), torch.compile,
then data parallelism: FSDP2 (`fully_shard` per block, then the root) or DDP, over `dp`. Models
never import torch.distributed.

    modelworks pretrain configs/quickstart.yaml --nproc 2                    # DDP on 2 processes
    modelworks pretrain configs/quickstart.yaml --nproc 4 parallel.fsdp=true parallel.tp=2
    torchrun --nproc-per-node 8 -m modelworks pretrain configs/quickstart.yaml parallel.fsdp=true
"""

from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from modelworks.errors import ParallelError


@dataclass(frozen=True)
class ParallelDims:
    """The device mesh's degrees, validated against the world size (testable without processes)."""

    dp: int
    tp: int
    world_size: int
    fsdp: bool = False

    @classmethod
    def from_config(cls, cfg, world_size: int) -> ParallelDims:
        tp = cfg.tp
        if world_size % tp:
            raise ParallelError(
                f"parallel.tp={tp} does not divide the world size {world_size}; "
                "choose a tp that divides the number of processes"
            )
        dp = cfg.dp or world_size // tp
        if dp * tp != world_size:
            raise ParallelError(
                f"parallel.dp={dp} x parallel.tp={tp} = {dp * tp} processes, but the world "
                f"size is {world_size}; make dp x tp equal the number of processes"
            )
        return cls(dp, tp, world_size, cfg.fsdp)

    def local_batch(self, batch_size: int) -> int:
        """pretrain.batch_size is global (summed over data-parallel ranks), so the same config
        trains, and resumes, the same way on any number of processes."""
        if batch_size % self.dp:
            raise ParallelError(
                f"pretrain.batch_size={batch_size} does not divide over {self.dp} data-parallel "
                "ranks; make it a multiple of the data-parallel degree"
            )
        return batch_size // self.dp

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def check_model(self, model: nn.Module) -> None:
        self.check_arch(getattr(model, "cfg", None))

    def check_arch(self, arch_cfg) -> None:
        """The architecture (its config dataclass) has a tensor-parallel plan whose sizes the
        degree divides; checked before any process starts and again on the built model."""
        if self.tp == 1:
            return
        _, plan = tp_plan_for(arch_cfg)
        sizes = plan.divisible(arch_cfg)
        if any(v % self.tp for v in sizes.values()):
            parts = " and ".join(f"{k}={v}" for k, v in sizes.items())
            raise ParallelError(f"parallel.tp={self.tp} must divide {parts}")


def init_distributed(parallel_cfg) -> tuple[ParallelDims, object | None]:
    """Join the process group torchrun set up (or none, on a single process) and build the mesh."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dims = ParallelDims.from_config(parallel_cfg, world)
    if world == 1:
        return dims, None
    from torch.distributed.device_mesh import init_device_mesh

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = parallel_cfg.backend
        if backend == "auto":
            backend = "nccl" if device_type == "cuda" else "gloo"
        # a rank that dies makes the others fail after `timeout_s` instead of hanging forever
        timeout = datetime.timedelta(seconds=parallel_cfg.timeout_s)
        dist.init_process_group(backend, timeout=timeout)
    mesh = init_device_mesh(device_type, (dims.dp, dims.tp), mesh_dim_names=("dp", "tp"))
    return dims, mesh


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each transformer block in backward instead of storing its activations.

    Works on any model with a `blocks` ModuleList; patches the instances' `forward`, so parameter
    names (and so checkpoints) are unchanged. Returns the number of blocks wrapped.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ParallelError(
            f"activation checkpointing needs a model with a `blocks` ModuleList; "
            f"{type(model).__name__} has none"
        )
    for block in blocks:
        inner = block.forward
        block.forward = functools.partial(checkpoint, inner, use_reentrant=False)
    return len(blocks)


@dataclass(frozen=True)
class TPPlan:
    """How one architecture splits over a tensor-parallel mesh: the styles for each block's
    submodules (built when used: they import torch.distributed), and the config fields the
    degree must divide."""

    styles: Callable[[], dict]
    divisible: Callable[[object], dict[str, int]]


def _llama_styles() -> dict:
    """Megatron-style: each rank holds n_head/tp query heads, n_kv_head/tp KV heads and
    ffn_hidden/tp of the MLP; one all-reduce after attention and one after the MLP."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    return {
        "attn.wq": ColwiseParallel(),
        "attn.wk": ColwiseParallel(),
        "attn.wv": ColwiseParallel(),
        "attn.wo": RowwiseParallel(),
        "mlp.w_gate": ColwiseParallel(),
        "mlp.w_up": ColwiseParallel(),
        "mlp.w_down": RowwiseParallel(),
    }


# registered architecture name (models/registry.py) -> its plan; a new architecture adds a line
TP_PLANS: dict[str, TPPlan] = {
    "gpt": TPPlan(
        _llama_styles,
        lambda c: {"model.n_head": c.n_head, "model.n_kv_head": c.n_kv_head},
    ),
}


def tp_plan_for(arch_cfg) -> tuple[str, TPPlan]:
    """(registered name, plan) for a model's config dataclass; one line when there is none."""
    from modelworks.models.registry import ModelError, name_of

    try:
        arch = name_of(arch_cfg)
    except ModelError:
        arch = type(arch_cfg).__name__
    if arch not in TP_PLANS:
        raise ParallelError(
            f"tensor parallelism has plans for {', '.join(sorted(TP_PLANS))}, not {arch} "
            "(add one to train/parallel.TP_PLANS)"
        )
    return arch, TP_PLANS[arch]


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> None:
    """Each block of `model` split by its architecture's plan (TP_PLANS)."""
    from torch.distributed.tensor.parallel import parallelize_module

    _, plan = tp_plan_for(getattr(model, "cfg", None))
    styles = plan.styles()
    for block in model.blocks:
        parallelize_module(block, tp_mesh, styles)


def apply_fsdp(model: nn.Module, dp_mesh, cfg) -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.param_dtype]
    kwargs = {"mesh": dp_mesh, "mp_policy": MixedPrecisionPolicy(dtype, torch.float32)}
    if cfg.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for block in getattr(model, "blocks", []):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


def parallelize(model: nn.Module, train_cfg, parallel_cfg=None, dims=None, mesh=None) -> nn.Module:
    """The module the training loop calls. `model` itself stays the one whose parameters are
    saved; under FSDP/TP those parameters become DTensor shards of the same modules."""
    if dims is not None:
        dims.check_model(model)
    if train_cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if dims is not None and dims.tp > 1:
        apply_tensor_parallel(model, mesh["tp"])
    run = torch.compile(model) if train_cfg.compile else model
    if dims is None or dims.dp == 1:
        return run
    if dims.fsdp:
        apply_fsdp(model, mesh["dp"], parallel_cfg)
        return run
    from torch.nn.parallel import DistributedDataParallel as DDP

    if dims.tp > 1:
        raise ParallelError("tensor parallelism combines with parallel.fsdp=true, not with DDP")
    return DDP(run, process_group=mesh["dp"].get_group())
