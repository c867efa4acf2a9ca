"""Scoring text with a trained language model: the primitives every LM evaluation uses.

`LMScorer` wraps a causal model and its tokenizer and answers the three questions that
lm-evaluation-harness asks of a model, with the same conventions (so our in-process harness and
lm-eval, through `evaluate/lm_eval_model.py`, give identical numbers):
- `loglikelihood([(context, continuation)])`: log P(continuation | context) and whether greedy
  decoding would produce it; the pair is encoded as lm-eval's HF model does (the whole string
  encoded once, the continuation being the tokens after the context's; trailing spaces of the
  context move to the continuation);
- `loglikelihood_rolling([text])`: log P(text), in disjoint windows of the model's context;
- `generate_until([(context, until, max_new_tokens)])`: greedy text, cut at the first stop string.
Every sequence starts with the end-of-text token, as documents did in training.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn


class LMScorer:
    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        start_id: int,
        batch_size: int = 16,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.start_id = start_id
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.dtype = dtype
        self.context_len = model.cfg.context_len

    @classmethod
    def from_run(cls, run_dir, device: str = "auto", batch_size: int = 16) -> LMScorer:
        from modelworks.serve.engine import Engine

        engine = Engine.from_run(run_dir, device)
        return cls(engine.model, engine.tokenizer, engine.eot, batch_size)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def token_logprobs(
        self, seqs: list[list[int]], greedy: bool = True
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each sequence (starting with the start token): the log-probability of every token
        after the first given the ones before it, and whether it was the argmax (all False when
        `greedy` is off). Long sequences are cut into disjoint windows of the model's context
        (each window restarts the context).

        Windows are sorted by length and batched by a token budget (`batch_size` full windows),
        so short documents go many to a batch and every forward fills the matmuls. A batch only
        takes windows at least 7/8 as long as its longest, so padding (after a window's tokens,
        where causal attention keeps it out of the scores) costs at most 1/8 of the work."""
        L = self.context_len
        seqs = [np.asarray(q, dtype=np.int64) for q in seqs]
        windows = []  # (seq index, offset into targets, number of targets)
        for s, seq in enumerate(seqs):
            for a in range(0, max(len(seq) - 1, 0), L):
                windows.append((s, a, min(L, len(seq) - 1 - a)))
        out_lp = [np.zeros(max(len(q) - 1, 0)) for q in seqs]
        out_greedy = [np.zeros(max(len(q) - 1, 0), dtype=bool) for q in seqs]
        windows.sort(key=lambda w: -w[2])
        budget = max(1, self.batch_size) * L
        i = 0
        while i < len(windows):
            width, j = windows[i][2], i  # the longest in the batch: sorted by length
            end = min(len(windows), i + max(1, budget // width))
            while j < end and 8 * windows[j][2] >= 7 * width:
                j += 1
            batch, i = windows[i:j], j
            x = np.zeros((len(batch), width), dtype=np.int64)
            y = np.zeros((len(batch), width), dtype=np.int64)
            for r, (s, a, n) in enumerate(batch):
                x[r, :n] = seqs[s][a : a + n]
                y[r, :n] = seqs[s][a + 1 : a + n + 1]
            with self._autocast():
                logits = self.model(torch.from_numpy(x).to(self.device))
            lp, hit = _target_logprobs(logits, torch.from_numpy(y).to(self.device), greedy)
            lp, hit = lp.double().cpu().numpy(), hit.cpu().numpy()
            for r, (s, a, n) in enumerate(batch):
                out_lp[s][a : a + n] = lp[r, :n]
                out_greedy[s][a : a + n] = hit[r, :n]
        return list(zip(out_lp, out_greedy, strict=True))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # as lm-eval's HFLM._encode_pair: spaces belong to the continuation's first token
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx) :]

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        seqs, n_cont = [], []
        for context, continuation in pairs:
            ctx, cont = self.encode_pair(context, continuation)
            # keep the continuation and as much of the context as fits in one window
            seq = [self.start_id, *ctx, *cont][-(self.context_len + 1) :]
            seqs.append(seq)
            n_cont.append(len(cont))
        results = []
        for (lp, greedy), n in zip(self.token_logprobs(seqs), n_cont, strict=True):
            tail = slice(len(lp) - n, len(lp))
            results.append((float(lp[tail].sum()), bool(greedy[tail].all())))
        return results

    def loglikelihood_rolling(self, texts: list[str]) -> list[float]:
        seqs = [[self.start_id, *self.encode(t)] for t in texts]
        return [float(lp.sum()) for lp, _ in self.token_logprobs(seqs)]

    @torch.no_grad()
    def generate_until(self, requests: list[tuple[str, list[str], int]]) -> list[str]:
        outs = []
        for context, until, max_new in requests:
            ids = [self.start_id, *self.encode(context)]
            max_new = max(0, min(max_new, self.context_len - 1))
            ids = ids[-(self.context_len - max_new) :] if max_new else ids[-self.context_len :]
            cache = self.model.new_cache(1, len(ids) + max_new)
            new: list[int] = []
            x = torch.tensor([ids], device=self.device)
            pos = 0
            text = ""
            for _ in range(max_new):
                with self._autocast():
                    logits = self.model(x, cache=cache, start_pos=pos, last_only=True)
                pos += x.shape[1]
                nxt = int(logits[0, -1].float().argmax())
                if nxt == self.start_id:
                    break
                new.append(nxt)
                text = self.decode(new)
                if any(u and u in text for u in until):
                    break
                x = torch.tensor([[nxt]], device=self.device)
            text = self.decode(new)
            for u in until:
                if u and u in text:
                    text = text[: text.index(u)]
            outs.append(text)
        return outs


