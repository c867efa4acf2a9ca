"""Reinforcement learning with verifiable rewards: GRPO (Shao et al. 2024, DeepSeekMath).

    modelworks pull smollm2-135m-instruct
    modelworks run configs/grpo.yaml              # word problems, reward: exact final answer

Each step takes `finetune.batch_size` prompts, samples `group_size` replies to each through the
serving engine (tasks/rollout.py: continuous batching, KV cache) from the current weights, scores
them with the reward function, and normalises the rewards within each prompt's group (the
advantage). The loss is the PPO-clipped ratio to the sampling policy times the advantage, minus
`kl_coef` times the k3 estimate of KL to the reference model (the start: with LoRA, the model with
its adapters off; else a frozen copy), averaged per reply (train/preference.py). A rollout is
reused for `updates_per_rollout` optimizer steps (the clip matters from the second on).

Rewards: `exact_match` (the built-in: 1 when the number after the reply's last `####` equals the
record's answer) or the import path of a function `my_pkg.rewards:fn(prompt, completion, answer)
-> float`. A reward that raises or returns a non-number is logged in one line naming the function
and the prompt; that sample gets its group's mean (advantage 0), and the step goes on.

Logged per step: mean reward, KL, response length, clipped share. Validation: greedy accuracy
(mean reward) on `val_prompts` val records; `val_loss` is 1 - that. Evaluate: held-out
exact match before (the base) and after, with bootstrap intervals, and sample replies.
"""

from __future__ import annotations

import copy
import importlib
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelworks.collect.preference import exact_match_reward
from modelworks.config import Config, ConfigError
from modelworks.progress import Reporter
from modelworks.tasks import preference_data as data
from modelworks.tasks.base import Task, TaskOptions, option, tunes_only
from modelworks.tasks.rollout import policy_engine, prompt_ids, sample
from modelworks.train.data import EpochSampler, _Sampled
from modelworks.train.preference import (
    IGNORE,
    adapters_off,
    group_advantages,
    grpo_token_loss,
    token_logps,
)
from modelworks.train.trainer import TrainSetup

log = logging.getLogger("modelworks")


class Options(TaskOptions):
    group_size: int = option(4, stage="finetune", ge=2, description="G: samples per prompt")
    clip_eps: float = option(0.2, stage="finetune", gt=0, description="PPO clip of the ratio")
    kl_coef: float = option(0.04, stage="finetune", ge=0, description="weight of the k3 KL penalty")
    reward: str = option(
        "exact_match", stage="finetune",
        description="exact_match (number after ####) or my_pkg.module:function",
    )  # fmt: skip
    max_new_tokens: int = option(
        48, stage=("finetune", "evaluate"), ge=1, description="tokens per sampled reply"
    )
    temperature: float = option(1.0, stage="finetune", gt=0, description="sampling temperature")
    updates_per_rollout: int = option(
        1, stage="finetune", ge=1, description="optimizer steps on each rollout (mu)"
    )
    val_prompts: int = option(
        32, stage="finetune", ge=1, description="val records answered greedily at each check"
    )


def options(cfg: Config) -> Options:
    return TASK.options_from(cfg)


def prepare(cfg: Config, run_dir: Path, out: Path, reporter: Reporter) -> dict:
    return data.prepare(cfg, run_dir, out, reporter, pairs=False)


def load_reward(spec: str) -> Callable:
    if spec == "exact_match":
        return exact_match_reward
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(
            f"tasks.grpo.reward={spec!r}: exact_match or an import path module:function"
        )
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"tasks.grpo.reward={spec!r}: cannot import it ({e})") from None
    if not callable(fn):
        raise ConfigError(f"tasks.grpo.reward={spec!r} is not a function")
    return fn


