"""Reading rows: the one reader of delimited text, and the one policy for rows that are bad.

Delimited text means what its suffix says (`dialect`):
- `.tsv` and `.txt`: tab-separated values with no quoting (the IANA text/tab-separated-values
  convention that GLUE, MovieLens and most corpora follow): a `"` or `'` is part of the text, a
  tab always ends a field, a line always ends a row.
- `.csv`: comma-separated with RFC 4180 quoting: a field in double quotes may hold commas,
  newlines and doubled quotes (`""`). A quote that opens a field and never closes is an error
  naming the file and the line it opens on (the rest of the file would be one field).
- a source's `quoting: none | csv` overrides either (`auto`, the default, goes by the suffix).
A file has a header line naming its columns, or `columns` names them in order.

Bad rows (`BadRows`): a row that cannot become a record (too many fields, broken quoting, a
missing label, an empty user, a time that is no time...) is skipped and counted per reason, the
first few kept as `file:line`; collect lists them in its summary and the report. Past the
source's `max_bad_rows` (a count, or a fraction of the rows read when below 1; default 1%) the
stage stops after reading the source, and its one-line error lists every reason at once.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

QUOTING = ("auto", "none", "csv")
# 1%: a few odd lines in a large file pass, a broken file stops (SourceConfig.max_bad_rows's
# default too; config.py cannot import collect)
DEFAULT_MAX_BAD_ROWS = 0.01
SHOWN = 5  # examples kept per reason


def dialect(path: str | Path, quoting: str = "auto") -> tuple[str, bool]:
    """(delimiter, whether fields may be quoted) for a delimited file."""
    if quoting not in QUOTING:
        raise ValueError(f"quoting={quoting!r}: not one of {', '.join(QUOTING)}")
    suffixes = [s.lower() for s in Path(path).suffixes if s.lower() != ".gz"]
    is_csv = bool(suffixes) and suffixes[-1] == ".csv"
    quoted = is_csv if quoting == "auto" else quoting == "csv"
    return ("," if is_csv else "\t"), quoted


@dataclass
class BadRows:
    """Rows skipped in one source, counted per reason (see the module docstring)."""

    where: str  # the source, e.g. collect.sources.0
    max_bad_rows: float = DEFAULT_MAX_BAD_ROWS
    knob: str | None = ""  # the setting that raises the limit; "" = <where>.max_bad_rows
    rows: int = 0  # rows read, good and bad
    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, list[str]] = field(default_factory=dict)

    def ok(self) -> None:
        self.rows += 1

    def skip(self, path: str | Path, line: int, reason: str, detail: str = "") -> None:
        self.rows += 1
        self.counts[reason] = self.counts.get(reason, 0) + 1
        examples = self.first.setdefault(reason, [])
        if len(examples) < SHOWN:
            examples.append(f"{path}:{line}" + (f" ({detail})" if detail else ""))

    @property
    def bad(self) -> int:
        return sum(self.counts.values())

    def allowed(self) -> float:
        limit = self.max_bad_rows
        return limit * self.rows if limit < 1 else limit

    def describe(self) -> str:
        """'missing label (2): a.csv:4 (...), a.csv:9 (...); ...', the most frequent first."""
        parts = []
        for reason, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            more = ", ..." if n > len(self.first[reason]) else ""
            parts.append(f"{reason} ({n}): {', '.join(self.first[reason])}{more}")
        return "; ".join(parts)

    def check(self) -> None:
        """Raise the one-line stop message when more rows are bad than `max_bad_rows` allows."""
        if self.bad > self.allowed():
            knob = f"{self.where}.max_bad_rows" if self.knob == "" else self.knob
            limit = f"{knob}={self.max_bad_rows:g}" if knob else f"{self.max_bad_rows:g}"
            fix = f", or raise {knob} to skip such rows" if knob else ""
            raise ValueError(
                f"{self.where}: {self.bad} of {self.rows} rows are bad, more than {limit} "
                f"allows. {self.describe()}. Fix the file(s){fix}"
            )

    def summary(self) -> dict:
        return {
            "rows": self.rows,
            "bad": self.bad,
            "max_bad_rows": self.max_bad_rows,
            "reasons": {r: {"count": n, "first": self.first[r]} for r, n in self.counts.items()},
        }


def missing_column(path: str | Path, column: str, key: str, names: list[str]) -> ValueError:
    """The error for a column the file does not have, naming the ones it has."""
    have = ", ".join(map(str, names)) or "no columns"
    return ValueError(f"{path}: no column {column!r} ({key}); the file has: {have}")


def delimited(
    f: TextIO, path: str | Path, columns: list[str], quoting: str, bad: BadRows
) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """(column names, rows) of a delimited text file opened with newline="" (and encoding
    "utf-8-sig", so that a byte-order mark is not part of the first name): each row is (the
    line it starts on, {name: value}); a row with fewer fields than names lacks the rest, a row
    with more is bad. `columns` names a file without a header line."""
    delimiter, quoted = dialect(path, quoting)
    records = _records(f, path, delimiter, quoted, bad)
    if columns:
        names, given = list(columns), f"{bad.where}.columns names"
    else:
        names, given = next((v for _, v, _ in records if v), []), "the header has"
    return names, _rows(records, path, names, given, bad)


def _rows(records, path, names: list[str], given: str, bad: BadRows):
    for start, values, end in records:
        if not values:
            continue  # a blank line
        if len(values) > len(names):
            spans = f"; a quoted field runs from line {start} to {end}" if end > start else ""
            detail = f"{len(values)} fields, {given} {len(names)}{spans}"
            bad.skip(path, start, "more fields than the header", detail)
            continue
        yield start, dict(zip(names, values, strict=False))


def _records(f: TextIO, path, delimiter: str, quoted: bool, bad: BadRows):
    """(first line, values, last line) per record; broken quoting is a bad row, or an error when
    a quote never closes."""
    if quoted:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
    else:
        reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE)
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            msg, end = str(e), reader.line_num
            if "unexpected end of data" in msg or "field larger than field limit" in msg:
                hint = f" (or set {bad.where}.quoting: none if quotes are plain text here)"
                hint = "" if bad.knob is None else hint
                raise ValueError(
                    f"{path}:{start}: a quote opens a field on this line and never closes, so "
                    f"the rest of the file would be one field; close or remove the quote{hint}"
                ) from None
            if end > start:
                detail = f"a quoted field opens on line {start} and breaks on line {end}"
                bad.skip(path, start, "unclosed quote", detail)
            elif "NUL" in msg:
                bad.skip(path, start, "NUL character")
            else:
                bad.skip(path, start, "malformed quoting", msg)
            continue
        yield start, values, reader.line_num