def _target_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, greedy: bool, chunk: int = 1 << 24
) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(target) and target == argmax at every (row, position) of (B, T, V) logits, in
    float32, a few rows at a time: the log-softmax is never materialised, only its normaliser
    (logsumexp) per position, and the float32 copy of bf16 logits is one chunk at a time."""
    B, T, V = logits.shape
    step = max(1, chunk // max(1, T * V))
    lps, hits = [], []
    for r in range(0, B, step):
        lg = logits[r : r + step].float()
        t = targets[r : r + step]
        lps.append(lg.gather(-1, t[..., None])[..., 0] - torch.logsumexp(lg, -1))
        hits.append(lg.argmax(-1) == t if greedy else torch.zeros_like(t, dtype=torch.bool))
    return torch.cat(lps), torch.cat(hits)


def document_scores(scorer: LMScorer, docs: list[np.ndarray], eot: int, max_tokens: int = 0):
    """Per-document nats, tokens and UTF-8 bytes for perplexity and bits-per-byte.

    Each document (as packed: content then the end-of-text token) is scored as
    [end-of-text] + content; the closing end-of-text is not predicted, so the score is only of
    text that has bytes. `max_tokens` > 0 stops after that many predicted tokens.
    Returns (nats, tokens, bytes) arrays, one entry per scored document, and the targets.
    """
    contents, budget = [], max_tokens or None
    for d in docs:
        d = np.asarray(d, dtype=np.int64)
        c = d[d != eot]
        if budget is not None:
            c = c[:budget]
            budget -= len(c)
        if len(c):
            contents.append(c)
        if budget is not None and budget <= 0:
            break
    scored = scorer.token_logprobs([np.concatenate([[eot], c]) for c in contents], greedy=False)
    nats = np.array([-lp.sum() for lp, _ in scored])
    tokens = np.array([len(c) for c in contents], dtype=np.int64)
    n_bytes = np.array([len(scorer.decode(c).encode("utf-8")) for c in contents], dtype=np.int64)
    targets = np.concatenate(contents) if contents else np.zeros(0, dtype=np.int64)
    return nats, tokens, n_bytes, targets
