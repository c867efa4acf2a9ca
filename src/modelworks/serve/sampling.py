"""What a generation request asks for and gets back (`SamplingParams`, `Event`, `Generation`), and
choosing the next token from logits (greedy, temperature, top-k, top-p), vLLM's conventions."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (end of text or a stop string) or "length"
    prompt_tokens: int


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # report the chosen token's logprob and this many alternatives
    prompt_logprobs: bool = False  # also report the prompt tokens' logprobs (echo + logprobs)


@dataclass
class Event:
    """What one engine step produced for one sequence (the first event may carry only the
    prompt's logprobs, the last one the finish reason)."""

    token_id: int | None = None
    text: str = ""  # new text since the previous event (held back while it may start a stop)
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # stop, length, abort, error
    prompt_logprobs: list[tuple[float, list[tuple[int, float]]]] | None = None


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, top_k: int, gen: torch.Generator | None
) -> int:
    """One token id from last-position logits (vocab,). temperature 0 means greedy."""
    if temperature < 1e-5:  # as vLLM: greedy below this (dividing by it overflows float32)
        return int(torch.argmax(logits))
    logits = logits.float() / temperature
    if top_k and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = sorted_p.cumsum(0) - sorted_p >= top_p
        drop[0] = False  # a top_p below float32's resolution (5e-324) would drop it too
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


def rng_for(temperature: float, seed: int | None) -> torch.Generator | None:
    if temperature <= 0:
        return None
    return torch.Generator().manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
