"""Preference pairs and prompts with answers, for the `dpo` and `grpo` tasks.

`preference` reads records (one per JSONL line or Parquet row):
    {"prompt": "..." | [messages], "chosen": "..." | [messages], "rejected": "..." | [messages]}
    {"chosen": [messages], "rejected": [messages]}      (the prompt: the turns before the last)
    {"prompt": "..." | [messages], "answer": "..."}     (grpo: a prompt and its exact answer)
Each row stores the prompt as JSON messages (up to the last user turn) and the chosen / rejected
replies as the text of their final assistant turn. A missing field is a one-line DataError naming
the file, the line and the field.

`word_problems` generates arithmetic and unit-conversion word problems with exact answers, in
GSM8K's format (a worked answer ending `#### <number>`): each record holds the problem, the
answer, a correct worked reply (chosen) and a corrupted one (rejected: one step miscomputed,
so its final answer is wrong too). Templates listed in HELD_OUT go to the test split, so held-out
accuracy measures problems of a kind the model never trained on.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from modelworks.collect.source import Paths, Source, SplitField
from modelworks.errors import DataError
from modelworks.jsonl import json_lines

INSTRUCTION = "Write the calculation, then a last line '#### ' and the number."
DEFAULT_PROBLEMS = 1200


def _messages(value, where: str, field: str) -> list[dict]:
    if isinstance(value, str):
        if field == "prompt":
            return [{"role": "user", "content": value}]
        return [{"role": "assistant", "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field {field!r} must be a string or a non-empty message list")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
            raise DataError(f"{where}: {field}[{i}] must be an object with role and content")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def to_record(record: object, where: str) -> dict:
    """{prompt: messages, chosen, rejected, answer} (replies as text; absent ones None)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    prompt = None
    if "prompt" in record:
        prompt = _messages(record["prompt"], where, "prompt")
    replies = {}
    for key in ("chosen", "rejected"):
        if key not in record:
            continue
        msgs = _messages(record[key], where, key)
        if msgs[-1]["role"] != "assistant":
            raise DataError(f"{where}: field {key!r} does not end with an assistant turn")
        if prompt is None and len(msgs) > 1:  # messages-style pair: the shared turns lead
            prompt = msgs[:-1]
        replies[key] = msgs[-1]["content"]
    if prompt is None:
        raise DataError(f"{where}: field 'prompt' is missing (fields: {sorted(record)[:8]})")
    if len(replies) == 1:
        missing = ({"chosen", "rejected"} - set(replies)).pop()
        raise DataError(f"{where}: field {missing!r} is missing")
    answer = record.get("answer")
    if not replies and answer is None:
        raise DataError(f"{where}: field 'chosen'/'rejected' (dpo) or 'answer' (grpo) is missing")
    if answer is not None and not isinstance(answer, str | int | float):
        raise DataError(f"{where}: field 'answer' must be a string or a number")
    return {
        "prompt": prompt,
        "chosen": replies.get("chosen"),
        "rejected": replies.get("rejected"),
        "answer": None if answer is None else str(answer),
    }


def _row(rec: dict, doc_id: str, source, split=None, topic=None) -> dict:
    return {
        "id": doc_id,
        "prompt": json.dumps(rec["prompt"], ensure_ascii=False),
        "chosen": rec["chosen"],
        "rejected": rec["rejected"],
        "answer": rec["answer"],
        "source": str(source),
        "split": split,
        "topic": topic,
    }


def read_preferences(patterns: list[str], where: str, split_field: str = "") -> Iterator[dict]:
    from modelworks.collect.files import _raw, expand

    for path in expand(patterns, where):
        name = path.name.lower()
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            records = (
                (f"{path} row {n}", r) for n, r in enumerate(pq.read_table(path).to_pylist())
            )
        elif name.endswith((".jsonl", ".jsonl.gz")):
            lines = _raw(path).decode("utf-8").splitlines()
            records = ((f"{path}:{n}", r) for n, r in json_lines(lines, path, DataError))
        else:
            raise DataError(f"{where}.paths: {path}: preference data must be .jsonl or .parquet")
        for at, r in records:
            split = r.get(split_field) if split_field and isinstance(r, dict) else None
            yield _row(to_record(r, at), at, path, split)


# ---------------------------------------------------------------------------------------------
# built-in word problems

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jo", "Kim", "Lea"]
ITEMS = ["apples", "books", "coins", "pens", "stamps", "shells", "cards", "marbles"]


def _add(r):
    n, it, a, b = r.choice(NAMES), r.choice(ITEMS), r.randint(2, 40), r.randint(2, 40)
    q = f"{n} has {a} {it} and gets {b} more. How many {it} does {n} have now?"
    return q, [(f"{a} + {b}", a + b)]


