"""Text generation over a trained run: tokenizer + model + KV cache + sampling.

One `Engine` serves both the evaluate stage's sample generations and the HTTP server. Generation
is serialised by a lock (one sequence at a time); `generate(..., use_cache=False)` recomputes the
whole sequence each step and exists to check the cached path token for token.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from modelworks.errors import ModelworksError
from modelworks.preprocess.tokenizer import eot_id, load_tokenizer
from modelworks.runtime import resolve_device
from modelworks.train.checkpoint import load_model


class PromptTooLong(ModelworksError, ValueError):
    pass


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (end of text or a stop string) or "length"
    prompt_tokens: int


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, top_k: int, gen: torch.Generator | None
) -> int:
    """One token id from last-position logits (vocab,). temperature 0 means greedy."""
    if temperature <= 0:
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
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


class Engine:
    def __init__(self, model: nn.Module, tokenizer: Tokenizer, name: str = "model") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.eot = eot_id(tokenizer)
        self.device = next(model.parameters()).device
        self._lock = threading.Lock()

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto", name: str | None = None):
        run_dir = Path(run_dir)
        model = load_model(run_dir / "pretrain", resolve_device(device))
        tok = load_tokenizer(run_dir / "preprocess" / "tokenizer.json")
        return cls(model, tok, name or run_dir.name)

    @property
    def context_len(self) -> int:
        return self.model.cfg.context_len

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def check_length(self, n_prompt: int, max_new_tokens: int) -> None:
        # +1: every prompt is preceded by the end-of-text token, as documents were in training
        if n_prompt + 1 + max_new_tokens > self.context_len:
            raise PromptTooLong(
                f"prompt of {n_prompt} tokens + max_tokens {max_new_tokens} exceeds the model's "
                f"context of {self.context_len} tokens (one is reserved for the start token)"
            )

    @torch.no_grad()
    def generate(
        self,
        prompt: str | list[int],
        max_new_tokens: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: list[str] | None = None,
        use_cache: bool = True,
    ) -> Generation:
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self.check_length(len(ids), max_new_tokens)
        gen = None
        if temperature > 0:
            gen = torch.Generator().manual_seed(
                seed if seed is not None else int(torch.seed() % 2**63)
            )
        with self._lock:
            return self._generate(
                ids, max_new_tokens, temperature, top_p, top_k, gen, stop or [], use_cache
            )

    def _generate(self, ids, max_new, temperature, top_p, top_k, gen, stop, use_cache):
        seq = torch.tensor([[self.eot, *ids]], device=self.device)
        cache = self.model.new_cache(1, seq.shape[1] + max_new) if use_cache else None
        logits = self.model(seq, cache=cache, start_pos=0)[0, -1]
        out: list[int] = []
        finish, text = "length", ""
        for _ in range(max_new):
            nxt = sample_next(logits, temperature, top_p, top_k, gen)
            if nxt == self.eot:
                finish = "stop"
                break
            out.append(nxt)
            if stop:
                text = self.decode(out)
                cut = min((i for s in stop if (i := text.find(s)) >= 0), default=-1)
                if cut >= 0:
                    return Generation(out, text[:cut], "stop", len(ids))
            if len(out) == max_new:
                break
            step = torch.tensor([[nxt]], device=self.device)
            if use_cache:
                logits = self.model(step, cache=cache, start_pos=seq.shape[1] + len(out) - 1)[0, -1]
            else:
                full = torch.cat([seq, torch.tensor([out], device=self.device)], dim=1)
                logits = self.model(full)[0, -1]
        return Generation(out, self.decode(out), finish, len(ids))
