"""Many samples at once through the serving engine's batching loop (serve/engine.py): G samples of
each prompt for GRPO, greedy answers for evaluation. The engine wraps the very model being
trained (no copy, no packed weights), so every rollout samples from the current weights."""

from __future__ import annotations

from torch import nn

from modelworks.serve.batch import complete_all
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
    jobs = []
    for p, ids in enumerate(prompts):
        room = max(min(max_new_tokens, engine.context_len - len(ids) - 1), 0)
        for j in range(n):
            params = SamplingParams(room, temperature, seed=seed + p * n + j, ignore_eos=ignore_eos)
            jobs.append((ids, params))
    was_training = engine.model.training
    engine.model.eval()
    try:
        return [(c.ids, c.finish_reason) for c in complete_all(engine, jobs)]
    finally:
        engine.model.train(was_training)
