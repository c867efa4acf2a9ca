"""Many requests at once through an engine's batching loop, waited for together: what evaluation
(greedy answers), GRPO rollouts (G samples per prompt) and replay data need from the engine that
serves HTTP, with no HTTP."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from modelworks.serve.engine import Engine
from modelworks.serve.sampling import SamplingParams


@dataclass
class Completion:
    text: str  # the decoded reply (stop strings cut)
    ids: list[int]  # its token ids; the end token that stopped it is not among them
    finish_reason: str  # stop, length, or error


def complete_all(engine: Engine, jobs: list[tuple[list[int], SamplingParams]]) -> list[Completion]:
    """Every (prompt ids, sampling params) through `engine`'s batching loop (`max_batch` at a
    time), in order; returns when all have finished, and stops the loop's thread so none is left
    running inside torch."""
    texts, reasons = [""] * len(jobs), ["error"] * len(jobs)
    left = threading.Semaphore(0)
    seqs = []

    def on_event(i: int):
        def cb(event) -> None:  # on the engine's thread
            texts[i] += event.text or ""
            if event.finish_reason is not None:
                reasons[i] = event.finish_reason
                left.release()

        return cb

    try:
        # all queued before the loop admits any: the batches (and so the numbers, to the last
        # bit) do not depend on how fast this thread submits
        with engine._cv:  # an RLock condition: submit takes it again
            for i, (ids, params) in enumerate(jobs):
                seqs.append(engine.submit(ids, params, on_event(i)))
        for _ in seqs:
            left.acquire()
    finally:
        engine.close()
    return [Completion(t, list(s.out), r) for t, s, r in zip(texts, seqs, reasons, strict=True)]