def _sub(r):
    n, it, b = r.choice(NAMES), r.choice(ITEMS), r.randint(2, 30)
    a = b + r.randint(1, 40)
    q = f"{n} had {a} {it} and gave away {b}. How many {it} are left?"
    return q, [(f"{a} - {b}", a - b)]


def _mul(r):
    n, it, a, b = r.choice(NAMES), r.choice(ITEMS), r.randint(2, 9), r.randint(2, 12)
    q = f"{n} buys {a} boxes with {b} {it} in each box. How many {it} is that?"
    return q, [(f"{a} * {b}", a * b)]


def _two_step(r):
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a, b, c = r.randint(2, 6), r.randint(2, 10), r.randint(1, 15)
    q = f"{n} has {a} bags of {b} {it} and finds {c} more. How many {it} in total?"
    return q, [(f"{a} * {b}", a * b), (f"{a * b} + {c}", a * b + c)]


def _unit(question: str, most: int, factor: int):
    """A unit conversion: `question` about a in [2, most], answered `a * factor`."""

    def make(r):
        a = r.randint(2, most)
        return question.format(a=a), [(f"{a} * {factor}", a * factor)]

    return make


_meters = _unit("How many centimeters are in {a} meters?", 90, 100)
_kilograms = _unit("How many grams are in {a} kilograms?", 30, 1000)
_hours = _unit("How many minutes are in {a} hours?", 48, 60)
_weeks = _unit("How many days are in {a} weeks?", 20, 7)
_dozens = _unit("How many eggs are in {a} dozen eggs?", 25, 12)
_minutes = _unit("How many seconds are in {a} minutes?", 30, 60)


TEMPLATES = {
    "add": _add, "subtract": _sub, "multiply": _mul, "two_step": _two_step,
    "meters_to_cm": _meters, "kg_to_g": _kilograms, "hours_to_minutes": _hours,
    "weeks_to_days": _weeks, "dozens": _dozens, "minutes_to_seconds": _minutes,
}  # fmt: skip
HELD_OUT = ("two_step", "minutes_to_seconds", "dozens")  # the test split: unseen kinds


def worked(steps: list[tuple[str, int]]) -> str:
    lines = [f"{expr} = {value}" for expr, value in steps]
    return "\n".join([*lines, f"#### {steps[-1][1]}"])


def corrupt(steps: list[tuple[str, int]], r: random.Random) -> list[tuple[str, int]]:
    """The same steps with one miscomputed (and the ones after it carried through)."""
    k = r.randrange(len(steps))
    delta = r.choice([-10, -2, -1, 1, 2, 10])
    out = list(steps[:k]) + [(steps[k][0], steps[k][1] + delta)]
    for expr, value in steps[k + 1 :]:  # later steps use the wrong value
        out.append((expr.replace(str(steps[k][1]), str(out[k][1]), 1), value + delta))
    return out


def word_problems(n: int | None = None, seed: int = 0) -> Iterator[dict]:
    """`n` problems (default DEFAULT_PROBLEMS), cycling through the templates in a seeded order."""
    r = random.Random(seed)
    names = list(TEMPLATES)
    for i in range(n or DEFAULT_PROBLEMS):
        topic = names[i % len(names)]
        question, steps = TEMPLATES[topic](r)
        rec = {
            "prompt": [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}],
            "chosen": worked(steps),
            "rejected": worked(corrupt(steps, r)),
            "answer": str(steps[-1][1]),
        }
        split = "test" if topic in HELD_OUT else None
        yield _row(rec, f"word_problems:{topic}:{i}", f"word_problems:{topic}", split, topic)


def final_answer(text: str) -> str | None:
    """The number after the last `####` (GSM8K's format), normalised: '1,200.0' -> '1200'."""
    if "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip().split()
    if not tail:
        return None
    token = tail[0].replace(",", "").rstrip(".").lstrip("$")
    try:
        value = float(token)
    except ValueError:
        return token
    return str(int(value)) if value == int(value) else str(value)


def exact_match_reward(prompt: str, completion: str, answer: str | None) -> float:
    """1.0 when the completion's final answer (after ####) equals the reference, else 0.0."""
    got = final_answer(completion)
    return float(got is not None and answer is not None and got == final_answer(f"#### {answer}"))


def load_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


class PreferenceSource(Paths, SplitField, Source):
    """Preference pairs (prompt/chosen/rejected) or prompts with answers, from jsonl/parquet."""

    kind: ClassVar[str] = "preference"
    type: Literal["preference"] = "preference"

    def read(self, where, problems, run_dir, bad):
        return read_preferences(self.paths, where, self.split_field)


class WordProblemsSource(Source):
    """Built-in arithmetic and unit-conversion problems with exact answers (`limit`, 1200)."""

    kind: ClassVar[str] = "preference"
    type: Literal["word_problems"] = "word_problems"

    def read(self, where, problems, run_dir, bad):
        return word_problems(self.limit)
