"""Train/val/test splits: the ones the data names, then a seeded random draw for the rest.

A collect source may put all its records in one split (`split: test`), name a column holding
each record's split (`split_field`), or (Hugging Face) keep the dataset's own split names. The
collection then carries a `split` column: `train`, `val`, `test`, or empty (unassigned).

Every task's preprocessing applies one rule (`assign`): a record whose split is `val` or `test`
stays there. A split that no record names is drawn at random (`preprocess.val_fraction`,
`test_fraction`, seeded) from the train side, the records named `train` or left unassigned; a
split that some record names is never drawn. So Fashion-MNIST's two sources (train: train, t10k:
test) give val as a random share of train and test exactly the t10k files. Recommendation keeps
its chronological leave-one-out and accepts no split.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
# Hugging Face datasets (and GLUE) call the validation split `validation`
ALIASES = {"validation": "val"}


def split_name(value: object, where: str, field: str = "split") -> str | None:
    """A record's split as train/val/test (None when unset); one-line ValueError otherwise."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    name = ALIASES.get(text.lower(), text.lower())
    if name not in SPLITS:
        at = f"{where}.{field}" if field else where
        raise ValueError(
            f"{at}: {text!r} is not a split; use train, val or test (validation is read as val)"
        )
    return name


def hf_split_name(value: str, where: str) -> str:
    """The split a Hugging Face split's records go to: `train[:10%]` -> train, validation -> val."""
    base = value.split("[", 1)[0].split("+", 1)[0].strip()
    return split_name(base, where) or "train"


def read_given(path: Path) -> list[str | None]:
    """The `split` column of a collect Parquet file (all None for a collection without one)."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    if "split" not in names:
        return [None] * pq.ParquetFile(path).metadata.num_rows
    return pq.read_table(path, columns=["split"]).column("split").to_pylist()


def drawn_fractions(
    given: Sequence[str | None], val_fraction: float, test_fraction: float
) -> tuple[float, float]:
    """(val, test) shares to draw at random: 0 for a split that some record names."""
    named = set(given)
    return (
        0.0 if "val" in named else val_fraction,
        0.0 if "test" in named else test_fraction,
    )


def assign(
    given: Sequence[str | None],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    min_val: int = 1,
) -> dict[str, list[int]]:
    """Positions of the records in each split. Records named val/test stay there; the others
    (named train or unassigned) are shuffled with `seed`, and the splits no record names are
    cut from them: test first, then val (at least `min_val` when val is drawn), the rest train.
    With nothing named this is exactly the former random split."""
    val_f, test_f = drawn_fractions(given, val_fraction, test_fraction)
    pool = np.array([i for i, g in enumerate(given) if g not in ("val", "test")], dtype=np.int64)
    order = pool[np.random.default_rng(seed).permutation(len(pool))]
    n = len(order)
    n_test = int(round(n * test_f))
    n_val = max(min_val, int(round(n * val_f))) if val_f else 0
    fixed = {s: [i for i, g in enumerate(given) if g == s] for s in ("val", "test")}
    return {
        "train": order[n_test + n_val :].tolist(),
        "val": fixed["val"] + order[n_test : n_test + n_val].tolist(),
        "test": fixed["test"] + order[:n_test].tolist(),
    }


def split_stats(
    parts: dict[str, Sequence[int]],
    given: Sequence[str | None],
    sources: Sequence[str],
    val_fraction: float,
    test_fraction: float,
) -> dict:
    """For stats.json and the report: each split's size and where its records came from
    (the sources that named it, or the random draw)."""
    val_f, test_f = drawn_fractions(given, val_fraction, test_fraction)
    drawn = {"val": val_f, "test": test_f}
    out = {}
    for split in SPLITS:
        idx = parts.get(split, [])
        origin: Counter = Counter()
        for i in idx:
            if given[i] == split:
                origin[f"{sources[i]} (split: {split})"] += 1
            elif split == "train":
                origin["unassigned records"] += 1
            else:
                origin[f"random draw ({split}_fraction={drawn[split]})"] += 1
        out[split] = {"rows": len(idx), "from": dict(origin)}
    return out


def describe(splits: dict) -> list[str]:
    """One line per split for logs and reports: `test: 10,000 rows from t10k-... (split: test)`."""
    lines = []
    for split, info in splits.items():
        origins = "; ".join(f"{n:,} from {o}" for o, n in info["from"].items()) or "empty"
        lines.append(f"{split}: {info['rows']:,} rows ({origins})")
    return lines
