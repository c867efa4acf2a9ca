"""The planner's memory model: the config's GPT on the meta device, and the bytes a training step
holds per device (weights, gradients, optimizer states, buffers, activations, logits) at its peak,
following what autograd keeps for our exact block; tests/test_plan.py checks it against the real
trainer on CPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelworks.config import Config
from modelworks.plan_hardware import PlanError


def model_of(cfg: Config, vocab_size: int | None = None):
    """(architecture config, the model on the meta device: exact shapes, no memory). A vocabulary
    left at 0 is the tokenizer's: `vocab_size`, else preprocess.vocab_size (what it trains)."""
    import torch

    from modelworks.models.registry import build_model, model_config_from, name_of

    arch = model_config_from(cfg.model)
    if name_of(arch) != "gpt":
        raise PlanError(f"plan models the gpt architecture; model.name is {name_of(arch)!r}")
    if arch.vocab_size == 0:
        arch.vocab_size = vocab_size or cfg.preprocess.vocab_size
    if arch.context_len == 0:
        arch.context_len = cfg.pretrain.seq_len
    elif arch.context_len < cfg.pretrain.seq_len:
        raise PlanError(
            f"model.context_len={arch.context_len} < pretrain.seq_len={cfg.pretrain.seq_len}"
        )
    with torch.device("meta"):
        return arch, build_model(arch)


# what train/parallel.py's tensor-parallel plan splits: q/k/v/o and the SwiGLU matrices
TP_SHARDED = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def sdpa_saves_scores() -> bool:
    """Whether scaled_dot_product_attention on this CPU keeps (T x T) probabilities for backward
    (the math path) or one log-sum-exp per row (flash; what torch >= 2.2 picks on CPU)."""
    import torch
    import torch.nn.functional as F

    q = torch.zeros(1, 1, 4, 8, requires_grad=True)
    out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    return "Flash" not in type(out.grad_fn).__name__


def activations(
    arch, batch: int, seq: int, act_bytes: int, autocast: bool, tp: int = 1, scores: bool = False
) -> dict[str, float]:
    """Bytes autograd keeps for backward, per device, for one micro-batch of `batch` x `seq`.

    Per block (E = batch*seq tokens, d = d_model, f = ffn_hidden, H = n_head, a = act_bytes):
    - each RMSNorm keeps its fp32 input (the residual stream) and normalised output, and the
      linears after it keep their input: 12 E d per norm in fp32; under autocast each linear
      casts the norm output separately (only leaf weights are cached): 8 E d + a E d per linear;
    - attention: q and k after RoPE, v (repeated to all heads under GQA), the SDPA output and
      its contiguous copy for wo: 5 a E d, plus a fp32 log-sum-exp per head and row (flash); the
      math path keeps scaled q and k and the (T x T) probabilities per head instead, in fp32 on
      CPU whatever the autocast dtype;
    - SwiGLU: gate, silu(gate), up and their product: 4 a E f.
    Tensor parallelism splits attention and SwiGLU terms (heads and f) but not the norms.
    Head: the final norm (8 + a) E d; the loss works in fp32: the log-softmax output, its
    incoming and its outgoing gradient, live together at the start of backward: 12 E V.
    In a block's backward, SwiGLU's two input gradients add 2 a E f for a moment.
    """
    c = arch
    E, d, f, H, a = batch * seq, c.d_model, c.ffn_hidden, c.n_head, act_bytes
    norms = (16 + 5 * a if autocast else 24) * E * d
    attn = (16 * E * d + 4 * batch * H * seq * seq) if scores else (5 * a * E * d + 4 * E * H)
    return {
        "per_layer": norms + (attn + 4 * a * E * f) / tp,
        "checkpointed_per_layer": 4 * E * d,  # only the block's fp32 input is kept
        "head": (8 + a if autocast else 12) * E * d,
        "logits": 12 * E * c.vocab_size,
        "backward_transient": 2 * a * E * f / tp,
    }


@dataclass
class Job:
    """Everything the memory depends on besides the micro-batch."""

    arch: Any
    seq: int
    grad_accum: int
    strategy: str
    tp: int
    checkpointing: bool
    autocast: bool
    autocast_copies: bool  # autocast's low-precision weight copies, alive until backward
    fsdp_param_bytes: int
    optimizer_states: int  # fp32 tensors per parameter
    scores: bool
    gpu: bool
    n_local: float  # parameters held per device
    n_matmul: float  # matmul weights per device after TP (what autocast copies)
    n_block: float  # one block's parameters after TP
    n_root: float  # parameters outside the blocks
    largest: int  # elements of the largest parameter


def step_memory(j: Job, batch: int) -> dict[str, float]:
    """Peak bytes per device of a training step at micro-batch `batch`.

    Peak = weights + optimizer states + buffers + the largest of four moments: the start of
    backward (all saved activations and the loss's three fp32 logits tensors; gradients too when
    they persist across accumulated micro-batches), inside a block's backward (what the blocks
    keep, the block recomputed under checkpointing, SwiGLU's gradients, all gradients as an upper
    bound), the embedding's backward (all gradients and its dense gradient) and the optimizer step
    (all gradients and its temporaries)."""
    c, L = j.arch, j.arch.n_layer
    act = activations(c, batch, j.seq, 2 if j.autocast else 4, j.autocast, j.tp, j.scores)
    weights = grads = 4 * j.n_local
    buffers = 0.0
    if j.strategy == "ddp":
        buffers = 4 * j.n_local  # DDP's gradient buckets: a flat fp32 copy of the gradients
    elif j.strategy.startswith("fsdp"):  # unsharded root (kept), two blocks (prefetch) + grads
        buffers = j.fsdp_param_bytes * (j.n_root + 2 * j.n_block) + 4 * j.n_block
    copies = 2 * j.n_matmul if j.autocast_copies else 0.0  # bf16/fp16
    blocks = L * act["checkpointed_per_layer" if j.checkpointing else "per_layer"]
    start = blocks + act["head"] + act["logits"] + copies + (grads if j.grad_accum > 1 else 0)
    recomputed = act["per_layer"] if j.checkpointing else 0.0
    in_block = blocks + recomputed + act["backward_transient"] + grads
    embedding = grads + 4 * c.vocab_size * c.d_model
    # foreach AdamW (GPU) makes a temporary as large as all the states; on CPU one per tensor
    step = grads + 4 * (j.n_local if j.gpu else j.largest)
    optimizer = 4 * j.optimizer_states * j.n_local
    return {
        "weights": weights,
        "gradients": grads,
        "optimizer": optimizer,
        "buffers": buffers,
        "autocast_weight_copies": copies,
        "activations": blocks + act["head"],
        "logits": act["logits"],
        "activations_per_layer": act["per_layer"],
        "activations_per_layer_checkpointed": act["checkpointed_per_layer"],
        "peak": weights + optimizer + buffers + max(start, in_block, embedding, step),
    }


def largest_batch(j: Job, budget: float) -> int:
    """The largest micro-batch whose peak fits in `budget` bytes (0: not even one)."""
    lo, hi = 0, 1
    while hi <= 2**24 and step_memory(j, hi)["peak"] <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if step_memory(j, mid)["peak"] <= budget else (lo, mid)
    return lo
