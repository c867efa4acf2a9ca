"""Greedy and beam-search decoding for one prompt over a decoder with a KV cache (models/gpt.py).

`beam_search` keeps `beam_size` live hypotheses as the rows of one batched KV cache: each step
feeds every live beam's last token together, scores all (beam, token) extensions, keeps the best
2 x beam_size candidates, moves those that end (an end token) to the finished list and the rest
into the next step's rows, and reorders the cache rows to follow their parents.

Hypotheses rank by `logprob / length ** length_penalty` (length = generated tokens, the end
token included; 0 = plain log-probability, 1 = per-token mean). The search stops when `beam_size`
hypotheses have finished and no live beam can beat the worst of them: a live beam's logprob only
falls, so its best possible score is `logprob / max_new_tokens ** length_penalty`, an exact bound.
Beams still live at `max_new_tokens` finish there. `beam_size=1` is greedy decoding.

    hyps = beam_search(model, [eot, *prompt_ids], eos={eot}, max_new_tokens=32, beam_size=4)
    best = hyps[0].ids   # generated ids, without the end token
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Hypothesis:
    ids: list[int]  # generated tokens, without the end token
    logprob: float  # sum of the log-probabilities of the generated tokens (end token included)
    score: float  # logprob / length ** length_penalty
    finished: bool  # ended with an end token (False: cut at max_new_tokens)


def _score(logprob: float, length: int, length_penalty: float) -> float:
    return logprob / max(length, 1) ** length_penalty


@torch.no_grad()
def greedy_decode(
    model: nn.Module, prompt: list[int], eos: int | Iterable[int], max_new_tokens: int
) -> Hypothesis:
    """The argmax token at each step until an end token or `max_new_tokens`."""
    eos = {eos} if isinstance(eos, int) else set(eos)
    device = next(model.parameters()).device
    cache = model.new_cache(1, len(prompt) + max_new_tokens)
    logits = model(torch.tensor([prompt], device=device), cache=cache, start_pos=0, last_only=True)[
        0, -1
    ]
    out: list[int] = []
    total = 0.0
    for step in range(max_new_tokens):
        logp = torch.log_softmax(logits.float(), dim=-1)
        nxt = int(logp.argmax())
        total += float(logp[nxt])
        if nxt in eos:
            return Hypothesis(out, total, total / (len(out) + 1), True)
        out.append(nxt)
        if step + 1 < max_new_tokens:
            x = torch.tensor([[nxt]], device=device)
            logits = model(x, cache=cache, start_pos=len(prompt) + step)[0, -1]
    return Hypothesis(out, total, total / max(len(out), 1), False)


@torch.no_grad()
def beam_search(
    model: nn.Module,
    prompt: list[int],
    eos: int | Iterable[int],
    max_new_tokens: int,
    beam_size: int = 4,
    length_penalty: float = 1.0,
) -> list[Hypothesis]:
    """Up to `beam_size` hypotheses, best score first. `prompt` includes any start token."""
    if beam_size < 1 or max_new_tokens < 1:
        raise ValueError("beam_size and max_new_tokens must be >= 1")
    eos = {eos} if isinstance(eos, int) else set(eos)
    device = next(model.parameters()).device
    n_prompt = len(prompt)
    cache = model.new_cache(beam_size, n_prompt + max_new_tokens)
    logits = model(torch.tensor([prompt], device=device), cache=cache, start_pos=0, last_only=True)[
        :, -1
    ]
    beams: list[list[int]] = [[]]  # live hypotheses' tokens; row i of the cache is beam i
    scores = torch.zeros(1, device=device)  # their summed logprobs
    done: list[Hypothesis] = []
    live: list[float] = []
    for step in range(max_new_tokens):
        logp = torch.log_softmax(logits.float(), dim=-1)  # (live, vocab)
        total = (scores[:, None] + logp).flatten()
        k = min(2 * beam_size, total.numel())
        top_vals, top_idx = torch.topk(total, k)
        vocab = logp.shape[-1]
        parents, tokens, new_scores = [], [], []
        for value, index in zip(top_vals.tolist(), top_idx.tolist(), strict=True):
            parent, token = divmod(index, vocab)
            if token in eos:  # finished at length step + 1 (the end token counts)
                score = _score(value, step + 1, length_penalty)
                if len(done) < beam_size or score > done[-1].score:
                    done.append(Hypothesis(beams[parent], value, score, True))
                    done.sort(key=lambda h: -h.score)
                    del done[beam_size:]
            else:
                parents.append(parent)
                tokens.append(token)
                new_scores.append(value)
            if len(parents) == beam_size:
                break
        beams = [beams[p] + [t] for p, t in zip(parents, tokens, strict=True)]
        live = new_scores
        if not beams or step + 1 == max_new_tokens:
            break
        full = len(done) == beam_size
        if full and _score(max(live), max_new_tokens, length_penalty) <= done[-1].score:
            beams = live = []  # no live beam can beat the finished ones any more
            break
        scores = torch.tensor(live, device=device)
        # the cache rows follow their parents: row i now holds beam i's prefix
        rows = torch.tensor(parents, device=device)
        for layer_cache in (cache.k, cache.v):
            layer_cache[:, : len(parents)] = layer_cache[:, rows]
        x = torch.tensor([[t] for t in tokens], device=device)
        logits = model(x, cache=cache, start_pos=n_prompt + step)[:, -1]
    for ids, value in zip(beams, live, strict=True):  # cut at max_new_tokens
        done.append(Hypothesis(ids, value, _score(value, len(ids), length_penalty), False))
    done.sort(key=lambda h: -h.score)
    return done[:beam_size]


@torch.no_grad()
def sequence_logprob(model: nn.Module, prompt: list[int], generated: list[int]) -> float:
    """Sum of log p(generated[t] | prompt, generated[:t]) by one full forward pass, no cache:
    the reference a decoder's own running total is checked against."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt + generated], device=device)
    logp = torch.log_softmax(model(ids)[0, len(prompt) - 1 : -1].float(), dim=-1)
    return float(logp.gather(1, ids[0, len(prompt) :, None]).sum())
