"""Labelled text tables: CSV, TSV/TXT, JSONL and Parquet files with a text and a label column.

Yields dicts with `id`, `text`, `label` (as a string) and `source`. A row without its label is an
error naming the file and line (a model cannot learn from it, and dropping it would hide a data
problem); empty texts are kept here and counted and dropped by the task's preprocessing.
"""

from __future__ import annotations

import csv
import glob
from collections.abc import Iterator
from pathlib import Path

from modelworks.jsonl import json_lines

SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".parquet")


def read_tables(
    patterns: list[str],
    text_field: str,
    label_field: str,
    columns: list[str],
    where: str,
    split_field: str = "",
) -> Iterator[dict]:
    if not patterns:
        raise FileNotFoundError(f"{where}.paths: empty; give at least one file or glob")
    for pattern in patterns:
        hits = sorted(p for p in map(Path, glob.glob(pattern, recursive=True)) if p.is_file())
        if not hits:
            raise FileNotFoundError(f"{where}.paths: no file matches {pattern!r}")
        for path in hits:
            yield from _read(path, text_field, label_field, columns, split_field, where)


def _rows(path: Path, columns: list[str]) -> Iterator[tuple[int, dict]]:
    """(line or row number, record) for every row of the file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield i, row
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            yield from json_lines(f, path)
    elif suffix in (".csv", ".tsv", ".txt"):
        delimiter = "," if suffix == ".csv" else "\t"
        with open(path, encoding="utf-8", newline="") as f:
            if columns:
                reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE)
                for i, values in enumerate(reader, 1):
                    if values:
                        yield i, dict(zip(columns, values, strict=False))
            else:
                reader = csv.DictReader(f, delimiter=delimiter)
                for i, row in enumerate(reader, 2):  # line 1 is the header
                    yield i, row
    else:
        raise ValueError(f"{path}: unsupported table type {path.suffix!r} ({', '.join(SUFFIXES)})")


def _read(
    path: Path,
    text_field: str,
    label_field: str,
    columns: list[str],
    split_field: str = "",
    where: str = "collect.sources",
) -> Iterator[dict]:
    try:
        for line, row in _rows(path, columns):
            if not isinstance(row, dict) or text_field not in row:
                raise ValueError(f"{path} line {line}: no text column {text_field!r}")
            label = row.get(label_field)
            if label is None or str(label).strip() == "":
                raise ValueError(f"{path} line {line}: missing label (column {label_field!r})")
            if split_field and split_field not in row:
                raise ValueError(
                    f"{path} line {line}: no split column {split_field!r} ({where}.split_field)"
                )
            text = row[text_field]
            yield {
                "id": f"{path}:{line}",
                "text": "" if text is None else str(text),
                "label": str(label).strip(),
                "source": str(path),
                "split": row.get(split_field) if split_field else None,
            }
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
