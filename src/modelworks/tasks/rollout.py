"""Many samples at once through the serving engine's batching loop (serve/engine.py): G samples of
each prompt for GRPO, greedy answers for evaluation. The engine wraps the very model being
trained (no copy, no packed weights), so every rollout samples from the current weights."""

from __future__ import annotations

import threading

from torch import nn

from modelworks.serve.engine import Engine
from modelworks.serve.sampling import SamplingParams


def policy_engine(model: nn.Module, fmt, max_batch: int = 16) -> Engine:
    """An engine over `model` itself (weights shared, not packed: training changes them)."""
    engine = Engine(model, fmt.tokenizer, "policy", fmt.bos, set(fmt.eos), fmt.template,
                    max_batch=max_batch, pack_weights=False)  # fmt: skip
    return engine


def prompt_ids(fmt, messages: list[dict]) -> list[int]:
    """The prompt rendered with the generation prompt, start token first."""
    ids = fmt.tokenizer.encode(fmt.render(messages, True), add_special_tokens=False).ids
    return ids if ids and ids[0] == fmt.bos else [fmt.bos, *ids]


def sample(
    engine: Engine,
    prompts: list[list[int]],
    n: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    ignore_eos: bool = False,
) -> list[tuple[list[int], str]]:
    """(completion ids, finish reason) of `n` samples per prompt, prompt-major; the end token
    that stopped a sample is not among its ids (its finish reason is "stop")."""
    done = threading.Semaphore(0)
    reasons: dict[int, str] = {}
    seqs = []
    was_training = engine.model.training
    engine.model.eval()

    def on_event(k):
        def f(event):
            if event.finish_reason is not None:
                reasons[k] = event.finish_reason
                done.release()

        return f

    try:
        for p, ids in enumerate(prompts):
            room = min(max_new_tokens, engine.context_len - len(ids) - 1)
            for j in range(n):
                k = p * n + j
                params = SamplingParams(
                    max(room, 0), temperature, seed=seed + k, ignore_eos=ignore_eos
                )
                seqs.append(engine.submit(ids, params, on_event(k)))
        for _ in seqs:
            done.acquire()
    finally:
        engine.close()
        engine.model.train(was_training)
    return [(list(s.out), reasons.get(k, "error")) for k, s in enumerate(seqs)]
