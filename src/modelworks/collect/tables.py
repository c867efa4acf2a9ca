"""Labelled text tables: CSV, TSV/TXT, JSONL and Parquet files with a text and a label column.

Yields dicts with `id`, `text`, `label` (as a string) and `source`. Delimited files are read as
their suffix means them (collect/rows.py: `.tsv`/`.txt` tab-separated without quoting, `.csv`
RFC 4180; `quoting` overrides), with a header line or `columns`. A column the file does not have
is an error naming the columns it has. A row without its label (or otherwise unreadable) is a
bad row: skipped, counted per reason with its file and line, and past `max_bad_rows` the stage
stops. Empty texts are kept here and counted and dropped by the task's preprocessing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from modelworks.collect.hf import read_source
from modelworks.collect.rows import BadRows, delimited, missing_column
from modelworks.collect.source import (
    Columns,
    HubDataset,
    Paths,
    RowPolicy,
    Source,
    SplitField,
    matching_files,
)
from modelworks.jsonl import json_lines

SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".parquet")


def read_tables(
    patterns: list[str],
    text_field: str,
    label_field: str,
    columns: list[str],
    where: str,
    quoting: str = "auto",
    bad: BadRows | None = None,
    split_field: str = "",
) -> Iterator[dict]:
    """Records of every file the patterns match; `bad` collects skipped rows (without one, the
    default `max_bad_rows` is checked when the files are read)."""
    own = bad is None
    bad = BadRows(where) if bad is None else bad
    for path in matching_files(patterns, where, "at least one file or glob"):
        yield from _read(path, text_field, label_field, columns, where, quoting, bad, split_field)
    if own:
        bad.check()


def _check(path: Path, names: list[str], fields: dict[str, str], columns: list[str], where: str):
    for key, column in fields.items():
        if column not in names:
            if columns:
                raise ValueError(
                    f"{path}: no column {column!r} ({where}.{key}); {where}.columns names: "
                    f"{', '.join(columns)}"
                )
            raise missing_column(path, column, f"{where}.{key}", names)


def _rows(path: Path, fields: dict, columns: list[str], where: str, quoting: str, bad: BadRows):
    """(line or row number, record) for every readable row of the file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        _check(path, table.column_names, fields, [], where)
        yield from enumerate(table.to_pylist(), 1)
    elif suffix == ".jsonl":
        seen: set[str] = set()
        with open(path, encoding="utf-8") as f:
            for i, row in json_lines(f, path, skip=lambda n, e: bad.skip(path, n, "not JSON", e)):
                if not isinstance(row, dict):
                    bad.skip(path, i, "not a JSON object")
                    continue
                seen.update(row)
                yield i, row
        if seen:  # lines were read but none has the field: a typo, or the wrong file
            _check(path, sorted(seen), fields, [], where)
    elif suffix in (".csv", ".tsv", ".txt"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            names, rows = delimited(f, path, columns, quoting, bad)
            _check(path, names, fields, columns, where)
            yield from rows
    else:
        raise ValueError(f"{path}: unsupported table type {path.suffix!r} ({', '.join(SUFFIXES)})")


def _read(
    path: Path,
    text_field: str,
    label_field: str,
    columns: list[str],
    where: str,
    quoting: str,
    bad: BadRows,
    split_field: str = "",
) -> Iterator[dict]:
    fields = {"text_field": text_field, "label_field": label_field}
    if split_field:  # the record's split (collect/splits.py checks the value)
        fields["split_field"] = split_field
    try:
        for line, row in _rows(path, fields, columns, where, quoting, bad):
            label = row.get(label_field)
            if label is None or str(label).strip() == "":
                bad.skip(path, line, "missing label", f"column {label_field!r} is empty")
                continue
            if text_field not in row:
                bad.skip(path, line, "missing text", f"no field {text_field!r}")
                continue
            text = row[text_field]
            bad.ok()
            yield {
                "id": f"{path}:{line}",
                "text": "" if text is None else str(text),
                "label": str(label).strip(),
                "source": str(path),
                "split": row.get(split_field) if split_field else None,
            }
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None


class TableSource(Paths, Columns, RowPolicy, SplitField, HubDataset, Source):
    """Labelled texts from csv/tsv/txt/jsonl/parquet files, or a Hugging Face `dataset`."""

    kind: ClassVar[str] = "table"
    type: Literal["table"] = "table"
    text_field: str = Field("text", description="column holding the text")
    label_field: str = Field("label", description="column holding the label")

    def read(self, where, problems, run_dir, bad):
        if self.dataset:
            return read_source(self, where, self.label_field, bad)
        return read_tables(
            self.paths,
            self.text_field,
            self.label_field,
            self.columns,
            where,
            self.quoting,
            bad,
            self.split_field,
        )