def score(fn: Callable, spec: str, prompt: str, completion: str, answer) -> float:
    """The reward, or NaN (logged in one line) when the function raises or returns no number."""
    try:
        value = fn(prompt, completion, answer)
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise TypeError(f"returned {type(value).__name__} {value!r}, not a number")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"returned {value}")
        return value
    except Exception as e:
        short = prompt if len(prompt) < 80 else prompt[:77] + "..."
        log.warning("reward %s failed on prompt %r: %s: %s", spec, short, type(e).__name__, e)
        return float("nan")


class PromptLoader(_Sampled):
    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < batch_size:
            raise ConfigError(f"{n} training prompts are fewer than one batch of {batch_size}")
        self.sampler = EpochSampler(n, batch_size, seed)

    def next_batch(self):
        return (torch.from_numpy(np.asarray(self.sampler.next_indices(), dtype=np.int64)),)


def rollout_rows(prompts: list[list[int]], outs, eos: int, pad_id: int):
    """(inputs, targets) rows prompt + reply (+ the end token when the reply stopped), targets
    only on the reply; and each reply's length."""
    rows = []
    for k, (ids, reason) in enumerate(outs):
        p = prompts[k]
        reply = ids + ([eos] if reason == "stop" else [])
        seq = p + reply
        rows.append((seq[:-1], [IGNORE] * (len(p) - 1) + reply))
    return data.pad_rows(rows, pad_id)


