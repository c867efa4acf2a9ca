"""Parallel text for translation: TSV/TXT/CSV or JSONL files of (source, target) pairs.

Yields dicts with `id`, `text` (the source sentence), `target` (its translation) and `source`
(the file). Which field is the source and which the target is the config's choice
(`source_field`, `target_field`), so one file serves both directions. TSV/TXT/CSV files have a
header line naming their columns, or none when `columns` names them in order (Tatoeba's
`english<TAB>chinese` exports: `columns: [en, zh]`).

`dataset: numbers` is a built-in synthetic corpus instead of files: every number 0-9999 written
in digits ("4 0 7 2", one token per digit) and in English words ("four thousand seventy-two").
Its mapping is compositional, so a word-by-word dictionary gets the digits' words but not the
"thousand"/"hundred"/"-ty" structure, and a model that learns it generalises to held-out numbers.

Delimited files are read as their suffix means them (collect/rows.py: `.tsv`/`.txt` without
quoting, `.csv` RFC 4180; `quoting` overrides); unreadable rows (more fields than the header,
broken quoting, bad JSON) are skipped and counted under the bad-row policy (`max_bad_rows`).
Empty sources or targets are kept here; the task's preprocessing drops and counts them. A field
that no row of a file has is an error naming the file and the field (a typo, or the wrong file).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from modelworks.collect.rows import BadRows, delimited
from modelworks.collect.source import (
    Columns,
    Paths,
    RowPolicy,
    Source,
    SplitField,
    matching_files,
)
from modelworks.jsonl import json_lines

SUFFIXES = (".tsv", ".txt", ".csv", ".jsonl")


def read_parallel(
    patterns: list[str],
    source_field: str,
    target_field: str,
    columns: list[str],
    where: str,
    dataset: str = "",
    quoting: str = "auto",
    bad: BadRows | None = None,
    split_field: str = "",
) -> Iterator[dict]:
    """Pairs from the files (or the built-in `dataset`); `bad` collects skipped rows (without
    one, the default `max_bad_rows` is checked when the files are read)."""
    if dataset:
        if dataset != "numbers":
            raise ValueError(f"{where}.dataset: {dataset!r} is not built in (only: numbers)")
        yield from numbers()
        return
    own = bad is None
    bad = BadRows(where) if bad is None else bad
    what = "at least one file or glob (or dataset: numbers)"
    for path in matching_files(patterns, where, what):
        yield from _read(
            path, source_field, target_field, columns, where, quoting, bad, split_field
        )
    if own:
        bad.check()


def _read(path: Path, source_field: str, target_field: str, columns: list[str], where: str,
          quoting: str, bad: BadRows, split_field: str = ""):  # fmt: skip
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{path}: unsupported parallel-text type {suffix!r} ({', '.join(SUFFIXES)})"
        )
    seen = {source_field: False, target_field: False}
    fields = (source_field, target_field)
    try:
        for line, row in _rows(path, suffix, columns, fields, where, quoting, bad):
            for f in seen:
                seen[f] = seen[f] or row.get(f) is not None
            bad.ok()
            yield {
                "id": f"{path}:{line}",
                "text": _str(row.get(source_field)),
                "target": _str(row.get(target_field)),
                "source": str(path),
                "split": row.get(split_field) if split_field else None,
            }
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    for field, found in seen.items():
        if not found:
            key = "source_field" if field == source_field else "target_field"
            raise ValueError(f"{path}: no row has the field {field!r} ({where}.{key})")


def _str(value) -> str:
    return "" if value is None else str(value).strip()


def _rows(path: Path, suffix: str, columns: list[str], fields: tuple[str, str], where: str,
          quoting: str, bad: BadRows):  # fmt: skip
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for i, row in json_lines(f, path, skip=lambda n, e: bad.skip(path, n, "not JSON", e)):
                if not isinstance(row, dict):
                    bad.skip(path, i, "not a JSON object")
                    continue
                yield i, row
        return
    with open(path, encoding="utf-8-sig", newline="") as f:
        names, rows = delimited(f, path, columns, quoting, bad)
        missing = [x for x in fields if x not in names]
        if missing:
            key = "source_field" if missing[0] == fields[0] else "target_field"
            given = f"{where}.columns" if columns else "its header line"
            raise ValueError(
                f"{path}: no column {missing[0]!r} in {given} ({where}.{key}); the file has: "
                f"{', '.join(names) or 'no columns'}; set {where}.columns for a file without a "
                "header, and source_field/target_field to column names"
            )
        yield from rows


_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """English words for 0 <= n <= 9999: 'four thousand seventy-two'."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("-" + _ONES[n % 10] if n % 10 else "")
    if n < 1000:
        rest = n % 100
        return f"{_ONES[n // 100]} hundred" + (f" {number_words(rest)}" if rest else "")
    rest = n % 1000
    return f"{_ONES[n // 1000]} thousand" + (f" {number_words(rest)}" if rest else "")


def numbers(n_max: int = 10_000) -> Iterator[dict]:
    for n in range(n_max):
        yield {
            "id": f"numbers:{n}",
            "text": " ".join(str(n)),
            "target": number_words(n),
            "source": "numbers",
        }


class ParallelSource(Paths, Columns, RowPolicy, SplitField, Source):
    """Translation pairs from tsv/txt/jsonl/csv/parquet files, or built-in `dataset: numbers`."""

    kind: ClassVar[str] = "parallel"
    type: Literal["parallel"] = "parallel"
    source_field: str = Field("source", description="field/column holding the text to translate")
    target_field: str = Field("target", description="field/column holding its translation")
    dataset: str = Field(
        "", description="numbers: built-in digits -> English words pairs (no files)"
    )

    def read(self, where, problems, run_dir, bad):
        return read_parallel(
            self.paths,
            self.source_field,
            self.target_field,
            self.columns,
            where,
            self.dataset,
            self.quoting,
            bad,
            self.split_field,
        )
