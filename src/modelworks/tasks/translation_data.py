"""Translation data: parallel pairs from collect, cleaned and split by source sentence (so no
test source is seen in training), the prompt template, and reading a split back
(tasks/translation.py has the rest of the task)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from modelworks.artifacts import atomic_write_json
from modelworks.config import Config, ConfigError
from modelworks.errors import EvaluateError
from modelworks.progress import Reporter
from modelworks.splits import SPLITS, assign, read_given, split_stats
from modelworks.train.data import DataError

# ---------------------------------------------------------------------------------------------
# preprocess


def prepare(cfg: Config, run_dir: Path, out: Path, reporter: Reporter, template: str) -> dict:
    docs_path = run_dir / "collect" / "documents.parquet"
    table = pq.read_table(docs_path)
    if "target" not in table.column_names:
        raise ConfigError(
            f"{docs_path} has no targets: task translation needs a collect source of "
            "type: parallel (with source_field and target_field)"
        )
    if template.count("{source}") != 1:
        raise ConfigError(
            f"tasks.translation.prompt_template={template!r} must contain {{source}} exactly once"
        )
    sources = [t.strip() for t in table.column("text").to_pylist()]
    targets = [t.strip() for t in table.column("target").to_pylist()]
    empty_source = sum(1 for s in sources if not s)
    empty_target = sum(1 for s, t in zip(sources, targets, strict=True) if s and not t)
    keep = [i for i, (s, t) in enumerate(zip(sources, targets, strict=True)) if s and t]
    if empty_source or empty_target:
        reporter.info(
            f"[preprocess] dropped {empty_source} pair(s) with an empty source and "
            f"{empty_target} with an empty target"
        )
    # split by distinct source sentence: its translations all go to one split
    groups: dict[str, list[int]] = {}
    for i in keep:
        groups.setdefault(sources[i], []).append(i)
    names = list(groups)
    n = len(names)
    # a sentence named test (or val) by any of its pairs goes there with all its translations
    all_given = read_given(docs_path)
    rank = {"test": 2, "val": 1}
    given = [
        max((all_given[i] for i in groups[k]), key=lambda g: rank.get(g or "", 0)) for k in names
    ]
    p = cfg.preprocess
    cut = assign(given, p.val_fraction, p.test_fraction, cfg.seed)
    if len(cut["train"]) < 2 or not cut["val"]:
        raise DataError(
            f"{docs_path}: {len(keep)} non-empty pairs ({n} distinct sources) are too few to "
            "split into train/val/test"
        )
    parts = {s: [i for g in cut[s] for i in groups[names[g]]] for s in SPLITS}
    for split, idx in parts.items():
        pq.write_table(
            pa.table({"source": [sources[i] for i in idx], "target": [targets[i] for i in idx]}),
            out / f"{split}.parquet",
        )
    atomic_write_json(out / "format.json", {"prompt_template": template})
    stats = {
        "pairs": len(table),
        "empty_source_dropped": empty_source,
        "empty_target_dropped": empty_target,
        "distinct_sources": n,
        "split_sizes": {s: len(i) for s, i in parts.items()},
        "splits": split_stats(
            parts, all_given, table.column("source").to_pylist(), p.val_fraction, p.test_fraction
        ),
    }
    if cfg.finetune is None or cfg.finetune.from_ == "pretrain":  # a model trained here
        from modelworks.preprocess.tokenizer import find_tokenizer, load_tokenizer, train_bpe

        train_text = [sources[i] for i in parts["train"]] + [targets[i] for i in parts["train"]]
        reuse = getattr(cfg.preprocess, "tokenizer", "train")
        if reuse == "train":
            tok = train_bpe(train_text, cfg.preprocess.vocab_size)
        else:  # a base's tokenizer (its folder's tokenizer_config.json names its end token)
            tok_file = find_tokenizer(reuse)
            tok = load_tokenizer(tok_file)
            if (tok_file.parent / "tokenizer_config.json").is_file():
                shutil.copy2(tok_file.parent / "tokenizer_config.json", out)
        tok.save(str(out / "tokenizer.json"))
        sample = train_text[:: max(1, len(train_text) // 2000)]
        stats["tokenizer_roundtrip_failures"] = sum(
            tok.decode(tok.encode(t).ids) != t for t in sample
        )
        stats["tokenizer_roundtrip_checked"] = len(sample)
    sizes = stats["split_sizes"]
    reporter.info(
        f"[preprocess] {len(keep)} pairs ({n} distinct sources); train/val/test "
        f"{sizes['train']}/{sizes['val']}/{sizes['test']}"
    )
    return stats


def load_split(run_dir: Path, split: str) -> tuple[list[str], list[str]]:
    path = run_dir / "preprocess" / f"{split}.parquet"
    if not path.is_file():
        raise DataError(f"{path} does not exist; run `modelworks preprocess` first")
    table = pq.read_table(path)
    return table.column("source").to_pylist(), table.column("target").to_pylist()


def prompt_template(run_dir: Path) -> str:
    return json.loads((run_dir / "preprocess" / "format.json").read_text())["prompt_template"]


def format_prompt(template: str, source: str) -> str:
    return template.replace("{source}", source)


def prepare_test(run: Config, run_dir: Path, shadow: Path, pre: Path) -> dict:
    """`evaluate --data`: the new pairs, as test.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(shadow / "collect" / "documents.parquet")
    if "target" not in table.column_names:
        raise EvaluateError("--data: the source has no target column; it needs type: parallel")
    pairs = [
        (s.strip(), t.strip())
        for s, t in zip(table["text"].to_pylist(), table["target"].to_pylist(), strict=True)
        if s.strip() and t.strip()
    ]
    pq.write_table(
        pa.table({"source": [s for s, _ in pairs], "target": [t for _, t in pairs]}),
        pre / "test.parquet",
    )
    return {"rows": 0, "labels": {}}
