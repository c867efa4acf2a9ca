"""Chat / instruction data for the `chat` task: records -> conversations (`messages` lists).

Accepted records (one per JSONL line or Parquet row):
    {"messages": [{"role": "system|user|assistant", "content": "..."}, ...]}
    {"instruction": "...", "input": "..." (optional), "output": "..."}       (Alpaca style)
    {"prompt": "...", "completion": "..."}
An unknown role, a missing or non-string content, or a conversation without an assistant turn is
a one-line DataError naming the file, the line (or row) and the field; nothing is skipped
silently. `synthetic_chat` generates small instruction pairs the project needs no download for
(repeat, reverse the word order, uppercase, add), small enough for a small model to learn.
"""

from __future__ import annotations

import json
import keyword
import random
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from modelworks.collect.source import Paths, Source, SplitField
from modelworks.errors import DataError
from modelworks.jsonl import json_lines

ROLES = ("system", "user", "assistant")
DEFAULT_SYNTHETIC = 2000


def to_messages(record: object, where: str) -> list[dict]:
    """The conversation a record holds, as [{"role", "content"}]; DataError when malformed."""
    if not isinstance(record, dict):
        raise DataError(
            f"{where}: a chat record must be a JSON object, got {type(record).__name__}"
        )
    if "messages" in record:
        messages = record["messages"]
        if isinstance(messages, str):  # stored as JSON text (our own chats.parquet)
            messages = json.loads(messages)
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: field 'messages' must be a non-empty list of turns")
        out = []
        for i, m in enumerate(messages):
            field = f"messages[{i}]"
            if not isinstance(m, dict):
                raise DataError(f"{where}: {field} must be an object with role and content")
            role = m.get("role")
            if role not in ROLES:
                raise DataError(f"{where}: {field}.role is {role!r}, not one of {', '.join(ROLES)}")
            if not isinstance(m.get("content"), str):
                raise DataError(f"{where}: {field}.content is missing or not a string")
            out.append({"role": role, "content": m["content"]})
    elif "instruction" in record or "output" in record:
        for key in ("instruction", "output"):
            if not isinstance(record.get(key), str):
                raise DataError(f"{where}: field {key!r} is missing or not a string")
        extra = record.get("input")
        if extra is not None and not isinstance(extra, str):
            raise DataError(f"{where}: field 'input' is not a string")
        prompt = record["instruction"] + (f"\n\n{extra}" if extra and extra.strip() else "")
        out = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": record["output"]},
        ]
    elif "prompt" in record or "completion" in record:
        for key in ("prompt", "completion"):
            if not isinstance(record.get(key), str):
                raise DataError(f"{where}: field {key!r} is missing or not a string")
        out = [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"]},
        ]
    else:
        raise DataError(
            f"{where}: no 'messages', 'instruction'/'output' or 'prompt'/'completion' field "
            f"(fields: {sorted(record)[:8]})"
        )
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: field 'messages' has no assistant turn to learn from")
    return out


def read_chats(patterns: list[str], where: str, split_field: str = "") -> Iterator[dict]:
    """Conversations from .jsonl (.gz) and .parquet files, as collect rows."""
    from modelworks.collect.files import _raw, expand

    for path in expand(patterns, where):
        name = path.name.lower()
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            for n, record in enumerate(pq.read_table(path).to_pylist()):
                row = _row(to_messages(record, f"{path} row {n}"), f"{path}:{n}", path)
                yield {**row, "split": record.get(split_field) if split_field else None}
        elif name.endswith((".jsonl", ".jsonl.gz")):
            for n, record in json_lines(_raw(path).decode("utf-8").splitlines(), path, DataError):
                row = _row(to_messages(record, f"{path}:{n}"), f"{path}:{n}", path)
                split = (
                    record.get(split_field) if split_field and isinstance(record, dict) else None
                )
                yield {**row, "split": split}
        else:
            raise DataError(f"{where}.paths: {path}: chat data must be .jsonl or .parquet")


def _row(messages: list[dict], doc_id: str, source: Path | str) -> dict:
    return {
        "id": doc_id,
        "messages": json.dumps(messages, ensure_ascii=False),
        "source": str(source),
    }


def synthetic_chats(n: int | None, seed: int = 0) -> Iterator[dict]:
    """`n` generated instruction pairs over Python's keywords; every answer follows from the
    prompt alone (copy, reverse the word order, uppercase, add two small numbers)."""
    rng = random.Random(seed)
    words = sorted(w for w in keyword.kwlist if w.isalpha() and w.islower())
    for i in range(n or DEFAULT_SYNTHETIC):
        kind = rng.choice(("repeat", "reverse", "upper", "add"))
        picked = rng.sample(words, rng.randint(2, 3))
        if kind == "repeat":
            q, a = f"Repeat: {' '.join(picked)}", " ".join(picked)
        elif kind == "reverse":
            q, a = f"Reverse the words: {' '.join(picked)}", " ".join(picked[::-1])
        elif kind == "upper":
            q, a = f"Uppercase: {picked[0]}", picked[0].upper()
        else:
            x, y = rng.randint(0, 20), rng.randint(0, 20)
            q, a = f"Add {x} and {y}.", str(x + y)
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if rng.random() < 0.2:
            messages.insert(0, {"role": "system", "content": "Answer briefly."})
        yield _row(messages, f"synthetic:{i}", "synthetic_chat")


class ChatSource(Paths, SplitField, Source):
    """Conversations from jsonl/parquet (messages, instruction/output or prompt/completion)."""

    kind: ClassVar[str] = "chat"
    type: Literal["chat"] = "chat"
    repeat: int = Field(
        1, ge=1, description="read each conversation this many times: up-weights a small source "
        "in the training mix (e.g. replayed general answers against forgetting)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _repeat_trains_only(self):
        if self.repeat > 1 and (self.split != "train" or self.split_field):
            raise ValueError(
                f"repeat={self.repeat} up-weights training data: give split: train (and no "
                "split_field), so that no copy lands in val or test beside its twin"
            )
        return self

    def read(self, where, problems, run_dir, bad):
        rows = read_chats(self.paths, where, self.split_field)
        if self.repeat == 1:
            return rows
        return (
            {**row, "id": f"{row['id']}#{k}" if k else row["id"]}
            for row in rows
            for k in range(self.repeat)
        )


class SyntheticChatSource(Source):
    """Generated instruction pairs (repeat, reverse, uppercase, add); `limit` of them (2000)."""

    kind: ClassVar[str] = "chat"
    type: Literal["synthetic_chat"] = "synthetic_chat"

    def read(self, where, problems, run_dir, bad):
        return synthetic_chats(self.limit)
