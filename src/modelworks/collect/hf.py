"""Hugging Face datasets through `datasets.load_dataset`: a local folder or data files (works
offline), or a Hub name when online. `streaming: true` (the default) reads records as they come,
so a large dataset never has to fit in memory or on disk first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from modelworks.collect.rows import BadRows
from modelworks.collect.source import HubDataset, Source

_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
}


def read_hf(
    dataset: str,
    split: str,
    text_field: str,
    streaming: bool = True,
    subset: str | None = None,
    where: str = "collect.sources",
    label_field: str | None = None,
    bad: BadRows | None = None,
) -> Iterator[dict]:
    """Documents of a dataset split; with `label_field`, labelled rows (id, text, label, source)
    for text classification, ClassLabel integers given as their names. A row without its label
    is a bad row (collect/rows.py) listed as `<dataset>[<split>]:<row index from 0>`; without
    `bad`, the default `max_bad_rows` is checked at the end."""
    try:
        import datasets
    except ImportError:
        raise ImportError("type hf needs the datasets package: pip install datasets") from None
    path = Path(dataset)
    kwargs: dict = {"split": split, "streaming": streaming}
    if path.is_file():  # a single data file: pick the builder from its suffix
        suffix = "".join(s for s in path.suffixes if s != ".gz")[-8:]
        builder = next((b for s, b in _BUILDERS.items() if suffix.endswith(s)), None)
        if builder is None:
            raise ValueError(f"{where}.dataset: {path}: no datasets builder for {path.suffix!r}")
        args = (builder,)
        kwargs["data_files"] = {split: str(path)}
    else:
        args = (dataset,) if subset is None else (dataset, subset)
    try:
        ds = datasets.load_dataset(*args, **kwargs)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{where}.dataset: {dataset!r} not found ({e})") from None
    except ValueError as e:
        raise ValueError(f"{where}.dataset: {dataset!r}: {e}") from None
    features = getattr(ds, "features", None) or {}
    if features and text_field not in features:
        raise ValueError(
            f"{where}.text_field: {dataset!r} has no column {text_field!r}; the dataset has: "
            f"{', '.join(features)}"
        )
    if features and label_field is not None and label_field not in features:
        raise ValueError(
            f"{where}.label_field: {dataset!r} has no column {label_field!r}; the dataset has: "
            f"{', '.join(features)}"
        )
    names = getattr(features.get(label_field), "names", None) if label_field else None
    own = bad is None
    bad = BadRows(where) if bad is None else bad
    for n, record in enumerate(ds):
        if text_field not in record:
            raise ValueError(f"{where}.text_field: {dataset!r} has no column {text_field!r}")
        text = record.pop(text_field)
        if label_field is not None:
            row = _labelled(record, text, label_field, names, dataset, split, n, bad)
            if row is not None:
                yield row
            continue
        if not isinstance(text, str) or not text:
            continue
        url = record.pop("url", None)
        doc_id = str(record.pop("id", None) or f"{dataset}:{split}:{n}")
        meta = {k: v for k, v in record.items() if isinstance(v, str | int | float | bool)}
        yield {
            "id": doc_id,
            "text": text,
            "source": f"hf:{dataset}",
            "url": url if isinstance(url, str) else None,
            "metadata": json.dumps(meta, default=str) if meta else None,
        }
    if own and label_field is not None:
        bad.check()


def _labelled(record, text, label_field, names, dataset, split, n, bad: BadRows) -> dict | None:
    label = record.get(label_field)
    if label is None or str(label).strip() == "":
        bad.skip(f"{dataset}[{split}]", n, "missing label", f"column {label_field!r} is empty")
        return None
    bad.ok()
    if names and isinstance(label, int) and 0 <= label < len(names):
        label = names[label]
    return {
        "id": str(record.get("id") or f"{dataset}:{split}:{n}"),
        "text": text if isinstance(text, str) else "",
        "label": str(label).strip(),
        "source": f"hf:{dataset}",
    }


class HfSource(HubDataset, Source):
    """A Hugging Face dataset: a local folder or data file, or a Hub name when online."""

    type: Literal["hf"] = "hf"
    text_field: str = Field("text", description="field holding the text")

    def read(self, where, problems, run_dir, bad):
        return read_source(self, where)


def read_source(src, where: str, label_field: str | None = None, bad: BadRows | None = None):
    """The records of a source with `dataset`, `subset`, `streaming`, `split`, `text_field`."""
    if not src.dataset:
        raise ValueError(f"{where}.dataset: empty; give a dataset folder, data file or Hub name")
    return read_hf(
        src.dataset,
        src.split or "train",
        src.text_field,
        src.streaming,
        src.subset,
        where,
        label_field,
        bad,
    )
