"""Streaming and collecting a request's engine events: the jobs' events as they arrive (`run_jobs`),
per-choice accumulation (`Choice`: text held back at partial characters and possible stop
strings, tokens, logprobs), and the OpenAI SSE chunks for completions and chat.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from modelworks.serve.app import APIError
from modelworks.serve.engine import Engine, PromptTooLong
from modelworks.serve.openai import (
    error_body,
)
from modelworks.serve.sampling import Event


def usage(n_prompt: int, n_out: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}


async def run_jobs(engine: Engine, jobs, timeout: float) -> AsyncIterator[list[tuple[int, Event]]]:
    """Submit every (ids, params) job to the engine; yield lists of (job index, event) until all
    finish: whatever arrived since the last yield, so a stream that falls behind the engine sends
    fewer, larger chunks. Leaving early (client gone, timeout, error) cancels what still runs."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    seqs = []
    try:
        for i, (ids, params) in enumerate(jobs):

            def push(ev, i=i):
                loop.call_soon_threadsafe(queue.put_nowait, (i, ev))

            try:
                seqs.append(engine.submit(ids, params, push))
            except PromptTooLong as e:
                raise APIError(400, str(e), "max_tokens", "context_length_exceeded") from None
        left, deadline = len(jobs), time.monotonic() + timeout
        while left:
            try:
                batch = [await asyncio.wait_for(queue.get(), deadline - time.monotonic())]
            except TimeoutError:
                raise APIError(
                    503,
                    f"the request took longer than serve.request_timeout={timeout:g} s",
                    None,
                    "timeout",
                ) from None
            while not queue.empty():
                batch.append(queue.get_nowait())
            for _, ev in batch:
                if ev.finish_reason == "error":
                    raise APIError(500, ev.text or "the engine failed on this request")
                left -= ev.finish_reason is not None
            yield batch
    finally:
        for s in seqs:
            s.cancel()


class Choice:
    """Accumulates one choice's events: text, tokens, logprobs (legacy OpenAI shape)."""

    def __init__(self, engine: Engine, prompt_ids: list[int], echo: bool):
        self.engine, self.echo = engine, echo
        self.prompt = engine.decode(prompt_ids) if echo else ""
        self.prompt_ids = prompt_ids
        self.text, self.n_tokens, self.finish = "", 0, None
        self.lp = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        self._offset = 0

    def _tok(self, tid: int, logprob, top) -> None:
        s = self.engine.token_text(tid)
        self.lp["tokens"].append(s)
        self.lp["token_logprobs"].append(logprob)
        self.lp["top_logprobs"].append(
            None if top is None else {self.engine.token_text(t): v for t, v in top}
        )
        self.lp["text_offset"].append(self._offset)
        self._offset += len(s)

    def add(self, ev: Event) -> dict | None:
        """Take one event; returns the logprobs of what it added (for a stream chunk)."""
        start = len(self.lp["tokens"])
        if ev.prompt_logprobs is not None and self.echo:
            rows = ev.prompt_logprobs
            rows = [(None, None)] * (len(self.prompt_ids) - len(rows)) + rows
            for tid, (c, top) in zip(self.prompt_ids, rows, strict=True):
                self._tok(tid, c, top)
        if ev.token_id is not None:
            self.n_tokens += 1
            if ev.logprob is not None:
                self._tok(ev.token_id, ev.logprob, ev.top_logprobs or [])
        self.text += ev.text
        self.finish = ev.finish_reason or self.finish
        return {k: v[start:] for k, v in self.lp.items()}

    def completion(self, index: int, logprobs: bool) -> dict:
        return {
            "index": index,
            "text": self.prompt + self.text,
            "logprobs": self.lp if logprobs else None,
            "finish_reason": self._reason(),
        }

    def _reason(self) -> str | None:
        return "length" if self.finish in ("abort", None) else self.finish

    def chat_logprobs(self, start: int = 0) -> dict:
        content = []
        for s, lp, top in zip(
            self.lp["tokens"][start:],
            self.lp["token_logprobs"][start:],
            self.lp["top_logprobs"][start:],
            strict=True,
        ):
            alts = [
                {"token": t, "logprob": v, "bytes": list(t.encode())}
                for t, v in (top or {}).items()
            ]
            content.append(
                {"token": s, "logprob": lp, "bytes": list(s.encode()), "top_logprobs": alts}
            )
        return {"content": content}

    def chat(self, index: int, logprobs: bool) -> dict:
        return {
            "index": index,
            "message": {"role": "assistant", "content": self.text},
            "logprobs": self.chat_logprobs() if logprobs else None,
            "finish_reason": self._reason(),
        }