def setup_finetune(cfg: Config, run_dir: Path, device: torch.device, base) -> tuple:
    opts = options(cfg)
    ft = cfg.finetune
    fmt = data.format_for_base(cfg, run_dir, base)
    reward_fn = load_reward(opts.reward)
    train = data.load_split(run_dir, "train")
    val = data.load_split(run_dir, "val")[: opts.val_prompts]
    model = base.model.to(device)
    room = model.cfg.context_len - opts.max_new_tokens - 1
    n_trunc = 0
    for r in [*train, *val]:  # a prompt longer than the context keeps its end
        ids = prompt_ids(fmt, r["prompt"])
        if len(ids) > room:
            ids, n_trunc = [fmt.bos, *ids[len(ids) - room + 1 :]], n_trunc + 1
        r["ids"] = ids
    if room < 2:
        raise ConfigError(
            f"tasks.grpo.max_new_tokens={opts.max_new_tokens} leaves no room for a prompt in "
            f"finetune.seq_len={ft.seq_len}"
        )
    G, eos = opts.group_size, min(fmt.eos)
    # the reference: the adapters switched off (LoRA), else a frozen copy of the start
    ref_model = None
    if ft.method != "lora" and opts.kl_coef > 0:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    state: dict = {"engine": None, "rollout": None, "uses": 0, "step": 0}
    last: dict[str, float] = {}

    def engine_for(m: nn.Module):
        if state["engine"] is None or state["engine"].model is not m:
            state["engine"] = policy_engine(m, fmt, max_batch=min(ft.batch_size * G, 64))
        return state["engine"]

    def make_rollout(m: nn.Module, idx) -> dict:
        recs = [train[i] for i in idx.tolist()]
        prompts = [r["ids"] for r in recs]
        seed = cfg.seed * 1_000_003 + state["step"] * 9973
        outs = sample(engine_for(m), prompts, G, opts.max_new_tokens, opts.temperature, seed)
        expanded = [p for p in prompts for _ in range(G)]
        rewards = []
        for k, (ids, _) in enumerate(outs):
            r = recs[k // G]
            text = fmt.tokenizer.decode(ids, skip_special_tokens=True)
            rewards.append(score(reward_fn, opts.reward, r["prompt"][-1]["content"], text,
                                 r.get("answer")))  # fmt: skip
        r = torch.tensor(rewards).view(-1, G)
        failed = torch.isnan(r)
        means = torch.nan_to_num(r, nan=0.0).sum(-1, keepdim=True) / (~failed).sum(
            -1, keepdim=True
        ).clamp(min=1)
        r = torch.where(failed, means.expand_as(r), r).flatten()
        x, y = rollout_rows(expanded, outs, eos, fmt.bos)
        x, y = x.to(device), y.to(device)
        mask = y != IGNORE
        with torch.no_grad():
            ref = None
            if opts.kl_coef > 0:
                if ref_model is not None:
                    ref = token_logps(ref_model(x), y)
                else:
                    with adapters_off(m):
                        ref = token_logps(m(x), y)
            old = token_logps(m(x), y) if opts.updates_per_rollout > 1 else None
        return {
            "x": x, "y": y, "mask": mask, "ref": ref, "old": old,
            "adv": group_advantages(r, G).to(device), "rewards": r,
            "failed": int(failed.sum()),
            "lengths": torch.tensor([len(o[0]) for o in outs], dtype=torch.float),
        }  # fmt: skip

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        (idx,) = batch
        if state["rollout"] is None or state["uses"] >= opts.updates_per_rollout:
            state["rollout"], state["uses"] = make_rollout(m, idx), 0
        ro = state["rollout"]
        state["uses"] += 1
        state["step"] += 1
        logps = token_logps(m(ro["x"]), ro["y"])
        old = ro["old"] if ro["old"] is not None else logps.detach()
        ref = ro["ref"] if ro["ref"] is not None else logps.detach()
        loss, kl, clipped = grpo_token_loss(
            logps, old, ref, ro["adv"], ro["mask"], opts.clip_eps, opts.kl_coef
        )
        last.update(
            train_reward=float(ro["rewards"].mean()),
            train_reward_std=float(ro["rewards"].view(-1, G).std(-1).mean()),
            train_kl=kl,
            train_clipped=clipped,
            train_response_tokens=float(ro["lengths"].mean()),
            train_reward_failures=ro["failed"],
        )
        return loss

    def validate(m: nn.Module) -> dict[str, float]:
        outs = sample(engine_for(m), [r["ids"] for r in val], 1, opts.max_new_tokens, 0.0, 0)
        rewards = []
        for r, (ids, _) in zip(val, outs, strict=True):
            text = fmt.tokenizer.decode(ids, skip_special_tokens=True)
            v = score(reward_fn, opts.reward, r["prompt"][-1]["content"], text, r.get("answer"))
            rewards.append(0.0 if math.isnan(v) else v)
        mean = float(np.mean(rewards)) if rewards else 0.0
        return {"val_loss": 1.0 - mean, "val_mean_reward": mean}

    info = {
        "train_prompts": len(train),
        "val_prompts": len(val),
        "prompts_truncated": n_trunc,
        "group_size": G,
        "reward": opts.reward,
        "reference": (
            "none (kl_coef 0)" if opts.kl_coef == 0
            else "frozen copy" if ref_model is not None else "adapters switched off"
        ),
    }  # fmt: skip
    tokens = ft.batch_size * G * opts.max_new_tokens
    loader = PromptLoader(len(train), ft.batch_size, cfg.seed)
    setup = TrainSetup(model, loss_fn, loader, validate, tokens, step_metrics=lambda: dict(last))
    return setup, info


def save_finetuned(cfg: Config, out: Path, base) -> None:
    data.save_chat_files(cfg, out, base)


def serve_routes(app, run_dir: Path, cfg, device: str) -> None:
    from modelworks.tasks.chat import serve_routes as chat_routes

    chat_routes(app, run_dir, cfg, device)


def evaluate(cfg: Config, run_dir: Path, out: Path, reporter: Reporter, ckpt=None):
    from modelworks.tasks.preference_eval import evaluate_tuned

    return evaluate_tuned(cfg, run_dir, out, reporter, ckpt, options(cfg).max_new_tokens)


TASK = Task(
    name="grpo",
    prepare=prepare,
    setup_training=tunes_only,
    evaluate=evaluate,
    setup_finetune=setup_finetune,
    save_finetuned=save_finetuned,
    serve_routes=serve_routes,
    options=Options,
)
