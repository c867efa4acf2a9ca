"""`modelworks chat`: talk to a model in the terminal, one conversation with history.

    modelworks chat runs/chat                              # a chat run (its fine-tuned model)
    modelworks chat runs/chat --system "Answer briefly." --temperature 0 --max-tokens 64
    modelworks chat path/to/hf-llama-folder                # a local Hugging Face Llama folder

Lines typed are user turns; the reply streams as it is generated. `/reset` starts a new
conversation, `/exit` (or end of input, Ctrl-D) quits. The prompt is rendered exactly as
/v1/chat/completions renders it (serve/openai.py's `engine_chat_text`), with the run's template;
when the conversation outgrows the context, the oldest turns are dropped.
"""

from __future__ import annotations

import queue
import sys
from pathlib import Path
from typing import TextIO

from modelworks.serve.openai import DEFAULT_CHAT_STOP, engine_chat_text
from modelworks.serve.sampling import Event, SamplingParams


def chat_repl(
    target: str | Path,
    device: str = "auto",
    system: str | None = None,
    max_tokens: int = 256,
    temperature: float = 0.7,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    from modelworks.tasks.chat_serve import load_chat_engine

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    _refuse_non_generative(Path(target))
    engine = load_chat_engine(target, device)
    try:
        return _converse(engine, system, max_tokens, temperature, stdin, stdout)
    finally:
        engine.close()


# tasks whose model predicts something other than the next token, in the user's words
_NOT_GENERATIVE = {
    "text_classification": "a text classifier",
    "image_classification": "an image classifier",
    "recommendation": "a recommender",
}


def _refuse_non_generative(run_dir: Path) -> None:
    """One line naming the run's task where its model cannot write text (rather than what
    loading it as a language model trips over first: a tokenizer without an end token)."""
    import yaml

    from modelworks.config import ConfigError

    try:
        stored = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return  # not a run: a model or Hugging Face folder, checked as it loads
    task = stored.get("task") if isinstance(stored, dict) else None
    if task in _NOT_GENERATIVE:
        raise ConfigError(
            f"{run_dir} is a {task} run ({_NOT_GENERATIVE[task]}: it predicts labels, it does "
            "not write text); chat needs a language-model or chat run (task: language_modeling "
            "or chat, e.g. `modelworks run configs/chat.yaml`), or a Hugging Face Llama folder"
        )


def _converse(engine, system, max_tokens, temperature, stdin: TextIO, stdout: TextIO) -> int:
    stop = list(getattr(engine, "chat_stop", []))
    if engine.chat_template is None and DEFAULT_CHAT_STOP not in stop:
        stop.append(DEFAULT_CHAT_STOP)
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    interactive = stdin.isatty()
    stdout.write(f"chatting with {engine.name} (/reset: new conversation, /exit: quit)\n")
    while True:
        if interactive:
            stdout.write("you> ")
        stdout.flush()
        line = stdin.readline()
        if not line:  # end of input
            if interactive:
                stdout.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return 0
        if text == "/reset":
            history = list(start)
            stdout.write("(new conversation)\n")
            continue
        history.append({"role": "user", "content": text})
        ids = _fit(engine, history, start, max_tokens)
        if ids is None:
            stdout.write("(that message alone is longer than the model's context)\n")
            history.pop()
            continue
        room = engine.context_len - len(ids) - 1
        params = SamplingParams(
            max_tokens=min(max_tokens, room), temperature=temperature, stop=stop
        )
        stdout.write("assistant> ")
        reply = _stream(engine, ids, params, stdout)
        stdout.write("\n")
        history.append({"role": "assistant", "content": reply.strip()})


def _fit(engine, history: list[dict], start: list[dict], max_tokens: int) -> list[int] | None:
    """The prompt ids, dropping the oldest exchanges while they leave no room to answer."""
    while True:
        ids = engine.encode(engine_chat_text(engine, history))
        if len(ids) + 1 + min(max_tokens, 16) <= engine.context_len:
            return ids
        if len(history) <= len(start) + 1:
            return None
        del history[len(start) : len(start) + 2]  # one user turn and its answer


def _stream(engine, ids: list[int], params: SamplingParams, stdout: TextIO) -> str:
    events: queue.Queue[Event] = queue.Queue()
    seq = engine.submit(ids, params, events.put)
    parts = []
    try:
        while True:
            event = events.get()
            text = event.text if parts else event.text.lstrip()  # "Assistant:" + " reply"
            if text:
                parts.append(text)
                stdout.write(text)
                stdout.flush()
            if event.finish_reason is not None:
                return "".join(parts)
    except KeyboardInterrupt:
        seq.cancel()
        return "".join(parts)
