"""Text-classification data: labelled texts from collect, cleaned (empty texts dropped, counted),
split, the label set in a stable order, and reading a split back (tasks/text_classification.py
has the rest of the task)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from modelworks.artifacts import atomic_write_json
from modelworks.config import Config, ConfigError
from modelworks.errors import EvaluateError
from modelworks.evaluate.classification import (  # noqa: F401  (public here too)
    classification_metrics,
    none_left,
    plot_confusion,
    unknown_labels,
)
from modelworks.progress import Reporter
from modelworks.splits import assign, describe, read_given, split_stats
from modelworks.train.data import DataError

# ---------------------------------------------------------------------------------------------
# preprocess


def prepare(cfg: Config, run_dir: Path, out: Path, reporter: Reporter) -> dict:
    docs_path = run_dir / "collect" / "documents.parquet"
    table = pq.read_table(docs_path)
    if "label" not in table.column_names:
        raise ConfigError(
            f"{docs_path} has no labels: task text_classification needs a collect source of "
            "type: table (with text_field and label_field)"
        )
    texts = [t.strip() for t in table.column("text").to_pylist()]
    labels = table.column("label").to_pylist()
    keep = [i for i, t in enumerate(texts) if t]
    n_empty = len(texts) - len(keep)
    if n_empty:
        reporter.info(f"[preprocess] dropped {n_empty} empty text(s)")
    all_given, sources = read_given(docs_path), table.column("source").to_pylist()
    given = [all_given[i] for i in keep]
    p = cfg.preprocess
    parts = {
        s: [keep[j] for j in idx]
        for s, idx in assign(given, p.val_fraction, p.test_fraction, cfg.seed).items()
    }
    n = len(keep)
    if len(parts["train"]) < 2 or not parts["val"]:
        raise DataError(
            f"{docs_path}: {n} non-empty texts are too few to split into train/val/test "
            f"(train {len(parts['train'])}, val {len(parts['val'])}, test {len(parts['test'])})"
        )
    classes = sorted({labels[i] for i in parts["train"]}, key=_label_key)
    index = {c: i for i, c in enumerate(classes)}
    for split in ("val", "test"):
        unseen = sorted({labels[i] for i in parts[split]} - set(classes), key=_label_key)
        if unseen:
            hits = [i for i in parts[split] if labels[i] == unseen[0]]
            raise DataError(
                f"{sources[hits[0]]}: label {unseen[0]!r} ({len(hits)} example(s)) falls only in "
                f"the {split} split, so the model never sees it in training; add examples of it "
                "or remove it"
            )
    if len(classes) < 2:
        raise DataError(f"{docs_path}: the training split has one label ({classes}); need >= 2")
    for split, idx in parts.items():
        pq.write_table(
            pa.table(
                {
                    "text": [texts[i] for i in idx],
                    "label": pa.array([index[labels[i]] for i in idx], pa.int64()),
                }
            ),
            out / f"{split}.parquet",
        )
    atomic_write_json(out / "labels.json", {"classes": classes})
    if cfg.finetune is None or cfg.finetune.from_ == "pretrain":  # a from-scratch model
        from modelworks.preprocess.tokenizer import train_bpe

        tok = train_bpe((texts[i] for i in parts["train"]), cfg.preprocess.vocab_size)
        tok.save(str(out / "tokenizer.json"))
    counts = {s: len(i) for s, i in parts.items()}
    reporter.info(
        f"[preprocess] {n} texts, {len(classes)} labels; train/val/test {counts['train']}/"
        f"{counts['val']}/{counts['test']}"
    )
    splits = split_stats(parts, all_given, sources, p.val_fraction, p.test_fraction)
    for line in describe(splits):
        reporter.info(f"[preprocess] {line}")
    stats = {
        "texts": n,
        "empty_dropped": n_empty,
        "classes": classes,
        "split_sizes": counts,
        "splits": splits,
    }
    if parts["test"]:
        from modelworks.preprocess.decontaminate import test_overlap

        stats["test_overlap"] = test_overlap(
            (texts[i] for i in parts["train"]), (texts[i] for i in parts["test"])
        )
        hits = stats["test_overlap"]["sharing_ngram_with_train"]
        reporter.info(f"[preprocess] decontamination: {hits} test text(s) overlap train")
    return stats


def _label_key(label: str):
    """Numeric labels sort as numbers ('2' before '10'), others as text."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def load_split(run_dir: Path, split: str) -> tuple[list[str], torch.Tensor]:
    table = pq.read_table(run_dir / "preprocess" / f"{split}.parquet")
    return table.column("text").to_pylist(), torch.tensor(table.column("label").to_pylist())


def classes_of(run_dir: Path) -> list[str]:
    return json.loads((run_dir / "preprocess" / "labels.json").read_text())["classes"]


def prepare_test(run: Config, run_dir: Path, shadow: Path, pre: Path) -> dict:
    """`evaluate --data`: the new labelled texts with labels the run knows, as test.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    classes = json.loads((run_dir / "preprocess" / "labels.json").read_text())["classes"]
    table = pq.read_table(shadow / "collect" / "documents.parquet")
    if "label" not in table.column_names:
        raise EvaluateError("--data: the source has no label column; it needs text and label")
    texts = [t.strip() for t in table.column("text").to_pylist()]
    labels = table.column("label").to_pylist()
    keep, unknown = unknown_labels(labels, classes)
    keep = [i for i in keep if texts[i]]
    index = {c: i for i, c in enumerate(classes)}
    out = {"text": [texts[i] for i in keep], "label": [index[labels[i]] for i in keep]}
    pq.write_table(pa.table({"text": out["text"], "label": pa.array(out["label"], pa.int64())}),
                   pre / "test.parquet")  # fmt: skip
    if not keep:
        raise EvaluateError(none_left(unknown, classes))
    return unknown
