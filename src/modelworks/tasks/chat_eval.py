"""Evaluating a chat run: assistant-token loss and greedy answers of the tuned model and its base,
side by side, with the general check (tasks/chat.py has the task)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelworks.artifacts import atomic_write_json
from modelworks.chat_template import (  # noqa: F401  (CHAT_TEMPLATE: public here too)
    DEFAULT_CHAT_STOP,
    render_chat,
)
from modelworks.config import Config
from modelworks.progress import Reporter
from modelworks.tasks.chat_data import ChatFormat, encode_all, load_conversations
from modelworks.tasks.chat_serve import load_chat_engine
from modelworks.train.sft import (
    example_losses,
)

if TYPE_CHECKING:
    from modelworks.evaluate.checkpoint import Checkpoint


def evaluate(
    cfg: Config, run_dir: Path, out: Path, reporter: Reporter, ckpt: Checkpoint | None = None
):
    """Assistant-token loss / perplexity on val (95% bootstrap CI over conversations) and greedy
    answers to val prompts, for `ckpt` (evaluate/checkpoint.py; default: the one it chooses)
    and for its base before SFT."""
    from modelworks.evaluate.checkpoint import choose_checkpoint
    from modelworks.evaluate.metrics import fmt_ci, perplexity, ratio_ci
    from modelworks.evaluate.report import EvaluateError, md_cell, md_table, training_table
    from modelworks.evaluate.translation_metrics import corpus_scores

    ckpt = ckpt or choose_checkpoint(cfg)
    stage = ckpt.stage_dir.name
    has_test = (Path(run_dir) / "preprocess" / "test.jsonl").is_file()  # a source named one
    split = cfg.evaluate.split or ("test" if has_test else "val")
    if not (Path(run_dir) / "preprocess" / f"{split}.jsonl").is_file():
        raise EvaluateError(f"evaluate.split={split!r}: the run has no such split (val, test)")
    convs = load_conversations(run_dir, split)
    if not convs:
        raise EvaluateError(f"{run_dir}/preprocess/{split}.jsonl: no conversations to evaluate on")
    engine = load_chat_engine(run_dir, cfg.device, cfg.name, weights=ckpt.folder)
    fmt = ChatFormat(engine.tokenizer, engine.chat_template, engine.eot, engine.eos)
    train_cfg = cfg.finetune if stage == "finetune" else cfg.pretrain
    max_len = min(train_cfg.seq_len, engine.context_len)
    examples, n_trunc = encode_all(fmt, convs, max_len)
    n_gen = min(cfg.evaluate.limit or len(convs), len(convs))  # evaluate.limit: 0 = all
    e = cfg.evaluate
    results = {"tuned": _score(engine, fmt, examples, convs[:n_gen], e.max_new_tokens)}
    trained = json.loads((run_dir / stage / "manifest.json").read_text())["summary"]
    if stage == "finetune":  # the same measures before SFT
        from modelworks.base_model import load_base
        from modelworks.serve.engine import Engine

        base = load_base(cfg)
        base_engine = Engine(
            base.model.to(engine.device), engine.tokenizer, "base", engine.eot, engine.eos
        )
        base_engine.chat_template, base_engine.chat_stop = engine.chat_template, engine.chat_stop
        results["base"] = _score(base_engine, fmt, examples, convs[:n_gen], e.max_new_tokens)
    metrics: dict = {
        "split": split,
        "rows": len(convs),
        "conversations": len(convs),
        "truncated": n_trunc,
    }
    for who, r in results.items():
        pre = "" if who == "tuned" else "base_"
        nats, counts = r["nats"], r["counts"]
        loss = float(nats.sum() / max(counts.sum(), 1))
        metrics[f"{pre}loss"] = loss
        metrics[f"{pre}perplexity"] = perplexity(loss)
        metrics[f"{pre}exact_match"] = r["exact_match"]
        hits = np.array([float(a["hit"]) for a in r["answers"]])
        text = corpus_scores(
            [a["response"] for a in r["answers"]], [a["reference"] for a in r["answers"]],
            "13a", e.bootstrap, cfg.seed,
        )  # fmt: skip
        metrics[f"{pre}chrf"] = text["chrf"]
        metrics[f"{pre}general_correct"] = r["general"]["correct"]
        metrics["general_total"] = r["general"]["total"]
        if e.bootstrap:
            ci = ratio_ci(nats, counts, n_boot=e.bootstrap, seed=cfg.seed)
            metrics[f"{pre}loss_ci"] = list(ci)
            metrics[f"{pre}perplexity_ci"] = [perplexity(v) for v in ci]
            if len(hits) > 1:
                em = ratio_ci(hits, np.ones_like(hits), n_boot=e.bootstrap, seed=cfg.seed)
                metrics[f"{pre}exact_match_ci"] = list(em)
                metrics[f"{pre}chrf_ci"] = text.get("chrf_ci")
        metrics["assistant_tokens"] = int(counts.sum())
    metrics["answered"] = n_gen
    generations = results["tuned"]["answers"]
    atomic_write_json(out / "generations.json", generations)
    atomic_write_json(out / "general.json", {k: r["general"] for k, r in results.items()})
    m = metrics
    reporter.info(
        f"[evaluate] val assistant-token loss {m['loss']:.4f} (perplexity {m['perplexity']:.2f})"
        + (f" vs base {m['base_loss']:.4f}" if "base_loss" in m else "")
        + f"; exact match {m['exact_match']:.3f} on {n_gen} answers"
        + (f" (base {m['base_exact_match']:.3f})" if "base_exact_match" in m else "")
    )
    rows = [
        (f"{split} conversations / assistant tokens", f"{len(convs)} / {m['assistant_tokens']:,}"),
        ("assistant-token loss (nats)", fmt_ci(m["loss"], m.get("loss_ci"))),
        ("perplexity", fmt_ci(m["perplexity"], m.get("perplexity_ci"), 2)),
        (
            f"greedy exact match ({n_gen} answers)",
            fmt_ci(m["exact_match"], m.get("exact_match_ci")),
        ),
        ("chrF of the answers (0-100)", fmt_ci(m["chrf"], m.get("chrf_ci"), 1)),
        ("general check (correct)", f"{m['general_correct']} / {m['general_total']}"),
    ]
    if "base_loss" in m:
        rows += [
            ("base model (before SFT) loss", fmt_ci(m["base_loss"], m.get("base_loss_ci"))),
            ("base model exact match", fmt_ci(m["base_exact_match"], m.get("base_exact_match_ci"))),
            ("base model chrF", fmt_ci(m["base_chrf"], m.get("base_chrf_ci"), 1)),
            ("base model general check", f"{m['base_general_correct']} / {m['general_total']}"),
        ]
        if m["base_general_correct"]:  # the target: under 10% relative loss
            m["general_relative_loss"] = 1 - m["general_correct"] / m["base_general_correct"]
            rows.append(("general check relative loss", f"{m['general_relative_loss']:.1%}"))
    rows.append((f"conversations truncated to {max_len} tokens", str(n_trunc)))
    samples = "\n".join(
        ["| prompt | reference | response |", "|---|---|---|"]
        + [
            f"| {md_cell(g['prompt'])} | {md_cell(g['reference'])} | {md_cell(g['response'])} |"
            for g in generations[:8]
        ]
    )
    sections = [
        (f"Results ({split} split; [95% bootstrap CI over conversations])", md_table(rows)),
        (f"Sample answers (greedy, last user turn of {split} conversations)", samples),
        (f"Training ({stage})", training_table(trained)),
    ]
    return metrics, sections, []


def _score(engine, fmt: ChatFormat, examples, convs, max_new_tokens: int) -> dict:
    """Per-conversation assistant-token nats and counts; greedy answers to the last turn; the
    general check (evaluate/general.py). The answers go through the engine's batching loop
    together (the same tokens as one at a time, tests/serve/test_serve.py)."""
    from modelworks.evaluate.general import QUESTIONS, general_check

    nats, counts, _ = example_losses(engine.model, examples, engine.device)
    jobs, answers = [], []  # (prompt ids, max new tokens), and what each answer is scored for
    for messages in convs:
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        ids = engine.encode(fmt.render(messages[:last], True))
        room = engine.context_len - len(ids) - 1
        if room < 1:
            continue
        jobs.append((ids, min(max_new_tokens, room)))
        prompt = messages[last - 1]["content"] if last else ""
        answers.append({"prompt": prompt, "reference": messages[last]["content"]})
    general = {}  # the general check: one user turn, greedy
    for question, _ in QUESTIONS:
        ids = engine.encode(fmt.render([{"role": "user", "content": question}], True))
        room = engine.context_len - len(ids) - 1  # a tiny test model's context may not fit it
        general[question] = len(jobs) if room > 0 else None
        if room > 0:
            jobs.append((ids, min(24, room)))
    texts = _greedy_all(engine, jobs)
    hits = 0
    for a, text in zip(answers, texts, strict=False):
        a["response"] = text.strip()
        a["hit"] = a["response"] == a["reference"].strip()
        hits += a["hit"]
    return {
        "nats": nats,
        "counts": counts,
        "exact_match": hits / max(len(answers), 1),
        "answers": answers,
        "general": general_check(lambda q: "" if general[q] is None else texts[general[q]].strip()),
    }


def _greedy_all(engine, jobs: list[tuple[list[int], int]]) -> list[str]:
    """Greedy completions of every (prompt ids, max new tokens), stopping at the engine's end
    tokens and chat stop strings, run through its batching loop `max_batch` at a time."""
    from modelworks.serve.batch import complete_all
    from modelworks.serve.sampling import SamplingParams

    stop = list(engine.chat_stop)
    done = complete_all(
        engine, [(ids, SamplingParams(max_tokens=n, temperature=0.0, stop=stop)) for ids, n in jobs]
    )
    return [c.text for c in done]
