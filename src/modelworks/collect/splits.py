"""Each collected record's split, as its source names it (see modelworks/splits.py for the rule
preprocessing applies): `split: train|val|test` on a source puts all its records there,
`split_field` reads a column per record, a Hugging Face source keeps the split it reads.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from modelworks.splits import hf_split_name, read_given, split_name

# built-in sources that name each record's split themselves
OWN_SPLIT_TYPES = ("python_qa", "word_problems", "digit_scenes")


def with_splits(docs: Iterable[dict], src, where: str) -> Iterator[dict]:
    """The source's records with `split` set (or left None: drawn at random later). Only the
    source types that read a split column have `split_field` (collect/source.SplitField)."""
    split_field = getattr(src, "split_field", "")
    if src.kind == "interactions":
        if src.split:
            raise ValueError(
                f"{where}.split: {src.split!r}: recommendation keeps its chronological "
                "leave-one-out split; remove the key"
            )
        yield from docs
        return
    if src.type == "hf":
        fixed = hf_split_name(src.split or "train", where)
    else:
        fixed = split_name(src.split, where)
    for doc in docs:
        raw = doc.pop("split", None)
        if split_field:
            if raw is None and doc.get("metadata"):  # files: the record's other fields
                raw = json.loads(doc["metadata"]).get(split_field)
            value = split_name(raw, f"{where}.split_field {split_field!r} at {doc['id']}", "")
            if fixed is not None and value is not None and value != fixed:
                raise ValueError(
                    f"{where}.split_field {split_field!r}: {doc['id']} says {value!r} but "
                    f"the source's split is {fixed!r}; give one or the other"
                )
            doc["split"] = value or fixed
        elif fixed is None and src.type in OWN_SPLIT_TYPES:
            doc["split"] = split_name(raw, f"{where} at {doc['id']}", "")
        else:
            doc["split"] = fixed
        yield doc


def split_counts(path: Path) -> dict[str, int]:
    """Records per named split in a collection ('unassigned': drawn at random later)."""
    counts = Counter(g or "unassigned" for g in read_given(path))
    return dict(sorted(counts.items()))