def sse_response(gen: AsyncIterator[str]) -> StreamingResponse:
    async def body():
        try:
            async for chunk in gen:
                yield chunk
        except APIError as e:  # headers are sent: report in the stream, as OpenAI does
            yield sse_data(error_body(e.message, "server_error", e.param, e.code))
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


# Characters JSON leaves raw in strings that str.splitlines-style clients (httpx's iter_lines,
# for one) take for line breaks, cutting an SSE data line in two: sent as JSON escapes instead.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def sse_data(obj) -> str:
    import json

    return f"data: {json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS)}\n\n"


async def collect(events, choices: list[Choice], request: Request) -> None:
    """Feed every event to its choice; a client that hangs up stops (and frees) the work."""
    try:
        async for batch in events:
            for i, ev in batch:
                choices[i].add(ev)
            if await request.is_disconnected():
                raise APIError(499, "client disconnected")
    finally:
        await events.aclose()


def merge_events(choices: list[Choice], batch):
    """Feed a batch of events to their choices; per choice (in first-seen order): its index,
    where its new logprobs start, its new text, and whether it finished."""
    out: dict[int, list] = {}
    for i, ev in batch:
        if i not in out:
            out[i] = [i, len(choices[i].lp["tokens"]), "", False]
        choices[i].add(ev)
        out[i][2] += ev.text
        out[i][3] = out[i][3] or ev.finish_reason is not None
    return list(out.values())


async def completion_stream(head, choices, events, n_prompt, req) -> AsyncIterator[str]:
    try:
        if req.echo:
            for i, c in enumerate(choices):
                chunk = {"index": i, "text": c.prompt, "logprobs": None, "finish_reason": None}
                yield sse_data({**head, "choices": [chunk]})
        async for batch in events:
            for i, start, text, finished in merge_events(choices, batch):
                c = choices[i]
                lp = {k: v[start:] for k, v in c.lp.items()}
                has_lp = req.logprobs is not None and lp["tokens"]
                if not text and not finished and not has_lp:
                    continue  # text held back (a partial character or a possible stop string)
                chunk = {
                    "index": i,
                    "text": text,
                    "logprobs": lp if req.logprobs is not None else None,
                    "finish_reason": c._reason() if finished else None,
                }
                yield sse_data({**head, "choices": [chunk]})
        if req.stream_options and req.stream_options.include_usage:
            n_out = sum(c.n_tokens for c in choices)
            yield sse_data({**head, "choices": [], "usage": usage(n_prompt, n_out)})
    finally:
        await events.aclose()


async def chat_stream(head, choices, events, n_prompt, req) -> AsyncIterator[str]:
    head = {**head, "object": "chat.completion.chunk"}
    try:
        for i in range(len(choices)):
            delta = {"role": "assistant", "content": ""}
            yield sse_data(
                {**head, "choices": [{"index": i, "delta": delta, "finish_reason": None}]}
            )
        async for batch in events:
            for i, start, text, finished in merge_events(choices, batch):
                c = choices[i]
                if not text and not finished:
                    continue
                chunk = {
                    "index": i,
                    "delta": {"content": text} if text else {},
                    "logprobs": c.chat_logprobs(start) if req.logprobs else None,
                    "finish_reason": c._reason() if finished else None,
                }
                yield sse_data({**head, "choices": [chunk]})
        if req.stream_options and req.stream_options.include_usage:
            n_out = sum(c.n_tokens for c in choices)
            yield sse_data({**head, "choices": [], "usage": usage(n_prompt, n_out)})
    finally:
        await events.aclose()
