"""Text generation over a trained run: tokenizer + model + KV cache + sampling + batching.

One `Engine` serves both the evaluate stage's sample generations and the HTTP server.

- `generate(...)` runs one sequence at a time (serialised by a lock); with `use_cache=False` it
  recomputes the whole sequence each step and exists to check the cached path token for token.
- `submit(...)` hands a request to the batching loop: a background thread that steps every
  running sequence together (continuous batching). Each sequence owns one row ("slot") of a
  preallocated KV cache; requests join the running batch at the next step (their prompt is
  prefilled into their slot) and leave it as soon as they finish or are cancelled, which frees
  the slot for a waiting request. Tokens are reported through a callback as they are produced.
  Rows sit at different positions, so the batched forward (`_forward`) indexes RoPE and the cache
  per row and masks each row's attention to its own length; it reuses the model's own layers, and
  rows that happen to share one position in slots 0..B-1 (a lone request) take the model's own
  forward. A joining request whose prompt starts as a running one's does (a shared system
  prompt, the same document) copies those positions' keys/values from that slot and computes
  only the rest (prefix sharing, as vLLM's prefix caching does across live requests). On CPU the
  large linear layers run on oneDNN-packed weights (serve/packing.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from modelworks.chat_template import hf_chat_tokens  # noqa: F401  (public here too)
from modelworks.errors import PromptTooLong
from modelworks.models.gpt import KVCache
from modelworks.preprocess.tokenizer import eot_id, load_tokenizer
from modelworks.runtime import resolve_device
from modelworks.serve.packing import pack_linears
from modelworks.serve.sampling import (  # noqa: F401  (public here too)
    Event,
    Generation,
    SamplingParams,
    rng_for,
    sample_next,
)
from modelworks.train.checkpoint import load_model

log = logging.getLogger("modelworks")
# a shared prompt prefix shorter than this is computed again rather than copied between slots
MIN_SHARED_PREFIX = 8


class Sequence:
    """One request's state in the batching loop; `cancel()` is safe from any thread."""

    def __init__(self, ids: list[int], params: SamplingParams, on_event: Callable[[Event], None]):
        self.ids, self.params, self.on_event = ids, params, on_event
        self.gen = rng_for(params.temperature, params.seed)
        self.out: list[int] = []
        self.text = ""  # decoded text of `out` up to the last complete character
        self.sent = 0  # characters of `text` already reported
        # incremental detokenisation (as vLLM): decode a short window of recent tokens and
        # diff against its prefix, so each step costs O(window), not O(output)
        self.prefix_offset = self.read_offset = 0
        self.slot = -1
        self.pos = 0  # tokens of this sequence in its cache slot
        self.cancelled = self.finished = False
        self.arrival = time.monotonic()
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        name: str = "model",
        bos: int | None = None,
        eos: set[int] | None = None,
        chat_template: str | None = None,
        max_batch: int = 16,
        pack_weights: bool = True,
        add_start: bool = True,
        quantize: str = "none",
    ) -> None:
        self.model = model.eval()
        if quantize == "int8":  # int8 weight-only linear layers (serve/quant.py)
            from modelworks.serve.quant import quantize_int8

            quantize_int8(model)
        if pack_weights:  # CPU: large linear layers on oneDNN-packed weights (serve/packing.py)
            pack_linears(model)
        self.tokenizer = tokenizer
        self.name = name
        self.eot = eot_id(tokenizer) if bos is None else bos  # prepended to every prompt
        self.eos = eos if eos is not None else {self.eot}
        self.add_start = add_start  # False: prompts go in as given (a GGUF's add_bos_token=false)
        self.chat_template = chat_template
        self.device = next(model.parameters()).device
        self.max_batch = max_batch
        self.metrics = None  # a serve.metrics.Metrics, when served
        self._lock = threading.Lock()  # one forward pass at a time on the model
        self._cv = threading.Condition()
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._joining: list[Sequence] = []
        self._cache: KVCache | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self.prefix_tokens_reused = 0  # prompt tokens whose keys/values came from another slot

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        device: str = "auto",
        name: str | None = None,
        weights: str | Path | None = None,
        **kw,
    ):
        """A run's model (its fine-tuned one when it has one, else its pretrained one), or the
        checkpoint folder `weights` of that run, with the run's tokenizer."""
        from modelworks.artifacts import final_model_dir, tokenizer_path

        run_dir = Path(run_dir)
        model = load_model(weights or final_model_dir(run_dir), resolve_device(device))
        tok_file = tokenizer_path(run_dir)
        tok = load_tokenizer(tok_file)
        return cls(model, tok, name or run_dir.name, eot_id(tok, tok_file.parent), **kw)

    @classmethod
    def from_hf(cls, folder: str | Path, device: str = "auto", name: str | None = None, **kw):
        """A local Hugging Face Llama-family folder (ours or anyone's) with a tokenizer.json."""
        from modelworks.models.hf import HFError, import_hf

        folder = Path(folder)
        if not (folder / "tokenizer.json").is_file():
            raise HFError(f"{folder}: no tokenizer.json; serving needs a fast tokenizer file")
        model = import_hf(folder).to(resolve_device(device))
        tok = load_tokenizer(folder / "tokenizer.json")
        bos, eos, template = hf_chat_tokens(folder)
        return cls(model, tok, name or folder.name, bos, eos, template, **kw)

    @classmethod
    def from_gguf(cls, path: str | Path, device="auto", name=None, context_len=2048, **kw):
        """A Llama-family GGUF file (models/gguf.py), its context capped to `context_len`, which
        sizes the batching loop's KV cache."""
        from modelworks.models.gguf import chat_tokens, load_gguf, open_gguf
        from modelworks.models.gguf_tokenizer import tokenizer_from_gguf

        reader = open_gguf(path)
        tok = tokenizer_from_gguf(reader, path)
        bos, eos, template, add_bos = chat_tokens(reader)
        model = load_gguf(path, context_len, reader).to(resolve_device(device))
        bos = bos if bos is not None else min(eos or {0})
        name = name or Path(path).stem
        return cls(model, tok, name, bos, eos or {bos}, template, add_start=add_bos, **kw)

    @property
    def context_len(self) -> int:
        return self.model.cfg.context_len

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _with_start(self, ids: list[int]) -> list[int]:
        # every prompt starts with the start token (end-of-text for our runs, as documents did
        # in training); a chat template may already have put it there
        if ids and (ids[0] == self.eot or not self.add_start):
            return list(ids)
        return [self.eot, *ids]

    def check_length(self, n_prompt: int, max_new_tokens: int) -> None:
        # +1: every prompt is preceded by the start token
        if n_prompt + 1 + max_new_tokens > self.context_len:
            raise PromptTooLong(
                f"prompt of {n_prompt} tokens + max_tokens {max_new_tokens} exceeds the model's "
                f"context of {self.context_len} tokens (one is reserved for the start token)"
            )

    # ------------------------------------------------------------------ one sequence at a time

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
        gen = rng_for(temperature, seed)
        with self._lock:
            return self._generate(
                ids, max_new_tokens, temperature, top_p, top_k, gen, stop or [], use_cache
            )

    def _generate(self, ids, max_new, temperature, top_p, top_k, gen, stop, use_cache):
        seq = torch.tensor([self._with_start(ids)], device=self.device)
        cache = self.model.new_cache(1, seq.shape[1] + max_new) if use_cache else None
        logits = self.model(seq, cache=cache, start_pos=0, last_only=True)[0, -1]
        out: list[int] = []
        finish, text = "length", ""
        for _ in range(max_new):
            nxt = sample_next(logits, temperature, top_p, top_k, gen)
            if nxt in self.eos:
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
                logits = self.model(full, last_only=True)[0, -1]
        return Generation(out, self.decode(out), finish, len(ids))

    # ------------------------------------------------------------------------- batching loop

    def submit(
        self, ids: list[int], params: SamplingParams, on_event: Callable[[Event], None]
    ) -> Sequence:
        """Queue a prompt (token ids, without the start token) for the batching loop; events
        arrive through `on_event` from the loop's thread. Raises PromptTooLong up front."""
        self.check_length(len(ids), params.max_tokens)
        seq = Sequence(self._with_start(ids), params, on_event)
        with self._cv:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
                self._thread.start()
            self._waiting.append(seq)
            self._cv.notify()
        return seq

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting) + len(self._joining)

    @property
    def free_slots(self) -> int:
        return self.max_batch - len(self._running)

    def close(self) -> None:
        """Stop the batching thread after its current step (a process must not exit while that
        thread is inside torch: its thread pools abort). Unfinished sequences end as `abort`;
        a later `submit` starts a new thread."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._thread, self._closing = None, False

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._running and not self._closing:
                    self._cv.wait()
                if self._closing:
                    for seq in [*self._running, *self._waiting]:
                        self._finish(seq, "abort")
                    self._running, self._waiting = [], deque()
                    return
                joining = self._joining = []  # counted as waiting until the step takes them
                while self._waiting and len(self._running) + len(joining) < self.max_batch:
                    joining.append(self._waiting.popleft())
            try:
                with self._lock, torch.no_grad():
                    self._step(joining)
            except Exception as e:  # never let one bad step kill the server's only worker
                log.exception("engine step failed")
                for seq in [*self._running, *joining]:
                    self._finish(seq, "error", text=f"engine error: {e}")
                self._running = []

    def _step(self, joining: list[Sequence]) -> None:
        self._joining = []
        if self._cache is None:
            self._cache = self.model.new_cache(self.max_batch, self.context_len)
        self._running = [s for s in self._running if not self._drop_if_cancelled(s)]
        decoding = list(self._running)
        used = {s.slot for s in self._running}
        for seq in joining:
            if seq.cancelled:
                self._finish(seq, "abort")
                continue
            seq.slot = min(set(range(self.max_batch)) - used)
            used.add(seq.slot)
            self._running.append(seq)
            self._prefill(seq)
        if decoding:
            ids = torch.tensor([[s.out[-1]] for s in decoding], device=self.device)
            logits = self._forward(ids, [s.slot for s in decoding], [s.pos for s in decoding])
            logits = logits[:, -1]
            greedy = logits.argmax(-1).tolist()  # one call for the whole batch
            for row, seq in enumerate(decoding):
                seq.pos += 1
                self._advance(seq, logits[row], greedy[row])
        self._running = [s for s in self._running if s.slot >= 0]
        if self.metrics is not None:
            self.metrics.set_queue(len(self._running), len(self._waiting))

    def _shared_prefix(self, seq: Sequence) -> tuple[Sequence | None, int]:
        """The running sequence whose prompt starts as `seq`'s does for the most tokens, and how
        many (at most all but the last: its logits start the answer). Its cache slot holds the
        keys and values of those positions, which `seq` can copy instead of computing again;
        requests that share a system prompt or a long document (or one prompt) share them."""
        best, n = None, 0
        if seq.params.prompt_logprobs:  # every position's logits are wanted: compute them all
            return None, 0
        for other in self._running:
            if other is seq or other.slot < 0 or other.pos < len(other.ids):
                continue  # not prefilled (yet), or gone
            k, top = 0, min(len(other.ids), len(seq.ids) - 1)
            while k < top and other.ids[k] == seq.ids[k]:
                k += 1
            if k > n:
                best, n = other, k
        return (best, n) if n >= MIN_SHARED_PREFIX else (None, 0)

    def _prefill(self, seq: Sequence) -> None:
        donor, n = self._shared_prefix(seq)
        if donor is not None:  # copy the shared positions' keys/values: (layers, slot, kv, pos, d)
            for t in (self._cache.k, self._cache.v):
                t[:, seq.slot, :, :n] = t[:, donor.slot, :, :n]
            self.prefix_tokens_reused += n
        ids = torch.tensor([seq.ids[n:]], device=self.device)
        last_only = not seq.params.prompt_logprobs
        logits = self._forward(ids, [seq.slot], [n], last_only=last_only)[0]
        seq.pos = len(seq.ids)
        if seq.params.prompt_logprobs:
            k = seq.params.logprobs or 0
            lp = torch.log_softmax(logits[:-1].float(), dim=-1)
            targets = torch.tensor(seq.ids[1:], device=lp.device)
            chosen = lp.gather(1, targets[:, None])[:, 0].tolist()
            top = torch.topk(lp, k, dim=-1) if k else None
            rows = [
                (
                    c,
                    list(zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True))
                    if top
                    else [],
                )
                for i, c in enumerate(chosen)
            ]
            self._emit(seq, Event(prompt_logprobs=rows))
        if seq.params.max_tokens == 0:
            self._finish(seq, "length")
            return
        self._advance(seq, logits[-1])

    def _advance(self, seq: Sequence, logits: torch.Tensor, greedy: int | None = None) -> None:
        """Sample one token for `seq` from its last logits and report it."""
        p = seq.params
        if p.temperature <= 0 and greedy is not None:
            nxt = greedy
        else:
            nxt = sample_next(logits, p.temperature, p.top_p, p.top_k, seq.gen)
        now = time.monotonic()
        if self.metrics is not None:
            self.metrics.on_token(seq, now)
        if seq.first_token_at is None:
            seq.first_token_at = now
        seq.last_token_at = now
        event = Event(token_id=nxt)
        if p.logprobs is not None:
            lp = torch.log_softmax(logits.float(), dim=-1)
            event.logprob = float(lp[nxt])
            if p.logprobs:
                top = torch.topk(lp, p.logprobs)
                event.top_logprobs = list(
                    zip(top.indices.tolist(), top.values.tolist(), strict=True)
                )
        if nxt in self.eos and not p.ignore_eos:
            event.token_id = None  # the end-of-text token is not part of the completion
            event.logprob = event.top_logprobs = None
            event.text = seq.text[seq.sent :] + self._pending(seq)
            return self._finish(seq, "stop", event)
        seq.out.append(nxt)
        before = len(seq.text)
        self._detokenize(seq)
        text = seq.text
        if p.stop:  # only where a stop could newly end: the added text and a stop's length back
            since = max(0, before - max(len(s) for s in p.stop) + 1)
            cut = min((i for s in p.stop if (i := text.find(s, since)) >= 0), default=-1)
            if cut >= 0:
                event.text = text[:cut][seq.sent :]
                return self._finish(seq, "stop", event)
        if len(seq.out) >= p.max_tokens or seq.pos >= self.context_len:
            event.text = text[seq.sent :] + self._pending(seq)
            return self._finish(seq, "length", event)
        # hold back whatever may be the start of a stop string
        safe = len(text)
        for s in p.stop:
            for n in range(min(len(s) - 1, safe), 0, -1):
                if text.endswith(s[:n]):
                    safe = min(safe, len(text) - n)
                    break
        safe = max(safe, seq.sent)
        event.text = text[seq.sent : safe]
        seq.sent = safe
        self._emit(seq, event)

    def _detokenize(self, seq: Sequence) -> None:
        out = seq.out
        prefix = self.decode(out[seq.prefix_offset : seq.read_offset])
        new = self.decode(out[seq.prefix_offset :])
        # a trailing U+FFFD is an incomplete UTF-8 character: wait for its other bytes
        if len(new) > len(prefix) and not new.endswith("\ufffd"):
            seq.text += new[len(prefix) :]
            seq.prefix_offset, seq.read_offset = seq.read_offset, len(out)

    def _pending(self, seq: Sequence) -> str:
        """Text of tokens not yet decoded into `seq.text` (an incomplete character at the end)."""
        prefix = self.decode(seq.out[seq.prefix_offset : seq.read_offset])
        return self.decode(seq.out[seq.prefix_offset :])[len(prefix) :]

    def _finish(self, seq: Sequence, reason: str, event: Event | None = None, text: str = ""):
        if seq.finished:  # after a failed step, a sequence may be listed twice
            return
        seq.finished = True
        event = event or Event(text=text)
        event.finish_reason = reason
        seq.slot = -1
        if self.metrics is not None:
            self.metrics.on_finish(seq, reason, time.monotonic())
        self._emit(seq, event)

    @staticmethod
    def _emit(seq: Sequence, event: Event) -> None:
        try:
            seq.on_event(event)
        except Exception:  # the receiver is gone (e.g. its event loop closed): stop the sequence
            log.warning("dropping a sequence whose receiver failed", exc_info=True)
            seq.cancel()

    def _drop_if_cancelled(self, seq: Sequence) -> bool:
        if seq.cancelled:
            self._finish(seq, "abort")
        return seq.cancelled

    def _forward(
        self, ids: torch.Tensor, slots: list[int], starts: list[int], last_only: bool = False
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for `ids` (B, T) at positions starts[b].., reading and writing
        row b's keys/values in cache slot slots[b]; (B, 1, vocab) with `last_only`. The model's
        own forward does it (models/gpt.py: `slots`, `starts`): any model with that forward and
        `new_cache` serves here."""
        return self.model(ids, self._cache, slots=slots, starts=starts, last_only=last_only)

    # ---------------------------------------------------------------------------- embeddings

    @torch.no_grad()
    def embed(self, ids: list[int]) -> list[float]:
        """Mean of the final (normed) hidden states over the prompt's tokens."""
        full = torch.tensor([self._with_start(ids)], device=self.device)
        with self._lock:
            x = self.model(full, hidden=True)[0]
        n_start = full.shape[1] - len(ids)  # the start token is not part of the input
        return x[n_start:].float().mean(0).cpu().tolist() if ids else x[0].float().tolist()


def engine_options(cfg) -> dict:
    """The Engine keyword arguments a `serve:` config (config.ServeConfig) sets."""
    return {"max_batch": cfg.max_batch, "pack_weights": cfg.pack_weights, "quantize": cfg.quantize}
