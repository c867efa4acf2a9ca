"""Multiple-choice and exact-match tasks from local JSONL, scored as lm-evaluation-harness does.

    evaluate:
      tasks:
        - {path: data/quiz.jsonl, type: multiple_choice}   # {"question", "choices", "answer": i}
        - {path: data/qa.jsonl, type: exact_match}          # {"question", "answer": "text"}

multiple_choice: each choice is scored by log P(" " + choice | question) (lm-eval's default
target delimiter is a space); `acc` takes the most likely choice, `acc_norm` the most likely per
character of the choice (lm-eval's length normalisation). exact_match: greedy generation from the
question until a stop string (default a newline), stripped, compared with the answer.
The same items run under lm-eval through `evaluate/lm_eval_model.py` give the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelworks.artifacts import atomic_write_json
from modelworks.evaluate.lm import LMScorer
from modelworks.evaluate.metrics import bootstrap, fmt_ci
from modelworks.evaluate.report import EvaluateError
from modelworks.jsonl import json_lines


def load_items(task) -> list[dict]:
    """The task's JSONL items, checked: one clear line naming the file, line and key."""
    path = Path(task.path)
    if not path.is_file():
        raise EvaluateError(f"evaluate.tasks: {path} does not exist")
    items = []
    for n, item in json_lines(path.read_text(encoding="utf-8").splitlines(), path, EvaluateError):
        keys = [task.question_field, task.answer_field]
        if task.type == "multiple_choice":
            keys.append(task.choices_field)
        for k in keys:
            if not isinstance(item, dict) or k not in item:
                raise EvaluateError(f"{path}:{n}: no key {k!r}")
        if task.type == "multiple_choice":
            choices, ans = item[task.choices_field], item[task.answer_field]
            if not isinstance(choices, list) or len(choices) < 2:
                raise EvaluateError(f"{path}:{n}: {task.choices_field!r} needs 2+ choices")
            if not isinstance(ans, int) or not 0 <= ans < len(choices):
                raise EvaluateError(
                    f"{path}:{n}: {task.answer_field!r} must be an index into the choices"
                )
        items.append(item)
        if task.limit and len(items) >= task.limit:
            break
    if not items:
        raise EvaluateError(f"{path}: no items; the task is empty")
    return items


def multiple_choice(scorer: LMScorer, task, items: list[dict]) -> tuple[dict, list[dict]]:
    pairs, spans = [], []
    for it in items:
        choices = [str(c) for c in it[task.choices_field]]
        spans.append((len(pairs), choices))
        pairs += [(str(it[task.question_field]), " " + c) for c in choices]
    lls = [ll for ll, _ in scorer.loglikelihood(pairs)]
    acc, acc_norm, records = [], [], []
    for it, (start, choices) in zip(items, spans, strict=True):
        ll = np.array(lls[start : start + len(choices)])
        norm = ll / np.array([float(len(c)) for c in choices])
        gold = it[task.answer_field]
        acc.append(float(np.argmax(ll) == gold))
        acc_norm.append(float(np.argmax(norm) == gold))
        records.append(
            {
                "question": it[task.question_field],
                "choices": choices,
                "gold": gold,
                "loglikelihoods": ll.tolist(),
                "pred": int(np.argmax(ll)),
            }
        )
    return {"acc": np.array(acc), "acc_norm": np.array(acc_norm)}, records


def exact_match(scorer: LMScorer, task, items: list[dict]) -> tuple[dict, list[dict]]:
    reqs = [(str(it[task.question_field]), task.until, task.max_new_tokens) for it in items]
    outs = scorer.generate_until(reqs)
    em, records = [], []
    for it, out in zip(items, outs, strict=True):
        gold = str(it[task.answer_field]).strip()
        em.append(float(out.strip() == gold))
        records.append({"question": it[task.question_field], "gold": gold, "output": out})
    return {"exact_match": np.array(em)}, records


def run_task(scorer: LMScorer, task, n_boot: int = 1000, seed: int = 0) -> tuple[dict, list]:
    """{metric: value, metric_ci: [lo, hi], items: N} and the per-item records."""
    items = load_items(task)
    fn = multiple_choice if task.type == "multiple_choice" else exact_match
    per_item, records = fn(scorer, task, items)
    result: dict = {"type": task.type, "items": len(items)}
    for name, values in per_item.items():
        result[name] = float(values.mean())
        if n_boot:
            ci = bootstrap(lambda i, v=values: v[i].mean(), len(values), n_boot, seed)
            result[f"{name}_ci"] = list(ci)
    return result, records


def task_name(task) -> str:
    return task.name or Path(task.path).stem


def run_tasks(scorer: LMScorer, tasks, n_boot: int, seed: int, out: Path | None = None) -> dict:
    """Every configured task; per-item records go to `<out>/tasks/<name>.json`."""
    results = {}
    for task in tasks:
        name = task_name(task)
        results[name], records = run_task(scorer, task, n_boot, seed)
        if out is not None:
            (out / "tasks").mkdir(exist_ok=True)
            atomic_write_json(out / "tasks" / f"{name}.json", records)
    return results


def tasks_section(results: dict) -> str:
    rows = ["| task | type | items | metric | value [95% CI] |", "|---|---|---|---|---|"]
    for name, r in results.items():
        for metric in ("acc", "acc_norm", "exact_match"):
            if metric in r:
                rows.append(
                    f"| {name} | {r['type']} | {r['items']} | {metric} | "
                    f"{fmt_ci(r[metric], r.get(metric + '_ci'))} |"
                )
    return "\n".join(rows)
